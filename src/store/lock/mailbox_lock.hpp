// Mailbox locking the way Debian's delivery agents and MUAs do it, plus a session lock.
//
// mailbox_lock takes, in this order and as configured, the locks that procmail, Postfix's
// local(8), Exim's appendfile, mutt and liblockfile's dotlockfile(1) take on a mail spool:
//
//  - dotlock: "<mailbox>.lock", created the NFS-safe way liblockfile documents
//    (lockfile_create(3)): a uniquely named file in the same directory holding our pid in ASCII
//    ("<pid>\n", liblockfile's format), link(2)ed to the lock name; success is judged by
//    lstat() of both names showing the same inode, never by link()'s return value (which NFS
//    may lose). A dotlock is stale, and is broken, when its mtime is older than
//    `dotlock_stale_age` whatever pid it holds (pid 1 and live processes included: holders
//    touch their locks while they work), when it holds the pid of a process that no longer
//    exists on this host (kill(pid, 0) fails with ESRCH; EPERM means alive; pid checks
//    off, as they must be when the spool is shared over NFS, skip this), or when it is not
//    a regular file owned by us or root (opened O_NOFOLLOW|O_NONBLOCK: planted by another
//    user). A lock left by a crashed delivery (or a crashed Postern) does not stop mail for
//    minutes. The age is measured against the file system's clock (the mtime
//    of our own freshly created temporary file), not ours, so NFS clock skew does not matter.
//    Breaking re-checks that the lock file is still the one judged stale (inode, mtime, size)
//    immediately before unlink; the remaining window of a few microseconds is the one every
//    dotlock implementation has.
//  - fcntl: a whole-file write lock, polled with F_SETLK until the deadline. Open file
//    description locks (F_OFD_SETLK, Linux >= 3.15) are used where the kernel has them: they
//    conflict with the classic POSIX locks the MDAs take, but unlike those they are not
//    dropped when this process closes some other descriptor of the same file (another
//    reader of the same mailbox). Without OFD support classic F_SETLK is used, and the caller
//    must not close other descriptors of the file while locked.
//  - flock: flock(LOCK_EX), polled with LOCK_NB until the deadline.
//
// One deadline covers all of them; on failure, whatever was taken is released again.
// Timeouts return errc::in_use (the mailbox is locked by someone else); a directory where the
// dotlock cannot be created (EACCES: on Debian /var/mail is root:mail 2775, so the session
// needs group mail, like Dovecot's mail_privileged_group) returns errc::permanent; other
// failures errc::temporary.
//
// take_session_lock: exclusion between POP3 sessions, across processes and within one,
// without touching the spool itself: flock(LOCK_EX | LOCK_NB) on a separate file that is
// never unlinked. It is held for the whole session, while mailbox_lock is taken only briefly
// (the initial scan and the QUIT update), so mail delivery is never stalled by an idle POP3
// client.
//
// Threading: a lock object is used from one thread at a time. Acquisition blocks (sleeps)
// up to the timeout; call it off the I/O threads. Ownership: mailbox_lock does not own the
// mailbox descriptor it locks; the caller keeps it open for the lock's life.
#pragma once

#include "common/result.hpp"
#include "common/unique_fd.hpp"

#include <sys/types.h>

#include <chrono>
#include <string>
#include <string_view>

namespace postern::store::lock {

struct lock_methods {
  bool dotlock = true;
  bool fcntl = true;
  bool flock = false;

