"""TLS against the real posternd: STLS (RFC 2595) and implicit TLS (RFC 8314) with real peers.

Peers: openssl s_client, Python's ssl and poplib, curl, fetchmail and mpop. Every session that
retrieves mail compares the bytes with the stored messages. Also covered: the STARTTLS
command injection class (CVE-2011-0411), CAPA and STLS state rules, the [tls] modes (none,
ondemand, required, connection), the plaintext-authentication policy, failed handshakes
(logged, and the server keeps serving), client certificates being requested, and SIGHUP
reloading the certificate without disturbing open sessions.

The certificates are made per test by tls_fixtures.Pki. Only 127.0.0.1 is contacted; the
name "localhost" is used for SNI and certificate checks and never resolved.
"""

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import unittest
import poplib

from postern_harness import requires
from postern_harness import (DEFAULT_TIMEOUT, Msg, Pop3Conn, PosternTestCase, dot_stuff,
                             octets, parse_listing, scaled, simple_message, wait_for, wire_body)
from tls_fixtures import (SERVER_NAME, Pki, client_context, configure_tls,
                          file_fingerprint, listener_ports, peer_fingerprint, s_client,
                          s_client_fingerprint, split_replies, starttls, tls_connect, tls_socket)

PASSWORD = "Tls-pw-1"

BIG = b"From: big@example.org\nSubject: big\n\n" + b"".join(
    b"%06d %s\n" % (i, (b"." if i % 11 == 0 else b"") + b"y" * (i % 90)) for i in range(7000))


def tls_messages():
    return [
        Msg(simple_message("first over tls"), "new"),
        Msg(b"From: dots@example.org\nSubject: dots\n\n.\n..\n.x\nx.\n...\n", "cur", "S"),
        Msg(b"From: n@example.org\nSubject: no final newline\n\nlast line", "new", sizes=True),
        Msg(BIG, "new", sizes=True),
        Msg(b"Subject: binary-ish\n\n\x01\x02\x7f\x80\xff high bytes\r\n\ttab\n", "cur", ""),
    ]


def needs(tool):
    return requires(shutil.which(tool), f"{tool} is not installed")


# A log line that holds both "TLS handshake failed" and the client's address.
HANDSHAKE_FAILED = r"(?m)^(?=.*TLS handshake failed)(?=.*rip=127\.0\.0\.1).*$"


def read_until_closed(sock, limit=1 << 16):
    """Everything the peer sends until it closes (bounded in time and size)."""
    data = b""
    deadline = time.monotonic() + DEFAULT_TIMEOUT
    while len(data) < limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"peer did not close; got {data[:200]!r}")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            break
        except socket.timeout:
            raise AssertionError(f"peer did not close; got {data[:200]!r}")
        if not chunk:
            break
        data += chunk
    return data


def client_form(content):
    """How a delivering client stores a message: LF line ends, a final LF."""
    data = content.replace(b"\r\n", b"\n")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    return data


def read_maildir(path):
    out = []
    for sub in ("new", "cur"):
        d = os.path.join(path, sub)
        for name in sorted(os.listdir(d)):
            with open(os.path.join(d, name), "rb") as f:
                out.append(f.read())
    return out


