#include "store/lock/mailbox_lock.hpp"

#include <gtest/gtest.h>
#include "common/test_files.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

extern char** environ;

namespace postern::store::lock {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

struct temp_dir : test::temp_dir {
  temp_dir() : test::temp_dir("postern-lock") {}
};
using test::read_file;
using test::write_file;

// A pid that certainly belongs to no process: a child that has exited and been reaped.
pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;
}

void set_age(const std::string& path, std::chrono::seconds age) {
  struct timespec ts[2];
  ::clock_gettime(CLOCK_REALTIME, &ts[0]);
  ts[0].tv_sec -= static_cast<time_t>(age.count());
  ts[1] = ts[0];
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), ts, 0), 0);
}

auto deadline_in(std::chrono::milliseconds d) { return std::chrono::steady_clock::now() + d; }

// Runs a program and returns its exit status (or -1).
int run(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) {
    args.push_back(const_cast<char*>(a.c_str()));
  }
  args.push_back(nullptr);
  pid_t pid = 0;
  if (::posix_spawn(&pid, args[0], nullptr, nullptr, args.data(), environ) != 0) {
    return -1;
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

constexpr const char* dotlockfile_bin = "/usr/bin/dotlockfile";

// ---------------------------------------------------------------------------------------

TEST(parse_lock_methods, table) {
  struct row {
    std::string_view text;
    bool ok;
    lock_methods want;
  };
  const std::vector<row> rows = {
      {"dotlock", true, {true, false, false}},
      {"fcntl", true, {false, true, false}},
      {"flock", true, {false, false, true}},
      {"dotlock,fcntl", true, {true, true, false}},
      {"fcntl, dotlock", true, {true, true, false}},
      {"dotlock,fcntl,flock", true, {true, true, true}},
      {"", false, {}},
      {"dotlock,", false, {}},
      {"dotlock,dotlock", false, {}},
      {"lockf", false, {}},
      {"DOTLOCK", false, {}},
  };
  for (const auto& r : rows) {
    SCOPED_TRACE(std::string(r.text));
    auto m = parse_lock_methods(r.text);
    ASSERT_EQ(m.ok(), r.ok);
    if (r.ok) {
      EXPECT_EQ(*m, r.want);
    } else {
      EXPECT_EQ(m.err().code(), errc::invalid);
    }
  }
}

TEST(dotlock, create_hold_release_and_leave_no_temp_files) {
  temp_dir d;
  const std::string lock = d.path() + "/user.lock";
  {
    auto l = dotlock::acquire(lock, deadline_in(1s), 600s, true);
    ASSERT_TRUE(l.ok()) << l.err().message();
    EXPECT_TRUE(l->held());
    EXPECT_EQ(read_file(lock), std::to_string(::getpid()) + "\n");  // liblockfile's format
    std::size_t files = 0;
    for (const auto& e : fs::directory_iterator(d.path())) {
      (void)e;
      ++files;
    }
    EXPECT_EQ(files, 1u);  // the temporary link name is gone
    EXPECT_TRUE(l->touch().ok());
    EXPECT_TRUE(l->release().ok());
  }
  EXPECT_FALSE(fs::exists(lock));
}

TEST(dotlock, held_by_live_process_times_out_in_use) {
  temp_dir d;
  const std::string lock = d.path() + "/user.lock";
  auto first = dotlock::acquire(lock, deadline_in(1s), 600s, true);
  ASSERT_TRUE(first.ok());
  const auto t0 = std::chrono::steady_clock::now();
  auto second = dotlock::acquire(lock, deadline_in(200ms), 600s, true);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.err().code(), errc::in_use);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 150ms);
  EXPECT_TRUE(fs::exists(lock));
  // Younger than the stale age, a live holder keeps it; older, it is broken whatever pid it
  // holds (a holder touches its lock while it works).
  set_age(lock, 500s);
  auto third = dotlock::acquire(lock, deadline_in(100ms), 600s, true);
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.err().code(), errc::in_use);
  set_age(lock, 601s);
  auto fourth = dotlock::acquire(lock, deadline_in(100ms), 600s, true);
  ASSERT_TRUE(fourth.ok()) << fourth.err().message();
}

