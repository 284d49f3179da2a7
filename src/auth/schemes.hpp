// Password schemes: checks a plaintext password against a stored secret written the way
// Dovecot writes it, so an existing Dovecot passwd-file (or SQL/LDAP column) works unchanged,
// and produces new stored secrets the way `doveadm pw` does.
//
// A stored secret is "{SCHEME}data" or "{SCHEME.ENC}data" (ENC is b64, base64 or hex and
// overrides the scheme's default encoding of data); without a "{...}" prefix it is CRYPT, except
// that a bare "$1$salt$hash" is MD5-CRYPT (both as Dovecot reads them). Scheme names are
// case-insensitive.
//
// Threading: every function here may be called from any number of threads at once. Nothing is
// kept between calls: libxcrypt is used through crypt_rn() with a per-call crypt_data, OpenSSL
// through one-shot calls and per-call contexts. Several functions are slow on purpose (crypt,
// PBKDF2, SCRAM): call them off the I/O threads.
//
// Secrets: plaintexts arrive as secret_string; decoded stored secrets are kept in secret_string
// or wiped on destruction. No error context produced here contains a password, a stored
// secret or a scheme name taken from the input (a malformed "{...}" may be a plaintext).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.hpp"
#include "common/secret_string.hpp"

namespace postern::auth {

// The schemes that can be verified. Dovecot aliases map to one of these: CLEAR and CLEARTEXT
// are plain, SHA1 is sha1, HMAC-MD5 is cram_md5, MD5 is md5_crypt or plain_md5 depending on the
// data ("$1$..." or a bare digest), LDAP-MD5 is plain_md5 with base64 as default encoding.
enum class password_scheme {
  plain,
  crypt,         // whatever crypt(3) recognises from the setting: yescrypt, SHA-crypt, bcrypt, DES
  md5_crypt,     // $1$
  sha256_crypt,  // $5$
  sha512_crypt,  // $6$
  blf_crypt,     // $2a$ $2b$ $2y$
  yescrypt,      // $y$ (a label Dovecot does not have; its files say {CRYPT}$y$...)
  sha1,
  sha256,
  sha512,
  ssha,  // base64(SHA1(password + salt) + salt)
  ssha256,
  ssha512,
  smd5,
  plain_md5,
  pbkdf2,  // Dovecot's "$1$salt$rounds$hexhash", PBKDF2-HMAC-SHA1, 20-byte key
  cram_md5,
  scram_sha1,
  scram_sha256,
};

// Dovecot's name of the scheme as written between braces, e.g. "SHA512-CRYPT". Static storage.
std::string_view scheme_name(password_scheme scheme) noexcept;

// Looks up a scheme name as written between braces, without an encoding suffix;
// case-insensitive, aliases accepted ("MD5" gives md5_crypt). nullopt when unknown.
std::optional<password_scheme> find_scheme(std::string_view name) noexcept;

// A stored secret, parsed and decoded once (when a database is loaded) and then verified
// many times. Immutable and move-only; the decoded data is wiped when the object dies.
class stored_password {
 public:
  password_scheme scheme() const noexcept { return scheme_; }
  // The secret with its prefix and encoding removed: the raw digest (and salt) bytes for the
  // digest schemes and CRAM-MD5, the crypt string for the crypt schemes, the text after the
  // prefix for PBKDF2 and SCRAM, the password for plain. Valid while this object lives.
  std::string_view data() const noexcept { return data_.view(); }
  // data() as a NUL-terminated string, for crypt(3). The crypt schemes, PBKDF2 and SCRAM never
  // hold a NUL byte inside (checked when parsed). Valid while this object lives.
  const char* c_str() const noexcept { return data_.c_str(); }

 private:
  friend result<stored_password> parse_stored_password(std::string_view stored);
  stored_password(password_scheme scheme, std::string_view data) : scheme_(scheme), data_(data) {}

