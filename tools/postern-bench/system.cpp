#include "system.hpp"

#include <dirent.h>
#include <sched.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
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
    return std::strerror(errno);
  }
  return {};
}

cpu_time process_cpu_time() noexcept {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return {seconds_of(ru.ru_utime), seconds_of(ru.ru_stime)};
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
