#include "server/workers.hpp"

#include <gtest/gtest.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cerrno>

namespace postern::server {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST(Workers, ProcessesAndThreads) {
  EXPECT_EQ(effective_processes(3, 8), 3u);
  EXPECT_EQ(effective_processes(0, 8), 8u);
  EXPECT_EQ(effective_processes(0, 0), 1u);
  EXPECT_EQ(threads_per_process(4, 3, 8), 4u);
  EXPECT_EQ(threads_per_process(0, 1, 8), 8u);
  EXPECT_EQ(threads_per_process(0, 3, 8), 2u);
  EXPECT_EQ(threads_per_process(0, 3, 2), 1u);
}

TEST(Workers, DescriptorWarning) {
  // 50,000 sessions need about 100,000 descriptors: 3 processes of 20,000 are not enough.
  auto w = descriptor_warning(50'000, 3, 20'000);
  EXPECT_NE(w.find("100000"), std::string::npos) << w;
  EXPECT_NE(w.find("server.processes to at least 6"), std::string::npos) << w;
  EXPECT_TRUE(descriptor_warning(50'000, 6, 20'000).empty());
  // Exactly two per session is not enough: the process's own descriptors count.
  auto tight = descriptor_warning(10'000, 1, 20'000);
  EXPECT_NE(tight.find("RLIMIT_NOFILE = 20000"), std::string::npos) << tight;
  EXPECT_NE(tight.find("to at least 20064"), std::string::npos) << tight;
  EXPECT_TRUE(descriptor_warning(10'000, 1, 20'064).empty());
  EXPECT_FALSE(descriptor_warning(10'000, 1, 1024).empty());
  EXPECT_TRUE(descriptor_warning(1'000'000, 1, UINT64_MAX).empty());
}

TEST(Workers, RaiseDescriptorLimit) {
  rlimit before{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &before), 0);
  auto r = raise_descriptor_limit();
  ASSERT_TRUE(r);
  rlimit after{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &after), 0);
  EXPECT_EQ(after.rlim_cur, after.rlim_max);
  EXPECT_EQ(after.rlim_max, before.rlim_max);
}

TEST(Workers, DescriptorsWantedIsTheLeastLimitWithoutWarning) {
  EXPECT_EQ(descriptors_wanted(10'000, 1), 20'064u);
  EXPECT_EQ(descriptors_wanted(10'001, 3), 6'668u + 64u);
  for (std::uint32_t processes : {1u, 2u, 3u, 7u}) {
    auto wanted = descriptors_wanted(10'001, processes);
    EXPECT_TRUE(descriptor_warning(10'001, processes, wanted).empty()) << processes;
    EXPECT_FALSE(descriptor_warning(10'001, processes, wanted - 1).empty()) << processes;
  }
}

// The hard limit is raised to what is wanted when the process may (root with
// CAP_SYS_RESOURCE), and kept only when raising it is refused. In a child, so that this
// process's limits stay as they were.
TEST(Workers, RaiseDescriptorLimitRaisesTheHardLimitWhenAllowed) {
  rlimit before{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &before), 0);
  if (before.rlim_max == RLIM_INFINITY || before.rlim_max + 1000 > 1024 * 1024) {
    GTEST_SKIP() << "hard RLIMIT_NOFILE too large to test raising it";
  }
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto r = raise_descriptor_limit(before.rlim_max + 1000);
    rlimit after{};
    getrlimit(RLIMIT_NOFILE, &after);
    bool ok = r && after.rlim_cur == after.rlim_max && *r == after.rlim_cur;
    if (after.rlim_max == before.rlim_max) {
      rlimit higher{before.rlim_max + 1000, before.rlim_max + 1000};
      ok = ok && setrlimit(RLIMIT_NOFILE, &higher) != 0 && errno == EPERM;
    } else {
      ok = ok && after.rlim_max == before.rlim_max + 1000;
    }
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "euid " << geteuid();
}

TEST(Workers, RestartBackoff) {
  restart_backoff b;
  // A worker that ran for a while comes back at once, every time.
  EXPECT_EQ(b.next_delay(seconds(60)), milliseconds(0));
  EXPECT_EQ(b.next_delay(seconds(3600)), milliseconds(0));
  // Dying again soon after such a restart: 1s, then 2s, 4s, ... capped at 30s.
  EXPECT_EQ(b.next_delay(milliseconds(100)), milliseconds(1000));
  EXPECT_EQ(b.next_delay(milliseconds(100)), milliseconds(2000));
  EXPECT_EQ(b.next_delay(milliseconds(100)), milliseconds(4000));
  for (int i = 0; i < 10; ++i) {
    b.next_delay(milliseconds(10));
  }
  EXPECT_EQ(b.next_delay(milliseconds(10)), milliseconds(30'000));
  // A stable run resets the series.
  EXPECT_EQ(b.next_delay(seconds(11)), milliseconds(0));
  EXPECT_EQ(b.next_delay(milliseconds(10)), milliseconds(1000));

  restart_backoff fresh;
  EXPECT_EQ(fresh.next_delay(milliseconds(10)), milliseconds(0));  // the first death
  EXPECT_EQ(fresh.next_delay(milliseconds(10)), milliseconds(1000));
}

}  // namespace
}  // namespace postern::server
