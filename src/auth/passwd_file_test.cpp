// Tests for auth/schemes and auth/passwd_file.
//
// Known vectors were computed outside this code: `openssl passwd -1/-5/-6`, Python's crypt
// (libxcrypt), hashlib and hmac (digests, salted digests, PBKDF2, SCRAM keys), and published
// examples (RFC 2195's CRAM-MD5 exchange; `doveadm pw` output for "password"; Dovecot's
// documented {SSHA256.hex} example for "pass").
#include "auth/passwd_file.hpp"

#include <gtest/gtest.h>
#include <openssl/hmac.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "auth/schemes.hpp"

namespace postern::auth {
namespace {

constexpr std::string_view test_password = "Tr0ub4dor&3";

secret_string pw(std::string_view s) { return secret_string(s); }

bool matches(std::string_view stored, std::string_view password) {
  auto r = verify_password(stored, pw(password));
  EXPECT_TRUE(r.ok()) << stored << ": " << (r.ok() ? "" : r.err().message());
  return r.ok() && *r;
}

std::string hex(std::span<const std::uint8_t> bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (auto b : bytes) {
    out.push_back(digits[b >> 4]);
    out.push_back(digits[b & 15]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Known vectors

struct vector_row {
  std::string_view stored;
  std::string_view password;
  password_scheme scheme;
};

const vector_row known_vectors[] = {
    // openssl passwd -6 / -5 / -1 -salt saltsalt
    {"{SHA512-CRYPT}$6$saltsalt$"
     "fwlamBrOqmO1d1IGBZuoDbiBLysiZpmO29PF6JYPeFNWtUpYlWGacpfo3kQaQ6Jc9AgBbqPXfLKeJCECo1N.m1",
     test_password, password_scheme::sha512_crypt},
    {"$6$saltsalt$"
     "fwlamBrOqmO1d1IGBZuoDbiBLysiZpmO29PF6JYPeFNWtUpYlWGacpfo3kQaQ6Jc9AgBbqPXfLKeJCECo1N.m1",
     test_password, password_scheme::crypt},
    {"{crypt}$6$saltsalt$"
     "fwlamBrOqmO1d1IGBZuoDbiBLysiZpmO29PF6JYPeFNWtUpYlWGacpfo3kQaQ6Jc9AgBbqPXfLKeJCECo1N.m1",
     test_password, password_scheme::crypt},
    {"{SHA256-CRYPT}$5$saltsalt$lenpbIIfFTOesMocJVNZvortN.KXU4D2QzPbnD5iNU3", test_password,
     password_scheme::sha256_crypt},
    {"{MD5-CRYPT}$1$saltsalt$ueg/7ujBFDpyKLR2vs28p1", test_password, password_scheme::md5_crypt},
    {"{MD5}$1$saltsalt$ueg/7ujBFDpyKLR2vs28p1", test_password, password_scheme::md5_crypt},
    {"$1$saltsalt$ueg/7ujBFDpyKLR2vs28p1", test_password, password_scheme::md5_crypt},
    {"$1$saltsalt$ueg/7ujBFDpyKLR2vs28p1$ignored", test_password,
     password_scheme::md5_crypt},  // Dovecot drops the tail
    // Python crypt (libxcrypt)
    {"{BLF-CRYPT}$2y$04$abcdefghijklmnopqrstuu5UWyuxawIwQzpnlr0Mft5nu6B9cYh/C", test_password,
     password_scheme::blf_crypt},
    {"{BLF-CRYPT}$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", "U*U",
     password_scheme::blf_crypt},
    {"{YESCRYPT}$y$j9T$/Uk1Ko/7f6HC.RYHJlpMe/$7k4B1wJbgi/NKsReL.VZbkge2t/6I8pubRcivU4CJG4",
     test_password, password_scheme::yescrypt},
    {"{CRYPT}$y$j9T$/Uk1Ko/7f6HC.RYHJlpMe/$7k4B1wJbgi/NKsReL.VZbkge2t/6I8pubRcivU4CJG4",
     test_password, password_scheme::crypt},
    {"{CRYPT}abWL7Sj501Z46", test_password, password_scheme::crypt},  // traditional DES
    // hashlib
    {"{SHA}h0Vy56WuaklGamrFeLmK26eMaqY=", test_password, password_scheme::sha1},
    {"{SHA1}874572e7a5ae6a49466a6ac578b98adba78c6aa6", test_password,
     password_scheme::sha1},  // hex by length
    {"{SHA.hex}874572E7A5AE6A49466A6AC578B98ADBA78C6AA6", test_password, password_scheme::sha1},
    {"{SHA256}SEhuFRToQjRv9AWx5F9EBZroJhnyMG+Z0JQNyzhukfc=", test_password,
     password_scheme::sha256},
    {"{SHA512}xyu2IccEDPS2R0BjqaeXJpDiUvNa2+fPr/"
     "Wx7iMW7+c4LnI9QeATor+8M8MAfFDFhH0hqInM6DhTbqxyeAjeQA==",
     test_password, password_scheme::sha512},
    {"{SSHA}IkKEbqcDu5G7Jvsgbd90pS4FUEUBAgME/v8=", test_password, password_scheme::ssha},
    {"{SSHA.hex}2242846ea703bb91bb26fb206ddf74a52e05504501020304feff", test_password,
     password_scheme::ssha},
    {"{SSHA256}/Ks/oleZgBwZMugymjfvQE2GH0nkgeVr7W2x/4IA2OkBAgME/v8=", test_password,
     password_scheme::ssha256},
    {"{SSHA512}YQ7j+"
     "ken6Da1jscUobiIMC0RyUEsSkoDctQjgo2U41Y3Oy4vTyONuBztxOJI0UltnLNS7Yi75LVYwQhlDb7pqgECAwT+/w==",
     test_password, password_scheme::ssha512},
    {"{SSHA512.b64}YQ7j+"
     "ken6Da1jscUobiIMC0RyUEsSkoDctQjgo2U41Y3Oy4vTyONuBztxOJI0UltnLNS7Yi75LVYwQhlDb7pqgECAwT+/w",
     test_password, password_scheme::ssha512},  // padding omitted
    {"{SMD5}ftc4ivD+4lE4p0cSPnrcrQECAwT+/w==", test_password, password_scheme::smd5},
    {"{PLAIN-MD5}4ece57a61323b52ccffdbef021956754", test_password, password_scheme::plain_md5},
    {"{LDAP-MD5}Ts5XphMjtSzP/b7wIZVnVA==", test_password, password_scheme::plain_md5},
    {"{MD5}4ece57a61323b52ccffdbef021956754", test_password, password_scheme::plain_md5},
    {"{MD5}Ts5XphMjtSzP/b7wIZVnVA==", test_password, password_scheme::plain_md5},
    {"{PLAIN}Tr0ub4dor&3", test_password, password_scheme::plain},
    {"{CLEAR}Tr0ub4dor&3", test_password, password_scheme::plain},
    {"{cleartext}Tr0ub4dor&3", test_password, password_scheme::plain},
    {"{PLAIN.b64}VHIwdWI0ZG9yJjM=", test_password, password_scheme::plain},
    {"{PLAIN.hex}547230756234646f722633", test_password, password_scheme::plain},
    {"{PBKDF2}$1$Zl6KJsmk8jKjtvJ4$5000$2a02796b7905800620e233087956c05da9e7d0d8", test_password,
     password_scheme::pbkdf2},
    {"{SCRAM-SHA-1}4096,MDEyMzQ1Njc4OWFiY2RlZg==,s9dBgLhtjRFo+R3CskqivlI/"
     "vwc=,mfPsvBhz0P6QBjQrfceuukH2MzE=",
     test_password, password_scheme::scram_sha1},
    {"{SCRAM-SHA-256}4096,MDEyMzQ1Njc4OWFiY2RlZg==,0grU/FVwHHTrpSfeOYbd03EbWZBmH555I2ZbFIqF65Y=,"
     "I+a9zwNdDPVQVPWCoKxFWQHlNeLhibpr8/NdI2RUnOc=",
     test_password, password_scheme::scram_sha256},
    // Published: `doveadm pw` for "password", and Dovecot's documented SSHA256.hex example for
    // "pass".
    {"{CRAM-MD5}9186d855e11eba527a7a52ca82b313e180d62234f0acc9051b527243d41e2740", "password",
     password_scheme::cram_md5},
    {"{HMAC-MD5}9186d855e11eba527a7a52ca82b313e180d62234f0acc9051b527243d41e2740", "password",
     password_scheme::cram_md5},
    {"{PLAIN-MD5}5f4dcc3b5aa765d61d8327deb882cf99", "password", password_scheme::plain_md5},
    {"{SSHA256.hex}4a847fefc4f9ab450f16783c5025d64313942a1ceb2599707cdb65940ba901e513fa442f",
     "pass", password_scheme::ssha256},
};

TEST(Schemes, KnownVectorsMatch) {
  for (const auto& row : known_vectors) {
    SCOPED_TRACE(row.stored);
    auto parsed = parse_stored_password(row.stored);
    ASSERT_TRUE(parsed.ok()) << parsed.err().message();
    EXPECT_EQ(parsed->scheme(), row.scheme);
    EXPECT_TRUE(matches(row.stored, row.password));
  }
}

TEST(Schemes, KnownVectorsRejectWrongPasswords) {
  for (const auto& row : known_vectors) {
    SCOPED_TRACE(row.stored);
    std::string wrong(row.password);
    wrong.front() ^= 1;
    EXPECT_FALSE(matches(row.stored, wrong));
    EXPECT_FALSE(matches(row.stored, ""));  // empty password never matches
    // Traditional DES crypt only reads 8 characters (see DesCryptTruncatesAtEightCharacters).
    if (row.stored.find("abWL7Sj501Z46") != std::string_view::npos) {
      continue;
    }
    wrong = row.password;
    wrong.back() ^= 1;
    EXPECT_FALSE(matches(row.stored, wrong));
    EXPECT_FALSE(matches(row.stored, std::string(row.password) + "x"));
    EXPECT_FALSE(matches(row.stored, row.password.substr(0, row.password.size() - 1)));
  }
}

TEST(Schemes, SchemeNamesAreCaseInsensitive) {
  EXPECT_TRUE(
      matches("{sha512-crypt}$6$saltsalt$"
              "fwlamBrOqmO1d1IGBZuoDbiBLysiZpmO29PF6JYPeFNWtUpYlWGacpfo3kQaQ6Jc9AgB"
              "bqPXfLKeJCECo1N.m1",
              test_password));
  EXPECT_TRUE(matches("{Ssha}IkKEbqcDu5G7Jvsgbd90pS4FUEUBAgME/v8=", test_password));
  EXPECT_TRUE(
      matches("{ssha.HEX}2242846ea703bb91bb26fb206ddf74a52e05504501020304feff", test_password));
  EXPECT_EQ(find_scheme("hmac-md5"), password_scheme::cram_md5);
  EXPECT_EQ(find_scheme("Md5"), password_scheme::md5_crypt);
  EXPECT_EQ(find_scheme("SHA512.b64"), std::nullopt);
  EXPECT_EQ(scheme_name(password_scheme::sha512_crypt), "SHA512-CRYPT");
}

TEST(Schemes, EmptySecretsAndPasswordsNeverMatch) {
  for (std::string_view stored : {"", "{PLAIN}", "{CRYPT}", "{SHA512-CRYPT}", "{SHA}", "{SSHA512}",
                                  "{CRAM-MD5}", "{SCRAM-SHA-256}", "{PBKDF2}", "{MD5}"}) {
    SCOPED_TRACE(stored);
    EXPECT_FALSE(matches(stored, test_password));
    EXPECT_FALSE(matches(stored, ""));
  }
  EXPECT_FALSE(matches("{PLAIN}", ""));
  // A NUL byte in the password never matches (crypt(3) would see a shorter password).
  EXPECT_FALSE(matches("{PLAIN}abc", std::string("abc\0def", 7)));
  EXPECT_FALSE(matches("{CRYPT}abWL7Sj501Z46", std::string("Tr0ub4dor&3\0x", 13)));
}

TEST(Schemes, DesCryptTruncatesAtEightCharacters) {
  // Documented weakness of traditional crypt: only 8 characters count.
  EXPECT_TRUE(matches("{CRYPT}abWL7Sj501Z46", "Tr0ub4doXXXX"));
}

TEST(Schemes, UnknownSchemesAreDistinguishable) {
  for (std::string_view stored :
       {"{FOO}bar", "{SHA.zip}abc", "{}abc", "{DIGEST-MD5}0123456789abcdef0123456789abcdef",
        "{NTLM}0123456789abcdef0123456789abcdef", "{ARGON2ID}$argon2id$v=19$m=65536"}) {
    SCOPED_TRACE(stored);
    auto r = parse_stored_password(stored);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.err().code(), errc::not_found);
    auto v = verify_password(stored, pw(test_password));
    ASSERT_FALSE(v.ok());
    EXPECT_EQ(v.err().code(), errc::not_found);
  }
  EXPECT_NE(parse_stored_password("{DIGEST-MD5}x").err().context().find("unsupported"),
            std::string::npos);
  EXPECT_NE(parse_stored_password("{FOO}x").err().context().find("unknown"), std::string::npos);
}

TEST(Schemes, ErrorsDoNotEchoTheSecret) {
  for (std::string_view stored : {"{hunter2}hunter2", "{SHA}hunter2!", "{SSHA}aHVudGVyMg==",
                                  "{PLAIN.zz}hunter2", "{SCRAM-SHA-1}hunter2", "{PBKDF2}hunter2"}) {
    auto r = parse_stored_password(stored);
    ASSERT_FALSE(r.ok()) << stored;
    EXPECT_EQ(r.err().message().find("hunter2"), std::string::npos) << r.err().message();
  }
}

TEST(Schemes, GarbageSecretsAreInvalid) {
  // SCRAM fields, to build malformed entries from.
  const std::string salt = "MDEyMzQ1Njc4OWFiY2RlZg==";
  const std::string key256a = "0grU/FVwHHTrpSfeOYbd03EbWZBmH555I2ZbFIqF65Y=";
  const std::string key256b = "I+a9zwNdDPVQVPWCoKxFWQHlNeLhibpr8/NdI2RUnOc=";
  const std::string scram_low = "{SCRAM-SHA-256}1000," + salt + "," + key256a + "," + key256b;
  const std::string scram_three = "{SCRAM-SHA-256}4096," + salt + "," + key256a;
  const std::string scram_sizes = "{SCRAM-SHA-1}4096," + salt + "," + key256a + "," + key256b;
  const std::string scram_no_salt = "{SCRAM-SHA-256}4096,," + key256a + "," + key256b;
  const std::string_view rows[] = {
      "{SHA}not*base64",
      "{SHA}c2hvcnQ=",                               // decodes, wrong length
      "{SHA256}h0Vy56WuaklGamrFeLmK26eMaqY=",        // a SHA-1 digest
      "{SSHA}h0Vy56WuaklGamrFeLmK26eMaqY=",          // 20 bytes: no salt
      "{SSHA512.hex}abc",                            // odd hex
      "{PLAIN-MD5}4ece57a61323b52ccffdbef02195675",  // 31 hex digits
      "{MD5}notanmd5",                               // neither $1$ nor a digest
      "{CRAM-MD5}zz86d855e11eba527a7a52ca82b313e180d62234f0acc9051b527243d41e2740",
      "{CRAM-MD5}9186d855e11eba527a7a52ca82b313e1",  // 16 bytes
      "{PBKDF2}$2$salt$5000$2a02796b7905800620e233087956c05da9e7d0d8",
      "{PBKDF2}$1$salt$0$2a02796b7905800620e233087956c05da9e7d0d8",
      "{PBKDF2}$1$salt$5000$2a02796b7905800620e233087956c05da9e7d0d",
      "{PBKDF2}$1$salt$5000",
      "{PBKDF2}$1$salt$x$2a02796b7905800620e233087956c05da9e7d0d8",
      scram_low,      // iterations below 4096
      scram_three,    // three fields
      scram_sizes,    // SHA-256 sized keys in a SHA-1 entry
      scram_no_salt,  // empty salt
      "{SCRAM-SHA-256}4096,MDEy,a,b,c",
      "{SHA512-CRYPT}$6$saltsalt$fwlam!!",  // not crypt's alphabet
      "{SHA512-CRYPT$6$saltsalt$fwlamBrOqmO1d1IGBZuoDbiBLysiZpmO29PF6JYPeFNWtUpYlWG",  // no '}'
      "{CRYPT.b64}AAA=",                 // decodes to a NUL-holding crypt string
      "{PLAIN.hex}5472307562346f72263",  // odd hex
  };
  for (auto stored : rows) {
    SCOPED_TRACE(stored);
    auto r = parse_stored_password(stored);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.err().code(), errc::invalid);
  }
}

TEST(Schemes, CryptRejectsUnusableHashes) {
  // Locked or unsupported crypt strings: an invalid-secret error, never a match.
  for (std::string_view stored : {"{CRYPT}*", "{CRYPT}!", "!$6$saltsalt$fwlam",
                                  "{SHA512-CRYPT}*LK*", "{CRYPT}$y$j9T$abc$de"}) {
    SCOPED_TRACE(stored);
    auto r = verify_password(stored, pw(test_password));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.err().code(), errc::invalid);
  }
  // Strings crypt(3) accepts but that cannot come out of it: a plain mismatch.
  EXPECT_FALSE(matches("{SHA512-CRYPT}$6$abc", test_password));
  EXPECT_FALSE(matches("garbage", test_password));
}

// ---------------------------------------------------------------------------------------
// CRAM-MD5 and SCRAM secrets

TEST(Schemes, CramMd5SecretAnswersRfc2195Challenge) {
  auto stored = hash_password("CRAM-MD5", pw("tanstaaftanstaaf"));
  ASSERT_TRUE(stored.ok());
  auto parsed = parse_stored_password(*stored);
  ASSERT_TRUE(parsed.ok());
  auto secret = parse_cram_md5_secret(*parsed);
  ASSERT_TRUE(secret.ok());
  auto digest = cram_md5_hmac(*secret, "<1896.697170952@postoffice.reston.mci.net>");
  EXPECT_EQ(hex(digest), "b913a602c7eda7a495b4e6e7334d3890");
}

TEST(Schemes, CramMd5SecretEqualsHmacMd5ForManyLengths) {
  // The secret holds MD5 states; finishing them must give exactly HMAC-MD5 for every key and
  // message length around the block boundaries (keys over 64 bytes are hashed first).
  for (std::size_t key_len : {1, 10, 55, 56, 63, 64, 65, 100, 200}) {
    std::string key(key_len, 'k');
    for (std::size_t i = 0; i < key_len; ++i) {
      key[i] = static_cast<char>('!' + (i * 7) % 90);
    }
    auto stored = hash_password("CRAM-MD5", pw(key));
    ASSERT_TRUE(stored.ok());
    auto parsed = parse_stored_password(*stored);
    ASSERT_TRUE(parsed.ok());
    EXPECT_TRUE(*verify_password(*parsed, pw(key)));
    auto secret = parse_cram_md5_secret(*parsed);
    ASSERT_TRUE(secret.ok());
    for (std::size_t msg_len = 0; msg_len < 140; msg_len += 1 + msg_len / 8) {
      std::string msg(msg_len, 'm');
      for (std::size_t i = 0; i < msg_len; ++i) {
        msg[i] = static_cast<char>(i * 31 + key_len);
      }
      unsigned char expected[16];
      unsigned int len = 0;
      ASSERT_NE(
          HMAC(EVP_md5(), key.data(), static_cast<int>(key.size()),
               reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), expected, &len),
          nullptr);
      auto got = cram_md5_hmac(*secret, msg);
      EXPECT_EQ(hex(got), hex(std::span<const std::uint8_t>(expected, 16)))
          << key_len << "/" << msg_len;
    }
  }
}

TEST(Schemes, CramMd5SecretOfDovecotVector) {
  auto parsed = parse_stored_password(
      "{CRAM-MD5}9186d855e11eba527a7a52ca82b313e180d62234f0acc9051b527243d41e2740");
  ASSERT_TRUE(parsed.ok());
  auto secret = parse_cram_md5_secret(*parsed);
  ASSERT_TRUE(secret.ok());
  EXPECT_EQ(secret->outer[0], 0x55d88691u);  // little-endian words, outer state first
  unsigned char expected[16];
  unsigned int len = 0;
  std::string_view msg = "<challenge@example.org>";
  HMAC(EVP_md5(), "password", 8, reinterpret_cast<const unsigned char*>(msg.data()), msg.size(),
       expected, &len);
  EXPECT_EQ(hex(cram_md5_hmac(*secret, msg)), hex(std::span<const std::uint8_t>(expected, 16)));
  auto plain = parse_stored_password("{PLAIN}password");
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(parse_cram_md5_secret(*plain).ok());
}

TEST(Schemes, ScramSecretFields) {
  auto parsed = parse_stored_password(
      "{SCRAM-SHA-256}4096,MDEyMzQ1Njc4OWFiY2RlZg==,0grU/FVwHHTrpSfeOYbd03EbWZBmH555I2ZbFIqF65Y=,"
      "I+a9zwNdDPVQVPWCoKxFWQHlNeLhibpr8/NdI2RUnOc=");
  ASSERT_TRUE(parsed.ok());
  auto s = parse_scram_secret(*parsed);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->hash, scram_hash::sha256);
  EXPECT_EQ(s->iterations, 4096u);
  EXPECT_EQ(s->salt, "0123456789abcdef");
  EXPECT_EQ(s->stored_key.size(), 32u);
  EXPECT_EQ(s->server_key.size(), 32u);
  EXPECT_EQ(static_cast<unsigned char>(s->stored_key[0]), 0xd2);

