#include "auth/schemes.hpp"

#include "common/encoding.hpp"

#include <crypt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <bit>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <memory>
#include <utility>

#include "common/parse.hpp"

namespace postern::auth {
namespace {

// ---------------------------------------------------------------------------------------
// Scheme table

enum class encoding { none, base64, hex };

struct scheme_entry {
  std::string_view name;  // as written between braces, upper case
  password_scheme scheme;
  encoding default_encoding;
  std::size_t raw_size;  // the decoded data must be this long; 0 = any length
  bool is_md5_alias;     // Dovecot's "MD5": MD5-CRYPT or a bare MD5 digest
};

// Dovecot's names and default encodings (its password-scheme tables), for the schemes we can
// verify. Where the default encoding is not `none` and raw_size is fixed, Dovecot guesses the
// encoding from the length (2 * raw_size characters = hex, otherwise base64); so do we.
constexpr scheme_entry scheme_table[] = {
    {"PLAIN", password_scheme::plain, encoding::none, 0, false},
    {"CLEAR", password_scheme::plain, encoding::none, 0, false},
    {"CLEARTEXT", password_scheme::plain, encoding::none, 0, false},
    {"CRYPT", password_scheme::crypt, encoding::none, 0, false},
    {"MD5", password_scheme::md5_crypt, encoding::none, 0, true},
    {"MD5-CRYPT", password_scheme::md5_crypt, encoding::none, 0, false},
    {"SHA256-CRYPT", password_scheme::sha256_crypt, encoding::none, 0, false},
    {"SHA512-CRYPT", password_scheme::sha512_crypt, encoding::none, 0, false},
    {"BLF-CRYPT", password_scheme::blf_crypt, encoding::none, 0, false},
    {"YESCRYPT", password_scheme::yescrypt, encoding::none, 0, false},
    {"SHA", password_scheme::sha1, encoding::base64, 20, false},
    {"SHA1", password_scheme::sha1, encoding::base64, 20, false},
    {"SHA256", password_scheme::sha256, encoding::base64, 32, false},
    {"SHA512", password_scheme::sha512, encoding::base64, 64, false},
    {"SSHA", password_scheme::ssha, encoding::base64, 0, false},
    {"SSHA256", password_scheme::ssha256, encoding::base64, 0, false},
    {"SSHA512", password_scheme::ssha512, encoding::base64, 0, false},
    {"SMD5", password_scheme::smd5, encoding::base64, 0, false},
    {"PLAIN-MD5", password_scheme::plain_md5, encoding::hex, 16, false},
    {"LDAP-MD5", password_scheme::plain_md5, encoding::base64, 16, false},
    {"PBKDF2", password_scheme::pbkdf2, encoding::none, 0, false},
    {"CRAM-MD5", password_scheme::cram_md5, encoding::hex, 32, false},
    {"HMAC-MD5", password_scheme::cram_md5, encoding::hex, 32, false},
    {"SCRAM-SHA-1", password_scheme::scram_sha1, encoding::none, 0, false},
    {"SCRAM-SHA-256", password_scheme::scram_sha256, encoding::none, 0, false},
};

// Dovecot schemes we recognise but cannot verify: DIGEST-MD5 needs the user name and realm,
// MD4-based ones need OpenSSL's legacy provider, Argon2 needs libsodium, OTP/SKEY keep state.
constexpr std::string_view unsupported_schemes[] = {
    "DIGEST-MD5", "PLAIN-MD4", "NTLM",    "LANMAN",   "OTP",
    "SKEY",       "RPA",       "ARGON2I", "ARGON2ID", "PLAIN-TRUNC",
};

const scheme_entry* find_entry(std::string_view name) noexcept {
  for (const auto& e : scheme_table) {
    if (ascii_iequals(e.name, name)) {
      return &e;
    }
  }
  return nullptr;
}

bool is_unsupported_scheme(std::string_view name) noexcept {
  for (auto n : unsupported_schemes) {
    if (ascii_iequals(n, name)) {
      return true;
    }
  }
  return false;
}

std::optional<encoding> parse_encoding_suffix(std::string_view suffix) noexcept {
  if (ascii_iequals(suffix, "b64") || ascii_iequals(suffix, "base64")) {
    return encoding::base64;
  }
  if (ascii_iequals(suffix, "hex")) {
    return encoding::hex;
  }
  return std::nullopt;
}

bool is_crypt_family(password_scheme s) noexcept {
  switch (s) {
    case password_scheme::crypt:
    case password_scheme::md5_crypt:
    case password_scheme::sha256_crypt:
    case password_scheme::sha512_crypt:
    case password_scheme::blf_crypt:
    case password_scheme::yescrypt:
      return true;
    default:
      return false;
  }
}

// ---------------------------------------------------------------------------------------
// Scratch buffers and encodings

// A std::string for temporaries that hold secret bytes; wiped when it goes out of scope.
// Callers reserve() the final size first so growth leaves no unwiped copy behind.
struct scratch {
  std::string s;
  scratch() = default;
  scratch(const scratch&) = delete;
  scratch& operator=(const scratch&) = delete;
  ~scratch() { wipe(); }
  void wipe() noexcept {
    if (!s.empty()) {
      OPENSSL_cleanse(s.data(), s.size());
    }
    s.clear();
  }
};

template <std::size_t N>
struct wiped_bytes {
  std::array<unsigned char, N> b{};
  wiped_bytes() = default;
  wiped_bytes(const wiped_bytes&) = delete;
  wiped_bytes& operator=(const wiped_bytes&) = delete;
  ~wiped_bytes() { OPENSSL_cleanse(b.data(), b.size()); }
  unsigned char* data() noexcept { return b.data(); }
  const unsigned char* data() const noexcept { return b.data(); }
  std::string_view view(std::size_t n = N) const noexcept {
    return {reinterpret_cast<const char*>(b.data()), n};
  }
};

constexpr char base64_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// Standard base64 with or without '=' padding (padding, when present, must complete the last
// quantum). Appends to `out`; false on any other character or an impossible length.
bool base64_decode(std::string_view in, std::string& out) {
  std::size_t n = in.size();
  std::size_t pad = 0;
  while (n > 0 && in[n - 1] == '=' && pad < 2) {
    --n;
    ++pad;
  }
  if ((pad != 0 && in.size() % 4 != 0) || n % 4 == 1) {
    return false;
  }
  out.reserve(out.size() + n * 3 / 4);
  std::uint32_t acc = 0;
  int bits = 0;
  for (std::size_t i = 0; i < n; ++i) {
    int v = base64_value(in[i]);
    if (v < 0) {
      return false;
    }
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
      acc &= (1u << bits) - 1;
    }
  }
  return true;
}

std::string base64_encode(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  std::size_t i = 0;
  auto byte = [&](std::size_t k) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(in[k]));
  };
  for (; i + 3 <= in.size(); i += 3) {
    std::uint32_t v = (byte(i) << 16) | (byte(i + 1) << 8) | byte(i + 2);
    out.push_back(base64_chars[(v >> 18) & 63]);
    out.push_back(base64_chars[(v >> 12) & 63]);
    out.push_back(base64_chars[(v >> 6) & 63]);
    out.push_back(base64_chars[v & 63]);
  }
  if (in.size() - i == 1) {
    std::uint32_t v = byte(i) << 16;
    out.push_back(base64_chars[(v >> 18) & 63]);
    out.push_back(base64_chars[(v >> 12) & 63]);
    out += "==";
  } else if (in.size() - i == 2) {
    std::uint32_t v = (byte(i) << 16) | (byte(i + 1) << 8);
    out.push_back(base64_chars[(v >> 18) & 63]);
    out.push_back(base64_chars[(v >> 12) & 63]);
    out.push_back(base64_chars[(v >> 6) & 63]);
    out.push_back('=');
  }
  return out;
}

