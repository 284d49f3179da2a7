#include "server/shared_limits.hpp"

#include "common/robust_mutex.hpp"
#include "net/network.hpp"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/random.h>

#include <cerrno>
#include <cstring>
#include <new>

namespace postern::server {

// The mapping: header, then one slot_area per slot, then one table of `capacity` entries per
// slot. Everything is read and written with the mutex held.
struct shared_limits::header {
  pthread_mutex_t mu;
  std::uint64_t seed[2];  // keys the address hash: a client cannot aim its addresses at one chain
};

struct shared_limits::slot_area {
  std::uint32_t total;  // connections this slot holds
  std::uint32_t used;   // entries in use in its table
  unsigned char pad[56];
};

// One source address of one slot; count 0 marks an empty entry.
struct shared_limits::entry {
  unsigned char key[16];  // the address as IPv6 (IPv4 as v4-mapped)
  std::uint32_t count;
};

namespace {

constexpr std::size_t header_bytes = 128;
constexpr std::uint32_t min_capacity = 64;
constexpr std::uint32_t max_capacity = 1u << 22;
constexpr std::uint32_t unlimited_capacity = 1u << 16;
constexpr std::size_t page = 4096;

std::size_t round_to_page(std::size_t n) { return (n + page - 1) / page * page; }

// Each table starts on a page of its own, so that release_slot() can drop its pages.
std::size_t tables_offset(std::uint32_t slots, std::size_t area_bytes) {
  return round_to_page(header_bytes + std::size_t{slots} * area_bytes);
}
std::size_t table_stride(std::uint32_t capacity, std::size_t entry_bytes) {
  return round_to_page(std::size_t{capacity} * entry_bytes);
}

std::uint32_t bucket_of(const unsigned char* key, const std::uint64_t* seed,
                        std::uint32_t capacity) {
  return static_cast<std::uint32_t>(net::keyed_hash(key, seed) & (capacity - 1));
}

}  // namespace

result<shared_limits> shared_limits::create(std::uint32_t slots, std::uint32_t max_total,
                                            std::uint32_t max_per_source) {
  if (slots == 0) {
    return error(errc::invalid, "shared connection limits: no worker slots");
  }
  std::uint32_t capacity = min_capacity;
  std::uint64_t wanted = max_total == 0 ? unlimited_capacity : 2ull * max_total;
  while (capacity < wanted && capacity < max_capacity) {
    capacity <<= 1;
  }
  std::size_t bytes = tables_offset(slots, sizeof(slot_area)) +
                      std::size_t{slots} * table_stride(capacity, sizeof(entry));
  // Pages are touched only where addresses hash to: a large table costs address space, not
  // memory.
  void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) {
    return error::from_errno(
        errno, "shared connection limits: mmap of " + std::to_string(bytes) + " bytes",
        errc::temporary);
  }
  auto* h = new (base) header;
  int rc = init_robust_shared_mutex(&h->mu);
  if (rc != 0) {
    ::munmap(base, bytes);
    return error::from_errno(rc, "shared connection limits: mutex", errc::temporary);
  }
  if (::getrandom(h->seed, sizeof h->seed, 0) != static_cast<ssize_t>(sizeof h->seed)) {
    h->seed[0] = reinterpret_cast<std::uintptr_t>(base) ^ 0x243f6a8885a308d3ULL;
    h->seed[1] = static_cast<std::uint64_t>(::getpid()) * 0x9e3779b97f4a7c15ULL;
  }
  // MAP_ANONYMOUS memory is zero-filled: every slot total, table and entry starts empty.
  return shared_limits(base, bytes, slots, capacity, max_total, max_per_source);
}

shared_limits::shared_limits(void* base, std::size_t bytes, std::uint32_t slots,
                             std::uint32_t capacity, std::uint32_t max_total,
                             std::uint32_t max_per_source) noexcept
    : base_(base),
      bytes_(bytes),
      slots_(slots),
      capacity_(capacity),
      max_total_(max_total),
      max_per_source_(max_per_source) {}

