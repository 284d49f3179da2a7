// passwd-file: a password database in Dovecot's passwd-file format, so an existing Dovecot
// users file works unchanged.
//
//   user:password:uid:gid:gecos:home:shell:extra_fields
//
// Everything after the password is optional. The password is a stored secret as schemes.hpp
// reads it ("{SCHEME}data", bare data = CRYPT); an empty password field means the user has no
// password and cannot log in. uid and gid are numbers or names (resolved through NSS with
// getpwnam_r/getgrnam_r when the file is read); 0 (root) is refused, as Dovecot does. gecos and
// shell are ignored. extra_fields is the rest of the line (it may hold ':'), space-separated
// `key=value` or bare `key`:
//   userdb_mail=... or mail=...   sets user_record::mail
//   userdb_home, userdb_uid, userdb_gid   override home, uid, gid
//   nologin, nopassword, allow_nets, allow_real_nets, proxy, proxy_maybe
//       refuse the login even with the right password (see passwd_entry::refusal)
//   anything else                  kept verbatim in user_record::extra
// The old form "...:shell::mail_location" (empty field 8) sets the mail location, as in
// Dovecot. libpam-pwdfile's "hash[13]" / "hash[34]" password suffixes are read as CRYPT /
// PLAIN-MD5, as Dovecot does. Blank lines and lines starting with '#' (after optional blanks)
// are ignored; a trailing CR is dropped. User names are matched exactly (case-sensitive) and
// may contain '@'.
//
// Stricter than Dovecot, which logs and skips such lines: a line without ':', an empty or
// blank-holding user name, a user listed twice, an invalid uid/gid, a malformed extra field,
// an unknown scheme or an undecodable secret makes the whole file fail to load, with
// "path:line: reason" (never the secret). A typo should not silently lock a user out or leave
// two passwords in force.
//
// lookup() (for CRAM-MD5, SCRAM, APOP, EXTERNAL and GSSAPI) answers from the same contents
// and applies the same refusals as verify(): an unknown user, an empty password field and the
// refusing extra fields (nologin, ...) all give bad_credentials, so an account with an empty
// password field cannot log in at all, by any mechanism. An account that should log in only
// with a client certificate or Kerberos holds a locked secret such as "{CRYPT}*": lookup()
// succeeds and returns it, and no password mechanism can ever match it.
//
// Threading and ownership: open_passwd_file() returns a passdb whose verify() may be called
// (and lookup()) from any number of threads at once; the caller owns it. Each call stats the file;
// when its identity (device, inode, size, mtime, ctime) changed, one caller re-reads it while
// the others go on with the previous contents (nobody waits for a reload). The contents are an
// immutable snapshot shared by pointer, so the slow password hashing runs without a lock held.
// A failed re-read keeps the previous contents and is reported in verify_result::reason until
// the file changes again. Replace the file atomically (write a copy, rename it over): a reader
// racing an in-place rewrite may see a half-written file, which fails to parse or lacks its
// tail until the writer's next change is noticed.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "auth/passdb.hpp"
#include "auth/schemes.hpp"
#include "common/result.hpp"