// Hex digits in either case, even length. Appends to `out`.
bool hex_decode(std::string_view in, std::string& out) {
  if (in.size() % 2 != 0) {
    return false;
  }
  out.reserve(out.size() + in.size() / 2);
  for (std::size_t i = 0; i < in.size(); i += 2) {
    int hi = hex_value(in[i]);
    int lo = hex_value(in[i + 1]);
    if (hi < 0 || lo < 0) {
      return false;
    }
    out.push_back(static_cast<char>(hi * 16 + lo));
  }
  return true;
}

bool decode(std::string_view in, encoding enc, std::string& out) {
  switch (enc) {
    case encoding::none:
      out.assign(in);
      return true;
    case encoding::base64:
      return base64_decode(in, out);
    case encoding::hex:
      return hex_decode(in, out);
  }
  return false;
}

std::string encode(std::string_view raw, encoding enc) {
  switch (enc) {
    case encoding::none:
      return std::string(raw);
    case encoding::base64:
      return base64_encode(raw);
    case encoding::hex:
      return hex_encode(raw);
  }
  return {};
}

// Dovecot's guess for schemes with a fixed digest size and no explicit encoding: exactly twice
// the size in characters is hex (unless it fails to decode), anything else is base64.
bool decode_guessing(std::string_view in, std::size_t raw_size, std::string& out) {
  if (in.size() == raw_size * 2) {
    out.clear();
    if (hex_decode(in, out)) {
      return true;
    }
    OPENSSL_cleanse(out.data(), out.size());
    out.clear();
  }
  return base64_decode(in, out);
}

// ---------------------------------------------------------------------------------------
// Digests

bool ct_equal(std::string_view a, std::string_view b) noexcept {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

struct md_ctx_free {
  void operator()(EVP_MD_CTX* p) const noexcept { EVP_MD_CTX_free(p); }
};
using md_ctx_ptr = std::unique_ptr<EVP_MD_CTX, md_ctx_free>;

// out = md(a || b); false when OpenSSL fails. `out` must hold EVP_MAX_MD_SIZE bytes.
bool digest2(const EVP_MD* md, std::string_view a, std::string_view b, unsigned char* out) {
  md_ctx_ptr ctx(EVP_MD_CTX_new());
  unsigned int len = 0;
  return ctx && EVP_DigestInit_ex(ctx.get(), md, nullptr) == 1 &&
         EVP_DigestUpdate(ctx.get(), a.data(), a.size()) == 1 &&
         EVP_DigestUpdate(ctx.get(), b.data(), b.size()) == 1 &&
         EVP_DigestFinal_ex(ctx.get(), out, &len) == 1;
}

std::size_t md_size(const EVP_MD* md) noexcept {
  return static_cast<std::size_t>(EVP_MD_get_size(md));
}

bool hmac(const EVP_MD* md, std::string_view key, std::string_view data, unsigned char* out) {
  unsigned int len = 0;
  return HMAC(md, key.data(), static_cast<int>(key.size()),
              reinterpret_cast<const unsigned char*>(data.data()), data.size(), out,
              &len) != nullptr;
}

bool pbkdf2(const EVP_MD* md, std::string_view password, std::string_view salt,
            std::uint32_t rounds, unsigned char* out, std::size_t out_size) {
  return PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()),
                           reinterpret_cast<const unsigned char*>(salt.data()),
                           static_cast<int>(salt.size()), static_cast<int>(rounds), md,
                           static_cast<int>(out_size), out) == 1;
}