shared_limits::shared_limits(shared_limits&& o) noexcept
    : base_(std::exchange(o.base_, nullptr)),
      bytes_(o.bytes_),
      slots_(o.slots_),
      capacity_(o.capacity_),
      max_total_(o.max_total_),
      max_per_source_(o.max_per_source_) {}

shared_limits::~shared_limits() {
  if (base_ != nullptr) {
    // The mutex is not destroyed: other processes may still use their copy of the mapping.
    ::munmap(base_, bytes_);
  }
}

void shared_limits::lock() const noexcept {
  auto* h = static_cast<header*>(base_);
  int rc = pthread_mutex_lock(&h->mu);
  if (rc == EOWNERDEAD) {
    // A worker died holding the lock. Whatever it left half-written is in its own slot, which
    // the master wipes with release_slot() when it reaps it.
    pthread_mutex_consistent(&h->mu);
  }
}

void shared_limits::unlock() const noexcept {
  pthread_mutex_unlock(&static_cast<header*>(base_)->mu);
}

shared_limits::slot_area& shared_limits::area(std::uint32_t index) const noexcept {
  auto* p =
      static_cast<unsigned char*>(base_) + header_bytes + std::size_t{index} * sizeof(slot_area);
  return *reinterpret_cast<slot_area*>(p);
}

shared_limits::entry* shared_limits::table(std::uint32_t index) const noexcept {
  auto* p = static_cast<unsigned char*>(base_) + tables_offset(slots_, sizeof(slot_area)) +
            std::size_t{index} * table_stride(capacity_, sizeof(entry));
  return reinterpret_cast<entry*>(p);
}

std::uint32_t shared_limits::count_in(std::uint32_t index,
                                      const unsigned char* key) const noexcept {
  const auto* h = static_cast<const header*>(base_);
  const entry* t = table(index);
  std::uint32_t i = bucket_of(key, h->seed, capacity_);
  for (std::uint32_t probes = 0; probes < capacity_; ++probes) {
    const entry& e = t[i];
    if (e.count == 0) {
      return 0;
    }
    if (std::memcmp(e.key, key, 16) == 0) {
      return e.count;
    }
    i = (i + 1) & (capacity_ - 1);
  }
  return 0;
}

std::optional<shared_limits::slot> shared_limits::try_acquire(std::uint32_t index,
                                                              const asio::ip::address& addr,
                                                              refusal& why) {
  if (!acquire(index, addr, why)) {
    return std::nullopt;
  }
  return slot(this, index, addr);
}

bool shared_limits::worker_counter::acquire(const asio::ip::address& addr,
                                            net::connection_counter::refusal& why) {
  shared_limits::refusal mine{};
  bool ok = limits_->acquire(index_, addr, mine);
  why = mine == shared_limits::refusal::total        ? net::connection_counter::refusal::total
        : mine == shared_limits::refusal::per_source ? net::connection_counter::refusal::per_source
                                                     : net::connection_counter::refusal::none;
  return ok;
}

void shared_limits::worker_counter::release(const asio::ip::address& addr) noexcept {
  limits_->release(index_, addr);
}

std::uint32_t shared_limits::worker_counter::active() const { return limits_->active(index_); }

