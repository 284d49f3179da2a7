#include "auth/sasl.hpp"

#include "common/encoding.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <gsasl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <set>
#include <utility>

#include "auth/apop.hpp"
#include "auth/schemes.hpp"
#include "common/unique_fd.hpp"

namespace postern::auth {
namespace {

// ---------------------------------------------------------------------------------------
// Mechanism table

enum class mech_kind {
  plain,
  login,
  cram_md5,
  scram_sha1,
  scram_sha1_plus,
  scram_sha256,
  scram_sha256_plus,
  external,
  gssapi,
};

struct mech_info {
  std::string_view name;
  mech_kind kind;
  bool via_gsasl;
};

constexpr mech_info mech_table[] = {
    {"PLAIN", mech_kind::plain, false},
    {"LOGIN", mech_kind::login, false},
    {"CRAM-MD5", mech_kind::cram_md5, false},
    {"SCRAM-SHA-1", mech_kind::scram_sha1, true},
    {"SCRAM-SHA-1-PLUS", mech_kind::scram_sha1_plus, true},
    {"SCRAM-SHA-256", mech_kind::scram_sha256, true},
    {"SCRAM-SHA-256-PLUS", mech_kind::scram_sha256_plus, true},
    {"EXTERNAL", mech_kind::external, true},
    {"GSSAPI", mech_kind::gssapi, true},
};

constexpr auto mech_names = [] {
  std::array<std::string_view, std::size(mech_table)> out{};
  std::size_t i = 0;
  for (const auto& m : mech_table) {
    out[i++] = m.name;
  }
  return out;
}();

const mech_info* find_mech(std::string_view upper_name) noexcept {
  for (const auto& m : mech_table) {
    if (m.name == upper_name) {
      return &m;
    }
  }
  return nullptr;
}

bool is_scram(mech_kind k) noexcept {
  return k == mech_kind::scram_sha1 || k == mech_kind::scram_sha1_plus ||
         k == mech_kind::scram_sha256 || k == mech_kind::scram_sha256_plus;
}

bool is_plus(mech_kind k) noexcept {
  return k == mech_kind::scram_sha1_plus || k == mech_kind::scram_sha256_plus;
}

scram_hash scram_hash_of(mech_kind k) noexcept {
  return k == mech_kind::scram_sha1 || k == mech_kind::scram_sha1_plus ? scram_hash::sha1
                                                                       : scram_hash::sha256;
}

bool has_channel_binding(const sasl_channel& ch) noexcept {
  return !ch.tls_exporter.empty() || !ch.tls_unique.empty();
}

bool usable_on(mech_kind k, const sasl_channel& ch) noexcept {
  switch (k) {
    case mech_kind::plain:
    case mech_kind::login:
      return ch.plaintext_allowed;
    case mech_kind::scram_sha1_plus:
    case mech_kind::scram_sha256_plus:
      return has_channel_binding(ch);
    case mech_kind::external:
      return ch.client_cert_verified && !ch.client_cert_identity.empty();
    default:
      return true;
  }
}

// ---------------------------------------------------------------------------------------
// Encodings and small helpers

constexpr char b64_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string b64_encode(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  std::size_t i = 0;
  auto byte = [&](std::size_t k) { return static_cast<unsigned char>(in[k]); };
  for (; i + 3 <= in.size(); i += 3) {
    std::uint32_t v = byte(i) << 16 | byte(i + 1) << 8 | byte(i + 2);
    out.push_back(b64_chars[v >> 18 & 63]);
    out.push_back(b64_chars[v >> 12 & 63]);
    out.push_back(b64_chars[v >> 6 & 63]);
    out.push_back(b64_chars[v & 63]);
  }
  if (in.size() - i == 1) {
    std::uint32_t v = byte(i) << 16;
    out.push_back(b64_chars[v >> 18 & 63]);
    out.push_back(b64_chars[v >> 12 & 63]);
    out += "==";
  } else if (in.size() - i == 2) {
    std::uint32_t v = byte(i) << 16 | byte(i + 1) << 8;
    out.push_back(b64_chars[v >> 18 & 63]);
    out.push_back(b64_chars[v >> 12 & 63]);
    out.push_back(b64_chars[v >> 6 & 63]);
    out.push_back('=');
  }
  return out;
}

// Standard base64 (RFC 4648 section 4). Padding is accepted when complete and may be left out;
// blanks, line breaks and other characters are refused, as are non-zero trailing bits.
// `out` must be empty and have room reserved (it may receive a password).
bool b64_decode(std::string_view in, std::string& out) {
  std::size_t pad = 0;
  if (in.size() % 4 == 0 && !in.empty()) {
    if (in.back() == '=') {
      ++pad;
      if (in[in.size() - 2] == '=') {
        ++pad;
      }
    }
  }
  std::string_view body = in.substr(0, in.size() - pad);
  if (body.size() % 4 == 1) {
    return false;
  }
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : body) {
    int v = base64_value(c);
    if (v < 0) {
      return false;
    }
    acc = (acc << 6 | static_cast<std::uint32_t>(v)) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>(acc >> bits & 0xff));
    }
  }
  // Leftover bits must be zero (a canonical encoding).
  return bits == 0 || (acc & ((1u << bits) - 1)) == 0;
}

// A std::string for secret temporaries, wiped on destruction.
struct wiped {
  std::string s;
  wiped() = default;
  explicit wiped(std::string v) : s(std::move(v)) {}
  wiped(const wiped&) = delete;
  wiped& operator=(const wiped&) = delete;
  ~wiped() {
    if (!s.empty()) {
      OPENSSL_cleanse(s.data(), s.size());
    }
  }
};