error internal_error(const char* what) { return error(errc::temporary, what); }

// ---------------------------------------------------------------------------------------
// MD5 compression, for Dovecot's CRAM-MD5 secret: the HMAC-MD5 intermediate states are not
// reachable through OpenSSL's EVP interface. RFC 1321.

using md5_state = std::array<std::uint32_t, 4>;
constexpr md5_state md5_initial_state = {0x67452301u, 0xefcdab89u, 0x98badcfeu, 0x10325476u};

const std::array<std::uint32_t, 64>& md5_sines() {
  // RFC 1321, 3.4: T[i] is the integer part of 4294967296 * abs(sin(i)), i in radians.
  static const std::array<std::uint32_t, 64> table = [] {
    std::array<std::uint32_t, 64> t{};
    for (std::size_t i = 0; i < t.size(); ++i) {
      t[i] = static_cast<std::uint32_t>(
          std::floor(std::fabs(std::sin(static_cast<double>(i + 1))) * 4294967296.0));
    }
    return t;
  }();
  return table;
}

void md5_compress(md5_state& h, const unsigned char* block) {
  static constexpr int shifts[4][4] = {
      {7, 12, 17, 22}, {5, 9, 14, 20}, {4, 11, 16, 23}, {6, 10, 15, 21}};
  const auto& t = md5_sines();
  std::array<std::uint32_t, 16> m{};
  for (std::size_t i = 0; i < 16; ++i) {
    m[i] = static_cast<std::uint32_t>(block[4 * i]) |
           static_cast<std::uint32_t>(block[4 * i + 1]) << 8 |
           static_cast<std::uint32_t>(block[4 * i + 2]) << 16 |
           static_cast<std::uint32_t>(block[4 * i + 3]) << 24;
  }
  std::uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
  for (std::size_t i = 0; i < 64; ++i) {
    std::uint32_t f = 0;
    std::size_t g = 0;
    switch (i / 16) {
      case 0:
        f = (b & c) | (~b & d);
        g = i;
        break;
      case 1:
        f = (d & b) | (~d & c);
        g = (5 * i + 1) % 16;
        break;
      case 2:
        f = b ^ c ^ d;
        g = (3 * i + 5) % 16;
        break;
      default:
        f = c ^ (b | ~d);
        g = (7 * i) % 16;
        break;
    }
    std::uint32_t next_d = c;
    std::uint32_t sum = a + f + t[i] + m[g];
    a = d;
    d = next_d;
    c = b;
    b = b + std::rotl(sum, shifts[i / 16][i % 4]);
  }
  h[0] += a;
  h[1] += b;
  h[2] += c;
  h[3] += d;
  OPENSSL_cleanse(m.data(), sizeof(m));
}

void put_le32(unsigned char* p, std::uint32_t v) noexcept {
  p[0] = static_cast<unsigned char>(v);
  p[1] = static_cast<unsigned char>(v >> 8);
  p[2] = static_cast<unsigned char>(v >> 16);
  p[3] = static_cast<unsigned char>(v >> 24);
}

std::uint32_t get_le32(const unsigned char* p) noexcept {
  return static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8 |
         static_cast<std::uint32_t>(p[2]) << 16 | static_cast<std::uint32_t>(p[3]) << 24;
}

// Finishes an MD5 computation that has absorbed `done` bytes (a multiple of 64) into `h`:
// absorbs `data`, pads, and writes the 16-byte digest.
void md5_finish(md5_state h, std::uint64_t done, std::string_view data, unsigned char* out) {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  std::size_t n = data.size();
  while (n >= 64) {
    md5_compress(h, p);
    p += 64;
    n -= 64;
  }
  wiped_bytes<128> tail;
  std::memcpy(tail.data(), p, n);
  tail.b[n] = 0x80;
  std::size_t tail_len = n + 1 + 8 <= 64 ? 64 : 128;
  std::uint64_t bits = (done + data.size()) * 8;
  for (std::size_t i = 0; i < 8; ++i) {
    tail.b[tail_len - 8 + i] = static_cast<unsigned char>(bits >> (8 * i));
  }
  md5_compress(h, tail.data());
  if (tail_len == 128) {
    md5_compress(h, tail.data() + 64);
  }
  for (std::size_t i = 0; i < 4; ++i) {
    put_le32(out + 4 * i, h[i]);
  }
}

// Dovecot's CRAM-MD5 context for `password`: 32 bytes, outer state then inner state.
bool make_cram_context(std::string_view password, wiped_bytes<32>& out) {
  wiped_bytes<64> key;
  if (password.size() > 64) {
    unsigned char md[EVP_MAX_MD_SIZE];
    if (!digest2(EVP_md5(), password, {}, md)) {
      return false;
    }
    std::memcpy(key.data(), md, 16);
    OPENSSL_cleanse(md, sizeof(md));
  } else {
    std::memcpy(key.data(), password.data(), password.size());
  }
  wiped_bytes<64> pad;
  md5_state inner = md5_initial_state;
  md5_state outer = md5_initial_state;
  for (std::size_t i = 0; i < 64; ++i) {
    pad.b[i] = key.b[i] ^ 0x36;
  }
  md5_compress(inner, pad.data());
  for (std::size_t i = 0; i < 64; ++i) {
    pad.b[i] = key.b[i] ^ 0x5c;
  }
  md5_compress(outer, pad.data());
  for (std::size_t i = 0; i < 4; ++i) {
    put_le32(out.data() + 4 * i, outer[i]);
    put_le32(out.data() + 16 + 4 * i, inner[i]);
  }
  OPENSSL_cleanse(inner.data(), sizeof(inner));
  OPENSSL_cleanse(outer.data(), sizeof(outer));
  return true;
}

