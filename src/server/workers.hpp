// Event mode with several worker processes (`[server] processes = N`), the nginx way: the
// master binds every listener, drops privileges, forks N workers that each run the event loop
// on their own share of the listening sockets, and supervises them. The master holds no
// session, no database and no thread: it restarts workers that die (with a back-off when they
// keep dying), forwards SIGHUP and SIGTERM, and exits when every worker has stopped.
#pragma once

#include "common/result.hpp"
#include "server/config.hpp"

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace postern::server {

// The number of worker processes `processes` asks for: 0 ("auto") is one per CPU.
std::uint32_t effective_processes(std::uint32_t processes, unsigned cpus);

// I/O threads of one worker: `threads` when set, else the CPUs shared out among the workers.
std::uint32_t threads_per_process(std::uint32_t threads, std::uint32_t processes, unsigned cpus);

// Raises the soft RLIMIT_NOFILE to the hard limit (descriptors are what an idle session
// costs) and returns the limit now in effect. When the hard limit is below `wanted` it first
// tries to raise the hard limit to `wanted` (capped at /proc/sys/fs/nr_open): allowed to root
// (CAP_SYS_RESOURCE), which posternd is at this point when started as root; refused
// otherwise, and then the old hard limit stays.
result<std::uint64_t> raise_descriptor_limit(std::uint64_t wanted = 0);

// Descriptors each process keeps for itself (listening sockets, log, pipes, epoll and eventfds
// of its threads, files the passdb and TLS reload open): a limit of exactly 2 * max_connections
// would pass the check while these leave too few for the last sessions.
constexpr std::uint64_t descriptor_reserve = 64;

// A warning, with the numbers, when `max_connections` sessions (two descriptors each: the
// socket and the maildrop lock) cannot fit in `processes` processes of `limit` descriptors
// less descriptor_reserve each; empty otherwise.
std::string descriptor_warning(std::uint32_t max_connections, std::uint32_t processes,
                               std::uint64_t limit);

// The RLIMIT_NOFILE each of `processes` processes needs for `max_connections` sessions: its
// share of two descriptors per session plus descriptor_reserve (the least limit for which
// descriptor_warning is empty).
std::uint64_t descriptors_wanted(std::uint32_t max_connections, std::uint32_t processes);

// When to restart a worker that ended without being asked to. A worker that ran for a while
// is restarted at once; one that keeps dying soon after it starts waits 1s, 2s, 4s, ... up to
// max_delay between attempts, so that a broken worker does not spin the CPU or fill the log.
class restart_backoff {
 public:
  static constexpr std::chrono::seconds stable_uptime{10};
  static constexpr std::chrono::seconds max_delay{30};

  std::chrono::milliseconds next_delay(std::chrono::steady_clock::duration uptime);
  unsigned quick_exits() const noexcept { return quick_exits_; }

 private:
  unsigned quick_exits_ = 0;
};

// Exit status of a worker that could not set itself up (EX_CONFIG): at startup, the master
// gives up instead of restarting it.
inline constexpr int worker_setup_failed = 78;

struct supervisor_hooks {
  // In the child after fork(): runs worker `slot` and returns its exit status.
  std::function<int(std::uint32_t slot)> run_worker;
  // In the master after a worker has been reaped: forget what it held (connection counts).
  std::function<void(std::uint32_t slot)> worker_gone;
  // In the master at SIGTERM/SIGINT: close the master's copies of the listeners, so that no
  // new connection waits in a queue no worker reads.
  std::function<void()> close_listeners;
};

// Forks `processes` workers and supervises them until they have all stopped. Expects
// SIGTERM, SIGINT, SIGHUP and SIGCHLD to be blocked in the calling (single-threaded) process;
// workers start with SIGCHLD unblocked and the others still blocked. `grace`: after SIGTERM,
// workers still running then are killed. Returns the master's exit status.
int supervise_workers(std::uint32_t processes, std::chrono::seconds grace,
                      const supervisor_hooks& hooks);

}  // namespace postern::server
