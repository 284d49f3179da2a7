#include "server/unix_settings.hpp"

#include "common/parse.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>

namespace postern::server {
namespace {

bool plain_name(std::string_view s) {
  return !s.empty() && s.size() <= 64 && s.front() != '-' &&
         std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_' || c == '.';
         });
}

bool absolute_path(std::string_view s) {
  return !s.empty() && s.front() == '/' &&
         std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x20 && c != 0x7F; });
}

std::optional<std::chrono::milliseconds> duration_of(const toml::node& n) {
  if (const auto* i = n.as_integer()) {
    if (i->get() < 0 || i->get() > 86400) {
      return std::nullopt;
    }
    return std::chrono::milliseconds(i->get() * 1000);
  }
  const auto* s = n.as_string();
  if (s == nullptr) {
    return std::nullopt;
  }
  std::string_view t = s->get();
  std::size_t d = 0;
  while (d < t.size() && t[d] >= '0' && t[d] <= '9') {
    ++d;
  }
  auto v = parse_u64(t.substr(0, d));
  std::string_view unit = t.substr(d);
  std::int64_t scale = unit == "ms" ? 1 : unit == "s" ? 1000 : unit == "m" ? 60000 : unit == "h" ? 3600000 : 0;
  if (!v || scale == 0 || *v > 86'400'000ull / static_cast<std::uint64_t>(scale)) {
    return std::nullopt;
  }
  return std::chrono::milliseconds(static_cast<std::int64_t>(*v) * scale);
}

}  // namespace

result<unix_settings> parse_unix_settings(std::string_view text, const std::string& name) {
  unix_settings us;
  toml::table root;
  try {
    root = toml::parse(text, name);
  } catch (const toml::parse_error& e) {
    return error(errc::invalid, name + ":" + std::to_string(e.source().begin.line) + ": " +
                                    std::string(e.description()));
  }
  std::string problem;
  auto bad = [&](std::string_view table, std::string_view key, const toml::node& n, std::string why) {
    if (problem.empty()) {
      problem = name + ":" + std::to_string(n.source().begin.line) + ": " + std::string(table) +
                "." + std::string(key) + ": " + why;
    }
  };
  for (auto&& [tk, tv] : root) {
    std::string_view table = tk.str();
    const auto* tbl = tv.as_table();
    if (tbl == nullptr || (table != "server" && table != "auth" && table != "mail")) {
      bad(table, "", tv, "unknown table (expected [server], [auth] or [mail])");
      continue;
    }
    for (auto&& [kk, v] : *tbl) {
      std::string_view key = kk.str();
      auto str = [&]() -> std::optional<std::string> {
        if (const auto* s = v.as_string()) {
          return s->get();
        }
        bad(table, key, v, "expected a string");
        return std::nullopt;
      };
      auto boolean = [&]() -> std::optional<bool> {
        if (const auto* b = v.as_boolean()) {
          return b->get();
        }
        bad(table, key, v, "expected true or false");
        return std::nullopt;
      };
      auto number = [&](std::int64_t lo, std::int64_t hi) -> std::optional<std::uint32_t> {
        const auto* i = v.as_integer();
        if (i == nullptr || i->get() < lo || i->get() > hi) {
          bad(table, key, v, "expected an integer from " + std::to_string(lo) + " to " + std::to_string(hi));
          return std::nullopt;
        }
        return static_cast<std::uint32_t>(i->get());
      };
      std::string k = std::string(table) + "." + std::string(key);
      if (k == "server.process_model") {
        if (auto s = str()) {
          if (*s == "event") {
            us.model = process_model::event;
          } else if (*s == "fork") {
            us.model = process_model::fork;
          } else {
            bad(table, key, v, "must be \"event\" or \"fork\"");
          }
        }
      } else if (k == "server.max_children") {
        if (auto n = number(1, 100000)) us.max_children = *n;
      } else if (k == "server.min_connection_interval") {
        auto d = duration_of(v);
        if (!d || *d > std::chrono::hours(1)) {
          bad(table, key, v, "expected a duration up to 1h, such as \"2s\" or \"500ms\"");
        } else {
          us.min_connection_interval = *d;
        }
      } else if (k == "server.listen_backlog") {
        if (auto n = number(1, 65535)) us.listen_backlog = *n;
      } else if (k == "server.address_family") {
        if (auto s = str()) {
          if (*s == "any") {
            us.family = address_family::any;
          } else if (*s == "ipv4") {
            us.family = address_family::ipv4;
          } else if (*s == "ipv6") {
            us.family = address_family::ipv6;
          } else {
            bad(table, key, v, "must be \"any\", \"ipv4\" or \"ipv6\"");
          }
        }
      } else if (k == "server.login_user") {
        if (auto s = str()) {
          if (!plain_name(*s)) bad(table, key, v, "must be a user name");
          else us.login_user = *s;
        }
      } else if (k == "server.login_chroot") {
        if (auto s = str()) {
          if (!absolute_path(*s) || *s == "/") bad(table, key, v, "must be an absolute path other than /");
          else us.login_chroot = *s;
        }
      } else if (k == "server.shutdown_grace") {
        auto d = duration_of(v);
        if (!d || *d < std::chrono::seconds(1) || *d > std::chrono::minutes(10) || d->count() % 1000 != 0) {
          bad(table, key, v, "expected whole seconds from 1s to 10m");
        } else {
          us.shutdown_grace = std::chrono::duration_cast<std::chrono::seconds>(*d);
        }
      } else if (k == "server.tcp_wrappers") {
        if (auto b = boolean()) us.tcp_wrappers = *b;
      } else if (k == "server.tcp_wrappers_daemon") {
        if (auto s = str()) {
          if (!plain_name(*s)) bad(table, key, v, "must be a plain name such as \"posternd\"");
          else us.tcp_wrappers_daemon = *s;
        }
      } else if (k == "server.hosts_allow" || k == "server.hosts_deny") {
        if (auto s = str()) {
          if (!absolute_path(*s)) bad(table, key, v, "must be an absolute path");
          else (k == "server.hosts_allow" ? us.hosts_allow : us.hosts_deny) = *s;
        }
      } else if (k == "auth.passdb") {
        if (auto s = str()) {
          if (*s != "pam" && s->rfind("passwd-file:/", 0) != 0) {
            bad(table, key, v, "must be \"pam\" or \"passwd-file:/ABSOLUTE/PATH\"");
          } else {
            us.passdb = *s;
          }
        }
      } else if (k == "auth.pam_service") {
        if (auto s = str()) {
          if (!plain_name(*s) || *s == "." || *s == "..") bad(table, key, v, "must be a plain file name in /etc/pam.d");
          else us.pam_service = *s;
        }
      } else if (k == "auth.pam_account_check") {
        if (auto b = boolean()) us.pam_account_check = *b;
      } else if (k == "mail.privileged_group") {
        if (auto s = str()) {
          if (!s->empty() && !plain_name(*s)) bad(table, key, v, "must be a group name or \"\"");
          else us.privileged_group = *s;
        }
      } else {
        bad(table, key, v, "unknown key");
      }
    }
  }
  if (!problem.empty()) {
    return error(errc::invalid, problem);
  }
  return us;
}

