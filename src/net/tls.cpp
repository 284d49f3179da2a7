#include "net/tls.hpp"

#include "common/log.hpp"

#include <asio/experimental/as_tuple.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstring>
#include <ctime>

namespace postern::net {

const char* const tls_default_ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
const char* const tls_default_groups = "X25519:P-256:P-384";

namespace {

constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

// The ALPN protocol id of POP3 in the IANA registry.
constexpr unsigned char alpn_pop3[] = {'p', 'o', 'p', '3'};
// The session id context OpenSSL needs to resume sessions when client certificates are on.
constexpr unsigned char session_id_context[] = {'p', 'o', 's', 't', 'e', 'r', 'n'};
// RFC 9266 section 2.
constexpr char exporter_label[] = "EXPORTER-Channel-Binding";
constexpr unsigned char empty_context[1] = {0};

struct ssl_ctx_free {
  void operator()(SSL_CTX* p) const noexcept { SSL_CTX_free(p); }
};
struct bio_free {
  void operator()(BIO* p) const noexcept { BIO_free(p); }
};
struct pkey_free {
  void operator()(EVP_PKEY* p) const noexcept { EVP_PKEY_free(p); }
};
struct x509_free {
  void operator()(X509* p) const noexcept { X509_free(p); }
};
struct general_names_free {
  void operator()(GENERAL_NAMES* p) const noexcept { GENERAL_NAMES_free(p); }
};
using ssl_ctx_ptr = std::unique_ptr<SSL_CTX, ssl_ctx_free>;
using bio_ptr = std::unique_ptr<BIO, bio_free>;
using pkey_ptr = std::unique_ptr<EVP_PKEY, pkey_free>;
using x509_ptr = std::unique_ptr<X509, x509_free>;
using general_names_ptr = std::unique_ptr<GENERAL_NAMES, general_names_free>;

// Drains this thread's OpenSSL error queue into one line: "reason (detail); reason ...".
std::string openssl_errors() {
  std::string out;
  const char* data = nullptr;
  int flags = 0;
  while (unsigned long e = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) {
    std::string item;
    if (ERR_SYSTEM_ERROR(e)) {
      item = std::generic_category().message(ERR_GET_REASON(e));  // errno, from fopen and such
    } else if (const char* reason = ERR_reason_error_string(e)) {
      item = reason;
    } else {
      item = "OpenSSL error " + std::to_string(e);
    }
    if ((flags & ERR_TXT_STRING) != 0 && data != nullptr && *data != '\0') {
      item += " (";
      item += data;
      item += ")";
    }
    // Skip repeats and the "system lib"/"PEM lib" entries that only say where an error passed.
    bool passing_through = item.size() > 4 && item.compare(item.size() - 4, 4, " lib") == 0;
    if (out.find(item) == std::string::npos && !(passing_through && !out.empty())) {
      if (!out.empty()) {
        out += "; ";
      }
      out += item;
    }
  }
  return out.empty() ? std::string("unknown OpenSSL error") : out;
}

// Key files must not be encrypted: a daemon has nobody to ask, and OpenSSL's default would
// prompt on the terminal.
int no_passphrase(char*, int, int, void*) { return -1; }

// Strict ALPN (RFC 7301 section 3.2, the ALPACA mitigation): a client that names protocols
// must name "pop3", or the handshake ends with no_application_protocol. Clients that send no
// ALPN at all (most mail clients) are not affected: OpenSSL calls this only when they do.
int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned int inlen, void*) {
  unsigned int i = 0;
  while (i < inlen) {
    unsigned int len = in[i];
    if (len == 0 || len > inlen - i - 1) {
      break;
    }
    if (len == sizeof alpn_pop3 && std::memcmp(in + i + 1, alpn_pop3, len) == 0) {
      *out = in + i + 1;
      *outlen = static_cast<unsigned char>(len);
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

std::string name_text(const X509_NAME* name) {
  bio_ptr bio(BIO_new(BIO_s_mem()));
  if (!bio || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253) < 0) {
    return "?";
  }
  char* p = nullptr;
  long n = BIO_get_mem_data(bio.get(), &p);
  return n > 0 ? log::safe(std::string_view(p, static_cast<std::size_t>(n))) : std::string();
}

std::string time_text(const ASN1_TIME* t) {
  std::tm tm{};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) {
    return "?";
  }
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

std::string fingerprint_sha256(const X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (X509_digest(cert, EVP_sha256(), md, &n) != 1) {
    return "?";
  }
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) {
    if (i > 0) {
      out.push_back(':');
    }
    out.push_back(hex[md[i] >> 4]);
    out.push_back(hex[md[i] & 15]);
  }
  return out;
}

std::string quoted(const std::string& path) { return "'" + log::safe(path) + "'"; }

// Adds every certificate of a PEM file to the chain sent after the server certificate.
result<void> add_chain_file(SSL_CTX* ctx, const std::string& path) {
  bio_ptr bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) {
    return error(errc::permanent, "tls.chain " + quoted(path) + ": " + openssl_errors());
  }
  int count = 0;
  for (;;) {
    x509_ptr cert(PEM_read_bio_X509(bio.get(), nullptr, no_passphrase, nullptr));
    if (!cert) {
      break;
    }
    if (SSL_CTX_add1_chain_cert(ctx, cert.get()) != 1) {
      return error(errc::permanent, "tls.chain " + quoted(path) + ": " + openssl_errors());
    }
    ++count;
  }
  // The loop ends at the first thing that is not a certificate: fine at end of file only.
  unsigned long last = ERR_peek_last_error();
  if (count > 0 && ERR_GET_LIB(last) == ERR_LIB_PEM &&
      ERR_GET_REASON(last) == PEM_R_NO_START_LINE) {
    ERR_clear_error();
  } else if (last != 0 || count == 0) {
    std::string why = last != 0 ? openssl_errors() : std::string("no certificate in file");
    return error(errc::permanent, "tls.chain " + quoted(path) + ": " + why);
  }
  return {};
}

result<pkey_ptr> read_private_key(const std::string& path) {
  bio_ptr bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) {
    return error(errc::permanent, "tls.key " + quoted(path) + ": " + openssl_errors());
  }
  pkey_ptr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
  if (!key) {
    return error(errc::permanent,
                 "tls.key " + quoted(path) +
                     ": cannot read an unencrypted PEM private key: " + openssl_errors());
  }
  return key;
}

