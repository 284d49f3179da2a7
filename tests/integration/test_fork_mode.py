"""Fork mode: --daemon[=N], popa3d's flood limits, -4/-6, TCP wrappers, SIGTERM, TLS relay.

Uses the system-user fixtures of test_system_users (real users, PAM, mbox spools). Needs root.
"""

import os
import re
import subprocess
import signal
import socket
import time
import unittest

from postern_harness import missing
from postern_harness import POSTERND, Pop3Conn, ipv6_loopback_available, test_user, wait_for
from test_system_users import MSG1, MSG2, SystemUsersBase, proc_status, ids, _getpw, _has_user
import tls_fixtures


class ForkMode(SystemUsersBase):
    def refused(self, srv, reason, text="-ERR [SYS/TEMP]"):
        conn = srv.connect(greet=False)
        line = conn.status()
        self.assertTrue(line.startswith(text), line)
        conn.expect_closed(max_lines=0)
        srv.wait_log(rf"connection refused: rip=127\.0\.0\.1, reason={reason}")

    def test_daemon_n_limits_children(self):
        srv = self.start(args=("--daemon=2",))
        a = srv.connect()
        b = srv.connect()
        self.refused(srv, "max_children")
        a.quit()
        wait_for(lambda: _reaped(srv, 1), what="one session process reaped")
        c = srv.connect()  # room again
        c.quit()
        b.quit()

    def test_per_source_limit(self):
        self.world.config["server"]["max_connections_per_ip"] = 1
        srv = self.start()
        a = srv.connect()
        self.refused(srv, "max_connections_per_ip")
        a.quit()

    def test_reconnecting_right_after_quit_is_never_refused(self):
        """The fork-mode twin of test_load's: with max_connections = 1, a client that logs in
        again as soon as it has seen the close after QUIT is never turned away ("Too many
        connections" while the master still counts the ended session, [IN-USE] while the
        spool is still locked)."""
        self.world.config["server"]["max_connections"] = 1
        name, _, _ = self.add_system_user(messages=[MSG1])
        srv = self.start()
        for i in range(50):  # the old master refused the second or third
            conn = srv.connect(greet=False)
            greeting = conn.read_greeting()
            self.assertTrue(greeting.startswith("+OK"), f"session {i}: {greeting!r}")
            conn.login(name, "Pt-pass-1")  # asserts +OK, so [IN-USE] fails here
            conn.quit()  # waits for the close
            conn.close()

    def test_acl_refuses_in_the_supervisor(self):
        self.world.config.setdefault("pop3", {})["acl"] = ["deny 127.0.0.0/8", "allow any"]
        srv = self.start()
        self.refused(srv, "acl", text="-ERR [SYS/PERM] Access denied.")

    def test_login_delay_with_a_database_per_supervisor(self):
        name, _, _ = self.add_system_user(messages=[MSG1])
        pop3 = self.world.config.setdefault("pop3", {})
        pop3["login_delay"] = "1h"
        pop3["stat_file"] = self.world.path("login-stats.sqlite")
        srv = self.start()
        first = srv.connect()
        self.assertIn(b"\r\nLOGIN-DELAY 3600\r\n", first.cmd_multi("CAPA")[1])
        first.login(name, "Pt-pass-1")
        first.quit()
        second = srv.connect()
        second.cmd(f"USER {name}")
        self.assertTrue(second.cmd("PASS Pt-pass-1").startswith("-ERR [LOGIN-DELAY]"))
        # A wrong password still says [AUTH]: the delay never reveals an account. (In fork mode
        # the supervisor has become the user by then, so it ends that connection; use another.)
        third = srv.connect()
        third.cmd(f"USER {name}")
        self.assertTrue(third.cmd("PASS wrong").startswith("-ERR [AUTH]"))

    def test_min_connection_interval(self):
        self.unix["server"]["min_connection_interval"] = "30s"
        srv = self.start()
        a = srv.connect()
        a.quit()
        self.refused(srv, "min_connection_interval")

    def test_ipv4_only_flag(self):
        if not ipv6_loopback_available():
            missing("no IPv6 loopback")
        self.world.config["server"]["listen"] = ["127.0.0.1:0", "[::1]:0"]
        srv = self.start(listeners=1, args=("-4",))
        time.sleep(0.2)
        self.assertEqual(len(re.findall(r"listening on", srv.log())), 1, srv.log())
        self.assertIn("listening on 127.0.0.1:", srv.log())

    def test_sigterm_stops_sessions_and_deletes_nothing(self):
        name, _, spool = self.add_system_user(messages=(MSG1, MSG2))
        with open(spool, "rb") as f:
            before = f.read()
        srv = self.start()
        conn = srv.connect()
        conn.login(name, "Pt-pass-1")
        self.assertOk(conn.cmd("DELE 1"))
        idle = srv.connect()  # a pre-auth session too
        srv.signal(signal.SIGTERM)
        self.assertEqual(srv.wait_exit(), 0, srv.log())
        conn.expect_closed()
        idle.expect_closed()
        with open(spool, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertIn("stopped", srv.log())

    def start_with_tls(self):
        """Fork mode with STLS on demand on a plain listener and a pop3s listener."""
        pki = tls_fixtures.Pki(self.world.dir)
        n = tls_fixtures.configure_tls(self.world, pki, mode="ondemand", tls_listen=True)
        return pki, self.start(listeners=n)

    def test_tls_session_is_relayed_by_the_preauth_process(self):
        name, pw, _ = self.add_system_user(messages=(MSG1,))
        pki, srv = self.start_with_tls()
        plain, tls_ports = tls_fixtures.listener_ports(srv)
        ctx = tls_fixtures.client_context(pki)
        # STLS on the plain port, then implicit TLS.
        conn = tls_fixtures.starttls(self.world, srv.connect(port=plain[0]), ctx)
        conn.login(name, "Pt-pass-1")
        st, body = conn.cmd_multi("RETR 1")
        self.assertOk(st)
        self.assertIn(b"first body", body)
        pre_pid, sid = self.wait_process(srv, "pre-auth")
        sess_pid, sess_sid = self.wait_process(srv, "session")
        self.assertEqual(sid, sess_sid)
        # The relay keeps running as the login user; the session as the mail owner.
        self.assertNotIn(pw.pw_uid, ids(proc_status(pre_pid), "Uid"))
        self.assertEqual(set(ids(proc_status(sess_pid), "Uid")), {pw.pw_uid})
        conn.quit()
        conn2 = tls_fixtures.tls_connect(self.world, tls_ports[0], ctx)
        conn2.login(name, "Pt-pass-1")
        self.assertRegex(conn2.cmd("STAT"), r"^\+OK 1 ")
        conn2.quit()

    def test_tls_relay_is_byte_exact_for_a_message_larger_than_every_buffer(self):
        # 300 KB: many full 16 KiB reads of the relay from the session process, and more than
        # the session's 128 KiB read and 256 KiB output buffers. Lines of varying length, some
        # starting with '.', so that a lost, doubled or moved byte anywhere shows.
        lines = [(b"." if i % 7 == 0 else b"") + (b"%06d " % i) + b"x" * (i % 97)
                 for i in range(6000)]
        body = b"\n".join(lines) + b"\n"
        msg = b"From: big@example.org\nSubject: big\n\n" + body
        self.assertGreater(len(msg), 300_000)
        name, _, _ = self.add_system_user(messages=(msg,))
        pki, srv = self.start_with_tls()
        _, tls_ports = tls_fixtures.listener_ports(srv)
        conn = tls_fixtures.tls_connect(self.world, tls_ports[0], tls_fixtures.client_context(pki))
        conn.login(name, "Pt-pass-1")
        crlf = msg.replace(b"\n", b"\r\n")
        want = crlf.replace(b"\r\n.", b"\r\n..")
        self.assertEqual(conn.cmd("LIST 1"), f"+OK 1 {len(crlf)}")
        st, got = conn.cmd_multi("RETR 1")
        self.assertOk(st)
        self.assertEqual(len(got), len(want))
        if got != want:
            at = next(i for i in range(len(want)) if got[i] != want[i])
            self.fail(f"RETR differs from octet {at}: {got[at:at + 40]!r} != {want[at:at + 40]!r}")
        conn.quit()

    def test_sighup_reloads_the_tls_certificate_in_the_master(self):
        name, _, _ = self.add_system_user(messages=(MSG1,))
        pki, srv = self.start_with_tls()
        plain, tls_ports = tls_fixtures.listener_ports(srv)
        a = tls_fixtures.file_fingerprint(pki.a_cert)
        b = tls_fixtures.file_fingerprint(pki.b_cert)
        self.assertEqual(tls_fixtures.peer_fingerprint(tls_ports[0], pki), a)
        pki.install(pki.b_cert, pki.b_key)
        srv.signal(signal.SIGHUP)
        wait_for(lambda: tls_fixtures.peer_fingerprint(tls_ports[0], pki) == b,
                 what="the new certificate on new pop3s connections")
        self.assertEqual(tls_fixtures.peer_fingerprint(plain[0], pki, starttls_first=True), b)
        conn = tls_fixtures.tls_connect(self.world, tls_ports[0], tls_fixtures.client_context(pki))
        conn.login(name, "Pt-pass-1")
        self.assertRegex(conn.cmd("STAT"), r"^\+OK 1 ")
        conn.quit()


class TcpWrappers(SystemUsersBase):
    def tables(self, allow, deny):
        a, d = self.world.path("hosts.allow"), self.world.path("hosts.deny")
        with open(a, "w") as f:
            f.write(allow)
        with open(d, "w") as f:
            f.write(deny)
        self.unix["server"].update({"tcp_wrappers": True, "hosts_allow": a, "hosts_deny": d,
                                    "tcp_wrappers_daemon": "posternd"})

    def check(self, fork):
        if not fork:
            # Event mode never runs as root: it runs as the unprivileged test user.
            owner = test_user()
            self.unix["server"]["process_model"] = "event"
            self.unix["server"]["user"] = owner.pw_name
            del self.unix["auth"]
            self.world.write_passwd()  # event mode: the default passwd-file, empty
            os.chown(self.world.passwd_path, owner.pw_uid, owner.pw_gid)
        self.tables("", "posternd: ALL\n")
        srv = self.start()
        conn = srv.connect(greet=False)
        self.assertEqual(conn.status(), "-ERR [SYS/PERM] Access denied.")
        conn.expect_closed(max_lines=0)
        srv.wait_log(r"connection refused: rip=127\.0\.0\.1, reason=tcp_wrappers")
        srv.stop()
        self.tables("posternd: 127.0.0.1\n", "posternd: ALL\n")
        srv = self.start()
        conn = srv.connect()
        conn.quit()
        srv.stop()
        self.tables("", "otherd: ALL\n")
        srv = self.start()
        srv.connect().quit()

    def test_fork_mode(self):
        self.check(fork=True)

    def test_event_mode(self):
        self.check(fork=False)

    def test_inetd_mode_on_a_tcp_socket(self):
        self.tables("", "posternd: 127.0.0.1\n")
        config = self.write_unix()
        with socket.socket() as lsock:
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(1)
            client = socket.create_connection(lsock.getsockname())
            self.world.on_cleanup(client.close)
            server_side, _ = lsock.accept()
            log = open(self.world.path("inetd-wrap.log"), "ab")
            proc = subprocess.Popen([POSTERND, "--config", config, "--inetd"], stdin=server_side,
                                    stdout=server_side, stderr=log, cwd=self.world.dir)
            server_side.close()
            conn = Pop3Conn(sock=client)
            self.assertEqual(conn.status(), "-ERR [SYS/PERM] Access denied.")
            conn.expect_closed(max_lines=0)
            self.assertEqual(proc.wait(30), 0)
            log.close()
        with open(self.world.path("inetd-wrap.log")) as f:
            self.assertIn("reason=tcp_wrappers", f.read())


def _reaped(srv, n):
    return len(re.findall(r"session process \d+ (exited|ended)", srv.log())) >= n


if __name__ == "__main__":
    unittest.main()