std::string random_bytes(std::size_t n) {
  std::string out(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1) {
    std::abort();  // no secure randomness: a broken invariant (see apop.hpp)
  }
  return out;
}

// The user name a verify()/lookup() result names, falling back to what the client said.
user_record with_name(user_record u, std::string_view fallback) {
  if (u.name.empty()) {
    u.name = std::string(fallback);
  }
  return u;
}

sasl_step challenge(std::string b64) {
  sasl_step r;
  r.status = sasl_status::challenge;
  r.server_data_b64 = std::move(b64);
  return r;
}

sasl_step failed(std::string reason, bool temporary = false) {
  sasl_step r;
  r.status = temporary ? sasl_status::temporary_failure : sasl_status::failure;
  r.reason = std::move(reason);
  return r;
}

sasl_step succeeded(user_record user, std::string final_b64 = {}) {
  sasl_step r;
  r.status = sasl_status::success;
  r.user = std::move(user);
  r.server_data_b64 = std::move(final_b64);
  return r;
}

// ---------------------------------------------------------------------------------------
// Keytab: which realms hold a key for service/hostname (MIT keytab file format, versions
// 0x0501 and 0x0502, as MIT, Heimdal and Windows' ktpass write it). Only principal names
// are read; the key material is skipped and the buffer wiped.

struct keytab_reader {
  std::string_view data;
  std::size_t pos = 0;
  bool ok = true;

  std::uint32_t get(std::size_t bytes) {
    if (!ok || data.size() - pos < bytes) {
      ok = false;
      return 0;
    }
    std::uint32_t v = 0;
    for (std::size_t i = 0; i < bytes; ++i) {
      v = v << 8 | static_cast<unsigned char>(data[pos + i]);
    }
    pos += bytes;
    return v;
  }
  std::string_view counted() {
    std::size_t n = get(2);
    if (!ok || data.size() - pos < n) {
      ok = false;
      return {};
    }
    std::string_view s = data.substr(pos, n);
    pos += n;
    return s;
  }
};

result<std::set<std::string>> keytab_realms(const std::string& path, std::string_view service,
                                            std::string_view hostname) {
  unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd) {
    return error(errc::invalid, "GSSAPI keytab " + path + " cannot be read",
                 std::error_code(errno, std::generic_category()));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return error(errc::invalid, "GSSAPI keytab " + path + " is not a regular file");
  }
  constexpr off_t max_size = 4 * 1024 * 1024;
  if (st.st_size > max_size) {
    return error(errc::invalid, "GSSAPI keytab " + path + " is larger than 4 MiB");
  }
  wiped buf;
  buf.s.resize(static_cast<std::size_t>(st.st_size));
  std::size_t used = 0;
  while (used < buf.s.size()) {
    ssize_t n = ::read(fd.get(), buf.s.data() + used, buf.s.size() - used);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return error(errc::invalid, "GSSAPI keytab " + path + " cannot be read",
                   std::error_code(errno, std::generic_category()));
    }
    if (n == 0) {
      break;
    }
    used += static_cast<std::size_t>(n);
  }
  keytab_reader r{std::string_view(buf.s).substr(0, used)};
  std::uint32_t version = r.get(2);
  if (!r.ok || (version != 0x0502 && version != 0x0501)) {
    return error(errc::invalid, "GSSAPI keytab " + path + " is not a Kerberos keytab file");
  }
  std::set<std::string> realms;
  while (r.pos < r.data.size()) {
    auto size = static_cast<std::int32_t>(r.get(4));
    if (!r.ok) {
      break;
    }
    if (size <= 0) {  // a hole left by a deleted entry
      std::size_t skip = size == INT32_MIN ? SIZE_MAX : static_cast<std::size_t>(-size);
      if (r.data.size() - r.pos < skip) {
        break;
      }
      r.pos += skip;
      continue;
    }
    if (r.data.size() - r.pos < static_cast<std::size_t>(size)) {
      r.ok = false;
      break;
    }
    keytab_reader e{r.data.substr(r.pos, static_cast<std::size_t>(size))};
    r.pos += static_cast<std::size_t>(size);
    std::uint32_t count = e.get(2);
    if (version == 0x0501 && count > 0) {
      --count;
    }
    std::string_view realm = e.counted();
    std::string_view first = count >= 1 ? e.counted() : std::string_view();
    std::string_view second = count >= 2 ? e.counted() : std::string_view();
    if (!e.ok) {
      r.ok = false;
      break;
    }
    if (count == 2 && first == service && ascii_iequals(second, hostname)) {
      realms.insert(std::string(realm));
    }
  }
  if (!r.ok) {
    return error(errc::invalid, "GSSAPI keytab " + path + " is truncated or malformed");
  }
  return realms;
}

// Where the acceptor's keys are: the configured keytab, else the Kerberos default.
std::string keytab_path(const std::string& configured) {
  std::string name = configured;
  if (name.empty()) {
    const char* env = std::getenv("KRB5_KTNAME");
    name = env != nullptr && *env != '\0' ? env : "/etc/krb5.keytab";
  }
  if (name.starts_with("FILE:")) {
    name.erase(0, 5);
  } else if (name.starts_with("WRFILE:")) {
    name.erase(0, 7);
  }
  return name;
}

