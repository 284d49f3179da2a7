// Connection accounting: a global limit and a per-source-address limit.
//
// Thread-safe (one mutex; taken twice per connection, never on the data path). A slot is an
// RAII object: holding it counts the connection, destroying it releases the count.
#pragma once

#include <asio/ip/address.hpp>

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <utility>

namespace postern::net {

class source_limits {
 public:
  source_limits(std::uint32_t max_total, std::uint32_t max_per_source)
      : max_total_(max_total), max_per_source_(max_per_source) {}

  class slot {
   public:
    slot() = default;
    slot(source_limits* owner, asio::ip::address addr) : owner_(owner), addr_(std::move(addr)) {}
    slot(const slot&) = delete;
    slot& operator=(const slot&) = delete;
    slot(slot&& o) noexcept : owner_(std::exchange(o.owner_, nullptr)), addr_(o.addr_) {}
    slot& operator=(slot&& o) noexcept {
      if (this != &o) {
        release();
        owner_ = std::exchange(o.owner_, nullptr);
        addr_ = o.addr_;
      }
      return *this;
    }
    ~slot() { release(); }

   private:
    void release() noexcept;
    source_limits* owner_ = nullptr;
    asio::ip::address addr_;
  };

  enum class refusal { none, total, per_source };

  // Takes a slot for a connection from `addr`, or says which limit refused it.
  std::optional<slot> try_acquire(const asio::ip::address& addr, refusal& why);

  std::uint32_t active() const;

  static std::size_t hash_address(const asio::ip::address& a) noexcept;

 private:
  struct addr_hash {
    std::size_t operator()(const asio::ip::address& a) const noexcept;
  };
  void release(const asio::ip::address& addr) noexcept;

  const std::uint32_t max_total_;
  const std::uint32_t max_per_source_;
  mutable std::mutex mu_;
  std::uint32_t total_ = 0;                                           // guarded by mu_
  std::unordered_map<asio::ip::address, std::uint32_t, addr_hash> per_source_;  // guarded by mu_
};

// server.min_connection_interval in event mode, as fork mode applies it (popa3d's MIN_DELAY):
// a connection from a source is refused when the last connection admitted from that source
// began less than `interval` ago. Thread-safe (one mutex, taken once per connection). The
// table forgets sources whose last connection is older than `interval` once it holds 1024.
class connection_pacer {
 public:
  explicit connection_pacer(std::chrono::milliseconds interval) : interval_(interval) {}

  // True (and `now` remembered as the source's last start) when the connection may go on.
  bool admit(const asio::ip::address& addr, std::chrono::steady_clock::time_point now);

 private:
  struct addr_hash {
    std::size_t operator()(const asio::ip::address& a) const noexcept;
  };
  const std::chrono::milliseconds interval_;
  std::mutex mu_;
  std::unordered_map<asio::ip::address, std::chrono::steady_clock::time_point, addr_hash>
      last_start_;  // guarded by mu_
};

// The address as a client is known in logs: IPv4-mapped IPv6 addresses shown as IPv4.
asio::ip::address canonical_address(const asio::ip::address& a);

}  // namespace postern::net