// pid 1 is alive forever (kill(1, 0) succeeds, or fails with EPERM): such a lock is judged by
// its age like any other.
TEST(dotlock, pid_1_is_not_special) {
  temp_dir d;
  const std::string lock = d.path() + "/user.lock";
  write_file(lock, "1\n");
  auto young = dotlock::acquire(lock, deadline_in(100ms), 600s, true);
  ASSERT_FALSE(young.ok());
  EXPECT_EQ(young.err().code(), errc::in_use);
  set_age(lock, 601s);
  auto old = dotlock::acquire(lock, deadline_in(100ms), 600s, true);
  ASSERT_TRUE(old.ok()) << old.err().message();
  EXPECT_EQ(read_file(lock), std::to_string(::getpid()) + "\n");
}

// A lock that is not a regular file (a FIFO would block a reader, a symlink points anywhere)
// is never opened for reading its pid, and is broken at once; what a symlink points to is
// untouched.
TEST(dotlock, fifo_or_symlink_lock_is_broken_not_followed) {
  temp_dir d;
  const std::string lock = d.path() + "/user.lock";
  ASSERT_EQ(::mkfifo(lock.c_str(), 0644), 0);
  auto f = dotlock::acquire(lock, deadline_in(2s), 600s, true);
  ASSERT_TRUE(f.ok()) << f.err().message();
  ASSERT_TRUE(f->release().ok());
  const std::string target = d.path() + "/precious";
  write_file(target, std::to_string(::getpid()) + "\n");
  fs::create_symlink(target, lock);
  auto s = dotlock::acquire(lock, deadline_in(2s), 600s, true);
  ASSERT_TRUE(s.ok()) << s.err().message();
  EXPECT_EQ(read_file(target), std::to_string(::getpid()) + "\n");
  EXPECT_FALSE(fs::is_symlink(lock));
}

// Another user's lock (not ours, not root's) holding a live pid: planted, broken at once.
TEST(dotlock, lock_of_another_user_is_broken_at_once) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to create a file owned by another user";
  }
  temp_dir d;
  const std::string lock = d.path() + "/user.lock";
  write_file(lock, "1\n");
  ASSERT_EQ(::chown(lock.c_str(), 65534, 65534), 0);
  auto l = dotlock::acquire(lock, deadline_in(2s), 600s, true);
  ASSERT_TRUE(l.ok()) << l.err().message();
}