class TlsBase(PosternTestCase):
    """Starts posternd with a [tls] section; subclasses set the mode and policy."""

    mode = "ondemand"
    tls_listen = True
    client_ca = False
    min_version = None
    auth = {}

    def setUp(self):
        super().setUp()
        self.pki = Pki(self.world.dir)
        self.box = self.world.add_user("alice", PASSWORD, tls_messages())
        self.before = self.box.contents()
        self.start()

    def start(self, **overrides):
        kw = dict(mode=self.mode, tls_listen=self.tls_listen, client_ca=self.client_ca,
                  min_version=self.min_version, **self.auth)
        kw.update(overrides)
        count = configure_tls(self.world, self.pki, **kw)
        self.srv = self.world.start(listeners=count)
        plain, tls = listener_ports(self.srv)
        self.plain_port = plain[0] if plain else None
        self.tls_port = tls[0] if tls else None
        if kw["tls_listen"]:
            self.assertIsNotNone(self.tls_port, "no 'listening on ... (tls)' line:\n"
                                 + self.srv.log()[-3000:])

    # -- connections
    def ctx(self, **kw):
        return client_context(self.pki, **kw)

    def plain(self):
        return self.srv.connect(port=self.plain_port)

    def over_stls(self):
        return starttls(self.world, self.plain(), self.ctx())

    def over_tls(self, **kw):
        return tls_connect(self.world, self.tls_port, self.ctx(**kw))

    # -- checks
    def capa(self, conn):
        st, body = conn.cmd_multi("CAPA")
        self.assertOk(st)
        return body.decode("latin-1").split("\r\n")[:-1]

    def assertNoPlaintextAuth(self, lines):
        self.assertNotIn("USER", lines)
        for line in lines:
            if line.upper().startswith("SASL"):
                mechs = line.upper().split()[1:]
                self.assertNotIn("PLAIN", mechs, line)
                self.assertNotIn("LOGIN", mechs, line)

    def retrieve_all(self, conn, login=True):
        """Logs in (unless already), RETRs every message comparing bytes, QUITs."""
        if login:
            conn.login("alice", PASSWORD)
        st, body = conn.cmd_multi("UIDL")
        self.assertOk(st)
        listing = parse_listing(body)
        self.assertCountEqual([u for _, u in listing], [m.uidl for m in self.box.messages])
        st = conn.cmd("STAT")
        self.assertEqual(st.split()[1:3], [str(len(listing)),
                                           str(sum(octets(m.content) for m in self.box.messages))])
        for n, uidl in listing:
            st, payload = conn.cmd_multi(f"RETR {n}")
            self.assertOk(st)
            self.assertRetrieved(payload, self.box.by_uidl(uidl).content, f"RETR {n}")
        self.assertOk(conn.quit())
        self.assertEqual(self.box.contents(), self.before)

    def retrieve_one(self, conn):
        """RETR 1 (after login) compared with the stored message it names."""
        st = conn.cmd("UIDL 1")
        self.assertOk(st)
        uidl = st.split()[2]
        st, payload = conn.cmd_multi("RETR 1")
        self.assertOk(st)
        self.assertRetrieved(payload, self.box.by_uidl(uidl).content, "RETR 1")

    def check_still_serving(self):
        """A fresh pop3s (or STLS) session retrieves everything."""
        if self.tls_port:
            self.retrieve_all(self.over_tls())
        else:
            self.retrieve_all(self.over_stls())

    def wait_handshake_failures(self, count=1):
        return self.srv.wait_log(HANDSHAKE_FAILED, count=count)


# ---------------------------------------------------------------------------------------------
# Python clients: raw sockets, ssl, poplib

