// Parses and validates postern.toml into server::config, and prints a config back as TOML.
//
// toml++ is built with exceptions; they are caught here and never leave this file. Validation
// keeps going after the first problem so that the one reported is the earliest in the file
// (toml++ tables iterate in key order, not file order).
#include "server/config.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <limits>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>

#include "auth/passdb_spec.hpp"
#include "auth/sasl.hpp"
#include "common/encoding.hpp"
#include "common/parse.hpp"
#include "common/read_file.hpp"
#include "common/unique_fd.hpp"
#include "net/network.hpp"
#include "net/tls.hpp"
#include "store/location.hpp"

namespace postern::server {

namespace {

// A config file larger than this is certainly a mistake (a mail file, a log).
constexpr std::size_t max_config_bytes = 1024 * 1024;

constexpr std::chrono::seconds max_idle_timeout{24 * 3600};
constexpr std::chrono::milliseconds max_failure_delay{60'000};
constexpr std::chrono::milliseconds max_penalty{600'000};

// The greeting is sent as "+OK <greeting> <apop timestamp>"; RFC 2449 section 4 limits a
// response line to 512 octets, so leave room for the timestamp.
constexpr std::size_t max_greeting_bytes = 200;

// ---------------------------------------------------------------------------------------------
// Collecting problems

class checker {
 public:
  explicit checker(const std::string& name) : name_(name) {}

  // Records a problem at `where` for `key`; only the earliest in the file is kept.
  void fail(const toml::source_region& where, std::string_view key, std::string_view message) {
    auto pos = std::make_pair(where.begin.line, where.begin.column);
    if (has_problem_ && pos >= first_pos_) {
      return;
    }
    has_problem_ = true;
    first_pos_ = pos;
    first_ = name_ + ":" + std::to_string(where.begin.line) + ": " + std::string(key) + ": " +
             std::string(message);
  }

  bool has_problem() const noexcept { return has_problem_; }
  const std::string& first() const noexcept { return first_; }

 private:
  const std::string& name_;
  bool has_problem_ = false;
  std::pair<toml::source_index, toml::source_index> first_pos_{};
  std::string first_;
};

std::string_view type_name(const toml::node& n) noexcept {
  switch (n.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a floating-point number";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

std::string quoted(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7F) {
      out += '?';  // messages are one line
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
  return out;
}

// A value being checked: its node, dotted key name and the checker to report to.
struct item {
  checker& chk;
  const toml::node& node;
  std::string key;  // "server.idle_timeout"

  void fail(std::string_view message) const { chk.fail(node.source(), key, message); }
  void fail_type(std::string_view expected) const {
    fail("expected " + std::string(expected) + ", got " + std::string(type_name(node)));
  }
};

std::optional<std::string> get_string(const item& it) {
  if (const auto* v = it.node.as_string()) {
    return v->get();
  }
  it.fail_type("a string");
  return std::nullopt;
}

std::optional<bool> get_bool(const item& it) {
  if (const auto* v = it.node.as_boolean()) {
    return v->get();
  }
  it.fail_type("a boolean (true or false)");
  return std::nullopt;
}

std::optional<std::uint32_t> get_uint(const item& it, std::uint32_t min, std::uint32_t max) {
  const auto* v = it.node.as_integer();
  if (v == nullptr) {
    it.fail_type("an integer");
    return std::nullopt;
  }
  std::int64_t n = v->get();
  if (n < static_cast<std::int64_t>(min) || n > static_cast<std::int64_t>(max)) {
    it.fail("must be from " + std::to_string(min) + " to " + std::to_string(max) + ", not " +
            std::to_string(n));
    return std::nullopt;
  }
  return static_cast<std::uint32_t>(n);
}

// An integer (seconds) or a string "<digits><unit>" with unit ms, s, m or h.
std::optional<std::chrono::milliseconds> get_duration(const item& it) {
  constexpr std::int64_t max_ms = std::numeric_limits<std::int64_t>::max();
  constexpr std::string_view forms =
      "an integer (seconds) or a string such as \"500ms\", \"30s\", \"10m\" or \"1h\"";
  if (const auto* v = it.node.as_integer()) {
    std::int64_t n = v->get();
    if (n < 0) {
      it.fail("must not be negative");
      return std::nullopt;
    }
    if (n > max_ms / 1000) {
      it.fail("is too large");
      return std::nullopt;
    }
    return std::chrono::milliseconds(n * 1000);
  }
  const auto* s = it.node.as_string();
  if (s == nullptr) {
    it.fail_type(forms);
    return std::nullopt;
  }
  std::string_view text = s->get();
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') {
    ++digits;
  }
  std::string_view unit = text.substr(digits);
  std::int64_t scale = 0;
  if (unit == "ms") {
    scale = 1;
  } else if (unit == "s") {
    scale = 1000;
  } else if (unit == "m") {
    scale = 60 * 1000;
  } else if (unit == "h") {
    scale = 3600 * 1000;
  }
  if (digits == 0 || scale == 0) {
    it.fail(quoted(text) + " is not a duration; write " + std::string(forms));
    return std::nullopt;
  }
  auto n = parse_u64(text.substr(0, digits));
  if (!n || *n > static_cast<std::uint64_t>(max_ms / scale)) {
    it.fail(quoted(text) + " is too large");
    return std::nullopt;
  }
  return std::chrono::milliseconds(static_cast<std::int64_t>(*n) * scale);
}

bool is_printable_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c < 0x7F; });
}

// ---------------------------------------------------------------------------------------------
// Listen addresses

std::string format_listen(const listen_address& a) {
  std::string host = a.host.find(':') != std::string::npos ? "[" + a.host + "]" : a.host;
  return host + ":" + std::to_string(a.port);
}

// "ADDR:PORT", "[ADDR6]:PORT", "*:PORT" (0.0.0.0). Numeric only: names are never resolved.
// On success the host is in canonical form (inet_ntop), without brackets.
result<listen_address> parse_listen(std::string_view s) {
  auto bad = [&](std::string_view why) {
    return error(errc::invalid, quoted(s) + ": " + std::string(why));
  };
  std::string_view host;
  std::string_view rest;
  bool v6 = false;
  if (!s.empty() && s.front() == '[') {
    auto close = s.find(']');
    if (close == std::string_view::npos) {
      return bad("missing ']' after an IPv6 address");
    }
    host = s.substr(1, close - 1);
    rest = s.substr(close + 1);
    if (rest.empty() || rest.front() != ':') {
      return bad("expected ':' and a port after ']'");
    }
    v6 = true;
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string_view::npos) {
      return bad("missing \":PORT\"; write ADDRESS:PORT, e.g. \"127.0.0.1:110\"");
    }
    host = s.substr(0, colon);
    rest = s.substr(colon);
    if (host.find(':') != std::string_view::npos) {
      return bad("IPv6 addresses must be written in brackets, e.g. \"[::1]:110\"");
    }
  }
  auto port = parse_u64(rest.substr(1));
  if (!port || *port > 65535) {
    return bad("the port must be a number from 0 to 65535");
  }

  listen_address out;
  out.port = static_cast<std::uint16_t>(*port);
  if (!v6 && host == "*") {
    out.host = "0.0.0.0";
    return out;
  }
  std::string h(host);
  char text[INET6_ADDRSTRLEN] = {};
  if (v6) {
    in6_addr a6{};
    if (host.empty() || ::inet_pton(AF_INET6, h.c_str(), &a6) != 1) {
      return bad(quoted(host) + " is not a numeric IPv6 address");
    }
    ::inet_ntop(AF_INET6, &a6, text, sizeof text);
  } else {
    in_addr a4{};
    if (host.empty()) {
      return bad("missing address before the port; use \"*\" for all IPv4 addresses");
    }
    if (::inet_pton(AF_INET, h.c_str(), &a4) != 1) {
      bool looks_like_name = std::any_of(host.begin(), host.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-';
      });
      return bad(quoted(host) +
                 (looks_like_name
                      ? " is a host name; use a numeric address (names are never resolved)"
                      : " is not a numeric IPv4 address"));
    }
    ::inet_ntop(AF_INET, &a4, text, sizeof text);
  }
  out.host = text;
  return out;
}

