// Fuzz target: the server side of SASL PLAIN, LOGIN and CRAM-MD5 (src/auth/sasl.hpp) against
// the in-memory user database of fuzz_users.hpp, driven by client responses from the input.
// Input: one option byte, then the client's responses separated by '\n'.
//   option bits 0-1: mechanism (PLAIN, LOGIN, CRAM-MD5; 3 = the mechanism name in lower case,
//                    PLAIN); bit 2: each response is sent as it is (the target's base64 decoder
//                    sees it) instead of base64-encoded by the target; bit 3: CRAM-MD5 uses the
//                    fixed challenge below instead of a fresh one; bit 4: the connection does
//                    not allow plaintext mechanisms (PLAIN and LOGIN must not start).
// Properties: every step answers a challenge, a success or a failure with a reason; after the
// end every further step fails; no more than max_sasl_steps responses are taken; a success
// names a user who may log in, and the client sent that user's password (PLAIN, LOGIN) or,
// for CRAM-MD5, the HMAC of the fixed challenge keyed with it (never with a fresh challenge);
// no reason, logged user name or server answer shows a secret of the database that the
// client did not send.
#include "fuzz/fuzz_sasl.hpp"

#include <openssl/hmac.h>

#include <memory>
#include <string>
#include <vector>

using namespace postern;
using namespace postern::fuzz;

namespace {

constexpr std::string_view fixed_challenge = "<1896.697170952@postoffice.example.net>";

const auth::sasl_server& server(bool fixed) {
  static fuzz_passdb db;
  auto make = [](std::string challenge) {
    auth::sasl_settings s;
    s.mechanisms = {"PLAIN", "LOGIN", "CRAM-MD5"};
    s.hostname = "pop.example.org";
    s.salt_key = "fuzz-salt-key";
    s.cram_md5_challenge_for_test = std::move(challenge);
    auto srv = auth::sasl_server::create(db, std::move(s));
    FUZZ_CHECK(srv.ok());
    return std::move(srv).value();
  };
  static const auto random_challenge = make("");
  static const auto fixed_one = make(std::string(fixed_challenge));
  return fixed ? *fixed_one : *random_challenge;
}

std::string cram_md5_hex(std::string_view password) {
  unsigned char out[16];
  unsigned int len = 0;
  HMAC(EVP_md5(), password.data(), static_cast<int>(password.size()),
       reinterpret_cast<const unsigned char*>(fixed_challenge.data()), fixed_challenge.size(), out,
       &len);
  return hex_encode({reinterpret_cast<const char*>(out), len});
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') {
      c = static_cast<char>(c - 'A' + 'a');
    }
  }
  return out;
}

// The user logged in must be one whose password the client sent.
void check_success(std::string_view mech, bool fixed, const auth::sasl_step& r,
                   std::string_view decoded) {
  const fuzz_user* u = find_fuzz_user(r.user.name);
  FUZZ_CHECK(u != nullptr);
  if (mech == "CRAM-MD5") {
    FUZZ_CHECK(fixed);
    FUZZ_CHECK(lower(decoded).find(r.user.name + " " + cram_md5_hex(u->password)) !=
               std::string::npos);
  } else {
    FUZZ_CHECK(decoded.find(u->password) != std::string_view::npos);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  cursor c(data, size);
  const std::uint8_t opt = c.byte();
  static constexpr std::string_view mechs[] = {"PLAIN", "LOGIN", "CRAM-MD5", "plain"};
  const std::string_view mech = mechs[opt & 3];
  const bool raw = (opt & 4) != 0;
  const bool fixed = (opt & 8) != 0;
  auth::sasl_channel ch;
  ch.plaintext_allowed = (opt & 16) == 0;

  auto started = server(fixed).start(mech, ch);
  if (!started.ok()) {
    FUZZ_CHECK(!ch.plaintext_allowed && mech != "CRAM-MD5");
    return 0;
  }
  FUZZ_CHECK(ch.plaintext_allowed || mech == "CRAM-MD5");
  auto x = std::move(started).value();

  // Everything the client sent, as sent and decoded, for the secret checks.
  std::string said(c.rest());
  std::string decoded;
  std::string_view rest = c.rest();
  std::size_t steps = 0;
  bool finished = false;
  while (true) {
    const auto nl = rest.find('\n');
    const std::string_view line = rest.substr(0, nl);
    const std::string wire = raw ? std::string(line) : b64(line);
    if (auto d = unb64(wire, true)) {
      decoded += *d;
      decoded += '\n';
    }
    said += '\n';
    said += wire;
    const auth::sasl_step r = x->step(wire);
    ++steps;
    std::string context = said;
    context += '\n';
    context += decoded;
    check_step(r, *x, context);
    if (finished) {
      FUZZ_CHECK(r.status == auth::sasl_status::failure);
    } else if (r.status == auth::sasl_status::success) {
      check_success(mech == "plain" ? "PLAIN" : mech, fixed, r, decoded);
      finished = true;
    } else if (r.status != auth::sasl_status::challenge) {
      finished = true;
    }
    FUZZ_CHECK(finished || steps <= auth::max_sasl_steps);
    if (nl == std::string_view::npos) {
      break;
    }
    rest.remove_prefix(nl + 1);
  }
  return 0;
}
