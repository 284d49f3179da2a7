// An in-memory user database for the fuzz targets that log in (sasl, sasl_scram,
// pop3_session): one user per kind of stored secret and per kind of refusal, with the
// passwords known here so that a target can tell whether an input knew a user's password.
#pragma once

#include "auth/passdb.hpp"
#include "auth/schemes.hpp"

#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace postern::fuzz {

struct fuzz_user {
  std::string name;
  std::string password;  // the plaintext behind `stored` ("" when there is none)
  std::string stored;    // "{SCHEME}data" as lookup() hands it out; "" = no stored secret
  enum class kind { normal, refused, backend_down } what = kind::normal;
};

// The users. Their stored forms are made once per process (random salts).
inline const std::vector<fuzz_user>& fuzz_users() {
  static const std::vector<fuzz_user> users = [] {
    auto hashed = [](std::string_view scheme, std::string_view pw) {
      auto h = auth::hash_password(scheme, secret_string(pw));
      if (!h.ok()) {
        std::abort();
      }
      return *h;
    };
    using k = fuzz_user::kind;
    return std::vector<fuzz_user>{
        {"alice", "alice-Pa55", "{PLAIN}alice-Pa55", k::normal},
        {"bob", "bob-Pa55", hashed("CRAM-MD5", "bob-Pa55"), k::normal},
        {"carol", "carol-Pa55", hashed("SCRAM-SHA-256", "carol-Pa55"), k::normal},
        {"dave", "dave-Pa55", hashed("SCRAM-SHA-1", "dave-Pa55"), k::normal},
        {"erin", "erin-Pa55", hashed("SSHA256", "erin-Pa55"), k::normal},
        {"frank", "frank-Pa55", "{PLAIN}frank-Pa55", k::refused},  // nologin
        {"tim", "tim-Pa55", "{PLAIN}tim-Pa55", k::backend_down},   // temporary
        {"locked", "", "{CRYPT}*", k::normal},                     // never matches
        {"nosecret", "", "", k::normal},                           // lookup: no secret
        // Malformed stored secrets: what a refusal says must not show them.
        {"badscram", "", "{SCRAM-SHA-256}4096,c2VjcmV0LXNhbHQ=,not-a-key-XYZZY", k::normal},
        {"badcram", "", "{CRAM-MD5}secret-not-hex-PLUGH", k::normal},
    };
  }();
  return users;
}

inline const fuzz_user* find_fuzz_user(std::string_view name) {
  for (const auto& u : fuzz_users()) {
    if (u.name == name) {
      return &u;
    }
  }
  return nullptr;
}

// True when `u` logs in with `password` (what verify() must answer).
inline bool fuzz_password_ok(const fuzz_user& u, std::string_view password) {
  return u.what == fuzz_user::kind::normal && !u.password.empty() && password == u.password;
}

// Every secret the database holds: no log line or answer may show one the input did not.
inline std::vector<std::string_view> fuzz_secrets() {
  std::vector<std::string_view> out;
  for (const auto& u : fuzz_users()) {
    if (!u.password.empty()) {
      out.push_back(u.password);
    }
    if (u.stored.size() > 8) {
      out.push_back(u.stored);
      // The data after "{SCHEME}" on its own.
      if (auto close = u.stored.find('}'); close != std::string::npos) {
        out.push_back(std::string_view(u.stored).substr(close + 1));
      }
    }
  }
  return out;
}

class fuzz_passdb final : public auth::passdb {
 public:
  auth::verify_result verify(std::string_view user, const secret_string& password) override {
    auth::verify_result r;
    const fuzz_user* u = find_fuzz_user(user);
    if (u != nullptr && u->what == fuzz_user::kind::backend_down) {
      r.status = auth::verify_status::temporary;
      r.reason = "backend down";
      return r;
    }
    if (u == nullptr || u->what == fuzz_user::kind::refused || u->stored.empty()) {
      r.reason = u == nullptr ? "unknown user" : "refused";
      return r;
    }
    auto ok = auth::verify_password(u->stored, password);
    if (!ok.ok() || !*ok) {
      r.reason = ok.ok() ? "wrong password" : "stored secret unusable: " + ok.err().message();
      return r;
    }
    r.status = auth::verify_status::ok;
    r.user.name = u->name;
    r.user.home = "/nonexistent/" + u->name;
    return r;
  }

  auth::lookup_result lookup(std::string_view user) override {
    auth::lookup_result r;
    const fuzz_user* u = find_fuzz_user(user);
    if (u != nullptr && u->what == fuzz_user::kind::backend_down) {
      r.status = auth::verify_status::temporary;
      r.reason = "backend down";
      return r;
    }
    if (u == nullptr || u->what == fuzz_user::kind::refused) {
      r.reason = u == nullptr ? "unknown user" : "refused";
      return r;
    }
    r.status = auth::verify_status::ok;
    r.user.name = u->name;
    if (!u->stored.empty()) {
      r.stored.emplace(u->stored);
    }
    return r;
  }
};

}  // namespace postern::fuzz
