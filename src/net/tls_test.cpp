// Tests for net/tls: real handshakes over loopback TCP between tls_transport and an
// asio::ssl client, with certificates generated at test time through OpenSSL's API into a
// temporary directory. Every run is bounded by io_context::run_for.
#include "net/tls.hpp"

#include "net/transport.hpp"

#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/io_context.hpp>
#include <asio/read.hpp>
#include <asio/read_until.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace postern::net {
namespace {

namespace fs = std::filesystem;
using asio::ip::tcp;
using namespace std::chrono_literals;
using client_stream = asio::ssl::stream<tcp::socket>;

constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

// ---------------------------------------------------------------------------------------------
// Certificates

struct pkey_free {
  void operator()(EVP_PKEY* p) const noexcept { EVP_PKEY_free(p); }
};
struct x509_free {
  void operator()(X509* p) const noexcept { X509_free(p); }
};
using pkey_ptr = std::unique_ptr<EVP_PKEY, pkey_free>;
using x509_ptr = std::unique_ptr<X509, x509_free>;

pkey_ptr new_key() {
  pkey_ptr k(EVP_EC_gen("P-256"));
  if (!k) {
    throw std::runtime_error("EC key generation failed");
  }
  return k;
}

struct cert_spec {
  std::vector<std::pair<std::string, std::string>> subject;     // {"CN", "name"}, ...
  std::vector<std::pair<std::string, std::string>> extensions;  // {"subjectAltName", "..."}
  long not_before_days = -1;
  long not_after_days = 30;
};

// Signs with issuer_key, or self-signs when issuer is null.
x509_ptr new_cert(const cert_spec& spec, EVP_PKEY* key, X509* issuer, EVP_PKEY* issuer_key) {
  x509_ptr x(X509_new());
  X509_set_version(x.get(), 2);
  unsigned char serial[8];
  RAND_bytes(serial, sizeof serial);
  serial[0] &= 0x7f;
  BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x.get()));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), spec.not_before_days * 86400);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), spec.not_after_days * 86400);
  X509_set_pubkey(x.get(), key);
  X509_NAME* name = X509_get_subject_name(x.get());
  for (const auto& [field, value] : spec.subject) {
    X509_NAME_add_entry_by_txt(name, field.c_str(), MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(value.c_str()), -1, -1, 0);
  }
  X509_set_issuer_name(x.get(), issuer ? X509_get_subject_name(issuer) : name);
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, issuer ? issuer : x.get(), x.get(), nullptr, nullptr, 0);
  for (const auto& [ext, value] : spec.extensions) {
    X509_EXTENSION* e = X509V3_EXT_conf(nullptr, &v3, ext.c_str(), value.c_str());
    if (e == nullptr) {
      throw std::runtime_error("bad extension " + ext + "=" + value);
    }
    X509_add_ext(x.get(), e, -1);
    X509_EXTENSION_free(e);
  }
  if (X509_sign(x.get(), issuer_key ? issuer_key : key, EVP_sha256()) == 0) {
    throw std::runtime_error("X509_sign failed");
  }
  return x;
}

// Writes through a temporary file and rename, like an admin's deploy script.
void write_file(const fs::path& path, const std::function<void(BIO*)>& write) {
  BIO* bio = BIO_new(BIO_s_mem());
  write(bio);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  fs::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(data, n);
  }
  BIO_free(bio);
  fs::rename(tmp, path);
}

void write_cert(const fs::path& path, std::initializer_list<X509*> certs) {
  write_file(path, [&](BIO* b) {
    for (X509* c : certs) {
      PEM_write_bio_X509(b, c);
    }
  });
}

void write_key(const fs::path& path, EVP_PKEY* key, const char* passphrase = nullptr) {
  write_file(path, [&](BIO* b) {
    if (passphrase) {
      PEM_write_bio_PrivateKey(b, key, EVP_aes_256_cbc(),
                               reinterpret_cast<const unsigned char*>(passphrase),
                               static_cast<int>(std::strlen(passphrase)), nullptr, nullptr);
    } else {
      PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr);
    }
  });
}

std::string fingerprint(const X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  X509_digest(cert, EVP_sha256(), md, &n);
  return std::string(reinterpret_cast<char*>(md), n);
}

const std::vector<std::pair<std::string, std::string>> server_exts = {
    {"basicConstraints", "critical,CA:FALSE"},
    {"keyUsage", "critical,digitalSignature"},
    {"extendedKeyUsage", "serverAuth"},
    {"subjectAltName", "DNS:localhost,IP:127.0.0.1"}};
const std::vector<std::pair<std::string, std::string>> ca_exts = {
    {"basicConstraints", "critical,CA:TRUE"}, {"keyUsage", "critical,keyCertSign,cRLSign"}};
const std::vector<std::pair<std::string, std::string>> client_exts = {
    {"basicConstraints", "critical,CA:FALSE"},
    {"keyUsage", "critical,digitalSignature"},
    {"extendedKeyUsage", "clientAuth"},
    {"subjectAltName", "email:alice@example.org"}};

// Everything the tests need, generated once.
struct pki {
  fs::path dir;
  // Server side: a CA, two server certificates (for reload), a chain via an intermediate.
  fs::path ca, server_cert, server_key, other_cert, other_key;
  fs::path root, intermediate, leaf_cert, leaf_key;
  fs::path encrypted_key;
  // Client certificates: issued by the client CA, self-signed, and one with two CNs.
  fs::path client_ca, client_cert, client_key, rogue_cert, rogue_key, twocn_cert, twocn_key;
  std::string server_fp, other_fp;

