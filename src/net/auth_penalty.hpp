// The authentication penalty per client address (Dovecot's auth_penalty): every failed login
// from an address makes its next attempts wait longer, across connections and processes.
//
// After n failures (n >= 1) an attempt from the address waits
//   min(initial * 2^(n-1), max)      (defaults: 2, 4, 8, 15, 15, ... seconds)
// before its credentials are checked. The count is forgotten after a quiet period without a
// failure equal to the sum of the schedule up to and including the cap (2 + 4 + 8 + 15 = 29 s
// by default, as Dovecot's AUTH_PENALTY_TIMEOUT), and a successful login from the address
// resets it. IPv4 addresses count one by one, IPv6 addresses per /48 (one site), IPv4-mapped
// IPv6 as IPv4. Addresses in the exempt networks are never penalised.
//
// The table has a fixed number of entries (set-associative: each address hashes, with a
// random key, to one set of `ways` entries; a new address takes an empty or expired entry of
// its set, else the one whose last failure is oldest). An attacker with many addresses can
// push entries out, never grow memory.
//
// The table lives in a shared mapping: anonymous (MAP_SHARED, made before fork(): event mode's
// worker processes and fork mode's per-connection supervisors share it; a robust
// process-shared mutex guards it) or a file (inetd mode, one process per connection: the
// penalty outlives each process; flock() guards it, so a process that dies holding the lock
// releases it; flock does not exclude the threads of one process from each other, so a
// file-backed table is used from one thread at a time: --inetd sessions and fork mode's
// supervisor call it from their only session thread). Times are CLOCK_MONOTONIC
// milliseconds, system-wide; a stamp from the future (a file from before a reboot) counts as
// expired.
#pragma once

#include "common/result.hpp"
#include "net/network.hpp"

#include <asio/ip/address.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace postern::net {

struct penalty_policy {
  std::chrono::milliseconds initial{2000};
  std::chrono::milliseconds max{15000};  // 0: no penalty
  std::vector<network> exempt;
};

class auth_penalty {
 public:
  using clock = std::chrono::steady_clock;

  // Entries of the table (a power of two, a multiple of ways).
  static constexpr std::uint32_t capacity = 8192;
  static constexpr std::uint32_t ways = 8;

  // An anonymous shared table. Call before fork(): children share it.
  static result<auth_penalty> create(penalty_policy policy);
  // A table in `path`: created 0600 when missing; refused (errc::denied) unless it is a regular
  // file with one link, owned by this process's effective uid, with no permission for group
  // or others. Symbolic links are not followed.
  static result<auth_penalty> open_file(const std::string& path, penalty_policy policy);

  auth_penalty(auth_penalty&& o) noexcept;
  auth_penalty& operator=(auth_penalty&&) = delete;
  auth_penalty(const auth_penalty&) = delete;
  ~auth_penalty();

  // The wait owed before checking credentials from `addr` now; 0 for an address without
  // failures, exempt, or not IP (unspecified).
  std::chrono::milliseconds delay_for(const asio::ip::address& addr, clock::time_point now) const;
  // A failed login from `addr` (bad credentials).
  void record_failure(const asio::ip::address& addr, clock::time_point now);
  // A successful login from `addr`: its count is forgotten.
  void record_success(const asio::ip::address& addr);

  // Unmaps the table in this process (fork mode's unprivileged pre-auth process must not be
  // able to change it). Every call afterwards answers "no penalty" and records nothing.
  void detach() noexcept;

  const penalty_policy& policy() const noexcept { return policy_; }
  // The wait after `failures` failures, and the quiet period that forgets them.
  static std::chrono::milliseconds delay_after(const penalty_policy& p, std::uint32_t failures);
  static std::chrono::milliseconds expiry(const penalty_policy& p);

 private:
  struct header;
  struct entry;
  auth_penalty(void* base, int fd, penalty_policy policy) noexcept;
  bool applies_to(const asio::ip::address& addr) const;
  void lock() const noexcept;
  void unlock() const noexcept;
  entry* find(const unsigned char* key) const noexcept;
  entry* set_of(const unsigned char* key) const noexcept;

  void* base_ = nullptr;
  int fd_ = -1;  // the file of open_file(), locked with flock(); -1: anonymous
  penalty_policy policy_;
};

}  // namespace postern::net
