"""One UID space with a real Dovecot on the same Maildir (issue 10, defect 7).

With [pop3] uidl_format = "%08Xu%08Xv" Postern's UIDLs are built from Dovecot's IMAP UIDs, so
Postern must number new messages in Dovecot's own dovecot-uidlist, under Dovecot's lock,
exactly as Dovecot would. These tests run Dovecot's own imap and pop3 binaries in preauth
mode on stdin/stdout with a private config in the test's directory (no listener, nothing read
or written under /etc/dovecot) against the Maildir posternd serves, and check that both
servers show the same UIDs, that a UIDL a client saw is never given to another message, and
that Dovecot's POP3 session lock (pop3_lock_session) keeps a Dovecot and a Postern POP3
session from being logged in at once, both ways.

Dovecot refuses to run a mail process as root. In root runs the harness makes the test process
and posternd its unprivileged mail owner (POSTERN_TEST_USER), who owns the Maildir; Dovecot is
started as root (world.as_root()) and its private config says mail_uid/mail_gid = that owner,
so both servers work on the Maildir as the same uid. Run as an ordinary user, Dovecot runs as
that user. Skipped only when Dovecot is not installed (scripts/install-deps.sh installs it).
"""

import contextlib
import grp
import os
import pwd
import re
import select
import subprocess
import time
import unittest

from postern_harness import requires
from postern_harness import (DEFAULT_TIMEOUT, Msg, World, have_binary, privileged, scaled,
                             simple_message)

DOVECOT_IMAP = "/usr/lib/dovecot/imap"
DOVECOT_POP3 = "/usr/lib/dovecot/pop3"
HAVE_DOVECOT = all(os.access(p, os.X_OK) for p in (DOVECOT_IMAP, DOVECOT_POP3))
UIDL_FORMAT = "%08Xu%08Xv"


def _mail_owner(world):
    """(uid, gid, user name, group name) Dovecot's mail processes run as: the World's owner in
    root runs (Dovecot starts as root and switches to it), else this process's user (names
    None: Dovecot runs as it is started)."""
    if world.owner is not None:
        pw = world.owner
        return pw.pw_uid, pw.pw_gid, pw.pw_name, grp.getgrgid(pw.pw_gid).gr_name
    if os.geteuid() == 0:
        raise AssertionError("Dovecot runs no mail process as root: the World needs an owner")
    pw = pwd.getpwuid(os.geteuid())
    return pw.pw_uid, pw.pw_gid, None, None