  pki() {
    char tmpl[] = "/tmp/postern-tls-test-XXXXXX";
    if (!mkdtemp(tmpl)) {
      throw std::runtime_error("mkdtemp failed");
    }
    dir = tmpl;
    auto ca_key = new_key();
    auto ca_x =
        new_cert({{{"CN", "Postern Test CA"}}, ca_exts, -1, 365}, ca_key.get(), nullptr, nullptr);
    ca = dir / "ca.pem";
    write_cert(ca, {ca_x.get()});

    auto skey = new_key();
    auto sx = new_cert({{{"CN", "localhost"}}, server_exts}, skey.get(), ca_x.get(), ca_key.get());
    server_cert = dir / "server.pem";
    server_key = dir / "server.key";
    server_fp = fingerprint(sx.get());
    write_cert(dir / "server-a.pem", {sx.get()});
    write_key(dir / "server-a.key", skey.get());
    encrypted_key = dir / "encrypted.key";
    write_key(encrypted_key, skey.get(), "open sesame");

    auto okey = new_key();
    auto ox = new_cert({{{"CN", "localhost"}, {"O", "second"}}, server_exts}, okey.get(),
                       ca_x.get(), ca_key.get());
    other_fp = fingerprint(ox.get());
    other_cert = dir / "server-b.pem";
    other_key = dir / "server-b.key";
    write_cert(other_cert, {ox.get()});
    write_key(other_key, okey.get());

    auto root_key = new_key();
    auto root_x =
        new_cert({{{"CN", "Postern Root"}}, ca_exts, -1, 365}, root_key.get(), nullptr, nullptr);
    auto int_key = new_key();
    auto int_x = new_cert({{{"CN", "Postern Intermediate"}}, ca_exts, -1, 365}, int_key.get(),
                          root_x.get(), root_key.get());
    auto lkey = new_key();
    auto lx =
        new_cert({{{"CN", "localhost"}}, server_exts}, lkey.get(), int_x.get(), int_key.get());
    root = dir / "root.pem";
    intermediate = dir / "intermediate.pem";
    leaf_cert = dir / "leaf.pem";
    leaf_key = dir / "leaf.key";
    write_cert(root, {root_x.get()});
    write_cert(intermediate, {int_x.get()});
    write_cert(leaf_cert, {lx.get()});
    write_key(leaf_key, lkey.get());

    auto cca_key = new_key();
    auto cca_x = new_cert({{{"CN", "Postern Client CA"}}, ca_exts, -1, 365}, cca_key.get(), nullptr,
                          nullptr);
    client_ca = dir / "client-ca.pem";
    write_cert(client_ca, {cca_x.get()});
    auto ckey = new_key();
    auto cx = new_cert({{{"CN", "alice"}, {"emailAddress", "alice@example.org"}}, client_exts},
                       ckey.get(), cca_x.get(), cca_key.get());
    client_cert = dir / "client.pem";
    client_key = dir / "client.key";
    write_cert(client_cert, {cx.get()});
    write_key(client_key, ckey.get());
    auto rkey = new_key();
    auto rx = new_cert({{{"CN", "alice"}}, client_exts}, rkey.get(), nullptr, nullptr);
    rogue_cert = dir / "rogue.pem";
    rogue_key = dir / "rogue.key";
    write_cert(rogue_cert, {rx.get()});
    write_key(rogue_key, rkey.get());
    auto tkey = new_key();
    auto tx = new_cert({{{"CN", "alice"}, {"CN", "root"}}, client_exts}, tkey.get(), cca_x.get(),
                       cca_key.get());
    twocn_cert = dir / "twocn.pem";
    twocn_key = dir / "twocn.key";
    write_cert(twocn_cert, {tx.get()});
    write_key(twocn_key, tkey.get());
  }
  ~pki() {
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  }
};

// Generated on first use, removed at exit.
pki& the() {
  static pki p;
  return p;
}

// ---------------------------------------------------------------------------------------------
// Plumbing

struct tcp_pair {
  tcp::socket server;
  tcp::socket client;
};

