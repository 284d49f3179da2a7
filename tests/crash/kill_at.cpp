// kill_at: an LD_PRELOAD library for the crash trials (tests/integration/test_crash_trials.py).
// It SIGKILLs the process at the Nth call, counted from the moment an "arm" file exists, of a
// set of file-changing functions on paths containing a given string, so that a test places a
// kill -9 exactly between two steps of an update of the real posternd. Every counted call is
// appended to a trace file ("name path" per line, "KILL name path" for the fatal one), from
// which the test learns where the process died (before or after the journal's commit point).
//
// Environment (all read once, at the first intercepted call):
//   POSTERN_KILL_AT_CALLS  comma-separated names counted: write, pwrite, fsync, rename, unlink,
//                          ftruncate, link, fallocate, open (an open with O_CREAT); default all
//   POSTERN_KILL_AT_PATH   a call counts only when its path contains this (fd calls: the path
//                          /proc/self/fd gives); required: without it nothing is counted
//   POSTERN_KILL_AT_ARM    calls count only while this file exists (one access() per candidate)
//   POSTERN_KILL_AT_N      the counted call that kills (1 = the first); 0 or unset: trace only
//   POSTERN_KILL_AT_AFTER  "1": the Nth call is made, then the process is killed; else before
//   POSTERN_KILL_AT_TRACE  the trace file (appended to; created 0666 when missing)
//
// Only for tests: it is never installed and never linked into posternd.
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

enum call_kind : unsigned {
  k_write = 1U << 0,
  k_pwrite = 1U << 1,
  k_fsync = 1U << 2,
  k_rename = 1U << 3,
  k_unlink = 1U << 4,
  k_ftruncate = 1U << 5,
  k_link = 1U << 6,
  k_fallocate = 1U << 7,
  k_open = 1U << 8,
};

struct settings {
  unsigned calls = 0;
  char path[512] = {};
  char arm[512] = {};
  char trace[512] = {};
  long n = 0;
  bool after = false;
};

std::atomic<int> state{0};  // 0 unread, 1 reading, 2 ready
settings cfg;
std::atomic<long> counted{0};

void copy_env(char* dst, std::size_t size, const char* name) {
  const char* v = std::getenv(name);
  if (v != nullptr) {
    std::snprintf(dst, size, "%s", v);
  }
}

unsigned parse_calls(const char* v) {
  if (v == nullptr || *v == '\0') {
    return ~0U;
  }
  static const struct {
    const char* name;
    unsigned bit;
  } names[] = {{"write", k_write},         {"pwrite", k_pwrite}, {"fsync", k_fsync},
               {"rename", k_rename},       {"unlink", k_unlink}, {"ftruncate", k_ftruncate},
               {"link", k_link},           {"fallocate", k_fallocate}, {"open", k_open}};
  unsigned out = 0;
  const char* p = v;
  while (*p != '\0') {
    const char* end = std::strchr(p, ',');
    const std::size_t len = end != nullptr ? static_cast<std::size_t>(end - p) : std::strlen(p);
    for (const auto& n : names) {
      if (std::strlen(n.name) == len && std::strncmp(n.name, p, len) == 0) {
        out |= n.bit;
      }
    }
    p += len;
    if (*p == ',') {
      ++p;
    }
  }
  return out;
}

const settings& config() {
  int expected = 0;
  if (state.compare_exchange_strong(expected, 1)) {
    cfg.calls = parse_calls(std::getenv("POSTERN_KILL_AT_CALLS"));
    copy_env(cfg.path, sizeof cfg.path, "POSTERN_KILL_AT_PATH");
    copy_env(cfg.arm, sizeof cfg.arm, "POSTERN_KILL_AT_ARM");
    copy_env(cfg.trace, sizeof cfg.trace, "POSTERN_KILL_AT_TRACE");
    const char* n = std::getenv("POSTERN_KILL_AT_N");
    cfg.n = n != nullptr ? std::strtol(n, nullptr, 10) : 0;
    const char* after = std::getenv("POSTERN_KILL_AT_AFTER");
    cfg.after = after != nullptr && std::strcmp(after, "1") == 0;
    state.store(2);
  }
  while (state.load() != 2) {
  }
  return cfg;
}