  password_scheme scheme_;
  secret_string data_;
};

// Parses and checks the structure of a stored secret (prefix, encoding, digest length, SCRAM
// and PBKDF2 fields). Crypt strings must pass libxcrypt's crypt_checksalt() (a cheap syntax
// check; crypt(3) has the last word when verifying), except locked ones starting with '*' or
// '!', which parse and never match. An empty secret parses (as CRYPT, or as the scheme named)
// and never matches.
// Errors: errc::not_found for an unknown or unsupported scheme name or encoding suffix (the
// context says which, without echoing the name); errc::invalid for malformed data.
result<stored_password> parse_stored_password(std::string_view stored);

// Checks `password` against a parsed secret, in constant time with respect to the secret.
// Returns true on a match, false on a mismatch. An empty password, a password holding a NUL
// byte or an empty stored secret never match (false).
// Errors: errc::invalid when crypt(3) rejects the stored crypt string (unsupported or
// malformed hash, or a locked one such as "*" or "!..."): treat as a failed login and log it;
// errc::temporary for an internal failure (memory, OpenSSL): answer [SYS/TEMP].
result<bool> verify_password(const stored_password& stored, const secret_string& password);

// parse_stored_password() then verify_password(); returns the parse error if parsing fails.
result<bool> verify_password(std::string_view stored, const secret_string& password);

// Creates a new stored secret "{SCHEME}data" for `password`, like `doveadm pw -s SCHEME`.
// The SCRAM iteration count of hashes generated without a cost, and of the answer SASL gives
// for a user it cannot check (so that such a user looks like one hashed with the default):
// RFC 5802's SHOULD and Dovecot's default.
inline constexpr std::uint32_t scram_default_iterations = 4096;

// `scheme` may carry an encoding suffix ("SSHA512.hex"); an empty `scheme` means SHA512-CRYPT.
// Generated: SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT, YESCRYPT, CRYPT (libxcrypt's preferred
// method, yescrypt on Debian), PLAIN/CLEAR/CLEARTEXT, SSHA, SSHA256, SSHA512, CRAM-MD5
// (HMAC-MD5), SCRAM-SHA-1, SCRAM-SHA-256, PBKDF2. Unsalted digests and MD5-based crypt are
// verified but never generated: they are too weak to create new ones.
// `rounds` (0 = the scheme's default) is the cost: SHA-crypt rounds (default 5000),
// BLF-CRYPT log2 cost (default 10), yescrypt cost (default 5), SCRAM iterations (default
// 4096, at least 4096), PBKDF2 rounds (default 5000); schemes without a cost ignore it.
// Salts: 16 random bytes from OpenSSL's RAND_bytes (SCRAM, SSHA*, crypt settings).
// The returned string is a secret (for PLAIN it holds the password): do not log it. A PLAIN
// password holding ':' or a line break cannot go into a passwd-file: use PLAIN.b64 there.
// Errors: errc::not_found for an unknown scheme; errc::invalid for a scheme that is not
// generated, an empty password, a NUL byte in the password, or rounds out of range;
// errc::temporary when the random generator or a hash function fails.
result<std::string> hash_password(std::string_view scheme, const secret_string& password);
result<std::string> hash_password(std::string_view scheme, const secret_string& password,
                                  unsigned rounds);

// ---------------------------------------------------------------------------------------
// Stored forms the SASL mechanisms need (CRAM-MD5, SCRAM-*): they compute with the secret
// itself instead of the plaintext.

// Dovecot's CRAM-MD5 secret: the MD5 chaining values after HMAC-MD5 has absorbed the key
// XOR opad block (outer) and the key XOR ipad block (inner), as stored in 32 bytes (64 hex
// characters), outer first, each word little-endian. Anyone holding it can answer CRAM-MD5
// challenges for the user: wiped on destruction.
struct cram_md5_secret {
  std::array<std::uint32_t, 4> outer{};
  std::array<std::uint32_t, 4> inner{};
  ~cram_md5_secret();
};

// The secret of a stored cram_md5 password. Errors: errc::invalid if `stored` is another
// scheme.
result<cram_md5_secret> parse_cram_md5_secret(const stored_password& stored);

// HMAC-MD5(password, message) computed from the secret alone: what a CRAM-MD5 server compares
// (in constant time) with the digest the client sent for challenge `message`.
std::array<std::uint8_t, 16> cram_md5_hmac(const cram_md5_secret& secret, std::string_view message);

enum class scram_hash { sha1, sha256 };

// Dovecot's SCRAM secret "{SCRAM-SHA-256}iterations,salt,StoredKey,ServerKey" (salt and keys
// base64) with the base64 removed. StoredKey and ServerKey let a server check a client and
// prove itself: wiped on destruction.
struct scram_secret {
  scram_hash hash = scram_hash::sha256;
  std::uint32_t iterations = 0;  // 4096 .. INT_MAX, as Dovecot accepts
  std::string salt;              // raw bytes, not empty
  std::string stored_key;        // H(ClientKey): 20 bytes (SHA-1) or 32 (SHA-256)
  std::string server_key;        // HMAC(SaltedPassword, "Server Key"), same size
  ~scram_secret();
};

// The secret of a stored scram_sha1 or scram_sha256 password. Errors: errc::invalid if
// `stored` is another scheme (its fields were checked when it was parsed).
result<scram_secret> parse_scram_secret(const stored_password& stored);

}  // namespace postern::auth