  auto sha1 = parse_stored_password(
      "{SCRAM-SHA-1}4096,MDEyMzQ1Njc4OWFiY2RlZg==,s9dBgLhtjRFo+R3CskqivlI/"
      "vwc=,mfPsvBhz0P6QBjQrfceuukH2MzE=");
  ASSERT_TRUE(sha1.ok());
  auto s1 = parse_scram_secret(*sha1);
  ASSERT_TRUE(s1.ok());
  EXPECT_EQ(s1->hash, scram_hash::sha1);
  EXPECT_EQ(s1->stored_key.size(), 20u);

  auto plain = parse_stored_password("{PLAIN}x");
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(parse_scram_secret(*plain).ok());
}

// ---------------------------------------------------------------------------------------
// hash_password

struct generate_row {
  std::string_view scheme;
  std::string_view prefix;
  bool salted;  // two hashes of one password differ
};

const generate_row generated_rows[] = {
    {"", "{SHA512-CRYPT}$6$", true},
    {"SHA512-CRYPT", "{SHA512-CRYPT}$6$", true},
    {"sha256-crypt", "{SHA256-CRYPT}$5$", true},
    {"BLF-CRYPT", "{BLF-CRYPT}$2y$10$", true},
    {"YESCRYPT", "{YESCRYPT}$y$", true},
    {"CRYPT", "{CRYPT}$", true},
    {"PLAIN", "{PLAIN}", false},
    {"CLEAR", "{CLEAR}", false},
    {"CLEARTEXT", "{CLEARTEXT}", false},
    {"PLAIN.b64", "{PLAIN.b64}", false},
    {"SSHA", "{SSHA}", true},
    {"SSHA256", "{SSHA256}", true},
    {"SSHA512", "{SSHA512}", true},
    {"SSHA512.HEX", "{SSHA512.hex}", true},
    {"CRAM-MD5", "{CRAM-MD5}", false},
    {"HMAC-MD5", "{HMAC-MD5}", false},
    {"CRAM-MD5.b64", "{CRAM-MD5.b64}", false},
    {"SCRAM-SHA-1", "{SCRAM-SHA-1}4096,", true},
    {"SCRAM-SHA-256", "{SCRAM-SHA-256}4096,", true},
    {"PBKDF2", "{PBKDF2}$1$", true},
};

