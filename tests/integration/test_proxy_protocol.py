"""The PROXY protocol with real front ends: HAProxy (send-proxy, send-proxy-v2, TLS terminated
with send-proxy-v2-ssl) and nginx's mail proxy (proxy_protocol on), both started from the
configurations in contrib/ (front_proxies.py).

Clients connect to the front end from 127.0.0.2, so the real client address (127.0.0.2)
differs from the front end's own (127.0.0.1): posternd's log must name 127.0.0.2. Also: a
connection to the PROXY listener from an address outside proxy_trusted_networks is refused
before any byte is answered, a trusted one without a header is closed, the front ends' health
checks log no error, and the SSL TLV of a TLS-terminating HAProxy counts as secure for the
plaintext policy.

The first two tests check the front ends alone against a fake backend (the bytes HAProxy and
nginx really send), so they run without posternd's side.
"""

import os
import poplib
import re
import socket
import ssl
import struct
import unittest

import front_proxies as fp
from postern_harness import requires
from postern_harness import (Msg, Pop3Conn, PosternTestCase, dot_stuff, scaled, simple_message,
                             toml_text, wait_for, wire_body)
from tls_fixtures import Pki

CLIENT = "127.0.0.2"  # the real client; the front ends listen and connect from 127.0.0.1
PASSWORD = "Proxy-pw-1"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"

BODY = (b"From: front@example.org\nSubject: through a front end\n\n"
        + b"".join(b"%04d %s\n" % (i, b"." * (i % 3) + b"z" * (i % 70)) for i in range(800)))


class POP3From(poplib.POP3):
    """poplib.POP3 whose connection comes from `source` (poplib has no source address)."""

    def __init__(self, host, port, source, timeout):
        self._source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._source, 0))


class POP3SSLFrom(poplib.POP3_SSL):
    def __init__(self, host, port, source, timeout, context):
        self._source = source
        super().__init__(host, port, timeout=timeout, context=context)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._source, 0))
        return self.context.wrap_socket(sock, server_hostname="localhost")


def parse_v2(data):
    """(command, family, source ip, source port, tlvs {type: value}, rest) of a v2 header."""
    assert data.startswith(V2_SIG), data
    ver_cmd, fam, length = struct.unpack("!BBH", data[12:16])
    assert ver_cmd >> 4 == 2
    body, rest = data[16:16 + length], data[16 + length:]
    src, sport, off = None, None, 0
    if ver_cmd & 0xF == 1 and fam == 0x11:
        src, sport, off = socket.inet_ntoa(body[0:4]), struct.unpack("!H", body[8:10])[0], 12
    tlvs = {}
    while off < len(body):
        t, n = struct.unpack("!BH", body[off:off + 3])
        tlvs[t] = body[off + 3:off + 3 + n]
        off += 3 + n
    return ver_cmd & 0xF, fam, src, sport, tlvs, rest


def tls_pem(world):
    """The test PKI's server certificate and key in one file, as HAProxy's `crt` wants."""
    pki = Pki(world.dir)
    pem = world.path("front.pem")
    with open(pki.a_cert) as c, open(pki.a_key) as k, open(pem, "w") as out:
        out.write(c.read() + k.read())
    os.chmod(pem, 0o600)
    return pki, pem


def client_context(pki):
    ctx = ssl.create_default_context(cafile=pki.ca_cert)
    return ctx