// Points the GSS-API library's acceptor at `path`. Debian's libgsasl calls GSS-API through
// libgssglue, which loads MIT's libgssapi_krb5.so.2 at run time (/etc/gssapi_mech.conf); MIT
// keeps the acceptor keytab in a process-wide setting (krb5_gss_register_acceptor_identity).
// The same library is opened here (dlopen returns the instance libgssglue will use). Without
// MIT, Heimdal's gsskrb5_register_acceptor_identity is tried, then $KRB5_KTNAME is set (at
// startup, before other threads exist).
bool register_acceptor_keytab(const std::string& path) {
  using register_fn = std::uint32_t (*)(const char*);
  for (const char* lib : {"libgssapi_krb5.so.2", "libgssapi.so.3"}) {
    void* handle = ::dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      continue;
    }
    for (const char* sym :
         {"krb5_gss_register_acceptor_identity", "gsskrb5_register_acceptor_identity"}) {
      if (void* f = ::dlsym(handle, sym)) {
        // Kept loaded for the life of the process, like libgssglue keeps it.
        return reinterpret_cast<register_fn>(f)(path.c_str()) == 0;
      }
    }
  }
  // NOLINTNEXTLINE(concurrency-mt-unsafe): at startup, before other threads exist (above)
  return ::setenv("KRB5_KTNAME", ("FILE:" + path).c_str(), 1) == 0;
}

int gsasl_callback_trampoline(Gsasl* ctx, Gsasl_session* sctx, Gsasl_property prop);

}  // namespace

// ---------------------------------------------------------------------------------------
// The server

struct sasl_server::impl {
  passdb& db;
  sasl_settings settings;
  std::vector<mech_kind> kinds;  // parallel to settings.mechanisms
  Gsasl* ctx = nullptr;
  mutable std::mutex start_mutex;  // serialises gsasl_server_start on the shared handle
  std::string salt_key;            // HMAC key for the salts of derived and unknown SCRAM users
  std::string gssapi_realm;        // the realm GSSAPI principals must be in

  impl(passdb& d, sasl_settings s) : db(d), settings(std::move(s)) {}
  ~impl() {
    if (ctx != nullptr) {
      gsasl_done(ctx);
    }
    OPENSSL_cleanse(salt_key.data(), salt_key.size());
  }
  impl(const impl&) = delete;
  impl& operator=(const impl&) = delete;

  bool has(mech_kind k) const noexcept {
    return std::find(kinds.begin(), kinds.end(), k) != kinds.end();
  }

  // A salt for `user` that stays the same across attempts (so that it looks like a stored
  // one) without revealing whether the user exists.
  std::string derived_salt(scram_hash h, std::string_view user) const {
    std::string msg = h == scram_hash::sha1 ? "SCRAM-SHA-1:" : "SCRAM-SHA-256:";
    msg += user;
    unsigned char out[EVP_MAX_MD_SIZE] = {};
    unsigned int len = 0;
    HMAC(EVP_sha256(), salt_key.data(), static_cast<int>(salt_key.size()),
         reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out, &len);
    return std::string(reinterpret_cast<const char*>(out), 16);
  }
};

namespace {

// ---------------------------------------------------------------------------------------
// Exchanges: common framing

class exchange_base : public sasl_exchange {
 public:
  sasl_step step(std::string_view client_b64) final {
    if (finished_) {
      return failed("exchange already finished");
    }
    ++steps_;
    sasl_step r = run(client_b64);
    if (r.status != sasl_status::challenge) {
      finished_ = true;
      if (r.status == sasl_status::success) {
        user_ = r.user.name;
      }
    }
    return r;
  }

  std::string_view authenticated_user() const override { return user_; }

 protected:
  // One step with the response decoded. `absent`: the first step had no initial response.
  virtual sasl_step on_step(bool absent, std::string_view data) = 0;

  std::string user_;

 private:
  sasl_step run(std::string_view client_b64) {
    if (steps_ > max_sasl_steps) {
      return failed("too many SASL steps");
    }
    if (client_b64.size() > max_sasl_response) {
      return failed("SASL response too long");
    }
    if (client_b64 == "*") {
      return failed("cancelled by the client");
    }
    bool absent = steps_ == 1 && client_b64.empty();
    wiped decoded;
    decoded.s.reserve(client_b64.size() / 4 * 3 + 3);
    if (client_b64 != "=" && !b64_decode(client_b64, decoded.s)) {
      return failed("invalid base64 in SASL response");
    }
    return on_step(absent, decoded.s);
  }

  std::size_t steps_ = 0;
  bool finished_ = false;
};

sasl_step from_verify(verify_result v, std::string_view user) {
  switch (v.status) {
    case verify_status::ok:
      return succeeded(with_name(std::move(v.user), user));
    case verify_status::temporary:
      return failed(std::move(v.reason), true);
    case verify_status::bad_credentials:
      break;
  }
  return failed(v.reason.empty() ? std::string("authentication failed") : std::move(v.reason));
}

// ---------------------------------------------------------------------------------------
// PLAIN (RFC 4616): [authzid] NUL authcid NUL passwd, in one message.

class plain_exchange final : public exchange_base {
 public:
  explicit plain_exchange(passdb& db) : db_(db) {}

