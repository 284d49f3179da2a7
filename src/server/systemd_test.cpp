#include "server/systemd.hpp"

#include <gtest/gtest.h>
#include <asio/executor_work_guard.hpp>

#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace postern::server::systemd {
namespace {

// A NOTIFY_SOCKET in the abstract namespace, set in the environment for the test's duration.
class notify_socket {
 public:
  notify_socket() {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    name_ = "postern-notify-test-" + std::to_string(::getpid());
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    name_.copy(sa.sun_path + 1, name_.size());
    auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name_.size());
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&sa), len), 0);
    ::setenv("NOTIFY_SOCKET", ("@" + name_).c_str(), 1);
  }
  ~notify_socket() {
    ::unsetenv("NOTIFY_SOCKET");
    ::unsetenv("WATCHDOG_USEC");
    ::close(fd_);
  }
  std::vector<std::string> messages() {
    std::vector<std::string> out;
    char buf[4096];
    for (;;) {
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n < 0) {
        return out;
      }
      out.emplace_back(buf, static_cast<std::size_t>(n));
    }
  }

 private:
  int fd_ = -1;
  std::string name_;
};

TEST(SystemdNotify, SendsReadyReloadingStopping) {
  notify_socket ns;
  EXPECT_TRUE(under_service_manager());
  notify_ready("serving");
  notify_reloading();
  notify_ready();
  notify_stopping();
  auto got = ns.messages();
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0], "READY=1\nSTATUS=serving");
  EXPECT_EQ(got[1].rfind("RELOADING=1\nMONOTONIC_USEC=", 0), 0u) << got[1];
  EXPECT_EQ(got[2], "READY=1");
  EXPECT_EQ(got[3], "STOPPING=1");
}

TEST(SystemdNotify, ForkedProcessStaysSilent) {
  notify_socket ns;
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    notify_ready("from a child");
    notify_watchdog();
    ::_exit(watchdog_interval() ? 1 : 0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_TRUE(ns.messages().empty());
}

TEST(SystemdWatchdog, DisabledWithoutWatchdogUsec) {
  ::unsetenv("WATCHDOG_USEC");
  EXPECT_FALSE(watchdog_interval());
  watchdog_clock wd;
  EXPECT_EQ(wd.next(), watchdog_clock::clock::time_point::max());
  EXPECT_EQ(wd.poll_timeout(-1), -1);
  EXPECT_EQ(wd.poll_timeout(250), 250);
}

TEST(SystemdWatchdog, ClockPingsAtHalfTheInterval) {
  notify_socket ns;
  ::setenv("WATCHDOG_USEC", "2000000", 1);
  ASSERT_TRUE(watchdog_interval());
  EXPECT_EQ(*watchdog_interval(), std::chrono::seconds(2));
  watchdog_clock wd;
  auto t0 = watchdog_clock::clock::now();
  EXPECT_EQ(wd.poll_timeout(-1), 0);  // the first ping is due at once
  wd.tick(t0);
  EXPECT_EQ(wd.next(), t0 + std::chrono::seconds(1));
  EXPECT_GT(wd.poll_timeout(-1), 900);
  EXPECT_LE(wd.poll_timeout(-1), 1000);
  EXPECT_EQ(wd.poll_timeout(100), 100);
  wd.tick(t0 + std::chrono::milliseconds(500));  // not due: no ping
  wd.tick(t0 + std::chrono::seconds(1));
  auto got = ns.messages();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0], "WATCHDOG=1");
  EXPECT_EQ(got[1], "WATCHDOG=1");
}

TEST(SystemdWatchdog, LoopWatchdogStopsPingingWhenALoopIsStuck) {
  notify_socket ns;
  ::setenv("WATCHDOG_USEC", "40000", 1);  // a ping every 20 ms
  asio::io_context home, other;
  auto busy = asio::make_work_guard(other);  // an I/O thread's acceptors keep its loop running
  loop_watchdog wd(home);
  wd.watch(home);
  wd.watch(other);
  wd.start();
  // Both loops run: pings keep coming.
  std::thread t([&] { other.run_for(std::chrono::milliseconds(200)); });
  home.run_for(std::chrono::milliseconds(200));
  t.join();
  auto running = ns.messages().size();
  EXPECT_GE(running, 5u);
  // `other` no longer runs (a stuck I/O thread): at most the ping of the round it answered.
  home.restart();
  home.run_for(std::chrono::milliseconds(200));
  EXPECT_LE(ns.messages().size(), 1u);
  wd.stop();
  home.restart();
  home.run_for(std::chrono::milliseconds(50));
}

}  // namespace
}  // namespace postern::server::systemd
