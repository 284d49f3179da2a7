// The classic Unix setup's settings (system users, PAM, fork mode with privilege separation,
// TCP wrappers) as the process modes use them; the keys themselves are parsed with the rest of
// the configuration (server::unix_settings in config.hpp).
#pragma once

#include "auth/system_users.hpp"
#include "common/result.hpp"
#include "server/config.hpp"

#include <chrono>
#include <cstdint>
#include <string>

namespace postern::server {

result<unix_settings> unix_settings_from(const config& cfg);

// The mail owner uid range of cfg ([auth] first_valid_uid, last_valid_uid), without a pre-auth uid.
auth::mail_owner_rules mail_owner_rules_of(const config& cfg);

// Event and inetd modes (us.model == event) run every session in one process, whose uid owns
// every maildrop. Errors (errc::invalid, naming the setting to change) when that uid would be
// root (started as root without server.user, or server.user is root), its group would be
// gid 0, or the uid is outside the mail owner range. Fork mode: always ok (it checks each
// mail owner at login). Resolves server.user and server.group with NSS.
result<void> check_store_identity(const config& cfg, const unix_settings& us);

// The same rule for the identity this process has now (after drop_privileges()).
result<void> check_running_identity(const config& cfg);

// Keeps only the listen addresses of `family` in cfg.listen and cfg.tls_listen. Errors
// (errc::invalid) when no plain listener is left.
result<void> apply_address_family(config& cfg, address_family family);

}  // namespace postern::server