// ---------------------------------------------------------------------------------------
// PBKDF2 and SCRAM stored forms

constexpr std::size_t pbkdf2_key_size = 20;  // PBKDF2-HMAC-SHA1, as Dovecot
constexpr std::uint32_t pbkdf2_default_rounds = 5000;
constexpr std::uint32_t scram_min_iterations = 4096;  // RFC 5802 SHOULD; Dovecot's minimum
constexpr std::uint32_t scram_max_iterations = INT_MAX;
constexpr std::size_t salt_size = 16;
constexpr unsigned bcrypt_default_cost = 10;

struct pbkdf2_fields {
  std::string_view salt;  // used as text, not decoded (Dovecot)
  std::uint32_t rounds = 0;
  std::string key;  // 20 raw bytes
};

// "$1$salt$rounds$hexkey"
bool parse_pbkdf2(std::string_view s, pbkdf2_fields& out) {
  if (!s.starts_with("$1$")) {
    return false;
  }
  s.remove_prefix(3);
  auto a = s.find('$');
  if (a == std::string_view::npos) {
    return false;
  }
  out.salt = s.substr(0, a);
  s.remove_prefix(a + 1);
  auto b = s.find('$');
  if (b == std::string_view::npos) {
    return false;
  }
  auto rounds = parse_u64(s.substr(0, b));
  std::string_view hex = s.substr(b + 1);
  if (!rounds || *rounds == 0 || *rounds > INT_MAX || hex.size() != pbkdf2_key_size * 2) {
    return false;
  }
  out.rounds = static_cast<std::uint32_t>(*rounds);
  out.key.clear();
  return hex_decode(hex, out.key);
}

const EVP_MD* scram_md(scram_hash h) noexcept {
  return h == scram_hash::sha1 ? EVP_sha1() : EVP_sha256();
}

// "iterations,base64 salt,base64 StoredKey,base64 ServerKey"
bool parse_scram(std::string_view s, scram_hash h, scram_secret& out) {
  std::string_view fields[4];
  for (std::size_t i = 0; i < 4; ++i) {
    auto comma = s.find(',');
    if (i < 3) {
      if (comma == std::string_view::npos) {
        return false;
      }
      fields[i] = s.substr(0, comma);
      s.remove_prefix(comma + 1);
    } else {
      if (comma != std::string_view::npos) {
        return false;
      }
      fields[i] = s;
    }
  }
  auto iterations = parse_u64(fields[0]);
  if (!iterations || *iterations < scram_min_iterations || *iterations > scram_max_iterations) {
    return false;
  }
  std::size_t size = md_size(scram_md(h));
  out.hash = h;
  out.iterations = static_cast<std::uint32_t>(*iterations);
  out.salt.clear();
  out.stored_key.clear();
  out.server_key.clear();
  return base64_decode(fields[1], out.salt) && !out.salt.empty() &&
         base64_decode(fields[2], out.stored_key) && out.stored_key.size() == size &&
         base64_decode(fields[3], out.server_key) && out.server_key.size() == size;
}

// SaltedPassword, then StoredKey and ServerKey (RFC 5802, 3).
bool scram_keys(scram_hash h, std::string_view password, std::string_view salt,
                std::uint32_t iterations, wiped_bytes<EVP_MAX_MD_SIZE>& stored_key,
                wiped_bytes<EVP_MAX_MD_SIZE>& server_key) {
  const EVP_MD* md = scram_md(h);
  std::size_t size = md_size(md);
  wiped_bytes<EVP_MAX_MD_SIZE> salted;
  wiped_bytes<EVP_MAX_MD_SIZE> client_key;
  return pbkdf2(md, password, salt, iterations, salted.data(), size) &&
         hmac(md, salted.view(size), "Client Key", client_key.data()) &&
         digest2(md, client_key.view(size), {}, stored_key.data()) &&
         hmac(md, salted.view(size), "Server Key", server_key.data());
}

// ---------------------------------------------------------------------------------------
// Verification

result<bool> verify_crypt(const stored_password& stored, const secret_string& password) {
  // crypt_data is 32 KiB: on the heap, zeroed as libxcrypt asks, wiped afterwards.
  auto data = std::make_unique<crypt_data>();
  errno = 0;
  const char* out = crypt_rn(password.c_str(), stored.c_str(), data.get(), sizeof(crypt_data));
  int err = errno;
  bool failed = out == nullptr || out[0] == '*';
  bool match = !failed && ct_equal(std::string_view(out), stored.data());
  OPENSSL_cleanse(data.get(), sizeof(crypt_data));
  if (failed) {
    if (err == ENOMEM) {
      return internal_error("crypt(): out of memory");
    }
    if (err == ERANGE) {
      return false;  // passphrase longer than libxcrypt accepts: cannot match
    }
    return error(errc::invalid,
                 "crypt() rejected the stored hash (unsupported, malformed or locked)");
  }
  return match;
}

result<bool> verify_digest(const EVP_MD* md, std::string_view raw, std::string_view password) {
  unsigned char out[EVP_MAX_MD_SIZE];
  if (!digest2(md, password, {}, out)) {
    return internal_error("digest failed");
  }
  bool match = ct_equal(std::string_view(reinterpret_cast<const char*>(out), md_size(md)), raw);
  OPENSSL_cleanse(out, sizeof(out));
  return match;
}

