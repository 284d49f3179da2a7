#include "server/systemd.hpp"

#include <systemd/sd-daemon.h>

#include <sys/socket.h>

#include <cerrno>
#include <cstdlib>
#include <string>

namespace postern::server::systemd {

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
    int r = sd_is_socket(s.fd.get(), AF_UNSPEC, SOCK_STREAM, 1);
    if (r < 0) {
      return error::from_errno(-r, "systemd socket " + s.name, errc::invalid);
    }
    if (r == 0) {
      return error(errc::invalid, "systemd passed descriptor " + std::to_string(s.fd.get()) +
                                      " (" + s.name + ") that is not a listening stream socket");
    }
  }
  return out;
}

bool under_service_manager() {
  return std::getenv("LISTEN_FDS") != nullptr || std::getenv("NOTIFY_SOCKET") != nullptr;
}

void notify_ready(std::string_view status) {
  if (status.empty()) {
    sd_notify(0, "READY=1");
  } else {
    sd_notifyf(0, "READY=1\nSTATUS=%.*s", static_cast<int>(status.size()), status.data());
  }
}

void notify_reloading() { sd_notify(0, "RELOADING=1"); }

void notify_stopping() { sd_notify(0, "STOPPING=1"); }

void notify_status(std::string_view status) {
  sd_notifyf(0, "STATUS=%.*s", static_cast<int>(status.size()), status.data());
}

std::optional<std::chrono::microseconds> watchdog_interval() {
  std::uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) {
    return std::nullopt;
  }
  return std::chrono::microseconds(usec);
}

void notify_watchdog() { sd_notify(0, "WATCHDOG=1"); }

}  // namespace postern::server::systemd
