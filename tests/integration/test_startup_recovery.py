"""Pending mbox journals are completed when posternd starts, before it accepts connections,
and by `posternd --recover-all`.

A QUIT update is cut short at a fault point of its rewrite (POSTERN_TEST_MBOX_FAULT makes
the daemon _exit there, as kill -9 would), leaving a committed journal and a torn spool; then
posternd starts again and, before any client logs in, the spool must hold exactly the
messages the update kept, the journal must be gone and the log must say so. A forged journal
of another user is set aside (logged) while the others are still completed; the recovery runs
as the mail owner (files it creates belong to that user, the log names the uid); the time
limit leaves what it cannot finish to the next login. Fork mode (root, system users, PAM)
recovers each user as that user.
"""

import os
import re
import socket
import subprocess
import time
import unittest

from postern_harness import POSTERND, Closed, PosternTestCase, scaled
from test_system_users import SystemUsersBase

FAULT_EXIT = 86
PASSWORD = "Sr-pw-1"


def message(tag, size=40):
    pad = b"".join(b"%05d line of %s\n" % (i, tag.encode()) for i in range(size))
    return (b"From list@example.org Mon Jan  1 00:00:00 2024\nFrom: list@example.org\n"
            b"Subject: " + tag.encode() + b"\n\nsame footer\n" + pad + b"\n")


def mailbox(prefix, numbers):
    return b"".join(message(f"{prefix}{i}") for i in numbers)


class StartupBase(PosternTestCase):
    def setUp(self):
        super().setUp()
        self.spool_dir = self.world.path("spool")
        os.makedirs(self.spool_dir)
        self.state_dir = self.spool_dir  # the spool's directory is the owner's alone
        self.world.config["mail"] = {"location": f"mbox:{self.spool_dir}/%u",
                                     "mbox_lock_timeout": "2s"}

    def add(self, user, data):
        self.world.add_passwd_line(f"{user}:{{PLAIN}}{PASSWORD}::::::")
        self.write(user, data)

    def spool(self, user):
        return os.path.join(self.spool_dir, user)

    def journal(self, user):
        return os.path.join(self.state_dir, f".{user}.postern-journal")

    def write(self, user, data):
        with open(self.spool(user), "wb") as f:
            f.write(data)

    def read(self, user):
        with open(self.spool(user), "rb") as f:
            return f.read()

    def start_with_env(self, **env):
        """A server whose process has `env` added to its environment."""
        return self.world.start(listeners=1, env=env)

    def crash_quit(self, user, data, delete=1):
        """A session of `user` deletes message `delete`; its QUIT dies at the first fault point
        that leaves a committed journal and a torn spool (partly rewritten, not truncated)."""
        for step in range(8, 80):
            self.write(user, data)
            srv = self.start_with_env(POSTERN_TEST_MBOX_FAULT=str(step),
                                      POSTERN_TEST_MBOX_COPY_BUFFER="512")
            c = srv.connect()
            c.login(user, PASSWORD)
            self.assertOk(c.cmd(f"DELE {delete}"))
            # The fault kills posternd inside the update: QUIT may get a reply, none or a reset.
            # What counts is checked below: the exit status and the mailbox.
            try:
                c.quit()
            except (Closed, OSError):  # EOF or a reset; a timeout is an AssertionError
                pass
            c.close()
            self.assertEqual(srv.wait_exit(), FAULT_EXIT, srv.log())
            if os.path.exists(self.journal(user)) and self.read(user) != data:
                self.assertEqual(len(self.read(user)), len(data))
                return step
        self.fail("no fault point left a committed journal and a torn spool")

    def start_and_greet(self):
        """Starts posternd normally and reads one greeting (no login): the daemon accepts
        only after its startup recovery."""
        srv = self.world.start()
        c = srv.connect()
        c.close()
        return srv