@requires(fp.have_haproxy() and fp.have_nginx_mail(), "haproxy, nginx-light or libnginx-mod-mail missing (scripts/install-deps.sh)")
class FrontEndBytes(PosternTestCase):
    """What the front ends send, seen by a fake backend (no posternd involved)."""

    def test_haproxy_sends_v1_v2_and_the_ssl_tlv(self):
        pki, pem = tls_pem(self.world)
        be = fp.FakeBackend(self.world)
        for send_proxy in ("send-proxy", "send-proxy-v2"):
            with self.subTest(send_proxy=send_proxy):
                be.received.clear()
                hap = fp.Haproxy(self.world, f"127.0.0.1:{be.port}", pem, send_proxy=send_proxy)
                with socket.create_connection(("127.0.0.1", hap.port), timeout=scaled(5),
                                              source_address=(CLIENT, 0)) as s:
                    self.assertEqual(s.recv(64), b"+OK fake\r\n")
                    s.sendall(b"CAPA\r\n")
                    cport = s.getsockname()[1]
                    wait_for(lambda: any(r.endswith(b"CAPA\r\n") for r in be.received),
                             what="the client's bytes at the backend")
                mine = [r for r in be.received if r.endswith(b"CAPA\r\n")][0]
                if send_proxy == "send-proxy":
                    self.assertEqual(mine, f"PROXY TCP4 {CLIENT} 127.0.0.1 {cport} {hap.port}"
                                     "\r\nCAPA\r\n".encode())
                else:
                    cmd, fam, src, sport, _tlvs, rest = parse_v2(mine)
                    self.assertEqual((cmd, fam, src, sport, rest), (1, 0x11, CLIENT, cport,
                                                                    b"CAPA\r\n"))
                ctx = client_context(pki)
                with ctx.wrap_socket(socket.create_connection(
                        ("127.0.0.1", hap.tls_port), timeout=scaled(5), source_address=(CLIENT, 0)),
                        server_hostname="localhost") as t:
                    self.assertEqual(t.recv(64), b"+OK fake\r\n")
                    t.sendall(b"STAT\r\n")
                    wait_for(lambda: any(r.endswith(b"STAT\r\n") for r in be.received),
                             what="the TLS client's bytes at the backend")
                cmd, fam, src, _sport, tlvs, rest = parse_v2(
                    [r for r in be.received if r.endswith(b"STAT\r\n")][0])
                self.assertEqual((cmd, src, rest), (1, CLIENT, b"STAT\r\n"))
                self.assertIn(0x20, tlvs)  # PP2_TYPE_SSL
                self.assertEqual(tlvs[0x20][0] & 1, 1)  # PP2_CLIENT_SSL
                self.assertIn(b"TLSv1.", tlvs[0x20][5:])  # the SSL_VERSION sub-TLV
                # The health checks: v2 sends LOCAL, then QUIT after the greeting.
                wait_for(lambda: any(r.endswith(b"QUIT\r\n") for r in be.received),
                         timeout=scaled(10), what="a health check")
                hap.stop()

    def test_nginx_mail_sends_v1_after_its_own_login(self):
        be = fp.FakeBackend(self.world, answer_lines=True)
        ngx = fp.NginxMail(self.world, be.port)
        client = POP3From("127.0.0.1", ngx.port, CLIENT, scaled(10))
        client.user("alice")
        client.pass_("pw")
        cport = client.sock.getsockname()[1]
        client.close()
        got = be.wait_connections(1)[0]
        self.assertTrue(got.startswith(f"PROXY TCP4 {CLIENT} 127.0.0.1 {cport} {ngx.port}\r\n"
                                       "USER alice\r\nPASS pw\r\n".encode()), got)
        self.assertEqual(ngx.auth.requests[0].get("Client-IP"), CLIENT)


