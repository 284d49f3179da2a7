// system: the few operating-system facts postern-bench reads or sets (Linux only).
//
// CPU pinning of the benchmark itself, its own CPU time, the open-file limit that bounds how
// many connections it can hold, and the proportional set size (PSS) of a server's processes.
// Failures are returned as values; nothing here throws.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace postern::bench {

// Pins the calling process to one CPU. Returns an error message, empty on success.
std::string pin_to_cpu(int cpu);

// CPU time this process has used so far, in seconds.
struct cpu_time {
  double user_s = 0;
  double sys_s = 0;
};
cpu_time process_cpu_time() noexcept;
// CPU time of the child processes waited for so far (RUSAGE_CHILDREN).
cpu_time children_cpu_time() noexcept;

// Frames on a pipe between the processes of one run: a type byte, a 64-bit length (at most
// 64 MiB) and the payload. write_frame retries short writes and EINTR; read_frame returns
// interrupted when a signal arrived before the frame began, so the caller can act on it.
bool write_frame(int fd, char type, std::string_view payload) noexcept;
enum class frame_status { ok, eof, interrupted, error };
frame_status read_frame(int fd, char& type, std::string& payload);

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