void set_listen_list(const item& it, std::vector<listen_address>& out_list, bool allow_empty) {
  const auto* arr = it.node.as_array();
  if (arr == nullptr) {
    it.fail_type("an array of strings such as [\"127.0.0.1:110\", \"[::1]:110\"]");
    return;
  }
  if (arr->empty() && !allow_empty) {
    it.fail("must list at least one address");
    return;
  }
  std::vector<listen_address> out;
  std::set<std::pair<std::string, std::uint16_t>> seen;
  bool ok = true;
  for (const toml::node& el : *arr) {
    item el_item{it.chk, el, it.key};
    const auto* s = el.as_string();
    if (s == nullptr) {
      el_item.fail("expected an array of strings, found " + std::string(type_name(el)));
      ok = false;
      continue;
    }
    auto addr = parse_listen(s->get());
    if (!addr) {
      el_item.fail(addr.err().context());
      ok = false;
      continue;
    }
    // Port 0 twice is fine: the kernel gives each its own port.
    if (addr->port != 0 && !seen.emplace(addr->host, addr->port).second) {
      el_item.fail(quoted(format_listen(*addr)) + " is listed twice");
      ok = false;
      continue;
    }
    out.push_back(std::move(*addr));
  }
  if (ok) {
    out_list = std::move(out);
  }
}

void set_listen(const item& it, config& cfg) { set_listen_list(it, cfg.listen, true); }

// FileDescriptorName= allows up to 255 printable ASCII characters other than ':'.
bool is_fd_name(std::string_view s) {
  return !s.empty() && s.size() <= 255 && is_printable_ascii(s) &&
         s.find(':') == std::string_view::npos;
}

std::optional<listener_config> parse_listener(const item& it, const toml::table& tbl) {
  listener_config out;
  bool ok = true;
  bool has_address = false;
  for (auto&& [k, v] : tbl) {
    item field{it.chk, v, it.key + "." + std::string(k.str())};
    if (k.str() == "address") {
      auto s = get_string(field);
      if (!s) {
        ok = false;
        continue;
      }
      auto addr = parse_listen(*s);
      if (!addr) {
        field.fail(addr.err().context());
        ok = false;
        continue;
      }
      has_address = true;
      out.address = *addr;
    } else if (k.str() == "tls") {
      auto s = get_string(field);
      if (s && *s != "none" && *s != "implicit") {
        field.fail("expected \"none\" or \"implicit\"");
      }
      ok = ok && s && (*s == "none" || *s == "implicit");
      out.implicit_tls = s && *s == "implicit";
    } else if (k.str() == "proxy_protocol") {
      auto b = get_bool(field);
      ok = ok && b.has_value();
      out.proxy_protocol = b.value_or(false);
    } else if (k.str() == "name") {
      auto s = get_string(field);
      if (s && !is_fd_name(*s)) {
        field.fail(
            "expected a systemd FileDescriptorName (printable ASCII without ':', at most 255)");
      }
      ok = ok && s && is_fd_name(*s);
      out.name = s ? *s : "";
    } else {
      field.fail("unknown key; a [[server.listener]] has address, tls, proxy_protocol and name");
      ok = false;
    }
  }
  if (!has_address && ok) {
    it.fail("a [[server.listener]] needs an address, e.g. address = \"0.0.0.0:110\"");
    ok = false;
  }
  return ok ? std::optional<listener_config>(std::move(out)) : std::nullopt;
}

void set_listeners(const item& it, config& cfg) {
  const auto* arr = it.node.as_array();
  if (arr == nullptr || arr->empty() || !arr->is_array_of_tables()) {
    it.fail_type("one or more [[server.listener]] tables");
    return;
  }
  std::vector<listener_config> out;
  bool ok = true;
  for (const toml::node& el : *arr) {
    auto l = parse_listener(item{it.chk, el, it.key}, *el.as_table());
    ok = ok && l.has_value();
    if (l) {
      out.push_back(std::move(*l));
    }
  }
  if (ok) {
    cfg.listeners = std::move(out);
  }
}

// ---------------------------------------------------------------------------------------------
// Other values

// User and group names go to getpwnam/getgrnam later; reject what no system accepts.
bool is_plausible_account_name(std::string_view s) {
  if (s.empty() || s.size() > 255 || s.front() == '-') {
    return false;
  }
  return std::all_of(s.begin(), s.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u > 0x20 && u != 0x7F && c != ':' && c != '/' && c != ',';
  });
}

void set_account(const item& it, std::string& out) {
  auto s = get_string(it);
  if (!s) {
    return;
  }
  if (!s->empty() && !is_plausible_account_name(*s)) {
    it.fail(quoted(*s) +
            " is not a valid name (no spaces, ':', '/', ',' or control characters; "
            "\"\" keeps the current one)");
    return;
  }
  out = std::move(*s);
}

void set_idle_timeout(const item& it, config& cfg) {
  auto d = get_duration(it);
  if (!d) {
    return;
  }
  if (*d < std::chrono::seconds(1)) {
    it.fail("must be at least 1 second");
  } else if (*d > max_idle_timeout) {
    it.fail("must be at most 24 hours");
  } else if (d->count() % 1000 != 0) {
    it.fail("must be a whole number of seconds");
  } else {
    cfg.idle_timeout = std::chrono::duration_cast<std::chrono::seconds>(*d);
  }
}

void set_login_timeout(const item& it, config& cfg) {
  auto d = get_duration(it);
  if (!d) {
    return;
  }
  if (*d > max_idle_timeout) {
    it.fail("must be at most 24 hours");
  } else if (d->count() % 1000 != 0) {
    it.fail("must be a whole number of seconds");
  } else {
    cfg.login_timeout = std::chrono::duration_cast<std::chrono::seconds>(*d);
  }
}

void set_failure_delay(const item& it, config& cfg) {
  auto d = get_duration(it);
  if (!d) {
    return;
  }
  if (*d > max_failure_delay) {
    it.fail("must be at most 60 seconds");
    return;
  }
  cfg.failure_delay = *d;
}

void set_penalty_duration(const item& it, std::chrono::milliseconds& out, bool zero_allowed) {
  auto d = get_duration(it);
  if (!d) {
    return;
  }
  if (*d > max_penalty) {
    it.fail("must be at most 10 minutes");
  } else if (d->count() == 0 && !zero_allowed) {
    it.fail("must be more than 0 (turn the penalty off with auth.penalty_max = 0)");
  } else {
    out = *d;
  }
}

void set_penalty_initial(const item& it, config& cfg) {
  set_penalty_duration(it, cfg.penalty_initial, false);
}
void set_penalty_max(const item& it, config& cfg) {
  set_penalty_duration(it, cfg.penalty_max, true);
}

void set_greeting(const item& it, config& cfg) {
  auto s = get_string(it);
  if (!s) {
    return;
  }
  if (s->empty()) {
    it.fail("must not be empty");
  } else if (s->size() > max_greeting_bytes) {
    it.fail("must be at most " + std::to_string(max_greeting_bytes) + " characters");
  } else if (!is_printable_ascii(*s)) {
    it.fail("must be printable ASCII (no control characters or line breaks)");
  } else {
    cfg.greeting = std::move(*s);
  }
}

void set_location(const item& it, config& cfg) {
  auto s = get_string(it);
  if (!s) {
    return;
  }
  auto loc = store::parse_location(*s);
  if (!loc) {
    // The key already says what this is; drop the store's own "mail location: " prefix.
    std::string why = loc.err().message();
    constexpr std::string_view prefix = "mail location: ";
    if (std::string_view(why).substr(0, prefix.size()) == prefix) {
      why.erase(0, prefix.size());
    }
    it.fail(quoted(*s) + ": " + why);
    return;
  }
  cfg.mail_location = std::move(*s);
}

void set_mbox_state_dir(const item& it, config& cfg) {
  auto s = get_string(it);
  if (!s) {
    return;
  }
  if (!s->empty()) {
    auto loc = store::parse_location("mbox:" + *s);
    if (!loc || loc->path != *s) {
      it.fail(quoted(*s) + ": " + (loc ? std::string("':' is not allowed") : loc.err().message()));
      return;
    }
  }
  cfg.mbox_state_dir = std::move(*s);
}

void set_passdb(const item& it, config& cfg) {
  auto s = get_string(it);
  if (!s) {
    return;
  }
  const auto parsed = auth::parse_passdb_spec(*s);
  if (const auto* fault = std::get_if<auth::passdb_spec_fault>(&parsed)) {
    switch (*fault) {
      case auth::passdb_spec_fault::unknown_kind:
        it.fail(quoted(*s) +
                " is not a known password database (supported: \"passwd-file:PATH\", \"pam\")");
        break;
      case auth::passdb_spec_fault::missing_path:
        it.fail("passwd-file needs a path, e.g. \"passwd-file:/etc/postern/users\"");
        break;
      case auth::passdb_spec_fault::relative_path:
        it.fail(quoted(*s) + ": the passwd-file path must be absolute");
        break;
      case auth::passdb_spec_fault::control_character:
        it.fail("the passwd-file path must not contain control characters");
        break;
    }
    return;
  }
  cfg.passdb = std::move(*s);
}

