// The admission step of the accept pipeline, written once for every process mode: what a new
// connection must pass before the session starts, checked against the client's address (the
// PROXY header's source on a PROXY listener, else the peer's).
//
//   listener -> [PROXY header] -> count (max_connections, max_connections_per_ip)
//            -> pace (min_connection_interval) -> ACL -> TCP wrappers -> transport
//
// A refused connection gets one log line, `connection refused: rip=ADDR, reason=NAME`, and
// one -ERR line (none for the PROXY refusals, which close before any byte is sent).
#pragma once

#include "net/acl.hpp"
#include "net/network.hpp"
#include "net/source_limits.hpp"

#include <asio/awaitable.hpp>
#include <asio/ip/address.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/thread_pool.hpp>

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace postern::net {

class tcp_wrappers;

enum class refusal_reason {
  max_connections,
  max_children,  // fork mode's name for its total limit
  max_connections_per_ip,
  min_connection_interval,
  acl,
  tcp_wrappers,
  proxy_untrusted,  // a PROXY listener's peer outside server.proxy_trusted_networks
  proxy_header,     // a trusted peer sent no PROXY header, or a malformed one, in time
};

// The reason= of the log line.
std::string_view reason_name(refusal_reason r);
// The line a refused client gets; empty: the connection is closed without a byte.
std::string_view refusal_reply(refusal_reason r);
// "connection refused: rip=ADDR, reason=NAME", as a warning.
void log_refusal(const asio::ip::address& rip, refusal_reason r);

// What a process checks; every pointer may be null (that check is off). Read-only once built.
struct admission_policy {
  connection_counter* counter = nullptr;
  bool total_is_max_children = false;  // fork mode: the total is max_children (logged so)
  connection_pacer* pacer = nullptr;   // server.min_connection_interval
  const acl* access_list = nullptr;    // pop3.acl
  const tcp_wrappers* wrappers = nullptr;
};

// The limits, the pacer and the ACL for a connection from `addr`: cheap, never blocks. On
// success `counted` holds the count until the session ends.
std::optional<refusal_reason> admit(const admission_policy& p, const asio::ip::address& addr,
                                    counted_connection& counted);

// TCP wrappers, which read files: the blocking form is for a process serving one connection
// (fork and inetd modes), the async form runs them on `pool`. Call only when p.wrappers is set.
std::optional<refusal_reason> admit_wrappers(const admission_policy& p,
                                             const asio::ip::address& addr);
asio::awaitable<std::optional<refusal_reason>> async_admit_wrappers(const admission_policy& p,
                                                                    asio::thread_pool& pool,
                                                                    asio::ip::address addr);

// Where a connection comes from, as every later step sees it.
struct client_origin {
  asio::ip::address address;  // the PROXY header's source, else the peer (canonical form)
  bool client_tls = false;    // a PROXY v2 SSL TLV: the client spoke TLS to the front end
};

// The PROXY step of a PROXY listener, between the listener and admission: refuses a peer
// outside `trusted` before reading a byte, then reads the header within
// pop3::limits::proxy_header_timeout. A LOCAL or UNKNOWN header (a front end's health check)
// keeps the peer's address. nullopt: refused, logged (reason proxy_untrusted or proxy_header),
// nothing sent; the caller closes the connection.
asio::awaitable<std::optional<client_origin>> async_proxy_step(asio::ip::tcp::socket& socket,
                                                               const asio::ip::address& peer,
                                                               const std::vector<network>& trusted);
// The same on a connected descriptor (fork and inetd modes); blocks at most the timeout.
std::optional<client_origin> proxy_step(int fd, const asio::ip::address& peer,
                                        const std::vector<network>& trusted);

}  // namespace postern::net
