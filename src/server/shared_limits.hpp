// Connection accounting shared by the worker processes of event mode (`[server] processes`).
//
// One MAP_SHARED anonymous mapping, created by the master before it forks any worker, holds a
// robust process-shared mutex and, per worker slot, that worker's connection total and a hash
// table of its connections per source address. A worker writes only its own slot; the limits
// are checked against the sum over every slot, under the mutex, so max_connections and
// max_connections_per_ip hold exactly across processes.
//
// A worker that dies (even with SIGKILL, even holding the mutex) cannot leak counts: the
// mutex is robust (the next locker recovers it), and the master calls release_slot() for the
// dead worker before its replacement starts, which forgets everything that slot held. A torn
// update can only concern the dead worker's own slot, which release_slot() wipes.
#pragma once

#include "common/result.hpp"
#include "net/source_limits.hpp"

#include <asio/ip/address.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <utility>

namespace postern::server {

class shared_limits {
 public:
  enum class refusal { none, total, per_source };

  // Maps the shared region for `slots` worker processes. 0 limits mean "no limit". Call
  // before fork(); the mapping is inherited by every child.
  static result<shared_limits> create(std::uint32_t slots, std::uint32_t max_total,
                                      std::uint32_t max_per_source);

  shared_limits(shared_limits&& o) noexcept;
  shared_limits& operator=(shared_limits&&) = delete;
  shared_limits(const shared_limits&) = delete;
  ~shared_limits();

  // A counted connection of one slot; destroying it releases the count.
  class slot {
   public:
    slot() = default;
    slot(const slot&) = delete;
    slot& operator=(const slot&) = delete;
    slot(slot&& o) noexcept
        : owner_(std::exchange(o.owner_, nullptr)), index_(o.index_), addr_(std::move(o.addr_)) {}
    slot& operator=(slot&& o) noexcept {
      if (this != &o) {
        release();
        owner_ = std::exchange(o.owner_, nullptr);
        index_ = o.index_;
        addr_ = o.addr_;
      }
      return *this;
    }
    ~slot() { release(); }

   private:
    friend class shared_limits;
    slot(shared_limits* owner, std::uint32_t index, const asio::ip::address& addr)
        : owner_(owner), index_(index), addr_(addr) {}
    void release() noexcept;
    shared_limits* owner_ = nullptr;
    std::uint32_t index_ = 0;
    asio::ip::address addr_;
  };

  // Counts a connection from `addr` for worker slot `index` (< slots()), or says which limit
  // refused it.
  std::optional<slot> try_acquire(std::uint32_t index, const asio::ip::address& addr, refusal& why);

  // The limits as one worker slot's net::connection_counter (the admission step's view).
  class worker_counter final : public net::connection_counter {
   public:
    worker_counter(shared_limits& limits, std::uint32_t index) : limits_(&limits), index_(index) {}
    bool acquire(const asio::ip::address& addr, net::connection_counter::refusal& why) override;
    void release(const asio::ip::address& addr) noexcept override;
    std::uint32_t active() const override;

   private:
    shared_limits* limits_;
    std::uint32_t index_;
  };

  // The master, after reaping the worker of slot `index`: forgets every count it held.
  void release_slot(std::uint32_t index) noexcept;

  // Connections counted over every slot, and for one slot / one address (tests, logs).
  std::uint32_t active() const;
  std::uint32_t active(std::uint32_t index) const;
  std::uint32_t active_from(const asio::ip::address& addr) const;

  std::uint32_t slots() const noexcept { return slots_; }
  // Distinct addresses one slot can hold at once (a power of two, at least 2 x max_total).
  std::uint32_t table_capacity() const noexcept { return capacity_; }

 private:
  struct header;
  struct entry;
  struct slot_area;

  shared_limits(void* base, std::size_t bytes, std::uint32_t slots, std::uint32_t capacity,
                std::uint32_t max_total, std::uint32_t max_per_source) noexcept;
  bool acquire(std::uint32_t index, const asio::ip::address& addr, refusal& why);
  void release(std::uint32_t index, const asio::ip::address& addr) noexcept;
  void lock() const noexcept;
  void unlock() const noexcept;
  slot_area& area(std::uint32_t index) const noexcept;
  entry* table(std::uint32_t index) const noexcept;
  std::uint32_t count_in(std::uint32_t index, const unsigned char* key) const noexcept;

  void* base_ = nullptr;
  std::size_t bytes_ = 0;
  std::uint32_t slots_ = 0;
  std::uint32_t capacity_ = 0;
  std::uint32_t max_total_ = 0;
  std::uint32_t max_per_source_ = 0;
};

}  // namespace postern::server