const char* version_name(int v) {
  switch (v) {
    case SSL3_VERSION:
      return "SSLv3";
    case TLS1_VERSION:
      return "TLSv1";
    case TLS1_1_VERSION:
      return "TLSv1.1";
    case TLS1_2_VERSION:
      return "TLSv1.2";
    case TLS1_3_VERSION:
      return "TLSv1.3";
    default:
      return "an unknown version";
  }
}

void drop_socket(asio::ip::tcp::socket& s) noexcept {
  std::error_code ignored;
  s.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  s.close(ignored);
}

// A value from a certificate that is safe to hand on: no NUL or control bytes.
std::string clean_value(std::string s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      return {};
    }
  }
  return s;
}

int san_type(std::string_view name) {
  if (name == "email") {
    return GEN_EMAIL;
  }
  if (name == "dns") {
    return GEN_DNS;
  }
  if (name == "uri") {
    return GEN_URI;
  }
  return -1;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// tls_server_context

result<tls_server_context::loaded> tls_server_context::load(const tls_settings& s) {
  ERR_clear_error();
  if (s.cert.empty()) {
    return error(errc::invalid, "tls.cert: not set");
  }
  if (s.key.empty()) {
    return error(errc::invalid, "tls.key: not set");
  }
  int min_version = 0;
  if (s.min_version == "TLSv1.2") {
    min_version = TLS1_2_VERSION;
  } else if (s.min_version == "TLSv1.3") {
    min_version = TLS1_3_VERSION;
  } else {
    return error(errc::invalid,
                 "tls.min_version: '" + log::safe(s.min_version) + "' is not TLSv1.2 or TLSv1.3");
  }

  ssl_ctx_ptr ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx) {
    return error(errc::temporary, "tls: cannot create a context: " + openssl_errors());
  }
  SSL_CTX* c = ctx.get();
  SSL_CTX_set_default_passwd_cb(c, no_passphrase);  // userdata stays null: asio frees it otherwise
  if (SSL_CTX_set_min_proto_version(c, min_version) != 1) {
    return error(errc::invalid, "tls.min_version: " + openssl_errors());
  }
  SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                             SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA);
  SSL_CTX_clear_options(c, SSL_OP_ALLOW_CLIENT_RENEGOTIATION);
  const std::string ciphers = s.ciphers.empty() ? tls_default_ciphers : s.ciphers;
  if (SSL_CTX_set_cipher_list(c, ciphers.c_str()) != 1) {
    return error(errc::invalid, "tls.ciphers '" + log::safe(ciphers) + "': " + openssl_errors());
  }
  if (!s.ciphersuites.empty() && SSL_CTX_set_ciphersuites(c, s.ciphersuites.c_str()) != 1) {
    return error(errc::invalid,
                 "tls.ciphersuites '" + log::safe(s.ciphersuites) + "': " + openssl_errors());
  }
  const std::string groups = s.groups.empty() ? tls_default_groups : s.groups;
  if (SSL_CTX_set1_groups_list(c, groups.c_str()) != 1) {
    return error(errc::invalid, "tls.groups '" + log::safe(groups) + "': " + openssl_errors());
  }
  SSL_CTX_set_session_id_context(c, session_id_context, sizeof session_id_context);
  SSL_CTX_set_alpn_select_cb(c, select_alpn, nullptr);

  // Certificate (and any chain that follows it in the same file), then key, then the check
  // that they belong together, so a mismatch is reported as such and not as a later failure.
  if (SSL_CTX_use_certificate_chain_file(c, s.cert.c_str()) != 1) {
    return error(errc::permanent, "tls.cert " + quoted(s.cert) +
                                      ": cannot load a PEM certificate: " + openssl_errors());
  }
  if (!s.chain.empty()) {
    POSTERN_TRY(add_chain_file(c, s.chain));
  }
  auto key = read_private_key(s.key);
  if (!key) {
    return std::move(key).err();
  }
  X509* leaf = SSL_CTX_get0_certificate(c);
  if (leaf == nullptr || X509_check_private_key(leaf, key->get()) != 1) {
    return error(errc::permanent, "tls.key " + quoted(s.key) +
                                      " does not match the certificate in tls.cert " +
                                      quoted(s.cert) + ": " + openssl_errors());
  }
  if (SSL_CTX_use_PrivateKey(c, key->get()) != 1 || SSL_CTX_check_private_key(c) != 1) {
    return error(errc::permanent, "tls.key " + quoted(s.key) + ": " + openssl_errors());
  }

  if (!s.client_ca.empty()) {
    if (SSL_CTX_load_verify_file(c, s.client_ca.c_str()) != 1) {
      return error(errc::permanent, "tls.client_ca " + quoted(s.client_ca) +
                                        ": cannot load CA certificates: " + openssl_errors());
    }
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(s.client_ca.c_str());
    if (names == nullptr) {
      return error(errc::permanent,
                   "tls.client_ca " + quoted(s.client_ca) + ": no CA names: " + openssl_errors());
    }
    SSL_CTX_set_client_CA_list(c, names);  // takes ownership
    // Request, not require: the session decides what an absent or bad certificate means.
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_CLIENT_ONCE, nullptr);
    SSL_CTX_set_verify_depth(c, 9);
  }

  loaded l;
  l.info = "subject=<" + name_text(X509_get_subject_name(leaf)) + ">, issuer=<" +
           name_text(X509_get_issuer_name(leaf)) +
           ">, not_after=" + time_text(X509_get0_notAfter(leaf)) +
           ", sha256=" + fingerprint_sha256(leaf);
  if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0) {
    log::warning("TLS certificate {} expired at {}: clients will refuse it", quoted(s.cert),
                 time_text(X509_get0_notAfter(leaf)));
  } else if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0) {
    log::warning("TLS certificate {} is not valid before {}", quoted(s.cert),
                 time_text(X509_get0_notBefore(leaf)));
  }
  ERR_clear_error();
  try {
    l.ctx = std::make_shared<asio::ssl::context>(ctx.get());
  } catch (const std::exception& e) {
    return error(errc::temporary, std::string("tls: ") + e.what());
  }
  static_cast<void>(ctx.release());  // owned by the asio context now
  return l;
}