template <typename F>
F real(const char* name) {
  return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
}

// The path an fd names, or a directory fd's path joined with a relative name.
void describe(int fd, const char* name, char* out, std::size_t size) {
  if (name != nullptr && (name[0] == '/' || fd == AT_FDCWD)) {
    std::snprintf(out, size, "%s", name);
    return;
  }
  char link[64];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  char target[400];
  const ssize_t len = ::readlink(link, target, sizeof target - 1);
  target[len > 0 ? len : 0] = '\0';
  if (name != nullptr) {
    std::snprintf(out, size, "%s/%s", target, name);
  } else {
    std::snprintf(out, size, "%s", target);
  }
}

void trace_line(const char* prefix, const char* what, const char* path, const char* path2) {
  if (cfg.trace[0] == '\0') {
    return;
  }
  char line[1400];
  const int len = std::snprintf(line, sizeof line, "%s%s %s%s%s\n", prefix, what, path,
                                path2 != nullptr ? " -> " : "", path2 != nullptr ? path2 : "");
  const int fd = static_cast<int>(
      ::syscall(SYS_openat, AT_FDCWD, cfg.trace, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666));
  if (fd >= 0) {
    ::syscall(SYS_write, fd, line, static_cast<std::size_t>(len > 0 ? len : 0));
    ::syscall(SYS_close, fd);
  }
}

// Whether the call counts; when it is the Nth and the kill comes before it, kills here.
// Returns true when the caller must kill after making the call.
bool before(unsigned kind, const char* what, int fd, const char* name, int fd2 = AT_FDCWD,
            const char* name2 = nullptr) {
  const settings& c = config();
  if ((c.calls & kind) == 0 || c.path[0] == '\0') {
    return false;
  }
  char path[900];
  describe(fd, name, path, sizeof path);
  char path2[900];
  if (name2 != nullptr) {
    describe(fd2, name2, path2, sizeof path2);
  }
  if (std::strstr(path, c.path) == nullptr &&
      (name2 == nullptr || std::strstr(path2, c.path) == nullptr)) {
    return false;
  }
  if (c.arm[0] != '\0' && ::access(c.arm, F_OK) != 0) {
    return false;
  }
  const long k = counted.fetch_add(1) + 1;
  const bool fatal = c.n > 0 && k == c.n;
  trace_line(fatal ? "KILL " : "", what, path, name2 != nullptr ? path2 : nullptr);
  if (fatal && !c.after) {
    ::kill(::getpid(), SIGKILL);
  }
  return fatal;
}

void after(bool fatal) {
  if (fatal) {
    ::kill(::getpid(), SIGKILL);
  }
}

}  // namespace