// raw = md(password || salt) || salt
result<bool> verify_salted(const EVP_MD* md, std::string_view raw, std::string_view password) {
  std::size_t size = md_size(md);
  if (raw.size() <= size) {
    return false;  // checked when parsed
  }
  unsigned char out[EVP_MAX_MD_SIZE];
  if (!digest2(md, password, raw.substr(size), out)) {
    return internal_error("digest failed");
  }
  bool match =
      ct_equal(std::string_view(reinterpret_cast<const char*>(out), size), raw.substr(0, size));
  OPENSSL_cleanse(out, sizeof(out));
  return match;
}

result<bool> verify_plain(std::string_view raw, std::string_view password) {
  // Comparing digests rather than the strings keeps the time independent of where they
  // differ and of the stored length.
  unsigned char a[EVP_MAX_MD_SIZE];
  unsigned char b[EVP_MAX_MD_SIZE];
  bool ok = digest2(EVP_sha256(), raw, {}, a) && digest2(EVP_sha256(), password, {}, b);
  bool match = ok && CRYPTO_memcmp(a, b, 32) == 0;
  OPENSSL_cleanse(a, sizeof(a));
  OPENSSL_cleanse(b, sizeof(b));
  if (!ok) {
    return internal_error("digest failed");
  }
  return match;
}

result<bool> verify_pbkdf2(std::string_view raw, std::string_view password) {
  pbkdf2_fields f;
  if (!parse_pbkdf2(raw, f)) {
    return error(errc::invalid, "malformed PBKDF2 secret");
  }
  wiped_bytes<pbkdf2_key_size> key;
  if (!pbkdf2(EVP_sha1(), password, f.salt, f.rounds, key.data(), pbkdf2_key_size)) {
    return internal_error("PBKDF2 failed");
  }
  return ct_equal(key.view(), f.key);
}

result<bool> verify_cram_md5(std::string_view raw, std::string_view password) {
  wiped_bytes<32> context;
  if (!make_cram_context(password, context)) {
    return internal_error("digest failed");
  }
  return ct_equal(context.view(), raw);
}

result<bool> verify_scram(scram_hash h, std::string_view raw, std::string_view password) {
  scram_secret s;
  if (!parse_scram(raw, h, s)) {
    return error(errc::invalid, "malformed SCRAM secret");
  }
  wiped_bytes<EVP_MAX_MD_SIZE> stored_key;
  wiped_bytes<EVP_MAX_MD_SIZE> server_key;
  if (!scram_keys(h, password, s.salt, s.iterations, stored_key, server_key)) {
    return internal_error("SCRAM key derivation failed");
  }
  std::size_t size = s.stored_key.size();
  // Both compared, without short-circuit.
  bool a = ct_equal(stored_key.view(size), s.stored_key);
  bool b = ct_equal(server_key.view(size), s.server_key);
  return a & b;
}

// ---------------------------------------------------------------------------------------
// Generation

result<void> random_bytes(unsigned char* out, std::size_t n) {
  if (RAND_bytes(out, static_cast<int>(n)) != 1) {
    return internal_error("random generator failed");
  }
  return {};
}

result<void> generate_crypt(const char* prefix, unsigned long count, const secret_string& password,
                            std::string& out) {
  wiped_bytes<salt_size> rnd;
  POSTERN_TRY(random_bytes(rnd.data(), salt_size));
  char setting[CRYPT_GENSALT_OUTPUT_SIZE];
  errno = 0;
  if (crypt_gensalt_rn(prefix, count, reinterpret_cast<const char*>(rnd.data()),
                       static_cast<int>(salt_size), setting, sizeof(setting)) == nullptr) {
    if (errno == ENOMEM) {
      return internal_error("crypt_gensalt(): out of memory");
    }
    return error(errc::invalid, "rounds out of range for this scheme");
  }
  auto data = std::make_unique<crypt_data>();
  errno = 0;
  const char* hashed = crypt_rn(password.c_str(), setting, data.get(), sizeof(crypt_data));
  int err = errno;
  if (hashed != nullptr && hashed[0] != '*') {
    out.assign(hashed);
  }
  OPENSSL_cleanse(data.get(), sizeof(crypt_data));
  if (out.empty()) {
    if (err == ERANGE) {
      return error(errc::invalid, "password too long for crypt()");
    }
    return internal_error("crypt() failed");
  }
  return {};
}

result<void> generate_salted(const EVP_MD* md, std::string_view password, std::string& out) {
  wiped_bytes<salt_size> salt;
  POSTERN_TRY(random_bytes(salt.data(), salt_size));
  unsigned char digest[EVP_MAX_MD_SIZE];
  if (!digest2(md, password, salt.view(), digest)) {
    return internal_error("digest failed");
  }
  out.reserve(md_size(md) + salt_size);
  out.assign(reinterpret_cast<const char*>(digest), md_size(md));
  out.append(salt.view());
  OPENSSL_cleanse(digest, sizeof(digest));
  return {};
}

result<void> generate_scram(scram_hash h, std::string_view password, unsigned rounds,
                            std::string& out) {
  std::uint32_t iterations = rounds == 0 ? scram_default_iterations : rounds;
  if (iterations < scram_min_iterations || iterations > scram_max_iterations) {
    return error(errc::invalid, "SCRAM iterations must be between 4096 and 2147483647");
  }
  wiped_bytes<salt_size> salt;
  POSTERN_TRY(random_bytes(salt.data(), salt_size));
  wiped_bytes<EVP_MAX_MD_SIZE> stored_key;
  wiped_bytes<EVP_MAX_MD_SIZE> server_key;
  if (!scram_keys(h, password, salt.view(), iterations, stored_key, server_key)) {
    return internal_error("SCRAM key derivation failed");
  }
  std::size_t size = md_size(scram_md(h));
  out = std::to_string(iterations) + ',' + base64_encode(salt.view()) + ',' +
        base64_encode(stored_key.view(size)) + ',' + base64_encode(server_key.view(size));
  return {};
}

