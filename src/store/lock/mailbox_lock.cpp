#include "store/lock/mailbox_lock.hpp"

#include "common/encoding.hpp"
#include "common/log.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <system_error>
#include <thread>
#include <utility>

namespace postern::store::lock {

namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

constexpr milliseconds first_poll_delay{10};
constexpr milliseconds max_poll_delay{250};
constexpr mode_t dotlock_mode = 0644;  // liblockfile's mode: anyone may read the pid
constexpr mode_t session_lock_mode = 0600;
constexpr std::size_t max_pid_text = 31;

errc create_errc(int err) noexcept {
  switch (err) {
    case EACCES:
    case EPERM:
    case EROFS:
    case ENOENT:
    case ENOTDIR:
    case ELOOP:
    case ENAMETOOLONG:
      return errc::permanent;
    default:
      return errc::temporary;
  }
}

// Splits "dir/name" (or "name") for the *at() calls.
std::pair<std::string, std::string> split_path(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  if (slash == std::string::npos) {
    return {".", path};
  }
  if (slash == 0) {
    return {"/", path.substr(1)};
  }
  return {path.substr(0, slash), path.substr(slash + 1)};
}

result<unique_fd> open_directory(const std::string& dir, const std::string& what) {
  for (;;) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      return unique_fd(fd);
    }
    const int err = errno;
    if (err != EINTR) {
      return error::from_errno(err, "lock: open directory of " + what, create_errc(err));
    }
  }
}

// Sleeps for the current poll delay (never past the deadline) and doubles it.
// Returns false when the deadline has passed.
bool wait_a_little(steady_clock::time_point deadline, milliseconds& delay) {
  const auto now = steady_clock::now();
  if (now >= deadline) {
    return false;
  }
  const auto left = std::chrono::duration_cast<milliseconds>(deadline - now) + milliseconds(1);
  std::this_thread::sleep_for(std::min(delay, left));
  delay = std::min(delay * 2, max_poll_delay);
  return true;
}

// A name no other process can be using: ".lk<pid>.<random>.<host>" like liblockfile's
// ".lk%05d%x%s" (the leading '.' hides it; the host part keeps NFS clients apart).
std::string temp_lock_name() {
  std::array<unsigned char, 6> rnd{};
  if (::getrandom(rnd.data(), rnd.size(), GRND_NONBLOCK) != static_cast<ssize_t>(rnd.size())) {
    static std::atomic<unsigned> counter{0};  // no entropy yet (early boot): time + counter
    const unsigned n = counter.fetch_add(1, std::memory_order_relaxed);
    const auto t = static_cast<unsigned long long>(
        std::chrono::steady_clock::now().time_since_epoch().count());
    for (std::size_t i = 0; i < rnd.size(); ++i) {
      rnd[i] = static_cast<unsigned char>((t >> (8 * i)) ^ (n >> (8 * (i % 4))));
    }
  }
  std::array<char, 256> host{};  // a host name is at most 255 bytes
  if (::gethostname(host.data(), host.size() - 1) != 0) {
    host[0] = '\0';
  }
  std::string out = ".lk" + std::to_string(::getpid()) + ".";
  append_hex(out, rnd);
  out += '.';
  for (const char* p = host.data(); *p != '\0' && *p != '.' && out.size() < 64; ++p) {
    const char c = *p;
    const bool safe = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '-' || c == '_';
    out += safe ? c : '_';
  }
  return out;
}

result<void> write_all(int fd, std::string_view data, const std::string& what) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) {
        continue;
      }
      return error::from_errno(err, "lock: write " + what);
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return ok_result();
}