 protected:
  sasl_step on_step(bool absent, std::string_view data) override {
    if (absent) {
      return challenge({});
    }
    auto nul1 = data.find('\0');
    auto nul2 = nul1 == std::string_view::npos ? nul1 : data.find('\0', nul1 + 1);
    if (nul2 == std::string_view::npos || data.find('\0', nul2 + 1) != std::string_view::npos) {
      return failed("malformed PLAIN message");
    }
    std::string_view authzid = data.substr(0, nul1);
    std::string_view authcid = data.substr(nul1 + 1, nul2 - nul1 - 1);
    secret_string password(data.substr(nul2 + 1));
    if (authcid.empty()) {
      return failed("empty authentication identity");
    }
    user_ = authcid;
    if (!authzid.empty() && authzid != authcid) {
      return failed("authorization identity differs from the authentication identity");
    }
    return from_verify(db_.verify(authcid, password), authcid);
  }

 private:
  passdb& db_;
};

// ---------------------------------------------------------------------------------------
// LOGIN (draft-murchison-sasl-login): "Username:", "Password:". An initial response is taken
// as the user name, as Dovecot and Cyrus do.

class login_exchange final : public exchange_base {
 public:
  explicit login_exchange(passdb& db) : db_(db) {}

 protected:
  sasl_step on_step(bool /*absent*/, std::string_view data) override {
    switch (state_) {
      case state::start:
        if (data.empty()) {
          state_ = state::want_user;
          return challenge(b64_encode("Username:"));
        }
        [[fallthrough]];
      case state::want_user:
        if (data.empty() || data.find('\0') != std::string_view::npos) {
          return failed("empty or malformed user name");
        }
        user_ = data;
        state_ = state::want_password;
        return challenge(b64_encode("Password:"));
      case state::want_password: {
        secret_string password(data);
        return from_verify(db_.verify(user_, password), user_);
      }
    }
    return failed("unexpected LOGIN state");
  }

 private:
  enum class state { start, want_user, want_password };
  passdb& db_;
  state state_ = state::start;
};

// ---------------------------------------------------------------------------------------
// CRAM-MD5 (RFC 2195): challenge "<...@host>", response "user SP hex(HMAC-MD5(secret, challenge))".

class cram_md5_exchange final : public exchange_base {
 public:
  cram_md5_exchange(passdb& db, const sasl_settings& settings)
      : db_(db),
        hostname_(settings.hostname),
        fixed_challenge_(settings.cram_md5_challenge_for_test) {}

 protected:
  sasl_step on_step(bool /*absent*/, std::string_view data) override {
    if (challenge_.empty()) {
      if (!data.empty()) {
        return failed("CRAM-MD5 takes no initial response");
      }
      challenge_ = fixed_challenge_.empty() ? make_apop_timestamp(hostname_) : fixed_challenge_;
      return challenge(b64_encode(challenge_));
    }
    auto space = data.rfind(' ');
    if (space == std::string_view::npos || space == 0) {
      return failed("malformed CRAM-MD5 response");
    }
    std::string_view user = data.substr(0, space);
    std::string_view digest_hex = data.substr(space + 1);
    user_ = user;
    std::array<unsigned char, 16> claimed{};
    const bool well_formed = decode_hex_digest(digest_hex, claimed);

    lookup_result found = db_.lookup(user);
    if (found.status == verify_status::temporary) {
      return failed(std::move(found.reason), true);
    }
    std::optional<stored_password> parsed;
    if (found.status == verify_status::ok && found.stored) {
      if (auto p = parse_stored_password(found.stored->view())) {
        parsed.emplace(std::move(p).value());
      }
    }
    std::array<unsigned char, 16> expected{};
    bool usable = false;
    if (parsed && parsed->scheme() == password_scheme::cram_md5) {
      if (auto secret = parse_cram_md5_secret(*parsed)) {
        expected = cram_md5_hmac(*secret, challenge_);
        usable = true;
      }
    } else if (parsed && parsed->scheme() == password_scheme::plain && !parsed->data().empty()) {
      usable = hmac_md5(parsed->data(), expected);
    }
    if (!usable) {
      // The same HMAC with a key nobody knows: an unknown user costs what a known one does.
      wiped key(random_bytes(16));
      (void)hmac_md5(key.s, expected);
    }
    bool match = CRYPTO_memcmp(expected.data(), claimed.data(), expected.size()) == 0;
    OPENSSL_cleanse(expected.data(), expected.size());

    if (found.status != verify_status::ok) {
      return failed(found.reason.empty() ? std::string("unknown user") : std::move(found.reason));
    }
    if (!usable) {
      return failed("no CRAM-MD5 or plaintext secret for CRAM-MD5");
    }
    if (!well_formed || !match) {
      return failed("CRAM-MD5 digest mismatch");
    }
    return succeeded(with_name(std::move(found.user), user));
  }

 private:
  bool hmac_md5(std::string_view key, std::array<unsigned char, 16>& out) const {
    unsigned int len = 0;
    return HMAC(EVP_md5(), key.data(), static_cast<int>(key.size()),
                reinterpret_cast<const unsigned char*>(challenge_.data()), challenge_.size(),
                out.data(), &len) != nullptr &&
           len == out.size();
  }

