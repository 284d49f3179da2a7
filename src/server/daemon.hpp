// The process modes: the standalone event-driven daemon and the one-session inetd mode.
#pragma once

#include "server/config.hpp"

namespace postern::server {

// Binds every listener, drops privileges, serves until SIGTERM or SIGINT, then stops
// accepting, closes every session without deleting anything, and returns the exit status.
// Startup failures are printed as one line and return non-zero. With cfg.processes other
// than 1 this process becomes the master of that many worker processes (server/workers.hpp).
int run_daemon(const config& cfg);

// Serves exactly one session on stdin/stdout (inetd, xinetd, systemd socket activation with
// Accept=yes, a master process), then returns the exit status.
int run_inetd(const config& cfg);

}  // namespace postern::server
