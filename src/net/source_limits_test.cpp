#include "net/source_limits.hpp"

#include <gtest/gtest.h>

namespace postern::net {
namespace {

using namespace std::chrono_literals;

TEST(ConnectionPacer, RefusesASourceWithinTheInterval) {
  connection_pacer pacer(1000ms);
  auto a = asio::ip::make_address("192.0.2.1");
  auto b = asio::ip::make_address("2001:db8::1");
  std::chrono::steady_clock::time_point t0{};
  t0 += 1h;
  EXPECT_TRUE(pacer.admit(a, t0));
  EXPECT_FALSE(pacer.admit(a, t0 + 999ms));
  EXPECT_TRUE(pacer.admit(b, t0 + 999ms));   // another source is not paced by a's connections
  EXPECT_TRUE(pacer.admit(a, t0 + 1000ms));  // measured from the last admitted connection
  EXPECT_FALSE(pacer.admit(a, t0 + 1500ms));
  EXPECT_TRUE(pacer.admit(a, t0 + 2000ms));
}

TEST(ConnectionPacer, ZeroAdmitsEverything) {
  connection_pacer pacer(0ms);
  auto a = asio::ip::make_address("192.0.2.1");
  auto t = std::chrono::steady_clock::now();
  EXPECT_TRUE(pacer.admit(a, t));
  EXPECT_TRUE(pacer.admit(a, t));
}

TEST(ConnectionPacer, ForgetsOldSourcesWhenFull) {
  connection_pacer pacer(10ms);
  std::chrono::steady_clock::time_point t0{};
  t0 += 1h;
  for (std::uint32_t i = 0; i < 3000; ++i) {
    EXPECT_TRUE(
        pacer.admit(asio::ip::address_v4(0x0A000000u + i), t0 + std::chrono::milliseconds(i)));
  }
  // Still refuses a recent one after the pruning.
  EXPECT_FALSE(pacer.admit(asio::ip::address_v4(0x0A000000u + 2999), t0 + 3000ms));
}

}  // namespace
}  // namespace postern::net