tcp_pair connected_pair(asio::io_context& io) {
  tcp::acceptor acc(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  tcp::socket client(io);
  client.connect(acc.local_endpoint());
  tcp::socket server = acc.accept();
  return {std::move(server), std::move(client)};
}

// Runs coroutines to completion within a time bound; rethrows the first exception.
class runner {
 public:
  explicit runner(asio::io_context& io) : io_(io) {}
  void spawn(asio::awaitable<void> a) {
    ++pending_;
    asio::co_spawn(io_, std::move(a), [this](std::exception_ptr e) {
      --pending_;
      if (e && !error_) {
        error_ = e;
      }
    });
  }
  // Returns true when everything finished in time.
  bool run(std::chrono::steady_clock::duration limit = 20s) {
    io_.restart();
    io_.run_for(limit);
    if (error_) {
      std::rethrow_exception(error_);
    }
    return pending_ == 0;
  }

 private:
  asio::io_context& io_;
  int pending_ = 0;
  std::exception_ptr error_;
};

struct client_options {
  int min_version = 0;
  int max_version = 0;
  std::string ciphers;
  std::string trust;  // CA file; empty = no verification
  std::string cert, key;
  std::vector<std::string> alpn;
};

std::unique_ptr<asio::ssl::context> client_context(const client_options& o) {
  auto ctx = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
  SSL_CTX* c = ctx->native_handle();
  if (o.min_version) {
    SSL_CTX_set_min_proto_version(c, o.min_version);
  }
  if (o.max_version) {
    SSL_CTX_set_max_proto_version(c, o.max_version);
  }
  if (!o.ciphers.empty()) {
    SSL_CTX_set_cipher_list(c, o.ciphers.c_str());
  }
  if (!o.trust.empty()) {
    ctx->load_verify_file(o.trust);
    ctx->set_verify_mode(asio::ssl::verify_peer);
  } else {
    ctx->set_verify_mode(asio::ssl::verify_none);
  }
  if (!o.cert.empty()) {
    ctx->use_certificate_chain_file(o.cert);
    ctx->use_private_key_file(o.key, asio::ssl::context::pem);
  }
  if (!o.alpn.empty()) {
    std::string wire;
    for (const auto& p : o.alpn) {
      wire.push_back(static_cast<char>(p.size()));
      wire += p;
    }
    SSL_CTX_set_alpn_protos(c, reinterpret_cast<const unsigned char*>(wire.data()),
                            static_cast<unsigned>(wire.size()));
  }
  return ctx;
}

tls_settings server_settings() {
  tls_settings s;
  s.cert = the().server_cert.string();
  s.key = the().server_key.string();
  return s;
}

// Installs server A's certificate at the paths server_settings() names.
void install_server_a() {
  fs::copy_file(the().dir / "server-a.pem", the().server_cert,
                fs::copy_options::overwrite_existing);
  fs::copy_file(the().dir / "server-a.key", the().server_key, fs::copy_options::overwrite_existing);
}

std::shared_ptr<tls_server_context> make_server(tls_settings s = server_settings()) {
  auto r = tls_server_context::create(std::move(s));
  if (!r) {
    throw std::runtime_error("create: " + r.err().message());
  }
  return std::move(r).value();
}

asio::awaitable<std::error_code> client_handshake(client_stream& s) {
  auto [ec] = co_await s.async_handshake(asio::ssl::stream_base::client, use_tuple);
  co_return ec;
}

// Reads until EOF or error; returns what came and how it ended.
template <typename Stream>
asio::awaitable<std::pair<std::string, std::error_code>> read_to_end(Stream& s) {
  std::string data;
  char buf[16384];
  for (;;) {
    auto [ec, n] = co_await s.async_read_some(asio::buffer(buf), use_tuple);
    data.append(buf, n);
    if (ec) {
      co_return std::make_pair(std::move(data), ec);
    }
  }
}

// Reads exactly n bytes through a transport.
asio::awaitable<std::string> transport_read_exactly(transport& t, std::size_t n,
                                                    std::error_code& ec) {
  std::string out;
  char buf[4096];
  while (out.size() < n) {
    std::size_t got =
        co_await t.read_some(asio::buffer(buf, std::min(sizeof buf, n - out.size())), ec);
    if (got == 0) {
      break;
    }
    out.append(buf, got);
  }
  co_return out;
}

std::string peer_fingerprint(client_stream& s) {
  X509* cert = SSL_get0_peer_certificate(s.native_handle());
  return cert ? fingerprint(cert) : std::string();
}

class tls_test : public ::testing::Test {
 protected:
  void SetUp() override { install_server_a(); }
  asio::io_context io_;
};

// The server's handshake reason and the client's error.
struct handshake_outcome {
  std::string server_reason;
  std::error_code client_ec;
};

// ---------------------------------------------------------------------------------------------
// Handshakes and data

TEST_F(tls_test, handshake_and_data_both_ways) {
  auto server_ctx = make_server();
  auto pair = connected_pair(io_);
  tls_transport server(std::move(pair.server), server_ctx->current());
  auto cctx = client_context({.trust = the().ca.string()});
  client_stream client(std::move(pair.client), *cctx);
  SSL_set_tlsext_host_name(client.native_handle(), "localhost");
  std::string big(300000, 'x');
  for (std::size_t i = 0; i < big.size(); ++i) {
    big[i] = static_cast<char>('a' + i % 26);
  }
  std::string server_got, client_got;
  std::error_code client_end;

  auto srv = [&]() -> asio::awaitable<void> {
    std::string reason = co_await server.handshake();
    EXPECT_EQ(reason, "");
    EXPECT_TRUE(server.is_established());
    EXPECT_EQ(server.description().rfind("TLSv1.3 ", 0), 0u) << server.description();
    std::error_code ec;
    server_got = co_await transport_read_exactly(server, 13, ec);
    EXPECT_FALSE(ec) << ec.message();
    co_await server.write_all(asio::buffer(big), ec);
    EXPECT_FALSE(ec) << ec.message();
    server.close();
    server.close();  // idempotent
    char c;
    std::size_t n = co_await server.read_some(asio::buffer(&c, 1), ec);
    EXPECT_EQ(n, 0u);
    EXPECT_TRUE(ec);
  };
  auto cli = [&]() -> asio::awaitable<void> {
    auto ec = co_await client_handshake(client);
    EXPECT_FALSE(ec) << ec.message();
    auto [e, n] = co_await asio::async_write(
        client, asio::buffer(std::string_view("CAPA\r\nSTAT\r\n.")), use_tuple);
    EXPECT_FALSE(e);
    auto [data, end] = co_await read_to_end(client);
    client_got = std::move(data);
    client_end = end;
  };
  runner r(io_);
  r.spawn(srv());
  r.spawn(cli());
  ASSERT_TRUE(r.run());
  EXPECT_EQ(server_got, "CAPA\r\nSTAT\r\n.");
  EXPECT_EQ(client_got.size(), big.size());
  EXPECT_TRUE(client_got == big);
  // close() sent close_notify: a clean end of stream, not a truncation.
  EXPECT_EQ(client_end, asio::error::eof) << client_end.message();
}

// Runs one handshake against a client built from `opts`; `check` sees both ends when both
// sides succeeded.
handshake_outcome try_handshake(
    asio::io_context& io, const std::shared_ptr<tls_server_context>& sctx,
    const client_options& opts,
    const std::function<void(tls_transport&, client_stream&)>& check = {}) {
  auto pair = connected_pair(io);
  tls_transport server(std::move(pair.server), sctx->current());
  auto cctx = client_context(opts);
  client_stream client(std::move(pair.client), *cctx);
  handshake_outcome out;
  bool client_done = false;
  bool server_done = false;
  auto srv = [&]() -> asio::awaitable<void> {
    out.server_reason = co_await server.handshake();
    server_done = true;
    if (!out.server_reason.empty()) {
      server.close();
    }
  };
  auto cli = [&]() -> asio::awaitable<void> {
    out.client_ec = co_await client_handshake(client);
    client_done = true;
    if (out.client_ec) {
      std::error_code ignored;
      client.next_layer().close(ignored);
    }
  };
  runner r(io);
  r.spawn(srv());
  r.spawn(cli());
  EXPECT_TRUE(r.run()) << "handshake did not finish";
  if (check && server_done && client_done) {
    check(server, client);
  }
  server.close();
  return out;
}

TEST_F(tls_test, tls12_negotiates_ecdhe_aead) {
  auto sctx = make_server();
  auto out = try_handshake(
      io_, sctx, {.max_version = TLS1_2_VERSION, .trust = the().ca.string()},
      [](tls_transport& s, client_stream&) {
        std::string d = s.description();
        EXPECT_EQ(d.rfind("TLSv1.2 ECDHE-", 0), 0u) << d;
        EXPECT_TRUE(d.find("GCM") != std::string::npos || d.find("CHACHA20") != std::string::npos)
            << d;
      });
  EXPECT_EQ(out.server_reason, "");
  EXPECT_FALSE(out.client_ec);
}

TEST_F(tls_test, tls11_client_is_refused) {
  auto sctx = make_server();
  auto out = try_handshake(io_, sctx,
                           {.min_version = TLS1_1_VERSION,
                            .max_version = TLS1_1_VERSION,
                            .ciphers = "DEFAULT:@SECLEVEL=0"});
  EXPECT_NE(out.server_reason.find("unsupported protocol"), std::string::npos) << out.server_reason;
  EXPECT_NE(out.server_reason.find("TLSv1.1"), std::string::npos) << out.server_reason;
  EXPECT_TRUE(out.client_ec);
}

TEST_F(tls_test, min_version_tls13_refuses_tls12) {
  auto s = server_settings();
  s.min_version = "TLSv1.3";
  auto sctx = make_server(s);
  auto out = try_handshake(io_, sctx, {.max_version = TLS1_2_VERSION});
  EXPECT_NE(out.server_reason.find("unsupported protocol"), std::string::npos) << out.server_reason;
  EXPECT_TRUE(out.client_ec);
  auto ok = try_handshake(io_, sctx, {});
  EXPECT_EQ(ok.server_reason, "");
}

TEST_F(tls_test, non_aead_cipher_is_refused_by_default) {
  auto sctx = make_server();
  auto out = try_handshake(io_, sctx,
                           {.max_version = TLS1_2_VERSION, .ciphers = "ECDHE-ECDSA-AES128-SHA"});
  EXPECT_NE(out.server_reason.find("no shared cipher"), std::string::npos) << out.server_reason;
  EXPECT_TRUE(out.client_ec);
}

TEST_F(tls_test, configured_cipher_list_is_used) {
  auto s = server_settings();
  s.ciphers = "ECDHE-ECDSA-CHACHA20-POLY1305";
  auto sctx = make_server(s);
  auto out = try_handshake(io_, sctx, {.max_version = TLS1_2_VERSION},
                           [](tls_transport& t, client_stream&) {
                             EXPECT_EQ(t.description(), "TLSv1.2 ECDHE-ECDSA-CHACHA20-POLY1305");
                           });
  EXPECT_EQ(out.server_reason, "");
}

TEST_F(tls_test, plaintext_client_fails_with_useful_reason) {
  auto sctx = make_server();
  auto pair = connected_pair(io_);
  tls_transport server(std::move(pair.server), sctx->current());
  std::string reason;
  auto srv = [&]() -> asio::awaitable<void> {
    reason = co_await server.handshake();
    server.close();
  };
  auto cli = [&]() -> asio::awaitable<void> {
    co_await asio::async_write(pair.client, asio::buffer(std::string_view("USER alice\r\n")),
                               use_tuple);
    co_await read_to_end(pair.client);
  };
  runner r(io_);
  r.spawn(srv());
  r.spawn(cli());
  ASSERT_TRUE(r.run());
  EXPECT_NE(reason.find("plaintext"), std::string::npos) << reason;
}

TEST_F(tls_test, client_closing_during_handshake_is_reported) {
  auto sctx = make_server();
  auto pair = connected_pair(io_);
  tls_transport server(std::move(pair.server), sctx->current());
  pair.client.close();
  std::string reason;
  auto srv = [&]() -> asio::awaitable<void> { reason = co_await server.handshake(); };
  runner r(io_);
  r.spawn(srv());
  ASSERT_TRUE(r.run());
  EXPECT_EQ(reason, "client closed the connection during the handshake");
}

TEST_F(tls_test, client_rejecting_the_certificate_is_reported) {
  auto sctx = make_server();
  auto out = try_handshake(io_, sctx, {.trust = the().client_ca.string()});  // the wrong CA
  EXPECT_TRUE(out.client_ec);
  EXPECT_NE(out.server_reason.find("unknown ca"), std::string::npos) << out.server_reason;
}

TEST_F(tls_test, strict_alpn) {
  auto sctx = make_server();
  auto bad = try_handshake(io_, sctx, {.alpn = {"http/1.1", "imap"}});
  EXPECT_NE(bad.server_reason.find("ALPN"), std::string::npos) << bad.server_reason;
  EXPECT_TRUE(bad.client_ec);
  auto good =
      try_handshake(io_, sctx, {.alpn = {"imap", "pop3"}}, [](tls_transport&, client_stream& c) {
        const unsigned char* p = nullptr;
        unsigned int n = 0;
        SSL_get0_alpn_selected(c.native_handle(), &p, &n);
        EXPECT_EQ(std::string(reinterpret_cast<const char*>(p), n), "pop3");
      });
  EXPECT_EQ(good.server_reason, "");
  auto none = try_handshake(io_, sctx, {});
  EXPECT_EQ(none.server_reason, "");
}

TEST_F(tls_test, context_has_safe_options) {
  auto sctx = make_server();
  SSL_CTX* c = sctx->current()->native_handle();
  uint64_t opts = SSL_CTX_get_options(c);
  EXPECT_NE(opts & SSL_OP_NO_COMPRESSION, 0u);
  EXPECT_NE(opts & SSL_OP_NO_RENEGOTIATION, 0u);
  EXPECT_NE(opts & SSL_OP_CIPHER_SERVER_PREFERENCE, 0u);
  EXPECT_EQ(opts & SSL_OP_ALLOW_CLIENT_RENEGOTIATION, 0u);
  EXPECT_EQ(SSL_CTX_get_min_proto_version(c), TLS1_2_VERSION);
  EXPECT_EQ(SSL_CTX_get_verify_mode(c), SSL_VERIFY_NONE);  // no client_ca: nothing requested
  std::string info = sctx->certificate_info();
  EXPECT_NE(info.find("subject=<CN=localhost>"), std::string::npos) << info;
  EXPECT_NE(info.find("sha256="), std::string::npos) << info;
}

// ---------------------------------------------------------------------------------------------
// Context creation errors

TEST_F(tls_test, create_rejects_mismatched_key) {
  auto s = server_settings();
  s.key = the().other_key.string();
  auto r = tls_server_context::create(s);
  ASSERT_FALSE(r.ok());
  std::string m = r.err().message();
  EXPECT_NE(m.find(the().other_key.string()), std::string::npos) << m;
  EXPECT_NE(m.find("does not match"), std::string::npos) << m;
  EXPECT_NE(m.find("key values mismatch"), std::string::npos) << m;
}

TEST_F(tls_test, create_errors_name_the_file_and_reason) {
  struct row {
    const char* what;
    std::function<void(tls_settings&)> change;
    std::vector<std::string> expect;
    errc code;
  };
  const std::string missing = (the().dir / "missing.pem").string();
  const std::string garbage = (the().dir / "garbage.pem").string();
  { std::ofstream(garbage) << "not a certificate\n"; }
  std::vector<row> rows = {
      {"missing cert",
       [&](tls_settings& s) { s.cert = missing; },
       {"tls.cert", missing, "No such file"},
       errc::permanent},
      {"missing key",
       [&](tls_settings& s) { s.key = missing; },
       {"tls.key", missing, "No such file"},
       errc::permanent},
      {"garbage cert",
       [&](tls_settings& s) { s.cert = garbage; },
       {"tls.cert", garbage, "no start line"},
       errc::permanent},
      {"garbage key",
       [&](tls_settings& s) { s.key = garbage; },
       {"tls.key", garbage},
       errc::permanent},
      {"encrypted key",
       [&](tls_settings& s) { s.key = the().encrypted_key.string(); },
       {"tls.key", the().encrypted_key.string(), "unencrypted"},
       errc::permanent},
      {"missing chain",
       [&](tls_settings& s) { s.chain = missing; },
       {"tls.chain", missing},
       errc::permanent},
      {"garbage chain",
       [&](tls_settings& s) { s.chain = garbage; },
       {"tls.chain", garbage},
       errc::permanent},
      {"missing client CA",
       [&](tls_settings& s) { s.client_ca = missing; },
       {"tls.client_ca", missing},
       errc::permanent},
      {"no cert", [&](tls_settings& s) { s.cert.clear(); }, {"tls.cert: not set"}, errc::invalid},
      {"TLS 1.1",
       [&](tls_settings& s) { s.min_version = "TLSv1.1"; },
       {"tls.min_version", "TLSv1.1"},
       errc::invalid},
      {"bad ciphers",
       [&](tls_settings& s) { s.ciphers = "NO-SUCH-CIPHER"; },
       {"tls.ciphers", "NO-SUCH-CIPHER"},
       errc::invalid},
      {"bad suites",
       [&](tls_settings& s) { s.ciphersuites = "TLS_NOPE"; },
       {"tls.ciphersuites"},
       errc::invalid},
      {"bad groups",
       [&](tls_settings& s) { s.groups = "P-1"; },
       {"tls.groups", "P-1"},
       errc::invalid},
  };
  for (const auto& r : rows) {
    SCOPED_TRACE(r.what);
    auto s = server_settings();
    r.change(s);
    auto res = tls_server_context::create(s);
    ASSERT_FALSE(res.ok());
    EXPECT_EQ(res.err().code(), r.code);
    for (const auto& e : r.expect) {
      EXPECT_NE(res.err().message().find(e), std::string::npos) << res.err().message();
    }
    EXPECT_EQ(ERR_peek_error(), 0u) << "error queue left behind";
  }
}

TEST_F(tls_test, chain_file_is_sent) {
  tls_settings s;
  s.cert = the().leaf_cert.string();
  s.key = the().leaf_key.string();
  auto without = make_server(s);
  auto out = try_handshake(io_, without, {.trust = the().root.string()});
  EXPECT_TRUE(out.client_ec) << "a client trusting only the root needs the intermediate";
  s.chain = the().intermediate.string();
  auto with = make_server(s);
  auto ok = try_handshake(io_, with, {.trust = the().root.string()});
  EXPECT_FALSE(ok.client_ec) << ok.client_ec.message();
  EXPECT_EQ(ok.server_reason, "");
}

// ---------------------------------------------------------------------------------------------
// Reload

TEST_F(tls_test, reload_serves_new_certificate_to_new_sessions_only) {
  auto sctx = make_server();
  auto cctx = client_context({.trust = the().ca.string()});

  // Session 1 starts with certificate A and stays open across the reload.
  auto p1 = connected_pair(io_);
  tls_transport s1(std::move(p1.server), sctx->current());
  client_stream c1(std::move(p1.client), *cctx);
  std::string fp1;
  {
    auto srv = [&]() -> asio::awaitable<void> { EXPECT_EQ(co_await s1.handshake(), ""); };
    auto cli = [&]() -> asio::awaitable<void> {
      EXPECT_FALSE(co_await client_handshake(c1));
      fp1 = peer_fingerprint(c1);
    };
    runner r(io_);
    r.spawn(srv());
    r.spawn(cli());
    ASSERT_TRUE(r.run());
  }
  EXPECT_EQ(fp1, the().server_fp);

  // Certificate B is deployed at the same paths; reload makes it current.
  fs::copy_file(the().other_cert, the().server_cert, fs::copy_options::overwrite_existing);
  fs::copy_file(the().other_key, the().server_key, fs::copy_options::overwrite_existing);
  auto old_ctx = sctx->current();
  ASSERT_TRUE(sctx->reload().ok());
  EXPECT_NE(sctx->current(), old_ctx);
  EXPECT_NE(sctx->certificate_info().find("O=second"), std::string::npos)
      << sctx->certificate_info();
  auto fp_of_new_session = [&] {
    std::string fp;
    try_handshake(io_, sctx, {.trust = the().ca.string()},
                  [&](tls_transport&, client_stream& c) { fp = peer_fingerprint(c); });
    return fp;
  };
  EXPECT_EQ(fp_of_new_session(), the().other_fp);

  // A broken deployment (new certificate, old key) is refused; B stays current.
  install_server_a();
  fs::copy_file(the().other_key, the().server_key, fs::copy_options::overwrite_existing);
  auto bad = sctx->reload();
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.err().message().find("does not match"), std::string::npos) << bad.err().message();
  EXPECT_EQ(fp_of_new_session(), the().other_fp);

  // Session 1 still works both ways, then ends cleanly.
  std::string got;
  std::error_code end;
  {
    auto srv = [&]() -> asio::awaitable<void> {
      std::error_code ec;
      got = co_await transport_read_exactly(s1, 6, ec);
      co_await s1.write_all(asio::buffer(std::string_view("+OK still here\r\n")), ec);
      EXPECT_FALSE(ec);
      s1.close();
    };
    auto cli = [&]() -> asio::awaitable<void> {
      co_await asio::async_write(c1, asio::buffer(std::string_view("NOOP\r\n")), use_tuple);
      auto [data, e] = co_await read_to_end(c1);
      EXPECT_EQ(data, "+OK still here\r\n");
      end = e;
    };
    runner r(io_);
    r.spawn(srv());
    r.spawn(cli());
    ASSERT_TRUE(r.run());
  }
  EXPECT_EQ(got, "NOOP\r\n");
  EXPECT_EQ(end, asio::error::eof);
}

