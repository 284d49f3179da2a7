"""System users: PAM logins and privilege separation (process_model = "fork").

Real system users (useradd, chpasswd), a PAM service file of their own (pam_unix) and mbox
spools in a /var/mail-like directory (root:mail 2775) under the test's temporary directory.
Checks who each process runs as (/proc/<pid>/status, /proc/<pid>/root), and the refusals
popa3d makes: uid 0 even with the right password, empty passwords. Everything created is
removed in cleanups, which run even when a test fails. Needs root: skipped otherwise.

The keys these tests set ([server] process_model, login_*, [auth] passdb = "pam", ...) go into
postern.toml when posternd accepts them there; until then into the interim settings file named
in postern.toml (see docs/unix.md).
"""

import base64
import glob
import grp
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import unittest

from postern_harness import forget_machine_change, missing, record_machine_change, remove_user
from postern_harness import (POSTERND, PosternTestCase, Pop3Conn, Server, toml_text, wait_for)

PAM_DIR = "/etc/pam.d"


def is_root():
    return os.geteuid() == 0


_config_has_unix_keys = None


def config_has_unix_keys(world):
    """True when postern.toml itself accepts the fork-mode keys (config.cpp has them)."""
    global _config_has_unix_keys
    if _config_has_unix_keys is None:
        path = world.path("probe.toml")
        with open(path, "w") as f:
            f.write('[server]\nprocess_model = "fork"\n[auth]\npassdb = "pam"\n')
        res = subprocess.run([POSTERND, "--config", path, "--check-config"],
                             capture_output=True, timeout=30)
        _config_has_unix_keys = res.returncode == 0
    return _config_has_unix_keys