@requires(fp.have_haproxy() and fp.have_nginx_mail(), "haproxy, nginx-light or libnginx-mod-mail missing (scripts/install-deps.sh)")
class ProxyProtocol(PosternTestCase):
    """posternd behind real front ends."""

    def start_postern(self, trusted=("127.0.0.1/32",), secure_policy=False, tls=None):
        """posternd with one listener, PROXY protocol on, trusting `trusted`; returns it.
        tls: the listener's `tls` ("implicit"), with [tls] already in world.config."""
        self.box = self.world.add_user("alice", PASSWORD, [
            Msg(simple_message("first")), Msg(BODY, "cur", "S")])
        server = self.world.config["server"]
        server.pop("listen", None)  # the [[server.listener]] table is the only listener
        server["proxy_trusted_networks"] = list(trusted)
        if secure_policy:  # loopback alone is not secure: only TLS (or the SSL TLV) is
            self.world.config["auth"].update(disable_plaintext_auth=True,
                                             loopback_is_secure=False)
        text = toml_text(self.world.config) + (
            '[[server.listener]]\naddress = "127.0.0.1:0"\nproxy_protocol = true\n'
            + (f'tls = "{tls}"\n' if tls else ""))
        self.srv = self.world.start(self.world.write_config(text), listeners=1)
        return self.srv

    def login_and_retr(self, client):
        """USER/PASS, then RETR 2 compared byte for byte with the stored message."""
        client.user("alice")
        client.pass_(PASSWORD)
        _resp, lines, octets = client.retr(2)
        expected = wire_body(BODY)
        got = b"".join(line + b"\r\n" for line in lines)
        self.assertEqual(got, expected, "RETR through the front end")
        self.assertEqual(octets, len(expected) + expected.count(b"\r\n."))  # dot-stuffed size
        client.quit()

    def assert_logged_in_from(self, address):
        logins = self.srv.wait_events("login", user="alice")
        self.assertEqual(logins[-1]["rip"], address, logins[-1]["_line"])

    def wait_checks(self, count):
        """Waits until HAProxy's health checks made `count` sessions (greeting, QUIT)."""
        checks = r"disconnect: rip=127\.0\.0\.1, session=<[^>]+>, reason=QUIT"
        wait_for(lambda: len(re.findall(checks, self.srv.log())) >= count or None,
                 timeout=scaled(15), what=f"{count} HAProxy health checks at posternd")

    def assert_no_errors(self):
        """No error, warning, refusal or failure logged since posternd listened."""
        log = self.srv.log()
        since = log[log.index("listening on"):]
        bad = [line for line in since.splitlines()
               if re.search(r"\b(error|warning|refused|failed)\b", line, re.IGNORECASE)]
        self.assertEqual(bad, [], "posternd logged errors")

    def test_haproxy_send_proxy_v1(self):
        self.start_postern()
        _pki, pem = tls_pem(self.world)
        hap = fp.Haproxy(self.world, f"127.0.0.1:{self.srv.port}", pem, send_proxy="send-proxy")
        self.login_and_retr(POP3From("127.0.0.1", hap.port, CLIENT, scaled(10)))
        self.assert_logged_in_from(CLIENT)
        # The v1 checks name HAProxy's own connection (TCP4 127.0.0.1): ordinary sessions.
        self.wait_checks(2)
        self.assert_no_errors()

    def test_haproxy_send_proxy_v2_and_health_checks(self):
        self.start_postern()
        _pki, pem = tls_pem(self.world)
        hap = fp.Haproxy(self.world, f"127.0.0.1:{self.srv.port}", pem)
        self.login_and_retr(POP3From("127.0.0.1", hap.port, CLIENT, scaled(10)))
        self.assert_logged_in_from(CLIENT)
        # Each backend's check (plain: LOCAL, TLS: LOCAL with an SSL TLV) connected, read
        # the greeting and quit at least twice by now; none of it is an error.
        self.wait_checks(4)
        self.assertNotIn("is DOWN", hap.output())
        self.assert_no_errors()

    def test_haproxy_tls_termination_counts_as_secure(self):
        self.start_postern(secure_policy=True)
        pki, pem = tls_pem(self.world)
        hap = fp.Haproxy(self.world, f"127.0.0.1:{self.srv.port}", pem)
        # Plain through HAProxy: the client's bytes crossed the network in clear.
        plain = POP3From("127.0.0.1", hap.port, CLIENT, scaled(10))
        with self.assertRaises(poplib.error_proto):
            plain.user("alice")
            plain.pass_(PASSWORD)
        plain.close()
        # TLS to HAProxy, PROXY v2 with PP2_CLIENT_SSL to Postern's plain listener.
        self.login_and_retr(POP3SSLFrom("127.0.0.1", hap.tls_port, CLIENT, scaled(10),
                                        client_context(pki)))
        self.assert_logged_in_from(CLIENT)

    def test_nginx_mail_proxy(self):
        self.start_postern()
        ngx = fp.NginxMail(self.world, self.srv.port)
        self.login_and_retr(POP3From("127.0.0.1", ngx.port, CLIENT, scaled(10)))
        self.assert_logged_in_from(CLIENT)
        self.assertEqual(ngx.auth.requests[-1].get("Client-IP"), CLIENT)
        self.assertNotIn("[error]", ngx.error_log())
        self.assert_no_errors()

    def assert_closed_unanswered(self, sock):
        """The server closes without sending a byte (a reset when our bytes were unread)."""
        try:
            self.assertEqual(sock.recv(100), b"")
        except ConnectionResetError:
            pass

    def test_untrusted_or_headerless_connections_are_closed(self):
        # The header below names 192.0.2.9, neither loopback nor TLS: allow USER/PASS anyway.
        self.world.config["auth"]["disable_plaintext_auth"] = False
        self.start_postern(trusted=("127.0.0.1/32",))
        # From 127.0.0.2, not trusted: closed before any byte is answered.
        with socket.create_connection(("127.0.0.1", self.srv.port), timeout=scaled(5),
                                      source_address=(CLIENT, 0)) as s:
            s.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 1234 110\r\nUSER alice\r\n")
            self.assert_closed_unanswered(s)
        # Trusted, but no header: closed without a greeting.
        with socket.create_connection(("127.0.0.1", self.srv.port), timeout=scaled(5)) as s:
            s.sendall(b"USER alice\r\n")
            self.assert_closed_unanswered(s)
        # Trusted, malformed header: closed too.
        with socket.create_connection(("127.0.0.1", self.srv.port), timeout=scaled(5)) as s:
            s.sendall(b"PROXY TCP4 256.0.0.1 127.0.0.1 1 2\r\n")
            self.assert_closed_unanswered(s)
        self.srv.wait_log(r"connection refused: rip=127\.0\.0\.2, reason=proxy_untrusted")
        self.srv.wait_log(r"connection refused: rip=127\.0\.0\.1, reason=proxy_header", count=2)
        # A good header from a trusted address: greeted, and the header's address is logged.
        with socket.create_connection(("127.0.0.1", self.srv.port), timeout=scaled(5)) as s:
            s.sendall(b"PROXY TCP4 192.0.2.9 127.0.0.1 1234 110\r\n")
            f = s.makefile("rwb")
            self.assertTrue(f.readline().startswith(b"+OK"))
            f.write(f"USER alice\r\nPASS {PASSWORD}\r\nQUIT\r\n".encode())
            f.flush()
            self.assertTrue(f.readline().startswith(b"+OK"))
            self.assertTrue(f.readline().startswith(b"+OK"))
        self.assert_logged_in_from("192.0.2.9")
        self.assertNotIn("rip=127.0.0.2, session", self.srv.log())

    def test_header_and_client_hello_in_one_segment(self):
        """Implicit TLS behind a TCP pass-through front end: the ClientHello follows the header
        in the same segment and must be left for the TLS handshake."""
        pki = Pki(self.world.dir)
        self.world.config["tls"] = {"cert": pki.server_cert, "key": pki.server_key}
        self.start_postern(tls="implicit")
        raw = socket.create_connection(("127.0.0.1", self.srv.port), timeout=scaled(10))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        raw.sendall(b"PROXY TCP6 2001:db8::7 2001:db8::1 40001 995\r\n")
        conn = client_context(pki).wrap_socket(raw, server_hostname="localhost",
                                               do_handshake_on_connect=False)
        conn.setblocking(False)
        with self.assertRaises(ssl.SSLWantReadError):
            conn.do_handshake()  # writes the ClientHello behind the header, still corked
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)  # both leave in one segment
        conn.setblocking(True)
        conn.settimeout(scaled(10))
        conn.do_handshake()
        pop = Pop3Conn(sock=conn)
        pop.read_greeting()
        pop.login("alice", PASSWORD)
        self.assertEqual(pop.cmd_multi("RETR 2")[1], dot_stuff(wire_body(BODY)))
        pop.quit()
        pop.close()
        self.assert_logged_in_from("2001:db8::7")


class ProxyProtocolTwoProcesses(ProxyProtocol):
    """The same with two event-mode processes (each accepts, reads the header and admits)."""

    def setUp(self):
        super().setUp()
        self.world.config["server"]["processes"] = 2
        self.world.config["server"]["threads"] = 1


if __name__ == "__main__":
    unittest.main()