// ---------------------------------------------------------------------------------------------
// Client certificates

tls_settings with_client_ca() {
  auto s = server_settings();
  s.client_ca = the().client_ca.string();
  return s;
}

TEST_F(tls_test, client_certificate_verified_and_fields_extracted) {
  auto sctx = make_server(with_client_ca());
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    SCOPED_TRACE(version);
    bool checked = false;
    auto out = try_handshake(
        io_, sctx,
        {.max_version = version,
         .cert = the().client_cert.string(),
         .key = the().client_key.string()},
        [&](tls_transport& t, client_stream&) {
          checked = true;
          EXPECT_TRUE(t.has_verified_client_certificate());
          EXPECT_EQ(t.client_certificate_problem(), "");
          EXPECT_EQ(t.client_certificate_field("subject:CN"), "alice");
          EXPECT_EQ(t.client_certificate_field("subject:commonName"), "alice");
          EXPECT_EQ(t.client_certificate_field("subject:emailAddress"), "alice@example.org");
          EXPECT_EQ(t.client_certificate_field("san:email"), "alice@example.org");
          EXPECT_EQ(t.client_certificate_field("san:dns"), "");
          EXPECT_EQ(t.client_certificate_field("subject:O"), "");
          EXPECT_EQ(t.client_certificate_field("subject:no-such-attribute"), "");
          EXPECT_EQ(t.client_certificate_field("issuer:CN"), "");
          EXPECT_EQ(t.client_certificate_field("CN"), "");
        });
    EXPECT_EQ(out.server_reason, "");
    EXPECT_TRUE(checked);
  }
}

