// systemd integration through libsystemd: sockets handed over by socket activation
// (sd_listen_fds_with_names), and the service manager notifications of Type=notify units
// (READY, RELOADING, STOPPING, STATUS, the watchdog). Every call is harmless without systemd:
// no LISTEN_FDS means no inherited sockets, no NOTIFY_SOCKET means notifications go nowhere.
#pragma once

#include "common/result.hpp"
#include "common/unique_fd.hpp"

#include <chrono>
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
// LISTEN_* variables are removed so that child processes do not take them again. Each is
// checked to be a listening stream socket; anything else is an error naming it.
result<std::vector<inherited_socket>> take_listen_fds();

// True when the process was started with sockets or a notify socket by systemd.
bool under_service_manager();

void notify_ready(std::string_view status = {});
void notify_reloading();
void notify_stopping();
void notify_status(std::string_view status);

// WATCHDOG_USEC for this process, if the unit enabled the watchdog; ping at half of it.
std::optional<std::chrono::microseconds> watchdog_interval();
void notify_watchdog();

}  // namespace postern::server::systemd
