#include "net/access_control.hpp"

#include "net/source_limits.hpp"

#include <asio/dispatch.hpp>
#include <asio/post.hpp>
#include <asio/use_awaitable.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <syslog.h>
#include <tcpd.h>

#include <cstring>
#include <mutex>
#include <vector>

// libwrap logs refusals it decides by itself (option "deny" etc.) at these levels; the
// declarations in tcpd.h are weak, so the program must define them.
int allow_severity = LOG_INFO;
int deny_severity = LOG_WARNING;

namespace postern::net {
namespace {

std::mutex& wrap_mutex() {
  static std::mutex mu;
  return mu;
}

// A mutable NUL-terminated copy: libwrap's API takes char*.
std::vector<char> c_buffer(const std::string& s) {
  std::vector<char> v(s.begin(), s.end());
  v.push_back('\0');
  return v;
}

}  // namespace

bool tcp_wrappers::allowed(const asio::ip::address& client_in) const {
  auto client = canonical_address(client_in);
  sockaddr_storage ss{};
  if (client.is_v4()) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    auto b = client.to_v4().to_bytes();
    std::memcpy(&sin->sin_addr, b.data(), b.size());
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    sin6->sin6_family = AF_INET6;
    auto b = client.to_v6().to_bytes();
    std::memcpy(&sin6->sin6_addr, b.data(), b.size());
  }
  auto addr = c_buffer(client.to_string());
  auto daemon = c_buffer(s_.daemon);
  auto user = c_buffer(STRING_UNKNOWN);
  auto allow = c_buffer(s_.allow_table);
  auto deny = c_buffer(s_.deny_table);

  std::lock_guard<std::mutex> lock(wrap_mutex());
  char* saved_allow = hosts_allow_table;
  char* saved_deny = hosts_deny_table;
  if (!s_.allow_table.empty()) {
    hosts_allow_table = allow.data();
  }
  if (!s_.deny_table.empty()) {
    hosts_deny_table = deny.data();
  }
  request_info req{};
  // RQ_CLIENT_NAME = the address and RQ_USER set: eval_hostname()/eval_user() return these
  // as they are instead of calling the lookup functions that sock_host() would install (we
  // never call it). RQ_CLIENT_SIN lets "[v6addr]/prefix" patterns match.
  request_init(&req, RQ_DAEMON, daemon.data(), RQ_CLIENT_ADDR, addr.data(), RQ_CLIENT_NAME,
               addr.data(), RQ_CLIENT_SIN, reinterpret_cast<sockaddr*>(&ss), RQ_USER, user.data(),
               0);
  bool ok = hosts_access(&req) != 0;
  hosts_allow_table = saved_allow;
  hosts_deny_table = saved_deny;
  return ok;
}

asio::awaitable<bool> async_allowed(const tcp_wrappers& w, asio::thread_pool& pool,
                                    asio::ip::address client) {
  bool ok = false;
  co_await asio::async_initiate<decltype(asio::use_awaitable), void()>(
      [&](auto handler) {
        asio::post(pool, [&, handler = std::move(handler)]() mutable {
          ok = w.allowed(client);
          auto ex = asio::get_associated_executor(handler);
          asio::dispatch(ex, std::move(handler));
        });
      },
      asio::use_awaitable);
  co_return ok;
}

}  // namespace postern::net