bool same_file(const struct stat& a, const struct stat& b) noexcept {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

bool same_version(const struct stat& a, const struct stat& b) noexcept {
  return same_file(a, b) && a.st_size == b.st_size && a.st_mtim.tv_sec == b.st_mtim.tv_sec &&
         a.st_mtim.tv_nsec == b.st_mtim.tv_nsec;
}

// The pid a lock file holds in liblockfile's format (ASCII decimal, optional leading blanks,
// anything after the digits ignored); 0 when there is none ("0\n" is what dotlockfile writes
// without -p).
pid_t parse_pid(std::string_view text) noexcept {
  std::size_t i = 0;
  while (i < text.size() && (text[i] == ' ' || text[i] == '\t')) {
    ++i;
  }
  long long v = 0;
  std::size_t digits = 0;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9' && digits < 10; ++i, ++digits) {
    v = v * 10 + (text[i] - '0');
  }
  if (digits == 0 || digits >= 10 || v <= 0 || v > 0x3FFFFFFF) {
    return 0;
  }
  return static_cast<pid_t>(v);
}

enum class verdict { gone, busy, broken };

// Judges the existing lock file `name` and removes it when stale. `fs_now` is the file
// system's idea of now (mtime of our freshly touched temporary file).
result<verdict> break_if_stale(int dir_fd, const std::string& name, const std::string& display,
                               const struct timespec& fs_now, std::chrono::seconds stale_age,
                               bool check_pid) {
  struct stat judged {};
  pid_t pid = 0;
  const int fd = ::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd >= 0) {
    const unique_fd owner(fd);
    if (::fstat(fd, &judged) != 0) {
      const int err = errno;
      return error::from_errno(err, "lock: stat " + display);
    }
    std::array<char, max_pid_text + 1> buf{};
    ssize_t n = -1;
    do {
      n = ::pread(fd, buf.data(), max_pid_text, 0);
    } while (n < 0 && errno == EINTR);
    if (n > 0 && S_ISREG(judged.st_mode)) {
      pid = parse_pid(std::string_view(buf.data(), static_cast<std::size_t>(n)));
    }
  } else {
    const int err = errno;
    if (err == ENOENT) {
      return verdict::gone;
    }
    if (err != ELOOP && err != EACCES) {
      return error::from_errno(err, "lock: open " + display);
    }
    // A symlink, or unreadable: judge it by age alone.
    if (::fstatat(dir_fd, name.c_str(), &judged, AT_SYMLINK_NOFOLLOW) != 0) {
      const int err2 = errno;
      if (err2 == ENOENT) {
        return verdict::gone;
      }
      return error::from_errno(err2, "lock: stat " + display);
    }
  }

  // Stale: not a regular file of ours or root's (planted by another user: delivery agents
  // and MUAs create the lock as the mailbox's owner or as root), older than stale_age
  // whatever pid it holds (pid 1 or any live process included), or holding the pid of a
  // process that no longer exists on this host.
  const auto age = std::chrono::seconds(fs_now.tv_sec - judged.st_mtim.tv_sec);
  const bool foreign =
      !S_ISREG(judged.st_mode) || (judged.st_uid != ::geteuid() && judged.st_uid != 0);
  bool stale = foreign || age > stale_age;
  if (!stale && check_pid && pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH) {
    stale = true;  // EPERM: alive, someone else's
  }
  if (!stale) {
    return verdict::busy;
  }
  // Break it only if it is still the very file we judged.
  struct stat now_st {};
  if (::fstatat(dir_fd, name.c_str(), &now_st, AT_SYMLINK_NOFOLLOW) != 0) {
    const int err = errno;
    if (err == ENOENT) {
      return verdict::gone;
    }
    return error::from_errno(err, "lock: stat " + display);
  }
  if (!same_version(judged, now_st)) {
    return verdict::busy;  // replaced or touched meanwhile: judge again next round
  }
  if (::unlinkat(dir_fd, name.c_str(), 0) != 0) {
    const int err = errno;
    if (err == ENOENT) {
      return verdict::gone;
    }
    return error::from_errno(
        err, "lock: remove stale " + display + " (uid " + std::to_string(judged.st_uid) + ")",
        create_errc(err));
  }
  log::notice("lock: broke stale {} (uid {}, pid {}, {} s old{})", display, judged.st_uid, pid,
              age.count(), foreign ? ", not a regular file of ours or root's" : "");
  return verdict::broken;
}

}  // namespace

// -----------------------------------------------------------------------------------------