  passdb& db_;
  std::string hostname_;
  std::string fixed_challenge_;  // sasl_settings::cram_md5_challenge_for_test
  std::string challenge_;
};

// ---------------------------------------------------------------------------------------
// Mechanisms through GNU SASL: SCRAM-*, EXTERNAL, GSSAPI.

// Properties that may hold secrets, wiped in place before libgsasl frees them.
constexpr Gsasl_property secret_properties[] = {
    GSASL_PASSWORD,
    GSASL_SCRAM_SALTED_PASSWORD,
    GSASL_SCRAM_SERVERKEY,
    GSASL_SCRAM_STOREDKEY,
};

struct gsasl_free_deleter {
  void operator()(char* p) const noexcept { gsasl_free(p); }
};

class gsasl_exchange final : public exchange_base {
 public:
  gsasl_exchange(const sasl_server::impl& srv, mech_kind kind, const sasl_channel& ch,
                 Gsasl_session* sctx)
      : srv_(srv), kind_(kind), ch_(ch), sctx_(sctx) {
    gsasl_session_hook_set(sctx_, this);
    // Whether this connection offers a -PLUS mechanism: then a SCRAM client that could bind
    // the channel must not settle for plain SCRAM (RFC 5802 section 6, the "y" flag).
    plus_offered_ = has_channel_binding(ch_) && (srv_.has(mech_kind::scram_sha1_plus) ||
                                                 srv_.has(mech_kind::scram_sha256_plus));
  }

  ~gsasl_exchange() override {
    for (Gsasl_property p : secret_properties) {
      wipe_property(p);
    }
    gsasl_finish(sctx_);
    OPENSSL_cleanse(ch_.tls_exporter.data(), ch_.tls_exporter.size());
    OPENSSL_cleanse(ch_.tls_unique.data(), ch_.tls_unique.size());
  }

  gsasl_exchange(const gsasl_exchange&) = delete;
  gsasl_exchange& operator=(const gsasl_exchange&) = delete;

  // libgsasl asks for a property or a decision (called from inside gsasl_step()).
  int on_property(Gsasl_property prop) {
    switch (prop) {
      case GSASL_CB_TLS_UNIQUE:
        return set_channel_binding(prop, ch_.tls_unique);
      case GSASL_CB_TLS_EXPORTER:
        return set_channel_binding(prop, ch_.tls_exporter);
      case GSASL_SCRAM_ITER:
      case GSASL_SCRAM_SALT:
      case GSASL_SCRAM_SERVERKEY:
      case GSASL_SCRAM_STOREDKEY:
      case GSASL_PASSWORD:
        return is_scram(kind_) ? scram_property(prop) : GSASL_NO_CALLBACK;
      case GSASL_SERVICE:
        gsasl_property_set(sctx_, prop, srv_.settings.service.c_str());
        return GSASL_OK;
      case GSASL_HOSTNAME:
        gsasl_property_set(sctx_, prop, srv_.settings.hostname.c_str());
        return GSASL_OK;
      case GSASL_VALIDATE_EXTERNAL:
        return kind_ == mech_kind::external ? validate_external() : GSASL_AUTHENTICATION_ERROR;
      case GSASL_VALIDATE_GSSAPI:
        return kind_ == mech_kind::gssapi ? validate_gssapi() : GSASL_AUTHENTICATION_ERROR;
      default:
        return GSASL_NO_CALLBACK;
    }
  }

 protected:
  sasl_step on_step(bool absent, std::string_view data) override {
    if (is_scram(kind_) && !scram_first_seen_ && !data.empty()) {
      scram_first_seen_ = true;
      if (auto refusal = check_gs2_header(data); !refusal.empty()) {
        return failed(std::move(refusal));
      }
    }
    // libgsasl tells "no initial response" (NULL) from an empty one (non-NULL, length 0).
    static const char empty[1] = {'\0'};
    const char* in = absent ? nullptr : (data.empty() ? empty : data.data());
    char* raw_out = nullptr;
    std::size_t out_len = 0;
    int rc = gsasl_step(sctx_, in, data.size(), &raw_out, &out_len);
    std::unique_ptr<char, gsasl_free_deleter> out(raw_out);
    if (is_scram(kind_) && user_.empty()) {
      if (const char* id = gsasl_property_fast(sctx_, GSASL_AUTHID)) {
        user_ = id;
      }
    }
    std::string out_b64 = (rc == GSASL_OK || rc == GSASL_NEEDS_MORE) && out
                              ? b64_encode({out.get(), out_len})
                              : std::string();
    if (rc == GSASL_NEEDS_MORE) {
      return challenge(std::move(out_b64));
    }
    if (rc == GSASL_OK) {
      if (is_scram(kind_)) {
        scram_authorize();
      }
      if (authorized_) {
        return succeeded(std::move(user_record_), std::move(out_b64));
      }
      return failed(reason_.empty() ? std::string("not authorized") : reason_, temporary_);
    }
    if (reason_.empty()) {
      reason_ = std::string(mech_label()) + " failed (" + gsasl_strerror_name(rc) + ")";
    }
    return failed(reason_, temporary_);
  }

 private:
  std::string_view mech_label() const noexcept {
    for (const auto& m : mech_table) {
      if (m.kind == kind_) {
        return m.name;
      }
    }
    return "SASL";
  }

  void wipe_property(Gsasl_property p) noexcept {
    // libgsasl frees its property copies without wiping them; the storage is ours to
    // overwrite until gsasl_finish().
    if (const char* v = gsasl_property_fast(sctx_, p)) {
      OPENSSL_cleanse(const_cast<char*>(v), std::strlen(v));
    }
  }

  int set_channel_binding(Gsasl_property prop, const std::string& data) {
    // Only the -PLUS mechanisms bind; plain SCRAM refuses a binding client itself
    // (check_gs2_header), so libgsasl's own variant of that check is not fed.
    if (!is_plus(kind_) || data.empty()) {
      return GSASL_NO_CALLBACK;
    }
    gsasl_property_set(sctx_, prop, b64_encode(data).c_str());
    return GSASL_OK;
  }

