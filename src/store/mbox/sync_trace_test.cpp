#include "store/mbox/sync_trace_test.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>  // renameat, declared noexcept (__THROW)
#include <mutex>
#include <utility>

namespace postern::test {
namespace {

std::mutex trace_mu;
bool tracing = false;
std::vector<sync_event> trace;

}  // namespace

void sync_trace_start() {
  const std::lock_guard<std::mutex> lock(trace_mu);
  trace.clear();
  tracing = true;
}

std::vector<sync_event> sync_trace_stop() {
  const std::lock_guard<std::mutex> lock(trace_mu);
  tracing = false;
  return std::exchange(trace, {});
}

void sync_trace_record(sync_event e) {
  const std::lock_guard<std::mutex> lock(trace_mu);
  if (tracing) {
    trace.push_back(std::move(e));
  }
}

}  // namespace postern::test

// These definitions take the place of the C library's in this test binary only (the
// executable's symbols come first); each call goes to the kernel unchanged.
extern "C" int fsync(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) == 0) {
    postern::test::sync_trace_record(
        {postern::test::sync_event::kind::fsync, st.st_ino, std::string(), std::string()});
  }
  return static_cast<int>(::syscall(SYS_fsync, fd));
}

extern "C" int renameat(int old_dir, const char* from, int new_dir, const char* to) noexcept {
  postern::test::sync_trace_record({postern::test::sync_event::kind::rename, 0, from, to});
  return static_cast<int>(::syscall(SYS_renameat2, old_dir, from, new_dir, to, 0));
}
