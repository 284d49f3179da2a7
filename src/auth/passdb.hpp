// The password database interface: "who is this, and where is their mail".
//
// verify() may block (hashing, file reads, network backends): callers run it off the I/O
// threads. Implementations are thread-safe: several sessions call verify() at once.
#pragma once

#include "common/result.hpp"
#include "common/secret_string.hpp"

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace postern::auth {

struct user_record {
  std::string name;           // canonical login name
  std::optional<uid_t> uid;   // from the database, if it says
  std::optional<gid_t> gid;
  std::string home;           // may be empty
  std::string mail;           // per-user mail location override (userdb_mail=...), or empty
  std::map<std::string, std::string> extra;  // other extra fields, verbatim
};

enum class verify_status {
  ok,
  bad_credentials,  // unknown user or wrong password: callers must not tell them apart
  temporary,        // backend failure: answer [SYS/TEMP]
};

struct verify_result {
  verify_status status = verify_status::bad_credentials;
  user_record user;       // filled when status == ok
  std::string reason;     // for the log only (never contains the password)
};

class passdb {
 public:
  virtual ~passdb() = default;
  // Checks `password` for `user`. Takes the same time for an unknown user as for a wrong
  // password as far as the scheme allows (a dummy hash is computed).
  virtual verify_result verify(std::string_view user, const secret_string& password) = 0;
};

}  // namespace postern::auth
