#include "server/workers.hpp"

#include "common/log.hpp"
#include "common/read_file.hpp"
#include "common/unique_fd.hpp"
#include "server/systemd.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <system_error>
#include <vector>

namespace postern::server {

std::uint32_t effective_processes(std::uint32_t processes, unsigned cpus) {
  return processes != 0 ? processes : std::max(1u, cpus);
}

std::uint32_t threads_per_process(std::uint32_t threads, std::uint32_t processes, unsigned cpus) {
  if (threads != 0) {
    return threads;
  }
  return std::max(1u, std::max(1u, cpus) / std::max(1u, processes));
}

namespace {

// The kernel's ceiling for RLIMIT_NOFILE (fs.nr_open); 1048576, its default, when unreadable.
std::uint64_t nr_open() {
  std::uint64_t value = 1024 * 1024;
  const unique_fd fd(::open("/proc/sys/fs/nr_open", O_RDONLY | O_CLOEXEC));
  if (!fd) {
    return value;
  }
  const read_outcome got = read_to_end(fd.get(), 32);
  std::uint64_t v = 0;
  const char* end = got.data.data() + got.data.size();
  const auto [ptr, ec] = std::from_chars(got.data.data(), end, v);
  if (got.err == 0 && ec == std::errc{} && ptr != got.data.data() && v > 0) {
    value = v;
  }
  return value;
}

}  // namespace

std::uint64_t descriptors_wanted(std::uint32_t max_connections, std::uint32_t processes) {
  std::uint64_t n = std::max(1u, processes);
  return (2ull * max_connections + n - 1) / n + descriptor_reserve;
}

result<std::uint64_t> raise_descriptor_limit(std::uint64_t wanted) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
    return error::from_errno(errno, "getrlimit(RLIMIT_NOFILE)");
  }
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < wanted) {
    rlimit higher{};
    higher.rlim_max = static_cast<rlim_t>(std::min(wanted, nr_open()));
    higher.rlim_cur = higher.rlim_max;
    // Not root (EPERM): the hard limit stays, and descriptor_warning says what to do.
    if (higher.rlim_max > rl.rlim_max && setrlimit(RLIMIT_NOFILE, &higher) == 0) {
      rl = higher;
    }
  }
  if (rl.rlim_cur != rl.rlim_max) {
    rlimit raised = rl;
    raised.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) != 0) {
      return error::from_errno(errno, "setrlimit(RLIMIT_NOFILE)");
    }
    rl = raised;
  }
  return rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : static_cast<std::uint64_t>(rl.rlim_cur);
}

std::string descriptor_warning(std::uint32_t max_connections, std::uint32_t processes,
                               std::uint64_t limit) {
  // Every session holds its socket and, once logged in, its maildrop lock; each process also
  // keeps some for itself (listeners, log, pipes, its event loop).
  std::uint64_t needed = 2ull * max_connections;
  if (limit == UINT64_MAX) {
    return {};
  }
  std::uint64_t usable = limit > descriptor_reserve ? limit - descriptor_reserve : 0;
  std::uint64_t available = usable * std::max(1u, processes);
  if (needed <= available) {
    return {};
  }
  std::uint64_t enough = usable == 0 ? 0 : (needed + usable - 1) / usable;
  return "server.max_connections = " + std::to_string(max_connections) + " needs at least " +
         std::to_string(needed) + " descriptors (socket and maildrop lock per session), but " +
         std::to_string(processes) + (processes == 1 ? " process" : " processes") +
         " with RLIMIT_NOFILE = " + std::to_string(limit) + " (" +
         std::to_string(descriptor_reserve) + " kept by each process for itself) have " +
         std::to_string(available) +
         "; raise the hard limit (LimitNOFILE=, ulimit -Hn) to at least " +
         std::to_string((needed + std::max(1u, processes) - 1) / std::max(1u, processes) +
                        descriptor_reserve) +
         (enough == 0 ? std::string()
                      : " or set server.processes to at least " + std::to_string(enough));
}

