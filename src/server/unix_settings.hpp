// The classic Unix setup's settings (system users, PAM, fork mode with privilege separation,
// TCP wrappers) as the process modes use them; the keys themselves are parsed with the rest of
// the configuration (server::unix_settings in config.hpp).
#pragma once

#include "common/result.hpp"
#include "server/config.hpp"

#include <chrono>
#include <cstdint>
#include <string>

namespace postern::server {

result<unix_settings> unix_settings_from(const config& cfg);


// Keeps only the listen addresses of `family` in cfg.listen and cfg.tls_listen. Errors
// (errc::invalid) when no plain listener is left.
result<void> apply_address_family(config& cfg, address_family family);

}  // namespace postern::server