TEST(HashPassword, RoundTripsEveryScheme) {
  const std::string_view passwords[] = {"correct horse", "x", "pässwörd-ÜTF8",
                                        std::string_view("a:b\tc{d}$e", 10)};
  for (const auto& row : generated_rows) {
    SCOPED_TRACE(row.scheme);
    for (auto password : passwords) {
      auto a = hash_password(row.scheme, pw(password));
      ASSERT_TRUE(a.ok()) << a.err().message();
      EXPECT_TRUE(a->starts_with(row.prefix)) << *a;
      EXPECT_TRUE(matches(*a, password));
      EXPECT_FALSE(matches(*a, std::string(password) + "!"));
      EXPECT_FALSE(matches(*a, "wrong"));
      auto b = hash_password(row.scheme, pw(password));
      ASSERT_TRUE(b.ok());
      EXPECT_EQ(*a != *b, row.salted) << *a << " / " << *b;
    }
  }
}

TEST(HashPassword, ScramDefaultsAndRandomSalt) {
  auto stored = hash_password("SCRAM-SHA-256", pw("secret"));
  ASSERT_TRUE(stored.ok());
  auto parsed = parse_stored_password(*stored);
  ASSERT_TRUE(parsed.ok());
  auto s = parse_scram_secret(*parsed);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->iterations, 4096u);
  EXPECT_EQ(s->salt.size(), 16u);
}