result<unix_settings> unix_settings_from(const config& cfg) {
  (void)cfg;  // the keys move into config; see the header
  static std::mutex mu;
  static std::optional<result<unix_settings>> cached;
  std::lock_guard<std::mutex> lock(mu);
  if (cached) {
    return *cached;
  }
  const char* path = std::getenv("POSTERN_UNIX_CONFIG");
  if (path == nullptr || *path == '\0') {
    cached = unix_settings{};
    return *cached;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    cached = result<unix_settings>(error(errc::invalid, std::string(path) + ": cannot be read (POSTERN_UNIX_CONFIG)"));
    return *cached;
  }
  std::ostringstream text;
  text << in.rdbuf();
  cached = parse_unix_settings(text.str(), path);
  return *cached;
}

result<void> apply_address_family(config& cfg, address_family family) {
  if (family == address_family::any) {
    return {};
  }
  auto keep = [&](const listen_address& a) {
    bool v6 = a.host.find(':') != std::string::npos;
    return family == address_family::ipv6 ? v6 : !v6;
  };
  auto filter = [&](std::vector<listen_address>& list) {
    list.erase(std::remove_if(list.begin(), list.end(), [&](const listen_address& a) { return !keep(a); }),
               list.end());
  };
  filter(cfg.listen);
  filter(cfg.tls_listen);
  if (cfg.listen.empty()) {
    return error(errc::invalid, std::string("server.listen has no ") +
                                    (family == address_family::ipv6 ? "IPv6" : "IPv4") +
                                    " address for the chosen address family");
  }
  return {};
}

}  // namespace postern::server
