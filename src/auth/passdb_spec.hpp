// The [auth] passdb setting: which password database to open. One parser for the config
// check, the daemon's setup and startup recovery, so they cannot disagree on what a spec means.
#pragma once

#include <string>
#include <string_view>
#include <variant>

namespace postern::auth {

enum class passdb_kind {
  pam,          // "pam"
  passwd_file,  // "passwd-file:/absolute/path"
};

struct passdb_spec {
  passdb_kind kind = passdb_kind::pam;
  std::string path;  // passwd_file: the file's absolute path; empty for pam
};

// Why a spec is refused; the config check words the message.
enum class passdb_spec_fault {
  unknown_kind,       // neither "pam" nor "passwd-file:..."
  missing_path,       // "passwd-file:" with nothing after it
  relative_path,      // the server changes directory and may chroot: it would change meaning
  control_character,  // a control character in the path
};

inline constexpr std::string_view passwd_file_prefix = "passwd-file:";

// Parses a passdb spec exactly as written (no trimming, case-sensitive).
std::variant<passdb_spec, passdb_spec_fault> parse_passdb_spec(std::string_view spec);

}  // namespace postern::auth