result<std::shared_ptr<tls_server_context>> tls_server_context::create(tls_settings s) {
  auto l = load(s);
  if (!l) {
    return std::move(l).err();
  }
  return std::shared_ptr<tls_server_context>(
      new tls_server_context(std::move(s), std::move(l).value()));
}

result<void> tls_server_context::reload() {
  auto l = load(settings_);  // outside the lock: file I/O and key checks take a while
  if (!l) {
    return std::move(l).err();
  }
  loaded fresh = std::move(l).value();
  std::lock_guard lock(mu_);
  std::swap(current_, fresh);
  return {};  // `fresh` now holds the old context; sessions using it keep it alive
}

std::shared_ptr<asio::ssl::context> tls_server_context::current() const {
  std::lock_guard lock(mu_);
  return current_.ctx;
}

std::string tls_server_context::certificate_info() const {
  std::lock_guard lock(mu_);
  return current_.info;
}

// ---------------------------------------------------------------------------------------------
// tls_transport

struct tls_transport::state {
  state(asio::ip::tcp::socket socket, std::shared_ptr<asio::ssl::context> c)
      : ctx(std::move(c)), stream(std::move(socket), *ctx), close_timer(stream.get_executor()) {}

  std::shared_ptr<asio::ssl::context> ctx;  // declared first: the stream refers to it
  asio::ssl::stream<asio::ip::tcp::socket> stream;
  asio::steady_timer close_timer;
  bool handshake_started = false;
  bool established = false;
  bool closed = false;
  bool write_in_flight = false;
  bool write_failed = false;  // a record may be cut: no close_notify after that
  bool client_cert_failed = false;
  std::string client_cert_problem;
};

