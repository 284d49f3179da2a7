"""mbox crash recovery that cannot destroy, and an mbox spool in a shared directory.

Through the real posternd (event mode, virtual users): a QUIT update killed at many fault
points (POSTERN_TEST_MBOX_FAULT makes the daemon _exit there, as kill -9 would) followed by
mutt-like edits and a delivery before the next login; journals, index and session locks
planted by another local user (an unprivileged uid, via fork + setuid) in a 1777 spool
directory; a dotlock holding pid 1; fcntl-only locking; a login on a full disk;
`posternd --recover`. In root runs the test process is the harness's mail owner and does what
needs root (another uid, a mount) inside world.as_root(); run as an ordinary user, the tests
needing root are skipped.
"""

import errno
import fcntl
import os
import random
import re
import shutil
import subprocess
import time
import unittest

from postern_harness import missing, requires
from postern_harness import POSTERND, Closed, PosternTestCase

PASSWORD = "Tr-pw-1"
USER = "victim"
IS_ROOT = os.geteuid() == 0
NOBODY = 65534
FAULT_EXIT = 86


def message(tag, size=0):
    pad = b"".join(b"%05d line of %s\n" % (i, tag.encode()) for i in range(size))
    return (b"From list@example.org Mon Jan  1 00:00:00 2024\nFrom: list@example.org\n"
            b"Subject: " + tag.encode() + b"\n\nsame footer\n" + pad + b"\n")