class StlsAndPop3s(TlsBase):
    def test_stls_session_retrieves_exact_bytes(self):
        self.retrieve_all(self.over_stls())

    def test_pop3s_session_retrieves_exact_bytes(self):
        self.retrieve_all(self.over_tls())

    def test_capa_lists_stls_only_before_tls(self):
        conn = self.plain()
        self.assertIn("STLS", self.capa(conn))
        tls = starttls(self.world, conn, self.ctx())
        self.assertNotIn("STLS", self.capa(tls))
        tls.login("alice", PASSWORD)
        self.assertNotIn("STLS", self.capa(tls))
        self.retrieve_one(tls)
        self.assertNotIn("STLS", self.capa(self.over_tls()))

    def test_stls_twice_is_refused(self):
        tls = self.over_stls()
        self.assertErr(tls.cmd("STLS"))
        self.retrieve_all(tls)

    def test_stls_on_pop3s_is_refused(self):
        tls = self.over_tls()
        self.assertErr(tls.cmd("STLS"))
        self.retrieve_all(tls)

    def test_stls_after_login_is_refused(self):
        conn = self.plain()  # loopback counts as secure by default, so USER/PASS work here
        conn.login("alice", PASSWORD)
        self.assertErr(conn.cmd("STLS"))
        self.retrieve_all(conn, login=False)

    def test_starttls_injection_of_capa(self):
        # CVE-2011-0411 class: a command pipelined behind STLS in the same write must be
        # discarded, never answered over TLS.
        conn = self.plain()
        conn.send(b"STLS\r\nCAPA\r\n")
        self.assertOk(conn.status())
        self.assertEqual(bytes(conn.buf), b"", "plaintext after the STLS reply")
        tls = Pop3Conn(sock=self.ctx().wrap_socket(conn.sock, server_hostname=SERVER_NAME))
        self.world.on_cleanup(tls.close)
        # The first reply over TLS must answer what we send now: an injected CAPA would show
        # up here as "+OK Capability list follows".
        first = tls.cmd("XINJECTIONCHECK")
        self.assertErr(first, f"first reply over TLS is not ours: {first!r}")
        self.assertNotIn("STLS", self.capa(tls))
        self.assertEqual(bytes(tls.buf), b"")
        self.retrieve_all(tls)

    def test_starttls_injection_of_credentials(self):
        conn = self.plain()
        conn.send(b"STLS\r\nUSER alice\r\nPASS " + PASSWORD.encode() + b"\r\n")
        self.assertOk(conn.status())
        self.assertEqual(bytes(conn.buf), b"")
        tls = Pop3Conn(sock=self.ctx().wrap_socket(conn.sock, server_hostname=SERVER_NAME))
        self.world.on_cleanup(tls.close)
        self.assertErr(tls.cmd("STAT"), "the injected USER/PASS logged the session in")
        self.assertEqual(self.srv.events("login"), [])
        self.retrieve_all(tls)

    def test_pop3s_quit_sends_close_notify(self):
        raw = socket.create_connection(("127.0.0.1", self.tls_port), timeout=DEFAULT_TIMEOUT)
        s = self.ctx().wrap_socket(raw, server_hostname=SERVER_NAME, suppress_ragged_eofs=False)
        conn = Pop3Conn(sock=s)
        self.world.on_cleanup(conn.close)
        self.assertOk(conn.read_greeting())
        conn.login("alice", PASSWORD)
        self.retrieve_one(conn)
        # expect_closed reads to EOF: with suppress_ragged_eofs=False a TCP close without
        # close_notify raises ssl.SSLEOFError here.
        self.assertOk(conn.quit())

    def test_tls13_is_negotiated_by_default(self):
        s = tls_socket(self.tls_port, self.ctx())
        self.world.on_cleanup(s.close)
        self.assertEqual(s.version(), "TLSv1.3")
        conn = Pop3Conn(sock=s)
        self.assertOk(conn.read_greeting())
        self.retrieve_all(conn)

    def test_tls12_uses_ecdhe_aead(self):
        s = tls_socket(self.tls_port, self.ctx(maximum=ssl.TLSVersion.TLSv1_2))
        self.world.on_cleanup(s.close)
        self.assertEqual(s.version(), "TLSv1.2")
        cipher = s.cipher()[0]
        self.assertTrue(cipher.startswith("ECDHE-"), cipher)
        self.assertTrue("GCM" in cipher or "CHACHA20" in cipher, cipher)
        conn = Pop3Conn(sock=s)
        self.assertOk(conn.read_greeting())
        self.retrieve_all(conn)

    def test_tls12_cbc_only_client_is_refused(self):
        ctx = self.ctx(maximum=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-SHA")
        with self.assertRaises(ssl.SSLError):
            tls_socket(self.tls_port, ctx).close()
        self.wait_handshake_failures()
        self.check_still_serving()

    def test_strict_alpn(self):
        ctx = self.ctx()
        ctx.set_alpn_protocols(["http/1.1"])
        with self.assertRaises(ssl.SSLError):
            tls_socket(self.tls_port, ctx).close()
        self.wait_handshake_failures()
        ctx = self.ctx()
        ctx.set_alpn_protocols(["pop3"])
        s = tls_socket(self.tls_port, ctx)
        self.world.on_cleanup(s.close)
        self.assertEqual(s.selected_alpn_protocol(), "pop3")
        conn = Pop3Conn(sock=s)
        self.assertOk(conn.read_greeting())
        self.retrieve_all(conn)

    def test_poplib_stls(self):
        p = poplib.POP3("127.0.0.1", self.plain_port, timeout=DEFAULT_TIMEOUT)
        self.addCleanup(p.close)
        self.assertIn("STLS", p.capa())
        self.assertTrue(p.stls(context=self.ctx()).startswith(b"+OK"))
        self.assertNotIn("STLS", p.capa())
        self.poplib_retrieve(p)

    def test_poplib_pop3_ssl(self):
        p = poplib.POP3_SSL("127.0.0.1", self.tls_port, context=self.ctx(),
                            timeout=DEFAULT_TIMEOUT)
        self.addCleanup(p.close)
        self.assertTrue(p.getwelcome().startswith(b"+OK"))
        self.poplib_retrieve(p)

    def poplib_retrieve(self, p):
        p.user("alice")
        p.pass_(PASSWORD)
        resp, lines, _ = p.uidl()
        pairs = [line.decode().split(" ") for line in lines]
        self.assertCountEqual([u for _, u in pairs], [m.uidl for m in self.box.messages])
        for n, uidl in pairs:
            resp, lines, _ = p.retr(int(n))
            self.assertTrue(resp.startswith(b"+OK"), resp)
            self.assertSameBytes(b"".join(line + b"\r\n" for line in lines),
                                 wire_body(self.box.by_uidl(uidl).content), f"RETR {n}")
        self.assertTrue(p.quit().startswith(b"+OK"))
        self.assertEqual(self.box.contents(), self.before)


class MinVersion13(TlsBase):
    min_version = "TLSv1.3"

    def test_tls12_client_is_refused(self):
        with self.assertRaises(ssl.SSLError):
            tls_socket(self.tls_port, self.ctx(maximum=ssl.TLSVersion.TLSv1_2)).close()
        self.wait_handshake_failures()
        self.retrieve_all(self.over_tls())


# ---------------------------------------------------------------------------------------------
# Failed handshakes: logged, and the server keeps serving

class FailedHandshakes(TlsBase):
    def test_plaintext_to_pop3s_port(self):
        s = socket.create_connection(("127.0.0.1", self.tls_port), timeout=DEFAULT_TIMEOUT)
        self.world.on_cleanup(s.close)
        s.sendall(b"CAPA\r\nUSER alice\r\n")
        data = read_until_closed(s)
        self.assertNotIn(b"+OK", data)
        self.assertNotIn(b"-ERR", data)
        self.wait_handshake_failures()
        self.check_still_serving()

    def test_tls11_client_is_refused(self):
        ctx = self.ctx(verify=False, minimum=ssl.TLSVersion.TLSv1_1,
                       maximum=ssl.TLSVersion.TLSv1_1, ciphers="DEFAULT:@SECLEVEL=0")
        with self.assertRaises(ssl.SSLError):
            tls_socket(self.tls_port, ctx).close()
        self.wait_handshake_failures()
        self.check_still_serving()

    def test_tls11_client_is_refused_after_stls(self):
        conn = self.plain()
        self.assertOk(conn.cmd("STLS"))
        ctx = self.ctx(verify=False, minimum=ssl.TLSVersion.TLSv1_1,
                       maximum=ssl.TLSVersion.TLSv1_1, ciphers="DEFAULT:@SECLEVEL=0")
        with self.assertRaises(ssl.SSLError):
            ctx.wrap_socket(conn.sock, server_hostname=SERVER_NAME)
        self.wait_handshake_failures()
        self.check_still_serving()

    def test_garbage_after_stls(self):
        conn = self.plain()
        self.assertOk(conn.cmd("STLS"))
        conn.send(b"USER alice\r\n")
        data = read_until_closed(conn.sock)
        self.assertNotIn(b"+OK", data)
        self.wait_handshake_failures()
        self.retrieve_all(self.over_stls())

    def test_client_gone_during_handshake(self):
        for _ in range(3):
            raw = socket.create_connection(("127.0.0.1", self.tls_port), timeout=DEFAULT_TIMEOUT)
            raw.close()
        self.check_still_serving()

    @needs("openssl")
    def test_s_client_tls11_is_refused(self):
        res = s_client(self.tls_port, self.pki, quiet=False,
                       extra=["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"])
        self.assertNotEqual(res.returncode, 0)
        self.assertNotIn(b"+OK", res.stdout)
        self.wait_handshake_failures()
        self.check_still_serving()


# ---------------------------------------------------------------------------------------------
# openssl s_client

@needs("openssl")
class SClient(TlsBase):
    def pipeline(self, port, starttls):
        n = len(self.box.messages)
        commands = (["USER alice", f"PASS {PASSWORD}", "STAT", "UIDL"]
                    + [f"RETR {i}" for i in range(1, n + 1)] + ["QUIT"])
        multi = [False, False, False, True] + [True] * n + [False]
        res = s_client(port, self.pki, stdin="".join(c + "\r\n" for c in commands).encode(),
                       starttls=starttls)
        self.assertEqual(res.returncode, 0, res.stderr.decode("latin-1")[-3000:])
        # With -starttls s_client reads the greeting itself; over pop3s it is ours to read.
        replies = split_replies(res.stdout, multi if starttls else [False] + multi)
        if not starttls:
            self.assertOk(replies.pop(0)[0])
        for (st, _), c in zip(replies, commands):
            self.assertOk(st, f"{c}: {st!r}")
        numbering = dict(parse_listing(replies[3][1]))
        self.assertCountEqual(numbering.values(), [m.uidl for m in self.box.messages])
        self.assertEqual(replies[2][0].split()[1:3],
                         [str(n), str(sum(octets(m.content) for m in self.box.messages))])
        for i in range(1, n + 1):
            content = self.box.by_uidl(numbering[i]).content
            self.assertSameBytes(replies[3 + i][1], dot_stuff(wire_body(content)),
                                 f"s_client RETR {i}")
        self.srv.wait_events("logout", user="alice", reason="QUIT")
        self.assertEqual(self.box.contents(), self.before)

    def test_starttls_pop3(self):
        self.pipeline(self.plain_port, starttls=True)

    def test_pop3s(self):
        self.pipeline(self.tls_port, starttls=False)

    def test_certificate_verifies(self):
        for port, stls in ((self.tls_port, False), (self.plain_port, True)):
            res = s_client(port, self.pki, starttls=stls, quiet=False)
            out = res.stdout.decode("latin-1")
            self.assertIn("Verify return code: 0 (ok)", out)
            self.assertIn("New, TLSv1.3, Cipher is", out)
            self.assertEqual(s_client_fingerprint(port, self.pki, starttls=stls),
                             file_fingerprint(self.pki.a_cert))
        self.check_still_serving()


# ---------------------------------------------------------------------------------------------
# [tls] mode

class ModeNone(TlsBase):
    mode = "none"
    tls_listen = False

    def test_no_stls(self):
        conn = self.plain()
        self.assertNotIn("STLS", self.capa(conn))
        self.assertErr(conn.cmd("STLS"))
        self.retrieve_all(conn)

    @needs("curl")
    def test_curl_ssl_reqd_fails(self):
        res = subprocess.run(["curl", "-s", "-S", "--max-time", str(int(scaled(60))),
                              "--noproxy", "*", "-u", f"alice:{PASSWORD}", "--ssl-reqd",
                              "--cacert", self.pki.ca_cert,
                              f"pop3://127.0.0.1:{self.plain_port}/1"],
                             capture_output=True, timeout=scaled(90), stdin=subprocess.DEVNULL)
        self.assertEqual(res.returncode, 64, res.stderr)  # "requested SSL level failed"
        self.assertEqual(res.stdout, b"")
        self.assertEqual(self.srv.events("login"), [])


class ModeRequired(TlsBase):
    mode = "required"

    def test_only_capa_stls_quit_before_tls(self):
        conn = self.plain()
        lines = self.capa(conn)
        self.assertIn("STLS", lines)
        self.assertNoPlaintextAuth(lines)
        for cmd in ("USER alice", f"PASS {PASSWORD}", "AUTH PLAIN",
                    "APOP alice 0123456789abcdef0123456789abcdef", "STAT", "NOOP"):
            self.assertErr(conn.cmd(cmd), cmd)
        self.assertEqual(self.srv.events("login"), [])
        tls = starttls(self.world, conn, self.ctx())
        self.retrieve_all(tls)

    def test_quit_before_tls(self):
        conn = self.plain()
        self.assertOk(conn.quit())

    def test_pop3s_works(self):
        self.retrieve_all(self.over_tls())


class ModeConnection(TlsBase):
    mode = "connection"
    tls_listen = False

    def port(self):
        plain, tls = listener_ports(self.srv)
        return (plain + tls)[0]

    def test_plain_listener_speaks_tls(self):
        conn = tls_connect(self.world, self.port(), self.ctx())
        self.assertNotIn("STLS", self.capa(conn))
        self.assertErr(conn.cmd("STLS"))
        self.retrieve_all(conn)

    def test_plaintext_client_gets_no_greeting(self):
        s = socket.create_connection(("127.0.0.1", self.port()), timeout=DEFAULT_TIMEOUT)
        self.world.on_cleanup(s.close)
        s.sendall(b"CAPA\r\n")
        data = read_until_closed(s)
        self.assertNotIn(b"+OK", data)
        self.wait_handshake_failures()
        self.retrieve_all(tls_connect(self.world, self.port(), self.ctx()))


# ---------------------------------------------------------------------------------------------
# Plaintext authentication policy

class PlaintextPolicy(TlsBase):
    auth = {"disable_plaintext_auth": True, "loopback_is_secure": False}

    def test_user_refused_before_stls_and_accepted_after(self):
        conn = self.plain()
        before = self.capa(conn)
        self.assertIn("STLS", before)
        self.assertNoPlaintextAuth(before)
        st = conn.cmd("USER alice")
        self.assertTrue(st.startswith("-ERR [AUTH]"), st)
        self.assertErr(conn.cmd(f"PASS {PASSWORD}"))
        self.assertErr(conn.cmd("AUTH PLAIN AGFsaWNlAFRscy1wdy0x"))  # \0alice\0Tls-pw-1
        self.assertEqual(self.srv.events("login"), [])
        tls = starttls(self.world, conn, self.ctx())
        self.assertIn("USER", self.capa(tls))
        self.retrieve_all(tls)

    def test_pop3s_login_allowed(self):
        tls = self.over_tls()
        self.assertIn("USER", self.capa(tls))
        self.retrieve_all(tls)


class PlaintextPolicyTrustedNetwork(TlsBase):
    auth = {"disable_plaintext_auth": True, "loopback_is_secure": False,
            "trusted_networks": ["127.0.0.0/8"]}

    def test_trusted_network_may_log_in_without_tls(self):
        conn = self.plain()
        self.assertIn("USER", self.capa(conn))
        self.retrieve_all(conn)


class PlaintextPolicyOff(TlsBase):
    auth = {"disable_plaintext_auth": False, "loopback_is_secure": False}

    def test_plaintext_login_allowed(self):
        conn = self.plain()
        lines = self.capa(conn)
        self.assertIn("USER", lines)
        self.assertIn("STLS", lines)
        self.retrieve_all(conn)


# ---------------------------------------------------------------------------------------------
# Client certificates (for AUTH EXTERNAL): requested, verified, never required

class ClientCertificates(TlsBase):
    client_ca = True

    def test_with_certificate(self):
        conn = self.over_tls(cert=self.pki.client_cert, key=self.pki.client_key)
        self.retrieve_all(conn)

    def test_without_certificate(self):
        self.retrieve_all(self.over_tls())
        self.retrieve_all(self.over_stls())

    @needs("openssl")
    def test_client_ca_names_are_sent(self):
        res = s_client(self.tls_port, self.pki, quiet=False)
        out = res.stdout.decode("latin-1")
        self.assertIn("Acceptable client certificate CA names", out)
        self.assertIn("Postern Client CA", out)


# ---------------------------------------------------------------------------------------------
# SIGHUP reload

class Reload(TlsBase):
    def test_sighup_serves_new_certificate_and_keeps_sessions(self):
        a = file_fingerprint(self.pki.a_cert)
        b = file_fingerprint(self.pki.b_cert)
        self.assertEqual(peer_fingerprint(self.tls_port, self.pki), a)
        # Sessions opened before the reload, over pop3s and over STLS, logged in.
        old_tls = self.over_tls()
        old_tls.login("alice", PASSWORD)
        old_stls = self.over_stls()
        self.assertOk(old_stls.cmd_multi("CAPA")[0])

        self.pki.install(self.pki.b_cert, self.pki.b_key)
        self.srv.signal(signal.SIGHUP)
        wait_for(lambda: peer_fingerprint(self.tls_port, self.pki) == b,
                 what="the new certificate on new pop3s connections")
        self.assertEqual(peer_fingerprint(self.plain_port, self.pki, starttls_first=True), b)
        self.assertEqual(s_client_fingerprint(self.tls_port, self.pki), b)
        self.assertEqual(s_client_fingerprint(self.plain_port, self.pki, starttls=True), b)

        # The old sessions carry on with their original TLS state.
        self.retrieve_all(old_tls, login=False)
        self.retrieve_all(old_stls)
        self.assertTrue(self.srv.alive())

    def test_sighup_with_mismatched_key_keeps_old_certificate(self):
        a = file_fingerprint(self.pki.a_cert)
        session = self.over_tls()
        session.login("alice", PASSWORD)
        # New certificate, old key: the reload must fail and keep serving A.
        self.pki.install(self.pki.b_cert, self.pki.a_key)
        self.srv.signal(signal.SIGHUP)
        self.srv.wait_log(re.escape(self.pki.server_key))  # the error names the key file
        self.assertEqual(peer_fingerprint(self.tls_port, self.pki), a)
        self.retrieve_all(session, login=False)
        self.check_still_serving()
        self.assertTrue(self.srv.alive())


# ---------------------------------------------------------------------------------------------
# Mail clients

class ClientBase(TlsBase):
    def setUp(self):
        super().setUp()
        self.env = dict(os.environ, HOME=self.world.path(), LC_ALL="C", LANG="C")
        self.env.pop("MAIL", None)
        self.env.pop("SSL_CERT_FILE", None)
        self.env.pop("SSL_CERT_DIR", None)

    def run_client(self, argv, **kw):
        res = subprocess.run(argv, capture_output=True, timeout=scaled(120),
                             stdin=subprocess.DEVNULL, env=self.env, cwd=self.world.path(), **kw)
        self.last_output = (res.stdout + res.stderr).decode("utf-8", "replace")
        return res

    def assertDelivered(self, delivered):
        want = sorted(client_form(m.content) for m in self.box.messages)
        got = sorted(delivered)
        if got != want:
            self.fail(f"client delivered different bytes: {len(got)} delivered, {len(want)} "
                      f"expected\n--- client output ---\n{self.last_output[-4000:]}")

    def wait_quit_logout(self, count=1):
        return self.srv.wait_events("logout", count=count, user="alice", reason="QUIT")


@needs("curl")
class Curl(ClientBase):
    def curl(self, url, *args):
        return self.run_client(["curl", "-s", "-S", "--max-time", str(int(scaled(60))),
                                "--noproxy", "*", "-u", f"alice:{PASSWORD}", *args, url])

    def retrieve_each(self, base, *args):
        res = self.curl(base + "/", "-X", "UIDL", *args)
        self.assertEqual(res.returncode, 0, self.last_output)
        listing = parse_listing(res.stdout)
        self.assertCountEqual([u for _, u in listing], [m.uidl for m in self.box.messages])
        for n, uidl in listing:
            res = self.curl(f"{base}/{n}", *args)
            self.assertEqual(res.returncode, 0, self.last_output)
            self.assertSameBytes(res.stdout, wire_body(self.box.by_uidl(uidl).content),
                                 f"curl RETR {n}")
        self.wait_quit_logout(count=len(listing) + 1)
        self.assertEqual(self.box.contents(), self.before)

    def test_pop3s_with_cacert(self):
        self.retrieve_each(f"pop3s://127.0.0.1:{self.tls_port}", "--cacert", self.pki.ca_cert)

    def test_pop3s_insecure(self):
        self.retrieve_each(f"pop3s://127.0.0.1:{self.tls_port}", "-k")

    def test_stls_with_ssl_reqd(self):
        self.retrieve_each(f"pop3://127.0.0.1:{self.plain_port}", "--ssl-reqd",
                           "--cacert", self.pki.ca_cert)

    def test_untrusted_certificate_is_refused_by_curl(self):
        res = self.curl(f"pop3s://127.0.0.1:{self.tls_port}/1")  # system CAs only
        self.assertEqual(res.returncode, 60, self.last_output)
        self.assertEqual(res.stdout, b"")


@needs("fetchmail")
class Fetchmail(ClientBase):
    def fetchmail(self, port, tls_options):
        home = self.world.path("fetchmail")
        out = os.path.join(home, "out")
        os.makedirs(out, exist_ok=True)
        for name in os.listdir(out):
            os.unlink(os.path.join(out, name))
        mda = os.path.join(home, "mda.sh")
        with open(mda, "w") as f:
            f.write(f'#!/bin/sh\nexec cat > "$(mktemp {out}/msg.XXXXXXXX)"\n')
        os.chmod(mda, 0o755)
        rc = os.path.join(home, "fetchmailrc")
        with open(rc, "w") as f:
            f.write("set no syslog\n"
                    "set no bouncemail\n"
                    "set invisible\n"
                    f"poll 127.0.0.1 with proto POP3 port {port} and timeout {int(scaled(60))}\n"
                    "  auth password no dns no envelope\n"
                    f'  user "alice" there with password "{PASSWORD}" is "localuser" here\n'
                    f"  options keep fetchall no rewrite stripcr {tls_options}\n"
                    f'  mda "{mda}"\n')
        os.chmod(rc, 0o600)
        env = dict(self.env, FETCHMAILHOME=home)
        res = subprocess.run(["fetchmail", "-f", rc, "--pidfile", os.path.join(home, "pid"),
                              "--nosyslog", "-v"], capture_output=True, env=env, cwd=home,
                             timeout=scaled(120), stdin=subprocess.DEVNULL)
        self.last_output = (res.stdout + res.stderr).decode("utf-8", "replace")
        delivered = []
        for name in sorted(os.listdir(out)):
            with open(os.path.join(out, name), "rb") as f:
                delivered.append(f.read())
        return res, delivered

    def checked(self):
        return (f'sslcertck sslcertfile "{self.pki.ca_cert}" sslcommonname "{SERVER_NAME}"')

    def test_pop3s(self):
        res, delivered = self.fetchmail(self.tls_port, "ssl " + self.checked())
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertDelivered(delivered)
        self.wait_quit_logout()
        self.assertEqual(self.box.contents(), self.before)

    def test_stls_with_ca_file(self):
        res, delivered = self.fetchmail(self.plain_port, "sslproto 'tls1.2+' " + self.checked())
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertIn("STLS", self.last_output)
        self.assertDelivered(delivered)
        self.wait_quit_logout()

    def test_stls_without_certificate_check(self):
        res, delivered = self.fetchmail(self.plain_port, "sslproto 'tls1.2+' no sslcertck")
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertIn("STLS", self.last_output)
        self.assertDelivered(delivered)
        self.wait_quit_logout()


@needs("mpop")
class Mpop(ClientBase):
    def mpop(self, port, starttls):
        home = self.world.path("mpop")
        dest = os.path.join(home, "Maildir")
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(dest, sub), exist_ok=True)
        rc = os.path.join(home, "mpoprc")
        with open(rc, "w") as f:
            f.write("defaults\n"
                    "account test\n"
                    "host 127.0.0.1\n"
                    f"port {port}\n"
                    f"timeout {int(scaled(60))}\n"
                    "auth user\n"
                    "user alice\n"
                    f"password {PASSWORD}\n"
                    f"delivery maildir {dest}\n"
                    "keep on\n"
                    "received_header off\n"
                    f"uidls_file {home}/uidls\n")
        os.chmod(rc, 0o600)
        res = self.run_client(["mpop", "-C", rc, "--tls=on",
                               f"--tls-starttls={'on' if starttls else 'off'}",
                               f"--tls-trust-file={self.pki.ca_cert}", "-q", "test"])
        delivered = read_maildir(dest)
        shutil.rmtree(dest)
        return res, delivered

    def test_stls(self):
        res, delivered = self.mpop(self.plain_port, starttls=True)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertDelivered(delivered)
        self.wait_quit_logout()
        self.assertEqual(self.box.contents(), self.before)

    def test_pop3s(self):
        res, delivered = self.mpop(self.tls_port, starttls=False)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertDelivered(delivered)
        self.wait_quit_logout()
        self.assertEqual(self.box.contents(), self.before)


if __name__ == "__main__":
    unittest.main()
