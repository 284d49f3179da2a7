#include "server/shared_limits.hpp"

#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <random>
#include <vector>

namespace postern::server {
namespace {

asio::ip::address v4(const char* s) { return asio::ip::make_address(s); }

shared_limits make(std::uint32_t slots, std::uint32_t total, std::uint32_t per_source) {
  auto r = shared_limits::create(slots, total, per_source);
  EXPECT_TRUE(r) << (r ? "" : r.err().message());
  return std::move(r).value();
}

TEST(SharedLimits, TotalHoldsAcrossSlots) {
  auto lim = make(3, 4, 100);
  shared_limits::refusal why{};
  std::vector<shared_limits::slot> held;
  for (std::uint32_t i = 0; i < 4; ++i) {
    auto s = lim.try_acquire(i % 3, v4(i % 2 ? "10.0.0.1" : "10.0.0.2"), why);
    ASSERT_TRUE(s);
    EXPECT_EQ(why, shared_limits::refusal::none);
    held.push_back(std::move(*s));
  }
  EXPECT_EQ(lim.active(), 4u);
  for (std::uint32_t slot = 0; slot < 3; ++slot) {
    EXPECT_FALSE(lim.try_acquire(slot, v4("10.0.0.3"), why));
    EXPECT_EQ(why, shared_limits::refusal::total);
  }
  held.pop_back();
  EXPECT_EQ(lim.active(), 3u);
  EXPECT_TRUE(lim.try_acquire(2, v4("10.0.0.3"), why));
}

TEST(SharedLimits, PerSourceHoldsAcrossSlots) {
  auto lim = make(3, 1000, 2);
  shared_limits::refusal why{};
  auto a = lim.try_acquire(0, v4("192.0.2.7"), why);
  auto b = lim.try_acquire(1, v4("192.0.2.7"), why);
  ASSERT_TRUE(a);
  ASSERT_TRUE(b);
  EXPECT_EQ(lim.active_from(v4("192.0.2.7")), 2u);
  EXPECT_FALSE(lim.try_acquire(2, v4("192.0.2.7"), why));
  EXPECT_EQ(why, shared_limits::refusal::per_source);
  EXPECT_FALSE(lim.try_acquire(0, v4("192.0.2.7"), why));
  // Another address is not affected.
  EXPECT_TRUE(lim.try_acquire(2, v4("192.0.2.8"), why));
  a.reset();
  EXPECT_EQ(lim.active_from(v4("192.0.2.7")), 1u);
  EXPECT_TRUE(lim.try_acquire(2, v4("192.0.2.7"), why));
}

TEST(SharedLimits, MappedIpv4IsTheSameSource) {
  auto lim = make(2, 1000, 1);
  shared_limits::refusal why{};
  auto a = lim.try_acquire(0, v4("203.0.113.5"), why);
  ASSERT_TRUE(a);
  EXPECT_FALSE(lim.try_acquire(1, asio::ip::make_address("::ffff:203.0.113.5"), why));
  EXPECT_EQ(why, shared_limits::refusal::per_source);
  EXPECT_TRUE(lim.try_acquire(1, asio::ip::make_address("2001:db8::5"), why));
}

TEST(SharedLimits, ReleaseSlotForgetsADeadWorker) {
  auto lim = make(2, 3, 3);
  shared_limits::refusal why{};
  std::vector<shared_limits::slot> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(*lim.try_acquire(1, v4("198.51.100.1"), why));
  }
  EXPECT_FALSE(lim.try_acquire(0, v4("198.51.100.2"), why));
  lim.release_slot(1);
  EXPECT_EQ(lim.active(), 0u);
  EXPECT_EQ(lim.active(1), 0u);
  EXPECT_EQ(lim.active_from(v4("198.51.100.1")), 0u);
  auto s = lim.try_acquire(0, v4("198.51.100.1"), why);
  ASSERT_TRUE(s);
  // Slots of the wiped worker that are released late change nothing.
  held.clear();
  EXPECT_EQ(lim.active(), 1u);
  EXPECT_EQ(lim.active_from(v4("198.51.100.1")), 1u);
}

// Many addresses, released in random order: backward-shift deletion must keep every other
// address findable (a broken probe chain would lose counts and let a source past its limit).
TEST(SharedLimits, ManyAddressesAddAndRemove) {
  auto lim = make(2, 5000, 2);
  EXPECT_GE(lim.table_capacity(), 10000u);
  shared_limits::refusal why{};
  std::vector<std::pair<asio::ip::address, shared_limits::slot>> held;
  for (std::uint32_t i = 0; i < 2000; ++i) {
    auto addr = asio::ip::make_address_v4(0x0a000000u + i * 7919u);
    held.emplace_back(addr, *lim.try_acquire(i % 2, addr, why));
    held.emplace_back(addr, *lim.try_acquire((i + 1) % 2, addr, why));
  }
  EXPECT_EQ(lim.active(), 4000u);
  std::mt19937 rng(42);
  std::shuffle(held.begin(), held.end(), rng);
  held.resize(held.size() / 2);
  EXPECT_EQ(lim.active(), 2000u);
  std::uint64_t sum = 0;
  for (std::uint32_t i = 0; i < 2000; ++i) {
    auto addr = asio::ip::make_address_v4(0x0a000000u + i * 7919u);
    auto n = lim.active_from(addr);
    sum += n;
    auto expected =
        std::count_if(held.begin(), held.end(), [&](const auto& h) { return h.first == addr; });
    ASSERT_EQ(n, static_cast<std::uint32_t>(expected)) << addr.to_string();
    if (n == 2) {
      EXPECT_FALSE(lim.try_acquire(0, addr, why));
    }
  }
  EXPECT_EQ(sum, 2000u);
  held.clear();
  EXPECT_EQ(lim.active(), 0u);
}

TEST(SharedLimits, CountsAreSharedWithChildProcesses) {
  auto lim = make(2, 10, 1);
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    shared_limits::refusal why{};
    auto s = lim.try_acquire(1, v4("192.0.2.50"), why);
    char c = s ? '1' : '0';
    (void)!write(ready[1], &c, 1);
    pause();  // holds the slot until killed
    _exit(0);
  }
  close(ready[1]);
  char c = 0;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  close(ready[0]);
  EXPECT_EQ(c, '1');
  shared_limits::refusal why{};
  EXPECT_FALSE(lim.try_acquire(0, v4("192.0.2.50"), why));
  EXPECT_EQ(why, shared_limits::refusal::per_source);
  // The worker dies without releasing anything; the master releases its slot.
  kill(pid, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_EQ(lim.active(), 1u);
  lim.release_slot(1);
  EXPECT_EQ(lim.active(), 0u);
  EXPECT_TRUE(lim.try_acquire(0, v4("192.0.2.50"), why));
}

TEST(SharedLimits, ALockHolderThatDiesDoesNotBlockOthers) {
  auto lim = make(2, 10, 10);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Take connections in a loop until killed: sooner or later it dies holding the mutex.
    shared_limits::refusal why{};
    for (;;) {
      auto s = lim.try_acquire(1, v4("192.0.2.60"), why);
    }
  }
  usleep(20000);
  kill(pid, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  lim.release_slot(1);
  shared_limits::refusal why{};
  auto s = lim.try_acquire(0, v4("192.0.2.60"), why);  // would hang on a non-robust mutex
  EXPECT_TRUE(s);
  EXPECT_EQ(lim.active(), 1u);
}

}  // namespace
}  // namespace postern::server