class CompletedAtStartup(StartupBase):
    def test_crashed_quit_is_completed_before_the_first_connection(self):
        self.add("victim", mailbox("v", range(1, 6)))
        self.add("bystander", mailbox("b", range(1, 3)))
        self.crash_quit("victim", mailbox("v", range(1, 6)), delete=2)
        srv = self.start_and_greet()
        # Nobody has logged in: the startup did it.
        self.assertSameBytes(self.read("victim"), mailbox("v", [1, 3, 4, 5]))
        self.assertFalse(os.path.exists(self.journal("victim")))
        self.assertSameBytes(self.read("bystander"), mailbox("b", range(1, 3)))
        log = srv.log()
        self.assertRegex(log, rf"mbox recovery: {re.escape(self.spool('victim'))} \(user victim, "
                              r"uid \d+\): completed the update a crash interrupted")
        self.assertRegex(log, r"mbox recovery at startup: 1 unfinished updates found among 2 "
                              r"users: 1 completed, 0 set aside, 0 failed, 0 left")
        # The recovery's lines come before the daemon serves anyone, and nothing is left over.
        c = srv.connect()
        c.login("victim", PASSWORD)
        st = c.cmd("STAT")
        self.assertTrue(st.startswith("+OK 4 "), st)
        self.assertOk(c.quit())
        self.assertEqual(len(re.findall("completed the update", srv.log())), 1)

    def test_several_worker_processes(self):
        self.add("victim", mailbox("v", range(1, 4)))
        self.crash_quit("victim", mailbox("v", range(1, 4)))
        self.world.config["server"]["processes"] = 2
        srv = self.start_and_greet()
        self.assertSameBytes(self.read("victim"), mailbox("v", [2, 3]))
        self.assertFalse(os.path.exists(self.journal("victim")))
        self.assertRegex(srv.log(), r"\(user victim, uid \d+\): completed the update")

    def test_inetd_mode_does_not_scan(self):
        self.add("victim", mailbox("v", range(1, 4)))
        self.crash_quit("victim", mailbox("v", range(1, 4)))
        inetd = self.world.inetd()
        self.assertOk(inetd.conn.read_greeting())
        self.assertTrue(os.path.exists(self.journal("victim")))
        inetd.conn.login("victim", PASSWORD)  # the login completes it
        self.assertFalse(os.path.exists(self.journal("victim")))
        self.assertOk(inetd.conn.quit())
        inetd.wait_exit()
        self.assertNotIn("mbox recovery", inetd.log())
        self.assertSameBytes(self.read("victim"), mailbox("v", [2, 3]))

    def test_no_journal_costs_a_stat_and_creates_nothing(self):
        self.add("quiet", mailbox("q", range(1, 3)))
        srv = self.start_and_greet()
        self.assertIn("mbox recovery at startup: no unfinished update (1 users checked", srv.log())
        self.assertEqual(sorted(os.listdir(self.spool_dir)), ["quiet"])

    def test_timeout_zero_leaves_it_to_the_login(self):
        self.add("victim", mailbox("v", range(1, 4)))
        self.crash_quit("victim", mailbox("v", range(1, 4)))
        self.world.config["mail"]["mbox_startup_recovery_timeout"] = "0s"
        srv = self.start_and_greet()
        self.assertTrue(os.path.exists(self.journal("victim")))
        self.assertNotIn("mbox recovery", srv.log())
        c = srv.connect()
        c.login("victim", PASSWORD)
        st = c.cmd("STAT")
        self.assertTrue(st.startswith("+OK 2 "), st)
        self.assertOk(c.quit())
        self.assertSameBytes(self.read("victim"), mailbox("v", [2, 3]))

    def test_forged_journal_is_set_aside_and_the_others_are_completed(self):
        # "forged" sorts before "victim": its failure must not stop the next one.
        self.add("forged", mailbox("f", range(1, 4)))
        self.add("victim", mailbox("v", range(1, 4)))
        self.crash_quit("victim", mailbox("v", range(1, 4)))
        with open(self.journal("forged"), "wb") as f:
            f.write(b"postern-mbox-journal 2\nstate redo\nino 1\nstart 0\nold-size 99\n"
                    b"new-size 10\npayload-size 10\n" + b"\0" * 900)
        os.chmod(self.journal("forged"), 0o600)
        srv = self.start_and_greet()
        self.assertSameBytes(self.read("forged"), mailbox("f", range(1, 4)))
        self.assertSameBytes(self.read("victim"), mailbox("v", [2, 3]))
        names = os.listdir(self.spool_dir)
        self.assertNotIn(".forged.postern-journal", names)
        self.assertTrue(any(n.startswith(".forged.postern-journal.obsolete-") for n in names),
                        names)
        self.assertNotIn(".victim.postern-journal", names)
        log = srv.log()
        self.assertIn("is kept as", log)
        self.assertRegex(log, r"mbox recovery: \S+/forged \(user forged, uid \d+\): the "
                              r"unfinished update did not match the mailbox")
        self.assertRegex(log, r"\S+/victim \(user victim, uid \d+\): completed")
        self.assertRegex(log, r"2 unfinished updates found among 2 users: 1 completed, 1 set "
                              r"aside, 0 failed, 0 left")

    def test_time_limit_leaves_the_rest_for_the_login(self):
        self.add("victim", mailbox("v", range(1, 4)))
        self.crash_quit("victim", mailbox("v", range(1, 4)))
        torn = self.read("victim")
        # A live process of ours holds the dotlock: the recovery waits for it.
        with open(self.spool("victim") + ".lock", "w") as f:
            f.write(f"{os.getpid()}\n")
        self.world.config["mail"]["mbox_lock_timeout"] = "20s"
        self.world.config["mail"]["mbox_startup_recovery_timeout"] = "1s"
        t0 = time.monotonic()
        srv = self.start_and_greet()
        self.assertLess(time.monotonic() - t0, scaled(8))
        self.assertSameBytes(self.read("victim"), torn)
        self.assertTrue(os.path.exists(self.journal("victim")))
        log = srv.log()
        self.assertRegex(log, r"\S+/victim \(user victim, uid \d+\): stopped at the time limit, "
                              r"left for the next login")
        self.assertRegex(log, r"1 unfinished updates found among 1 users: 0 completed, 0 set "
                              r"aside, 0 failed, 1 left for the next login")
        os.unlink(self.spool("victim") + ".lock")
        c = srv.connect()
        c.login("victim", PASSWORD)
        st = c.cmd("STAT")
        self.assertTrue(st.startswith("+OK 2 "), st)
        self.assertOk(c.quit())
        self.assertSameBytes(self.read("victim"), mailbox("v", [2, 3]))