TEST_F(tls_test, client_without_certificate_still_connects) {
  auto sctx = make_server(with_client_ca());
  auto out = try_handshake(io_, sctx, {}, [](tls_transport& t, client_stream&) {
    EXPECT_FALSE(t.has_verified_client_certificate());
    EXPECT_EQ(t.client_certificate_problem(), "");
    EXPECT_EQ(t.client_certificate_field("subject:CN"), "");
  });
  EXPECT_EQ(out.server_reason, "");
}

TEST_F(tls_test, untrusted_client_certificate_is_not_verified) {
  auto sctx = make_server(with_client_ca());
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    SCOPED_TRACE(version);
    auto out = try_handshake(io_, sctx,
                             {.max_version = version,
                              .cert = the().rogue_cert.string(),
                              .key = the().rogue_key.string()},
                             [](tls_transport& t, client_stream&) {
                               EXPECT_FALSE(t.has_verified_client_certificate());
                               EXPECT_NE(t.client_certificate_problem(), "");
                               EXPECT_EQ(t.client_certificate_field("subject:CN"), "")
                                   << "fields of an unverified certificate";
                             });
    EXPECT_EQ(out.server_reason, "");
  }
}

TEST_F(tls_test, ambiguous_field_is_refused) {
  auto sctx = make_server(with_client_ca());
  auto out =
      try_handshake(io_, sctx, {.cert = the().twocn_cert.string(), .key = the().twocn_key.string()},
                    [](tls_transport& t, client_stream&) {
                      EXPECT_TRUE(t.has_verified_client_certificate());
                      EXPECT_EQ(t.client_certificate_field("subject:CN"), "");
                      EXPECT_EQ(t.client_certificate_field("san:email"), "alice@example.org");
                    });
  EXPECT_EQ(out.server_reason, "");
}

