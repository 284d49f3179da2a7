"""The trace file ([log] trace_file) against the real posternd: no secret a client sends
before login is ever written, however the client types it (a mistyped PASS, a SASL answer
after a refused AUTH, an initial response, pipelined lines, lines split across packets,
lines after STLS), while the commands after login stay readable.
"""

import base64
import time
import unittest

from postern_harness import PosternTestCase, simple_message, wait_for
from test_system_users import MSG1, SystemUsersBase
from tls_fixtures import Pki, client_context, configure_tls, listener_ports, starttls, tls_connect

ALICE_PW = "Al1ce-trace.pw"
SECRETS = [f"Zq{i}sekrit" for i in range(12)]


def b64(text):
    return base64.b64encode(text.encode()).decode()


class TraceRedactionTest(PosternTestCase):
    def start(self, tls=False):
        self.box = self.world.add_user("alice", ALICE_PW, [simple_message("hello", ("x",))])
        self.trace = self.world.path("trace.log")
        self.world.config["log"]["trace_file"] = self.trace
        if tls:
            self.pki = Pki(self.world.dir)
            count = configure_tls(self.world, self.pki, tls_listen=False)
            self.srv = self.world.start(listeners=count)
            self.plain_port = listener_ports(self.srv)[0][0]
        else:
            self.srv = self.world.start()
            self.plain_port = None

    def connect(self):
        return self.srv.connect(port=self.plain_port) if self.plain_port else self.srv.connect()

    def traced(self, quits):
        def read():
            with open(self.trace, encoding="latin-1") as f:
                text = f.read()
            return text if text.count("C: QUIT") >= quits else None
        return wait_for(read, what=f"{quits} sessions in the trace file")

    def assertNoSecret(self, text, secrets):
        for s in secrets:
            self.assertNotIn(s, text, f"{s!r} written to the trace:\n{text}")

    def test_mistyped_pass_and_refused_sasl_answers_are_never_written(self):
        self.start()
        s = SECRETS
        # Mistyped PASS commands.
        conn = self.connect()
        self.assertOk(conn.cmd("USER alice"))
        for line in (f"PAS {s[0]}", f"PASSS {s[1]}", f"pass  {s[2]}", f"PASS\t{s[3]}"):
            conn.cmd(line)
        conn.quit()
        # A SASL answer after a refused AUTH (unknown mechanism), and after a refused PLAIN
        # sent as its own packet; an initial response on the AUTH line.
        conn = self.connect()
        self.assertErr(conn.cmd("AUTH NOSUCH-MECH"))
        self.assertErr(conn.cmd(b64(f"\0alice\0{s[4]}")))
        st = conn.cmd(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + s[5])}")
        self.assertErr(st)
        conn.cmd(b64(f"\0alice\0{s[6]}"))
        conn.quit()
        # A password typed where a command belongs; a cancelled exchange; pipelined lines
        # in one packet and a line split across packets.
        conn = self.connect()
        self.assertErr(conn.cmd(s[7]))
        st = conn.cmd("AUTH PLAIN")
        if st.startswith("+"):
            self.assertErr(conn.cmd("*"))
        conn.send(f"USER alice\r\nPAS {s[8]}\r\nNOOP {s[9]}\r\n".encode())
        for _ in range(3):
            conn.status()
        conn.send(f"PAS{'S' * 3} {s[10][:4]}".encode())
        time.sleep(0.05)
        conn.send(f"{s[10][4:]}\r\n".encode())
        conn.status()
        conn.quit()
        # A good login: the TRANSACTION commands stay readable.
        conn = self.srv.session(self.box)
        self.assertOk(conn.cmd("LIST 1"))
        self.assertOk(conn.cmd("NOOP"))
        # After login AUTH is refused; an answer sent anyway is not written either.
        self.assertErr(conn.cmd("AUTH PLAIN"))
        self.assertErr(conn.cmd(b64(f"\0alice\0{s[11]}")))
        conn.quit()
        text = self.traced(4)
        answers = [b64(f"\0alice\0{s[i]}") for i in (4, 5, 6, 11)]
        self.assertNoSecret(text, s + answers + [ALICE_PW])
        self.assertIn("C: USER alice", text)
        self.assertIn("C: PASS [redacted]", text)
        self.assertIn("C: AUTH PLAIN [redacted]", text)
        self.assertIn("C: LIST 1", text)

    def test_lines_after_stls_are_redacted_before_login(self):
        self.start(tls=True)
        s = SECRETS
        conn = starttls(self.world, self.connect(), client_context(self.pki))
        conn.send(f"USER alice\r\nPAS {s[0]}\r\nAUTH PLAIN\r\n".encode())
        for _ in range(2):
            conn.status()
        st = conn.status()
        if st.startswith("+"):
            conn.send(f"{b64(chr(0) + 'alice' + chr(0) + s[1])}\r\n".encode())
            conn.status()
        else:
            conn.cmd(b64(f"\0alice\0{s[1]}"))
        conn.quit()
        text = self.traced(1)
        self.assertNoSecret(text, s[:2] + [b64(f"\0alice\0{s[1]}")])
        self.assertIn("C: USER alice", text)


class ForkModeTraceTest(SystemUsersBase):
    """Fork mode with the trace on: the pre-auth process hands a TLS session (STLS or
    implicit) to the relay, not the bare socket, although its transport is wrapped for
    tracing; the trace holds no password."""

    def test_tls_logins_with_the_trace_on(self):
        name, _pw, _ = self.add_system_user(messages=(MSG1,))
        trace = self.world.path("trace.log")
        self.world.config["log"]["trace_file"] = trace
        pki = Pki(self.world.dir)
        n = configure_tls(self.world, pki, mode="ondemand", tls_listen=True)
        srv = self.start(listeners=n)
        plain, tls_ports = listener_ports(srv)
        ctx = client_context(pki)
        conn = starttls(self.world, srv.connect(port=plain[0]), ctx)
        conn.login(name, "Pt-pass-1")
        st, body = conn.cmd_multi("RETR 1")
        self.assertOk(st)
        self.assertIn(b"first body", body)
        conn.quit()
        conn2 = tls_connect(self.world, tls_ports[0], ctx)
        conn2.login(name, "Pt-pass-1")
        self.assertRegex(conn2.cmd("STAT"), r"^\+OK 1 ")
        conn2.quit()

        def read():
            with open(trace, encoding="latin-1") as f:
                text = f.read()
            return text if text.count("C: QUIT") >= 2 else None
        text = wait_for(read, what="2 sessions in the trace file")
        self.assertNotIn("Pt-pass-1", text)
        self.assertIn(f"C: USER {name}", text)
        self.assertIn("C: PASS [redacted]", text)
        self.assertNotIn("first body", text)


if __name__ == "__main__":
    unittest.main()
