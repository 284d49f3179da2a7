// TLS for Postern: the server context (certificate, key, protocol policy) and the TLS transport
// that runs one session over OpenSSL 3 through asio::ssl.
//
// Ownership and threading:
// - tls_server_context is shared by every I/O thread and is thread-safe. current() hands out
//   the asio::ssl::context new sessions start with; a session keeps that context (through its
//   SSL object) for its whole life, so reload() never disturbs an open session.
// - tls_transport is owned by one session and used on the executor its socket was created on,
//   like every transport (see transport.hpp); it is not thread-safe. Its stream state lives in
//   a shared block so that the bounded close_notify sent by close() can finish after the
//   transport object itself is gone.
//
// Security policy (see docs/tls.md): TLS 1.2 minimum; for TLS 1.2 only ECDHE key exchange
// with AEAD ciphers unless configured otherwise; server cipher preference; no compression; no
// renegotiation; groups X25519, P-256, P-384; strict ALPN (a client that offers ALPN must offer
// "pop3", the ALPACA mitigation); session tickets allowed. Nothing secret is logged.
#pragma once

#include "common/result.hpp"
#include "net/transport.hpp"

#include <asio/awaitable.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/ssl.hpp>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

namespace postern::net {

// How long close() waits for our close_notify to be written before it drops the socket.
inline constexpr std::chrono::milliseconds tls_close_notify_bound{1000};

struct tls_settings {
  std::string cert;   // PEM: the server certificate, optionally followed by its chain
  std::string key;    // PEM private key (unencrypted: there is nobody to type a passphrase)
  std::string chain;  // optional PEM file of intermediate certificates
  std::string min_version = "TLSv1.2";  // "TLSv1.2" | "TLSv1.3"
  std::string ciphers;       // TLS 1.2 cipher list; empty = ECDHE with AES-GCM/ChaCha20 only
  std::string ciphersuites;  // TLS 1.3 suites; empty = OpenSSL's default
  std::string groups;        // key exchange groups; empty = "X25519:P-256:P-384"
  std::string client_ca;     // PEM CA bundle; non-empty = request (not require) a client
                             // certificate and verify it against these CAs
};

// The TLS 1.2 cipher list used when tls_settings::ciphers is empty.
extern const char* const tls_default_ciphers;
// The groups used when tls_settings::groups is empty.
extern const char* const tls_default_groups;

class tls_server_context {
 public:
  // Loads and checks everything: files readable, certificate and key match, every list names
  // something OpenSSL knows. Errors name the setting and the file and carry OpenSSL's reason;
  // errc::invalid for bad settings, errc::permanent for files that cannot be used. Logs a
  // warning (and still succeeds) when the certificate is expired or not yet valid.
  static result<std::shared_ptr<tls_server_context>> create(tls_settings s);

  // SIGHUP: re-reads cert, key, chain and client CA from the same paths and, if all of it
  // loads, makes the new context current for new handshakes. On failure the old context stays
  // current and the error says why. Open sessions are never affected. Thread-safe.
  result<void> reload();

  // The context for a new session. Never null. Thread-safe.
  std::shared_ptr<asio::ssl::context> current() const;

  // One line about the current certificate for logs: subject, issuer, expiry and SHA-256
  // fingerprint (public data only). Thread-safe.
  std::string certificate_info() const;

  const tls_settings& settings() const noexcept { return settings_; }

  tls_server_context(const tls_server_context&) = delete;
  tls_server_context& operator=(const tls_server_context&) = delete;

 private:
  struct loaded {
    std::shared_ptr<asio::ssl::context> ctx;
    std::string info;
  };
  tls_server_context(tls_settings s, loaded l) : settings_(std::move(s)), current_(std::move(l)) {}
  static result<loaded> load(const tls_settings& s);

  const tls_settings settings_;
  mutable std::mutex mu_;
  loaded current_;  // guarded by mu_
};

// A session over TLS. Build it from a connected socket: accepted on an implicit-TLS listener,
// or taken from a tcp_transport after the engine answered STLS with +OK. The TLS layer starts
// with empty buffers and reads nothing but TLS records from the socket, so plaintext a client
// pipelined after STLS can never be taken for a command sent under TLS: bytes the plaintext
// side already read are the engine's to discard, and bytes still in the kernel make the
// handshake fail.
class tls_transport final : public transport {
 public:
  // May throw std::bad_alloc/asio::system_error only when OpenSSL cannot allocate an SSL object.
  tls_transport(asio::ip::tcp::socket socket, std::shared_ptr<asio::ssl::context> ctx);
  ~tls_transport() override;
  tls_transport(const tls_transport&) = delete;
  tls_transport& operator=(const tls_transport&) = delete;

  // The server side of the handshake. Unbounded by itself: the caller's watchdog bounds it
  // and close() cancels it. Returns an empty string on success, else a one-line reason for the
  // log (OpenSSL's reason, the alert received, "client closed the connection", ...); after a
  // failure the caller must close() and drop the session.
  asio::awaitable<std::string> handshake();

  // transport interface. read_some/write_all fail with an error before a successful handshake
  // and after close(). read_some returns 0 with `ec` set at EOF: asio::error::eof after the
  // client's close_notify, asio::ssl::error::stream_truncated when the TCP connection ended
  // without one (harmless for POP3, whose replies and commands are self-delimiting).
  asio::awaitable<std::size_t> read_some(asio::mutable_buffer buf, std::error_code& ec) override;
  asio::awaitable<void> write_all(asio::const_buffer buf, std::error_code& ec) override;
  // After a good handshake and with no write cut short, sends close_notify (not waiting for
  // the client's) within tls_close_notify_bound, then closes the socket; otherwise closes the
  // socket at once. Pending reads and writes complete with operation_aborted. Idempotent.
  void close() noexcept override;
  tls_transport* tls() noexcept override { return this; }

  bool is_established() const noexcept;
  // "TLSv1.3 TLS_AES_256_GCM_SHA384"; empty before the handshake.
  std::string description() const;

  // True when the client sent a certificate that verified against tls_settings::client_ca.
  // Always false when client_ca is empty (no certificate is requested).
  bool has_verified_client_certificate() const;
  // Why a client certificate that was sent did not verify ("certificate has expired (depth
  // 0)"); empty when none was sent or it verified. For logs.
  std::string client_certificate_problem() const;
  // A field of the verified client certificate: "subject:<attr>" (CN, emailAddress, UID, any
  // OpenSSL short/long name or dotted OID) or "san:email" | "san:dns" | "san:uri". Returns ""
  // when no verified certificate, no such field, the field occurs more than once (ambiguous),
  // or the value holds NUL or control bytes. Never returns data from an unverified certificate.
  std::string client_certificate_field(std::string_view spec) const;
  // Whether `spec` is a form client_certificate_field() understands, for config validation.
  static bool is_valid_certificate_field_spec(std::string_view spec);

  // RFC 9266 tls-exporter: 32 raw bytes. Empty before the handshake, and on TLS 1.2 without
  // the extended master secret (RFC 7627), where the binding is not safe.
  std::string channel_binding_tls_exporter() const;
  // RFC 5929 tls-unique: the first Finished message of the handshake, raw. Empty on TLS 1.3
  // (undefined there), before the handshake, and without the extended master secret.
  std::string channel_binding_tls_unique() const;

 private:
  struct state;
  std::shared_ptr<state> st_;
};

}  // namespace postern::net