// On a full disk the dotlock's temporary file cannot be written; a read-only scan may go on
// under the kernel locks (fcntl taken even when only dotlock is configured), an update not.
TEST(mailbox_lock, full_disk_reads_without_dotlock_only_when_allowed) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to mount a small tmpfs";
  }
  temp_dir d;
  const std::string mnt = d.path() + "/mnt";
  fs::create_directory(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=64k") != 0) {
    GTEST_SKIP() << "cannot mount tmpfs";
  }
  struct unmount {
    std::string p;
    ~unmount() { ::umount2(p.c_str(), MNT_DETACH); }
  } um{mnt};
  const std::string box = mnt + "/user";
  write_file(box, "From a Mon Jan  1 00:00:00 2024\n\nbody\n");
  {
    std::ofstream fill(mnt + "/fill", std::ios::binary);
    const std::string block(4096, 'x');
    for (int i = 0; i < 64 && fill.good(); ++i) {
      fill.write(block.data(), static_cast<std::streamsize>(block.size()));
      fill.flush();
    }
  }
  const int fd = ::open(box.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  unique_fd owner(fd);
  lock_options o;
  o.methods = {true, false, false};
  o.timeout = std::chrono::milliseconds(200);  // not 200ms: cppcheck 2.10 fails on it
  auto strict = mailbox_lock::acquire(box, fd, o);
  ASSERT_FALSE(strict.ok());
  o.read_without_dotlock_when_full = true;
  auto relaxed = mailbox_lock::acquire(box, fd, o);
  ASSERT_TRUE(relaxed.ok()) << relaxed.err().message();
  EXPECT_TRUE(relaxed->held());
  EXPECT_FALSE(relaxed->complete());
  EXPECT_FALSE(fs::exists(box + ".lock"));
  // The fcntl lock is held: another process cannot take it.
  const pid_t child = ::fork();
  if (child == 0) {
    const int cfd = ::open(box.c_str(), O_RDWR);
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    ::_exit(::fcntl(cfd, F_SETLK, &fl) == 0 ? 1 : 0);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(dotlock, dead_pid_is_stale_at_once) {
  temp_dir d;
  const std::string lock = d.path() + "/user.lock";
  write_file(lock, std::to_string(dead_pid()) + "\n");
  auto l = dotlock::acquire(lock, deadline_in(100ms), 600s, true);
  ASSERT_TRUE(l.ok()) << l.err().message();
  EXPECT_EQ(read_file(lock), std::to_string(::getpid()) + "\n");
}

TEST(dotlock, dead_pid_without_pid_checks_waits_for_age) {
  temp_dir d;
  const std::string lock = d.path() + "/user.lock";
  write_file(lock, std::to_string(dead_pid()) + "\n");
  auto young = dotlock::acquire(lock, deadline_in(100ms), 600s, false);
  ASSERT_FALSE(young.ok());
  EXPECT_EQ(young.err().code(), errc::in_use);
  set_age(lock, 601s);
  auto old = dotlock::acquire(lock, deadline_in(100ms), 600s, false);
  ASSERT_TRUE(old.ok()) << old.err().message();
}

TEST(dotlock, pidless_lock_is_stale_only_when_old) {
  temp_dir d;
  const std::string lock = d.path() + "/user.lock";
  for (const std::string content : {"", "0\n", "garbage"}) {
    SCOPED_TRACE(content);
    write_file(lock, content);
    auto young = dotlock::acquire(lock, deadline_in(100ms), 600s, true);
    ASSERT_FALSE(young.ok());
    EXPECT_EQ(young.err().code(), errc::in_use);
    set_age(lock, 700s);
    auto old = dotlock::acquire(lock, deadline_in(100ms), 600s, true);
    ASSERT_TRUE(old.ok()) << old.err().message();
    ASSERT_TRUE(old->release().ok());
  }
}

TEST(dotlock, lock_released_by_holder_is_taken_while_waiting) {
  temp_dir d;
  const std::string lock = d.path() + "/user.lock";
  const pid_t child = ::fork();
  if (child == 0) {
    auto l = dotlock::acquire(lock, deadline_in(1s), 600s, true);
    if (!l.ok()) {
      ::_exit(1);
    }
    ::usleep(300 * 1000);
    ::_exit(l->release().ok() ? 0 : 2);
  }
  while (!fs::exists(lock)) {
    ::usleep(1000);
  }
  auto l = dotlock::acquire(lock, deadline_in(5s), 600s, true);
  ASSERT_TRUE(l.ok()) << l.err().message();
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(dotlock, release_notices_a_broken_lock) {
  temp_dir d;
  const std::string lock = d.path() + "/user.lock";
  auto l = dotlock::acquire(lock, deadline_in(1s), 600s, true);
  ASSERT_TRUE(l.ok());
  fs::remove(lock);
  write_file(lock, "12345\n");  // someone else's now
  EXPECT_FALSE(l->touch().ok());
  auto r = l->release();
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(fs::exists(lock));  // not ours: left alone
}

TEST(dotlock, unwritable_directory_is_permanent) {
  if (::geteuid() == 0) {
    GTEST_SKIP() << "root can write anywhere";
  }
  temp_dir d;
  ASSERT_EQ(::chmod(d.path().c_str(), 0555), 0);
  auto l = dotlock::acquire(d.path() + "/user.lock", deadline_in(100ms), 600s, true);
  ::chmod(d.path().c_str(), 0755);
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.err().code(), errc::permanent);
}

TEST(dotlock, unwritable_directory_as_unprivileged_user_is_permanent) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to switch to an unprivileged user";
  }
  temp_dir d;
  ASSERT_EQ(::chmod(d.path().c_str(), 0755), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) {
      ::_exit(2);
    }
    auto l = dotlock::acquire(d.path() + "/user.lock", deadline_in(100ms), 600s, true);
    ::_exit(!l.ok() && l.err().code() == errc::permanent ? 0 : 1);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(dotlock, interop_with_dotlockfile) {
  if (::access(dotlockfile_bin, X_OK) != 0) {
    GTEST_SKIP() << "dotlockfile (liblockfile-bin) is not installed";
  }
  temp_dir d;
  const std::string lock = d.path() + "/user.lock";
  // dotlockfile -p writes its caller's pid (ours): a live lock we must respect.
  ASSERT_EQ(run({dotlockfile_bin, "-l", "-r", "0", "-p", lock}), 0);
  auto blocked = dotlock::acquire(lock, deadline_in(200ms), 600s, true);
  ASSERT_FALSE(blocked.ok());
  EXPECT_EQ(blocked.err().code(), errc::in_use);
  ASSERT_EQ(run({dotlockfile_bin, "-u", lock}), 0);
  // Ours blocks dotlockfile.
  auto ours = dotlock::acquire(lock, deadline_in(1s), 600s, true);
  ASSERT_TRUE(ours.ok()) << ours.err().message();
  EXPECT_NE(run({dotlockfile_bin, "-l", "-r", "0", "-p", lock}), 0);
  ASSERT_TRUE(ours->release().ok());
  EXPECT_EQ(run({dotlockfile_bin, "-l", "-r", "0", "-p", lock}), 0);
  EXPECT_EQ(run({dotlockfile_bin, "-u", lock}), 0);
}

// ---------------------------------------------------------------------------------------

class kernel_lock_holder {
 public:
  // Forks a child that takes `kind` ("fcntl" or "flock") on `path` and waits for a byte on a
  // pipe before exiting.
  kernel_lock_holder(const std::string& path, const std::string& kind) {
    int ready[2];
    int go[2];
    if (::pipe(ready) != 0 || ::pipe(go) != 0) {
      throw std::runtime_error("pipe");
    }
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(path.c_str(), O_RDWR);
      bool ok = fd >= 0;
      if (ok && kind == "fcntl") {
        struct flock fl {};
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        ok = ::fcntl(fd, F_SETLK, &fl) == 0;  // classic POSIX lock, as MDAs take it
      } else if (ok) {
        ok = ::flock(fd, LOCK_EX | LOCK_NB) == 0;
      }
      char c = ok ? 'y' : 'n';
      (void)!::write(ready[1], &c, 1);
      (void)!::read(go[0], &c, 1);
      ::_exit(0);
    }
    ::close(ready[1]);
    ::close(go[0]);
    go_ = go[1];
    char c = 0;
    ok_ = ::read(ready[0], &c, 1) == 1 && c == 'y';
    ::close(ready[0]);
  }
  ~kernel_lock_holder() { release(); }
  bool ok() const { return ok_; }
  void release() {
    if (pid_ > 0) {
      char c = 'x';
      (void)!::write(go_, &c, 1);
      ::close(go_);
      int status = 0;
      ::waitpid(pid_, &status, 0);
      pid_ = -1;
    }
  }

 private:
  pid_t pid_ = -1;
  int go_ = -1;
  bool ok_ = false;
};