  // RFC 5802 section 7: gs2-cbind-flag "n" | "y" | "p=" cb-name. Returns a refusal, or "".
  std::string check_gs2_header(std::string_view first) const {
    if (is_plus(kind_)) {
      if (first.starts_with("p=tls-exporter,") && ch_.tls_exporter.empty()) {
        return "tls-exporter channel binding is not available on this connection";
      }
      if (first.starts_with("p=tls-unique,") && ch_.tls_unique.empty()) {
        return "tls-unique channel binding is not available on this connection";
      }
      if (!first.starts_with("p=")) {
        return "SCRAM -PLUS without channel binding";
      }
      return {};
    }
    if (first.starts_with("y,") && plus_offered_) {
      return "client supports channel binding but chose a mechanism without it (downgrade)";
    }
    if (first.starts_with("p=")) {
      return "channel binding requested with a mechanism without it";
    }
    return {};
  }

  // -- SCRAM ------------------------------------------------------------------------------

  enum class scram_source { none, keys, password, fake };

  // Looks the user up once libgsasl knows the name (it sets GSASL_AUTHID before asking for
  // the iteration count and salt).
  void scram_prepare() {
    if (source_ != scram_source::none) {
      return;
    }
    source_ = scram_source::fake;
    scram_hash h = scram_hash_of(kind_);
    const char* authid = gsasl_property_fast(sctx_, GSASL_AUTHID);
    std::string user = authid != nullptr ? authid : "";
    user_ = user;
    iterations_ = scram_default_iterations;
    salt_ = srv_.derived_salt(h, user);
    if (user.empty()) {
      reason_ = "empty authentication identity";
      return;
    }
    lookup_result found = srv_.db.lookup(user);
    if (found.status == verify_status::temporary) {
      temporary_ = true;
      reason_ = std::move(found.reason);
      return;
    }
    if (found.status != verify_status::ok || !found.stored) {
      reason_ = found.reason.empty() ? std::string("unknown user") : std::move(found.reason);
      return;
    }
    auto parsed = parse_stored_password(found.stored->view());
    if (!parsed) {
      reason_ = "stored secret unusable: " + parsed.err().message();
      return;
    }
    password_scheme want =
        h == scram_hash::sha1 ? password_scheme::scram_sha1 : password_scheme::scram_sha256;
    if (parsed->scheme() == want) {
      auto secret = parse_scram_secret(*parsed);
      if (!secret) {
        reason_ = "stored SCRAM secret unusable";
        return;
      }
      source_ = scram_source::keys;
      iterations_ = secret->iterations;
      salt_ = secret->salt;
      stored_key_.s = secret->stored_key;
      server_key_.s = secret->server_key;
    } else if (parsed->scheme() == password_scheme::plain && !parsed->data().empty()) {
      source_ = scram_source::password;
      password_.s = std::string(parsed->data());
    } else {
      std::string_view wanted = h == scram_hash::sha1 ? "SCRAM-SHA-1" : "SCRAM-SHA-256";
      reason_ =
          "no " + std::string(wanted) + " or plaintext secret for " + std::string(mech_label());
      return;
    }
    user_record_ = with_name(std::move(found.user), user);
  }

  int scram_property(Gsasl_property prop) {
    scram_prepare();
    switch (prop) {
      case GSASL_SCRAM_ITER:
        gsasl_property_set(sctx_, prop, std::to_string(iterations_).c_str());
        return GSASL_OK;
      case GSASL_SCRAM_SALT:
        gsasl_property_set(sctx_, prop, b64_encode(salt_).c_str());
        return GSASL_OK;
      case GSASL_SCRAM_SERVERKEY:
      case GSASL_SCRAM_STOREDKEY:
        if (source_ != scram_source::keys) {
          return GSASL_NO_CALLBACK;  // libgsasl then asks for the password
        }
        {
          // libgsasl 2.2 takes both keys base64-encoded (its header says hex; its SCRAM
          // server decodes base64, and sasl_test proves which).
          wiped server_b64(b64_encode(server_key_.s));
          wiped stored_b64(b64_encode(stored_key_.s));
          gsasl_property_set(sctx_, GSASL_SCRAM_SERVERKEY, server_b64.s.c_str());
          gsasl_property_set(sctx_, GSASL_SCRAM_STOREDKEY, stored_b64.s.c_str());
        }
        return GSASL_OK;
      case GSASL_PASSWORD:
        if (source_ == scram_source::password) {
          gsasl_property_set_raw(sctx_, prop, password_.s.data(), password_.s.size());
        } else {
          // Unknown user (or no usable secret): derive keys from a password nobody knows,
          // which costs the PBKDF2 a {PLAIN} user costs, and fails the proof.
          wiped stand_in(hex_encode(random_bytes(16)));
          gsasl_property_set(sctx_, prop, stand_in.s.c_str());
        }
        return GSASL_OK;
      default:
        return GSASL_NO_CALLBACK;
    }
  }

  // After libgsasl accepted the proof: the user must be real and the authzid acceptable.
  void scram_authorize() {
    if (source_ != scram_source::keys && source_ != scram_source::password) {
      authorized_ = false;  // cannot happen with a random secret; fail closed all the same
      if (reason_.empty()) {
        reason_ = "unknown user";
      }
      return;
    }
    const char* authzid = gsasl_property_fast(sctx_, GSASL_AUTHZID);
    if (authzid != nullptr && *authzid != '\0' && user_ != authzid) {
      reason_ = "authorization identity differs from the authentication identity";
      return;
    }
    authorized_ = true;
  }