def as_user(uid, fn):
    """Runs fn() in a child process with uid and gid `uid`; returns its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            fn()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def mutt_edit(data, gone, flagged):
    """Deletes the first message with subject `gone` in place; flags the first `flagged`."""
    at = data.find(b"Subject: " + gone + b"\n")
    if at >= 0:
        begin = data.rfind(b"From ", 0, at)
        end = data.find(b"\nFrom ", at)
        end = len(data) if end < 0 else end + 1
        data = data[:begin] + data[end:]
    subject = b"Subject: " + flagged + b"\n"
    f = data.find(subject)
    if f >= 0:
        data = data[:f + len(subject)] + b"Status: RO\n" + data[f + len(subject):]
    return data


class SpoolBase(PosternTestCase):
    locking = ["dotlock", "fcntl"]

    def setUp(self):
        super().setUp()
        self.spool_dir = self.world.path("spool")
        os.makedirs(self.spool_dir)
        self.spool = os.path.join(self.spool_dir, USER)
        self.state_dir = self.spool_dir
        self.world.add_passwd_line(f"{USER}:{{PLAIN}}{PASSWORD}::::::")
        self.world.config["mail"] = {"location": f"mbox:{self.spool_dir}/%u",
                                     "mbox_locking": list(self.locking),
                                     "mbox_lock_timeout": "2s"}

    def use_state_dir(self):
        root = self.world.path("state")
        os.makedirs(root)
        self.state_dir = os.path.join(root, USER)
        self.world.config["mail"]["mbox_state_dir"] = f"{root}/%u"

    def write(self, data):
        with open(self.spool, "wb") as f:
            f.write(data)

    def read(self):
        with open(self.spool, "rb") as f:
            return f.read()

    def session(self, srv):
        conn = srv.connect()
        conn.login(USER, PASSWORD)
        return conn

    def subjects(self, srv):
        """The Subject of every message, as a fresh session lists them."""
        with self.session(srv) as c:
            st = c.cmd("STAT")
            self.assertOk(st)
            out = []
            for i in range(1, int(st.split()[1]) + 1):
                st, body = c.cmd_multi(f"TOP {i} 0")
                self.assertOk(st)
                out += [line[9:] for line in body.decode().splitlines()
                        if line.startswith("Subject: ")]
            self.assertOk(c.quit())
        return out

    def start_with_env(self, **env):
        """A server whose process has `env` added to its environment."""
        return self.world.start(listeners=1, env=env)


class CrashThenForeignEdits(SpoolBase):
    """Defect 3 through posternd: the QUIT update dies at many points, then mutt deletes a
    message in place and a delivery appends a larger one; the next login must serve exactly
    what mutt and the delivery wrote (journal set aside, logged), nothing resurrected, no
    header erased, nothing appended."""

    def test_kill_at_many_points_then_mutt_and_delivery(self):
        original = b"".join(message(f"m{i}", size=40) for i in range(1, 7))
        late = message("late", size=400)
        crashed_steps = 0
        pending_steps = 0
        for step in list(range(1, 30)) + list(range(30, 600, 17)):
            for n in os.listdir(self.spool_dir):
                os.unlink(os.path.join(self.spool_dir, n))
            self.write(original)
            srv = self.start_with_env(POSTERN_TEST_MBOX_FAULT=str(step),
                                      POSTERN_TEST_MBOX_COPY_BUFFER="512")
            c = self.session(srv)
            self.assertOk(c.cmd("DELE 2"))
            # The fault kills posternd inside the update: QUIT may get a reply, none or a reset.
            # What counts is checked below: the exit status and the mailbox.
            try:
                c.quit()
            except (Closed, OSError):  # EOF or a reset; a timeout is an AssertionError
                pass
            c.close()
            time.sleep(0.05)
            if srv.alive():
                srv.stop()
                crashed = False
            else:
                self.assertEqual(srv.wait_exit(), FAULT_EXIT, f"step {step}")
                crashed = True
            crashed_steps += crashed
            pending = os.path.exists(os.path.join(self.spool_dir, ".victim.postern-journal"))
            pending_steps += pending
            edited = mutt_edit(self.read(), b"m4", b"m5") + late
            self.write(edited)
            srv = self.world.start()
            subjects = self.subjects(srv)
            srv.stop()
            # Exactly what mutt and the delivery left, listed as it is: a file torn by the
            # crash lists some kept messages twice (mutt saw and kept them), nothing more.
            self.assertEqual(self.read(), edited, f"step {step}")
            self.assertEqual(subjects, [m.decode() for m in
                                        re.findall(rb"(?m)^Subject: (\S+)$", edited)],
                             f"step {step}")
            if not pending:
                self.assertNotIn("m4", subjects, f"step {step}")
            self.assertEqual(subjects[-1], "late", f"step {step}")
            self.assertIn(b"Subject: m5\nStatus: RO\n", self.read())
            names = os.listdir(self.spool_dir)
            self.assertNotIn(".victim.postern-journal", names, f"step {step}")
            if pending:
                self.assertTrue(any(n.startswith(".victim.postern-journal.obsolete-")
                                    for n in names), f"step {step}: {names}")
                self.assertIn("is kept as", srv.log())
            if not crashed:
                break
        self.assertGreater(crashed_steps, 10)
        self.assertGreater(pending_steps, 5)

    def test_real_sigkill_during_large_updates_then_foreign_edits(self):
        """SIGKILL at random instants of a 6 MB rewrite (a write can stop mid-call, at a page
        boundary), then the same foreign edits: the file stays exactly as they left it."""
        rnd = random.Random(10)
        msgs = [message(f"k{i}", size=1500) for i in range(1, 9)]  # 8 x 0.75 MB
        original = b"".join(msgs)
        late = message("late", size=2000)
        for _ in range(10):
            for n in os.listdir(self.spool_dir):
                os.unlink(os.path.join(self.spool_dir, n))
            self.write(original)
            srv = self.world.start()
            c = self.session(srv)
            self.assertOk(c.cmd("DELE 1"))
            c.send(b"QUIT\r\n")
            time.sleep(rnd.uniform(0, 0.06))
            srv.kill()
            c.close()
            edited = mutt_edit(self.read(), b"k4", b"k5") + late
            self.write(edited)
            srv = self.world.start()
            subjects = self.subjects(srv)
            srv.stop()
            self.assertEqual(self.read(), edited)
            self.assertEqual(subjects, [m.decode() for m in
                                        re.findall(rb"(?m)^Subject: (\S+)$", edited)])

    def test_posternd_recover_completes_an_interrupted_update(self):
        original = b"".join(message(f"r{i}", size=40) for i in range(1, 5))
        journal = os.path.join(self.spool_dir, ".victim.postern-journal")
        for step in range(8, 60):  # the first step that leaves a committed journal
            self.write(original)
            srv = self.start_with_env(POSTERN_TEST_MBOX_FAULT=str(step),
                                      POSTERN_TEST_MBOX_COPY_BUFFER="512")
            c = self.session(srv)
            self.assertOk(c.cmd("DELE 1"))
            # The fault kills posternd inside the update: QUIT may get a reply, none or a reset.
            # What counts is checked below: the exit status and the mailbox.
            try:
                c.quit()
            except (Closed, OSError):  # EOF or a reset; a timeout is an AssertionError
                pass
            c.close()
            self.assertEqual(srv.wait_exit(), FAULT_EXIT)
            if os.path.exists(journal):
                break
        self.assertTrue(os.path.exists(journal))
        cfg = self.world.write_config()
        r = subprocess.run([POSTERND, "--config", cfg, "--recover", self.spool],
                           capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"completed", r.stdout)
        self.assertEqual(self.read(), b"".join(message(f"r{i}", size=40) for i in range(2, 5)))
        r = subprocess.run([POSTERND, "--config", cfg, "--recover", self.spool],
                           capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"no unfinished update", r.stdout)


NEEDS_ROOT = "needs root to plant files as another user"


class SharedSpool(SpoolBase):
    """A 1777 spool: another local user plants side files; the victim's login still works,
    nothing planted is followed or obeyed, the mailbox is untouched."""

    def setUp(self):
        super().setUp()
        os.chmod(self.spool_dir, 0o1777)
        self.msgs = [message(f"s{i}") for i in range(1, 4)]
        self.write(b"".join(self.msgs))

    def plant(self):
        d = self.spool_dir
        forged = (b"postern-mbox-journal 2\nstate redo\nino 1\nstart 0\nold-size 99\n"
                  b"new-size 10\npayload-size 10\n" + b"\0" * 900)

        def work():
            with open(os.path.join(d, ".victim.postern-journal"), "wb") as f:
                f.write(forged)
            os.mkfifo(os.path.join(d, ".victim.postern-journal.new"))
            os.symlink("/etc/passwd", os.path.join(d, ".victim.postern-index"))
            os.mkfifo(os.path.join(d, ".victim.postern-index.new"))
            with open(os.path.join(d, ".victim.postern-session"), "wb"):
                pass
        with self.world.as_root():  # root forks the other user's processes
            self.assertEqual(as_user(NOBODY, work), 0)
            # Another user holds the session lock file with flock, as long as the test runs.
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.close(w)
                    os.setgroups([])
                    os.setgid(NOBODY)
                    os.setuid(NOBODY)
                    fd = os.open(os.path.join(d, ".victim.postern-session"), os.O_RDONLY)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    os.read(r, 1)
                    code = 0
                finally:
                    os._exit(code)
            os.close(r)

        def release():
            os.close(w)
            os.waitpid(pid, 0)
        self.addCleanup(release)

    def test_without_state_dir_the_login_is_refused_with_the_setting_to_set(self):
        self.world.config["mail"]["mbox_state_dir"] = ""
        srv = self.world.start()
        c = srv.connect()
        st = c.cmd(f"USER {USER}")
        st = c.cmd(f"PASS {PASSWORD}")
        if st.startswith("+OK"):
            st = c.cmd("STAT")
        self.assertErr(st)
        c.close()
        srv.wait_log("mbox_state_dir")
        self.assertEqual(self.read(), b"".join(self.msgs))

    @requires(IS_ROOT, NEEDS_ROOT)
    def test_planted_side_files_cannot_block_or_harm_the_victim(self):
        self.use_state_dir()
        self.plant()
        srv = self.world.start()
        self.assertEqual(self.subjects(srv), ["s1", "s2", "s3"])
        with self.session(srv) as c:
            self.assertOk(c.cmd("DELE 1"))
            self.assertOk(c.quit())
        self.assertEqual(self.subjects(srv), ["s2", "s3"])
        self.assertEqual(self.read(), b"".join(self.msgs[1:]))
        st = os.stat(self.state_dir)
        self.assertEqual(st.st_mode & 0o777, 0o700)
        self.assertTrue(os.path.exists(os.path.join(self.state_dir, ".victim.postern-session")))
        # The planted files are still there, untouched: never read, never followed.
        self.assertEqual(os.stat(os.path.join(self.spool_dir, ".victim.postern-journal")).st_uid,
                         NOBODY)

    @requires(IS_ROOT, NEEDS_ROOT)
    def test_planted_files_in_the_state_directory_are_set_aside(self):
        self.use_state_dir()
        os.makedirs(self.state_dir, mode=0o700)
        j = os.path.join(self.state_dir, ".victim.postern-journal")
        with open(j, "wb") as f:
            f.write(b"garbage" * 300)
        with self.world.as_root():
            os.chown(j, NOBODY, NOBODY)
        os.mkfifo(os.path.join(self.state_dir, ".victim.postern-session"))
        srv = self.world.start()
        self.assertEqual(self.subjects(srv), ["s1", "s2", "s3"])
        names = os.listdir(self.state_dir)
        self.assertTrue(any(n.startswith(".victim.postern-journal.obsolete-") for n in names))
        self.assertTrue(any(n.startswith(".victim.postern-session.aside-") for n in names))
        self.assertEqual(self.read(), b"".join(self.msgs))

    @requires(IS_ROOT, NEEDS_ROOT)
    def test_spool_owned_by_another_user_is_refused(self):
        self.use_state_dir()
        with self.world.as_root():
            os.chown(self.spool, NOBODY, NOBODY)
            # Readable and writable by everyone, so that the open succeeds and it is the
            # owner check that refuses (the server runs as the mail owner, not as root).
            os.chmod(self.spool, 0o666)
        srv = self.world.start()
        c = srv.connect()
        c.cmd(f"USER {USER}")
        st = c.cmd(f"PASS {PASSWORD}")
        if st.startswith("+OK"):
            st = c.cmd("STAT")
        self.assertErr(st)
        c.close()
        srv.wait_log("not served")

    def test_old_dotlock_holding_pid_1_is_broken(self):
        self.use_state_dir()
        lock = self.spool + ".lock"
        with open(lock, "w") as f:
            f.write("1\n")
        old = time.time() - 3600
        os.utime(lock, (old, old))
        srv = self.world.start()
        self.assertEqual(self.subjects(srv), ["s1", "s2", "s3"])
        self.assertFalse(os.path.exists(lock))
        srv.wait_log("broke stale")

    def test_fresh_dotlock_holding_pid_1_is_honoured(self):
        self.use_state_dir()
        lock = self.spool + ".lock"
        with open(lock, "w") as f:
            f.write("1\n")
        srv = self.world.start()
        c = srv.connect()
        c.cmd(f"USER {USER}")
        st = c.cmd(f"PASS {PASSWORD}")
        if st.startswith("+OK"):
            st = c.cmd("STAT")
        self.assertTrue(st.startswith("-ERR [IN-USE]"), st)
        c.close()
        self.assertTrue(os.path.exists(lock))


class FcntlOnly(SpoolBase):
    """mbox_locking = ["fcntl"] takes no dotlock: a dotlock held by a live process (ours,
    fresh) does not stop the login nor the update, and is left alone."""
    locking = ["fcntl"]

    def test_fcntl_only_takes_no_dotlock(self):
        self.write(b"".join(message(f"f{i}") for i in range(1, 4)))
        lock = self.spool + ".lock"
        with open(lock, "w") as f:
            f.write(f"{os.getpid()}\n")
        srv = self.world.start()
        with self.session(srv) as c:
            self.assertOk(c.cmd("DELE 1"))
            self.assertOk(c.quit())
        self.assertEqual(self.subjects(srv), ["f2", "f3"])
        with open(lock) as f:
            self.assertEqual(f.read(), f"{os.getpid()}\n")


class Settings(SpoolBase):
    def check_config(self, **mail):
        self.world.config["mail"].update(mail)
        r = subprocess.run([POSTERND, "--config", self.world.write_config(), "--check-config"],
                           capture_output=True, timeout=60)
        return r.returncode, (r.stdout + r.stderr).decode()

    def test_state_dir_and_stale_age_keys(self):
        rc, out = self.check_config(mbox_state_dir="/var/lib/postern/%u",
                                    mbox_dotlock_stale_age="5m")
        self.assertEqual(rc, 0, out)
        self.assertIn('mbox_state_dir = "/var/lib/postern/%u"', out)
        self.assertIn('mbox_dotlock_stale_age = "5m"', out)
        for bad in ({"mbox_state_dir": "relative/dir"}, {"mbox_state_dir": "/a/%x"},
                    {"mbox_dotlock_stale_age": "0s"}, {"mbox_dotlock_stale_age": "2d"}):
            rc, out = self.check_config(**dict({"mbox_state_dir": "~/.postern",
                                                "mbox_dotlock_stale_age": "10m"}, **bad))
            self.assertNotEqual(rc, 0, f"{bad}: {out}")


def _mount_tmpfs(world, path, size):
    """Mounts a tmpfs of `size` on path (as root), owned by the World's owner."""
    if not IS_ROOT or not shutil.which("mount"):
        return False
    with world.as_root():
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                            path], capture_output=True, timeout=30)
    if r.returncode != 0:
        return False
    world.give(path)
    return True