TEST(mailbox_lock, fcntl_and_flock_conflict_with_other_processes) {
  temp_dir d;
  const std::string box = d.path() + "/user";
  write_file(box, "From a\n\n");
  const unique_fd owned(::open(box.c_str(), O_RDWR | O_CLOEXEC));  // closed however the test ends
  const int fd = owned.get();
  ASSERT_GE(fd, 0);
  for (const std::string kind : {"fcntl", "flock"}) {
    SCOPED_TRACE(kind);
    lock_options o;
    o.methods = {false, kind == "fcntl", kind == "flock"};
    o.timeout = std::chrono::milliseconds(200);  // not 200ms: cppcheck 2.10 fails on it
    kernel_lock_holder holder(box, kind);
    ASSERT_TRUE(holder.ok());
    auto blocked = mailbox_lock::acquire(box, fd, o);
    ASSERT_FALSE(blocked.ok());
    EXPECT_EQ(blocked.err().code(), errc::in_use);
    holder.release();
    auto l = mailbox_lock::acquire(box, fd, o);
    ASSERT_TRUE(l.ok()) << l.err().message();
    // While we hold it, another process cannot take it.
    kernel_lock_holder other(box, kind);
    EXPECT_FALSE(other.ok());
    other.release();
    ASSERT_TRUE(l->release().ok());
    kernel_lock_holder after(box, kind);
    EXPECT_TRUE(after.ok());
  }
}

TEST(mailbox_lock, fcntl_survives_closing_another_descriptor) {
  temp_dir d;
  const std::string box = d.path() + "/user";
  write_file(box, "x");
  const int fd = ::open(box.c_str(), O_RDWR | O_CLOEXEC);
  lock_options o;
  o.methods = {false, true, false};
  auto l = mailbox_lock::acquire(box, fd, o);
  ASSERT_TRUE(l.ok());
  ::close(::open(box.c_str(), O_RDONLY));  // would drop a classic POSIX lock
  kernel_lock_holder other(box, "fcntl");
  EXPECT_FALSE(other.ok());
  other.release();
  ASSERT_TRUE(l->release().ok());
  ::close(fd);
}

