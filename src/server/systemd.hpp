// systemd integration through libsystemd: sockets handed over by socket activation
// (sd_listen_fds_with_names), and the service manager notifications of Type=notify units
// (READY, RELOADING, STOPPING, STATUS, the watchdog). Every call is harmless without systemd:
// no LISTEN_FDS means no inherited sockets, no NOTIFY_SOCKET means notifications go nowhere.
//
// Only the process posternd started as (the unit's main process: posternd stays in the
// foreground when started by a service manager) notifies: in a process forked from it (an
// event-mode worker, a fork-mode session) every notify_* call and the watchdog do nothing, so
// code shared by the master and its workers may call them unconditionally.
#pragma once

#include "common/result.hpp"
#include "common/unique_fd.hpp"

#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace postern::server::systemd {

// A listening socket passed by the service manager; `name` is the socket unit's
// FileDescriptorName= (systemd's default is the socket unit's name, "unknown" when unnamed).
struct inherited_socket {
  unique_fd fd;
  std::string name;
};

// The sockets systemd passed to this process (LISTEN_PID must name it), taken once: the
// LISTEN_* variables are removed so that child processes do not take them again, and each
// descriptor gets FD_CLOEXEC so that no program posternd runs inherits it. Each is checked to
// be a listening stream socket; anything else is an error naming it.
result<std::vector<inherited_socket>> take_listen_fds();

// True when the process was started with sockets or a notify socket by systemd.
bool under_service_manager();

void notify_ready(std::string_view status = {});
// RELOADING=1 with MONOTONIC_USEC (what Type=notify-reload asks for; Type=notify accepts it).
void notify_reloading();
void notify_stopping();
void notify_status(std::string_view status);

// WATCHDOG_USEC for this process, if the unit enabled the watchdog (and, when WATCHDOG_PID is
// set, it names this process); ping at half of it.
std::optional<std::chrono::microseconds> watchdog_interval();
void notify_watchdog();

// The watchdog of a loop that sleeps in poll() or sigtimedwait(): the loop sleeps no longer
// than until next(), then calls tick(), which pings when a ping is due. Disabled (next() is
// time_point::max()) without WATCHDOG_USEC.
class watchdog_clock {
 public:
  using clock = std::chrono::steady_clock;
  watchdog_clock();
  clock::time_point next() const { return next_; }
  // A poll() timeout in milliseconds: `timeout` (-1: none) cut to the next ping.
  int poll_timeout(int timeout) const;
  void tick(clock::time_point now = clock::now());

 private:
  clock::duration period_{};
  clock::time_point next_ = clock::time_point::max();
};

// The watchdog of asio event loops: a timer on the first loop pings every half interval, but
// only when every watched loop has run a probe posted to it since the last ping, so that one
// stuck I/O thread stops the pings as surely as a stuck first loop. Does nothing without
// WATCHDOG_USEC. stop() (on that first loop's thread) cancels the timer so the loop can end.
class loop_watchdog {
 public:
  explicit loop_watchdog(asio::io_context& home);
  void watch(asio::io_context& ctx);
  void start();
  void stop();

 private:
  void arm();
  void probe();

  // Per watched loop, the last round whose probe it ran; shared with probes still queued.
  struct rounds {
    explicit rounds(std::size_t n) : answered(n) {}
    std::vector<std::atomic<std::uint64_t>> answered;
  };

  asio::steady_timer timer_;
  std::optional<std::chrono::microseconds> interval_;
  std::vector<asio::io_context*> loops_;
  std::shared_ptr<rounds> rounds_;
  std::uint64_t round_ = 0;
  bool stopped_ = false;
};

}  // namespace postern::server::systemd