TEST(HashPassword, Rounds) {
  auto blf = hash_password("BLF-CRYPT", pw("secret"), 4);
  ASSERT_TRUE(blf.ok());
  EXPECT_TRUE(blf->starts_with("{BLF-CRYPT}$2y$04$")) << *blf;
  EXPECT_TRUE(matches(*blf, "secret"));

  auto sha = hash_password("SHA512-CRYPT", pw("secret"), 10000);
  ASSERT_TRUE(sha.ok());
  EXPECT_TRUE(sha->starts_with("{SHA512-CRYPT}$6$rounds=10000$")) << *sha;
  EXPECT_TRUE(matches(*sha, "secret"));

  auto scram = hash_password("SCRAM-SHA-1", pw("secret"), 5000);
  ASSERT_TRUE(scram.ok());
  EXPECT_TRUE(scram->starts_with("{SCRAM-SHA-1}5000,")) << *scram;
  EXPECT_TRUE(matches(*scram, "secret"));

  auto pbkdf2 = hash_password("PBKDF2", pw("secret"), 1000);
  ASSERT_TRUE(pbkdf2.ok());
  EXPECT_NE(pbkdf2->find("$1000$"), std::string::npos) << *pbkdf2;
  EXPECT_TRUE(matches(*pbkdf2, "secret"));

  EXPECT_EQ(hash_password("SCRAM-SHA-256", pw("secret"), 1000).err().code(), errc::invalid);
  EXPECT_EQ(hash_password("BLF-CRYPT", pw("secret"), 3).err().code(), errc::invalid);
  EXPECT_EQ(hash_password("BLF-CRYPT", pw("secret"), 32).err().code(), errc::invalid);
}