std::chrono::milliseconds restart_backoff::next_delay(std::chrono::steady_clock::duration uptime) {
  if (uptime >= stable_uptime) {
    quick_exits_ = 1;
    return std::chrono::milliseconds(0);
  }
  ++quick_exits_;
  if (quick_exits_ <= 1) {
    return std::chrono::milliseconds(0);
  }
  unsigned shift = std::min(quick_exits_ - 2, 16u);
  auto delay = std::chrono::milliseconds(1000) * (1u << shift);
  return std::min<std::chrono::milliseconds>(delay, max_delay);
}

namespace {

using steady = std::chrono::steady_clock;

struct worker_state {
  pid_t pid = 0;
  steady::time_point started{};
  std::optional<steady::time_point> restart_at;
  restart_backoff backoff;
  unsigned starts = 0;
};

std::string describe_exit(int status) {
  if (WIFSIGNALED(status)) {
    return "killed by signal " + std::to_string(WTERMSIG(status)) +
           (WCOREDUMP(status) ? " (core dumped)" : "");
  }
  if (WIFEXITED(status)) {
    return "exited with status " + std::to_string(WEXITSTATUS(status));
  }
  return "ended";
}

pid_t start_worker(std::uint32_t slot, worker_state& w, const supervisor_hooks& hooks) {
  pid_t master = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    return -1;
  }
  if (pid == 0) {
    // A worker ends with its master (SIGTERM: the usual graceful stop), so that a killed
    // master never leaves workers accepting on its sockets.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != master) {
      _exit(0);
    }
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    pthread_sigmask(SIG_UNBLOCK, &chld, nullptr);
    int status = 1;
    try {
      status = hooks.run_worker(slot);
    } catch (const std::exception& e) {
      log::error("worker {}: {}", slot + 1, e.what());
    }
    _exit(status);
  }
  w.pid = pid;
  w.started = steady::now();
  w.restart_at.reset();
  ++w.starts;
  log::info("worker {} started: pid {}", slot + 1, pid);
  return pid;
}

}  // namespace

namespace {

// The master's loop: one signal (or timer) at a time, read with sigtimedwait.
class worker_supervisor {
 public:
  worker_supervisor(std::uint32_t processes, std::chrono::seconds grace,
                    const supervisor_hooks& hooks)
      : workers_(processes), grace_(grace), hooks_(hooks) {
    sigemptyset(&waited_);
    for (int s : {SIGTERM, SIGINT, SIGHUP, SIGCHLD}) {
      sigaddset(&waited_, s);
    }
  }

  int run() {
    for (std::uint32_t i = 0; i < workers_.size() && !stopping_; ++i) {
      if (start_worker(i, workers_[i], hooks_) < 0) {
        log::error("cannot start worker {}: {}", i + 1, std::generic_category().message(errno));
        begin_stop(1);
      }
    }
    if (!stopping_) {
      systemd::notify_ready("serving POP3 with " + std::to_string(workers_.size()) +
                            " worker processes");
    }
    while (!(stopping_ && live() == 0)) {
      on_signal(next_signal());
      watchdog_.tick();
      kill_if_overdue();
      restart_due();
    }
    log::info("stopped");
    return exit_status_;
  }

 private:
  std::size_t live() const {
    return static_cast<std::size_t>(std::count_if(workers_.begin(), workers_.end(),
                                                  [](const worker_state& w) { return w.pid > 0; }));
  }

  void signal_all(int signo) const {
    for (const auto& w : workers_) {
      if (w.pid > 0) {
        kill(w.pid, signo);
      }
    }
  }

