#include "system.hpp"

#include <dirent.h>
#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <system_error>
#include <vector>

namespace postern::bench {
namespace {

double seconds_of(const timeval& tv) noexcept {
  return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
}

// The parent pid from /proc/PID/stat; the command name may hold spaces and parentheses, so
// the fields are read after the last ')'.
std::optional<int> parent_of(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!std::getline(in, text)) {
    return std::nullopt;
  }
  const auto close = text.rfind(')');
  if (close == std::string::npos) {
    return std::nullopt;
  }
  std::istringstream rest(text.substr(close + 1));
  char state = 0;
  int ppid = 0;
  if (!(rest >> state >> ppid)) {
    return std::nullopt;
  }
  return ppid;
}

std::optional<std::uint64_t> pss_of(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Pss:", 0) == 0) {
      std::istringstream fields(line.substr(4));
      std::uint64_t kib = 0;
      if (fields >> kib) {
        return kib;
      }
    }
  }
  return std::nullopt;
}

}  // namespace

std::string pin_to_cpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (cpu < 0 || cpu >= CPU_SETSIZE) {
    return "no such CPU";
  }
  CPU_SET(cpu, &set);
  if (::sched_setaffinity(0, sizeof set, &set) != 0) {
    return std::generic_category().message(errno);
  }
  return {};
}

cpu_time process_cpu_time() noexcept {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return {seconds_of(ru.ru_utime), seconds_of(ru.ru_stime)};
}

cpu_time children_cpu_time() noexcept {
  rusage ru{};
  ::getrusage(RUSAGE_CHILDREN, &ru);
  return {seconds_of(ru.ru_utime), seconds_of(ru.ru_stime)};
}

namespace {

constexpr std::uint64_t max_frame = 64u << 20;

bool write_all(int fd, const char* p, std::size_t n) noexcept {
  while (n > 0) {
    const ssize_t k = ::write(fd, p, n);
    if (k < 0) {
      if (errno == EINTR) {
        continue;
      }
      return false;
    }
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}

// Reads exactly n bytes; retries EINTR once started. 0: done, 1: end of file, -1: error.
int read_all(int fd, char* p, std::size_t n) noexcept {
  while (n > 0) {
    const ssize_t k = ::read(fd, p, n);
    if (k < 0) {
      if (errno == EINTR) {
        continue;
      }
      return -1;
    }
    if (k == 0) {
      return 1;
    }
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return 0;
}

}  // namespace

bool write_frame(int fd, char type, std::string_view payload) noexcept {
  char head[9];
  head[0] = type;
  const std::uint64_t n = payload.size();
  std::memcpy(head + 1, &n, sizeof n);
  return write_all(fd, head, sizeof head) && write_all(fd, payload.data(), payload.size());
}

frame_status read_frame(int fd, char& type, std::string& payload) {
  char first = 0;
  const ssize_t k = ::read(fd, &first, 1);
  if (k < 0) {
    return errno == EINTR ? frame_status::interrupted : frame_status::error;
  }
  if (k == 0) {
    return frame_status::eof;
  }
  type = first;
  std::uint64_t n = 0;
  if (read_all(fd, reinterpret_cast<char*>(&n), sizeof n) != 0 || n > max_frame) {
    return frame_status::error;
  }
  payload.resize(n);
  return read_all(fd, payload.data(), n) == 0 ? frame_status::ok : frame_status::error;
}

std::uint64_t raise_open_file_limit() noexcept {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) {
    return 1024;
  }
  if (rl.rlim_cur < rl.rlim_max) {
    rlimit raised = rl;
    raised.rlim_cur = rl.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) {
      rl = raised;
    }
  }
  return rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : static_cast<std::uint64_t>(rl.rlim_cur);
}

std::optional<pss_reading> read_pss(int pid, bool with_children) {
  std::vector<int> pids{pid};
  if (with_children) {
    std::multimap<int, int> children;  // parent -> child
    if (DIR* d = ::opendir("/proc")) {
      while (const dirent* e = ::readdir(d)) {
        char* end = nullptr;
        const long p = std::strtol(e->d_name, &end, 10);
        if (end == e->d_name || *end != '\0') {
          continue;
        }
        if (auto parent = parent_of(static_cast<int>(p))) {
          children.emplace(*parent, static_cast<int>(p));
        }
      }
      ::closedir(d);
    }
    for (std::size_t i = 0; i < pids.size(); ++i) {
      auto [lo, hi] = children.equal_range(pids[i]);
      for (auto it = lo; it != hi; ++it) {
        pids.push_back(it->second);
      }
    }
  }
  pss_reading r;
  bool any = false;
  for (int p : pids) {
    if (auto kib = pss_of(p)) {
      r.kib += *kib;
      ++r.processes;
      any = true;
    } else if (p == pid) {
      return std::nullopt;
    }
  }
  if (!any) {
    return std::nullopt;
  }
  return r;
}

}  // namespace postern::bench