def _umount(world, path):
    with world.as_root():
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)


class FullDiskLogin(SpoolBase):
    def test_login_reads_on_a_full_disk_and_refuses_the_update(self):
        mnt = self.world.path("tmpfs")
        os.makedirs(mnt)
        if not _mount_tmpfs(self.world, mnt, "128k"):
            missing("needs root and a mountable tmpfs")
        self.addCleanup(_umount, self.world, mnt)
        self.spool_dir = mnt
        self.spool = os.path.join(mnt, USER)
        self.world.config["mail"]["location"] = f"mbox:{mnt}/%u"
        msgs = [message(f"d{i}", size=100) for i in range(1, 4)]
        data = b"".join(msgs)
        self.write(data)
        fd = os.open(os.path.join(mnt, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 1024)
        except OSError as e:  # the file system is full, as wanted; anything else is an error
            if e.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)
        srv = self.world.start()
        with self.session(srv) as c:
            st = c.cmd("STAT")
            self.assertOk(st)
            self.assertEqual(st.split()[1], "3")
            st, body = c.cmd_multi("RETR 2")
            self.assertOk(st)
            self.assertIn(b"Subject: d2", body)
            self.assertOk(c.cmd("DELE 1"))
            st = c.quit()
        self.assertTrue(st.startswith("-ERR [SYS/TEMP]"), st)
        self.assertEqual(self.read(), data)
        self.assertFalse(os.path.exists(self.spool + ".lock"))
        srv.wait_log("kernel locks only")


if __name__ == "__main__":
    unittest.main()