TEST_F(tls_test, no_client_ca_means_no_certificate_requested) {
  auto sctx = make_server();
  auto out = try_handshake(io_, sctx,
                           {.cert = the().client_cert.string(), .key = the().client_key.string()},
                           [](tls_transport& t, client_stream& c) {
                             EXPECT_FALSE(t.has_verified_client_certificate());
                             EXPECT_EQ(t.client_certificate_field("subject:CN"), "");
                             EXPECT_EQ(SSL_get_certificate(c.native_handle()) != nullptr, true);
                           });
  EXPECT_EQ(out.server_reason, "");
}

TEST(tls_field_spec, validation) {
  struct row {
    const char* spec;
    bool valid;
  };
  const row rows[] = {
      {"subject:CN", true},
      {"subject:emailAddress", true},
      {"subject:UID", true},
      {"subject:2.5.4.3", true},
      {"san:email", true},
      {"san:dns", true},
      {"san:uri", true},
      {"subject:", false},
      {"subject:bogus", false},
      {"san:ip", false},
      {"issuer:CN", false},
      {"CN", false},
      {"", false},
  };
  for (const auto& r : rows) {
    EXPECT_EQ(tls_transport::is_valid_certificate_field_spec(r.spec), r.valid) << r.spec;
  }
}

// ---------------------------------------------------------------------------------------------
// Channel bindings