tls_transport::tls_transport(asio::ip::tcp::socket socket, std::shared_ptr<asio::ssl::context> ctx)
    : st_(std::make_shared<state>(std::move(socket), std::move(ctx))) {
  SSL* ssl = st_->stream.native_handle();
  if ((SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER) != 0) {
    // Like Dovecot's ssl_verify_client_cert: a certificate that does not verify is noted, not
    // fatal, so the client can still log in another way; EXTERNAL asks
    // has_verified_client_certificate().
    state* s = st_.get();  // the stream, which holds this callback, lives inside *s
    st_->stream.set_verify_callback([s](bool preverified, asio::ssl::verify_context& vc) {
      if (!preverified && !s->client_cert_failed) {
        s->client_cert_failed = true;
        X509_STORE_CTX* x = vc.native_handle();
        try {
          s->client_cert_problem =
              std::string(X509_verify_cert_error_string(X509_STORE_CTX_get_error(x))) + " (depth " +
              std::to_string(X509_STORE_CTX_get_error_depth(x)) + ")";
        } catch (...) {
          // no memory for the text: the failure itself is recorded
        }
      }
      return true;
    });
  }
}

tls_transport::~tls_transport() {
  if (!st_->closed) {
    st_->closed = true;
    drop_socket(st_->stream.next_layer());
  }
}

asio::awaitable<std::string> tls_transport::handshake() {
  auto keep = st_;  // pending operations must never outlive the stream
  if (keep->closed) {
    co_return "connection closed before the handshake";
  }
  if (keep->handshake_started) {
    co_return "handshake already done";
  }
  keep->handshake_started = true;
  auto [ec] = co_await keep->stream.async_handshake(asio::ssl::stream_base::server, use_tuple);
  if (!ec && !keep->closed) {
    keep->established = true;
    co_return std::string();
  }
  std::string reason;
  if (keep->closed) {
    reason = "handshake cancelled (timeout or shutdown)";
  } else if (ec == asio::error::eof || ec == asio::ssl::error::stream_truncated ||
             ec == asio::error::connection_reset) {
    reason = "client closed the connection during the handshake";
  } else if (ec.category() == asio::error::get_ssl_category()) {
    reason = ec.message();
    auto code = static_cast<unsigned long>(ec.value());
    if (ERR_GET_LIB(code) == ERR_LIB_SSL) {
      switch (ERR_GET_REASON(code)) {
        case SSL_R_UNSUPPORTED_PROTOCOL:
          reason += std::string(", client offered at most ") +
                    version_name(SSL_client_version(keep->stream.native_handle()));
          break;
        case SSL_R_WRONG_VERSION_NUMBER:
        case SSL_R_HTTP_REQUEST:
        case SSL_R_HTTPS_PROXY_REQUEST:
        case SSL_R_PACKET_LENGTH_TOO_LONG:
          reason += ", client did not start a TLS handshake (plaintext?)";
          break;
        case SSL_R_NO_APPLICATION_PROTOCOL:
          reason += ", client offered ALPN without \"pop3\"";
          break;
        default:
          break;
      }
    }
  } else {
    reason = "connection error: " + ec.message();
  }
  ERR_clear_error();
  co_return reason;
}

