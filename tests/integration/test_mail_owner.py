"""Who owns the mail: no store code runs as root, no session runs as a uid another part of the
system uses ([auth] first_valid_uid / last_valid_uid, the pre-auth uid, nobody).

Event and inetd mode run every session in one process: started as root without [server] user
(or with user = root) they refuse to start, --check-config included, and a login whose passdb
record names another uid or gid than the process's is refused with -ERR [SYS/PERM]. Fork mode
checks each mail owner before it switches to it. The tests that start posternd as root need
root (CI runs them as root); the others run as any user.
"""

import os
import re
import subprocess
import unittest

from postern_harness import missing
from postern_harness import (POSTERND, Pop3Conn, PosternTestCase, Server, _child_as_root,
                             privileged, scaled, toml_text, wait_for)
from test_system_users import MSG1, SystemUsersBase, is_root

DEFECT5_HINTS = ("server.user", 'server.process_model = "fork"')


def run_as_root(args, cwd):
    """posternd run to its end as real root (the harness may have switched to the test user).
    One that is still running after 10 s (it started: the refusal failed) is killed, and the
    status is None."""
    proc = subprocess.Popen([POSTERND, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=cwd, preexec_fn=_child_as_root)
    try:
        out, _ = proc.communicate(timeout=scaled(10))
    except subprocess.TimeoutExpired:
        with privileged():
            proc.kill()
        out, _ = proc.communicate()
        return None, out.decode("utf-8", "replace")
    return proc.returncode, out.decode("utf-8", "replace")


class RootStoreRefused(PosternTestCase):
    """Defect 5: passdb = "pam", location = "maildir:~/Maildir", no [server] user."""

    def setUp(self):
        if not is_root():
            missing("needs root: the refused configuration is one started as root")
        super().setUp()

    def defect5_config(self, **server):
        cfg = {"server": {"listen": ["127.0.0.1:0"], **server},
               "mail": {"location": "maildir:~/Maildir"},
               "auth": {"passdb": "pam"},
               "log": {"level": "debug", "target": "stderr"}}
        return self.world.write_config(toml_text(cfg), name="defect5.toml")

    def assertRefusal(self, rc, out, user_is_root=False):
        self.assertEqual(rc, 1, out)
        self.assertIn("server.user is root" if user_is_root else
                      "server.user is not set and the server is started as root", out)
        for hint in DEFECT5_HINTS:
            self.assertIn(hint, out)
        self.assertNotIn("listening on", out)

    def test_check_config_refuses_event_mode_as_root(self):
        rc, out = run_as_root(["--check-config", "--config", self.defect5_config()], self.world.dir)
        self.assertRefusal(rc, out)

    def test_check_config_refuses_user_root(self):
        rc, out = run_as_root(["--check-config", "--config", self.defect5_config(user="root")],
                              self.world.dir)
        self.assertRefusal(rc, out, user_is_root=True)

    def test_daemon_and_inetd_refuse_to_start(self):
        path = self.defect5_config()
        rc, out = run_as_root(["--foreground", "--config", path], self.world.dir)
        self.assertRefusal(rc, out)
        rc, out = run_as_root(["--inetd", "--config", path], self.world.dir)
        self.assertRefusal(rc, out)
        cfg = self.defect5_config(processes=2)
        rc, out = run_as_root(["--foreground", "--config", cfg], self.world.dir)
        self.assertRefusal(rc, out)

    def test_fork_mode_and_a_user_are_accepted(self):
        rc, out = run_as_root(["--check-config", "--config", self.defect5_config(
            process_model="fork")], self.world.dir)
        self.assertEqual(rc, 0, out)
        if self.world.owner is not None:
            rc, out = run_as_root(["--check-config", "--config", self.defect5_config(
                user=self.world.owner.pw_name)], self.world.dir)
            self.assertEqual(rc, 0, out)
            self.assertIn("first_valid_uid = 500", out)
            self.assertIn("last_valid_uid = 0", out)

    def test_symlinked_cur_is_never_read_as_root(self):
        # A local user points ~/Maildir/cur at a directory of files that are not theirs (a
        # scratch copy standing in for /etc). Today's main serves it as root and renames its
        # files at QUIT; the configuration is now refused, so no process reads it.
        home = self.world.path("home", "mallory")
        os.makedirs(os.path.join(home, "Maildir", "new"))
        os.makedirs(os.path.join(home, "Maildir", "tmp"))
        scratch = self.world.path("scratch-etc")
        os.makedirs(scratch)
        with open(os.path.join(scratch, "shadow"), "w") as f:
            f.write("root:$6$not-a-real-hash:19000:0:99999:7:::\n")
        os.symlink(scratch, os.path.join(home, "Maildir", "cur"))
        self.world.add_passwd_line(f"mallory:{{PLAIN}}pw::::{home}::")
        cfg = {"server": {"listen": ["127.0.0.1:0"]},
               "mail": {"location": "maildir:~/Maildir"},
               "auth": {"passdb": f"passwd-file:{self.world.passwd_path}"},
               "log": {"level": "debug", "target": "stderr"}}
        path = self.world.write_config(toml_text(cfg), name="symlink.toml")
        log_path = self.world.path("symlink.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([POSTERND, "--foreground", "--config", path],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    cwd=self.world.dir, preexec_fn=_child_as_root)

        def text():
            with open(log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        try:
            wait_for(lambda: proc.poll() is not None or "listening on" in text(),
                     what="posternd to refuse or to listen")
            listening = re.search(r"listening on 127\.0\.0\.1:(\d+)", text())
            if proc.poll() is None and listening:
                # It started (the defect): what a client of that local user gets.
                conn = Pop3Conn(int(listening.group(1)))
                self.world.on_cleanup(conn.close)
                conn.read_greeting()
                conn.cmd("USER mallory")
                if conn.cmd("PASS pw").startswith("+OK"):
                    st, body = conn.cmd_multi("RETR 1")
                    self.assertNotIn(b"not-a-real-hash", body or b"", "root's file was served")
                    conn.cmd("QUIT")
        finally:
            if proc.poll() is None:
                with privileged():
                    proc.kill()
            proc.wait(scaled(10))
        self.assertEqual(sorted(os.listdir(scratch)), ["shadow"])
        self.assertRefusal(proc.returncode, text())


class EventModeOwner(PosternTestCase):
    """Event mode serves only the mail of its own uid (server.user, or the invoking user)."""

    def ids(self):
        if self.world.owner is not None:
            return self.world.owner.pw_uid, self.world.owner.pw_gid
        return os.geteuid(), os.getegid()

    def add(self, name, uid="", gid="", extra=""):
        path = os.path.join(self.world.mail_root, name, "Maildir")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)
        with open(os.path.join(path, "new", "1700000001.M1P1.test"), "wb") as f:
            f.write(MSG1)
        self.world.add_passwd_line(f"{name}:{{PLAIN}}pw:{uid}:{gid}::::{extra}")

    def login(self, srv, name):
        conn = srv.connect()
        self.assertTrue(conn.cmd(f"USER {name}").startswith("+OK"))
        return conn, conn.cmd("PASS pw")

    def test_foreign_uids_are_refused_own_uid_is_served(self):
        uid, gid = self.ids()
        self.add("mine", uid, gid)
        self.add("virtual")
        self.add("nobodys", 65534)
        self.add("usernobody", extra="userdb_uid=nobody")
        self.add("other", uid + 1)
        self.add("othergroup", uid, gid + 1)
        srv = self.world.start()
        for name in ("mine", "virtual"):
            conn, st = self.login(srv, name)
            self.assertTrue(st.startswith("+OK"), f"{name}: {st}")
            conn.quit()
        runs_as = f"this process runs as uid {uid}"
        for name, why in (("nobodys", f"the passdb gives uid 65534, {runs_as}"),
                          ("usernobody", f"the passdb gives uid 65534, {runs_as}"),
                          ("other", f"the passdb gives uid {uid + 1}, {runs_as}"),
                          ("othergroup",
                           f"the passdb gives gid {gid + 1}, this process runs as gid {gid}")):
            conn, st = self.login(srv, name)
            self.assertEqual(st, "-ERR [SYS/PERM] Unable to open the mailbox.", name)
            line = srv.wait_log(
                rf"login refused, mail owner not allowed: user=<{name}>.*")[0].group(0)
            self.assertIn(why, line)
            self.assertIn('server.process_model = "fork"', line)
        self.assertEqual(len(os.listdir(os.path.join(self.world.mail_root, "other", "Maildir",
                                                     "new"))), 1)

    def test_inetd_refuses_a_foreign_uid(self):
        uid, _ = self.ids()
        self.add("other", uid + 1)
        inetd = self.world.inetd()
        self.assertTrue(inetd.conn.read_greeting().startswith("+OK"))
        inetd.conn.cmd("USER other")
        self.assertEqual(inetd.conn.cmd("PASS pw"), "-ERR [SYS/PERM] Unable to open the mailbox.")
        inetd.conn.cmd("QUIT")
        self.assertEqual(inetd.wait_exit(), 0)
        self.assertIn("login refused, mail owner not allowed: user=<other>", inetd.log())

    def test_process_uid_outside_the_range_refuses_to_start(self):
        uid, _ = self.ids()
        self.world.config["auth"]["first_valid_uid"] = uid + 1
        path = self.world.write_config()
        srv = Server(self.world, path, self.world.path("range.log"))
        self.world.servers.append(srv)
        self.assertEqual(srv.wait_exit(), 1)
        self.assertIn(f"uid {uid} is below auth.first_valid_uid ({uid + 1})", srv.log())
        self.assertNotIn("listening on", srv.log())

    def test_last_below_first_is_a_config_error(self):
        self.world.config["auth"]["first_valid_uid"] = 1000
        self.world.config["auth"]["last_valid_uid"] = 999
        res = subprocess.run([POSTERND, "--check-config", "--config", self.world.write_config()],
                             capture_output=True, timeout=scaled(30), text=True)
        self.assertEqual(res.returncode, 1)
        self.assertIn("auth.last_valid_uid (999) is below auth.first_valid_uid (1000)", res.stderr)


class ForkModeOwner(SystemUsersBase):
    """Fork mode checks each mail owner before it becomes that uid."""

    def passwd_user(self, name, uid, gid, extra=""):
        spool = os.path.join(self.spool, name)
        with open(spool, "wb") as f:
            f.write(b"From sender@example.org Mon Jan  1 00:00:00 2024\n" + MSG1 + b"\n")
        self.world.add_passwd_line(f"{name}:{{PLAIN}}pw:{uid}:{gid}::{self.homes}::{extra}")

    def refused(self, srv, name, why):
        conn = srv.connect()
        conn.cmd(f"USER {name}")
        self.assertEqual(conn.cmd("PASS pw"),
                         "-ERR [SYS/PERM] This account may not read mail here.")
        line = srv.wait_log(rf"login refused, cannot become the mail owner: user=<{name}>.*")[0]
        self.assertIn(why, line.group(0))

    def test_preauth_uid_and_uids_outside_the_range_are_refused(self):
        self.unix["server"]["login_user"] = "nobody"
        self.unix["auth"] = {"passdb": f"passwd-file:{self.world.passwd_path}"}
        self.world.config["auth"]["first_valid_uid"] = 1000
        self.world.config["auth"]["last_valid_uid"] = 60000
        self.passwd_user("asnobody", "nobody", "nogroup")
        self.passwd_user("extranobody", "", "", extra="userdb_uid=nobody userdb_gid=nogroup")
        self.passwd_user("asdaemon", "daemon", "daemon")
        self.passwd_user("toohigh", 60001, 60001)
        srv = self.start()
        self.refused(srv, "asnobody", "server.login_user")
        self.refused(srv, "extranobody", "server.login_user")
        self.refused(srv, "asdaemon", "below auth.first_valid_uid (1000)")
        self.refused(srv, "toohigh", "above auth.last_valid_uid (60000)")
        self.assertNotRegex(srv.log(), r"session process: pid=\d+, "
                                       r"user=<(asnobody|extranobody|asdaemon|toohigh)>")

    def test_system_user_inside_the_range_is_served_outside_refused(self):
        name, pw, _ = self.add_system_user(messages=[MSG1])
        self.world.config["auth"]["first_valid_uid"] = pw.pw_uid
        self.world.config["auth"]["last_valid_uid"] = pw.pw_uid
        srv = self.start()
        conn = srv.connect()
        conn.login(name, "Pt-pass-1")
        self.assertTrue(conn.cmd("STAT").startswith("+OK 1 "))
        conn.quit()
        srv.stop()
        self.world.config["auth"]["first_valid_uid"] = pw.pw_uid + 1
        self.world.config["auth"]["last_valid_uid"] = 0
        srv = self.start()
        conn = srv.connect()
        conn.cmd(f"USER {name}")
        self.assertEqual(conn.cmd("PASS Pt-pass-1"),
                         "-ERR [SYS/PERM] This account may not read mail here.")
        srv.wait_log(rf"login refused, cannot become the mail owner: user=<{name}>.*"
                     rf"below auth\.first_valid_uid \({pw.pw_uid + 1}\)")


if __name__ == "__main__":
    unittest.main()