result<void> generate_pbkdf2(std::string_view password, unsigned rounds, std::string& out) {
  static constexpr char salt_chars[] =
      "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  static_assert(sizeof(salt_chars) - 1 == 64, "unbiased: 256 is a multiple of the alphabet size");
  std::uint32_t r = rounds == 0 ? pbkdf2_default_rounds : rounds;
  if (r > static_cast<std::uint32_t>(INT_MAX)) {
    return error(errc::invalid, "PBKDF2 rounds out of range");
  }
  wiped_bytes<salt_size> rnd;
  POSTERN_TRY(random_bytes(rnd.data(), salt_size));
  std::string salt;
  for (unsigned char b : rnd.b) {
    salt.push_back(salt_chars[b % 64]);
  }
  wiped_bytes<pbkdf2_key_size> key;
  if (!pbkdf2(EVP_sha1(), password, salt, r, key.data(), pbkdf2_key_size)) {
    return internal_error("PBKDF2 failed");
  }
  out = "$1$" + salt + '$' + std::to_string(r) + '$' + hex_encode(key.view());
  return {};
}

}  // namespace

// -----------------------------------------------------------------------------------------
// Public functions

std::string_view scheme_name(password_scheme scheme) noexcept {
  switch (scheme) {
    case password_scheme::plain:
      return "PLAIN";
    case password_scheme::crypt:
      return "CRYPT";
    case password_scheme::md5_crypt:
      return "MD5-CRYPT";
    case password_scheme::sha256_crypt:
      return "SHA256-CRYPT";
    case password_scheme::sha512_crypt:
      return "SHA512-CRYPT";
    case password_scheme::blf_crypt:
      return "BLF-CRYPT";
    case password_scheme::yescrypt:
      return "YESCRYPT";
    case password_scheme::sha1:
      return "SHA";
    case password_scheme::sha256:
      return "SHA256";
    case password_scheme::sha512:
      return "SHA512";
    case password_scheme::ssha:
      return "SSHA";
    case password_scheme::ssha256:
      return "SSHA256";
    case password_scheme::ssha512:
      return "SSHA512";
    case password_scheme::smd5:
      return "SMD5";
    case password_scheme::plain_md5:
      return "PLAIN-MD5";
    case password_scheme::pbkdf2:
      return "PBKDF2";
    case password_scheme::cram_md5:
      return "CRAM-MD5";
    case password_scheme::scram_sha1:
      return "SCRAM-SHA-1";
    case password_scheme::scram_sha256:
      return "SCRAM-SHA-256";
  }
  return "UNKNOWN";
}

std::optional<password_scheme> find_scheme(std::string_view name) noexcept {
  const scheme_entry* e = find_entry(name);
  if (e == nullptr) {
    return std::nullopt;
  }
  return e->scheme;
}

namespace {

// Checks a decoded secret of `scheme` (whose table entry is `entry`) for what would make every
// login fail later: the wrong length, a NUL byte, a crypt(3) string libxcrypt does not know,
// a salted digest without salt, a malformed PBKDF2 or SCRAM field list. Errors: errc::invalid,
// naming `context_name`.
result<void> check_secret_shape(password_scheme scheme, const scheme_entry& entry,
                                const std::string& raw, const std::string& context_name) {
  std::size_t required = entry.raw_size;
  if (scheme == password_scheme::plain_md5) {
    required = 16;
  }
  if (required != 0 && raw.size() != required) {
    return error(errc::invalid, context_name + " secret has the wrong length");
  }
  if ((is_crypt_family(scheme) || scheme == password_scheme::pbkdf2 ||
       scheme == password_scheme::scram_sha1 || scheme == password_scheme::scram_sha256) &&
      raw.find('\0') != std::string::npos) {
    return error(errc::invalid, context_name + " secret holds a NUL byte");
  }
  if (is_crypt_family(scheme) && !raw.starts_with('*') && !raw.starts_with('!')) {
    // Catch typos when the file is loaded rather than at each login. "*" and "!..." are the
    // usual locked-account markers: kept, they never match. Legacy (DES, MD5) and cheap
    // settings are accepted, as Dovecot accepts them.
    switch (crypt_checksalt(raw.c_str())) {
      case CRYPT_SALT_INVALID:
        return error(errc::invalid, context_name + " secret is not a hash crypt(3) recognises");
      case CRYPT_SALT_METHOD_DISABLED:
        return error(errc::invalid,
                     context_name + " secret uses a hash method this libxcrypt has disabled");
      default:
        break;
    }
  }
  switch (scheme) {
    case password_scheme::ssha:
    case password_scheme::ssha256:
    case password_scheme::ssha512:
    case password_scheme::smd5: {
      const EVP_MD* md = scheme == password_scheme::ssha      ? EVP_sha1()
                         : scheme == password_scheme::ssha256 ? EVP_sha256()
                         : scheme == password_scheme::ssha512 ? EVP_sha512()
                                                              : EVP_md5();
      if (!raw.empty() && raw.size() <= md_size(md)) {
        return error(errc::invalid, context_name + " secret is too short to hold a salt");
      }
      break;
    }
    case password_scheme::pbkdf2: {
      pbkdf2_fields f;
      if (!raw.empty() && !parse_pbkdf2(raw, f)) {
        return error(errc::invalid, "PBKDF2 secret is not $1$salt$rounds$40-hex-digits");
      }
      break;
    }
    case password_scheme::scram_sha1:
    case password_scheme::scram_sha256: {
      scram_secret s;
      auto h = scheme == password_scheme::scram_sha1 ? scram_hash::sha1 : scram_hash::sha256;
      if (!raw.empty() && !parse_scram(raw, h, s)) {
        return error(
            errc::invalid,
            context_name + " secret is not iterations(>=4096),salt,StoredKey,ServerKey in base64");
      }
      break;
    }
    default:
      break;
  }
  return ok_result();
}

}  // namespace

