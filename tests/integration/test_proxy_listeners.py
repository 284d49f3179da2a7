"""PROXY protocol listeners ([[server.listener]] proxy_protocol = true) through the one accept
pipeline, in every mode: event mode with one and with two processes, fork mode and --inetd.

The front end is this test, speaking PROXY v1 and v2 over a raw socket from 127.0.0.1: trusted
and untrusted peers, malformed and missing headers, LOCAL (health checks), the header's address
in every log line, the per-address limit and the ACL applied to it, and the v2 SSL TLV letting
USER/PASS through on a plain listener under disable_plaintext_auth. Real HAProxy and nginx in
front are test_proxy_protocol.py's business.
"""

import os
import socket
import struct
import subprocess
import time
import unittest

from postern_harness import (DEFAULT_TIMEOUT, POSTERND, Closed, Pop3Conn, PosternTestCase,
                             posternd_preexec, scaled, toml_text, wait_for)
from test_system_users import MSG1, SystemUsersBase

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PP2_TYPE_SSL = 0x20
PP2_CLIENT_SSL = 0x01
PP2_SUBTYPE_SSL_VERSION = 0x21


def v1(src, dst="127.0.0.1", sport=40000, dport=110):
    family = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src=None, dst="127.0.0.1", sport=40000, dport=110, client_tls=False, local=False):
    """A v2 header: PROXY from `src` (IPv4 or IPv6), or LOCAL; with an SSL TLV when client_tls."""
    if local:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    six = ":" in src
    if six and ":" not in dst:
        dst = "::1"
    fam = socket.AF_INET6 if six else socket.AF_INET
    body = socket.inet_pton(fam, src) + socket.inet_pton(fam, dst) + struct.pack("!HH", sport, dport)
    if client_tls:
        version = b"TLSv1.3"
        sub = bytes([PP2_SUBTYPE_SSL_VERSION]) + struct.pack("!H", len(version)) + version
        value = bytes([PP2_CLIENT_SSL]) + struct.pack("!I", 0) + sub
        body += bytes([PP2_TYPE_SSL]) + struct.pack("!H", len(value)) + value
    return V2_SIGNATURE + bytes([0x21, 0x21 if six else 0x11]) + struct.pack("!H", len(body)) + body


class ProxyCases:
    """The cases every mode runs; a mode provides start(), connect(header) and log()."""

    user = "alice"
    password = "pw"
    limits_apply = True  # one connection per process in --inetd: no per-address counting

    def proxy_config(self, trusted=("127.0.0.0/8",), **server):
        self.world.config["server"]["proxy_trusted_networks"] = list(trusted)
        self.world.config["server"].update(server)
        self.world.config["auth"]["disable_plaintext_auth"] = False

    def assert_closed_unanswered(self, conn):
        self.assertEqual(conn.expect_closed(max_lines=0, timeout=scaled(8)), [])

    def test_v1_header_names_the_client_in_every_log_line(self):
        self.proxy_config()
        self.start()
        conn = self.connect(v1("192.0.2.7"))
        self.assertTrue(conn.read_greeting().startswith("+OK"))
        conn.login(self.user, self.password)
        conn.quit()
        log = self.wait_log(rf"login: user=<{self.user}>.*rip=192\.0\.2\.7")
        self.assertNotRegex(log, r"rip=127\.0\.0\.1")

    def test_v2_ipv6_source(self):
        self.proxy_config()
        self.start()
        conn = self.connect(v2("2001:db8::5"))
        self.assertTrue(conn.read_greeting().startswith("+OK"))
        conn.cmd("USER nobody-here")
        self.assertTrue(conn.cmd("PASS wrong").startswith("-ERR"))
        self.wait_log(r"auth failed: rip=2001:db8::5")

    def test_untrusted_peer_is_closed_before_any_byte(self):
        self.proxy_config(trusted=("192.0.2.0/24",))
        self.start()
        conn = self.connect(v1("198.51.100.1"))
        self.assert_closed_unanswered(conn)
        self.wait_log(r"connection refused: rip=127\.0\.0\.1, reason=proxy_untrusted")

    def test_malformed_header_is_closed(self):
        self.proxy_config()
        self.start()
        conn = self.connect(b"PROXY TCP4 999.1.1.1 127.0.0.1 1 2\r\n")
        self.assert_closed_unanswered(conn)
        self.wait_log(r"connection refused: rip=127\.0\.0\.1, reason=proxy_header")

    def test_missing_header_times_out(self):
        self.proxy_config()
        self.start()
        started = time.monotonic()
        conn = self.connect(b"")
        self.assert_closed_unanswered(conn)
        self.assertLess(time.monotonic() - started, scaled(8))
        self.wait_log(r"connection refused: rip=127\.0\.0\.1, reason=proxy_header")

    def test_local_header_keeps_the_peer_address(self):
        self.proxy_config()
        self.start()
        conn = self.connect(v2(local=True))
        self.assertTrue(conn.read_greeting().startswith("+OK"))
        conn.login(self.user, self.password)
        conn.quit()
        self.wait_log(rf"login: user=<{self.user}>.*rip=127\.0\.0\.1")

    def test_client_tls_tlv_allows_plaintext_login(self):
        self.proxy_config()
        self.world.config["auth"]["disable_plaintext_auth"] = True
        self.start()
        plain = self.connect(v2("192.0.2.9"))
        self.assertTrue(plain.read_greeting().startswith("+OK"))
        self.assertTrue(plain.cmd(f"USER {self.user}").startswith("-ERR"))
        plain.close()
        secure = self.connect(v2("192.0.2.9", client_tls=True))
        self.assertTrue(secure.read_greeting().startswith("+OK"))
        secure.login(self.user, self.password)
        secure.quit()
        self.wait_log(rf"login: user=<{self.user}>.*rip=192\.0\.2\.9")

    def test_per_address_limit_counts_the_header_address(self):
        if not self.limits_apply:
            self.skipTest("one connection per process")
        self.proxy_config(max_connections_per_ip=1)
        self.start()
        first = self.connect(v1("192.0.2.7"))
        self.assertTrue(first.read_greeting().startswith("+OK"))
        second = self.connect(v1("192.0.2.7"))
        self.assertTrue(second.status().startswith("-ERR [SYS/TEMP]"))
        self.wait_log(r"connection refused: rip=192\.0\.2\.7, reason=max_connections_per_ip")
        other = self.connect(v1("192.0.2.8"))  # the front end's own address is not what counts
        self.assertTrue(other.read_greeting().startswith("+OK"))
        other.quit()
        first.quit()

    def test_acl_sees_the_header_address(self):
        self.proxy_config()
        self.world.config.setdefault("pop3", {})["acl"] = ["deny 192.0.2.0/24", "allow any"]
        self.start()
        conn = self.connect(v1("192.0.2.7"))
        self.assertEqual(conn.status(), "-ERR [SYS/PERM] Access denied.")
        self.wait_log(r"connection refused: rip=192\.0\.2\.7, reason=acl")
        ok = self.connect(v1("198.51.100.3"))
        self.assertTrue(ok.read_greeting().startswith("+OK"))
        ok.quit()