namespace postern::auth {

// Opens and reads the passwd-file at `path` (a relative path is resolved against the working
// directory each time the file is read). Errors (all errc::invalid): the file cannot be opened
// or read ("path: ..." with the errno cause), is not a regular file or is larger than 64 MiB,
// or a line is malformed ("path:line: reason"). The caller reports the error and stops.
//
// Trust: the file grants logins and names the mail each login opens, so only root and
// `trusted_owner` (the uid the server runs as) may be able to change it. The file actually
// opened (fstat of the descriptor, so a symlink is judged by its target) must be owned by root
// or `trusted_owner` and must not be writable by group or others; otherwise the load fails
// with a message naming the file, its owner and mode and what to change. This holds at open
// and at every re-read: a re-read that finds the file untrusted keeps the previous contents and
// logs an error (once per file version). A containing directory that others could use to
// replace the file (writable by group or others without the sticky bit, or owned by a user
// other than root or `trusted_owner`) is logged as a warning.
result<std::unique_ptr<passdb>> open_passwd_file(std::string path, uid_t trusted_owner);
// The same, trusting the effective uid of the caller.
result<std::unique_ptr<passdb>> open_passwd_file(std::string path);

// The owner and mode check above, for `st` (an fstat of the opened file). errc::invalid.
result<void> check_passwd_file_trust(const std::string& path, const struct stat& st,
                                     uid_t trusted_owner);
// Why the directory holding `path` lets others replace the file, or "" when it does not.
std::string passwd_file_directory_warning(const std::string& path, uid_t trusted_owner);
// For posternd --check-config: stat(2)s `path` (following symlinks, as open does) and applies
// check_passwd_file_trust. A file that does not exist or that the caller may not stat passes
// (reading it at start reports that); other stat errors and a non-regular file are errors.
result<void> check_passwd_file_path(const std::string& path, uid_t trusted_owner);

// One user line, parsed.
struct passwd_entry {
  user_record user;
  std::optional<stored_password> password;  // nullopt: empty password field, login impossible
  // The password field as written (libpam-pwdfile's "hash[NN]" already rewritten to
  // "{SCHEME}hash"), for passdb::lookup(). Set exactly when `password` is.
  std::optional<secret_string> stored;
  // Non-empty when an extra field forbids this login even with the right password (static
  // storage). Refused rather than honoured:
  //   nologin      Dovecot refuses the login (and maybe redirects with reason=/proxy): same.
  //   nopassword   Dovecot accepts any password. Refused: a POP3 server has no use for
  //                password-less accounts and we cannot be certain a file that says so meant it.
  //   allow_nets, allow_real_nets   need the client address, which passdb::verify() is not
  //                given: fail closed until it is.
  //   proxy, proxy_maybe   the user's mail is served by another host.
  std::string_view refusal;
  std::size_t line = 0;  // where the user is defined, for log messages
};

// The parsed contents of a passwd-file: entries by exact user name. Immutable once built;
// safe to read from several threads at once. Move-only.
class passwd_table {
 public:
  passwd_table() = default;
  passwd_table(passwd_table&&) noexcept = default;
  passwd_table& operator=(passwd_table&&) noexcept = default;
  passwd_table(const passwd_table&) = delete;
  passwd_table& operator=(const passwd_table&) = delete;

  // The entry for `user`, or nullptr. Valid while this table lives.
  const passwd_entry* find(std::string_view user) const;
  std::size_t size() const noexcept { return entries_.size(); }
  // Calls f(const passwd_entry&) for every entry, in no particular order.
  template <class F>
  void for_each(F&& f) const {
    for (const auto& kv : entries_) {
      f(kv.second);
    }
  }

  // The secret an unknown user's password is checked against, so that an unknown user costs
  // about as much as a wrong password: the first entry with a deliberately slow scheme (crypt
  // family, PBKDF2, SCRAM), else the first entry with any password (a file of fast digests
  // must not make unknown users slower than known ones), else a fixed SHA512-CRYPT hash.
  // Locked crypt strings ("*", "!...") are skipped: crypt(3) rejects them at once.
  // Valid while this table lives.
  const stored_password& dummy() const noexcept;

 private:
  friend result<passwd_table> parse_passwd_file(std::string_view content, std::string_view source);

  struct name_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };
  std::unordered_map<std::string, passwd_entry, name_hash, std::equal_to<>> entries_;
  const stored_password* dummy_ = nullptr;  // points into entries_ (node-based: stable) or static
};

// Parses passwd-file contents. `source` names them in error messages ("source:line: reason").
// Pure apart from resolving non-numeric uid/gid through NSS. Errors: errc::invalid.
result<passwd_table> parse_passwd_file(std::string_view content, std::string_view source);

}  // namespace postern::auth