extern "C" {

ssize_t write(int fd, const void* buf, size_t n) {
  static const auto next = real<ssize_t (*)(int, const void*, size_t)>("write");
  // Only regular files: the log on stderr and sockets are never candidates.
  const bool fatal = fd > 2 && before(k_write, "write", fd, nullptr);
  const ssize_t r = next(fd, buf, n);
  after(fatal);
  return r;
}

ssize_t pwrite(int fd, const void* buf, size_t n, off_t off) {
  static const auto next = real<ssize_t (*)(int, const void*, size_t, off_t)>("pwrite");
  const bool fatal = before(k_pwrite, "pwrite", fd, nullptr);
  const ssize_t r = next(fd, buf, n, off);
  after(fatal);
  return r;
}

ssize_t pwrite64(int fd, const void* buf, size_t n, off_t off) {
  static const auto next = real<ssize_t (*)(int, const void*, size_t, off_t)>("pwrite64");
  const bool fatal = before(k_pwrite, "pwrite", fd, nullptr);
  const ssize_t r = next(fd, buf, n, off);
  after(fatal);
  return r;
}

int fsync(int fd) {
  static const auto next = real<int (*)(int)>("fsync");
  const bool fatal = before(k_fsync, "fsync", fd, nullptr);
  const int r = next(fd);
  after(fatal);
  return r;
}

int fdatasync(int fd) {
  static const auto next = real<int (*)(int)>("fdatasync");
  const bool fatal = before(k_fsync, "fdatasync", fd, nullptr);
  const int r = next(fd);
  after(fatal);
  return r;
}

int ftruncate(int fd, off_t len) {
  static const auto next = real<int (*)(int, off_t)>("ftruncate");
  const bool fatal = before(k_ftruncate, "ftruncate", fd, nullptr);
  const int r = next(fd, len);
  after(fatal);
  return r;
}

int ftruncate64(int fd, off_t len) {
  static const auto next = real<int (*)(int, off_t)>("ftruncate64");
  const bool fatal = before(k_ftruncate, "ftruncate", fd, nullptr);
  const int r = next(fd, len);
  after(fatal);
  return r;
}

int posix_fallocate(int fd, off_t off, off_t len) {
  static const auto next = real<int (*)(int, off_t, off_t)>("posix_fallocate");
  const bool fatal = before(k_fallocate, "fallocate", fd, nullptr);
  const int r = next(fd, off, len);
  after(fatal);
  return r;
}

int posix_fallocate64(int fd, off_t off, off_t len) {
  static const auto next = real<int (*)(int, off_t, off_t)>("posix_fallocate64");
  const bool fatal = before(k_fallocate, "fallocate", fd, nullptr);
  const int r = next(fd, off, len);
  after(fatal);
  return r;
}

int rename(const char* from, const char* to) {
  static const auto next = real<int (*)(const char*, const char*)>("rename");
  const bool fatal = before(k_rename, "rename", AT_FDCWD, from, AT_FDCWD, to);
  const int r = next(from, to);
  after(fatal);
  return r;
}

int renameat(int fd, const char* from, int fd2, const char* to) {
  static const auto next = real<int (*)(int, const char*, int, const char*)>("renameat");
  const bool fatal = before(k_rename, "rename", fd, from, fd2, to);
  const int r = next(fd, from, fd2, to);
  after(fatal);
  return r;
}

int renameat2(int fd, const char* from, int fd2, const char* to, unsigned flags) {
  static const auto next =
      real<int (*)(int, const char*, int, const char*, unsigned)>("renameat2");
  const bool fatal = before(k_rename, "rename", fd, from, fd2, to);
  const int r = next(fd, from, fd2, to, flags);
  after(fatal);
  return r;
}

int unlink(const char* name) {
  static const auto next = real<int (*)(const char*)>("unlink");
  const bool fatal = before(k_unlink, "unlink", AT_FDCWD, name);
  const int r = next(name);
  after(fatal);
  return r;
}

int unlinkat(int fd, const char* name, int flags) {
  static const auto next = real<int (*)(int, const char*, int)>("unlinkat");
  const bool fatal = before(k_unlink, "unlink", fd, name);
  const int r = next(fd, name, flags);
  after(fatal);
  return r;
}

int link(const char* from, const char* to) {
  static const auto next = real<int (*)(const char*, const char*)>("link");
  const bool fatal = before(k_link, "link", AT_FDCWD, from, AT_FDCWD, to);
  const int r = next(from, to);
  after(fatal);
  return r;
}

int linkat(int fd, const char* from, int fd2, const char* to, int flags) {
  static const auto next = real<int (*)(int, const char*, int, const char*, int)>("linkat");
  const bool fatal = before(k_link, "link", fd, from, fd2, to);
  const int r = next(fd, from, fd2, to, flags);
  after(fatal);
  return r;
}

int openat(int fd, const char* name, int flags, ...) {
  static const auto next = real<int (*)(int, const char*, int, ...)>("openat");
  mode_t mode = 0;
  if ((flags & O_CREAT) != 0) {
    va_list ap;
    va_start(ap, flags);
    mode = static_cast<mode_t>(va_arg(ap, int));
    va_end(ap);
  }
  const bool fatal = (flags & O_CREAT) != 0 && before(k_open, "open", fd, name);
  const int r = next(fd, name, flags, mode);
  after(fatal);
  return r;
}

}  // extern "C"