template <typename Enum, std::size_t N>
void set_enum(const item& it, Enum& out,
              const std::array<std::pair<std::string_view, Enum>, N>& names) {
  auto s = get_string(it);
  if (!s) {
    return;
  }
  std::string choices;
  for (const auto& [name, value] : names) {
    if (*s == name) {
      out = value;
      return;
    }
    choices += (choices.empty() ? "" : ", ") + std::string("\"") + std::string(name) + "\"";
  }
  it.fail(quoted(*s) + " is not one of " + choices);
}

constexpr std::array<std::pair<std::string_view, log_level>, 5> level_names{{
    {"debug", log_level::debug},
    {"info", log_level::info},
    {"notice", log_level::notice},
    {"warning", log_level::warning},
    {"error", log_level::error},
}};

constexpr std::array<std::pair<std::string_view, log_target>, 2> target_names{{
    {"syslog", log_target::syslog},
    {"stderr", log_target::stderr_},
}};

const char* to_string(log_target t) noexcept {
  for (const auto& [name, value] : target_names) {
    if (value == t) {
      return name.data();
    }
  }
  return "syslog";
}

void set_syslog_ident(const item& it, config& cfg) {
  auto s = get_string(it);
  if (!s) {
    return;
  }
  bool ok = !s->empty() && s->size() <= 64 && std::all_of(s->begin(), s->end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
  if (!ok) {
    it.fail(quoted(*s) + " must be 1 to 64 letters, digits, '.', '_' or '-'");
    return;
  }
  cfg.syslog_ident = std::move(*s);
}

void set_tls_listen(const item& it, config& cfg) { set_listen_list(it, cfg.tls_listen, true); }

// A path to a file read at startup: absolute, no control characters.
void set_path(const item& it, std::string& out) {
  auto s = get_string(it);
  if (!s) {
    return;
  }
  if (!s->empty() && s->front() != '/') {
    it.fail(quoted(*s) + ": the path must be absolute");
    return;
  }
  if (std::any_of(s->begin(), s->end(), [](char c) {
        auto u = static_cast<unsigned char>(c);
        return u < 0x20 || u == 0x7F;
      })) {
    it.fail("the path must not contain control characters");
    return;
  }
  out = std::move(*s);
}

// A free-form OpenSSL list (ciphers, groups): printable ASCII without spaces.
void set_openssl_list(const item& it, std::string& out) {
  auto s = get_string(it);
  if (!s) {
    return;
  }
  if (!is_printable_ascii(*s) || s->find(' ') != std::string::npos) {
    it.fail(quoted(*s) + " must be an OpenSSL list without spaces, e.g. \"X25519:P-256\"");
    return;
  }
  out = std::move(*s);
}

constexpr std::array<std::pair<std::string_view, tls_mode>, 4> tls_mode_names{{
    {"none", tls_mode::none},
    {"ondemand", tls_mode::ondemand},
    {"required", tls_mode::required},
    {"connection", tls_mode::connection},
}};

void set_mechanisms(const item& it, config& cfg) {
  const auto* arr = it.node.as_array();
  if (arr == nullptr) {
    it.fail_type("an array of mechanism names such as [\"PLAIN\", \"SCRAM-SHA-256\"]");
    return;
  }
  std::vector<std::string> out;
  for (const toml::node& el : *arr) {
    item el_item{it.chk, el, it.key};
    const auto* s = el.as_string();
    if (s == nullptr) {
      el_item.fail("expected an array of strings, found " + std::string(type_name(el)));
      return;
    }
    std::string name = ascii_to_upper(s->get());
    const auto known_mechanisms = auth::sasl_mechanism_names();
    if (std::find(known_mechanisms.begin(), known_mechanisms.end(), name) ==
        known_mechanisms.end()) {
      std::string choices;
      for (auto m : known_mechanisms) {
        choices += (choices.empty() ? "" : ", ") + std::string(m);
      }
      el_item.fail(quoted(s->get()) + " is not a supported mechanism (" + choices + ")");
      return;
    }
    if (std::find(out.begin(), out.end(), name) != out.end()) {
      el_item.fail(quoted(name) + " is listed twice");
      return;
    }
    out.push_back(std::move(name));
  }
  cfg.mechanisms = std::move(out);
}

void set_network_list(const item& it, std::vector<std::string>& list) {
  const auto* arr = it.node.as_array();
  if (arr == nullptr) {
    it.fail_type("an array of networks such as [\"10.0.0.0/8\", \"::1/128\"]");
    return;
  }
  std::vector<std::string> out;
  for (const toml::node& el : *arr) {
    item el_item{it.chk, el, it.key};
    const auto* s = el.as_string();
    if (s == nullptr) {
      el_item.fail("expected an array of strings, found " + std::string(type_name(el)));
      return;
    }
    if (!net::parse_network(s->get())) {
      el_item.fail(quoted(s->get()) +
                   " is not a numeric network (ADDRESS/PREFIX, e.g. \"192.0.2.0/24\")");
      return;
    }
    out.push_back(s->get());
  }
  list = std::move(out);
}

void set_trusted_networks(const item& it, config& cfg) {
  set_network_list(it, cfg.trusted_networks);
}
void set_penalty_exempt_networks(const item& it, config& cfg) {
  set_network_list(it, cfg.penalty_exempt_networks);
}
void set_penalty_file(const item& it, config& cfg) { set_path(it, cfg.penalty_file); }
void set_proxy_trusted_networks(const item& it, config& cfg) {
  set_network_list(it, cfg.proxy_trusted_networks);
}

void set_tls_version(const item& it, config& cfg) {
  auto s = get_string(it);
  if (!s) {
    return;
  }
  if (*s != "TLSv1.2" && *s != "TLSv1.3") {
    it.fail(quoted(*s) + " is not one of \"TLSv1.2\", \"TLSv1.3\"");
    return;
  }
  cfg.tls_min_version = std::move(*s);
}

void set_external_user(const item& it, config& cfg) {
  auto s = get_string(it);
  if (!s) {
    return;
  }
  if (!net::tls_transport::is_valid_certificate_field_spec(*s)) {
    it.fail(quoted(*s) +
            " is not a certificate field: \"subject:ATTRIBUTE\" (e.g. \"subject:CN\"), "
            "\"san:email\", \"san:dns\" or \"san:uri\"");
    return;
  }
  cfg.external_user = std::move(*s);
}

void set_word(const item& it, std::string& out) {
  auto s = get_string(it);
  if (!s) {
    return;
  }
  if (!s->empty() && !is_plausible_account_name(*s)) {
    it.fail(quoted(*s) + " must be a single word without spaces, ':' or '/'");
    return;
  }
  out = std::move(*s);
}

void set_mbox_locking(const item& it, config& cfg) {
  const auto* arr = it.node.as_array();
  if (arr == nullptr) {
    it.fail_type("an array such as [\"dotlock\", \"fcntl\"]");
    return;
  }
  std::vector<std::string> out;
  for (const toml::node& el : *arr) {
    item el_item{it.chk, el, it.key};
    const auto* str = el.as_string();
    if (str == nullptr) {
      el_item.fail("expected an array of strings, found " + std::string(type_name(el)));
      return;
    }
    const std::string& m = str->get();
    if (m != "dotlock" && m != "fcntl" && m != "flock") {
      el_item.fail(quoted(m) + " is not one of \"dotlock\", \"fcntl\", \"flock\"");
      return;
    }
    if (std::find(out.begin(), out.end(), m) != out.end()) {
      el_item.fail(quoted(m) + " is listed twice");
      return;
    }
    out.push_back(m);
  }
  if (out.empty()) {
    it.fail("must name at least one locking method");
    return;
  }
  cfg.mbox_locking = std::move(out);
}

void set_mbox_quoting(const item& it, config& cfg) {
  auto s = get_string(it);
  if (!s) {
    return;
  }
  if (*s != "mboxo" && *s != "mboxrd" && *s != "none") {
    it.fail(quoted(*s) + " is not one of \"mboxo\", \"mboxrd\", \"none\"");
    return;
  }
  cfg.mbox_quoting = std::move(*s);
}

void set_string_list(const item& it, std::vector<std::string>& out_list, bool allow_empty) {
  const auto* arr = it.node.as_array();
  if (arr == nullptr) {
    it.fail_type("an array of strings");
    return;
  }
  std::vector<std::string> out;
  for (const toml::node& el : *arr) {
    item el_item{it.chk, el, it.key};
    const auto* str = el.as_string();
    if (str == nullptr) {
      el_item.fail("expected an array of strings, found " + std::string(type_name(el)));
      return;
    }
    if (!is_printable_ascii(str->get()) || str->get().empty()) {
      el_item.fail("entries must be non-empty printable text");
      return;
    }
    out.push_back(str->get());
  }
  if (out.empty() && !allow_empty) {
    it.fail("must not be empty");
    return;
  }
  out_list = std::move(out);
}

void set_expire(const item& it, config& cfg) {
  if (const auto* str = it.node.as_string()) {
    if (str->get() == "never") {
      cfg.expire_days = -1;
      return;
    }
    it.fail(quoted(str->get()) + " is not \"never\" or a number of days");
    return;
  }
  if (auto v = get_uint(it, 0, 36500)) {
    cfg.expire_days = static_cast<std::int32_t>(*v);
  }
}

void set_acl(const item& it, config& cfg) {
  std::vector<std::string> rules;
  set_string_list(it, rules, true);
  for (const auto& r : rules) {
    auto sp = r.find(' ');
    std::string verb = r.substr(0, sp);
    std::string what = sp == std::string::npos ? "" : r.substr(sp + 1);
    if ((verb != "allow" && verb != "deny") || (what != "any" && !net::parse_network(what))) {
      it.fail(quoted(r) + " is not \"allow NETWORK\", \"deny NETWORK\" or \"allow/deny any\"");
      return;
    }
  }
  cfg.acl = std::move(rules);
}

void set_uidl_format(const item& it, config& cfg) {
  auto s = get_string(it);
  if (!s) {
    return;
  }
  for (std::size_t i = 0; i < s->size(); ++i) {
    char c = (*s)[i];
    if (c <= 0x20 || c >= 0x7F) {
      it.fail("must be printable ASCII without spaces");
      return;
    }
    if (c != '%') {
      continue;
    }
    std::size_t j = i + 1;
    if (j < s->size() && (*s)[j] == 'X') {
      ++j;  // %X: upper-case hex form
    } else if (j < s->size() && (*s)[j] >= '0' && (*s)[j] <= '9') {
      while (j < s->size() && (*s)[j] >= '0' && (*s)[j] <= '9') {
        ++j;  // a width, as in %08Xu
      }
      if (j < s->size() && (*s)[j] == 'X') {
        ++j;
      }
    }
    if (j >= s->size() || std::string_view("vumfg%").find((*s)[j]) == std::string_view::npos) {
      it.fail(quoted(*s) +
              ": unknown variable; use %v, %u, %m, %f, %g (with optional width and X)");
      return;
    }
    i = j;
  }
  cfg.uidl_format = std::move(*s);
}

// A plain name for accounts, PAM services and libwrap daemon names.
bool is_plain_name(std::string_view s) {
  return !s.empty() && s.size() <= 64 && s.front() != '-' && s != "." && s != ".." &&
         std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
         });
}