result<stored_password> parse_stored_password(std::string_view stored) {
  // Split off the scheme the way Dovecot does (password_get_scheme()).
  std::string_view name = "CRYPT";
  std::string_view payload = stored;
  if (stored.starts_with("$1$") && stored.find('$', 3) != std::string_view::npos) {
    // A bare MD5-crypt hash; anything after a further '$' is ignored, as Dovecot does.
    auto end = stored.find('$', stored.find('$', 3) + 1);
    name = "MD5-CRYPT";
    payload = stored.substr(0, end);
  } else if (stored.starts_with('{') && stored.find('}') != std::string_view::npos) {
    auto close = stored.find('}');
    name = stored.substr(1, close - 1);
    payload = stored.substr(close + 1);
  }

  std::optional<encoding> explicit_encoding;
  auto dot = name.find('.');
  if (dot != std::string_view::npos) {
    explicit_encoding = parse_encoding_suffix(name.substr(dot + 1));
    name = name.substr(0, dot);
  }
  const scheme_entry* entry = find_entry(name);
  if (entry == nullptr) {
    return error(errc::not_found, is_unsupported_scheme(name) ? "unsupported password scheme"
                                                              : "unknown password scheme");
  }
  if (dot != std::string_view::npos && !explicit_encoding) {
    return error(errc::not_found, "unknown password encoding suffix (use .b64, .base64 or .hex)");
  }

  std::string context_name(entry->name);
  if (payload.empty()) {
    // No secret: parses, never matches (verify_password() refuses empty data).
    return stored_password(entry->scheme, {});
  }
  scratch raw;
  raw.s.reserve(payload.size());
  bool decoded = false;
  if (explicit_encoding) {
    decoded = decode(payload, *explicit_encoding, raw.s);
  } else if (entry->default_encoding != encoding::none && entry->raw_size != 0) {
    decoded = decode_guessing(payload, entry->raw_size, raw.s);
  } else {
    decoded = decode(payload, entry->default_encoding, raw.s);
  }
  if (!decoded) {
    return error(errc::invalid, "invalid hex or base64 encoding in " + context_name + " secret");
  }

  password_scheme scheme = entry->scheme;
  if (entry->is_md5_alias && !raw.s.starts_with("$1$")) {
    // Dovecot's {MD5}: not an MD5-crypt string, so a plain MD5 digest, itself hex or base64.
    scheme = password_scheme::plain_md5;
    if (raw.s.size() != 16) {
      scratch digest;
      digest.s.reserve(raw.s.size());
      if (!decode_guessing(raw.s, 16, digest.s)) {
        return error(errc::invalid, "MD5 secret is neither MD5-crypt nor an MD5 digest");
      }
      std::swap(raw.s, digest.s);
    }
  }

  POSTERN_TRY(check_secret_shape(scheme, *entry, raw.s, context_name));
  return stored_password(scheme, raw.s);
}

result<bool> verify_password(const stored_password& stored, const secret_string& password) {
  std::string_view pw = password.view();
  std::string_view raw = stored.data();
  if (pw.empty() || pw.find('\0') != std::string_view::npos || raw.empty()) {
    return false;
  }
  switch (stored.scheme()) {
    case password_scheme::plain:
      return verify_plain(raw, pw);
    case password_scheme::crypt:
    case password_scheme::md5_crypt:
    case password_scheme::sha256_crypt:
    case password_scheme::sha512_crypt:
    case password_scheme::blf_crypt:
    case password_scheme::yescrypt:
      return verify_crypt(stored, password);
    case password_scheme::sha1:
      return verify_digest(EVP_sha1(), raw, pw);
    case password_scheme::sha256:
      return verify_digest(EVP_sha256(), raw, pw);
    case password_scheme::sha512:
      return verify_digest(EVP_sha512(), raw, pw);
    case password_scheme::plain_md5:
      return verify_digest(EVP_md5(), raw, pw);
    case password_scheme::ssha:
      return verify_salted(EVP_sha1(), raw, pw);
    case password_scheme::ssha256:
      return verify_salted(EVP_sha256(), raw, pw);
    case password_scheme::ssha512:
      return verify_salted(EVP_sha512(), raw, pw);
    case password_scheme::smd5:
      return verify_salted(EVP_md5(), raw, pw);
    case password_scheme::pbkdf2:
      return verify_pbkdf2(raw, pw);
    case password_scheme::cram_md5:
      return verify_cram_md5(raw, pw);
    case password_scheme::scram_sha1:
      return verify_scram(scram_hash::sha1, raw, pw);
    case password_scheme::scram_sha256:
      return verify_scram(scram_hash::sha256, raw, pw);
  }
  return error(errc::invalid, "unhandled password scheme");
}

result<bool> verify_password(std::string_view stored, const secret_string& password) {
  auto parsed = parse_stored_password(stored);
  if (!parsed) {
    return std::move(parsed).err();
  }
  return verify_password(*parsed, password);
}

result<std::string> hash_password(std::string_view scheme, const secret_string& password) {
  return hash_password(scheme, password, 0);
}