class Dovecot:
    """Dovecot's imap and pop3 binaries with a private config, on one user's Maildir."""

    def __init__(self, world, maildir, lock_session=True):
        self.world = world
        self.maildir = maildir
        self.uid, self.gid, user, group = _mail_owner(world)
        for d in ("run", "state"):
            os.makedirs(world.path("dovecot", d), exist_ok=True)
        lines = [
            "protocols = imap pop3",
            f"base_dir = {world.path('dovecot', 'run')}",
            f"state_dir = {world.path('dovecot', 'state')}",
            "ssl = no",
            f"mail_location = maildir:{maildir}",
            f"pop3_uidl_format = {UIDL_FORMAT}",
            f"pop3_lock_session = {'yes' if lock_session else 'no'}",
            "mail_fsync = always",
        ]
        if user is not None:
            lines += [f"mail_uid = {user}", f"mail_gid = {group}",
                      f"first_valid_uid = {self.uid}", "first_valid_gid = 1"]
        self.config = world.path("dovecot", "dovecot.conf")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        st = os.stat(maildir)
        if (st.st_uid, st.st_gid) != (self.uid, self.gid):
            raise AssertionError(f"{maildir} belongs to {st.st_uid}:{st.st_gid}, not to the "
                                 f"mail owner {self.uid}:{self.gid}")

    def started(self):
        """Context manager for starting a Dovecot process: as root when Dovecot switches to
        the mail owner itself (root runs), else as this process is."""
        return self.world.as_root() if self.world.owner is not None else contextlib.nullcontext()

    def env(self):
        return {"USER": "alice", "HOME": self.world.path("dovecot"),
                "PATH": os.environ.get("PATH", "/usr/bin:/bin")}

    def imap(self, *commands):
        """Runs IMAP commands (tagged t1, t2, ...) in one preauth session; returns the output."""
        script = "".join(f"t{i} {c}\r\n" for i, c in enumerate(commands, 1)) + "tz LOGOUT\r\n"
        with self.started():
            res = subprocess.run([DOVECOT_IMAP, "-c", self.config], input=script.encode(),
                                 capture_output=True, env=self.env(), timeout=DEFAULT_TIMEOUT)
        out = res.stdout.decode("utf-8", "replace")
        for i in range(1, len(commands) + 1):
            if not re.search(rf"^t{i} OK", out, re.M):
                raise AssertionError(f"dovecot imap: {commands[i - 1]!r} failed:\n{out}\n"
                                     f"{res.stderr.decode('utf-8', 'replace')}")
        return out

    def imap_uids(self):
        """{subject: uid} of INBOX as Dovecot's IMAP sees it (after its own sync)."""
        out = self.imap("SELECT INBOX", "UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        uids = {}
        for m in re.finditer(r"\* \d+ FETCH \(UID (\d+) BODY\[HEADER\.FIELDS \(SUBJECT\)\] "
                             r"\{\d+\}\r\nSubject: ([^\r\n]*)", out):
            uids[m.group(2)] = int(m.group(1))
        return uids

    def imap_expunge(self, uid):
        self.imap("SELECT INBOX", f"UID STORE {uid} +FLAGS.SILENT (\\Deleted)", "EXPUNGE")

    def pop3(self):
        """A Dovecot POP3 session (already logged in) as a process with pipes."""
        with self.started():
            return subprocess.Popen([DOVECOT_POP3, "-c", self.config], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=self.env())

    def pop3_uidls(self):
        """UIDL as Dovecot's own POP3 server answers it: [uidl, ...] in message order."""
        with self.started():
            res = subprocess.run([DOVECOT_POP3, "-c", self.config], input=b"UIDL\r\nQUIT\r\n",
                                 capture_output=True, env=self.env(), timeout=scaled(30))
        lines = res.stdout.decode().split("\r\n")
        if not lines or not lines[0].startswith("+OK"):
            raise AssertionError(f"dovecot pop3 UIDL failed: {res.stdout!r} {res.stderr!r}")
        return [ln.split()[1] for ln in lines[1:lines.index(".")]]

    def uidvalidity(self):
        with open(os.path.join(self.maildir, "dovecot-uidlist")) as f:
            return int(re.search(r" V(\d+)", f.readline()).group(1))


def read_reply(proc, timeout):
    """One line from a Dovecot POP3 process's stdout, or None at EOF / timeout."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            return None
        chunk = os.read(fd, 1)
        if not chunk:
            return buf.decode() or None
        buf += chunk
    return buf.decode().rstrip("\r\n")


def close_process(proc):
    if proc.poll() is None:
        with privileged():  # it may not have switched from root to the mail owner yet
            proc.kill()
    proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None and not f.closed:
            f.close()


@requires(have_binary(), "posternd not built")
@requires(HAVE_DOVECOT, "Dovecot is not installed (apt-get install dovecot-imapd "
                                   "dovecot-pop3d; scripts/install-deps.sh installs them)")
class DovecotUids(unittest.TestCase):
    def setUp(self):
        self.w = World(self)
        self.box = self.w.add_user("alice", "pw")
        self.w.config["pop3"] = {"uidl_format": UIDL_FORMAT, "dovecot_lock_session": True}
        self.dovecot = Dovecot(self.w, self.box.path)
        self.srv = self.w.start()

    def deliver(self, subject):
        return self.box.store(Msg(simple_message(subject)))

    def postern_uidls(self, dele=()):
        """{subject: uidl} from a Postern session; DELEs the messages with those subjects."""
        with self.srv.session(self.box) as c:
            st, body = c.cmd_multi("UIDL")
            self.assertTrue(st.startswith("+OK"), st)
            by_number = {}
            for ln in body.decode().split("\r\n"):
                if ln:
                    n, uidl = ln.split()
                    by_number[int(n)] = uidl
            out = {}
            for n, uidl in by_number.items():
                st, head = c.cmd_multi(f"TOP {n} 0")
                self.assertTrue(st.startswith("+OK"), st)
                subject = next(h[9:] for h in head.decode().split("\r\n")
                               if h.startswith("Subject: "))
                out[subject] = uidl
            for n, uidl in by_number.items():
                if [s for s, u in out.items() if u == uidl][0] in dele:
                    self.assertTrue(c.cmd(f"DELE {n}").startswith("+OK"))
            self.assertTrue(c.quit().startswith("+OK"))
        return out

    def uidl(self, uid):
        return "%08x%08x" % (uid, self.dovecot.uidvalidity())

    def test_the_defect_sequence_never_reuses_a_uidl(self):
        self.deliver("m1")
        self.deliver("m2")
        self.assertEqual(self.dovecot.imap_uids(), {"m1": 1, "m2": 2})  # Dovecot numbered 1-2
        self.deliver("A")
        self.deliver("B")
        first = self.postern_uidls(dele=("A",))  # the client deletes A
        self.assertEqual(first, {"m1": self.uidl(1), "m2": self.uidl(2), "A": self.uidl(3),
                                 "B": self.uidl(4)})
        # IMAP opens INBOX: Dovecot agrees (B is 4, not 3), A is gone.
        self.assertEqual(self.dovecot.imap_uids(), {"m1": 1, "m2": 2, "B": 4})
        self.deliver("C")
        self.assertEqual(self.dovecot.imap_uids()["C"], 5)  # Dovecot numbers C
        self.dovecot.imap_expunge(4)  # IMAP deletes B
        seen = set(first.values())
        second = self.postern_uidls()
        self.assertEqual(second, {"m1": self.uidl(1), "m2": self.uidl(2), "C": self.uidl(5)})
        self.assertNotIn(second["C"], seen, "C is shown under a UIDL the client already holds")
        # Postern numbers D before Dovecot sees it; Dovecot then agrees.
        self.deliver("D")
        third = self.postern_uidls()
        self.assertEqual(third["D"], self.uidl(6))
        self.assertEqual(self.dovecot.imap_uids(), {"m1": 1, "m2": 2, "C": 5, "D": 6})
        # UIDLs never change between sessions, and Dovecot's own POP3 shows the same ones.
        self.assertEqual(self.postern_uidls(), third)
        self.assertEqual(self.dovecot.pop3_uidls(),
                         [third[s] for s in ("m1", "m2", "C", "D")])

    def test_damaged_dovecot_uidlist_refuses_the_login(self):
        self.deliver("m1")
        self.dovecot.imap_uids()
        path = os.path.join(self.box.path, "dovecot-uidlist")
        with open(path) as f:
            text = f.read()
        damaged = text + "1 :out-of-order\n"
        with open(path, "w") as f:
            f.write(damaged)
        with self.srv.connect() as c:
            self.assertTrue(c.cmd("USER alice").startswith("+OK"))
            st = c.cmd("PASS pw")
            self.assertTrue(st.startswith("-ERR"), st)
            self.assertNotIn("[IN-USE]", st)
        with open(path) as f:
            self.assertEqual(f.read(), damaged)  # left for Dovecot or the admin to repair
        self.srv.wait_log("dovecot-uidlist is damaged")

    def test_dovecot_pop3_session_keeps_postern_out(self):
        self.deliver("m1")
        dv = self.dovecot.pop3()
        try:
            dv.stdin.write(b"STAT\r\n")
            dv.stdin.flush()
            st = read_reply(dv, scaled(15))
            self.assertTrue(st and st.startswith("+OK"), st)
            self.assertTrue(os.path.exists(os.path.join(self.box.path,
                                                        "dovecot-pop3-session.lock")))
            with self.srv.connect() as c:
                self.assertTrue(c.cmd("USER alice").startswith("+OK"))
                st = c.cmd("PASS pw", timeout=scaled(20))
                self.assertTrue(st.startswith("-ERR [IN-USE]"), st)
            dv.stdin.write(b"QUIT\r\n")
            dv.stdin.flush()
            dv.wait(DEFAULT_TIMEOUT)
        finally:
            close_process(dv)
        with self.srv.session(self.box) as c:  # free again
            self.assertTrue(c.quit().startswith("+OK"))

    def test_postern_session_keeps_dovecot_pop3_out(self):
        self.deliver("m1")
        with self.srv.session(self.box) as c:
            self.assertTrue(c.cmd("STAT").startswith("+OK"))
            dv = self.dovecot.pop3()
            try:
                out, _ = dv.communicate(b"STAT\r\nQUIT\r\n", timeout=scaled(30))
            finally:
                close_process(dv)
            self.assertTrue(out.startswith(b"-ERR [IN-USE]"), out)
            self.assertTrue(c.quit().startswith("+OK"))
        self.assertEqual(self.dovecot.pop3_uidls(), [self.uidl(1)])  # free again

    def test_message_expunged_over_imap_is_a_permanent_error(self):
        self.deliver("m1")
        self.deliver("m2")
        with self.srv.session(self.box) as c:
            st, body = c.cmd_multi("UIDL")
            self.assertEqual(len(body.decode().split("\r\n")), 3)
            uids = self.dovecot.imap_uids()
            self.dovecot.imap_expunge(uids["m1"])
            st = c.cmd("RETR 1")
            self.assertTrue(st.startswith("-ERR"), st)
            self.assertNotIn("[SYS/TEMP]", st, "a vanished message is a permanent error")
            st, _ = c.cmd_multi("RETR 2")
            self.assertTrue(st.startswith("+OK"), st)
            self.assertTrue(c.quit().startswith("+OK"))


if __name__ == "__main__":
    unittest.main()
