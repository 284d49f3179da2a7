// Settings of the classic Unix setup (system users, PAM, fork mode with privilege separation,
// TCP wrappers), with their defaults.
//
// INTERIM: these keys are not in server::config yet (config.cpp is being changed elsewhere;
// docs/unix.md lists the keys and rules to add). Until they are, unix_settings_from() takes
// the defaults below and, when the environment variable POSTERN_UNIX_CONFIG names a file,
// reads these keys from that TOML file (same tables and key names as they will have in
// postern.toml; unknown keys and bad values are errors). Once config.cpp carries the keys,
// unix_settings_from() copies them from `config` and the environment variable goes away.
//
// Immutable once built; read from any thread.
#pragma once

#include "common/result.hpp"
#include "server/config.hpp"

#include <chrono>
#include <cstdint>
#include <string>

namespace postern::server {

enum class process_model { event, fork };
enum class address_family { any, ipv4, ipv6 };

struct unix_settings {
  // [server]
  process_model model = process_model::event;         // process_model = "event" | "fork"
  std::uint32_t max_children = 500;                   // fork mode: sessions at once (popa3d)
  std::chrono::milliseconds min_connection_interval{0};  // per source; 0 = off
  std::uint32_t listen_backlog = 128;
  address_family family = address_family::any;       // address_family = "any"|"ipv4"|"ipv6"
  std::string login_user;    // pre-auth user; "" = "postern" if it exists, else "nobody"
  std::string login_chroot;  // pre-auth root; "" = /run/postern/empty (created 0555 root)
  std::chrono::seconds shutdown_grace{10};           // SIGTERM: then SIGKILL what is left
  bool tcp_wrappers = false;
  std::string tcp_wrappers_daemon = "posternd";
  std::string hosts_allow;  // "" = /etc/hosts.allow
  std::string hosts_deny;   // "" = /etc/hosts.deny
  // [auth]
  std::string passdb;            // "" = config's auth.passdb; "pam" selects PAM
  std::string pam_service = "pop3";
  bool pam_account_check = true;
  // [mail]
  std::string privileged_group = "mail";  // fork mode: kept by the session for /var/mail locks

  std::string effective_passdb(const config& cfg) const { return passdb.empty() ? cfg.passdb : passdb; }
};

// The settings for `cfg` (see above). Errors: errc::invalid naming the file, key and reason.
// The result is computed once per process and cached.
result<unix_settings> unix_settings_from(const config& cfg);

// Parses the interim settings file text (for tests). `name` is used in messages.
result<unix_settings> parse_unix_settings(std::string_view text, const std::string& name);

// Keeps only the listen addresses of `family` in cfg.listen and cfg.tls_listen. Errors
// (errc::invalid) when no plain listener is left.
result<void> apply_address_family(config& cfg, address_family family);

}  // namespace postern::server