TEST_F(tls_test, exporter_binding_equal_on_both_sides) {
  auto sctx = make_server();
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    SCOPED_TRACE(version);
    bool checked = false;
    try_handshake(io_, sctx, {.max_version = version}, [&](tls_transport& t, client_stream& c) {
      checked = true;
      std::string server_side = t.channel_binding_tls_exporter();
      ASSERT_EQ(server_side.size(), 32u);
      std::string client_side(32, '\0');
      static constexpr char label[] = "EXPORTER-Channel-Binding";
      static constexpr unsigned char empty[1] = {0};
      ASSERT_EQ(SSL_export_keying_material(c.native_handle(),
                                           reinterpret_cast<unsigned char*>(client_side.data()), 32,
                                           label, sizeof label - 1, empty, 0, 1),
                1);
      EXPECT_EQ(server_side, client_side);

      std::string unique = t.channel_binding_tls_unique();
      if (version == TLS1_3_VERSION) {
        EXPECT_EQ(unique, "");
      } else {
        // A full handshake: tls-unique is the client's Finished.
        unsigned char fin[EVP_MAX_MD_SIZE];
        std::size_t n = SSL_get_finished(c.native_handle(), fin, sizeof fin);
        EXPECT_EQ(unique.size(), 12u);
        EXPECT_EQ(unique, std::string(reinterpret_cast<char*>(fin), n));
      }
    });
    EXPECT_TRUE(checked);
  }
}

TEST_F(tls_test, tls12_without_extended_master_secret_has_no_bindings) {
  auto sctx = make_server();
  auto cctx_opts = client_options{.max_version = TLS1_2_VERSION};
  bool checked = false;
  auto pair = connected_pair(io_);
  tls_transport server(std::move(pair.server), sctx->current());
  auto cctx = client_context(cctx_opts);
  SSL_CTX_set_options(cctx->native_handle(), SSL_OP_NO_EXTENDED_MASTER_SECRET);
  client_stream client(std::move(pair.client), *cctx);
  auto srv = [&]() -> asio::awaitable<void> {
    EXPECT_EQ(co_await server.handshake(), "");
    checked = true;
    EXPECT_EQ(server.channel_binding_tls_exporter(), "");
    EXPECT_EQ(server.channel_binding_tls_unique(), "");
    server.close();
  };
  auto cli = [&]() -> asio::awaitable<void> {
    EXPECT_FALSE(co_await client_handshake(client));
    co_await read_to_end(client);
  };
  runner r(io_);
  r.spawn(srv());
  r.spawn(cli());
  ASSERT_TRUE(r.run());
  EXPECT_TRUE(checked);
}

TEST_F(tls_test, nothing_before_the_handshake) {
  auto sctx = make_server();
  auto pair = connected_pair(io_);
  tls_transport server(std::move(pair.server), sctx->current());
  EXPECT_FALSE(server.is_established());
  EXPECT_EQ(server.description(), "");
  EXPECT_EQ(server.channel_binding_tls_exporter(), "");
  EXPECT_EQ(server.channel_binding_tls_unique(), "");
  EXPECT_FALSE(server.has_verified_client_certificate());
  std::error_code read_ec, write_ec;
  auto srv = [&]() -> asio::awaitable<void> {
    char c;
    EXPECT_EQ(co_await server.read_some(asio::buffer(&c, 1), read_ec), 0u);
    co_await server.write_all(asio::buffer(std::string_view("+OK\r\n")), write_ec);
  };
  runner r(io_);
  r.spawn(srv());
  ASSERT_TRUE(r.run());
  EXPECT_EQ(read_ec, asio::error::not_connected);
  EXPECT_EQ(write_ec, asio::error::not_connected);
}

// ---------------------------------------------------------------------------------------------
// STLS: upgrading a plaintext connection

TEST_F(tls_test, upgrade_from_tcp_transport) {
  auto sctx = make_server();
  auto pair = connected_pair(io_);
  auto cctx = client_context({.trust = the().ca.string()});
  std::string server_got;
  std::unique_ptr<tls_transport> tls;
  auto srv = [&]() -> asio::awaitable<void> {
    tcp_transport plain(std::move(pair.server));
    std::error_code ec;
    std::string cmd = co_await transport_read_exactly(plain, 6, ec);
    EXPECT_EQ(cmd, "STLS\r\n");
    co_await plain.write_all(asio::buffer(std::string_view("+OK Begin TLS negotiation\r\n")), ec);
    tls = std::make_unique<tls_transport>(std::move(plain.socket()), sctx->current());
    EXPECT_EQ(co_await tls->handshake(), "");
    server_got = co_await transport_read_exactly(*tls, 6, ec);
    co_await tls->write_all(asio::buffer(std::string_view("+OK\r\n.\r\n")), ec);
    tls->close();
  };
  auto cli = [&]() -> asio::awaitable<void> {
    co_await asio::async_write(pair.client, asio::buffer(std::string_view("STLS\r\n")), use_tuple);
    std::string line;
    auto [ec, n] =
        co_await asio::async_read_until(pair.client, asio::dynamic_buffer(line), "\r\n", use_tuple);
    EXPECT_EQ(line.substr(0, n), "+OK Begin TLS negotiation\r\n");
    EXPECT_EQ(line.size(), n);
    client_stream client(std::move(pair.client), *cctx);
    EXPECT_FALSE(co_await client_handshake(client));
    co_await asio::async_write(client, asio::buffer(std::string_view("CAPA\r\n")), use_tuple);
    auto [data, end] = co_await read_to_end(client);
    EXPECT_EQ(data, "+OK\r\n.\r\n");
    EXPECT_EQ(end, asio::error::eof);
  };
  runner r(io_);
  r.spawn(srv());
  r.spawn(cli());
  ASSERT_TRUE(r.run());
  EXPECT_EQ(server_got, "CAPA\r\n");
}