  // Sleeps until a signal, the next restart or the end of the grace period; 0 on a timeout.
  int next_signal() {
    steady::time_point wake = std::min(kill_at_, watchdog_.next());
    for (const auto& w : workers_) {
      if (w.restart_at && *w.restart_at < wake) {
        wake = *w.restart_at;
      }
    }
    siginfo_t info{};
    if (wake == steady::time_point::max()) {
      return sigwaitinfo(&waited_, &info);
    }
    auto left = std::max(steady::duration::zero(), wake - steady::now());
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
    timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    return sigtimedwait(&waited_, &info, &ts);
  }

  void on_signal(int signo) {
    if (signo == SIGTERM || signo == SIGINT) {
      systemd::notify_stopping();
      log::info("signal {} received: stopping {} workers", signo, live());
      begin_stop(0);
    } else if (signo == SIGHUP && !stopping_) {
      systemd::notify_reloading();
      log::info("SIGHUP: reloading {} workers", live());
      signal_all(SIGHUP);
      systemd::notify_ready();
    } else if (signo == SIGCHLD) {
      int status = 0;
      pid_t pid;
      while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        on_exit(pid, status);
      }
    }
  }

  void on_exit(pid_t pid, int status) {
    auto it = std::find_if(workers_.begin(), workers_.end(),
                           [&](const worker_state& w) { return w.pid == pid; });
    if (it == workers_.end()) {
      return;
    }
    auto slot = static_cast<std::uint32_t>(it - workers_.begin());
    it->pid = 0;
    if (hooks_.worker_gone) {
      hooks_.worker_gone(slot);
    }
    if (stopping_) {
      log::info("worker {} (pid {}) {}", slot + 1, pid, describe_exit(status));
      return;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == worker_setup_failed && it->starts == 1) {
      log::error("worker {} (pid {}) could not start; stopping", slot + 1, pid);
      begin_stop(1);
      return;
    }
    auto delay = it->backoff.next_delay(steady::now() - it->started);
    log::error(
        "worker {} (pid {}) {} unexpectedly; restarting it{}", slot + 1, pid, describe_exit(status),
        delay.count() == 0 ? std::string()
                           : " in " + std::to_string(delay.count() / 1000) + "s (it keeps dying)");
    it->restart_at = steady::now() + delay;
  }

  void begin_stop(int status) {
    if (stopping_) {
      return;
    }
    stopping_ = true;
    exit_status_ = status;
    if (hooks_.close_listeners) {
      hooks_.close_listeners();
    }
    signal_all(SIGTERM);
    kill_at_ = steady::now() + grace_;
    for (auto& w : workers_) {
      w.restart_at.reset();
    }
  }

  void kill_if_overdue() {
    if (stopping_ && steady::now() >= kill_at_ && live() > 0) {
      log::warning("{} workers still running {}s after SIGTERM: killing them", live(),
                   grace_.count());
      signal_all(SIGKILL);
      kill_at_ = steady::time_point::max();
    }
  }

  void restart_due() {
    auto now = steady::now();
    for (std::uint32_t i = 0; i < workers_.size() && !stopping_; ++i) {
      auto& w = workers_[i];
      if (w.pid == 0 && w.restart_at && now >= *w.restart_at && start_worker(i, w, hooks_) < 0) {
        log::error("cannot restart worker {}: {}; trying again", i + 1,
                   std::generic_category().message(errno));
        w.restart_at = now + std::chrono::seconds(1);
      }
    }
  }

  std::vector<worker_state> workers_;
  const std::chrono::seconds grace_;
  const supervisor_hooks& hooks_;
  sigset_t waited_{};
  // The master's loop pings the watchdog (a worker's own loop does not reach systemd).
  systemd::watchdog_clock watchdog_;
  bool stopping_ = false;
  int exit_status_ = 0;
  steady::time_point kill_at_ = steady::time_point::max();  // max(): not armed
};

}  // namespace

int supervise_workers(std::uint32_t processes, std::chrono::seconds grace,
                      const supervisor_hooks& hooks) {
  return worker_supervisor(processes, grace, hooks).run();
}

}  // namespace postern::server