void set_plain_name(const item& it, std::string& out, bool allow_empty) {
  auto s = get_string(it);
  if (!s) {
    return;
  }
  if (!(allow_empty && s->empty()) && !is_plain_name(*s)) {
    it.fail(quoted(*s) + " must be 1 to 64 letters, digits, '.', '_' or '-'");
    return;
  }
  out = std::move(*s);
}

void set_process_model(const item& it, config& cfg) {
  auto s = get_string(it);
  if (!s) {
    return;
  }
  if (*s == "event") {
    cfg.unix.model = process_model::event;
  } else if (*s == "fork") {
    cfg.unix.model = process_model::fork;
  } else {
    it.fail(quoted(*s) + " is not one of \"event\", \"fork\"");
  }
}

// Event mode worker processes: a number, or "auto" for one per CPU.
constexpr std::uint32_t max_processes = 256;

void set_processes(const item& it, config& cfg) {
  if (const auto* str = it.node.as_string()) {
    if (str->get() == "auto") {
      cfg.processes = 0;
      return;
    }
    it.fail(quoted(str->get()) + " is not \"auto\" or a number of processes from 1 to " +
            std::to_string(max_processes));
    return;
  }
  if (it.node.as_integer() == nullptr) {
    it.fail_type("an integer from 1 to " + std::to_string(max_processes) + " or \"auto\"");
    return;
  }
  if (auto v = get_uint(it, 1, max_processes)) {
    cfg.processes = *v;
  }
}

void set_address_family(const item& it, config& cfg) {
  auto s = get_string(it);
  if (!s) {
    return;
  }
  if (*s == "any") {
    cfg.unix.family = address_family::any;
  } else if (*s == "ipv4") {
    cfg.unix.family = address_family::ipv4;
  } else if (*s == "ipv6") {
    cfg.unix.family = address_family::ipv6;
  } else {
    it.fail(quoted(*s) + " is not one of \"any\", \"ipv4\", \"ipv6\"");
  }
}

// ---------------------------------------------------------------------------------------------
// The key table: every accepted key, in the order format_config prints them.

using setter = void (*)(const item&, config&);

struct key_rule {
  std::string_view table;
  std::string_view key;
  setter set;
};

constexpr std::array<std::string_view, 6> table_names{"server", "mail", "auth",
                                                      "tls",    "pop3", "log"};

#define POSTERN_BOOL_KEY(table, name)             \
  {                                               \
    table, #name, [](const item& it, config& c) { \
      if (auto v = get_bool(it)) {                \
        c.name = *v;                              \
      }                                           \
    }                                             \
  }

