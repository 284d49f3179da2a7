"""Log lines nobody can forge: what fail2ban extracts from the real posternd's log.

Every kind of failed login (USER/PASS, APOP, AUTH PLAIN, AUTH LOGIN, CRAM-MD5) is made with
user names and SASL identities built to look like log fields ("x>, method=PASS, rip=6.6.6.6,
session=<y"), with CR/LF and whole forged log lines inside decoded SASL payloads, over IPv4
and IPv6 loopback. The shipped filter (contrib/fail2ban/postern.conf) is then run with
`fail2ban-regex` over the log posternd wrote: the real client address must come out exactly
once per failure and 6.6.6.6 never. Event mode runs in any environment; fork mode (the
privileged process and the pre-auth process both run per connection) needs root.
"""

import base64
import collections
import hashlib
import hmac
import os
import re
import shutil
import subprocess
import unittest

from postern_harness import missing, requires
from postern_harness import (HERE, PosternTestCase, ipv6_loopback_available, scaled,
                             wait_for)

FILTER = os.path.join(HERE, "..", "..", "contrib", "fail2ban", "postern.conf")
FORGED = "6.6.6.6"
HOSTILE = f"x>, method=PASS, rip={FORGED}, session=<y"
HOSTILE_NO_SPACE = f"x>,method=APOP,rip={FORGED},session=<y"  # APOP splits its name at spaces
# A whole forged line after CR/LF, in both log formats (stderr and syslog).
FORGED_LINE = (f"\r\n2026-01-01T00:00:00.000Z posternd[1]: notice: auth failed: rip={FORGED}, "
               f"session=<a>, method=PLAIN, user=<b>, reason=x\r\n"
               f"Jan  1 00:00:00 host posternd[1]: auth failed: rip={FORGED}, session=<a>, "
               f"method=PLAIN, user=<b>, reason=x\n")
PASSWORD = "Right-pw-1"


def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def is_root():
    return os.geteuid() == 0 or os.getresuid()[2] == 0