TEST(HashPassword, Refusals) {
  EXPECT_EQ(hash_password("NOPE", pw("secret")).err().code(), errc::not_found);
  EXPECT_EQ(hash_password("SSHA.zip", pw("secret")).err().code(), errc::not_found);
  EXPECT_EQ(hash_password("DIGEST-MD5", pw("secret")).err().code(), errc::not_found);
  for (std::string_view weak :
       {"SHA", "SHA256", "SHA512", "MD5", "MD5-CRYPT", "PLAIN-MD5", "LDAP-MD5", "SMD5"}) {
    auto r = hash_password(weak, pw("secret"));
    ASSERT_FALSE(r.ok()) << weak;
    EXPECT_EQ(r.err().code(), errc::invalid);
  }
  EXPECT_EQ(hash_password("PLAIN", pw("")).err().code(), errc::invalid);
  EXPECT_EQ(hash_password("SHA512-CRYPT", pw(std::string_view("a\0b", 3))).err().code(),
            errc::invalid);
}

// ---------------------------------------------------------------------------------------
// passwd-file parsing

result<passwd_table> parse(std::string_view content) { return parse_passwd_file(content, "users"); }

std::string parse_error(std::string_view content) {
  auto r = parse(content);
  EXPECT_FALSE(r.ok()) << content;
  if (r.ok()) {
    return {};
  }
  EXPECT_EQ(r.err().code(), errc::invalid);
  return r.err().message();
}

TEST(PasswdFileParse, CommentsBlankLinesAndShortLines) {
  auto t = parse(
      "# users\n"
      "\n"
      "   \t\n"
      "  # indented comment\n"
      "alice:{PLAIN}wonder\n"
      "bob@example.org:{PLAIN}builder:1000:1000::/home/bob\r\n"
      "carol:{PLAIN}c:::::\n"
      "dave:\n"
      "eve");  // no colon: an error, checked below; here cut off
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.err().message(), "users:9: missing ':' after the user name");

  t = parse(
      "# users\n"
      "\n"
      "   \t\n"
      "  # indented comment\n"
      "alice:{PLAIN}wonder\n"
      "bob@example.org:{PLAIN}builder:1000:1001::/home/bob\r\n"
      "carol:{PLAIN}c:::::\n"
      "dave:\n"
      "eve:{PLAIN}last");  // no final newline
  ASSERT_TRUE(t.ok()) << t.err().message();
  EXPECT_EQ(t->size(), 5u);
  const passwd_entry* alice = t->find("alice");
  ASSERT_NE(alice, nullptr);
  EXPECT_EQ(alice->line, 5u);
  EXPECT_EQ(alice->user.name, "alice");
  EXPECT_FALSE(alice->user.uid);
  EXPECT_TRUE(alice->user.home.empty());
  ASSERT_TRUE(alice->password);
  EXPECT_EQ(alice->password->scheme(), password_scheme::plain);

  const passwd_entry* bob = t->find("bob@example.org");
  ASSERT_NE(bob, nullptr);
  EXPECT_EQ(bob->user.uid, 1000u);
  EXPECT_EQ(bob->user.gid, 1001u);
  EXPECT_EQ(bob->user.home, "/home/bob");
  EXPECT_TRUE(*verify_password(*bob->password, pw("builder")));  // the CR was dropped

  const passwd_entry* dave = t->find("dave");
  ASSERT_NE(dave, nullptr);
  EXPECT_FALSE(dave->password);

  EXPECT_NE(t->find("eve"), nullptr);
  EXPECT_EQ(t->find("Alice"), nullptr);  // case-sensitive
  EXPECT_EQ(t->find("bob"), nullptr);
}

TEST(PasswdFileParse, ExtraFields) {
  auto t = parse(
      "alice:{PLAIN}x:1000:1000::/home/alice::userdb_mail=maildir:~/Maildir:LAYOUT=fs "
      "quota_rule=*:storage=1G "
      "userdb_home=/srv/alice  nodelay\n"
      "bob:{PLAIN}x:1000:1000::/home/bob::mail=mbox:~/mail:INBOX=/var/mail/bob\n"
      "carol:{PLAIN}x:1000:1000::/home/carol:/bin/false::maildir:/srv/carol:LAYOUT=fs\n"  // old
                                                                                          // format
      "dave:{PLAIN}x::::::userdb_uid=1234 userdb_gid=2345\n"
      "erin:{PLAIN}x:::::::\n");
  ASSERT_TRUE(t.ok()) << t.err().message();
  const passwd_entry* alice = t->find("alice");
  ASSERT_NE(alice, nullptr);
  EXPECT_EQ(alice->user.mail, "maildir:~/Maildir:LAYOUT=fs");
  EXPECT_EQ(alice->user.home, "/srv/alice");
  EXPECT_EQ(alice->user.extra.at("quota_rule"), "*:storage=1G");
  EXPECT_EQ(alice->user.extra.at("nodelay"), "");
  EXPECT_EQ(alice->user.extra.count("userdb_mail"), 0u);
  EXPECT_TRUE(alice->refusal.empty());

  EXPECT_EQ(t->find("bob")->user.mail, "mbox:~/mail:INBOX=/var/mail/bob");
  EXPECT_EQ(t->find("carol")->user.mail, "maildir:/srv/carol:LAYOUT=fs");
  EXPECT_EQ(t->find("dave")->user.uid, 1234u);
  EXPECT_EQ(t->find("dave")->user.gid, 2345u);
  EXPECT_TRUE(t->find("erin")->user.extra.empty());
}