def proc_status(pid):
    """{field: value} of /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def ids(status, field):
    return [int(x) for x in status[field].split()]


def pam_unix_path():
    """Where pam_unix.so is, on any architecture: the multiarch directories
    (/usr/lib/<triplet>/security, /lib/<triplet>/security) and the plain ones."""
    patterns = ("/usr/lib/*/security/pam_unix.so", "/lib/*/security/pam_unix.so",
                "/usr/lib/security/pam_unix.so", "/lib/security/pam_unix.so",
                "/usr/lib64/security/pam_unix.so", "/lib64/security/pam_unix.so")
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


class SystemUsersBase(PosternTestCase):
    """A World plus real system users, a PAM service and a mail spool directory."""

    world_as_root = True  # useradd, /etc/pam.d, chown: the test stays root (see the harness)

    def setUp(self):
        if not is_root():
            missing("needs root: creates system users and a PAM service")
        for tool in ("useradd", "userdel", "chpasswd"):
            if shutil.which(tool) is None:
                missing(f"{tool} not installed")
        if pam_unix_path() is None:
            missing("pam_unix.so not installed (Debian package libpam-modules)")
        super().setUp()
        self.tag = secrets.token_hex(4)
        self.pam_service = f"pt-{self.tag}"
        path = os.path.join(PAM_DIR, self.pam_service)
        record_machine_change("file", path)  # removed even if the run is cut short
        with open(path, "w") as f:
            f.write("auth required pam_unix.so\naccount required pam_unix.so\n")
        self.addCleanup(_remove, path)
        self.spool = self.world.path("spool")
        os.makedirs(self.spool)
        mail_gid = grp.getgrnam("mail").gr_gid
        os.chown(self.spool, 0, mail_gid)
        os.chmod(self.spool, 0o2775)
        self.mail_gid = mail_gid
        self.homes = self.world.path("home")
        os.makedirs(self.homes)
        self.chroot = self.world.path("empty")
        self.unix = {
            "server": {"process_model": "fork", "login_chroot": self.chroot},
            "auth": {"passdb": "pam", "pam_service": self.pam_service},
        }
        self.world.config["mail"]["location"] = f"mbox:{self.spool}/%u"
        self.world.config["auth"]["failure_delay"] = "50ms"

    # -- users
    def add_system_user(self, password="Pt-pass-1", messages=(), uid0=False, empty_password=False):
        """A system user (removed at cleanup) with an mbox spool holding `messages`."""
        name = f"pt_{secrets.token_hex(4)}"
        home = os.path.join(self.homes, name)
        cmd = ["useradd", "-M", "-d", home, "-s", "/usr/sbin/nologin"]
        cmd += ["-o", "-u", "0", "-g", "0"] if uid0 else ["-U"]
        record_machine_change("user", name)  # removed even if the run is cut short
        self.addCleanup(remove_user, name)
        subprocess.run(cmd + [name], check=True, capture_output=True, timeout=60)
        if empty_password:
            subprocess.run(["passwd", "-d", name], check=True, capture_output=True, timeout=60)
        else:
            subprocess.run(["chpasswd"], input=f"{name}:{password}\n".encode(), check=True,
                           capture_output=True, timeout=60)
        os.makedirs(home)
        pw = _getpw(name)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        spool = os.path.join(self.spool, name)
        with open(spool, "wb") as f:
            for i, m in enumerate(messages):
                f.write(b"From sender@example.org Mon Jan  1 00:00:%02d 2024\n" % i + m + b"\n")
        os.chown(spool, pw.pw_uid, self.mail_gid)
        os.chmod(spool, 0o660)
        return name, pw, spool

    # -- config and processes
    def write_unix(self):
        """Adds the unix keys to postern.toml; returns the config path."""
        for table, keys in self.unix.items():
            self.world.config.setdefault(table, {}).update(keys)
        return self.world.write_config()

    def start(self, listeners=None, args=()):
        """Starts posternd; it is stopped before the users are removed."""
        if args:
            srv = Server(self.world, self.write_unix(), self.world._log_path("posternd"), args=args)
            self.world.servers.append(srv)
            srv.wait_listening(listeners or len(self.world.config["server"]["listen"]))
        else:
            srv = self.world.start(self.write_unix(), listeners=listeners)
        self.addCleanup(lambda: srv.stopped or srv.stop(check=False))
        return srv

    def pid_from_log(self, log, kind, session=None, after=0):
        """pid of the last '<kind> process: pid=N' line (for `session` when given)."""
        pids = []
        for m in re.finditer(rf"{kind} process: pid=(\d+).*?session=<([^>]+)>", log):
            if session is None or m.group(2) == session:
                pids.append((int(m.group(1)), m.group(2)))
        return pids[after:] if pids else []

    def wait_process(self, srv, kind, count=1):
        def found():
            p = self.pid_from_log(srv.log(), kind)
            return p if len(p) >= count else None
        return wait_for(found, what=f"{count} '{kind} process' log lines")[count - 1]

    def expected_groups(self, name, gid):
        groups = {gid, self.mail_gid}
        groups |= {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
        groups.discard(0)
        return groups


def _getpw(name):
    import pwd
    return pwd.getpwnam(name)


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    forget_machine_change("file", path)




MSG1 = b"From: a@example.org\nSubject: one\n\nfirst body\n"
MSG2 = b"From: b@example.org\nSubject: two\n\nsecond body\n"


class PamForkMode(SystemUsersBase):
    def test_login_runs_as_the_user_after_an_unprivileged_chrooted_preauth(self):
        name, pw, spool = self.add_system_user(messages=(MSG1, MSG2))
        srv = self.start()
        conn = srv.connect()
        pre_pid, sid = self.wait_process(srv, "pre-auth")
        st = proc_status(pre_pid)
        login_pw = _getpw("postern") if _has_user("postern") else _getpw("nobody")
        self.assertEqual(set(ids(st, "Uid")), {login_pw.pw_uid}, st["Uid"])
        self.assertEqual(set(ids(st, "Gid")), {login_pw.pw_gid}, st["Gid"])
        self.assertEqual(st["NoNewPrivs"], "1")
        self.assertEqual(os.readlink(f"/proc/{pre_pid}/root"), os.path.realpath(self.chroot))
        self.assertNotIn(0, ids(st, "Uid"))

        self.assertTrue(conn.cmd(f"USER {name}").startswith("+OK"))
        self.assertErr(conn.cmd("PASS wrong-password"))
        conn.login(name, "Pt-pass-1")
        self.assertRegex(conn.cmd("STAT"), r"^\+OK 2 ")
        sess_pid, sess_sid = self.wait_process(srv, "session")
        self.assertEqual(sess_sid, sid)
        st = proc_status(sess_pid)
        self.assertEqual(set(ids(st, "Uid")), {pw.pw_uid}, st["Uid"])
        self.assertEqual(set(ids(st, "Gid")), {pw.pw_gid}, st["Gid"])
        self.assertEqual(set(ids(st, "Groups")), self.expected_groups(name, pw.pw_gid))
        self.assertEqual(st["NoNewPrivs"], "1")
        self.assertEqual(os.readlink(f"/proc/{sess_pid}/root"), "/")
        # The pre-auth process is gone once the plain session was handed over.
        wait_for(lambda: not os.path.exists(f"/proc/{pre_pid}/status") or
                 proc_status(pre_pid).get("State", "").startswith("Z"), what="pre-auth exit")

        st_line, body = conn.cmd_multi("RETR 1")
        self.assertOk(st_line)
        self.assertIn(b"first body", body)
        self.assertOk(conn.cmd("DELE 1"))
        conn.quit()
        with open(spool, "rb") as f:
            data = f.read()
        self.assertNotIn(b"first body", data)
        self.assertIn(b"second body", data)
        self.assertEqual(os.stat(spool).st_uid, pw.pw_uid)
        ev = srv.wait_events("logout", user=name)
        self.assertEqual(ev[0]["reason"], "QUIT")

    def test_sasl_plain_login(self):
        name, pw, _ = self.add_system_user(messages=(MSG1,))
        srv = self.start()
        conn = srv.connect()
        token = base64.b64encode(f"\0{name}\0Pt-pass-1".encode()).decode()
        self.assertOk(conn.cmd(f"AUTH PLAIN {token}"))
        self.assertRegex(conn.cmd("STAT"), r"^\+OK 1 ")
        conn.quit()
        bad = base64.b64encode(f"\0{name}\0nope".encode()).decode()
        conn = srv.connect()
        self.assertErr(conn.cmd(f"AUTH PLAIN {bad}"))

    def test_apop_is_refused_for_pam_users(self):
        name, _, _ = self.add_system_user(messages=(MSG1,))
        self.world.config["auth"]["apop"] = True
        srv = self.start()
        conn = srv.connect()
        m = re.search(r"(<[^>]+>)", conn.greeting)
        self.assertIsNotNone(m, conn.greeting)
        digest = hashlib.md5((m.group(1) + "Pt-pass-1").encode()).hexdigest()
        self.assertTrue(conn.cmd(f"APOP {name} {digest}").startswith("-ERR [AUTH]"))
        conn.login(name, "Pt-pass-1")  # USER/PASS still works on the same connection

    def test_second_concurrent_login_gets_in_use(self):
        name, _, _ = self.add_system_user(messages=(MSG1,))
        srv = self.start()
        first = srv.connect()
        first.login(name, "Pt-pass-1")
        second = srv.connect()
        self.assertOk(second.cmd(f"USER {name}"))
        self.assertTrue(second.cmd("PASS Pt-pass-1").startswith("-ERR [IN-USE]"))
        first.quit()

    def test_uid0_refused_even_with_the_right_password(self):
        name, _, _ = self.add_system_user(password="Root-alias-1", uid0=True)
        srv = self.start()
        conn = srv.connect()
        self.assertOk(conn.cmd(f"USER {name}"))
        self.assertTrue(conn.cmd("PASS Root-alias-1").startswith("-ERR"))
        token = base64.b64encode(f"\0{name}\0Root-alias-1".encode()).decode()
        self.assertErr(conn.cmd(f"AUTH PLAIN {token}"))
        self.assertNotIn("session process", srv.log())
        self.assertIn("uid 0 (root) may not log in", srv.log())

    def test_empty_password_refused(self):
        name, _, _ = self.add_system_user(empty_password=True)
        srv = self.start()
        conn = srv.connect()
        token = base64.b64encode(f"\0{name}\0".encode()).decode()
        self.assertErr(conn.cmd(f"AUTH PLAIN {token}"))
        self.assertOk(conn.cmd(f"USER {name}"))
        self.assertErr(conn.cmd("PASS "))
        self.assertNotIn("session process", srv.log())

    def test_kill9_of_the_session_process_deletes_nothing(self):
        name, _, spool = self.add_system_user(messages=(MSG1, MSG2))
        with open(spool, "rb") as f:
            before = f.read()
        srv = self.start()
        conn = srv.connect()
        conn.login(name, "Pt-pass-1")
        self.assertOk(conn.cmd("DELE 1"))
        self.assertOk(conn.cmd("DELE 2"))
        pid, _ = self.wait_process(srv, "session")
        os.kill(pid, signal.SIGKILL)
        conn.expect_closed()
        with open(spool, "rb") as f:
            self.assertEqual(f.read(), before)
        # The mailbox is usable again at once.
        conn = srv.connect()
        conn.login(name, "Pt-pass-1")
        self.assertRegex(conn.cmd("STAT"), r"^\+OK 2 ")
        conn.quit()

    def test_inetd_mode_serves_a_system_user(self):
        name, pw, spool = self.add_system_user(messages=(MSG1,))
        inetd = self.world.inetd(self.write_unix())
        conn = inetd.conn
        self.assertOk(conn.read_greeting())
        conn.login(name, "Pt-pass-1")
        self.assertRegex(conn.cmd("STAT"), r"^\+OK 1 ")
        self.assertOk(conn.cmd("DELE 1"))
        self.assertOk(conn.cmd("QUIT"))
        conn.expect_closed(max_lines=0)
        self.assertEqual(inetd.wait_exit(), 0, inetd.log())
        m = re.search(r"session process: pid=\d+, user=<[^>]+>, uid=(\d+), gid=(\d+)", inetd.log())
        self.assertIsNotNone(m, inetd.log())
        self.assertEqual((int(m.group(1)), int(m.group(2))), (pw.pw_uid, pw.pw_gid))
        with open(spool, "rb") as f:
            self.assertNotIn(b"first body", f.read())


def _has_user(name):
    try:
        _getpw(name)
        return True
    except KeyError:
        return False


if __name__ == "__main__":
    unittest.main()
