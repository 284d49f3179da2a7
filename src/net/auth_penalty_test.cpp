#include "net/auth_penalty.hpp"

#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace postern::net {
namespace {

using namespace std::chrono_literals;
using clock_t_ = auth_penalty::clock;

asio::ip::address ip(const char* s) { return asio::ip::make_address(s); }

TEST(AuthPenalty, ScheduleDoublesToTheCap) {
  penalty_policy p;
  EXPECT_EQ(auth_penalty::delay_after(p, 0), 0ms);
  EXPECT_EQ(auth_penalty::delay_after(p, 1), 2s);
  EXPECT_EQ(auth_penalty::delay_after(p, 2), 4s);
  EXPECT_EQ(auth_penalty::delay_after(p, 3), 8s);
  EXPECT_EQ(auth_penalty::delay_after(p, 4), 15s);
  EXPECT_EQ(auth_penalty::delay_after(p, 32), 15s);
  EXPECT_EQ(auth_penalty::expiry(p), 29s);
  p.max = 0ms;
  EXPECT_EQ(auth_penalty::delay_after(p, 3), 0ms);
}

TEST(AuthPenalty, GrowsPerAddressAndResetsOnSuccess) {
  auto t = auth_penalty::create({});
  ASSERT_TRUE(t);
  auto now = clock_t_::now();
  auto a = ip("192.0.2.1");
  EXPECT_EQ(t->delay_for(a, now), 0ms);
  t->record_failure(a, now);
  EXPECT_EQ(t->delay_for(a, now), 2s);
  t->record_failure(a, now);
  t->record_failure(a, now);
  EXPECT_EQ(t->delay_for(a, now), 8s);
  EXPECT_EQ(t->delay_for(ip("192.0.2.2"), now), 0ms);
  EXPECT_EQ(t->delay_for(ip("::ffff:192.0.2.1"), now), 8s);
  t->record_success(a);
  EXPECT_EQ(t->delay_for(a, now), 0ms);
}

TEST(AuthPenalty, ExpiresAfterTheQuietPeriod) {
  auto t = auth_penalty::create({});
  ASSERT_TRUE(t);
  auto now = clock_t_::now();
  auto a = ip("192.0.2.1");
  t->record_failure(a, now);
  EXPECT_EQ(t->delay_for(a, now + 28s), 2s);
  EXPECT_EQ(t->delay_for(a, now + 29s), 0ms);
  EXPECT_EQ(t->delay_for(a, now - 1s), 0ms);  // a stamp from the future counts as expired
  t->record_failure(a, now + 30s);
  EXPECT_EQ(t->delay_for(a, now + 30s), 2s);  // counted from zero again
}

TEST(AuthPenalty, Ipv6CountsPer48AndExemptNetworksAreNot) {
  penalty_policy p;
  p.exempt.push_back(*parse_network("10.0.0.0/8"));
  auto t = auth_penalty::create(p);
  ASSERT_TRUE(t);
  auto now = clock_t_::now();
  t->record_failure(ip("2001:db8:1:2::1"), now);
  EXPECT_EQ(t->delay_for(ip("2001:db8:1:ffff::9"), now), 2s);
  EXPECT_EQ(t->delay_for(ip("2001:db8:2::1"), now), 0ms);
  t->record_failure(ip("10.1.2.3"), now);
  EXPECT_EQ(t->delay_for(ip("10.1.2.3"), now), 0ms);
  EXPECT_EQ(t->delay_for(asio::ip::address(), now), 0ms);
}

TEST(AuthPenalty, BoundedUnderManyAddresses) {
  auto t = auth_penalty::create({});
  ASSERT_TRUE(t);
  auto now = clock_t_::now();
  // Far more addresses than entries: the table keeps working, and a recent address is kept
  // over older ones of its set.
  for (std::uint32_t i = 0; i < 4 * auth_penalty::capacity; ++i) {
    asio::ip::address_v4 a(0x0a000000u + i);
    t->record_failure(a, now + std::chrono::milliseconds(i));
  }
  auto last = asio::ip::address_v4(0x0a000000u + 4 * auth_penalty::capacity - 1);
  EXPECT_EQ(t->delay_for(last, now + 33s), 2s);
}

TEST(AuthPenalty, SharedAcrossFork) {
  auto t = auth_penalty::create({});
  ASSERT_TRUE(t);
  auto now = clock_t_::now();
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    t->record_failure(ip("192.0.2.7"), now);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_EQ(t->delay_for(ip("192.0.2.7"), now), 2s);
}

TEST(AuthPenalty, FileOutlivesTheProcessAndIsChecked) {
  char dir[] = "/tmp/postern-penalty-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  std::string path = std::string(dir) + "/penalty";
  auto now = clock_t_::now();
  {
    auto t = auth_penalty::open_file(path, {});
    ASSERT_TRUE(t) << t.err().message();
    t->record_failure(ip("192.0.2.9"), now);
  }
  {
    auto t = auth_penalty::open_file(path, {});
    ASSERT_TRUE(t) << t.err().message();
    EXPECT_EQ(t->delay_for(ip("192.0.2.9"), now), 2s);
    t->detach();
    EXPECT_EQ(t->delay_for(ip("192.0.2.9"), now), 0ms);
  }
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  auto loose = auth_penalty::open_file(path, {});
  ASSERT_FALSE(loose);
  EXPECT_EQ(loose.err().code(), errc::denied);
  std::string link = std::string(dir) + "/link";
  ASSERT_EQ(::symlink(path.c_str(), link.c_str()), 0);
  EXPECT_FALSE(auth_penalty::open_file(link, {}));
  ::unlink(link.c_str());
  ::unlink(path.c_str());
  ::rmdir(dir);
}

}  // namespace
}  // namespace postern::net
