// System users: account data from the system's user database (getpwnam_r / NSS), for PAM
// logins and for fork mode's switch to the mail owner.
//
// Nothing here reads a password or a shadow entry: lookups return the uid, gid, home and
// name only. Users that must never log in over POP3 are refused here, the way popa3d does:
// uid 0 (root) and names that NSS treats specially ("+", "-" compat entries).
//
// Threading: every function is reentrant (the _r variants of the NSS calls) and may be called
// from any number of threads at once. They may block on NSS (files, LDAP, SSSD): call them off
// the I/O threads.
#pragma once

#include "auth/passdb.hpp"
#include "common/result.hpp"

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace postern::auth {

struct system_account {
  std::string name;  // as the database spells it
  uid_t uid = 0;
  gid_t gid = 0;  // primary group
  std::string home;
};

// True if `name` may be looked up as a system user: 1..255 bytes, no control bytes, blanks,
// ':', '/', and not starting with '-' or '+' (NIS compat markers). Client text goes through
// this before it reaches NSS or PAM.
bool is_plausible_system_user(std::string_view name);

// Looks `name` up with getpwnam_r. Errors: errc::not_found (no such user, or an implausible
// name), errc::temporary (NSS failed: answer [SYS/TEMP]).
result<system_account> find_system_user(std::string_view name);
result<system_account> find_system_user(uid_t uid);

// A group id by name (getgrnam_r). Errors: errc::not_found, errc::temporary.
result<gid_t> find_group(std::string_view name);

// The groups a process of `user` runs with: `gid` first, then every group listing the user
// (getgrouplist), without repeats. Errors: errc::temporary.
result<std::vector<gid_t>> system_groups(const std::string& user, gid_t gid);

// The user_record for an account: name, uid, gid and home.
user_record to_user_record(const system_account& a);

// A "userdb" for system users: who exists and where their home is, never a secret.
// lookup(): ok with uid/gid/home for an existing user whose uid is not 0; bad_credentials
// for unknown users, implausible names and uid 0 (reason says which, for the log);
// temporary when NSS fails. Thread-safe.
lookup_result lookup_system_user(std::string_view name);

// Which uids may own mail (and so run a session), like Dovecot's first_valid_uid and
// last_valid_uid: [auth] first_valid_uid and last_valid_uid (0 = no upper limit). Never
// allowed whatever the range says: uid 0, uid 65534 (nobody, the kernel's overflow uid,
// shared by unrelated services) and `preauth_uid` (fork mode: server.login_user, which every
// unauthenticated pre-auth process runs as).
struct mail_owner_rules {
  uid_t first_valid_uid = 500;
  uid_t last_valid_uid = 0;
  std::optional<uid_t> preauth_uid;
};

inline constexpr uid_t nobody_uid = 65534;

// Ok when `uid` may own mail under `rules`; else errc::denied with a message that names the
// setting to change (for the log; clients get a fixed text).
result<void> check_mail_owner(uid_t uid, const mail_owner_rules& rules);

}  // namespace postern::auth
