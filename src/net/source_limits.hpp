// Connection accounting: a global limit and a per-source-address limit.
//
// Thread-safe (one mutex; taken twice per connection, never on the data path). A slot is an
// RAII object: holding it counts the connection, destroying it releases the count.
#pragma once

#include "net/network.hpp"

#include <asio/ip/address.hpp>

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <utility>

namespace postern::net {

// Counts connections for the limits: in-process (source_limits) or shared between worker
// processes (server/shared_limits). 0 limits mean "no limit".
class connection_counter {
 public:
  enum class refusal { none, total, per_source };
  virtual ~connection_counter() = default;
  // Counts a connection from `addr`, or says which limit refused it (and counts nothing).
  virtual bool acquire(const asio::ip::address& addr, refusal& why) = 0;
  virtual void release(const asio::ip::address& addr) noexcept = 0;
  virtual std::uint32_t active() const = 0;
};

// A connection counted by a connection_counter; destroying it releases the count.
class counted_connection {
 public:
  counted_connection() = default;
  counted_connection(connection_counter* owner, const asio::ip::address& addr)
      : owner_(owner), addr_(addr) {}
  counted_connection(const counted_connection&) = delete;
  counted_connection& operator=(const counted_connection&) = delete;
  counted_connection(counted_connection&& o) noexcept
      : owner_(std::exchange(o.owner_, nullptr)), addr_(std::move(o.addr_)) {}
  counted_connection& operator=(counted_connection&& o) noexcept {
    if (this != &o) {
      reset();
      owner_ = std::exchange(o.owner_, nullptr);
      addr_ = o.addr_;
    }
    return *this;
  }
  ~counted_connection() { reset(); }
  void reset() noexcept {
    if (owner_ != nullptr) {
      std::exchange(owner_, nullptr)->release(addr_);
    }
  }

 private:
  connection_counter* owner_ = nullptr;
  asio::ip::address addr_;
};

// The in-process connection_counter (event mode with one process, fork mode's master).
class source_limits final : public connection_counter {
 public:
  source_limits(std::uint32_t max_total, std::uint32_t max_per_source)
      : max_total_(max_total), max_per_source_(max_per_source) {}

  class slot {
   public:
    slot() = default;
    slot(source_limits* owner, asio::ip::address addr) : owner_(owner), addr_(std::move(addr)) {}
    slot(const slot&) = delete;
    slot& operator=(const slot&) = delete;
    slot(slot&& o) noexcept : owner_(std::exchange(o.owner_, nullptr)), addr_(std::move(o.addr_)) {}
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

  using refusal = connection_counter::refusal;

  bool acquire(const asio::ip::address& addr, refusal& why) override;
  void release(const asio::ip::address& addr) noexcept override;
  std::uint32_t active() const override;

  // Takes a slot for a connection from `addr`, or says which limit refused it.
  std::optional<slot> try_acquire(const asio::ip::address& addr, refusal& why);

  static std::size_t hash_address(const asio::ip::address& a) noexcept;

 private:
  struct addr_hash {
    std::size_t operator()(const asio::ip::address& a) const noexcept;
  };
  const std::uint32_t max_total_;
  const std::uint32_t max_per_source_;
  mutable std::mutex mu_;
  std::uint32_t total_ = 0;                                                     // guarded by mu_
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

}  // namespace postern::net
