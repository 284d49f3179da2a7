// Helpers shared by the SASL fuzz targets (sasl, sasl_scram): base64 both ways and the checks
// every exchange step must pass.
#pragma once

#include "auth/sasl.hpp"
#include "common/encoding.hpp"
#include "fuzz/fuzz_check.hpp"
#include "fuzz/fuzz_users.hpp"

#include <openssl/evp.h>

#include <optional>
#include <string>
#include <string_view>

namespace postern::fuzz {

inline std::string b64(std::string_view in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(in.data()),
                                static_cast<int>(in.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

// Strict standard base64 (what a client must be able to decode); nullopt when malformed.
// `lenient`: missing padding is supplied first (the server accepts it left out).
inline std::optional<std::string> unb64(std::string_view in, bool lenient = false) {
  std::string padded;
  if (lenient && in.size() % 4 >= 2) {
    padded = std::string(in) + std::string(4 - in.size() % 4, '=');
    in = padded;
  }
  if (in.size() % 4 != 0) {
    return std::nullopt;
  }
  std::string out;
  for (std::size_t i = 0; i < in.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = in[i + static_cast<std::size_t>(k)];
      if (c == '=' && i + 4 == in.size() && k >= 2) {
        v[k] = 0;
        ++pad;
      } else if (pad > 0 || (v[k] = base64_value(c)) < 0) {
        return std::nullopt;
      }
    }
    const unsigned acc = static_cast<unsigned>(v[0] << 18 | v[1] << 12 | v[2] << 6 | v[3]);
    out += static_cast<char>(acc >> 16 & 0xff);
    if (pad < 2) {
      out += static_cast<char>(acc >> 8 & 0xff);
    }
    if (pad < 1) {
      out += static_cast<char>(acc & 0xff);
    }
  }
  return out;
}

// `text` (a reason for the log, a user name for the log, an answer to the client) shows no
// secret of the database that the client did not send itself (`client_said`).
inline void check_no_secret(std::string_view text, std::string_view client_said) {
  for (std::string_view s : fuzz_secrets()) {
    FUZZ_CHECK(text.find(s) == std::string_view::npos ||
               client_said.find(s) != std::string_view::npos);
  }
}

// The checks of one step's result: a well-formed answer, a failure with a reason, no secret
// in the log fields or in the server's data. `client_said` holds everything the client sent
// (raw and decoded).
inline void check_step(const auth::sasl_step& r, const auth::sasl_exchange& x,
                       std::string_view client_said) {
  if (r.status == auth::sasl_status::challenge || r.status == auth::sasl_status::success) {
    const auto data = unb64(r.server_data_b64);
    FUZZ_CHECK(data.has_value());
    check_no_secret(*data, client_said);
  }
  if (r.status == auth::sasl_status::failure || r.status == auth::sasl_status::temporary_failure) {
    FUZZ_CHECK(!r.reason.empty());
  }
  if (r.status == auth::sasl_status::success) {
    FUZZ_CHECK(x.authenticated_user() == r.user.name);
    const fuzz_user* u = find_fuzz_user(r.user.name);
    FUZZ_CHECK(u != nullptr && u->what == fuzz_user::kind::normal && !u->password.empty());
  }
  check_no_secret(r.reason, client_said);
  check_no_secret(x.authenticated_user(), client_said);
}

}  // namespace postern::fuzz
