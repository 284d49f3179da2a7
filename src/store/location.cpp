#include "store/location.hpp"

#include <array>
#include <cstddef>

namespace postern::store {

namespace {

constexpr std::size_t max_user_name = 255;

bool is_control(char c) noexcept {
  const auto u = static_cast<unsigned char>(c);
  return u < 0x20 || u == 0x7F;
}

bool has_control(std::string_view s) noexcept {
  for (char c : s) {
    if (is_control(c)) {
      return true;
    }
  }
  return false;
}

bool is_dot_or_dot_dot(std::string_view s) noexcept { return s == "." || s == ".."; }

// True if some '/'-separated component of `path` is "." or "..".
bool has_dot_component(std::string_view path) noexcept {
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find('/', start);
    if (end == std::string_view::npos) {
      end = path.size();
    }
    if (is_dot_or_dot_dot(path.substr(start, end - start))) {
      return true;
    }
    start = end + 1;
  }
  return false;
}

error invalid(std::string why) { return error(errc::invalid, "mail location: " + std::move(why)); }

// Takes the next ':'-terminated field from `rest`, undoing Dovecot's "::" escape for ':'.
// Returns the field and leaves `rest` after the separator; `more` says whether a separator
// was found (so "a:" yields "a" and then an empty field).
std::string next_field(std::string_view& rest, bool& more) {
  std::string out;
  std::size_t i = 0;
  more = false;
  while (i < rest.size()) {
    if (rest[i] == ':') {
      if (i + 1 < rest.size() && rest[i + 1] == ':') {
        out += ':';
        i += 2;
        continue;
      }
      more = true;
      ++i;
      break;
    }
    out += rest[i];
    ++i;
  }
  rest.remove_prefix(i);
  return out;
}

// Dovecot parameters that only place Dovecot's own index, control or folder files: POP3
// reads the root (INBOX) of the location either way, so they can be ignored safely.
result<void> check_parameter(std::string_view param, location_template& loc) {
  const std::size_t eq = param.find('=');
  if (eq == std::string_view::npos) {
    return invalid("parameter \"" + std::string(param) + "\" is not KEY=VALUE");
  }
  const std::string_view key = param.substr(0, eq);
  const std::string_view value = param.substr(eq + 1);
  if (has_control(value)) {
    return invalid("parameter " + std::string(key) + " holds a control byte");
  }
  constexpr std::array<std::string_view, 4> ignored = {"INDEX", "INDEXPVT", "CONTROL",
                                                       "VOLATILEDIR"};
  for (std::string_view k : ignored) {
    if (key == k) {
      if (key == "INDEX" && value == "MEMORY") {
        loc.keep_index = false;
      }
      return ok_result();
    }
  }
  if (key == "LAYOUT") {
    // LAYOUT=index keeps INBOX under a mailboxes/ directory: refuse rather than read the
    // wrong place.
    if (value == "maildir++" || value == "fs") {
      return ok_result();
    }
    return invalid("LAYOUT=" + std::string(value) + " is not supported (maildir++ or fs)");
  }
  return invalid("parameter " + std::string(key) + "= is not supported");
}

// Checks the %-variables and '~' of an unexpanded path.
result<void> check_template_path(std::string_view path) {
  if (path.empty()) {
    return invalid("empty path");
  }
  if (has_control(path)) {
    return invalid("path holds a NUL or control byte");
  }
  if (path[0] != '/' && path[0] != '~' && !path.starts_with("%h")) {
    return invalid("path must start with '/', '~' or %h");
  }
  if (path[0] == '~' && path.size() > 1 && path[1] != '/') {
    return invalid("only \"~\" or \"~/\" may start a path (no ~user)");
  }
  if (path.find('~', 1) != std::string_view::npos) {
    return invalid("\"~\" may appear only at the start of the path");
  }
  for (std::size_t i = 0; i < path.size(); ++i) {
    if (path[i] != '%') {
      continue;
    }
    if (i + 1 == path.size()) {
      return invalid("path ends in a lone %");
    }
    const char v = path[i + 1];
    if (v != 'u' && v != 'n' && v != 'd' && v != 'h' && v != '%') {
      return invalid(std::string("unknown variable %") + v + " (known: %u %n %d %h %%)");
    }
    ++i;
  }
  if (has_dot_component(path)) {
    return invalid("path holds a \".\" or \"..\" component");
  }
  return ok_result();
}

}  // namespace

