// Listener sources, written once for every process mode: sockets bound from the configured
// listeners, or sockets inherited from systemd (socket activation) told apart by their
// FileDescriptorName. Event mode with one or N processes and fork mode all call
// open_listeners(); inetd mode has no listener (its connection is stdin).
//
// Runs at startup only, as root (binding a port below 1024), before any fork().
#pragma once

#include "common/result.hpp"
#include "common/unique_fd.hpp"

#include <asio/ip/address.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace postern::net {

// What a listener's connections get besides their bytes.
struct listener_options {
  bool implicit_tls = false;    // TLS from the first byte (pop3s)
  bool proxy_protocol = false;  // a PROXY header (v1 or v2) precedes the client's bytes
};

// One configured listener: `listen`, `tls_listen` or a `[[server.listener]]` table.
struct listener_spec {
  std::string host;        // numeric IPv4 or IPv6, no brackets
  std::uint16_t port = 0;  // 0: the kernel picks one (tests)
  listener_options options;
  std::string name;  // the systemd FileDescriptorName it stands for; "" = none
};

// A socket handed over by the service manager, with its FileDescriptorName.
struct inherited_listener {
  unique_fd fd;
  std::string name;
};

// A listening socket ready for accept(): non-blocking, close-on-exec.
struct listening_socket {
  unique_fd fd;
  int family = 0;  // AF_INET or AF_INET6
  listener_options options;
  std::string where;  // "127.0.0.1:110" or "[::1]:995" (as bound), for logs
};

// The options of an inherited socket named `name`: those of the listener_spec with that name
// when there is one; else implicit TLS for "pop3s" and "pop3s-*", and `plain` (what
// `listen` addresses get) for every other name ("pop3", systemd's "unknown", ...).
listener_options options_for_name(const std::vector<listener_spec>& specs, const std::string& name,
                                  const listener_options& plain);

// `copies` sets of listening sockets, one per consumer (an I/O thread of a process). Without
// inherited sockets each spec is bound `copies` times into one SO_REUSEPORT group, so the
// kernel spreads connections over the consumers. With inherited sockets (systemd) nothing is
// bound: each inherited socket is shared by every consumer (duplicated descriptors of one
// socket, which SO_REUSEPORT cannot multiply), with options_for_name(). Every socket is logged ("listening on ...").
result<std::vector<std::vector<listening_socket>>> open_listeners(
    const std::vector<listener_spec>& specs, std::vector<inherited_listener> inherited,
    const listener_options& plain, std::size_t copies, int backlog);

// inetd mode's listener source: the one connection on stdin.
struct stdin_connection {
  bool is_tcp = false;  // a TCP socket (else pipes or a UNIX socket: no address)
  bool v6 = false;
  asio::ip::address peer;    // canonical form; unspecified when not TCP
  listener_options options;  // of the listener stdin was accepted on
};

// Looks at stdin: its peer, and the configured listener whose address and port it was
// accepted on (a wildcard host matches any address) for its options; `plain` when none
// matches. Two syscalls (getpeername, getsockname), once per process.
stdin_connection inspect_stdin(const std::vector<listener_spec>& specs,
                               const listener_options& plain);

}  // namespace postern::net
