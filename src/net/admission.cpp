#include "net/admission.hpp"

#include "common/log.hpp"
#include "net/access_control.hpp"
#include "net/proxy_protocol.hpp"
#include "pop3/limits.hpp"

#include <sys/socket.h>

#include <algorithm>
#include <chrono>

namespace postern::net {

std::string_view reason_name(refusal_reason r) {
  switch (r) {
    case refusal_reason::max_connections:
      return "max_connections";
    case refusal_reason::max_children:
      return "max_children";
    case refusal_reason::max_connections_per_ip:
      return "max_connections_per_ip";
    case refusal_reason::min_connection_interval:
      return "min_connection_interval";
    case refusal_reason::acl:
      return "acl";
    case refusal_reason::tcp_wrappers:
      return "tcp_wrappers";
    case refusal_reason::proxy_untrusted:
      return "proxy_untrusted";
    case refusal_reason::proxy_header:
      return "proxy_header";
  }
  return "refused";
}

std::string_view refusal_reply(refusal_reason r) {
  switch (r) {
    case refusal_reason::acl:
    case refusal_reason::tcp_wrappers:
      return "-ERR [SYS/PERM] Access denied.\r\n";
    case refusal_reason::proxy_untrusted:
    case refusal_reason::proxy_header:
      return {};
    default:
      return "-ERR [SYS/TEMP] Too many connections, try again later.\r\n";
  }
}

void log_refusal(const asio::ip::address& rip, refusal_reason r) {
  log::warning("connection refused: rip={}, reason={}", rip.to_string(), reason_name(r));
}

std::optional<refusal_reason> admit(const admission_policy& p, const asio::ip::address& addr,
                                    counted_connection& counted) {
  if (p.counter != nullptr) {
    connection_counter::refusal why{};
    if (!p.counter->acquire(addr, why)) {
      if (why == connection_counter::refusal::per_source) {
        return refusal_reason::max_connections_per_ip;
      }
      return p.total_is_max_children ? refusal_reason::max_children
                                     : refusal_reason::max_connections;
    }
    counted = counted_connection(p.counter, addr);
  }
  if (p.pacer != nullptr && !p.pacer->admit(addr, std::chrono::steady_clock::now())) {
    counted.reset();
    return refusal_reason::min_connection_interval;
  }
  if (p.access_list != nullptr && !p.access_list->allows(addr)) {
    counted.reset();
    return refusal_reason::acl;
  }
  return std::nullopt;
}

std::optional<refusal_reason> admit_wrappers(const admission_policy& p,
                                             const asio::ip::address& addr) {
  if (p.wrappers != nullptr && !p.wrappers->allowed(addr)) {
    return refusal_reason::tcp_wrappers;
  }
  return std::nullopt;
}

asio::awaitable<std::optional<refusal_reason>> async_admit_wrappers(const admission_policy& p,
                                                                    asio::thread_pool& pool,
                                                                    asio::ip::address addr) {
  // The co_await as a statement of its own: inside the condition, GCC 12 built this coroutine
  // into an endless loop.
  bool allowed = co_await async_allowed(*p.wrappers, pool, addr);
  std::optional<refusal_reason> refused;
  if (!allowed) {
    refused = refusal_reason::tcp_wrappers;
  }
  co_return refused;
}

namespace {

bool proxy_peer_trusted(const std::vector<network>& trusted, const asio::ip::address& peer) {
  return std::any_of(trusted.begin(), trusted.end(),
                     [&](const network& n) { return contains(n, peer); });
}

// A refused PROXY connection is closed with a FIN before the close: bytes it sent stay
// unread, and a close alone would answer them with a reset.
void end_refused(int fd) { ::shutdown(fd, SHUT_WR); }

std::optional<client_origin> origin_from(const result<proxy::header>& h,
                                         const asio::ip::address& peer) {
  if (!h) {
    log::warning("connection refused: rip={}, reason={}, error={}", peer.to_string(),
                 reason_name(refusal_reason::proxy_header), h.err().message());
    return std::nullopt;
  }
  if (h->local) {
    return client_origin{peer, false};
  }
  return client_origin{canonical_address(h->source.address()), h->client_tls};
}

constexpr std::chrono::milliseconds header_timeout = pop3::limits::proxy_header_timeout;

}  // namespace

asio::awaitable<std::optional<client_origin>> async_proxy_step(
    asio::ip::tcp::socket& socket, const asio::ip::address& peer,
    const std::vector<network>& trusted) {
  std::optional<client_origin> origin;
  if (!proxy_peer_trusted(trusted, peer)) {
    log_refusal(peer, refusal_reason::proxy_untrusted);
  } else {
    auto h = co_await proxy::async_read_header(socket, header_timeout);
    origin = origin_from(h, peer);
  }
  if (!origin) {
    end_refused(socket.native_handle());
  }
  co_return origin;
}

std::optional<client_origin> proxy_step(int fd, const asio::ip::address& peer,
                                        const std::vector<network>& trusted) {
  std::optional<client_origin> origin;
  if (!proxy_peer_trusted(trusted, peer)) {
    log_refusal(peer, refusal_reason::proxy_untrusted);
  } else {
    origin = origin_from(proxy::read_header(fd, header_timeout), peer);
  }
  if (!origin) {
    end_refused(fd);
  }
  return origin;
}

}  // namespace postern::net