result<lock_methods> parse_lock_methods(std::string_view list) {
  lock_methods m{false, false, false};
  bool any = false;
  while (true) {
    const std::size_t comma = list.find(',');
    std::string_view word = list.substr(0, comma);
    while (!word.empty() && (word.front() == ' ' || word.front() == '\t')) {
      word.remove_prefix(1);
    }
    while (!word.empty() && (word.back() == ' ' || word.back() == '\t')) {
      word.remove_suffix(1);
    }
    bool* slot = nullptr;
    if (word == "dotlock") {
      slot = &m.dotlock;
    } else if (word == "fcntl") {
      slot = &m.fcntl;
    } else if (word == "flock") {
      slot = &m.flock;
    }
    if (slot == nullptr) {
      return error(errc::invalid,
                   "unknown lock method \"" + std::string(word) + "\" (dotlock, fcntl or flock)");
    }
    if (*slot) {
      return error(errc::invalid, "lock method \"" + std::string(word) + "\" given twice");
    }
    *slot = true;
    any = true;
    if (comma == std::string_view::npos) {
      break;
    }
    list.remove_prefix(comma + 1);
  }
  if (!any) {
    return error(errc::invalid, "no lock method");
  }
  return m;
}

// -----------------------------------------------------------------------------------------
// dotlock

dotlock::dotlock(dotlock&& o) noexcept
    : path_(std::exchange(o.path_, std::string())), dev_(o.dev_), ino_(o.ino_) {}

dotlock& dotlock::operator=(dotlock&& o) noexcept {
  if (this != &o) {
    (void)release();
    path_ = std::exchange(o.path_, std::string());
    dev_ = o.dev_;
    ino_ = o.ino_;
  }
  return *this;
}

dotlock::~dotlock() { (void)release(); }