asio::awaitable<std::size_t> tls_transport::read_some(asio::mutable_buffer buf,
                                                      std::error_code& ec) {
  auto keep = st_;
  if (keep->closed) {
    ec = asio::error::operation_aborted;
    co_return 0;
  }
  if (!keep->established) {
    ec = asio::error::not_connected;
    co_return 0;
  }
  auto [e, n] = co_await keep->stream.async_read_some(buf, use_tuple);
  ec = e;
  if (n == 0 && !ec) {
    ec = asio::error::eof;
  }
  co_return e ? 0 : n;
}

asio::awaitable<void> tls_transport::write_all(asio::const_buffer buf, std::error_code& ec) {
  auto keep = st_;
  if (keep->closed) {
    ec = asio::error::operation_aborted;
    co_return;
  }
  if (!keep->established) {
    ec = asio::error::not_connected;
    co_return;
  }
  keep->write_in_flight = true;
  auto [e, n] = co_await asio::async_write(keep->stream, buf, use_tuple);
  (void)n;
  keep->write_in_flight = false;
  if (e) {
    keep->write_failed = true;
  }
  ec = e;
}

void tls_transport::close() noexcept {
  state& s = *st_;
  if (s.closed) {
    return;
  }
  s.closed = true;
  auto& sock = s.stream.next_layer();
  if (!s.established || s.write_in_flight || s.write_failed || !sock.is_open()) {
    drop_socket(sock);  // nothing clean to say: a handshake in progress or a record cut short
    return;
  }
  try {
    std::error_code ignored;
    sock.cancel(ignored);  // a pending read completes with operation_aborted
    // Send close_notify without waiting for the client's (RFC 8446 section 6.1 allows it; a
    // client that stopped reading would otherwise hold us): mark theirs as already received.
    SSL* ssl = s.stream.native_handle();
    SSL_set_shutdown(ssl, SSL_get_shutdown(ssl) | SSL_RECEIVED_SHUTDOWN);
    s.close_timer.expires_after(tls_close_notify_bound);
    s.close_timer.async_wait([keep = st_](const std::error_code& ec) {
      if (!ec) {
        drop_socket(keep->stream.next_layer());  // the client is not taking our bytes
      }
    });
    s.stream.async_shutdown([keep = st_](const std::error_code&) {
      keep->close_timer.cancel();
      drop_socket(keep->stream.next_layer());
      ERR_clear_error();
    });
  } catch (...) {
    drop_socket(sock);
  }
}

bool tls_transport::is_established() const noexcept { return st_->established; }

std::string tls_transport::description() const {
  if (!st_->established) {
    return {};
  }
  SSL* ssl = st_->stream.native_handle();
  return std::string(SSL_get_version(ssl)) + " " + SSL_get_cipher_name(ssl);
}

bool tls_transport::has_verified_client_certificate() const {
  if (!st_->established || st_->client_cert_failed) {
    return false;
  }
  SSL* ssl = st_->stream.native_handle();
  // With verification off OpenSSL reports X509_V_OK for everything: check it was on.
  return (SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER) != 0 &&
         SSL_get0_peer_certificate(ssl) != nullptr && SSL_get_verify_result(ssl) == X509_V_OK;
}

std::string tls_transport::client_certificate_problem() const {
  if (!st_->established) {
    return {};
  }
  if (st_->client_cert_failed) {
    return st_->client_cert_problem.empty() ? std::string("certificate did not verify")
                                            : st_->client_cert_problem;
  }
  SSL* ssl = st_->stream.native_handle();
  long v = SSL_get_verify_result(ssl);
  if (SSL_get0_peer_certificate(ssl) != nullptr && v != X509_V_OK) {
    return X509_verify_cert_error_string(v);  // a resumed session: no callback ran
  }
  return {};
}