TEST(mailbox_lock, all_methods_together_and_partial_failure_releases) {
  temp_dir d;
  const std::string box = d.path() + "/user";
  write_file(box, "x");
  const int fd = ::open(box.c_str(), O_RDWR | O_CLOEXEC);
  lock_options o;
  o.methods = {true, true, true};
  o.timeout = std::chrono::milliseconds(200);  // not 200ms: cppcheck 2.10 fails on it
  {
    auto l = mailbox_lock::acquire(box, fd, o);
    ASSERT_TRUE(l.ok()) << l.err().message();
    EXPECT_TRUE(fs::exists(box + ".lock"));
  }
  EXPECT_FALSE(fs::exists(box + ".lock"));  // released by the destructor
  // fcntl held elsewhere: the dotlock taken first must not stay behind.
  kernel_lock_holder holder(box, "fcntl");
  ASSERT_TRUE(holder.ok());
  auto l = mailbox_lock::acquire(box, fd, o);
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.err().code(), errc::in_use);
  EXPECT_FALSE(fs::exists(box + ".lock"));
  ::close(fd);
}

TEST(session_lock, exclusive_within_and_across_processes_and_never_stale) {
  temp_dir d;
  const int dir = ::open(d.path().c_str(), O_RDONLY | O_DIRECTORY);
  auto a = take_session_lock(dir, ".user.postern-session", "session");
  ASSERT_TRUE(a.ok()) << a.err().message();
  struct stat st {};
  ASSERT_EQ(::stat((d.path() + "/.user.postern-session").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto b = take_session_lock(dir, ".user.postern-session", "session");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.err().code(), errc::in_use);
  const pid_t child = ::fork();
  if (child == 0) {
    auto c = take_session_lock(dir, ".user.postern-session", "session");
    ::_exit(!c.ok() && c.err().code() == errc::in_use ? 0 : 1);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  a->reset();
  auto again = take_session_lock(dir, ".user.postern-session", "session");
  EXPECT_TRUE(again.ok());
  // A holder killed with SIGKILL leaves nothing stale.
  again->reset();
  const pid_t holder = ::fork();
  if (holder == 0) {
    auto c = take_session_lock(dir, ".user.postern-session", "session");
    ::pause();
    ::_exit(0);
  }
  ::usleep(100 * 1000);
  ::kill(holder, SIGKILL);
  ::waitpid(holder, &status, 0);
  EXPECT_TRUE(take_session_lock(dir, ".user.postern-session", "session").ok());
  ::close(dir);
}

}  // namespace
}  // namespace postern::store::lock

namespace postern::store::lock {
namespace {

// A session lock file that is not a regular file of ours writable by nobody else (a FIFO, a
// symlink, a 0666 file, which another user may hold with flock) is renamed aside and a
// fresh one taken; what a symlink points to is untouched.
TEST(session_lock, planted_files_are_set_aside_not_used) {
  temp_dir d;
  const unique_fd dir(::open(d.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(dir.valid());
  const std::string name = ".user.postern-session";
  const std::string path = d.path() + "/" + name;
  const std::string target = d.path() + "/target";
  for (const std::string kind : {"fifo", "symlink", "world-writable"}) {
    SCOPED_TRACE(kind);
    for (const auto& e : fs::directory_iterator(d.path())) {
      fs::remove(e.path());
    }
    write_file(target, "keep");
    if (kind == "fifo") {
      ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
    } else if (kind == "symlink") {
      fs::create_symlink(target, path);
    } else {
      write_file(path, "");
      ASSERT_EQ(::chmod(path.c_str(), 0666), 0);
    }
    auto s = take_session_lock(dir.get(), name, path);
    ASSERT_TRUE(s.ok()) << s.err().message();
    struct stat st {};
    ASSERT_EQ(::lstat(path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISREG(st.st_mode));
    EXPECT_EQ(st.st_mode & 077, 0u);
    EXPECT_EQ(read_file(target), "keep");
    int aside = 0;
    for (const auto& e : fs::directory_iterator(d.path())) {
      aside += e.path().filename().string().starts_with(name + ".aside-") ? 1 : 0;
    }
    EXPECT_EQ(aside, 1);
  }
}

}  // namespace
}  // namespace postern::store::lock
