#include "net/auth_penalty.hpp"

#include "common/robust_mutex.hpp"
#include "common/unique_fd.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>

namespace postern::net {

// The mapping: one page of header, then `capacity` entries. Everything after the header is
// read and written with the lock held.
struct auth_penalty::header {
  std::uint64_t magic;
  std::uint64_t seed[2];  // keys the address hash: a client cannot aim its addresses at one set
  pthread_mutex_t mu;     // anonymous mappings only
};

// One address (or IPv6 /48); failures 0 marks an empty entry.
struct auth_penalty::entry {
  unsigned char key[16];
  std::uint32_t failures;
  std::uint32_t unused;
  std::int64_t last_ms;  // CLOCK_MONOTONIC milliseconds of the last failure
};

namespace {

constexpr std::uint64_t file_magic = 0x31746c6e65705f61ULL;  // "a_penlt1", layout version 1
constexpr std::size_t header_bytes = 4096;
constexpr std::uint32_t max_counted = 32;  // failures beyond this change nothing
constexpr std::uint32_t sets = auth_penalty::capacity / auth_penalty::ways;
static_assert((sets & (sets - 1)) == 0, "sets must be a power of two");

std::size_t mapping_bytes() { return header_bytes + std::size_t{auth_penalty::capacity} * 32; }

std::int64_t to_ms(auth_penalty::clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

void fill_seed(std::uint64_t* seed, const void* salt) {
  if (::getrandom(seed, 2 * sizeof(std::uint64_t), 0) !=
      static_cast<ssize_t>(2 * sizeof(std::uint64_t))) {
    seed[0] = reinterpret_cast<std::uintptr_t>(salt) ^ 0x243f6a8885a308d3ULL;
    seed[1] = static_cast<std::uint64_t>(::getpid()) * 0x9e3779b97f4a7c15ULL;
  }
}

result<void> check_file(int fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return error::from_errno(errno, "auth.penalty_file: " + path);
  }
  if (!S_ISREG(st.st_mode) || st.st_nlink != 1) {
    return error(errc::denied,
                 "auth.penalty_file: " + path + " must be a regular file with one link");
  }
  if (st.st_uid != ::geteuid()) {
    return error(errc::denied, "auth.penalty_file: " + path + " is owned by uid " +
                                   std::to_string(st.st_uid) + ", not by uid " +
                                   std::to_string(::geteuid()) + " that runs the server");
  }
  if ((st.st_mode & 077) != 0) {
    return error(errc::denied, "auth.penalty_file: " + path +
                                   " must not be accessible to group or others (chmod 600)");
  }
  return {};
}

// Under the file's flock: gives a new or foreign file the right size and a fresh header.
result<void> format_file(int fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return error::from_errno(errno, "auth.penalty_file: " + path);
  }
  std::uint64_t magic = 0;
  bool ours = static_cast<std::size_t>(st.st_size) == mapping_bytes() &&
              ::pread(fd, &magic, sizeof magic, 0) == static_cast<ssize_t>(sizeof magic) &&
              magic == file_magic;
  if (ours) {
    return {};
  }
  if (::ftruncate(fd, 0) != 0 || ::ftruncate(fd, static_cast<off_t>(mapping_bytes())) != 0) {
    return error::from_errno(errno, "auth.penalty_file: " + path + ": ftruncate");
  }
  std::uint64_t head[3] = {file_magic, 0, 0};
  fill_seed(head + 1, &head);
  if (::pwrite(fd, head, sizeof head, 0) != static_cast<ssize_t>(sizeof head)) {
    return error::from_errno(errno, "auth.penalty_file: " + path + ": write");
  }
  return {};
}

}  // namespace

std::chrono::milliseconds auth_penalty::delay_after(const penalty_policy& p,
                                                    std::uint32_t failures) {
  if (failures == 0 || p.max.count() <= 0) {
    return std::chrono::milliseconds(0);
  }
  std::chrono::milliseconds d = p.initial;
  for (std::uint32_t i = 1; i < failures && d < p.max; ++i) {
    d *= 2;
  }
  return std::min(d, p.max);
}

std::chrono::milliseconds auth_penalty::expiry(const penalty_policy& p) {
  std::chrono::milliseconds sum{0};
  std::chrono::milliseconds d = std::max(p.initial, std::chrono::milliseconds(1));
  while (d < p.max) {
    sum += d;
    d *= 2;
  }
  return sum + p.max;
}

result<auth_penalty> auth_penalty::create(penalty_policy policy) {
  static_assert(sizeof(entry) == 32 && sizeof(header) <= header_bytes,
                "mapping_bytes() assumes this layout");
  void* base =
      ::mmap(nullptr, mapping_bytes(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) {
    return error::from_errno(errno, "auth penalty table: mmap");
  }
  auto* h = new (base) header;
  h->magic = file_magic;
  fill_seed(h->seed, base);
  int rc = init_robust_shared_mutex(&h->mu);
  if (rc != 0) {
    ::munmap(base, mapping_bytes());
    return error::from_errno(rc, "auth penalty table: mutex");
  }
  // MAP_ANONYMOUS memory is zero-filled: every entry starts empty.
  return auth_penalty(base, -1, std::move(policy));
}

result<auth_penalty> auth_penalty::open_file(const std::string& path, penalty_policy policy) {
  unique_fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600));
  if (!fd) {
    return error::from_errno(errno, "auth.penalty_file: " + path,
                             errno == ELOOP ? errc::denied : errc::temporary);
  }
  POSTERN_TRY(check_file(fd.get(), path));
  if (::flock(fd.get(), LOCK_EX) != 0) {
    return error::from_errno(errno, "auth.penalty_file: " + path + ": flock");
  }
  auto formatted = format_file(fd.get(), path);
  void* base =
      formatted ? ::mmap(nullptr, mapping_bytes(), PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0)
                : MAP_FAILED;
  int map_errno = errno;
  ::flock(fd.get(), LOCK_UN);
  if (!formatted) {
    return std::move(formatted).err();
  }
  if (base == MAP_FAILED) {
    return error::from_errno(map_errno, "auth.penalty_file: " + path + ": mmap");
  }
  return auth_penalty(base, fd.release(), std::move(policy));
}