  friend bool operator==(const lock_methods&, const lock_methods&) = default;
};

struct lock_options {
  // Debian's MDAs default: Postfix mailbox_delivery_lock = fcntl, dotlock; Exim appendfile
  // use_lockfile + use_fcntl_lock; procmail dotlock + kernel lock.
  lock_methods methods;
  // How long to wait for locks held by others (deliveries hold them for milliseconds).
  std::chrono::milliseconds timeout = std::chrono::seconds(30);
  // A dotlock is stale after this long, whatever pid it holds (liblockfile: 5 min, Postfix
  // stale_lock_time: 500 s, Mailutils: 10 min).
  std::chrono::seconds dotlock_stale_age = std::chrono::minutes(10);
  // Judge dotlocks holding a pid by whether that process lives. Turn off when the spool
  // directory is shared between hosts (NFS): a pid means nothing on another host.
  bool dotlock_check_pid = true;
  // For a read-only scan: when the dotlock cannot be created for lack of space (ENOSPC,
  // EDQUOT: its temporary file cannot be written on a full disk or over quota), go on
  // without it, under the fcntl lock (taken then even when not configured) and flock if
  // configured. mailbox_lock::complete() is false then; no update may be made under it.
  bool read_without_dotlock_when_full = false;
};

// Parses a comma-separated list of "dotlock", "fcntl", "flock" (at least one, no repeats)
// for configuration files. Errors: errc::invalid with the offending word.
result<lock_methods> parse_lock_methods(std::string_view list);

// The dotlock file "<path>.lock". Move-only; removes the lock file when destroyed if it is
// still ours.
class dotlock {
 public:
  dotlock() = default;
  dotlock(const dotlock&) = delete;
  dotlock& operator=(const dotlock&) = delete;
  dotlock(dotlock&& o) noexcept;
  dotlock& operator=(dotlock&& o) noexcept;
  ~dotlock();

  // Creates `lock_path` (normally "<mailbox>.lock"), waiting until `deadline` for a live
  // holder and breaking stale locks (see the header comment). Errors: errc::in_use on timeout;
  // errc::permanent when the directory refuses the lock (EACCES, EPERM, EROFS, ENOENT);
  // errc::temporary otherwise. Nothing is left behind on failure.
  static result<dotlock> acquire(const std::string& lock_path,
                                 std::chrono::steady_clock::time_point deadline,
                                 std::chrono::seconds stale_age, bool check_pid);

  bool held() const noexcept { return !path_.empty(); }
  // Updates the lock's mtime so that age-based stale detection by others (NFS, lockers
  // without pid checks) does not break it during a long update. Call every minute or so.
  result<void> touch();
  // Removes the lock if it is still ours (same inode). Errors: errc::temporary when it had
  // been broken or replaced by someone else (nothing is removed then) or unlink failed.
  result<void> release();

 private:
  std::string path_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

// All configured locks on one mailbox, taken in the order dotlock, fcntl, flock.
class mailbox_lock {
 public:
  mailbox_lock() = default;
  mailbox_lock(const mailbox_lock&) = delete;
  mailbox_lock& operator=(const mailbox_lock&) = delete;
  mailbox_lock(mailbox_lock&& o) noexcept;
  mailbox_lock& operator=(mailbox_lock&& o) noexcept;
  ~mailbox_lock();

  // Locks the mailbox at `path`, whose descriptor `fd` must be open read-write when fcntl is
  // configured (a write lock needs it). Errors: see the header comment. On error nothing is
  // held.
  static result<mailbox_lock> acquire(const std::string& path, int fd, const lock_options& opts);

  bool held() const noexcept { return held_; }
  // Every configured lock is held (false when the dotlock was skipped on a full disk).
  bool complete() const noexcept { return held_ && !dotlock_skipped_; }
  // Refreshes the dotlock's mtime (no-op without one).
  result<void> touch();
  // Releases everything; returns the first error (a dotlock found broken by someone else).
  result<void> release();

 private:
  dotlock dot_;
  int fd_ = -1;
  bool fcntl_ = false;
  bool ofd_ = false;  // fcntl lock is an open file description lock
  bool flock_ = false;
  bool dotlock_skipped_ = false;
  bool held_ = false;
};

// Opens (creating it with mode 0600 if needed) the file `name` in `dir_fd` and takes
// flock(LOCK_EX | LOCK_NB) on it. The returned descriptor holds the lock until closed; the
// kernel drops it when the process dies, so it can never be stale. `display` names the lock
// in error contexts. Errors: errc::in_use when another session holds it; errc::permanent
// when it cannot be created (EACCES, ...) or is not a regular file; errc::temporary
// otherwise.
result<unique_fd> take_session_lock(int dir_fd, const std::string& name,
                                    const std::string& display);

}  // namespace postern::store::lock
