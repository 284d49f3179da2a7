#include "server/systemd.hpp"

#include <asio/post.hpp>

#include <systemd/sd-daemon.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <ctime>
#include <string>

namespace postern::server::systemd {
namespace {

// The process posternd started as, taken before main() runs and so before any fork().
const pid_t main_pid = ::getpid();

bool is_main_process() { return ::getpid() == main_pid; }

void notify(const char* state) {
  if (is_main_process()) {
    sd_notify(0, state);
  }
}

}  // namespace

result<std::vector<inherited_socket>> take_listen_fds() {
  char** names = nullptr;
  // unset_environment = 1: a forked worker or session process must not take them again.
  int n = sd_listen_fds_with_names(1, &names);
  if (n < 0) {
    return error::from_errno(-n, "systemd socket activation (LISTEN_FDS)", errc::invalid);
  }
  std::vector<inherited_socket> out;
  out.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    int fd = SD_LISTEN_FDS_START + i;
    std::string name = names != nullptr && names[i] != nullptr ? names[i] : "unknown";
    out.push_back({unique_fd(fd), std::move(name)});
  }
  if (names != nullptr) {
    for (int i = 0; i < n; ++i) {
      std::free(names[i]);
    }
    std::free(names);
  }
  for (const auto& s : out) {
    // systemd passes them without FD_CLOEXEC: no helper program may inherit a listener.
    int flags = ::fcntl(s.fd.get(), F_GETFD);
    if (flags < 0 || ::fcntl(s.fd.get(), F_SETFD, flags | FD_CLOEXEC) != 0) {
      return error::from_errno(errno, "systemd socket " + s.name, errc::invalid);
    }
    int r = sd_is_socket(s.fd.get(), AF_UNSPEC, SOCK_STREAM, 1);
    if (r < 0) {
      return error::from_errno(-r, "systemd socket " + s.name, errc::invalid);
    }
    if (r == 0) {
      return error(errc::invalid, "systemd passed descriptor " + std::to_string(s.fd.get()) + " (" +
                                      s.name + ") that is not a listening stream socket");
    }
  }
  return out;
}

bool under_service_manager() {
  return std::getenv("LISTEN_FDS") != nullptr || std::getenv("NOTIFY_SOCKET") != nullptr;
}

void notify_ready(std::string_view status) {
  if (!is_main_process()) {
    return;
  }
  if (status.empty()) {
    sd_notify(0, "READY=1");
  } else {
    sd_notifyf(0, "READY=1\nSTATUS=%.*s", static_cast<int>(status.size()), status.data());
  }
}

void notify_reloading() {
  if (!is_main_process()) {
    return;
  }
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  auto usec = static_cast<unsigned long long>(now.tv_sec) * 1'000'000ull +
              static_cast<unsigned long long>(now.tv_nsec) / 1'000ull;
  sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu", usec);
}

void notify_stopping() { notify("STOPPING=1"); }

void notify_status(std::string_view status) {
  if (is_main_process()) {
    sd_notifyf(0, "STATUS=%.*s", static_cast<int>(status.size()), status.data());
  }
}

std::optional<std::chrono::microseconds> watchdog_interval() {
  std::uint64_t usec = 0;
  if (!is_main_process() || sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) {
    return std::nullopt;
  }
  return std::chrono::microseconds(usec);
}

void notify_watchdog() { notify("WATCHDOG=1"); }

watchdog_clock::watchdog_clock() {
  if (auto interval = watchdog_interval()) {
    period_ = std::chrono::duration_cast<clock::duration>(*interval) / 2;
    next_ = clock::now();  // the first ping goes out with the first tick
  }
}

int watchdog_clock::poll_timeout(int timeout) const {
  if (next_ == clock::time_point::max()) {
    return timeout;
  }
  auto left = std::chrono::ceil<std::chrono::milliseconds>(next_ - clock::now()).count();
  int until_ping = left <= 0 ? 0 : static_cast<int>(std::min<long long>(left, 1 << 30));
  return timeout < 0 ? until_ping : std::min(timeout, until_ping);
}

void watchdog_clock::tick(clock::time_point now) {
  if (next_ == clock::time_point::max() || now < next_) {
    return;
  }
  notify_watchdog();
  next_ = now + period_;
}

loop_watchdog::loop_watchdog(asio::io_context& home)
    : timer_(home), interval_(watchdog_interval()) {}

void loop_watchdog::watch(asio::io_context& ctx) { loops_.push_back(&ctx); }

void loop_watchdog::start() {
  if (!interval_ || loops_.empty()) {
    return;
  }
  rounds_ = std::make_shared<rounds>(loops_.size());
  notify_watchdog();
  probe();
  arm();
}

void loop_watchdog::stop() {
  stopped_ = true;
  timer_.cancel();
}

void loop_watchdog::probe() {
  ++round_;
  for (std::size_t i = 0; i < loops_.size(); ++i) {
    asio::post(*loops_[i], [r = rounds_, i, round = round_] { r->answered[i].store(round); });
  }
}

void loop_watchdog::arm() {
  timer_.expires_after(*interval_ / 2);
  timer_.async_wait([this](const std::error_code& ec) {
    if (ec || stopped_) {
      return;
    }
    bool all_ran = true;
    for (const auto& a : rounds_->answered) {
      all_ran = all_ran && a.load() == round_;
    }
    if (all_ran) {
      notify_watchdog();
    }
    probe();
    arm();
  });
}

}  // namespace postern::server::systemd
