// SASL mechanisms for AUTH (RFC 5034), server side.
//
// sasl_server is built once per process from the configured mechanism names and hands out one
// sasl_exchange per AUTH attempt. The exchange turns each client response (base64, as it came
// off the wire) into a challenge, a success or a failure; the POP3 framing ("+ ", "*", -ERR)
// stays with the protocol engine and its driver.
//
// Where each mechanism is implemented, and why:
//   PLAIN, LOGIN      here. GNU SASL would run the password through SASLprep (so a password
//                     that USER/PASS accepts, or one in a legacy 8-bit charset, could fail
//                     over AUTH) and keeps unwiped copies of it; the parsing is a few lines.
//   CRAM-MD5          here. GNU SASL's server needs the plaintext password; ours also answers
//                     from Dovecot's {CRAM-MD5} secret (the HMAC-MD5 context), and compares in
//                     constant time.
//   SCRAM-SHA-1, SCRAM-SHA-256 and their -PLUS variants, EXTERNAL, GSSAPI
//                     through GNU SASL (libgsasl 2.2), fed by callbacks: the stored SCRAM keys
//                     or the {PLAIN} password, the channel binding data of the TLS connection,
//                     the client certificate identity and the Kerberos acceptor.
//
// Rules common to every mechanism:
//   - The authorization identity must be empty or equal to the authenticated user: nobody
//     may act as somebody else.
//   - Unknown users, users without a usable secret and refused users (nologin, ...) fail
//     exactly like a wrong password, as late in the exchange and, as far as the mechanism
//     allows, after the same work (SCRAM answers them with a salt derived from the name).
//   - Each client response is at most max_sasl_response base64 characters and an exchange
//     takes at most max_sasl_steps responses; bad base64 fails the exchange.
//   - Passwords and stored secrets live in secret_string (or are wiped after use) and never
//     appear in a reason; secrets are compared in constant time. What libgsasl copies
//     internally is wiped where its API reaches (its properties); its private mechanism
//     state is freed by libgsasl without wiping.
//
// Threading: sasl_server is immutable after create() and thread-safe; start() may be called
// from any number of threads. A sasl_exchange belongs to one session at a time and is not
// thread-safe. step() may block (password hashing, PBKDF2, passdb lookups, Kerberos keytab
// reads): run it off the I/O threads.
//
// Ownership: the passdb given to create() must outlive the sasl_server, and the sasl_server
// must outlive every exchange it started.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "auth/passdb.hpp"
#include "common/result.hpp"

namespace postern::auth {

// RFC 5034 section 4 lifts POP3's 255-octet line limit for AUTH responses; Kerberos tickets
// with a PAC run to several KiB. Larger responses fail the exchange.
inline constexpr std::size_t max_sasl_response = 16384;  // base64 characters
// The longest legitimate exchange (GSSAPI: context token(s), then the security layer) takes
// three or four client responses; SCRAM takes two, plus the empty answer to server-final,
// which the engine consumes.
inline constexpr std::size_t max_sasl_steps = 8;

// Every mechanism name sasl_server::create() knows, upper case, in a fixed order: what the
// configuration accepts for [auth] mechanisms (whether it is usable also depends on the build
// of libgsasl and on the connection).
std::span<const std::string_view> sasl_mechanism_names() noexcept;

struct sasl_settings {
  // In the order CAPA lists them. Known: PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-1,
  // SCRAM-SHA-1-PLUS, SCRAM-SHA-256, SCRAM-SHA-256-PLUS, EXTERNAL, GSSAPI (case-insensitive;
  // listed and matched in upper case).
  std::vector<std::string> mechanisms;
  std::string service = "pop";  // GSSAPI: the acceptor is service/hostname@REALM
  // GSSAPI acceptor host, and the domain of CRAM-MD5 challenges. "" = gethostname().
  std::string hostname;
  // GSSAPI keytab (a path, or "FILE:path"); "" = $KRB5_KTNAME, else /etc/krb5.keytab. It is
  // read at every GSSAPI login, by the user the server runs as.
  std::string gssapi_keytab;
  // How the TLS layer names the user of a client certificate; informational here (the TLS
  // layer applies it and fills sasl_channel::client_cert_identity).
  std::string external_user = "subject:CN";
  // GSSAPI: the only realm whose principals may log in; "user@REALM" logs in as "user".
  // "" = the realm of the acceptor's key in the keytab (create() fails when the keytab holds
  // keys for service/hostname in several realms and none is named here).
  std::string realm;
  // HMAC key for the salts SCRAM shows for unknown users and for derived secrets; "" = a
  // random one. Processes that answer the same clients (event mode workers, fork mode's
  // per-connection processes) must share one, or a salt that changes between connections
  // tells that a user does not exist.
  std::string salt_key;
  // Tests only (to replay RFC 2195's example): every CRAM-MD5 challenge is this text instead
  // of a fresh one. Empty, as it must stay in production: a fixed challenge can be replayed.
  std::string cram_md5_challenge_for_test;
};

// What the transport knows about one connection.
struct sasl_channel {
  bool secure = false;            // TLS, or a network the admin trusts
  bool plaintext_allowed = true;  // PLAIN and LOGIN may be offered (the plaintext policy)
  std::string tls_exporter;       // RFC 9266 tls-exporter: 32 raw bytes, or "" when unsafe/absent
  std::string tls_unique;         // RFC 5929 tls-unique: the raw Finished message, or ""
  bool client_cert_verified = false;
  std::string client_cert_identity;  // already mapped by the TLS layer per external_user
};

enum class sasl_status { challenge, success, failure, temporary_failure };

struct sasl_step {
  sasl_status status = sasl_status::failure;
  // challenge: the base64 challenge for "+ " (may be empty). success: additional data for the
  // client (SCRAM's server-final message), or empty; the engine sends it as one more
  // challenge and completes the login on the client's empty answer (RFC 5034 section 4).
  std::string server_data_b64;
  user_record user;    // success: the authenticated user as the passdb describes them
  std::string reason;  // failure: for the log only (no secrets; may name the user)
};

class sasl_exchange {
 public:
  virtual ~sasl_exchange() = default;