result<dotlock> dotlock::acquire(const std::string& lock_path, steady_clock::time_point deadline,
                                 std::chrono::seconds stale_age, bool check_pid) {
  const auto [dir, name] = split_path(lock_path);
  auto dir_fd = open_directory(dir, lock_path);
  if (!dir_fd.ok()) {
    return std::move(dir_fd).err();
  }
  const std::string tmp = temp_lock_name();
  const std::string tmp_display = dir + "/" + tmp;

  int raw = -1;
  do {
    raw = ::openat(dir_fd->get(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                   dotlock_mode);
  } while (raw < 0 && errno == EINTR);
  if (raw < 0) {
    const int err = errno;
    return error::from_errno(err, "lock: create " + tmp_display, create_errc(err));
  }
  unique_fd tmp_fd(raw);
  struct tmp_remover {
    int dir;
    const std::string& name;
    ~tmp_remover() { ::unlinkat(dir, name.c_str(), 0); }
  } remover{dir_fd->get(), tmp};

  const std::string pid_text = std::to_string(::getpid()) + "\n";
  POSTERN_TRY(write_all(tmp_fd.get(), pid_text, tmp_display));

  milliseconds delay = first_poll_delay;
  int missing_lock = 0;
  for (;;) {
    if (::linkat(dir_fd->get(), tmp.c_str(), dir_fd->get(), name.c_str(), 0) != 0) {
      const int err = errno;
      if (err == EPERM || err == EOPNOTSUPP || err == EMLINK) {
        // A file system without hard links: O_EXCL creation (atomic on local file systems
        // and NFSv3+).
        const int lfd =
            ::openat(dir_fd->get(), name.c_str(),
                     O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, dotlock_mode);
        if (lfd >= 0) {
          unique_fd lock_fd(lfd);
          auto w = write_all(lfd, pid_text, lock_path);
          struct stat st {};
          if (!w.ok() || ::fstat(lfd, &st) != 0) {
            ::unlinkat(dir_fd->get(), name.c_str(), 0);
            if (!w.ok()) {
              return std::move(w).err();
            }
            const int serr = errno;
            return error::from_errno(serr, "lock: stat " + lock_path);
          }
          dotlock out;
          out.path_ = lock_path;
          out.dev_ = st.st_dev;
          out.ino_ = st.st_ino;
          return out;
        }
        const int cerr = errno;
        if (cerr != EEXIST) {
          return error::from_errno(cerr, "lock: create " + lock_path, create_errc(cerr));
        }
      } else if (err != EEXIST && err != EINTR) {
        // link()'s result is not trusted over NFS; the lstat below decides. These errors
        // however mean the link cannot have happened.
        if (err == EACCES || err == EROFS || err == ENOENT || err == ENOSPC || err == EDQUOT) {
          return error::from_errno(err, "lock: create " + lock_path, create_errc(err));
        }
      }
    }

    struct stat tmp_st {};
    struct stat lock_st {};
    if (::fstat(tmp_fd.get(), &tmp_st) != 0) {
      const int err = errno;
      return error::from_errno(err, "lock: stat " + tmp_display);
    }
    if (::fstatat(dir_fd->get(), name.c_str(), &lock_st, AT_SYMLINK_NOFOLLOW) == 0) {
      if (same_file(tmp_st, lock_st)) {
        dotlock out;
        out.path_ = lock_path;
        out.dev_ = lock_st.st_dev;
        out.ino_ = lock_st.st_ino;
        return out;  // the remover unlinks the temporary name; the lock keeps its inode
      }
      missing_lock = 0;
      // Someone else's lock. Refresh our temp file's times to read the file system's "now".
      if (::futimens(tmp_fd.get(), nullptr) != 0 || ::fstat(tmp_fd.get(), &tmp_st) != 0) {
        const int err = errno;
        return error::from_errno(err, "lock: touch " + tmp_display);
      }
      auto v = break_if_stale(dir_fd->get(), name, lock_path, tmp_st.st_mtim, stale_age, check_pid);
      if (!v.ok()) {
        return std::move(v).err();
      }
      if (*v != verdict::busy) {
        continue;  // gone or broken: try again at once
      }
    } else {
      const int err = errno;
      if (err != ENOENT) {
        return error::from_errno(err, "lock: stat " + lock_path);
      }
      // link() failed yet no lock exists: it was removed in between. Retry at once, a few
      // times, before treating it as an error (as liblockfile does).
      if (++missing_lock <= 5) {
        continue;
      }
      return error(errc::temporary, "lock: cannot create " + lock_path);
    }
    if (!wait_a_little(deadline, delay)) {
      return error(errc::in_use, "lock: " + lock_path + " is held by another process");
    }
  }
}

namespace {

enum class lock_check { ours, not_ours, unknown };

// Whether `path` is still the lock file we created: same inode and our pid inside (an inode
// number alone can be reused at once by a lock someone else created after breaking ours).
// unknown: the file could not be opened or read (EMFILE, EIO), which says neither.
lock_check check_ours(const std::string& path, dev_t dev, ino_t ino) {
  int fd = -1;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    return errno == ENOENT || errno == ELOOP ? lock_check::not_ours : lock_check::unknown;
  }
  const unique_fd owner(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return lock_check::unknown;
  }
  if (st.st_dev != dev || st.st_ino != ino) {
    return lock_check::not_ours;
  }
  std::array<char, max_pid_text + 1> buf{};
  ssize_t n = -1;
  do {
    n = ::pread(fd, buf.data(), max_pid_text, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    return lock_check::unknown;
  }
  return n > 0 && std::string_view(buf.data(), static_cast<std::size_t>(n)) ==
                      std::to_string(::getpid()) + "\n"
             ? lock_check::ours
             : lock_check::not_ours;
}

}  // namespace

result<void> dotlock::touch() {
  if (path_.empty()) {
    return ok_result();
  }
  switch (check_ours(path_, dev_, ino_)) {
    case lock_check::ours:
      break;
    case lock_check::not_ours:
      return error(errc::temporary, "lock: " + path_ + " was broken by another process");
    case lock_check::unknown:
      return error(errc::temporary, "lock: cannot read " + path_ + " to check that it is ours");
  }
  if (::utimensat(AT_FDCWD, path_.c_str(), nullptr, AT_SYMLINK_NOFOLLOW) != 0) {
    const int err = errno;
    return error::from_errno(err, "lock: touch " + path_);
  }
  return ok_result();
}

result<void> dotlock::release() {
  if (path_.empty()) {
    return ok_result();
  }
  const std::string path = std::exchange(path_, std::string());
  const lock_check check = check_ours(path, dev_, ino_);
  // A lock file that cannot be read (EMFILE, EIO) is removed when its name still holds our
  // inode: left in place, it would keep everyone out until it is stale.
  struct stat st {};
  if (check == lock_check::not_ours ||
      (check == lock_check::unknown &&
       (::lstat(path.c_str(), &st) != 0 || st.st_dev != dev_ || st.st_ino != ino_))) {
    return error(errc::temporary, "lock: " + path + " was broken or replaced while held");
  }
  // One more attempt after a failed removal (EIO), if the file is still ours: a dotlock left
  // behind keeps everyone out until it is stale (mbox_dotlock_stale_age).
  for (int attempt = 0;; ++attempt) {
    if (::unlink(path.c_str()) == 0) {
      return ok_result();
    }
    const int err = errno;
    if (err == ENOENT && attempt > 0) {
      return ok_result();
    }
    if (attempt > 0 || check_ours(path, dev_, ino_) != lock_check::ours) {
      return error::from_errno(err, "lock: remove " + path);
    }
  }
}

// -----------------------------------------------------------------------------------------
// mailbox_lock

mailbox_lock::mailbox_lock(mailbox_lock&& o) noexcept
    : dot_(std::move(o.dot_)),
      fd_(std::exchange(o.fd_, -1)),
      fcntl_(std::exchange(o.fcntl_, false)),
      ofd_(o.ofd_),
      flock_(std::exchange(o.flock_, false)),
      dotlock_skipped_(std::exchange(o.dotlock_skipped_, false)),
      held_(std::exchange(o.held_, false)) {}

mailbox_lock& mailbox_lock::operator=(mailbox_lock&& o) noexcept {
  if (this != &o) {
    (void)release();
    dot_ = std::move(o.dot_);
    fd_ = std::exchange(o.fd_, -1);
    fcntl_ = std::exchange(o.fcntl_, false);
    ofd_ = o.ofd_;
    flock_ = std::exchange(o.flock_, false);
    dotlock_skipped_ = std::exchange(o.dotlock_skipped_, false);
    held_ = std::exchange(o.held_, false);
  }
  return *this;
}

mailbox_lock::~mailbox_lock() { (void)release(); }

namespace {

bool is_full_disk(const error& e) noexcept {
  return e.cause() == std::error_code(ENOSPC, std::generic_category()) ||
         e.cause() == std::error_code(EDQUOT, std::generic_category());
}

}  // namespace

result<mailbox_lock> mailbox_lock::acquire(const std::string& path, int fd,
                                           const lock_options& opts) {
  const auto deadline = steady_clock::now() + opts.timeout;
  mailbox_lock out;  // releases whatever was taken if we return early
  out.fd_ = fd;
  out.held_ = true;
  if (opts.methods.dotlock) {
    auto d =
        dotlock::acquire(path + ".lock", deadline, opts.dotlock_stale_age, opts.dotlock_check_pid);
    if (d.ok()) {
      out.dot_ = std::move(*d);
    } else if (opts.read_without_dotlock_when_full && is_full_disk(d.err())) {
      log::warning(
          "{}; reading {} under kernel locks only (no update is made without the "
          "dotlock)",
          d.err().message(), path);
      out.dotlock_skipped_ = true;
    } else {
      out.held_ = false;
      return std::move(d).err();
    }
  }
  if (opts.methods.fcntl || out.dotlock_skipped_) {
    milliseconds delay = first_poll_delay;
    bool ofd = true;
    for (;;) {
      struct flock fl {};
      fl.l_type = F_WRLCK;
      fl.l_whence = SEEK_SET;
      fl.l_start = 0;
      fl.l_len = 0;  // the whole file, however it grows
      fl.l_pid = 0;
      if (::fcntl(fd, ofd ? F_OFD_SETLK : F_SETLK, &fl) == 0) {
        out.fcntl_ = true;
        out.ofd_ = ofd;
        break;
      }
      const int err = errno;
      if (err == EINTR) {
        continue;
      }
      if (err == EINVAL && ofd) {
        ofd = false;  // kernel or file system without open file description locks
        continue;
      }
      if (err != EAGAIN && err != EACCES) {
        return error::from_errno(err, "lock: fcntl " + path);
      }
      if (!wait_a_little(deadline, delay)) {
        return error(errc::in_use, "lock: " + path + " is fcntl-locked by another process");
      }
    }
  }
  if (opts.methods.flock) {
    milliseconds delay = first_poll_delay;
    for (;;) {
      if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
        out.flock_ = true;
        break;
      }
      const int err = errno;
      if (err == EINTR) {
        continue;
      }
      if (err != EWOULDBLOCK) {
        return error::from_errno(err, "lock: flock " + path);
      }
      if (!wait_a_little(deadline, delay)) {
        return error(errc::in_use, "lock: " + path + " is flock-locked by another process");
      }
    }
  }
  return out;
}