TEST(PasswdFileParse, RefusingExtraFields) {
  auto t = parse(
      "a:{PLAIN}x::::::nologin reason=moved\n"
      "b:::::::nopassword\n"
      "c:{PLAIN}x::::::allow_nets=127.0.0.1/32\n"
      "d:{PLAIN}x::::::proxy host=10.0.0.2\n"
      "e:{PLAIN}x::::::proxy_maybe=y\n"
      "f:{PLAIN}x::::::nodelay\n");
  ASSERT_TRUE(t.ok()) << t.err().message();
  EXPECT_EQ(t->find("a")->refusal, "login disabled (nologin)");
  EXPECT_EQ(t->find("a")->user.extra.at("reason"), "moved");
  EXPECT_FALSE(t->find("b")->refusal.empty());
  EXPECT_FALSE(t->find("c")->refusal.empty());
  EXPECT_FALSE(t->find("d")->refusal.empty());
  EXPECT_FALSE(t->find("e")->refusal.empty());
  EXPECT_TRUE(t->find("f")->refusal.empty());
}

TEST(PasswdFileParse, PamPwdfileSuffixes) {
  auto t = parse(
      "a:abWL7Sj501Z46[13]\n"
      "b:4ece57a61323b52ccffdbef021956754[34]\n");
  ASSERT_TRUE(t.ok()) << t.err().message();
  EXPECT_TRUE(*verify_password(*t->find("a")->password, pw(test_password)));
  EXPECT_EQ(t->find("b")->password->scheme(), password_scheme::plain_md5);
  EXPECT_TRUE(*verify_password(*t->find("b")->password, pw(test_password)));
  EXPECT_NE(parse_error("c:0123456789abcdef0123456789abcdef[56]\n").find("users:1: unsupported"),
            std::string::npos);
}

TEST(PasswdFileParse, NamesInUidAndGid) {
  // cppcheck-suppress getpwnamCalled ; the test runs in one thread
  struct passwd* daemon_user = getpwnam("daemon");
  if (daemon_user == nullptr) {
    GTEST_SKIP() << "no 'daemon' user here";
  }
  auto t = parse("a:{PLAIN}x:daemon:daemon\n");
  ASSERT_TRUE(t.ok()) << t.err().message();
  EXPECT_EQ(t->find("a")->user.uid, daemon_user->pw_uid);
  EXPECT_NE(parse_error("a:{PLAIN}x:root\n").find("users:1: uid 0"), std::string::npos);
  EXPECT_NE(parse_error("a:{PLAIN}x:1:root\n").find("users:1: gid 0"), std::string::npos);
}

TEST(PasswdFileParse, MalformedLinesNameTheLine) {
  struct row {
    std::string_view content;
    std::string_view expected;  // substring of the message
  };
  const row rows[] = {
      {"ok:{PLAIN}x\nbroken\n", "users:2: missing ':'"},
      {"#c\n\n:{PLAIN}x\n", "users:3: empty user name"},
      {"a b:{PLAIN}x\n", "users:1: user name holds blanks"},
      {"a:{PLAIN}x\na:{PLAIN}y\n", "users:2: user 'a' already defined on line 1"},
      {"a:{FOO}hunter2\n", "users:1: unknown password scheme"},
      {"a:{SHA}hunter2!!\n", "users:1: invalid"},
      {"a:{PLAIN}x:0\n", "users:1: uid 0 (root) is not allowed"},
      {"a:{PLAIN}x:1000:0\n", "users:1: gid 0 (root) is not allowed"},
      {"a:{PLAIN}x:12abc\n", "users:1: invalid uid"},
      {"a:{PLAIN}x:99999999999\n", "users:1: uid out of range"},
      {"a:{PLAIN}x:4294967295\n", "users:1: uid out of range"},
      {"a:{PLAIN}x:no-such-user-postern\n",
       "users:1: unknown user name 'no-such-user-postern' in uid"},
      {"a:{PLAIN}x:1000:no-such-group-postern\n", "users:1: unknown group name"},
      {"a:{PLAIN}x::::::=value\n", "users:1: extra field without a name"},
      {"a:{PLAIN}x::::::userdb_uid=0\n", "users:1: uid 0"},
      {std::string_view("a:{PLAIN}x\nb:{PLAIN}\0\n", 22), "users:2: NUL byte"},
  };
  for (const auto& r : rows) {
    std::string message = parse_error(r.content);
    EXPECT_NE(message.find(r.expected), std::string::npos) << "got: " << message;
    EXPECT_EQ(message.find("hunter2"), std::string::npos) << message;
  }
}

TEST(PasswdFileParse, DummyFollowsTheFile) {
  auto slow = parse(
      "a:{PLAIN}x\n"
      "locked:{CRYPT}!$6$saltsalt$x\n"
      "b:{SHA512-CRYPT}$6$saltsalt$"
      "fwlamBrOqmO1d1IGBZuoDbiBLysiZpmO29PF6JYPeFNWtUpYlWGacpfo3kQaQ6Jc9AgBbqPXfLKeJCECo1N."
      "m1\n"
      "c:{BLF-CRYPT}$2y$04$abcdefghijklmnopqrstuu5UWyuxawIwQzpnlr0Mft5nu6B9cYh/C\n");
  ASSERT_TRUE(slow.ok());
  EXPECT_EQ(slow->dummy().scheme(), password_scheme::sha512_crypt);
  auto fast = parse("a::\nb:{SHA}h0Vy56WuaklGamrFeLmK26eMaqY=\n");
  ASSERT_TRUE(fast.ok());
  EXPECT_EQ(fast->dummy().scheme(), password_scheme::sha1);
  auto none = parse("a:\n");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->dummy().scheme(), password_scheme::sha512_crypt);
  EXPECT_FALSE(*verify_password(none->dummy(), pw("anything")));
}

// ---------------------------------------------------------------------------------------
// passwd-file database

class PasswdFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/postern_passwd_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/users";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Replaces the file atomically, as an administrator's tool should.
  void replace(std::string_view content) {
    std::string tmp = path_ + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out << content;
    }
    ASSERT_EQ(std::rename(tmp.c_str(), path_.c_str()), 0);
  }
  void rewrite_in_place(std::string_view content) {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out << content;
  }

  std::unique_ptr<passdb> open() {
    auto db = open_passwd_file(path_);
    EXPECT_TRUE(db.ok()) << db.err().message();
    return db.ok() ? std::move(db).value() : nullptr;
  }

  std::string dir_;
  std::string path_;
};

