// TCP wrappers: hosts.allow / hosts.deny access control through libwrap (hosts_access(5)).
//
// The request libwrap sees is built from the numeric client address only: the client "name"
// is set to the address itself and the user to "unknown", and no socket is handed over, so
// hosts_access() never resolves a name (no DNS, no reverse lookups, no ident queries). Rules
// must therefore name addresses and networks ("192.0.2.0/255.255.255.0", "[2001:db8::]/32",
// "127.0.0.1", ALL), not host names: a host-name pattern matches only the literal address.
//
// The table paths are libwrap's globals hosts_allow_table / hosts_deny_table; they are set
// for each check, so tests and chroots can use their own files.
//
// Threading: libwrap keeps global state, so allowed() takes one process-wide mutex. It reads
// both tables on every call (blocking file I/O): call it off the I/O threads (async_allowed
// runs it on a worker pool).
#pragma once

#include <asio/awaitable.hpp>
#include <asio/ip/address.hpp>
#include <asio/thread_pool.hpp>

#include <string>

namespace postern::net {

struct access_settings {
  std::string daemon = "posternd";  // the daemon name the tables' rules match
  std::string allow_table;          // "" = libwrap's default (/etc/hosts.allow)
  std::string deny_table;           // "" = libwrap's default (/etc/hosts.deny)
};

class tcp_wrappers {
 public:
  explicit tcp_wrappers(access_settings s) : s_(std::move(s)) {}

  // True if the tables allow `client`. An unreadable table counts as empty (libwrap's rule).
  bool allowed(const asio::ip::address& client) const;

  const access_settings& settings() const noexcept { return s_; }

 private:
  access_settings s_;
};

// allowed() on `pool`, resuming the caller on its own executor.
asio::awaitable<bool> async_allowed(const tcp_wrappers& w, asio::thread_pool& pool,
                                    asio::ip::address client);

}  // namespace postern::net