  // -- EXTERNAL ---------------------------------------------------------------------------

  int validate_external() {
    if (!ch_.client_cert_verified || ch_.client_cert_identity.empty()) {
      reason_ = "no verified client certificate identity";
      return GSASL_AUTHENTICATION_ERROR;
    }
    user_ = ch_.client_cert_identity;
    const char* authzid = gsasl_property_fast(sctx_, GSASL_AUTHZID);
    if (authzid != nullptr && *authzid != '\0' && user_ != authzid) {
      reason_ = "authorization identity differs from the certificate identity";
      return GSASL_AUTHENTICATION_ERROR;
    }
    return authorize_by_lookup();
  }

  // -- GSSAPI -----------------------------------------------------------------------------

  int validate_gssapi() {
    const char* display = gsasl_property_fast(sctx_, GSASL_GSSAPI_DISPLAY_NAME);
    std::string principal = display != nullptr ? display : "";
    user_ = principal;
    auto at = principal.rfind('@');
    if (at == std::string::npos || at == 0) {
      reason_ = "Kerberos principal without a realm";
      return GSASL_AUTHENTICATION_ERROR;
    }
    std::string local = principal.substr(0, at);
    std::string realm = principal.substr(at + 1);
    if (realm != srv_.gssapi_realm) {
      reason_ = "Kerberos realm not accepted (only " + srv_.gssapi_realm + ")";
      return GSASL_AUTHENTICATION_ERROR;
    }
    if (local.find_first_of("/\\@") != std::string::npos) {
      reason_ = "Kerberos principal with an instance or escapes does not name a user";
      return GSASL_AUTHENTICATION_ERROR;
    }
    user_ = local;
    // RFC 4752 section 3.1: the authorization identity is the client's to request; only the
    // user itself (by name or by principal) is allowed.
    const char* authzid = gsasl_property_fast(sctx_, GSASL_AUTHZID);
    if (authzid != nullptr && *authzid != '\0' && local != authzid && principal != authzid) {
      reason_ = "authorization identity differs from the Kerberos principal";
      return GSASL_AUTHENTICATION_ERROR;
    }
    return authorize_by_lookup();
  }

  // EXTERNAL and GSSAPI: the identity is proven; the user must exist and may log in.
  int authorize_by_lookup() {
    lookup_result found = srv_.db.lookup(user_);
    if (found.status == verify_status::temporary) {
      temporary_ = true;
      reason_ = std::move(found.reason);
      return GSASL_AUTHENTICATION_ERROR;
    }
    if (found.status != verify_status::ok) {
      reason_ = found.reason.empty() ? std::string("unknown user") : std::move(found.reason);
      return GSASL_AUTHENTICATION_ERROR;
    }
    user_record_ = with_name(std::move(found.user), user_);
    authorized_ = true;
    return GSASL_OK;
  }

  const sasl_server::impl& srv_;
  mech_kind kind_;
  sasl_channel ch_;
  Gsasl_session* sctx_;
  bool plus_offered_ = false;
  bool scram_first_seen_ = false;
  bool authorized_ = false;
  bool temporary_ = false;
  std::string reason_;
  user_record user_record_;
  // SCRAM
  scram_source source_ = scram_source::none;
  std::uint32_t iterations_ = scram_default_iterations;
  std::string salt_;
  wiped stored_key_;
  wiped server_key_;
  wiped password_;
};

int gsasl_callback_trampoline(Gsasl* /*ctx*/, Gsasl_session* sctx, Gsasl_property prop) {
  auto* x = sctx != nullptr ? static_cast<gsasl_exchange*>(gsasl_session_hook_get(sctx)) : nullptr;
  if (x == nullptr) {
    return GSASL_NO_CALLBACK;
  }
  try {
    return x->on_property(prop);
  } catch (...) {
    return GSASL_MALLOC_ERROR;  // nothing may unwind through C
  }
}

// Starts and abandons a GSSAPI exchange with a junk token: libgsasl acquires the acceptor
// credentials before it looks at the token, so the outcome tells whether the keytab works
// (and libgssglue loads its mechanisms now, while the process has one thread).
result<void> gssapi_self_test(Gsasl* ctx, const sasl_settings& s, const std::string& keytab) {
  Gsasl_session* sctx = nullptr;
  int rc = gsasl_server_start(ctx, "GSSAPI", &sctx);
  if (rc != GSASL_OK) {
    return error(errc::invalid,
                 std::string("GNU SASL cannot start GSSAPI (") + gsasl_strerror_name(rc) + ")");
  }
  gsasl_property_set(sctx, GSASL_SERVICE, s.service.c_str());
  gsasl_property_set(sctx, GSASL_HOSTNAME, s.hostname.c_str());
  const char junk[] = {'\x60', '\x00'};
  char* out = nullptr;
  std::size_t out_len = 0;
  rc = gsasl_step(sctx, junk, sizeof(junk), &out, &out_len);
  gsasl_free(out);
  gsasl_finish(sctx);
  if (rc == GSASL_GSSAPI_IMPORT_NAME_ERROR || rc == GSASL_GSSAPI_ACQUIRE_CRED_ERROR) {
    return error(errc::invalid, "GSSAPI: cannot acquire acceptor credentials for " + s.service +
                                    "@" + s.hostname + " from keytab " + keytab + " (" +
                                    gsasl_strerror_name(rc) + ")");
  }
  return {};
}

}  // namespace