TEST_F(PasswdFileTest, OpenErrors) {
  auto missing = open_passwd_file(path_);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.err().code(), errc::invalid);
  EXPECT_EQ(missing.err().cause(), std::errc::no_such_file_or_directory);
  EXPECT_NE(missing.err().message().find(path_), std::string::npos);

  auto dir = open_passwd_file(dir_);
  ASSERT_FALSE(dir.ok());
  EXPECT_NE(dir.err().message().find("not a regular file"), std::string::npos);

  replace("alice:{PLAIN}x\nbob:{NOPE}hunter2\n");
  auto bad = open_passwd_file(path_);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.err().code(), errc::invalid);
  EXPECT_EQ(bad.err().message(), path_ + ":2: unknown password scheme");
}

TEST_F(PasswdFileTest, VerifyOutcomes) {
  replace(
      "alice:{SHA512-CRYPT}$6$saltsalt$"
      "fwlamBrOqmO1d1IGBZuoDbiBLysiZpmO29PF6JYPeFNWtUpYlWGacpfo3kQaQ6Jc9AgBbqPXfLKeJCE"
      "Co1N.m1:1000:1000::/home/alice::userdb_mail=maildir:~/Maildir quota=1G\n"
      "bob:{PLAIN}builder::::::nologin\n"
      "carol:\n"
      "dave:{CRYPT}*\n"
      "erin:{SHA512-CRYPT}\n");
  auto db = open();
  ASSERT_TRUE(db);

  auto ok = db->verify("alice", pw(test_password));
  EXPECT_EQ(ok.status, verify_status::ok) << ok.reason;
  EXPECT_EQ(ok.user.name, "alice");
  EXPECT_EQ(ok.user.uid, 1000u);
  EXPECT_EQ(ok.user.home, "/home/alice");
  EXPECT_EQ(ok.user.mail, "maildir:~/Maildir");
  EXPECT_EQ(ok.user.extra.at("quota"), "1G");
  EXPECT_TRUE(ok.reason.empty()) << ok.reason;

  auto wrong = db->verify("alice", pw("Tr0ub4dor&4"));
  EXPECT_EQ(wrong.status, verify_status::bad_credentials);
  EXPECT_EQ(wrong.reason, "password mismatch");
  EXPECT_TRUE(wrong.user.name.empty());

  auto unknown = db->verify("mallory", pw(test_password));
  EXPECT_EQ(unknown.status, verify_status::bad_credentials);
  EXPECT_EQ(unknown.reason, "unknown user");

  EXPECT_EQ(db->verify("Alice", pw(test_password)).reason, "unknown user");
  EXPECT_EQ(db->verify("", pw(test_password)).reason, "unknown user");

  auto nologin = db->verify("bob", pw("builder"));
  EXPECT_EQ(nologin.status, verify_status::bad_credentials);
  EXPECT_EQ(nologin.reason, "login disabled (nologin)");
  EXPECT_EQ(db->verify("bob", pw("wrong")).reason, "password mismatch");

  auto nopass = db->verify("carol", pw("anything"));
  EXPECT_EQ(nopass.status, verify_status::bad_credentials);
  EXPECT_EQ(nopass.reason, "no password set for user");
  EXPECT_EQ(db->verify("erin", pw("anything")).reason, "no password set for user");

  auto locked = db->verify("dave", pw("anything"));
  EXPECT_EQ(locked.status, verify_status::bad_credentials);
  EXPECT_NE(locked.reason.find("stored password unusable (line 4)"), std::string::npos)
      << locked.reason;

  EXPECT_EQ(db->verify("alice", pw("")).status, verify_status::bad_credentials);
}

TEST_F(PasswdFileTest, ReloadsWhenTheFileChanges) {
  replace("alice:{PLAIN}one\n");
  auto db = open();
  ASSERT_TRUE(db);
  EXPECT_EQ(db->verify("alice", pw("one")).status, verify_status::ok);
  EXPECT_EQ(db->verify("bob", pw("two")).reason, "unknown user");

  replace("alice:{PLAIN}two\nbob:{PLAIN}two\n");
  EXPECT_EQ(db->verify("alice", pw("one")).reason, "password mismatch");
  EXPECT_EQ(db->verify("alice", pw("two")).status, verify_status::ok);
  EXPECT_EQ(db->verify("bob", pw("two")).status, verify_status::ok);

  // In place, different size: noticed too.
  rewrite_in_place("alice:{PLAIN}three\n");
  EXPECT_EQ(db->verify("alice", pw("three")).status, verify_status::ok);
  EXPECT_EQ(db->verify("bob", pw("two")).reason, "unknown user");
}

TEST_F(PasswdFileTest, FailedReloadKeepsThePreviousContents) {
  replace("alice:{PLAIN}one\n");
  auto db = open();
  ASSERT_TRUE(db);

  replace("alice:{PLAIN}two\nbob:{NOPE}hunter2\n");
  for (int i = 0; i < 2; ++i) {  // reported on every call until the file changes
    auto r = db->verify("alice", pw("one"));
    EXPECT_EQ(r.status, verify_status::ok);
    EXPECT_NE(r.reason.find("not re-read"), std::string::npos) << r.reason;
    EXPECT_NE(r.reason.find(path_ + ":2: unknown password scheme"), std::string::npos) << r.reason;
    EXPECT_EQ(r.reason.find("hunter2"), std::string::npos);
  }
  auto wrong = db->verify("alice", pw("two"));
  EXPECT_EQ(wrong.status, verify_status::bad_credentials);
  EXPECT_TRUE(wrong.reason.starts_with("password mismatch; ")) << wrong.reason;

  replace("alice:{PLAIN}two\n");
  auto fixed = db->verify("alice", pw("two"));
  EXPECT_EQ(fixed.status, verify_status::ok);
  EXPECT_TRUE(fixed.reason.empty()) << fixed.reason;

  // The file disappears: keep serving what we have, say why.
  ASSERT_EQ(std::remove(path_.c_str()), 0);
  auto gone = db->verify("alice", pw("two"));
  EXPECT_EQ(gone.status, verify_status::ok);
  EXPECT_NE(gone.reason.find("stat"), std::string::npos) << gone.reason;
}

