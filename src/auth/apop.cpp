#include "auth/apop.hpp"

#include "common/encoding.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "auth/schemes.hpp"

namespace postern::auth {
namespace {

// MD5(a || b) into `out`; false if OpenSSL fails.
bool md5_of(std::string_view a, std::string_view b, std::array<unsigned char, 16>& out) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  unsigned int len = 0;
  return ctx && EVP_DigestInit_ex(ctx.get(), EVP_md5(), nullptr) == 1 &&
         EVP_DigestUpdate(ctx.get(), a.data(), a.size()) == 1 &&
         EVP_DigestUpdate(ctx.get(), b.data(), b.size()) == 1 &&
         EVP_DigestFinal_ex(ctx.get(), out.data(), &len) == 1 && len == out.size();
}

}  // namespace

std::string make_apop_timestamp(std::string_view hostname) {
  return make_apop_timestamp(hostname, std::time(nullptr));
}

std::string make_apop_timestamp(std::string_view hostname, std::time_t now) {
  std::array<unsigned char, 16> rnd{};
  if (RAND_bytes(rnd.data(), static_cast<int>(rnd.size())) != 1) {
    std::abort();  // no secure randomness: nothing sensible to send
  }
  std::string out = "<";
  append_hex(out, rnd);
  out += '.';
  out += std::to_string(static_cast<long>(::getpid()));
  out += '.';
  out += std::to_string(static_cast<long long>(now));
  out += '@';
  std::size_t host_start = out.size();
  for (char c : hostname) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-';
    if (ok) {
      out.push_back(c);
    }
  }
  if (out.size() == host_start) {
    out += "localhost";
  }
  out += '>';
  return out;
}

verify_result verify_apop(passdb& db, std::string_view user, std::string_view timestamp,
                          std::string_view digest_hex) {
  verify_result out;
  out.status = verify_status::bad_credentials;

  std::array<unsigned char, 16> claimed{};
  const bool well_formed = decode_hex_digest(digest_hex, claimed);

  lookup_result found = db.lookup(user);
  if (found.status == verify_status::temporary) {
    out.status = verify_status::temporary;
    out.reason = std::move(found.reason);
    return out;
  }

  // The password to check against; a random stand-in when there is none, so that every path
  // computes one MD5 of about the same input.
  std::optional<stored_password> parsed;
  if (found.status == verify_status::ok && found.stored) {
    auto p = parse_stored_password(found.stored->view());
    if (p) {
      parsed.emplace(std::move(p).value());
    }
  }
  bool usable = parsed && parsed->scheme() == password_scheme::plain && !parsed->data().empty();
  std::array<unsigned char, 16> stand_in{};
  if (!usable && RAND_bytes(stand_in.data(), static_cast<int>(stand_in.size())) != 1) {
    stand_in.fill(0x5a);  // only ever compared against a digest that then must not match
  }
  std::string_view secret =
      usable ? parsed->data()
             : std::string_view(reinterpret_cast<const char*>(stand_in.data()), stand_in.size());

  std::array<unsigned char, 16> expected{};
  if (!md5_of(timestamp, secret, expected)) {
    OPENSSL_cleanse(expected.data(), expected.size());
    out.status = verify_status::temporary;
    out.reason = "MD5 failed";
    return out;
  }
  bool match = CRYPTO_memcmp(expected.data(), claimed.data(), expected.size()) == 0;
  OPENSSL_cleanse(expected.data(), expected.size());
  OPENSSL_cleanse(stand_in.data(), stand_in.size());

  if (found.status != verify_status::ok) {
    out.reason = found.reason.empty() ? std::string("unknown user") : std::move(found.reason);
  } else if (!usable) {
    out.reason = "no plaintext secret for APOP";
  } else if (!well_formed) {
    out.reason = "malformed APOP digest";
  } else if (!match) {
    out.reason = "APOP digest mismatch";
  } else {
    out.status = verify_status::ok;
    out.user = std::move(found.user);
    if (out.user.name.empty()) {
      out.user.name = std::string(user);
    }
  }
  return out;
}

}  // namespace postern::auth