  // Feeds one client response and returns what to do next. The first call takes the initial
  // response exactly as it followed the mechanism name on the AUTH line: "" when there was
  // none, "=" for an empty one (RFC 5034 section 4); later calls take the client's line
  // without CRLF ("" is an empty response; "=" is accepted as one too). A "*" (cancel, which
  // the engine handles itself) fails the exchange. Invalid base64, an over-long response, too
  // many steps or a call after success or failure gives failure with a reason. Never throws
  // on client input.
  virtual sasl_step step(std::string_view client_b64) = 0;

  // The user the exchange is about, for log lines: the authentication identity the client
  // named (or the Kerberos principal, or the certificate identity) once known, even when the
  // login then fails; after success, the user logged in. Empty until then. Valid until the
  // next step() or the exchange's destruction.
  virtual std::string_view authenticated_user() const = 0;
};

class sasl_server {
 public:
  // Checks the settings and prepares the mechanisms. Errors (errc::invalid unless noted): an
  // unknown or repeated mechanism name; GNU SASL failing to initialise or lacking a configured
  // mechanism (errc::temporary for an allocation failure); GSSAPI configured and the keytab
  // missing, unreadable, malformed, without a key for service/hostname (in `realm` when set),
  // or the GSS-API library unable to acquire acceptor credentials from it.
  // `db` must outlive the server.
  static result<std::unique_ptr<sasl_server>> create(passdb& db, sasl_settings s);

  ~sasl_server();
  sasl_server(const sasl_server&) = delete;
  sasl_server& operator=(const sasl_server&) = delete;

  // Exactly the configured mechanisms usable on this connection, in configured order:
  // PLAIN and LOGIN only when ch.plaintext_allowed; *-PLUS only with channel binding data
  // (tls_exporter or tls_unique); EXTERNAL only with a verified client certificate that maps
  // to an identity. CAPA's SASL line and AUTH's list are made from this.
  std::vector<std::string> mechanisms_for(const sasl_channel& ch) const;

  // Starts an exchange for `mechanism` (case-insensitive) on a connection described by `ch`
  // (copied). Errors: errc::not_found when the mechanism is not among mechanisms_for(ch);
  // errc::temporary when GNU SASL cannot start a session (memory).
  result<std::unique_ptr<sasl_exchange>> start(std::string_view mechanism,
                                               const sasl_channel& ch) const;

  const sasl_settings& settings() const noexcept;

  struct impl;  // sasl.cpp

 private:
  explicit sasl_server(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

}  // namespace postern::auth