def listener_table(address, proxy=True):
    return f"\n[[server.listener]]\naddress = \"{address}\"\nproxy_protocol = {'true' if proxy else 'false'}\n"


class DaemonMode(ProxyCases):
    """A posternd with a plain listener and a PROXY listener, both on 127.0.0.1."""

    def start(self):
        text = toml_text(self.world.config) + listener_table("127.0.0.1:0")
        self.srv = self.launch(self.world.write_config(text=text))
        self.proxy_port = self.srv.listeners[1][1]

    def launch(self, path):
        return self.world.start(path, listeners=2)

    def connect(self, header):
        conn = Pop3Conn(self.proxy_port)
        self.world.on_cleanup(conn.close)
        conn.send(header)
        return conn

    def wait_log(self, pattern):
        self.srv.wait_log(pattern)
        return self.srv.log()


class EventOneProcess(DaemonMode, PosternTestCase):
    def setUp(self):
        super().setUp()
        self.world.add_user(self.user, self.password)


class EventTwoProcesses(DaemonMode, PosternTestCase):
    def setUp(self):
        super().setUp()
        self.world.add_user(self.user, self.password)
        self.world.config["server"]["processes"] = 2
        self.world.config["server"]["threads"] = 1


class ForkMode(DaemonMode, SystemUsersBase):
    password = "Pt-pass-1"

    def setUp(self):
        super().setUp()
        self.user, _, _ = self.add_system_user(self.password, messages=[MSG1])

    def launch(self, path):
        for table, keys in self.unix.items():
            self.world.config.setdefault(table, {}).update(keys)
        text = toml_text(self.world.config) + listener_table("127.0.0.1:0")
        srv = self.world.start(self.world.write_config(text=text), listeners=2)
        self.addCleanup(lambda: srv.stopped or srv.stop(check=False))
        return srv


class InetdMode(ProxyCases, PosternTestCase):
    """posternd --inetd on a TCP connection this test accepted on a PROXY listener's address."""

    limits_apply = False

    def setUp(self):
        super().setUp()
        self.world.add_user(self.user, self.password)
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.addCleanup(self.lsock.close)
        self.port = self.lsock.getsockname()[1]
        self.logs = []

    def start(self):
        text = toml_text(self.world.config) + listener_table(f"127.0.0.1:{self.port}")
        self.path = self.world.write_config(text=text)

    def connect(self, header):
        client = socket.create_connection(("127.0.0.1", self.port), timeout=DEFAULT_TIMEOUT)
        served, _ = self.lsock.accept()
        log_path = self.world.path(f"inetd{len(self.logs)}.log")
        self.logs.append(log_path)
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen([POSTERND, "--config", self.path, "--inetd"], stdin=served.fileno(),
                                    stdout=served.fileno(), stderr=logf, close_fds=True, cwd=self.world.dir,
                                    preexec_fn=posternd_preexec(self.world, self.path))
        served.close()
        self.addCleanup(self.reap, proc)
        conn = Pop3Conn(sock=client)
        self.world.on_cleanup(conn.close)
        conn.send(header)
        return conn

    def reap(self, proc):
        try:
            proc.wait(scaled(10))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log(self):
        text = ""
        for path in self.logs:
            with open(path, "rb") as f:
                text += f.read().decode("utf-8", "replace")
        return text

    def wait_log(self, pattern):
        import re
        wait_for(lambda: re.search(pattern, self.log()), what=f"log line {pattern!r}")
        return self.log()


if __name__ == "__main__":
    unittest.main()
