#include "common/log.hpp"

#include <pthread.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <atomic>

namespace postern::log {
namespace {

std::atomic<int> min_level{static_cast<int>(level::info)};
std::atomic<bool> use_syslog{false};
// The program name in every line and for syslog (init()). Constructed on first use, where an
// exception could be caught, not before main.
std::string& ident_name() {
  static std::string name = "posternd";
  return name;
}

const char* level_name(level l) noexcept {
  switch (l) {
    case level::debug:
      return "debug";
    case level::info:
      return "info";
    case level::notice:
      return "notice";
    case level::warning:
      return "warning";
    case level::error:
      return "error";
  }
  return "?";
}

int syslog_priority(level l) noexcept {
  switch (l) {
    case level::debug:
      return LOG_DEBUG;
    case level::info:
      return LOG_INFO;
    case level::notice:
      return LOG_NOTICE;
    case level::warning:
      return LOG_WARNING;
    case level::error:
      return LOG_ERR;
  }
  return LOG_INFO;
}

}  // namespace

void init(bool target_syslog, level min, const std::string& ident) {
  min_level = static_cast<int>(min);
  ident_name() = ident;
  use_syslog = target_syslog;
  if (target_syslog) {
    openlog(ident_name().c_str(), LOG_PID | LOG_NDELAY, LOG_MAIL);
  }
}

namespace {

// The process id for stderr lines, read once per process instead of once per line: a fork()
// child forgets it (pthread_atfork) and reads its own on its first line.
std::atomic<pid_t> cached_pid{0};

pid_t current_pid() noexcept {
  static const bool registered = [] {
    ::pthread_atfork(nullptr, nullptr, [] { cached_pid.store(0, std::memory_order_relaxed); });
    return true;
  }();
  static_cast<void>(registered);
  pid_t pid = cached_pid.load(std::memory_order_relaxed);
  if (pid == 0) {
    pid = ::getpid();
    cached_pid.store(pid, std::memory_order_relaxed);
  }
  return pid;
}

}  // namespace

bool enabled(level l) noexcept {
  return static_cast<int>(l) >= min_level.load(std::memory_order_relaxed);
}

void write(level l, std::string_view message) {
  // One event, one line: a control byte that reached a message unescaped (in an error text,
  // say) is escaped here, so no message can start a line of its own.
  std::string escaped;
  for (std::size_t i = 0; i < message.size(); ++i) {
    auto c = static_cast<unsigned char>(message[i]);
    if (c < 0x20 || c == 0x7f) {
      if (escaped.empty()) {
        escaped.assign(message.substr(0, i));
      }
      escaped.append(fmt::format("\\x{:02x}", c));
    } else if (!escaped.empty()) {
      escaped.push_back(static_cast<char>(c));
    }
  }
  if (!escaped.empty()) {
    message = escaped;
  }
  if (use_syslog.load(std::memory_order_relaxed)) {
    syslog(syslog_priority(l), "%.*s", static_cast<int>(message.size()), message.data());
    return;
  }
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm utc{};
  gmtime_r(&ts.tv_sec, &utc);
  auto line =
      fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z {}[{}]: {}: {}\n", utc.tm_year + 1900,
                  utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec,
                  ts.tv_nsec / 1000000, ident_name(), current_pid(), level_name(l), message);
  std::string_view rest = line;
  while (!rest.empty()) {
    ssize_t n = ::write(STDERR_FILENO, rest.data(), rest.size());
    if (n <= 0) {
      break;  // nowhere left to report a logging failure
    }
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
}

namespace {

// \xNN for control bytes, bytes outside ASCII and the bytes in `special`; at most 256 bytes
// of input are kept, a longer text ends in "...".
std::string escape(std::string_view text, std::string_view special) {
  constexpr std::size_t max_len = 256;
  std::string out;
  out.reserve(text.size() < max_len ? text.size() : max_len);
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (out.size() >= max_len) {
      out.append("...");
      break;
    }
    auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c >= 0x7f || special.find(static_cast<char>(c)) != std::string_view::npos) {
      out.append(fmt::format("\\x{:02x}", c));
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

}  // namespace

std::string safe(std::string_view text) { return escape(text, "\\"); }

std::string client(std::string_view text) { return escape(text, "<>,=\\\"' "); }

}  // namespace postern::log
