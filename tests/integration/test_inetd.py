"""`posternd --inetd`: one session on stdin/stdout (here one end of a socketpair).

The same engine and store as the daemon: the core conversation must be byte-identical, the
process must exit with status 0 once the session ends, and the mail rules hold.
"""

import socket
import unittest

from postern_harness import (Msg, PosternTestCase, counts, dot_stuff, log_events, octets,
                             parse_listing, retr_payload, simple_message, top_body)

PASSWORD = "In3td-pw"


def messages():
    return [
        Msg(simple_message("one"), "new"),
        Msg(b"From: d@example.org\nSubject: dots\n\n.\n..\n.x\nend\n", "cur", "S"),
        Msg(b"From: n@example.org\nSubject: nonl\n\nno newline", "new", sizes=True),
    ]


class Inetd(PosternTestCase):
    def setUp(self):
        super().setUp()
        self.box = self.world.add_user("alice", PASSWORD, messages())
        self.before = self.box.contents()

    def session(self):
        inetd = self.world.inetd()
        conn = inetd.conn
        self.assertTrue(conn.read_greeting().startswith("+OK"), conn.greeting)
        return inetd, conn

    def numbering(self, conn):
        st, body = conn.cmd_multi("UIDL")
        self.assertTrue(st.startswith("+OK"), st)
        listing = parse_listing(body)
        self.assertCountEqual([u for _, u in listing], [m.uidl for m in self.box.messages])
        return {n: self.box.by_uidl(u) for n, u in listing}

    def assertExitedCleanly(self, inetd):
        rc = inetd.wait_exit()
        self.assertEqual(rc, 0, f"posternd --inetd exit status\n{inetd.log()}")
        inetd.check_log_clean()

    def test_core_session_and_quit(self):
        inetd, conn = self.session()
        st, caps = conn.cmd_multi("CAPA")
        self.assertTrue(st.startswith("+OK"))
        for cap in (b"TOP", b"UIDL", b"USER", b"PIPELINING", b"RESP-CODES"):
            self.assertIn(cap + b"\r\n", caps)
        self.assertTrue(conn.cmd("USER alice").startswith("+OK"))
        self.assertTrue(conn.cmd(f"PASS {PASSWORD}").startswith("+OK"))
        num = self.numbering(conn)
        total = sum(octets(m.content) for m in num.values())
        self.assertRegex(conn.cmd("STAT"), rf"^\+OK 3 {total}( |$)")
        st, body = conn.cmd_multi("LIST")
        self.assertSameBytes(body, b"".join(b"%d %d\r\n" % (n, octets(num[n].content))
                                            for n in sorted(num)))
        for n, m in sorted(num.items()):
            st, payload = conn.cmd_multi(f"RETR {n}")
            self.assertTrue(st.startswith("+OK"), st)
            self.assertSameBytes(payload + b".\r\n", retr_payload(m.content), f"RETR {n}")
            st, payload = conn.cmd_multi(f"TOP {n} 1")
            self.assertSameBytes(payload, dot_stuff(top_body(m.content, 1)), f"TOP {n} 1")
        self.assertTrue(conn.cmd("DELE 2").startswith("+OK"))
        self.assertTrue(conn.cmd("NOOP").startswith("+OK"))
        self.assertTrue(conn.cmd("QUIT").startswith("+OK"))
        conn.expect_closed(max_lines=0)
        self.assertExitedCleanly(inetd)
        expected = dict(self.before)
        del expected[num[2].uidl]
        self.assertEqual(self.box.contents(), expected)
        ev = [e for e in inetd_events(inetd, "logout") if e.get("user") == "alice"]
        self.assertEqual(len(ev), 1, inetd.log())
        self.assertEqual(ev[0].get("reason"), "QUIT", ev[0]["_line"])
        self.assertEqual(counts(ev[0]["del"]), (1, octets(num[2].content)), ev[0]["_line"])

    def test_failed_login_then_success(self):
        inetd, conn = self.session()
        self.assertTrue(conn.cmd("USER alice").startswith("+OK"))
        self.assertTrue(conn.cmd("PASS nope").startswith("-ERR [AUTH]"))
        self.assertTrue(conn.cmd("USER alice").startswith("+OK"))
        self.assertTrue(conn.cmd(f"PASS {PASSWORD}").startswith("+OK"))
        self.assertRegex(conn.cmd("STAT"), r"^\+OK 3 \d+")
        self.assertTrue(conn.quit().startswith("+OK"))
        self.assertExitedCleanly(inetd)
        self.assertEqual(self.box.contents(), self.before)

    def test_quit_before_login(self):
        inetd, conn = self.session()
        self.assertTrue(conn.quit().startswith("+OK"))
        self.assertExitedCleanly(inetd)
        self.assertEqual(self.box.contents(), self.before)

    def test_client_hangup_deletes_nothing(self):
        inetd, conn = self.session()
        conn.login("alice", PASSWORD)
        for n in (1, 2, 3):
            self.assertTrue(conn.cmd(f"DELE {n}").startswith("+OK"))
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        self.assertExitedCleanly(inetd)
        self.assertEqual(self.box.contents(), self.before)
        ev = [e for e in inetd_events(inetd, "logout") if e.get("user") == "alice"]
        self.assertEqual(len(ev), 1, inetd.log())
        self.assertEqual(ev[0].get("reason"), "disconnected", ev[0]["_line"])
        self.assertEqual(counts(ev[0]["del"]), (0, 0), ev[0]["_line"])

    def test_pipelined_session(self):
        inetd, conn = self.session()
        conn.send(f"USER alice\r\nPASS {PASSWORD}\r\nSTAT\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n")
        for _ in range(3):
            self.assertTrue(conn.status().startswith("+OK"))
        self.assertTrue(conn.status().startswith("+OK"))
        payload = conn.read_body()
        self.assertTrue(conn.status().startswith("+OK"))
        self.assertTrue(conn.status().startswith("+OK"))
        conn.expect_closed(max_lines=0)
        self.assertExitedCleanly(inetd)
        self.assertEqual(len(self.box.contents()), 2)
        gone = set(self.before) - set(self.box.contents())
        self.assertEqual(len(gone), 1)
        self.assertRetrieved(payload, self.before[gone.pop()])

    def test_in_use_against_a_daemon_session(self):
        # The session lock is shared between a daemon session and an inetd session.
        srv = self.world.start()
        first = srv.session(self.box)
        inetd, conn = self.session()
        self.assertTrue(conn.cmd("USER alice").startswith("+OK"))
        st = conn.cmd(f"PASS {PASSWORD}")
        self.assertTrue(st.startswith("-ERR [IN-USE]"), st)
        self.assertTrue(conn.quit().startswith("+OK"))
        self.assertExitedCleanly(inetd)
        self.assertTrue(first.quit().startswith("+OK"))


def inetd_events(inetd, kind):
    return log_events(inetd.log(), kind)


if __name__ == "__main__":
    unittest.main()
