// Fork mode (process_model = "fork", posternd --daemon[=N]) and --inetd for system users:
// one privilege-separated process pair per connection (see privsep.hpp). This file runs as
// root.
//
// The master takes its listeners from net::open_listeners (bound, or systemd's), then
// accepts in a single-threaded poll loop and forks one supervisor per connection. Before
// forking it admits the connection (net::admit): at most max_children sessions at once (and
// server.max_connections), at most server.max_connections_per_ip from one address, no two
// connections from one address closer together than min_connection_interval, and pop3.acl;
// a refused client gets one -ERR line and a log line. On a PROXY listener the supervisor reads
// the header and the master admits the address it names (over a socket pair) before the
// session starts. The supervisor checks TCP wrappers before it forks the pre-auth process. The
// master never parses POP3 and holds no password database.
//
// Signals (blocked, read from a signalfd in the poll loop): SIGCHLD reaps children; SIGHUP
// reloads the TLS certificate (new connections get it); SIGTERM/SIGINT close the listeners
// and send SIGTERM to every session's process group (a session stops without committing, so
// nothing is deleted), wait up to shutdown_grace, SIGKILL what is left and exit 0.
#pragma once

#include "server/config.hpp"
#include "server/unix_settings.hpp"

namespace postern::server {

// Serves until SIGTERM/SIGINT; returns the exit status. Startup failures print one line.
int run_fork_daemon(const config& cfg, const unix_settings& us);

// --inetd with process_model = "fork": this process is the supervisor of the one connection
// on stdin/stdout.
int run_privsep_inetd(const config& cfg, const unix_settings& us);

}  // namespace postern::server