// cppcheck-suppress passedByValue ; it is moved: cppcheck 2.10 misses moves in a noexcept constructor
auth_penalty::auth_penalty(void* base, int fd, penalty_policy policy) noexcept
    : base_(base), fd_(fd), policy_(std::move(policy)) {}

auth_penalty::auth_penalty(auth_penalty&& o) noexcept
    : base_(std::exchange(o.base_, nullptr)),
      fd_(std::exchange(o.fd_, -1)),
      policy_(std::move(o.policy_)) {}

auth_penalty::~auth_penalty() { detach(); }

void auth_penalty::detach() noexcept {
  if (base_ != nullptr) {
    // The mutex is not destroyed: other processes may still use their copy of the mapping.
    ::munmap(base_, mapping_bytes());
    base_ = nullptr;
  }
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

void auth_penalty::lock() const noexcept {
  if (fd_ >= 0) {
    while (::flock(fd_, LOCK_EX) != 0 && errno == EINTR) {
    }
    return;
  }
  auto* h = static_cast<header*>(base_);
  if (pthread_mutex_lock(&h->mu) == EOWNERDEAD) {
    // A process died holding the lock: at worst it left one entry half-written, which costs
    // one address a wrong count until it expires.
    pthread_mutex_consistent(&h->mu);
  }
}

void auth_penalty::unlock() const noexcept {
  if (fd_ >= 0) {
    ::flock(fd_, LOCK_UN);
  } else {
    pthread_mutex_unlock(&static_cast<header*>(base_)->mu);
  }
}

bool auth_penalty::applies_to(const asio::ip::address& addr) const {
  return base_ != nullptr && policy_.max.count() > 0 && !addr.is_unspecified() &&
         std::none_of(policy_.exempt.begin(), policy_.exempt.end(),
                      [&](const network& n) { return contains(n, addr); });
}

auth_penalty::entry* auth_penalty::set_of(const unsigned char* key) const noexcept {
  const auto* h = static_cast<const header*>(base_);
  std::uint64_t hash = keyed_hash(key, h->seed);
  auto* entries = reinterpret_cast<entry*>(static_cast<unsigned char*>(base_) + header_bytes);
  return entries + (hash & (sets - 1)) * ways;
}

auth_penalty::entry* auth_penalty::find(const unsigned char* key) const noexcept {
  entry* set = set_of(key);
  for (std::uint32_t i = 0; i < ways; ++i) {
    if (set[i].failures != 0 && std::memcmp(set[i].key, key, 16) == 0) {
      return &set[i];
    }
  }
  return nullptr;
}

std::chrono::milliseconds auth_penalty::delay_for(const asio::ip::address& addr,
                                                  clock::time_point now) const {
  if (!applies_to(addr)) {
    return std::chrono::milliseconds(0);
  }
  unsigned char key[16];
  address_key(addr, true, key);
  const std::int64_t now_ms = to_ms(now);
  const std::int64_t quiet = expiry(policy_).count();
  std::uint32_t failures = 0;
  lock();
  if (const entry* e = find(key);
      e != nullptr && e->last_ms <= now_ms && now_ms - e->last_ms < quiet) {
    failures = e->failures;
  }
  unlock();
  return delay_after(policy_, failures);
}

void auth_penalty::record_failure(const asio::ip::address& addr, clock::time_point now) {
  if (!applies_to(addr)) {
    return;
  }
  unsigned char key[16];
  address_key(addr, true, key);
  const std::int64_t now_ms = to_ms(now);
  const std::int64_t quiet = expiry(policy_).count();
  auto expired = [&](const entry& e) {
    return e.failures == 0 || e.last_ms > now_ms || now_ms - e.last_ms >= quiet;
  };
  lock();
  entry* e = find(key);
  if (e == nullptr) {
    // An empty or expired entry of the set, else the one whose last failure is oldest.
    entry* set = set_of(key);
    e = &set[0];
    for (std::uint32_t i = 0; i < ways && !expired(*e); ++i) {
      if (expired(set[i]) || set[i].last_ms < e->last_ms) {
        e = &set[i];
      }
    }
    std::memcpy(e->key, key, 16);
    e->failures = 0;
  } else if (expired(*e)) {
    e->failures = 0;
  }
  e->failures = std::min(e->failures + 1, max_counted);
  e->last_ms = now_ms;
  unlock();
}

void auth_penalty::record_success(const asio::ip::address& addr) {
  if (!applies_to(addr)) {
    return;
  }
  unsigned char key[16];
  address_key(addr, true, key);
  lock();
  if (entry* e = find(key); e != nullptr) {
    e->failures = 0;
  }
  unlock();
}

}  // namespace postern::net
