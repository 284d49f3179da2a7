// system: the few operating-system facts postern-bench reads or sets (Linux only).
//
// CPU pinning of the benchmark itself, its own CPU time, the open-file limit that bounds how
// many connections it can hold, and the proportional set size (PSS) of a server's processes.
// Failures are returned as values; nothing here throws.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace postern::bench {

// Pins the calling process to one CPU. Returns an error message, empty on success.
std::string pin_to_cpu(int cpu);

// CPU time this process has used so far, in seconds.
struct cpu_time {
  double user_s = 0;
  double sys_s = 0;
};
cpu_time process_cpu_time() noexcept;

// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit in force afterwards.
std::uint64_t raise_open_file_limit() noexcept;

// PSS of process `pid`, plus all its descendants when `with_children`, from
// /proc/PID/smaps_rollup. nullopt when the process is gone or unreadable.
struct pss_reading {
  std::uint64_t kib = 0;
  std::uint64_t processes = 0;
};
std::optional<pss_reading> read_pss(int pid, bool with_children);

}  // namespace postern::bench