// ---------------------------------------------------------------------------------------
// sasl_server

sasl_server::sasl_server(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
sasl_server::~sasl_server() = default;

const sasl_settings& sasl_server::settings() const noexcept { return impl_->settings; }

result<std::unique_ptr<sasl_server>> sasl_server::create(passdb& db, sasl_settings s) {
  auto p = std::make_unique<impl>(db, std::move(s));
  sasl_settings& st = p->settings;
  bool any_gsasl = false;
  for (auto& name : st.mechanisms) {
    name = ascii_to_upper(name);
    const mech_info* m = find_mech(name);
    if (m == nullptr) {
      return error(errc::invalid, "unknown SASL mechanism '" + name + "'");
    }
    if (p->has(m->kind)) {
      return error(errc::invalid, "SASL mechanism " + name + " listed twice");
    }
    p->kinds.push_back(m->kind);
    any_gsasl = any_gsasl || m->via_gsasl;
  }
  if (st.hostname.empty()) {
    char host[256] = {};
    if (::gethostname(host, sizeof(host) - 1) == 0) {
      st.hostname = host;
    }
    if (st.hostname.empty()) {
      st.hostname = "localhost";
    }
  }
  p->salt_key = st.salt_key.empty() ? random_bytes(32) : st.salt_key;
  OPENSSL_cleanse(st.salt_key.data(), st.salt_key.size());
  st.salt_key.clear();

  if (any_gsasl) {
    int rc = gsasl_init(&p->ctx);
    if (rc != GSASL_OK) {
      p->ctx = nullptr;
      return error(errc::temporary,
                   std::string("GNU SASL initialisation failed (") + gsasl_strerror_name(rc) + ")");
    }
    gsasl_callback_set(p->ctx, gsasl_callback_trampoline);
    for (std::size_t i = 0; i < p->kinds.size(); ++i) {
      if (find_mech(st.mechanisms[i])->via_gsasl &&
          gsasl_server_support_p(p->ctx, st.mechanisms[i].c_str()) == 0) {
        return error(errc::invalid,
                     "this GNU SASL library has no server side for " + st.mechanisms[i]);
      }
    }
  }

  if (p->has(mech_kind::gssapi)) {
    if (st.service.empty() || st.service.find_first_of("/@") != std::string::npos) {
      return error(errc::invalid, "GSSAPI service name must be non-empty without '/' or '@'");
    }
    std::string path = keytab_path(st.gssapi_keytab);
    auto realms = keytab_realms(path, st.service, st.hostname);
    if (!realms) {
      return std::move(realms).err();
    }
    std::string principal = st.service + "/" + st.hostname;
    if (!st.realm.empty()) {
      if (realms->count(st.realm) == 0) {
        return error(errc::invalid,
                     "GSSAPI keytab " + path + " holds no key for " + principal + "@" + st.realm);
      }
      p->gssapi_realm = st.realm;
    } else if (realms->empty()) {
      return error(errc::invalid, "GSSAPI keytab " + path + " holds no key for " + principal);
    } else if (realms->size() > 1) {
      return error(errc::invalid, "GSSAPI keytab " + path + " holds keys for " + principal +
                                      " in several realms: name the realm to accept");
    } else {
      p->gssapi_realm = *realms->begin();
    }
    if (!st.gssapi_keytab.empty() && !register_acceptor_keytab(path)) {
      return error(errc::invalid, "GSSAPI: cannot register keytab " + path);
    }
    POSTERN_TRY(gssapi_self_test(p->ctx, st, path));
  }
  return std::unique_ptr<sasl_server>(new sasl_server(std::move(p)));
}

std::vector<std::string> sasl_server::mechanisms_for(const sasl_channel& ch) const {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < impl_->kinds.size(); ++i) {
    if (usable_on(impl_->kinds[i], ch)) {
      out.push_back(impl_->settings.mechanisms[i]);
    }
  }
  return out;
}

std::span<const std::string_view> sasl_mechanism_names() noexcept { return mech_names; }

result<std::unique_ptr<sasl_exchange>> sasl_server::start(std::string_view mechanism,
                                                          const sasl_channel& ch) const {
  std::string name = ascii_to_upper(mechanism);
  const mech_info* m = find_mech(name);
  if (m == nullptr || !impl_->has(m->kind) || !usable_on(m->kind, ch)) {
    return error(errc::not_found, "SASL mechanism not available on this connection");
  }
  switch (m->kind) {
    case mech_kind::plain:
      return std::unique_ptr<sasl_exchange>(std::make_unique<plain_exchange>(impl_->db));
    case mech_kind::login:
      return std::unique_ptr<sasl_exchange>(std::make_unique<login_exchange>(impl_->db));
    case mech_kind::cram_md5:
      return std::unique_ptr<sasl_exchange>(
          std::make_unique<cram_md5_exchange>(impl_->db, impl_->settings));
    default:
      break;
  }
  Gsasl_session* sctx = nullptr;
  int rc = 0;
  {
    std::lock_guard lock(impl_->start_mutex);
    rc = gsasl_server_start(impl_->ctx, name.c_str(), &sctx);
  }
  if (rc != GSASL_OK) {
    return error(errc::temporary, std::string("GNU SASL cannot start ") + name + " (" +
                                      gsasl_strerror_name(rc) + ")");
  }
  return std::unique_ptr<sasl_exchange>(
      std::make_unique<gsasl_exchange>(*impl_, m->kind, ch, sctx));
}

}  // namespace postern::auth
