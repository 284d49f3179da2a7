// Mail locations written like Dovecot's mail_location: "maildir:~/Maildir",
// "maildir:/srv/mail/%d/%n/Maildir". Expansion is pure string work, no file access.
#pragma once

#include "common/result.hpp"

#include <string>
#include <string_view>

namespace postern::store {

enum class store_kind { maildir, mbox };

struct location_template {
  store_kind kind = store_kind::maildir;
  std::string path;  // unexpanded, with %-variables and ~
};

// Parses "maildir:PATH" or "mbox:PATH". Errors: errc::invalid with a reason.
result<location_template> parse_location(std::string_view spec);

// True if `user` is safe to substitute into a path: non-empty, at most 255 bytes, no '/',
// NUL or control bytes (< 0x20, 0x7F), not "." or "..", no ".." component in either the
// local part or the domain.
bool is_safe_user_name(std::string_view user);

struct expand_input {
  std::string_view user;  // the full login name, already checked with is_safe_user_name
  std::string_view home;  // from the user database; may be empty
};

// Expands %u (user), %n (local part: before '@'), %d (domain: after '@', empty if none),
// %h (home), %% (a literal %) and a leading "~/" (home). Errors (errc::invalid): an unknown
// %-variable, "~" without a home, a result that is not absolute, or an expanded value that
// contains "..", a NUL or a control byte.
result<std::string> expand_location(const location_template& loc, const expand_input& in);

}  // namespace postern::store