result<std::string> hash_password(std::string_view scheme, const secret_string& password,
                                  unsigned rounds) {
  std::string_view name = scheme.empty() ? std::string_view("SHA512-CRYPT") : scheme;
  std::optional<encoding> explicit_encoding;
  std::string_view suffix;
  auto dot = name.find('.');
  if (dot != std::string_view::npos) {
    suffix = name.substr(dot + 1);
    explicit_encoding = parse_encoding_suffix(suffix);
    name = name.substr(0, dot);
  }
  const scheme_entry* entry = find_entry(name);
  if (entry == nullptr || (dot != std::string_view::npos && !explicit_encoding)) {
    return error(errc::not_found, is_unsupported_scheme(name)
                                      ? "unsupported password scheme"
                                      : "unknown password scheme or encoding");
  }
  std::string_view pw = password.view();
  if (pw.empty()) {
    return error(errc::invalid, "empty password");
  }
  if (pw.find('\0') != std::string_view::npos) {
    return error(errc::invalid, "password holds a NUL byte");
  }

  scratch raw;
  result<void> made =
      error(errc::invalid, std::string(entry->name) +
                               " is verified but not generated (too weak for new passwords)");
  if (!entry->is_md5_alias) {
    switch (entry->scheme) {
      case password_scheme::plain:
        raw.s.assign(pw);
        made = {};
        break;
      case password_scheme::sha512_crypt:
        made = generate_crypt("$6$", rounds, password, raw.s);
        break;
      case password_scheme::sha256_crypt:
        made = generate_crypt("$5$", rounds, password, raw.s);
        break;
      case password_scheme::blf_crypt:
        // $2y$ rather than libxcrypt's $2b$: the spelling Dovecot's own bcrypt writes.
        made = generate_crypt("$2y$", rounds == 0 ? bcrypt_default_cost : rounds, password, raw.s);
        break;
      case password_scheme::yescrypt:
        made = generate_crypt("$y$", rounds, password, raw.s);
        break;
      case password_scheme::crypt:
        made = generate_crypt(nullptr, rounds, password, raw.s);  // libxcrypt's preferred method
        break;
      case password_scheme::ssha:
        made = generate_salted(EVP_sha1(), pw, raw.s);
        break;
      case password_scheme::ssha256:
        made = generate_salted(EVP_sha256(), pw, raw.s);
        break;
      case password_scheme::ssha512:
        made = generate_salted(EVP_sha512(), pw, raw.s);
        break;
      case password_scheme::cram_md5: {
        wiped_bytes<32> context;
        if (make_cram_context(pw, context)) {
          raw.s.assign(context.view());
          made = {};
        } else {
          made = internal_error("digest failed");
        }
        break;
      }
      case password_scheme::scram_sha1:
        made = generate_scram(scram_hash::sha1, pw, rounds, raw.s);
        break;
      case password_scheme::scram_sha256:
        made = generate_scram(scram_hash::sha256, pw, rounds, raw.s);
        break;
      case password_scheme::pbkdf2:
        made = generate_pbkdf2(pw, rounds, raw.s);
        break;
      default:
        break;
    }
  }
  if (!made) {
    return std::move(made).err();
  }
  std::string out = "{";
  out += entry->name;
  if (explicit_encoding) {
    out += '.';
    out += ascii_to_lower(suffix);
  }
  out += '}';
  out += encode(raw.s, explicit_encoding.value_or(entry->default_encoding));
  return out;
}

cram_md5_secret::~cram_md5_secret() {
  OPENSSL_cleanse(outer.data(), sizeof(outer));
  OPENSSL_cleanse(inner.data(), sizeof(inner));
}

result<cram_md5_secret> parse_cram_md5_secret(const stored_password& stored) {
  if (stored.scheme() != password_scheme::cram_md5 || stored.data().size() != 32) {
    return error(errc::invalid, "not a CRAM-MD5 secret");
  }
  const auto* p = reinterpret_cast<const unsigned char*>(stored.data().data());
  cram_md5_secret s;
  for (std::size_t i = 0; i < 4; ++i) {
    s.outer[i] = get_le32(p + 4 * i);
    s.inner[i] = get_le32(p + 16 + 4 * i);
  }
  return s;
}

std::array<std::uint8_t, 16> cram_md5_hmac(const cram_md5_secret& secret,
                                           std::string_view message) {
  // HMAC = MD5(K^opad || MD5(K^ipad || message)); the states after the first block of each
  // are the secret, so both hashes resume after 64 bytes.
  std::array<std::uint8_t, 16> inner{};
  md5_finish(secret.inner, 64, message, inner.data());
  std::array<std::uint8_t, 16> out{};
  md5_finish(secret.outer, 64,
             std::string_view(reinterpret_cast<const char*>(inner.data()), inner.size()),
             out.data());
  OPENSSL_cleanse(inner.data(), inner.size());
  return out;
}

scram_secret::~scram_secret() {
  OPENSSL_cleanse(stored_key.data(), stored_key.size());
  OPENSSL_cleanse(server_key.data(), server_key.size());
}

result<scram_secret> parse_scram_secret(const stored_password& stored) {
  scram_hash h = scram_hash::sha256;
  if (stored.scheme() == password_scheme::scram_sha1) {
    h = scram_hash::sha1;
  } else if (stored.scheme() != password_scheme::scram_sha256) {
    return error(errc::invalid, "not a SCRAM secret");
  }
  scram_secret s;
  if (!parse_scram(stored.data(), h, s)) {
    return error(errc::invalid, "malformed SCRAM secret");
  }
  return s;
}

}  // namespace postern::auth