result<void> mailbox_lock::touch() { return dot_.touch(); }

result<void> mailbox_lock::release() {
  if (!held_) {
    return ok_result();
  }
  held_ = false;
  dotlock_skipped_ = false;
  // Kernel locks first, dotlock last: the reverse of acquisition.
  if (flock_) {
    ::flock(fd_, LOCK_UN);
    flock_ = false;
  }
  if (fcntl_) {
    struct flock fl {};
    fl.l_type = F_UNLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 0;
    fl.l_len = 0;
    fl.l_pid = 0;
    ::fcntl(fd_, ofd_ ? F_OFD_SETLK : F_SETLK, &fl);
    fcntl_ = false;
  }
  return dot_.release();
}

// -----------------------------------------------------------------------------------------

namespace {

// Why the session lock file `st` must not be used (empty: it may).
std::string session_file_problem(const struct stat& st) {
  if (!S_ISREG(st.st_mode)) {
    return "not a regular file";
  }
  if (st.st_uid != ::geteuid()) {
    return "owned by uid " + std::to_string(st.st_uid) + ", not by uid " +
           std::to_string(::geteuid());
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return "writable by others";
  }
  return {};
}

}  // namespace

result<unique_fd> take_session_lock(int dir_fd, const std::string& name,
                                    const std::string& display) {
  unique_fd fd;
  for (int attempt = 0;; ++attempt) {
    const int raw =
        ::openat(dir_fd, name.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK,
                 session_lock_mode);
    std::string problem;
    if (raw >= 0) {
      fd.reset(raw);
      struct stat st {};
      if (::fstat(fd.get(), &st) != 0) {
        const int err = errno;
        return error::from_errno(err, "lock: stat " + display);
      }
      problem = session_file_problem(st);
      if (problem.empty()) {
        break;
      }
    } else {
      const int err = errno;
      if (err == EINTR) {
        continue;
      }
      if (err != ELOOP && err != EACCES && err != ENXIO && err != EISDIR) {
        return error::from_errno(err, "lock: open " + display, create_errc(err));
      }
      problem =
          err == ELOOP ? std::string("a symbolic link") : std::generic_category().message(err);
    }
    // Planted or damaged: never used. Set aside (renamed, so a symlink is not followed and
    // another user's flock on it holds nothing of ours) and created afresh, once.
    fd.reset();
    const std::string aside =
        name + ".aside-" + std::to_string(::time(nullptr)) + "-" + std::to_string(::getpid());
    if (attempt > 0 || ::renameat(dir_fd, name.c_str(), dir_fd, aside.c_str()) != 0) {
      log::error("lock: {} is {}; not used", display, problem);
      return error(errc::permanent, fmt::format("lock: {} is {}", display, problem));
    }
    log::error("lock: {} was {}; renamed to {}", display, problem, aside);
  }
  for (;;) {
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) == 0) {
      return fd;
    }
    const int err = errno;
    if (err == EWOULDBLOCK) {
      return error::from_errno(err, "lock: " + display + " is held by another session",
                               errc::in_use);
    }
    if (err != EINTR) {
      return error::from_errno(err, "lock: flock " + display);
    }
  }
}

}  // namespace postern::store::lock
