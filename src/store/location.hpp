// Mail locations written like Dovecot's mail_location: "maildir:~/Maildir",
// "maildir:/srv/mail/%d/%n/Maildir". Expansion is pure string work, no file access.
//
// The expanded path is the one place where a peer-supplied string (the login name) meets the
// file system, so expand_location trusts nothing: it re-checks the user name and refuses any
// result with a "." or ".." component, NUL or control byte, or that is not absolute.
//
// Threading: pure functions on values; safe from any thread. Nothing is retained.
#pragma once

#include "common/result.hpp"

#include <string>
#include <string_view>

namespace postern::store {

enum class store_kind { maildir, mbox };

struct location_template {
  store_kind kind = store_kind::maildir;
  std::string path;  // unexpanded, with %-variables and ~ ("::" escapes already undone)
  // Whether the store keeps its index file beside the maildrop (Maildir: postern-pop3.index,
  // mbox: .<name>.postern-index). Dovecot's INDEX=MEMORY turns it off: every login then lists
  // (and, without sizes in the names, reads) the whole maildrop, and nothing is written.
  bool keep_index = true;
};

// Parses "maildir:PATH" or "mbox:PATH". Like Dovecot, "::" in PATH stands for a literal ':'
// and a ':' starts a parameter list "KEY=VALUE:KEY=VALUE". Only parameters that move
// Dovecot's own index and control files, never the messages, are accepted and ignored:
// INDEX, INDEXPVT, CONTROL, VOLATILEDIR and LAYOUT=maildir++|fs; INDEX=MEMORY also means
// "keep no index file" for Postern (keep_index = false), as it does for Dovecot. Any other parameter
// (notably INBOX=, which would move the maildrop itself) is refused, so a config copied from
// Dovecot never silently reads the wrong place. PATH is checked here as far as it can be
// without a user: it starts with '/', '~' or %h, holds no NUL or control byte, only known
// %-variables, "~" only as a leading "~" or "~/", and no "." or ".." component. Errors:
// errc::invalid with a reason; the caller reports it as a configuration error.
result<location_template> parse_location(std::string_view spec);

// True if `user` is safe to substitute into a path: non-empty, at most 255 bytes, no '/',
// NUL or control bytes (< 0x20, 0x7F), not "." or "..". The local part (before the first
// '@') must be non-empty and neither "." nor ".."; when there is an '@', the domain (after
// it) must be non-empty and neither "." nor "..". Since '/' is refused, no part can hold a
// ".." path component.
bool is_safe_user_name(std::string_view user);

struct expand_input {
  std::string_view user;  // the full login name, already checked with is_safe_user_name
  std::string_view home;  // from the user database; may be empty
};

// Expands %u (user), %n (local part: before the first '@'), %d (domain: after the first
// '@', empty if none), %h (home), %% (a literal %) and a leading "~" or "~/" (home).
// Errors (errc::invalid): a user name that fails is_safe_user_name (checked again here), an
// unknown %-variable, "~" or %h without a home, a result that is not absolute, or a result
// that contains a "." or ".." path component, a NUL or a control byte. The caller refuses
// the login with a temporary error and logs the reason.
result<std::string> expand_location(const location_template& loc, const expand_input& in);

// The location's root: the directory that expand_location's result lies below and that no
// user controls: the part of the template before the first user-dependent component (%u,
// %n, %d), expanded; "~" and %h (the home directory, from the user database) count as the
// administrator's. "maildir:~/Maildir" -> the home directory; "maildir:/srv/mail/%d/%n/
// Maildir" -> "/srv/mail"; a template without a user variable -> the parent directory of
// the path. The store opens the root as given and every component below it without
// following symlinks. Errors: as expand_location.
result<std::string> location_root(const location_template& loc, const expand_input& in);

}  // namespace postern::store