bool tls_transport::is_valid_certificate_field_spec(std::string_view spec) {
  auto colon = spec.find(':');
  if (colon == std::string_view::npos) {
    return false;
  }
  std::string_view kind = spec.substr(0, colon);
  std::string name(spec.substr(colon + 1));
  if (kind == "subject") {
    return !name.empty() && OBJ_txt2nid(name.c_str()) != NID_undef;
  }
  if (kind == "san") {
    return san_type(name) >= 0;
  }
  return false;
}

std::string tls_transport::client_certificate_field(std::string_view spec) const {
  if (!is_valid_certificate_field_spec(spec) || !has_verified_client_certificate()) {
    return {};
  }
  X509* cert = SSL_get0_peer_certificate(st_->stream.native_handle());
  auto colon = spec.find(':');
  std::string_view kind = spec.substr(0, colon);
  std::string name(spec.substr(colon + 1));

  if (kind == "subject") {
    const X509_NAME* subject = X509_get_subject_name(cert);
    int nid = OBJ_txt2nid(name.c_str());
    int at = X509_NAME_get_index_by_NID(subject, nid, -1);
    if (at < 0 || X509_NAME_get_index_by_NID(subject, nid, at) >= 0) {
      return {};  // absent, or present twice: which one would be the user?
    }
    ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, at));
    unsigned char* utf8 = nullptr;
    int n = ASN1_STRING_to_UTF8(&utf8, data);
    if (n < 0 || utf8 == nullptr) {
      ERR_clear_error();
      return {};
    }
    std::string value(reinterpret_cast<char*>(utf8), static_cast<std::size_t>(n));
    OPENSSL_free(utf8);
    return clean_value(std::move(value));
  }

  // san:<type>: the one subjectAltName entry of that type; IA5 text, so printable ASCII only.
  int type = san_type(name);
  int critical = 0;
  general_names_ptr names(static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(cert, NID_subject_alt_name, &critical, nullptr)));
  if (!names) {
    ERR_clear_error();
    return {};
  }
  std::string found;
  int matches = 0;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names.get(), i);
    int gtype = 0;
    auto* value = static_cast<const ASN1_STRING*>(GENERAL_NAME_get0_value(gn, &gtype));
    if (gtype != type || value == nullptr) {
      continue;
    }
    if (++matches > 1) {
      return {};
    }
    found.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(value)),
                 static_cast<std::size_t>(ASN1_STRING_length(value)));
  }
  for (unsigned char c : found) {
    if (c <= 0x20 || c >= 0x7f) {
      return {};
    }
  }
  return found;
}

std::string tls_transport::channel_binding_tls_exporter() const {
  if (!st_->established) {
    return {};
  }
  SSL* ssl = st_->stream.native_handle();
  if (SSL_version(ssl) < TLS1_3_VERSION && SSL_get_extms_support(ssl) != 1) {
    return {};  // RFC 9266 section 2: TLS 1.2 only with the extended master secret
  }
  std::string out(32, '\0');
  if (SSL_export_keying_material(ssl, reinterpret_cast<unsigned char*>(out.data()), out.size(),
                                 exporter_label, sizeof exporter_label - 1, empty_context, 0,
                                 1) != 1) {
    ERR_clear_error();
    return {};
  }
  return out;
}

std::string tls_transport::channel_binding_tls_unique() const {
  if (!st_->established) {
    return {};
  }
  SSL* ssl = st_->stream.native_handle();
  if (SSL_version(ssl) >= TLS1_3_VERSION || SSL_get_extms_support(ssl) != 1) {
    return {};  // undefined on TLS 1.3; open to the triple handshake attack without EMS
  }
  // RFC 5929 section 3.1: the first Finished of the latest handshake. In a full handshake the
  // client sends its Finished first; in an abbreviated (resumed) one the server does.
  unsigned char buf[EVP_MAX_MD_SIZE];
  std::size_t n = SSL_session_reused(ssl) ? SSL_get_finished(ssl, buf, sizeof buf)
                                          : SSL_get_peer_finished(ssl, buf, sizeof buf);
  if (n == 0 || n > sizeof buf) {
    return {};
  }
  return std::string(reinterpret_cast<char*>(buf), n);
}

}  // namespace postern::net
