"""At most N failed logins per connection, alike in every mode (src/pop3/limits.hpp
max_failed_logins): the N-th failure is answered, the connection closed and that logged once;
N-1 failures leave the connection usable. Checked for USER/PASS and AUTH PLAIN in event mode,
with worker processes, in inetd mode and in fork mode (root only).
"""

import base64
import re
import unittest

from postern_harness import Msg, PosternTestCase, simple_message
from test_system_users import MSG1, SystemUsersBase

MAX_FAILED_LOGINS = 10  # src/pop3/limits.hpp
FAILED = "-ERR [AUTH] Authentication failed."
CLOSING = "-ERR [AUTH] Authentication failed. Disconnected for too many authentication failures."
LOGGED = r"too many failed logins: rip={}, session=<[^>]+>"


def plain(user, password):
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


class Limit:
    """The checks, for a class that sets up self.user, self.password and connect()."""

    rip = r"127\.0\.0\.1"  # as logged

    def logged(self):
        return LOGGED.format(self.rip)

    def fail(self, conns, kind):
        """One failed login on each connection (sent to all, then answered); the answers."""
        for c in conns:
            if kind == "PASS":
                self.assertTrue(c.cmd(f"USER {self.user}").startswith("+OK"))
                c.send(b"PASS wrong-password\r\n")
            else:
                c.send(f"AUTH PLAIN {plain(self.user, 'wrong-password')}\r\n".encode())
        return [c.status() for c in conns]

    def check(self, kind):
        below, at = self.connect(), self.connect()
        for _ in range(MAX_FAILED_LOGINS - 1):
            self.assertEqual(self.fail([below, at], kind), [FAILED, FAILED])
        # N-1 failures: the connection still logs in.
        if kind == "PASS":
            below.login(self.user, self.password)
        else:
            st = below.cmd(f"AUTH PLAIN {plain(self.user, self.password)}")
            self.assertTrue(st.startswith("+OK"), st)
        self.assertTrue(below.cmd("STAT").startswith("+OK"))
        below.quit()
        # The N-th failure is answered, then the connection is closed.
        self.assertEqual(self.fail([at], kind), [CLOSING])
        self.assertEqual(at.expect_closed(max_lines=0), [])
        self.assertEqual(len(re.findall(self.logged(), self.wait_logged())), 1)

    def test_pass_failures(self):
        self.check("PASS")

    def test_auth_plain_failures(self):
        self.check("PLAIN")


class EventMode(Limit, PosternTestCase):
    processes = None

    def setUp(self):
        super().setUp()
        self.user, self.password = "alice", "Alice-pw-1"
        self.world.add_user(self.user, self.password, [Msg(simple_message("hello"))])
        self.world.config["auth"]["failure_delay"] = "10ms"
        if self.processes:
            self.world.config["server"]["processes"] = self.processes
        self.srv = self.world.start()

    def connect(self):
        return self.srv.connect()

    def wait_logged(self):
        self.srv.wait_log(self.logged())
        return self.srv.log()


class WorkerProcesses(EventMode):
    processes = 2


class InetdMode(Limit, PosternTestCase):
    rip = "local"  # stdin is a socketpair, not an IP connection

    def setUp(self):
        super().setUp()
        self.user, self.password = "alice", "Alice-pw-1"
        self.world.add_user(self.user, self.password, [Msg(simple_message("hello"))])
        self.world.config["auth"]["failure_delay"] = "10ms"
        self.inetds = []

    def connect(self):
        inetd = self.world.inetd()
        self.inetds.append(inetd)
        self.assertTrue(inetd.conn.read_greeting().startswith("+OK"))
        return inetd.conn

    def wait_logged(self):
        for inetd in self.inetds:
            self.assertEqual(inetd.wait_exit(), 0, inetd.log())
        return "".join(inetd.log() for inetd in self.inetds)


class ForkMode(Limit, SystemUsersBase):
    """The privileged process counts failures; the pre-auth process closes at the same one."""

    def setUp(self):
        super().setUp()
        self.password = "Pt-pass-1"
        self.user, _, _ = self.add_system_user(password=self.password, messages=[MSG1])
        self.world.config["auth"]["failure_delay"] = "10ms"
        self.srv = self.start()

    def connect(self):
        return self.srv.connect()

    def wait_logged(self):
        self.srv.wait_log(self.logged())
        return self.srv.log()


if __name__ == "__main__":
    unittest.main()
