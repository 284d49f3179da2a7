"""Python's poplib (a real, independent client) against posternd, over IPv4 and IPv6 loopback.

poplib undoes dot-stuffing and returns lines without their CRLF, so a retrieved message is
b"\\r\\n".join(lines) + b"\\r\\n", which must equal the stored message with CRLF line ends.
"""

import poplib
import unittest

from postern_harness import requires
from postern_harness import (DEFAULT_TIMEOUT, Msg, PosternTestCase, ipv6_loopback_available,
                             octets, simple_message, top_body, wire_body)

PASSWORD = "P0plib-pw"


def messages():
    return [
        Msg(simple_message("first"), "new"),
        Msg(b"From: dots@example.org\nSubject: dots\n\n.\n..\n.x\n", "cur", "S"),
        Msg(b"From: n@example.org\nSubject: no newline\n\nend", "new", sizes=True),
        Msg(simple_message("long", [f"line {i}" for i in range(50)]), "cur", ""),
        Msg(b"Subject: binary-ish\n\n\x01\x02\x7f\x80\xff high bytes\n\ttab\n", "new"),
    ]


class PoplibBase(PosternTestCase):
    host = "127.0.0.1"

    def setUp(self):
        super().setUp()
        self.box = self.world.add_user("alice", PASSWORD, messages())
        self.configure()
        self.srv = self.world.start()
        self.before = self.box.contents()

    def configure(self):
        pass

    def client(self):
        port = self.srv.port if self.host == "127.0.0.1" else self.srv.port_for(self.host)
        p = poplib.POP3(self.host, port, timeout=DEFAULT_TIMEOUT)
        self.addCleanup(p.close)
        self.assertTrue(p.getwelcome().startswith(b"+OK"))
        p.user("alice")
        p.pass_(PASSWORD)
        return p

    def numbering(self, p):
        resp, lines, _ = p.uidl()
        self.assertTrue(resp.startswith(b"+OK"))
        pairs = [line.decode().split(" ") for line in lines]
        self.assertCountEqual([u for _, u in pairs], [m.uidl for m in self.box.messages])
        return {int(n): self.box.by_uidl(u) for n, u in pairs}

    @staticmethod
    def joined(lines):
        return b"".join(line + b"\r\n" for line in lines)


class Poplib(PoplibBase):
    def test_stat_list_uidl(self):
        p = self.client()
        num = self.numbering(p)
        self.assertEqual(p.stat(), (5, sum(octets(m.content) for m in num.values())))
        resp, lines, _ = p.list()
        self.assertEqual(lines, [b"%d %d" % (n, octets(num[n].content)) for n in sorted(num)])
        for n, m in num.items():
            self.assertEqual(p.list(n).split(b" ")[1:3], [b"%d" % n, b"%d" % octets(m.content)])
            self.assertEqual(p.uidl(n).split(b" ")[1:3], [b"%d" % n, m.uidl.encode()])
        self.assertTrue(p.quit().startswith(b"+OK"))

    def test_retr_and_top(self):
        p = self.client()
        for n, m in sorted(self.numbering(p).items()):
            with self.subTest(msg=n):
                resp, lines, _ = p.retr(n)
                self.assertTrue(resp.startswith(b"+OK"), resp)
                self.assertSameBytes(self.joined(lines), wire_body(m.content), f"RETR {n}")
                for k in (0, 1, 5):
                    resp, lines, _ = p.top(n, k)
                    self.assertSameBytes(self.joined(lines), top_body(m.content, k),
                                         f"TOP {n} {k}")
        p.quit()
        self.assertEqual(self.box.contents(), self.before)

    def test_capa(self):
        p = poplib.POP3(self.host, self.srv.port, timeout=DEFAULT_TIMEOUT)
        self.addCleanup(p.close)
        caps = p.capa()
        for cap in ("TOP", "USER", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"):
            self.assertIn(cap, caps)
        self.assertIn("IMPLEMENTATION", caps)

    def test_dele_rset_quit(self):
        p = self.client()
        num = self.numbering(p)
        p.dele(1)
        p.dele(4)
        with self.assertRaises(poplib.error_proto):
            p.retr(1)
        p.rset()
        p.dele(2)
        self.assertEqual(p.stat()[0], 4)
        self.assertTrue(p.quit().startswith(b"+OK"))
        expected = dict(self.before)
        del expected[num[2].uidl]
        self.assertEqual(self.box.contents(), expected)

    def test_delete_everything(self):
        p = self.client()
        count, _ = p.stat()
        for n in range(1, count + 1):
            p.dele(n)
        p.quit()
        self.assertEqual(self.box.files(), {})
        p = self.client()
        self.assertEqual(p.stat(), (0, 0))
        self.assertEqual(p.list()[1], [])
        p.quit()

    def test_wrong_password(self):
        p = poplib.POP3(self.host, self.srv.port, timeout=DEFAULT_TIMEOUT)
        self.addCleanup(p.close)
        p.user("alice")
        with self.assertRaises(poplib.error_proto) as cm:
            p.pass_("not-the-password")
        self.assertTrue(str(cm.exception).startswith("b'-ERR [AUTH]"), str(cm.exception))

    def test_noop_and_rpop_unsupported(self):
        p = self.client()
        self.assertTrue(p.noop().startswith(b"+OK"))
        with self.assertRaises(poplib.error_proto):
            p.rpop("alice")
        self.assertEqual(p.stat()[0], 5)


@requires(ipv6_loopback_available(), "this host has no IPv6 loopback (::1)")
class PoplibIPv6(PoplibBase):
    host = "::1"

    def configure(self):
        self.world.config["server"]["listen"] = ["127.0.0.1:0", "[::1]:0"]

    def test_both_listeners_and_ipv6_session(self):
        hosts = sorted(h for h, _ in self.srv.listeners)
        self.assertEqual(hosts, ["127.0.0.1", "::1"])
        p = self.client()
        for n, m in sorted(self.numbering(p).items()):
            resp, lines, _ = p.retr(n)
            self.assertSameBytes(self.joined(lines), wire_body(m.content), f"RETR {n} over ::1")
        p.dele(1)
        p.quit()
        ev = self.srv.wait_events("login", user="alice")[0]
        self.assertEqual(ev.get("rip"), "::1", ev["_line"])
        self.assertEqual(len(self.box.contents()), 4)
        # IPv4 still serves.
        p4 = poplib.POP3("127.0.0.1", self.srv.port_for("127.0.0.1"), timeout=DEFAULT_TIMEOUT)
        self.addCleanup(p4.close)
        p4.user("alice")
        p4.pass_(PASSWORD)
        self.assertEqual(p4.stat()[0], 4)
        p4.quit()


if __name__ == "__main__":
    unittest.main()