constexpr auto key_rules = std::to_array<key_rule>({
    {"server", "listen", set_listen},
    {"server", "user", [](const item& it, config& c) { set_account(it, c.user); }},
    {"server", "group", [](const item& it, config& c) { set_account(it, c.group); }},
    {"server", "max_connections",
     [](const item& it, config& c) {
       if (auto v = get_uint(it, 1, 1'000'000)) {
         c.max_connections = *v;
       }
     }},
    {"server", "max_connections_per_ip",
     [](const item& it, config& c) {
       if (auto v = get_uint(it, 1, 1'000'000)) {
         c.max_connections_per_ip = *v;
       }
     }},
    {"server", "idle_timeout", set_idle_timeout},
    {"server", "login_timeout", set_login_timeout},
    {"server", "threads",
     [](const item& it, config& c) {
       if (auto v = get_uint(it, 0, 1024)) {
         c.threads = *v;
       }
     }},
    {"server", "processes", set_processes},
    {"server", "max_bad_commands",
     [](const item& it, config& c) {
       if (auto v = get_uint(it, 1, 10'000)) {
         c.max_bad_commands = *v;
       }
     }},
    {"server", "implementation_capability",
     [](const item& it, config& c) {
       if (auto v = get_bool(it)) {
         c.implementation_capability = *v;
       }
     }},
    {"server", "greeting", set_greeting},
    {"server", "tls_listen", set_tls_listen},
    {"server", "listener", set_listeners},
    {"server", "proxy_trusted_networks", set_proxy_trusted_networks},
    {"server", "process_model", set_process_model},
    {"server", "max_children",
     [](const item& it, config& c) {
       if (auto v = get_uint(it, 1, 100'000)) {
         c.unix.max_children = *v;
       }
     }},
    {"server", "min_connection_interval",
     [](const item& it, config& c) {
       if (auto d = get_duration(it)) {
         if (*d > std::chrono::hours(1)) {
           it.fail("must be at most 1h");
           return;
         }
         c.unix.min_connection_interval = *d;
       }
     }},
    {"server", "listen_backlog",
     [](const item& it, config& c) {
       if (auto v = get_uint(it, 1, 65535)) {
         c.unix.listen_backlog = *v;
       }
     }},
    {"server", "address_family", set_address_family},
    {"server", "login_user", [](const item& it, config& c) { set_plain_name(it, c.unix.login_user, true); }},
    {"server", "login_chroot",
     [](const item& it, config& c) {
       std::string path;
       set_path(it, path);
       if (path == "/") {
         it.fail("must not be /");
         return;
       }
       c.unix.login_chroot = std::move(path);
     }},
    {"server", "shutdown_grace",
     [](const item& it, config& c) {
       if (auto d = get_duration(it)) {
         if (*d < std::chrono::seconds(1) || *d > std::chrono::minutes(10) || d->count() % 1000 != 0) {
           it.fail("must be whole seconds from 1s to 10m");
           return;
         }
         c.unix.shutdown_grace = std::chrono::duration_cast<std::chrono::seconds>(*d);
       }
     }},
    {"server", "tcp_wrappers",
     [](const item& it, config& c) {
       if (auto v = get_bool(it)) {
         c.unix.tcp_wrappers = *v;
       }
     }},
    {"server", "tcp_wrappers_daemon",
     [](const item& it, config& c) { set_plain_name(it, c.unix.tcp_wrappers_daemon, false); }},
    {"server", "hosts_allow", [](const item& it, config& c) { set_path(it, c.unix.hosts_allow); }},
    {"server", "hosts_deny", [](const item& it, config& c) { set_path(it, c.unix.hosts_deny); }},
    {"mail", "location", set_location},
    {"mail", "mbox_locking", set_mbox_locking},
    {"mail", "privileged_group",
     [](const item& it, config& c) { set_plain_name(it, c.unix.privileged_group, true); }},
    {"mail", "mbox_lock_timeout",
     [](const item& it, config& c) {
       if (auto d = get_duration(it)) {
         if (*d < std::chrono::seconds(1) || *d > std::chrono::minutes(10) || d->count() % 1000 != 0) {
           it.fail("must be whole seconds from 1s to 10m");
           return;
         }
         c.mbox_lock_timeout = std::chrono::duration_cast<std::chrono::seconds>(*d);
       }
     }},
    {"mail", "mbox_quoting", set_mbox_quoting},
    {"mail", "mbox_state_dir", set_mbox_state_dir},
    {"mail", "mbox_dotlock_stale_age",
     [](const item& it, config& c) {
       if (auto d = get_duration(it)) {
         if (*d < std::chrono::seconds(1) || *d > std::chrono::hours(24) || d->count() % 1000 != 0) {
           it.fail("must be whole seconds from 1s to 24h");
           return;
         }
         c.mbox_dotlock_stale_age = std::chrono::duration_cast<std::chrono::seconds>(*d);
       }
     }},
    {"mail", "mbox_startup_recovery_timeout",
     [](const item& it, config& c) {
       if (auto d = get_duration(it)) {
         if (d->count() < 0 || *d > std::chrono::minutes(10) || d->count() % 1000 != 0) {
           it.fail("must be whole seconds from 0s (off) to 10m");
           return;
         }
         c.mbox_startup_recovery_timeout = std::chrono::duration_cast<std::chrono::seconds>(*d);
       }
     }},
    POSTERN_BOOL_KEY("mail", mbox_content_length),
    POSTERN_BOOL_KEY("mail", mbox_x_uidl),
    {"auth", "passdb", set_passdb},
    {"auth", "pam_service", [](const item& it, config& c) { set_plain_name(it, c.unix.pam_service, false); }},
    {"auth", "pam_account_check",
     [](const item& it, config& c) {
       if (auto v = get_bool(it)) {
         c.unix.pam_account_check = *v;
       }
     }},
    {"auth", "failure_delay", set_failure_delay},
    {"auth", "penalty_initial", set_penalty_initial},
    {"auth", "penalty_max", set_penalty_max},
    {"auth", "penalty_exempt_networks", set_penalty_exempt_networks},
    {"auth", "penalty_file", set_penalty_file},
    {"auth", "worker_threads",
     [](const item& it, config& c) {
       if (auto v = get_uint(it, 0, 1024)) {
         c.worker_threads = *v;
       }
     }},
    {"auth", "mechanisms", set_mechanisms},
    POSTERN_BOOL_KEY("auth", disable_plaintext_auth),
    POSTERN_BOOL_KEY("auth", loopback_is_secure),
    {"auth", "trusted_networks", set_trusted_networks},
    POSTERN_BOOL_KEY("auth", apop),
    {"auth", "gssapi_keytab", [](const item& it, config& c) { set_path(it, c.gssapi_keytab); }},
    {"auth", "gssapi_service",
     [](const item& it, config& c) {
       if (const auto* v = it.node.as_string(); v != nullptr && v->get().empty()) {
         it.fail("must not be empty (the Kerberos service name, usually \"pop\")");
         return;
       }
       set_word(it, c.gssapi_service);
     }},
    {"auth", "gssapi_hostname", [](const item& it, config& c) { set_word(it, c.gssapi_hostname); }},
    {"auth", "external_user", set_external_user},
    {"auth", "first_valid_uid",
     [](const item& it, config& c) {
       if (auto v = get_uint(it, 1, 4294967294U)) {
         c.first_valid_uid = *v;
       }
     }},
    {"auth", "last_valid_uid",
     [](const item& it, config& c) {
       if (auto v = get_uint(it, 0, 4294967294U)) {
         c.last_valid_uid = *v;
       }
     }},
    {"tls", "cert", [](const item& it, config& c) { set_path(it, c.tls_cert); }},
    {"tls", "key", [](const item& it, config& c) { set_path(it, c.tls_key); }},
    {"tls", "chain", [](const item& it, config& c) { set_path(it, c.tls_chain); }},
    {"tls", "mode", [](const item& it, config& c) { set_enum(it, c.tls, tls_mode_names); }},
    {"tls", "min_version", set_tls_version},
    {"tls", "ciphers", [](const item& it, config& c) { set_openssl_list(it, c.tls_ciphers); }},
    {"tls", "ciphersuites", [](const item& it, config& c) { set_openssl_list(it, c.tls_ciphersuites); }},
    {"tls", "groups", [](const item& it, config& c) { set_openssl_list(it, c.tls_groups); }},
    {"tls", "client_ca", [](const item& it, config& c) { set_path(it, c.tls_client_ca); }},
    {"pop3", "login_delay",
     [](const item& it, config& c) {
       if (auto d = get_duration(it)) {
         if (d->count() % 1000 != 0 || *d > std::chrono::hours(24 * 30)) {
           it.fail("must be whole seconds up to 30 days");
           return;
         }
         c.login_delay = std::chrono::duration_cast<std::chrono::seconds>(*d);
       }
     }},
    {"pop3", "stat_file", [](const item& it, config& c) { set_path(it, c.stat_file); }},
    {"pop3", "expire", set_expire},
    POSTERN_BOOL_KEY("pop3", delete_expired),
    POSTERN_BOOL_KEY("pop3", dovecot_lock_session),
    {"pop3", "bulletin_source",
     [](const item& it, config& c) {
       auto s = get_string(it);
       if (!s) {
         return;
       }
       if (!s->empty()) {
         auto loc = store::parse_location(*s);
         if (!loc) {
           it.fail(quoted(*s) + ": " + loc.err().context());
           return;
         }
       }
       c.bulletin_source = std::move(*s);
     }},
    {"pop3", "bulletin_db", [](const item& it, config& c) { set_path(it, c.bulletin_db); }},
    POSTERN_BOOL_KEY("pop3", undelete),
    POSTERN_BOOL_KEY("pop3", xtnd_xlist),
    POSTERN_BOOL_KEY("pop3", xtnd_xmit),
    {"pop3", "xmit_command",
     [](const item& it, config& c) {
       std::vector<std::string> v;
       set_string_list(it, v, false);
       if (!v.empty() && v[0].front() != '/') {
         it.fail("the program must be an absolute path");
         return;
       }
       if (!v.empty()) {
         c.xmit_command = std::move(v);
       }
     }},
    {"pop3", "xmit_max_size",
     [](const item& it, config& c) {
       if (auto v = get_uint(it, 1024, 1024u * 1024 * 1024)) {
         c.xmit_max_size = *v;
       }
     }},
    {"pop3", "uidl_format", set_uidl_format},
    {"pop3", "acl", set_acl},
    {"log", "level", [](const item& it, config& c) { set_enum(it, c.level, level_names); }},
    {"log", "target", [](const item& it, config& c) { set_enum(it, c.target, target_names); }},
    {"log", "syslog_ident", set_syslog_ident},
    {"log", "trace_file", [](const item& it, config& c) { set_path(it, c.trace_file); }},
    {"log", "telemetry_dir", [](const item& it, config& c) { set_path(it, c.telemetry_dir); }},
});

// A non-default sample value of every key (config_keys), in format_config's form. The
// [[server.listener]] sample is written inline; format_config prints it as a table.
constexpr auto key_samples = std::to_array<std::pair<std::string_view, std::string_view>>({
    {"server.listen", R"(["127.0.0.1:1110", "127.0.0.2:1110"])"},
    {"server.user", R"("nobody")"},
    {"server.group", R"("nogroup")"},
    {"server.max_connections", "123"},
    {"server.max_connections_per_ip", "7"},
    {"server.idle_timeout", R"("15m")"},
    {"server.login_timeout", R"("45s")"},
    {"server.threads", "3"},
    {"server.processes", "2"},
    {"server.max_bad_commands", "5"},
    {"server.implementation_capability", "false"},
    {"server.greeting", R"("Sample ready.")"},
    {"server.tls_listen", R"(["127.0.0.1:1995"])"},
    {"server.listener",
     R"([{address = "127.0.0.1:2110", tls = "implicit", proxy_protocol = true, name = "pop3s-sample"}])"},
    {"server.proxy_trusted_networks", R"(["192.0.2.0/24"])"},
    {"server.process_model", R"("fork")"},
    {"server.max_children", "42"},
    {"server.min_connection_interval", R"("250ms")"},
    {"server.listen_backlog", "64"},
    {"server.address_family", R"("ipv4")"},
    {"server.login_user", R"("nobody")"},
    {"server.login_chroot", R"("@DIR@/empty")"},
    {"server.shutdown_grace", R"("20s")"},
    {"server.tcp_wrappers", "true"},
    {"server.tcp_wrappers_daemon", R"("pop3d")"},
    {"server.hosts_allow", R"("@DIR@/hosts.allow")"},
    {"server.hosts_deny", R"("@DIR@/hosts.deny")"},
    {"mail.location", R"("mbox:@DIR@/spool/%u")"},
    {"mail.mbox_locking", R"(["fcntl"])"},
    {"mail.privileged_group", R"("nogroup")"},
    {"mail.mbox_lock_timeout", R"("45s")"},
    {"mail.mbox_quoting", R"("mboxrd")"},
    {"mail.mbox_state_dir", R"("@DIR@/state/%u")"},
    {"mail.mbox_dotlock_stale_age", R"("5m")"},
    {"mail.mbox_startup_recovery_timeout", R"("0s")"},
    {"mail.mbox_content_length", "true"},
    {"mail.mbox_x_uidl", "true"},
    {"auth.passdb", R"("passwd-file:@DIR@/users")"},
    {"auth.pam_service", R"("pop3-sample")"},
    {"auth.pam_account_check", "false"},
    {"auth.failure_delay", R"("500ms")"},
    {"auth.penalty_initial", R"("3s")"},
    {"auth.penalty_max", R"("1m")"},
    {"auth.penalty_exempt_networks", R"(["198.51.100.0/24"])"},
    {"auth.penalty_file", R"("@DIR@/penalty")"},
    {"auth.worker_threads", "3"},
    {"auth.mechanisms", R"(["PLAIN", "SCRAM-SHA-256"])"},
    {"auth.disable_plaintext_auth", "false"},
    {"auth.loopback_is_secure", "false"},
    {"auth.trusted_networks", R"(["203.0.113.0/24"])"},
    {"auth.apop", "true"},
    {"auth.gssapi_keytab", R"("@DIR@/krb5.keytab")"},
    {"auth.gssapi_service", R"("pop3")"},
    {"auth.gssapi_hostname", R"("mail.example.org")"},
    {"auth.external_user", R"("san:email")"},
    {"auth.first_valid_uid", "1000"},
    {"auth.last_valid_uid", "60000"},
    {"tls.cert", R"("@DIR@/cert.pem")"},
    {"tls.key", R"("@DIR@/key.pem")"},
    {"tls.chain", R"("@DIR@/chain.pem")"},
    {"tls.mode", R"("required")"},
    {"tls.min_version", R"("TLSv1.3")"},
    {"tls.ciphers", R"("ECDHE-ECDSA-AES256-GCM-SHA384")"},
    {"tls.ciphersuites", R"("TLS_AES_256_GCM_SHA384")"},
    {"tls.groups", R"("X25519")"},
    {"tls.client_ca", R"("@DIR@/client-ca.pem")"},
    {"pop3.login_delay", R"("5m")"},
    {"pop3.stat_file", R"("@DIR@/stats.sqlite")"},
    {"pop3.expire", "30"},
    {"pop3.delete_expired", "true"},
    {"pop3.dovecot_lock_session", "true"},
    {"pop3.bulletin_source", R"("maildir:@DIR@/bulletins")"},
    {"pop3.bulletin_db", R"("@DIR@/bulletins.sqlite")"},
    {"pop3.undelete", "true"},
    {"pop3.xtnd_xlist", "false"},
    {"pop3.xtnd_xmit", "true"},
    {"pop3.xmit_command", R"(["/usr/sbin/sendmail", "-oi"])"},
    {"pop3.xmit_max_size", "65536"},
    {"pop3.uidl_format", R"("%08Xu%08Xv")"},
    {"pop3.acl", R"(["deny 192.0.2.0/24", "allow any"])"},
    {"log.level", R"("warning")"},
    {"log.target", R"("stderr")"},
    {"log.syslog_ident", R"("pop3-sample")"},
    {"log.trace_file", R"("@DIR@/trace")"},
    {"log.telemetry_dir", R"("@DIR@/telemetry")"},
});

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) {
    row[j] = j;
  }
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// "unknown key", plus the closest spelling in this table or where the key really belongs.
// A one-letter slip within the table ("group" in [tls], which has "groups") is the likelier
// mistake than a key put in the wrong table, so it is suggested first.
std::string unknown_key_message(std::string_view table, std::string_view key) {
  std::string msg = "unknown key";
  std::string_view best;
  std::size_t best_distance = 3;  // suggest only close misspellings
  for (const auto& r : key_rules) {
    if (r.table != table) {
      continue;
    }
    std::size_t d = edit_distance(key, r.key);
    if (d < best_distance) {
      best_distance = d;
      best = r.key;
    }
  }
  if (best_distance > 1) {
    for (const auto& r : key_rules) {
      if (r.key == key) {
        return msg + "; " + std::string(key) + " belongs in [" + std::string(r.table) + "]";
      }
    }
  }
  if (!best.empty()) {
    msg += "; did you mean " + std::string(best) + "?";
  }
  return msg;
}

void check_table(checker& chk, std::string_view table_name, const toml::table& tbl, config& cfg) {
  for (auto&& [k, v] : tbl) {
    std::string dotted = std::string(table_name) + "." + std::string(k.str());
    const key_rule* rule = nullptr;
    for (const auto& r : key_rules) {
      if (r.table == table_name && r.key == k.str()) {
        rule = &r;
        break;
      }
    }
    if (rule == nullptr) {
      chk.fail(k.source(), dotted, unknown_key_message(table_name, k.str()));
      continue;
    }
    rule->set(item{chk, v, std::move(dotted)}, cfg);
  }
}

void check_root(checker& chk, const toml::table& root, config& cfg) {
  for (auto&& [k, v] : root) {
    std::string_view name = k.str();
    bool known = std::find(table_names.begin(), table_names.end(), name) != table_names.end();
    if (!known) {
      auto rule = std::find_if(key_rules.begin(), key_rules.end(),
                               [&](const key_rule& r) { return r.key == name; });
      if (rule != key_rules.end()) {
        chk.fail(k.source(), name,
                 "unknown top-level key; " + std::string(name) + " belongs in [" +
                     std::string(rule->table) + "]");
      } else if (v.is_table()) {
        chk.fail(k.source(), name,
                 "unknown table; the tables are [server], [mail], [auth], [tls], [pop3] and [log]");
      } else {
        chk.fail(
            k.source(), name,
            "unknown top-level key; settings go inside [server], [mail], [auth], [tls], [pop3] or [log]");
      }
      continue;
    }
    const auto* tbl = v.as_table();
    if (tbl == nullptr) {
      chk.fail(k.source(), name,
               "must be a table ([" + std::string(name) + "]), not " + std::string(type_name(v)));
      continue;
    }
    check_table(chk, name, *tbl, cfg);
    if (name == "server" && tbl->contains("listener") && !tbl->contains("listen")) {
      cfg.listen.clear();  // [[server.listener]] replaces the default listen addresses
    }
    const auto* listen = name == "server" ? tbl->get("listen") : nullptr;
    if (listen != nullptr && cfg.listen.empty() && cfg.tls_listen.empty() &&
        cfg.listeners.empty()) {
      chk.fail(listen->source(), "server.listen",
               "must list at least one address (or set tls_listen or a [[server.listener]])");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Printing

// A TOML basic string. Strings that came from parse_config are valid UTF-8 and print back
// unchanged; control characters are escaped.
std::string toml_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (u < 0x20 || u == 0x7F) {
          static constexpr char hex[] = "0123456789ABCDEF";
          out += "\\u00";
          out += hex[u >> 4];
          out += hex[u & 0xF];
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

// The largest unit that represents `d` exactly: "1h", "10m", "30s", "500ms".
std::string format_duration(std::chrono::milliseconds d) {
  auto ms = d.count();
  if (ms != 0 && ms % 3'600'000 == 0) {
    return "\"" + std::to_string(ms / 3'600'000) + "h\"";
  }
  if (ms != 0 && ms % 60'000 == 0) {
    return "\"" + std::to_string(ms / 60'000) + "m\"";
  }
  if (ms % 1000 == 0) {
    return "\"" + std::to_string(ms / 1000) + "s\"";
  }
  return "\"" + std::to_string(ms) + "ms\"";
}

// No address bound twice (SO_REUSEPORT would let both succeed and split the connections
// between them) and no FileDescriptorName used twice.
result<void> check_listeners(const config& cfg, const std::string& name) {
  std::set<std::pair<std::string, std::uint16_t>> seen;
  std::set<std::string> names;
  auto specs = listener_specs(cfg);
  if (specs.empty()) {
    return error(
        errc::invalid,
        name + ": no listener: set server.listen, server.tls_listen or a [[server.listener]]");
  }
  for (const auto& spec : specs) {
    if (spec.port != 0 && !seen.emplace(spec.host, spec.port).second) {
      return error(
          errc::invalid,
          name + ": " + format_listen({spec.host, spec.port}) +
              " is listed twice among server.listen, server.tls_listen and [[server.listener]]");
    }
    if (spec.options.proxy_protocol && cfg.proxy_trusted_networks.empty()) {
      return error(errc::invalid,
                   name + ": [[server.listener]] " + format_listen({spec.host, spec.port}) +
                       " has proxy_protocol = true but server.proxy_trusted_networks is empty: "
                       "list the front ends' addresses there");
    }
    if (!spec.name.empty() && !names.insert(spec.name).second) {
      return error(errc::invalid,
                   name + ": [[server.listener]] name \"" + spec.name + "\" is used twice");
    }
  }
  return {};
}

// Checks that need more than one key.
result<void> check_combinations(const config& cfg, const std::string& name) {
  auto fail = [&](const std::string& msg) { return error(errc::invalid, name + ": " + msg); };
  if (cfg.tls_cert.empty() != cfg.tls_key.empty()) {
    return fail("tls.cert and tls.key must be set together");
  }
  POSTERN_TRY(check_listeners(cfg, name));
  if (cfg.tls_cert.empty()) {
    if (!cfg.tls_listen.empty()) {
      return fail("server.tls_listen needs tls.cert and tls.key");
    }
    for (const auto& l : cfg.listeners) {
      if (l.implicit_tls) {
        return fail("[[server.listener]] " + format_listen(l.address) +
                    " with tls = \"implicit\" needs tls.cert and tls.key");
      }
    }
    if (cfg.tls == tls_mode::required || cfg.tls == tls_mode::connection) {
      return fail(std::string("tls.mode = \"") +
                  (cfg.tls == tls_mode::required ? "required" : "connection") +
                  "\" needs tls.cert and tls.key");
    }
    if (!cfg.tls_client_ca.empty() || !cfg.tls_chain.empty()) {
      return fail("tls.chain and tls.client_ca need tls.cert and tls.key");
    }
  }
  if (cfg.processes != 1 && cfg.unix.model == process_model::fork) {
    return fail(
        "server.processes applies to event mode only; fork mode (server.process_model = "
        "\"fork\") runs one process per session, limited by server.max_children");
  }
  if (cfg.last_valid_uid != 0 && cfg.last_valid_uid < cfg.first_valid_uid) {
    return fail("auth.last_valid_uid (" + std::to_string(cfg.last_valid_uid) +
                ") is below auth.first_valid_uid (" + std::to_string(cfg.first_valid_uid) +
                "): no uid could own mail (0 = no upper limit)");
  }
  if (cfg.penalty_max.count() != 0 && cfg.penalty_max < cfg.penalty_initial) {
    return fail("auth.penalty_max (" + format_duration(cfg.penalty_max) +
                ") is below auth.penalty_initial (" + format_duration(cfg.penalty_initial) +
                "); set penalty_max = 0 to turn the penalty off");
  }
  if (cfg.penalty_max.count() != 0 && cfg.penalty_file.empty()) {
    return fail(
        "auth.penalty_file must name a file (--inetd keeps the penalty there), or set auth.penalty_max = 0");
  }
  bool has_external =
      std::find(cfg.mechanisms.begin(), cfg.mechanisms.end(), "EXTERNAL") != cfg.mechanisms.end();
  if (has_external && cfg.tls_client_ca.empty()) {
    return fail(
        "auth.mechanisms lists EXTERNAL, which needs tls.client_ca to verify client certificates");
  }
  return {};
}

}  // namespace

const char* to_string(log_level l) noexcept {
  for (const auto& [name, value] : level_names) {
    if (value == l) {
      return name.data();
    }
  }
  return "info";
}

result<config> parse_config(std::string_view text, const std::string& name) {
  try {
    toml::table root = toml::parse(text, name);
    config cfg;
    cfg.source_path = name;
    checker chk(name);
    check_root(chk, root, cfg);
    if (chk.has_problem()) {
      return error(errc::invalid, chk.first());
    }
    if (auto r = check_combinations(cfg, name); !r) {
      return std::move(r).err();
    }
    return cfg;
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    return error(errc::invalid, name + ":" + std::to_string(where.line) + ":" +
                                    std::to_string(where.column) + ": " +
                                    std::string(e.description()));
  } catch (const std::bad_alloc&) {
    return error(errc::temporary, name + ": out of memory while parsing",
                 std::make_error_code(std::errc::not_enough_memory));
  } catch (const std::exception& e) {
    return error(errc::invalid, name + ": " + e.what());
  }
}

result<config> load_config(const std::string& path) {
  auto fail = [&](int err) {
    errc code = (err == ENOENT || err == ENOTDIR) ? errc::not_found : errc::temporary;
    return error::from_errno(err, path, code);
  };
  unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) {
    return fail(errno);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return fail(errno);
  }
  if (S_ISDIR(st.st_mode)) {
    return fail(EISDIR);
  }
  read_outcome got = read_to_end(fd.get(), max_config_bytes);
  if (got.err != 0) {
    return fail(got.err);
  }
  if (got.too_large) {
    return error(errc::invalid, path + ": larger than 1 MiB; is this the right file?");
  }
  return parse_config(got.data, path);
}

std::string format_config(const config& cfg) {
  std::string out;
  if (!cfg.source_path.empty()) {
    std::string src;
    for (char c : cfg.source_path) {
      auto u = static_cast<unsigned char>(c);
      src += (u < 0x20 || u == 0x7F) ? '?' : c;
    }
    out += "# Effective configuration, read from " + src + "\n";
  }
  auto line = [&](std::string_view key, const std::string& value) {
    out += std::string(key) + " = " + value + "\n";
  };
  auto number = [](std::uint32_t v) { return std::to_string(v); };

  out += "[server]\n";
  std::string listen = "[";
  for (std::size_t i = 0; i < cfg.listen.size(); ++i) {
    listen += (i == 0 ? "" : ", ") + toml_string(format_listen(cfg.listen[i]));
  }
  listen += "]";
  line("listen", listen);
  line("user", toml_string(cfg.user));
  line("group", toml_string(cfg.group));
  line("max_connections", number(cfg.max_connections));
  line("max_connections_per_ip", number(cfg.max_connections_per_ip));
  line("idle_timeout", format_duration(cfg.idle_timeout));
  line("login_timeout", format_duration(cfg.login_timeout));
  line("threads", number(cfg.threads));
  line("processes", cfg.processes == 0 ? std::string("\"auto\"") : number(cfg.processes));
  line("max_bad_commands", number(cfg.max_bad_commands));
  line("implementation_capability", cfg.implementation_capability ? "true" : "false");
  line("greeting", toml_string(cfg.greeting));
  std::string tls_listen = "[";
  for (std::size_t i = 0; i < cfg.tls_listen.size(); ++i) {
    tls_listen += (i == 0 ? "" : ", ") + toml_string(format_listen(cfg.tls_listen[i]));
  }
  tls_listen += "]";
  line("tls_listen", tls_listen);
  std::string proxy_nets = "[";
  for (std::size_t i = 0; i < cfg.proxy_trusted_networks.size(); ++i) {
    proxy_nets += (i == 0 ? "" : ", ") + toml_string(cfg.proxy_trusted_networks[i]);
  }
  line("proxy_trusted_networks", proxy_nets + "]");
  line("process_model", toml_string(cfg.unix.model == process_model::fork ? "fork" : "event"));
  line("max_children", number(cfg.unix.max_children));
  line("min_connection_interval", format_duration(cfg.unix.min_connection_interval));
  line("listen_backlog", number(cfg.unix.listen_backlog));
  line("address_family", toml_string(cfg.unix.family == address_family::ipv4   ? "ipv4"
                                     : cfg.unix.family == address_family::ipv6 ? "ipv6"
                                                                               : "any"));
  line("login_user", toml_string(cfg.unix.login_user));
  line("login_chroot", toml_string(cfg.unix.login_chroot));
  line("shutdown_grace", format_duration(cfg.unix.shutdown_grace));
  line("tcp_wrappers", cfg.unix.tcp_wrappers ? "true" : "false");
  line("tcp_wrappers_daemon", toml_string(cfg.unix.tcp_wrappers_daemon));
  line("hosts_allow", toml_string(cfg.unix.hosts_allow));
  line("hosts_deny", toml_string(cfg.unix.hosts_deny));

  out += "\n[mail]\n";
  line("location", toml_string(cfg.mail_location));
  std::string locking = "[";
  for (std::size_t i = 0; i < cfg.mbox_locking.size(); ++i) {
    locking += (i == 0 ? "" : ", ") + toml_string(cfg.mbox_locking[i]);
  }
  line("mbox_locking", locking + "]");
  line("mbox_lock_timeout", format_duration(cfg.mbox_lock_timeout));
  line("mbox_quoting", toml_string(cfg.mbox_quoting));
  line("mbox_content_length", cfg.mbox_content_length ? "true" : "false");
  line("mbox_x_uidl", cfg.mbox_x_uidl ? "true" : "false");
  line("mbox_state_dir", toml_string(cfg.mbox_state_dir));
  line("mbox_dotlock_stale_age", format_duration(cfg.mbox_dotlock_stale_age));
  line("mbox_startup_recovery_timeout", format_duration(cfg.mbox_startup_recovery_timeout));
  line("privileged_group", toml_string(cfg.unix.privileged_group));

  out += "\n[auth]\n";
  line("passdb", toml_string(cfg.passdb));
  line("failure_delay", format_duration(cfg.failure_delay));
  line("penalty_initial", format_duration(cfg.penalty_initial));
  line("penalty_max", format_duration(cfg.penalty_max));
  std::string exempt = "[";
  for (std::size_t i = 0; i < cfg.penalty_exempt_networks.size(); ++i) {
    exempt += (i == 0 ? "" : ", ") + toml_string(cfg.penalty_exempt_networks[i]);
  }
  line("penalty_exempt_networks", exempt + "]");
  line("penalty_file", toml_string(cfg.penalty_file));
  line("pam_service", toml_string(cfg.unix.pam_service));
  line("pam_account_check", cfg.unix.pam_account_check ? "true" : "false");
  line("worker_threads", number(cfg.worker_threads));
  std::string mechs = "[";
  for (std::size_t i = 0; i < cfg.mechanisms.size(); ++i) {
    mechs += (i == 0 ? "" : ", ") + toml_string(cfg.mechanisms[i]);
  }
  line("mechanisms", mechs + "]");
  line("disable_plaintext_auth", cfg.disable_plaintext_auth ? "true" : "false");
  line("loopback_is_secure", cfg.loopback_is_secure ? "true" : "false");
  std::string nets = "[";
  for (std::size_t i = 0; i < cfg.trusted_networks.size(); ++i) {
    nets += (i == 0 ? "" : ", ") + toml_string(cfg.trusted_networks[i]);
  }
  line("trusted_networks", nets + "]");
  line("apop", cfg.apop ? "true" : "false");
  line("gssapi_keytab", toml_string(cfg.gssapi_keytab));
  line("gssapi_service", toml_string(cfg.gssapi_service));
  line("gssapi_hostname", toml_string(cfg.gssapi_hostname));
  line("external_user", toml_string(cfg.external_user));
  line("first_valid_uid", number(cfg.first_valid_uid));
  line("last_valid_uid", number(cfg.last_valid_uid));

  out += "\n[tls]\n";
  line("cert", toml_string(cfg.tls_cert));
  line("key", toml_string(cfg.tls_key));
  line("chain", toml_string(cfg.tls_chain));
  std::string mode_name = "ondemand";
  for (const auto& [n, v] : tls_mode_names) {
    if (v == cfg.tls) {
      mode_name = n;
    }
  }
  line("mode", toml_string(mode_name));
  line("min_version", toml_string(cfg.tls_min_version));
  line("ciphers", toml_string(cfg.tls_ciphers));
  line("ciphersuites", toml_string(cfg.tls_ciphersuites));
  line("groups", toml_string(cfg.tls_groups));
  line("client_ca", toml_string(cfg.tls_client_ca));

  out += "\n[pop3]\n";
  line("login_delay", format_duration(cfg.login_delay));
  line("stat_file", toml_string(cfg.stat_file));
  line("expire", cfg.expire_days < 0 ? std::string("\"never\"") : std::to_string(cfg.expire_days));
  line("delete_expired", cfg.delete_expired ? "true" : "false");
  line("bulletin_source", toml_string(cfg.bulletin_source));
  line("bulletin_db", toml_string(cfg.bulletin_db));
  line("undelete", cfg.undelete ? "true" : "false");
  line("xtnd_xlist", cfg.xtnd_xlist ? "true" : "false");
  line("xtnd_xmit", cfg.xtnd_xmit ? "true" : "false");
  auto list = [&](const std::vector<std::string>& v) {
    std::string r = "[";
    for (std::size_t i = 0; i < v.size(); ++i) {
      r += (i == 0 ? "" : ", ") + toml_string(v[i]);
    }
    return r + "]";
  };
  line("xmit_command", list(cfg.xmit_command));
  line("xmit_max_size", number(cfg.xmit_max_size));
  line("uidl_format", toml_string(cfg.uidl_format));
  line("dovecot_lock_session", cfg.dovecot_lock_session ? "true" : "false");
  line("acl", list(cfg.acl));

  out += "\n[log]\n";
  line("level", toml_string(to_string(cfg.level)));
  line("target", toml_string(to_string(cfg.target)));
  line("syslog_ident", toml_string(cfg.syslog_ident));
  line("trace_file", toml_string(cfg.trace_file));
  line("telemetry_dir", toml_string(cfg.telemetry_dir));
  for (const auto& l : cfg.listeners) {
    out += "\n[[server.listener]]\n";
    line("address", toml_string(format_listen(l.address)));
    line("tls", l.implicit_tls ? "\"implicit\"" : "\"none\"");
    line("proxy_protocol", l.proxy_protocol ? "true" : "false");
    if (!l.name.empty()) {
      line("name", toml_string(l.name));
    }
  }
  return out;
}

std::vector<config_key> config_keys() {
  std::vector<config_key> out;
  out.reserve(key_rules.size());
  for (const auto& r : key_rules) {
    std::string dotted = std::string(r.table) + "." + std::string(r.key);
    std::string_view sample;
    for (const auto& [name, value] : key_samples) {
      if (name == dotted) {
        sample = value;
      }
    }
    out.push_back({r.table, r.key, sample});
  }
  return out;
}

std::vector<net::listener_spec> listener_specs(const config& cfg) {
  std::vector<net::listener_spec> out;
  net::listener_options plain;
  plain.implicit_tls = cfg.tls == tls_mode::connection && !cfg.tls_cert.empty();
  for (const auto& a : cfg.listen) {
    out.push_back({a.host, a.port, plain, {}});
  }
  for (const auto& a : cfg.tls_listen) {
    out.push_back({a.host, a.port, {true, false}, {}});
  }
  for (const auto& l : cfg.listeners) {
    out.push_back({l.address.host, l.address.port, {l.implicit_tls, l.proxy_protocol}, l.name});
  }
  return out;
}

}  // namespace postern::server
