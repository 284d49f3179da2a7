#include "auth/passdb_spec.hpp"

#include <algorithm>

namespace postern::auth {

std::variant<passdb_spec, passdb_spec_fault> parse_passdb_spec(std::string_view spec) {
  if (spec == "pam") {
    return passdb_spec{passdb_kind::pam, {}};
  }
  if (spec.substr(0, passwd_file_prefix.size()) != passwd_file_prefix) {
    return passdb_spec_fault::unknown_kind;
  }
  const std::string_view path = spec.substr(passwd_file_prefix.size());
  if (path.empty()) {
    return passdb_spec_fault::missing_path;
  }
  if (path.front() != '/') {
    return passdb_spec_fault::relative_path;
  }
  if (!std::all_of(path.begin(), path.end(),
                   [](char c) { return static_cast<unsigned char>(c) >= 0x20 && c != 0x7F; })) {
    return passdb_spec_fault::control_character;
  }
  return passdb_spec{passdb_kind::passwd_file, std::string(path)};
}

}  // namespace postern::auth