// CVE-2011-0411 class: plaintext pipelined after STLS that the plaintext side did not consume
// reaches the TLS layer as garbage and fails the handshake; it never becomes a command.
TEST_F(tls_test, plaintext_left_after_stls_never_becomes_tls_data) {
  auto sctx = make_server();
  auto pair = connected_pair(io_);
  auto cctx = client_context({});
  std::string reason;
  std::string after;
  auto srv = [&]() -> asio::awaitable<void> {
    tcp_transport plain(std::move(pair.server));
    std::error_code ec;
    std::string cmd = co_await transport_read_exactly(plain, 6, ec);  // "STLS\r\n" only
    EXPECT_EQ(cmd, "STLS\r\n");
    co_await plain.write_all(asio::buffer(std::string_view("+OK\r\n")), ec);
    tls_transport tls(std::move(plain.socket()), sctx->current());
    reason = co_await tls.handshake();
    if (reason.empty()) {
      char buf[64];
      std::size_t n = co_await tls.read_some(asio::buffer(buf), ec);
      after.assign(buf, n);
    }
    tls.close();
  };
  auto cli = [&]() -> asio::awaitable<void> {
    co_await asio::async_write(pair.client, asio::buffer(std::string_view("STLS\r\nCAPA\r\n")),
                               use_tuple);
    std::string line;
    co_await asio::async_read_until(pair.client, asio::dynamic_buffer(line), "\r\n", use_tuple);
    client_stream client(std::move(pair.client), *cctx);
    auto ec = co_await client_handshake(client);
    EXPECT_TRUE(ec);
    std::error_code ignored;
    client.next_layer().close(ignored);
  };
  runner r(io_);
  r.spawn(srv());
  r.spawn(cli());
  ASSERT_TRUE(r.run());
  EXPECT_NE(reason, "");
  EXPECT_EQ(after, "");
}

// ---------------------------------------------------------------------------------------------
// close()

TEST_F(tls_test, close_cancels_pending_handshake) {
  auto sctx = make_server();
  auto pair = connected_pair(io_);  // the client never speaks
  tls_transport server(std::move(pair.server), sctx->current());
  std::string reason;
  asio::steady_timer watchdog(io_, 100ms);
  watchdog.async_wait([&](std::error_code) { server.close(); });
  auto srv = [&]() -> asio::awaitable<void> { reason = co_await server.handshake(); };
  runner r(io_);
  r.spawn(srv());
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(r.run(5s));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
  EXPECT_EQ(reason, "handshake cancelled (timeout or shutdown)");
}

TEST_F(tls_test, close_during_pending_read_sends_close_notify) {
  auto sctx = make_server();
  auto pair = connected_pair(io_);
  tls_transport server(std::move(pair.server), sctx->current());
  auto cctx = client_context({});
  client_stream client(std::move(pair.client), *cctx);
  std::error_code read_ec, client_end;
  asio::steady_timer watchdog(io_);
  auto srv = [&]() -> asio::awaitable<void> {
    EXPECT_EQ(co_await server.handshake(), "");
    watchdog.expires_after(100ms);
    watchdog.async_wait([&](std::error_code) { server.close(); });
    char c;
    EXPECT_EQ(co_await server.read_some(asio::buffer(&c, 1), read_ec), 0u);
  };
  auto cli = [&]() -> asio::awaitable<void> {
    EXPECT_FALSE(co_await client_handshake(client));
    auto [data, end] = co_await read_to_end(client);
    EXPECT_EQ(data, "");
    client_end = end;
  };
  runner r(io_);
  r.spawn(srv());
  r.spawn(cli());
  ASSERT_TRUE(r.run(10s));
  EXPECT_EQ(read_ec, asio::error::operation_aborted);
  EXPECT_EQ(client_end, asio::error::eof) << client_end.message();
}

TEST_F(tls_test, close_is_bounded_when_client_stops_reading) {
  auto sctx = make_server();
  auto pair = connected_pair(io_);
  tls_transport server(std::move(pair.server), sctx->current());
  auto cctx = client_context({});
  client_stream client(std::move(pair.client), *cctx);
  std::error_code write_ec;
  std::string big(32 << 20, 'z');
  asio::steady_timer watchdog(io_);
  auto srv = [&]() -> asio::awaitable<void> {
    EXPECT_EQ(co_await server.handshake(), "");
    watchdog.expires_after(300ms);
    watchdog.async_wait([&](std::error_code) { server.close(); });
    co_await server.write_all(asio::buffer(big), write_ec);  // stalls: nobody reads
  };
  auto cli = [&]() -> asio::awaitable<void> {
    EXPECT_FALSE(co_await client_handshake(client));
    // ...and never reads.
  };
  runner r(io_);
  r.spawn(srv());
  r.spawn(cli());
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(r.run(10s));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_TRUE(write_ec);
}

TEST_F(tls_test, close_after_client_left_is_quick) {
  auto sctx = make_server();
  auto pair = connected_pair(io_);
  tls_transport server(std::move(pair.server), sctx->current());
  auto cctx = client_context({});
  client_stream client(std::move(pair.client), *cctx);
  std::error_code read_ec;
  auto srv = [&]() -> asio::awaitable<void> {
    EXPECT_EQ(co_await server.handshake(), "");
    char c;
    co_await server.read_some(asio::buffer(&c, 1), read_ec);
    server.close();
  };
  auto cli = [&]() -> asio::awaitable<void> {
    EXPECT_FALSE(co_await client_handshake(client));
    std::error_code ignored;
    client.next_layer().close(ignored);  // no close_notify
  };
  runner r(io_);
  r.spawn(srv());
  r.spawn(cli());
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(r.run(10s));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  EXPECT_TRUE(read_ec == asio::ssl::error::stream_truncated || read_ec == asio::error::eof ||
              read_ec == asio::error::connection_reset)
      << read_ec.message();
}

// The shared state outlives the transport while close_notify is sent.
TEST_F(tls_test, transport_destroyed_right_after_close) {
  auto sctx = make_server();
  auto pair = connected_pair(io_);
  auto server = std::make_unique<tls_transport>(std::move(pair.server), sctx->current());
  auto cctx = client_context({});
  client_stream client(std::move(pair.client), *cctx);
  std::error_code client_end;
  auto srv = [&]() -> asio::awaitable<void> {
    EXPECT_EQ(co_await server->handshake(), "");
    std::error_code ec;
    co_await server->write_all(asio::buffer(std::string_view("+OK bye\r\n")), ec);
    server->close();
    server.reset();
  };
  auto cli = [&]() -> asio::awaitable<void> {
    EXPECT_FALSE(co_await client_handshake(client));
    auto [data, end] = co_await read_to_end(client);
    EXPECT_EQ(data, "+OK bye\r\n");
    client_end = end;
  };
  runner r(io_);
  r.spawn(srv());
  r.spawn(cli());
  ASSERT_TRUE(r.run(10s));
  EXPECT_EQ(client_end, asio::error::eof) << client_end.message();
}

}  // namespace
}  // namespace postern::net