class AsTheMailOwner(StartupBase):
    """The spool in a shared (1777) directory, its journal in a state directory inside a
    directory only the mail owner may enter: the recovery still finds and completes it, and
    the session lock it creates belongs to the mail owner, not to root."""

    def test_recovery_runs_as_the_owner(self):
        os.chmod(self.spool_dir, 0o1777)
        private = self.world.path("private")
        os.makedirs(private, mode=0o700)
        self.world.config["mail"]["mbox_state_dir"] = f"{private}/%u"
        self.state_dir = os.path.join(private, "victim")
        self.add("victim", mailbox("v", range(1, 5)))
        self.crash_quit("victim", mailbox("v", range(1, 5)), delete=3)
        os.unlink(os.path.join(self.state_dir, ".victim.postern-session"))
        srv = self.start_and_greet()
        self.assertSameBytes(self.read("victim"), mailbox("v", [1, 2, 4]))
        self.assertFalse(os.path.exists(self.journal("victim")))
        uid = os.geteuid()  # the World's owner (postern-it in root runs)
        lock = os.stat(os.path.join(self.state_dir, ".victim.postern-session"))
        self.assertEqual(lock.st_uid, uid)
        self.assertEqual(os.stat(self.spool("victim")).st_uid, uid)
        self.assertRegex(srv.log(), rf"\(user victim, uid {uid}\): completed")

    def test_recover_all_command(self):
        self.add("victim", mailbox("v", range(1, 4)))
        self.add("other", mailbox("o", range(1, 3)))
        self.crash_quit("victim", mailbox("v", range(1, 4)))
        cfg = self.world.write_config()
        with self.world.as_root():  # as an administrator would (root runs); else as ourselves
            r = subprocess.run([POSTERND, "--config", cfg, "--recover-all"],
                               capture_output=True, timeout=60)
        out = r.stdout.decode()
        self.assertEqual(r.returncode, 0, out + r.stderr.decode())
        self.assertRegex(out, r"/victim \(user victim, uid \d+\): completed the update")
        self.assertIn("2 users checked, 1 unfinished updates: 1 completed, 0 set aside, 0 failed",
                      out)
        self.assertSameBytes(self.read("victim"), mailbox("v", [2, 3]))
        self.assertFalse(os.path.exists(self.journal("victim")))
        self.assertEqual(os.stat(self.spool("victim")).st_uid, os.geteuid())
        r = subprocess.run([POSTERND, "--config", cfg, "--recover-all"], capture_output=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"0 unfinished updates", r.stdout)


