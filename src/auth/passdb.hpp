// The password database interface: "who is this, and where is their mail".
//
// verify() and lookup() may block (hashing, file reads, network backends): callers run them
// off the I/O threads. Implementations are thread-safe: several sessions call them at once.
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
  std::string name;          // canonical login name
  std::optional<uid_t> uid;  // from the database, if it says
  std::optional<gid_t> gid;
  std::string home;  // may be empty
  std::string mail;  // per-user mail location override (userdb_mail=...), or empty
  std::map<std::string, std::string> extra;  // other extra fields, verbatim
};

enum class verify_status {
  ok,
  bad_credentials,  // unknown user or wrong password: callers must not tell them apart
  temporary,        // backend failure: answer [SYS/TEMP]
};

struct verify_result {
  verify_status status = verify_status::bad_credentials;
  user_record user;    // filled when status == ok
  std::string reason;  // for the log only (never contains the password)
};

// What a database knows about a user, without a password check: for the mechanisms that
// compute with the stored secret themselves (CRAM-MD5, SCRAM-*, APOP) and for those that
// prove the identity by other means (EXTERNAL, GSSAPI).
struct lookup_result {
  verify_status status = verify_status::bad_credentials;
  user_record user;  // filled when status == ok
  // The stored secret exactly as the database holds it ("{SCHEME}data", or bare crypt data),
  // for parse_stored_password(). nullopt when the user has no usable secret (a database that
  // cannot reveal it, such as PAM). A secret that never matches (a locked crypt string "*" or
  // "!...") is returned as it is: it locks out the password mechanisms only.
  std::optional<secret_string> stored;
  std::string reason;  // for the log only (never holds the secret)
};

class passdb {
 public:
  virtual ~passdb() = default;
  // Checks `password` for `user`. Takes the same time for an unknown user as for a wrong
  // password as far as the scheme allows (a dummy hash is computed).
  virtual verify_result verify(std::string_view user, const secret_string& password) = 0;

  // Looks `user` up without checking a password. status ok: the user exists and may log in
  // (every refusal that verify() applies after a correct password, such as nologin, gives
  // bad_credentials here too); bad_credentials: unknown or refused (see reason); temporary:
  // backend failure, answer [SYS/TEMP]. Callers that check a secret from `stored` must make
  // the unknown-user path cost about as much as the known-user one, and must compare in
  // constant time.
  virtual lookup_result lookup(std::string_view user) = 0;

  // SIGHUP: re-reads the database's source now if it changed, instead of at the next lookup.
  // A failure is logged and the previous contents stay. Default: nothing to re-read.
  virtual void reload() {}
};

}  // namespace postern::auth