class LogForgeryBase:
    """Mixed into a PosternTestCase; subclasses set the process mode in configure()."""

    def setUp(self):
        if shutil.which("fail2ban-regex") is None:
            missing("fail2ban-regex not installed (Debian package fail2ban)")
        super().setUp()
        w = self.world
        w.add_user("alice", PASSWORD)
        self.ipv6 = ipv6_loopback_available()
        w.config["server"]["listen"] = ["127.0.0.1:0"] + (["[::1]:0"] if self.ipv6 else [])
        w.config["auth"].update({
            "mechanisms": ["PLAIN", "LOGIN", "CRAM-MD5"],
            "apop": True,
            "disable_plaintext_auth": False,
            "failure_delay": "10ms",
        })
        self.configure()
        self.srv = w.start(w.write_config(), listeners=len(w.config["server"]["listen"]))

    def configure(self):
        pass

    # -- one failed login of each kind; each returns after the server's -ERR

    def fail_user_pass(self, conn, user):
        self.assertOk(conn.cmd(f"USER {user}"))
        self.assertErr(conn.cmd("PASS wrong-password"))

    def fail_apop(self, conn, user):
        stamp = re.search(r"<[^>]*>", conn.greeting).group(0)
        digest = hashlib.md5((stamp + "wrong-password").encode()).hexdigest()
        self.assertErr(conn.cmd(f"APOP {user} {digest}"))

    def fail_apop_overlong(self, conn, user):
        self.assertErr(conn.cmd(f"APOP {user} {'0' * 64}"))

    def fail_plain(self, conn, user, authzid=""):
        response = b64(f"{authzid}\0{user}\0wrong-password")
        if len("AUTH PLAIN " + response) <= 253:  # an initial response fits the command line
            self.assertErr(conn.cmd("AUTH PLAIN " + response))
            return
        self.assertTrue(conn.cmd("AUTH PLAIN").startswith("+"))
        self.assertErr(conn.cmd(response))

    def fail_login(self, conn, user):
        self.assertTrue(conn.cmd("AUTH LOGIN").startswith("+ "))
        self.assertTrue(conn.cmd(b64(user)).startswith("+ "))
        self.assertErr(conn.cmd(b64("wrong-password")))

    def fail_cram(self, conn, user):
        challenge = conn.cmd("AUTH CRAM-MD5")
        self.assertTrue(challenge.startswith("+ "), challenge)
        digest = hmac.new(b"wrong-password", base64.b64decode(challenge[2:]), "md5").hexdigest()
        self.assertErr(conn.cmd(b64(f"{user} {digest}")))

    def failures(self):
        """(name, function) for every failure kind with hostile names and identities."""
        return [
            ("USER/PASS hostile", lambda c: self.fail_user_pass(c, HOSTILE)),
            ("USER/PASS known user", lambda c: self.fail_user_pass(c, "alice")),
            ("USER/PASS name with a slash", lambda c: self.fail_user_pass(c, HOSTILE + "/..")),
            ("APOP hostile", lambda c: self.fail_apop(c, HOSTILE_NO_SPACE)),
            ("APOP known user", lambda c: self.fail_apop(c, "alice")),
            ("APOP overlong digest", lambda c: self.fail_apop_overlong(c, "alice")),
            ("PLAIN hostile authcid", lambda c: self.fail_plain(c, HOSTILE)),
            ("PLAIN hostile authzid", lambda c: self.fail_plain(c, "alice", authzid=HOSTILE)),
            ("PLAIN CR/LF", lambda c: self.fail_plain(c, HOSTILE + FORGED_LINE,
                                                      authzid=FORGED_LINE)),
            ("LOGIN hostile", lambda c: self.fail_login(c, HOSTILE)),
            ("LOGIN CR/LF", lambda c: self.fail_login(c, HOSTILE + FORGED_LINE)),
            ("CRAM-MD5 hostile", lambda c: self.fail_cram(c, HOSTILE)),
            ("CRAM-MD5 CR/LF", lambda c: self.fail_cram(c, HOSTILE + FORGED_LINE)),
            ("CRAM-MD5 known user", lambda c: self.fail_cram(c, "alice")),
        ]

    def run_failures(self, host):
        """Every failure once from `host`, each on its own connection. Returns the count."""
        n = 0
        for name, fail in self.failures():
            with self.subTest(kind=name, host=host):
                conn = self.srv.connect(host=host)
                fail(conn)
                self.assertOk(conn.quit())
                n += 1
        return n

    def fail2ban_ips(self):
        out = subprocess.run(["fail2ban-regex", "-r", "-o", "ip", self.srv.log_path, FILTER],
                             capture_output=True, text=True, timeout=scaled(120))
        self.assertEqual(out.returncode, 0, out.stderr)
        return collections.Counter(line.strip() for line in out.stdout.splitlines()
                                   if line.strip())

    def auth_failed_lines(self):
        return [line for line in self.srv.log().splitlines() if "auth failed:" in line]

    def test_fail2ban_counts_the_real_client_once_per_failure(self):
        expected = collections.Counter()
        expected["127.0.0.1"] = self.run_failures("127.0.0.1")
        if self.ipv6:
            expected["::1"] = self.run_failures("::1")
        total = sum(expected.values())
        wait_for(lambda: len(self.auth_failed_lines()) >= total, what=f"{total} auth failed lines")
        lines = self.auth_failed_lines()
        self.assertEqual(len(lines), total, "one line per failure:\n" + "\n".join(lines))
        ips = self.fail2ban_ips()
        self.assertNotIn(FORGED, ips)
        self.assertEqual(ips, expected, "\n".join(lines))
        # Every line is the server's: a timestamp first, no forged line, no raw CR.
        for line in self.srv.log().splitlines():
            self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z posternd\[\d+\]: ")
            self.assertNotIn("\r", line)
        # The server's fields come before the client's; the client's are escaped.
        for line in lines:
            self.assertRegex(line, r"auth failed: rip=(127\.0\.0\.1|::1), session=<[^<>, ]+>, "
                                   r"method=[A-Z0-9-]+, user=<[^<>, =]*>, reason=")
        self.assertTrue(any("user=<x\\x3e\\x2c\\x20method\\x3dPASS" in line for line in lines))

    def test_known_and_unknown_user_lines_look_alike(self):
        conn = self.srv.connect()
        self.fail_user_pass(conn, "alice")
        self.fail_user_pass(conn, "nobody-here")
        self.assertOk(conn.quit())
        wait_for(lambda: len(self.auth_failed_lines()) >= 2, what="2 auth failed lines")
        self.assertEqual(self.fail2ban_ips(), collections.Counter({"127.0.0.1": 2}))


class EventMode(LogForgeryBase, PosternTestCase):
    pass


class WorkerProcesses(LogForgeryBase, PosternTestCase):
    def configure(self):
        self.world.config["server"]["processes"] = 2


@requires(is_root(), "fork mode needs root")
class ForkMode(LogForgeryBase, PosternTestCase):
    world_as_root = True  # fork mode starts as root and drops privileges per process

    def configure(self):
        empty = self.world.path("empty")
        self.world.config["server"].update({"process_model": "fork", "login_chroot": empty})

    def test_each_process_logs_its_part(self):
        # The failure is logged by the privileged process, not the pre-auth process.
        conn = self.srv.connect()
        self.fail_user_pass(conn, "alice")
        self.assertOk(conn.quit())
        wait_for(lambda: self.auth_failed_lines(), what="an auth failed line")
        log = self.srv.log()
        line = self.auth_failed_lines()[0]
        pid = int(re.search(r"posternd\[(\d+)\]", line).group(1))
        pre_auth = [int(p) for p in re.findall(r"pre-auth process: pid=(\d+)", log)]
        self.assertTrue(pre_auth, log)
        self.assertNotIn(pid, pre_auth)


if __name__ == "__main__":
    unittest.main()