bool shared_limits::acquire(std::uint32_t index, const asio::ip::address& addr, refusal& why) {
  unsigned char key[16];
  net::address_key(addr, false, key);
  lock();
  std::uint64_t total = 0;
  for (std::uint32_t s = 0; s < slots_; ++s) {
    total += area(s).total;
  }
  if (max_total_ > 0 && total >= max_total_) {
    unlock();
    why = refusal::total;
    return false;
  }
  if (max_per_source_ > 0) {
    std::uint64_t from = 0;
    for (std::uint32_t s = 0; s < slots_; ++s) {
      from += count_in(s, key);
    }
    if (from >= max_per_source_) {
      unlock();
      why = refusal::per_source;
      return false;
    }
  }
  auto& mine = area(index);
  entry* t = table(index);
  const auto* h = static_cast<const header*>(base_);
  std::uint32_t i = bucket_of(key, h->seed, capacity_);
  entry* found = nullptr;
  for (std::uint32_t probes = 0; probes < capacity_; ++probes) {
    entry& e = t[i];
    if (e.count == 0 || std::memcmp(e.key, key, 16) == 0) {
      found = &e;
      break;
    }
    i = (i + 1) & (capacity_ - 1);
  }
  // The table is sized for twice the global limit, so it fills only without a limit; keep one
  // entry free so that every probe sequence ends.
  if (found == nullptr || (found->count == 0 && mine.used + 1 >= capacity_)) {
    unlock();
    why = refusal::total;
    return false;
  }
  if (found->count == 0) {
    std::memcpy(found->key, key, 16);
    ++mine.used;
  }
  ++found->count;
  ++mine.total;
  unlock();
  why = refusal::none;
  return true;
}

void shared_limits::release(std::uint32_t index, const asio::ip::address& addr) noexcept {
  unsigned char key[16];
  net::address_key(addr, false, key);
  lock();
  auto& mine = area(index);
  entry* t = table(index);
  const auto* h = static_cast<const header*>(base_);
  std::uint32_t i = bucket_of(key, h->seed, capacity_);
  for (std::uint32_t probes = 0; probes < capacity_; ++probes) {
    entry& e = t[i];
    if (e.count == 0) {
      break;  // not counted here (the slot was wiped): nothing to release
    }
    if (std::memcmp(e.key, key, 16) != 0) {
      i = (i + 1) & (capacity_ - 1);
      continue;
    }
    if (mine.total > 0) {
      --mine.total;
    }
    if (--e.count == 0) {
      // Backward-shift deletion keeps every probe sequence unbroken without tombstones.
      --mine.used;
      std::uint32_t hole = i;
      std::uint32_t j = i;
      for (;;) {
        j = (j + 1) & (capacity_ - 1);
        entry& next = t[j];
        if (next.count == 0) {
          break;
        }
        std::uint32_t home = bucket_of(next.key, h->seed, capacity_);
        // Move `next` into the hole unless its home lies cyclically in (hole, j].
        bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (!stays) {
          t[hole] = next;
          next.count = 0;
          hole = j;
        }
      }
      t[hole].count = 0;
    }
    break;
  }
  unlock();
}

void shared_limits::release_slot(std::uint32_t index) noexcept {
  if (index >= slots_) {
    return;
  }
  lock();
  area(index).total = 0;
  area(index).used = 0;
  std::size_t table_bytes = table_stride(capacity_, sizeof(entry));
  // Punching the pages out of the shared memory gives them back and reads as zeros; clear by
  // hand only where that is refused.
  if (::madvise(static_cast<void*>(table(index)), table_bytes, MADV_REMOVE) != 0) {
    std::memset(static_cast<void*>(table(index)), 0, table_bytes);
  }
  unlock();
}

std::uint32_t shared_limits::active() const {
  lock();
  std::uint64_t total = 0;
  for (std::uint32_t s = 0; s < slots_; ++s) {
    total += area(s).total;
  }
  unlock();
  return static_cast<std::uint32_t>(total);
}

std::uint32_t shared_limits::active(std::uint32_t index) const {
  lock();
  std::uint32_t n = index < slots_ ? area(index).total : 0;
  unlock();
  return n;
}

std::uint32_t shared_limits::active_from(const asio::ip::address& addr) const {
  unsigned char key[16];
  net::address_key(addr, false, key);
  lock();
  std::uint64_t from = 0;
  for (std::uint32_t s = 0; s < slots_; ++s) {
    from += count_in(s, key);
  }
  unlock();
  return static_cast<std::uint32_t>(from);
}

void shared_limits::slot::release() noexcept {
  if (owner_ != nullptr) {
    owner_->release(index_, addr_);
    owner_ = nullptr;
  }
}

}  // namespace postern::server