def spool_body(tag):
    pad = b"".join(b"%05d line of %s\n" % (i, tag.encode()) for i in range(40))
    return b"From: list@example.org\nSubject: " + tag.encode() + b"\n\n" + pad


class ForkModeStartup(SystemUsersBase):
    """Fork mode, PAM, system users (getpwent), a root:mail 2775 spool: the journal lives in
    the user's ~/.postern; the master (root) completes it at startup in a child that has
    become that user."""

    def spool_data(self, numbers):
        return b"".join(b"From sender@example.org Mon Jan  1 00:00:%02d 2024\n" % i +
                        spool_body(f"k{i}") + b"\n" for i in numbers)

    def crash_quit(self, name, spool, journal):
        data = self.spool_data(range(4))
        for step in range(8, 80):
            with open(spool, "wb") as f:
                f.write(data)
            os.environ["POSTERN_TEST_MBOX_FAULT"] = str(step)
            os.environ["POSTERN_TEST_MBOX_COPY_BUFFER"] = "512"
            try:
                srv = self.start()
            finally:
                del os.environ["POSTERN_TEST_MBOX_FAULT"]
                del os.environ["POSTERN_TEST_MBOX_COPY_BUFFER"]
            c = srv.connect()
            c.login(name, "Pt-pass-1")
            self.assertOk(c.cmd("DELE 1"))
            try:
                st = c.quit()
                self.assertFalse(st.startswith("+OK"), f"step {step}: the QUIT went through")
            except (Closed, OSError):  # EOF or a reset: the fault killed posternd
                pass
            c.close()
            srv.stop()
            with open(spool, "rb") as f:
                if os.path.exists(journal) and f.read() != data:
                    return
        self.fail("no fault point left a committed journal and a torn spool")

    def test_each_user_is_recovered_as_itself(self):
        name, pw, spool = self.add_system_user(messages=[spool_body(f"k{i}") for i in range(4)])
        state = os.path.join(self.homes, name, ".postern")
        journal = os.path.join(state, f".{name}.postern-journal")
        self.crash_quit(name, spool, journal)
        os.unlink(os.path.join(state, f".{name}.postern-session"))
        srv = self.start()
        srv.connect().close()  # greeted: the startup recovery is over
        with open(spool, "rb") as f:
            self.assertSameBytes(f.read(), self.spool_data([1, 2, 3]), "the spool")
        self.assertFalse(os.path.exists(journal))
        self.assertEqual(os.stat(spool).st_uid, pw.pw_uid)
        self.assertEqual(os.stat(os.path.join(state, f".{name}.postern-session")).st_uid,
                         pw.pw_uid)
        self.assertRegex(srv.log(), rf"\(user {name}, uid {pw.pw_uid}\): completed the update")
        self.assertRegex(srv.log(), r"mbox recovery at startup: 1 unfinished updates found "
                                    r"among \d+ users: 1 completed")


if __name__ == "__main__":
    unittest.main()