TEST_F(PasswdFileTest, ConcurrentVerifyWhileTheFileIsReplaced) {
  // alice's password is the same in both versions; bob exists in one only.
  const std::string v1 =
      "alice:{SSHA256}/Ks/oleZgBwZMugymjfvQE2GH0nkgeVr7W2x/4IA2OkBAgME/v8=\n"
      "carol:{PLAIN}c\n";
  const std::string v2 =
      "# version 2\n"
      "alice:{PLAIN}Tr0ub4dor&3\n"
      "bob:{PLAIN}b\n"
      "carol:{SHA512-CRYPT}$6$saltsalt$AIjOos9jSDZF99s70dgaJb8/"
      "9d1WKteisi1Xp4.om3uOsa8aOZ9mlm.H3ax1OBhlY1GSl4cP15KrROwiM"
      "IzNr1\n";
  replace(v1);
  auto db = open();
  ASSERT_TRUE(db);

  // Workers verify until the writer is done; the writer flips the file between versions and
  // each time waits until some worker has seen the new version, so reloads race with verifies.
  std::atomic<bool> writer_done{false};
  std::atomic<int> failures{0};
  std::atomic<int> bob_ok{0};
  std::atomic<int> bob_unknown{0};
  std::vector<std::thread> workers;
  workers.reserve(4);
  for (int t = 0; t < 4; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; i < 50 || !writer_done; ++i) {
        if (db->verify("alice", pw(test_password)).status != verify_status::ok) {
          ++failures;
        }
        if (db->verify("alice", pw("nope")).status != verify_status::bad_credentials) {
          ++failures;
        }
        if (t == 0 && db->verify("mallory", pw("b")).status != verify_status::bad_credentials) {
          ++failures;
        }
        auto bob = db->verify("bob", pw("b"));
        if (bob.status == verify_status::ok) {
          ++bob_ok;
        } else if (bob.reason == "unknown user") {
          ++bob_unknown;
        } else {
          ++failures;
        }
      }
    });
  }
  auto wait_for = [](std::atomic<int>& counter, int above) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (counter.load() <= above && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::yield();
    }
    return counter.load() > above;
  };
  bool seen_all = true;
  for (int round = 0; round < 20 && seen_all; ++round) {
    int ok_before = bob_ok.load();
    replace(v2);
    seen_all = wait_for(bob_ok, ok_before);
    int unknown_before = bob_unknown.load();
    replace(v1);
    seen_all = seen_all && wait_for(bob_unknown, unknown_before);
  }
  writer_done = true;
  for (auto& w : workers) {
    w.join();
  }
  EXPECT_TRUE(seen_all) << "a new version of the file was never picked up";
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace postern::auth

namespace postern::auth {
namespace {

class PasswdFileTrustTest : public PasswdFileTest {};

TEST_F(PasswdFileTrustTest, WritableByGroupOrOthersIsRefused) {
  replace("alice:{PLAIN}one\n");
  for (mode_t mode : {0620, 0602, 0666}) {
    ASSERT_EQ(::chmod(path_.c_str(), mode), 0);
    auto db = open_passwd_file(path_);
    ASSERT_FALSE(db.ok()) << std::oct << mode;
    EXPECT_EQ(db.err().code(), errc::invalid);
    const std::string& m = db.err().message();
    EXPECT_NE(m.find(path_), std::string::npos) << m;
    EXPECT_NE(m.find("mode 0" + std::to_string(mode / 64) + std::to_string(mode / 8 % 8) +
                     std::to_string(mode % 8)),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("chmod go-w"), std::string::npos) << m;
  }
  ASSERT_EQ(::chmod(path_.c_str(), 0640), 0);
  EXPECT_TRUE(open_passwd_file(path_).ok());
}

TEST_F(PasswdFileTrustTest, ForeignOwnerIsRefused) {
  replace("alice:{PLAIN}one\n");
  uid_t trusted = ::geteuid() + 1;
  if (::geteuid() == 0) {
    ASSERT_EQ(::chown(path_.c_str(), 65534, static_cast<gid_t>(-1)), 0);
    trusted = 4242;
  }
  auto db = open_passwd_file(path_, trusted);
  ASSERT_FALSE(db.ok());
  EXPECT_NE(db.err().message().find("refused: owned by"), std::string::npos) << db.err().message();
  EXPECT_NE(db.err().message().find("chown"), std::string::npos) << db.err().message();
  EXPECT_FALSE(check_passwd_file_path(path_, trusted).ok());
  if (::geteuid() == 0) {
    EXPECT_TRUE(open_passwd_file(path_, 65534).ok());
  }
}

TEST_F(PasswdFileTrustTest, SymlinkIsJudgedByItsTarget) {
  std::string target = dir_ + "/real";
  {
    std::ofstream out(target);
    out << "alice:{PLAIN}one\n";
  }
  ASSERT_EQ(::chmod(target.c_str(), 0600), 0);
  ASSERT_EQ(::symlink(target.c_str(), path_.c_str()), 0);
  EXPECT_TRUE(open_passwd_file(path_).ok());
  ASSERT_EQ(::chmod(target.c_str(), 0666), 0);
  EXPECT_FALSE(open_passwd_file(path_).ok());
  EXPECT_FALSE(check_passwd_file_path(path_, ::geteuid()).ok());
}

TEST_F(PasswdFileTrustTest, ReloadOfAnUntrustedFileKeepsThePreviousContents) {
  replace("alice:{PLAIN}one\n");
  auto db = open();
  ASSERT_TRUE(db);
  replace("alice:{PLAIN}one\nmallory:{PLAIN}x::::::userdb_mail=maildir:/home/alice/Maildir\n");
  ASSERT_EQ(::chmod(path_.c_str(), 0666), 0);
  auto r = db->verify("mallory", pw("x"));
  EXPECT_EQ(r.status, verify_status::bad_credentials);
  EXPECT_NE(r.reason.find("not re-read"), std::string::npos) << r.reason;
  EXPECT_NE(r.reason.find("refused: mode 0666"), std::string::npos) << r.reason;
  EXPECT_EQ(db->verify("alice", pw("one")).status, verify_status::ok);
  ASSERT_EQ(::chmod(path_.c_str(), 0600), 0);
  EXPECT_EQ(db->verify("mallory", pw("x")).status, verify_status::ok);
}

TEST_F(PasswdFileTrustTest, SharedDirectoryIsWarnedAbout) {
  replace("alice:{PLAIN}one\n");
  EXPECT_EQ(passwd_file_directory_warning(path_, ::geteuid()), "");
  ASSERT_EQ(::chmod(dir_.c_str(), 0777), 0);
  std::string w = passwd_file_directory_warning(path_, ::geteuid());
  EXPECT_NE(w.find(dir_), std::string::npos) << w;
  EXPECT_NE(w.find("mode 0777"), std::string::npos) << w;
  ASSERT_EQ(::chmod(dir_.c_str(), 01777), 0);  // sticky: others cannot replace the file
  EXPECT_EQ(passwd_file_directory_warning(path_, ::geteuid()), "");
  EXPECT_TRUE(open_passwd_file(path_).ok());  // a warning, not a refusal
  ASSERT_EQ(::chmod(dir_.c_str(), 0700), 0);
}

}  // namespace
}  // namespace postern::auth