result<location_template> parse_location(std::string_view spec) {
  const std::size_t colon = spec.find(':');
  if (colon == std::string_view::npos) {
    return invalid("expected maildir:PATH or mbox:PATH");
  }
  location_template loc;
  const std::string_view kind = spec.substr(0, colon);
  if (kind == "maildir") {
    loc.kind = store_kind::maildir;
  } else if (kind == "mbox") {
    loc.kind = store_kind::mbox;
  } else {
    return invalid("unknown kind \"" + std::string(kind) + "\" (maildir or mbox)");
  }

  std::string_view rest = spec.substr(colon + 1);
  bool more = false;
  loc.path = next_field(rest, more);
  POSTERN_TRY(check_template_path(loc.path));
  while (more) {
    const std::string param = next_field(rest, more);
    POSTERN_TRY(check_parameter(param, loc));
  }
  return loc;
}

bool is_safe_user_name(std::string_view user) {
  if (user.empty() || user.size() > max_user_name) {
    return false;
  }
  for (char c : user) {
    if (c == '/' || is_control(c)) {
      return false;
    }
  }
  if (is_dot_or_dot_dot(user)) {
    return false;
  }
  const std::size_t at = user.find('@');
  const std::string_view local = user.substr(0, at);
  if (local.empty() || is_dot_or_dot_dot(local)) {
    return false;
  }
  if (at != std::string_view::npos) {
    const std::string_view domain = user.substr(at + 1);
    if (domain.empty() || is_dot_or_dot_dot(domain)) {
      return false;
    }
  }
  return true;
}

result<std::string> expand_location(const location_template& loc, const expand_input& in) {
  if (!is_safe_user_name(in.user)) {
    return invalid("unsafe user name");
  }
  const std::size_t at = in.user.find('@');
  const std::string_view local = in.user.substr(0, at);
  const std::string_view domain =
      at == std::string_view::npos ? std::string_view() : in.user.substr(at + 1);

  const std::string_view path = loc.path;
  std::string out;
  out.reserve(path.size() + in.home.size() + in.user.size());
  std::size_t i = 0;
  if (!path.empty() && path[0] == '~') {
    if (path.size() > 1 && path[1] != '/') {
      return invalid("only \"~\" or \"~/\" may start a path (no ~user)");
    }
    if (in.home.empty()) {
      return invalid("\"~\" used but the user has no home directory");
    }
    out.append(in.home);
    i = 1;
  }
  for (; i < path.size(); ++i) {
    if (path[i] != '%') {
      out += path[i];
      continue;
    }
    if (i + 1 == path.size()) {
      return invalid("path ends in a lone %");
    }
    switch (path[++i]) {
      case 'u':
        out.append(in.user);
        break;
      case 'n':
        out.append(local);
        break;
      case 'd':
        out.append(domain);
        break;
      case 'h':
        if (in.home.empty()) {
          return invalid("%h used but the user has no home directory");
        }
        out.append(in.home);
        break;
      case '%':
        out += '%';
        break;
      default:
        return invalid(std::string("unknown variable %") + path[i]);
    }
  }
  if (out.empty() || out[0] != '/') {
    return invalid("expanded path is not absolute");
  }
  if (has_control(out)) {
    return invalid("expanded path holds a NUL or control byte");
  }
  if (has_dot_component(out)) {
    return invalid("expanded path holds a \".\" or \"..\" component");
  }
  return out;
}

result<std::string> location_root(const location_template& loc, const expand_input& in) {
  const std::string_view path = loc.path;
  std::size_t cut = path.size();
  for (std::size_t i = 0; i + 1 < path.size(); ++i) {
    if (path[i] != '%') {
      continue;
    }
    const char v = path[i + 1];
    if (v == 'u' || v == 'n' || v == 'd') {
      cut = i;
      break;
    }
    ++i;  // %%, %h: not user-dependent
  }
  const std::size_t slash = path.substr(0, cut).rfind('/');
  if (slash == std::string_view::npos || slash == 0) {
    return std::string("/");
  }
  location_template root = loc;
  root.path = std::string(path.substr(0, slash));
  return expand_location(root, in);
}

}  // namespace postern::store
