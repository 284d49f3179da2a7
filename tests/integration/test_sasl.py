"""SASL (RFC 5034) and APOP (RFC 1939 section 7) against the real posternd.

Every mechanism is driven over a raw socket by a client written here from its RFC (PLAIN,
LOGIN, CRAM-MD5, SCRAM-SHA-1/-256 with the server's final signature checked, -PLUS with
tls-unique over TLS 1.2 and tls-exporter over TLS 1.3, EXTERNAL, GSSAPI), and by real
clients where they exist: curl (PLAIN, LOGIN, CRAM-MD5, EXTERNAL with a client certificate,
GSSAPI), fetchmail (CRAM-MD5, APOP) and mpop (SCRAM-SHA-256, CRAM-MD5). Each mechanism also
gets a wrong password, a cancel ("*") and garbage base64.

Channel binding data from Python: ssl.SSLSocket.get_channel_binding("tls-unique") exists for
TLS 1.2; Python 3.11 cannot export keying material, so the TLS 1.3 tls-exporter test runs
the TLS connection through `openssl s_client -keymatexport EXPORTER-Channel-Binding` and
speaks POP3 through its stdin and stdout.

GSSAPI runs against an MIT KDC started on loopback by krb5_fixtures.Kdc, with the client in
Python's gssapi module (Debian's python3-gssapi, run by whichever interpreter has it) and
curl. Only 127.0.0.1 is contacted; "localhost" names the Kerberos service and the TLS
certificate and is never looked up in DNS.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import unittest

from postern_harness import missing, requires
from postern_harness import (DEFAULT_TIMEOUT, POSTERND, Msg, PosternTestCase, Server,
                             openssl_passwd, scaled, simple_message)
from tls_fixtures import (OPENSSL, SERVER_NAME, Pki, client_context, configure_tls,
                          listener_ports, tls_connect)
from krb5_fixtures import GSSAPI_CLIENT, Kdc, gssapi_python

ALICE_PW = "Alice-sasl-1"
BOB_PW = "Bob-cram-2"      # {CRAM-MD5} secret only
CAROL_PW = "Carol-scram-3"  # {SCRAM-SHA-256} secret only
DAVE_PW = "Dave-scram-4"    # {SCRAM-SHA-1} secret only
ERIN_PW = "Erin-crypt-5"    # {SHA512-CRYPT} only

ALL_MECHANISMS = ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256",
                  "SCRAM-SHA-256-PLUS", "EXTERNAL"]

SECRETS = (ALICE_PW, BOB_PW, CAROL_PW, DAVE_PW, ERIN_PW)


def b64(data):
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()


def unb64(text):
    return base64.b64decode(text, validate=True)


def needs(tool):
    return requires(shutil.which(tool), f"{tool} is not installed")


# ---------------------------------------------------------------------------------------------
# Stored secrets made here, independently of Postern's code

def scram_secret(hash_name, password, iterations=4096, salt=None):
    """Dovecot's {SCRAM-SHA-*} form: iterations,salt,StoredKey,ServerKey (base64)."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hash_name).digest()
    stored_key = hashlib.new(hash_name, client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hash_name).digest()
    scheme = "SCRAM-SHA-1" if hash_name == "sha1" else "SCRAM-SHA-256"
    return (f"{{{scheme}}}{iterations},{b64(salt)},{b64(stored_key)},{b64(server_key)}")


def posternd_hash(scheme, password):
    res = subprocess.run([POSTERND, "--hash", scheme], input=(password + "\n").encode(),
                         capture_output=True, timeout=scaled(30))
    if res.returncode != 0:
        raise AssertionError(f"posternd --hash {scheme}: {res.stderr!r}")
    return res.stdout.decode().strip()


# ---------------------------------------------------------------------------------------------
# Client-side mechanisms (RFC 4616, draft LOGIN, RFC 2195, RFC 5802/7677, RFC 4422)

class Scram:
    """An RFC 5802 client. cb_flag: "n", "y" or "p=<type>" with cb_data bound."""

    def __init__(self, mech, user, password, authzid="", cb_flag="n", cb_data=b""):
        self.hash = "sha1" if mech.startswith("SCRAM-SHA-1") else "sha256"
        self.user, self.password, self.authzid = user, password, authzid
        self.cb_flag, self.cb_data = cb_flag, cb_data
        self.nonce = b64(secrets.token_bytes(18))
        self.gs2 = f"{cb_flag},{'a=' + authzid if authzid else ''},"
        self.first_bare = f"n={user},r={self.nonce}"
        self.server_signature = None

    def first(self):
        return self.gs2 + self.first_bare

    def final(self, server_first, corrupt=False):
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        if not attrs["r"].startswith(self.nonce) or len(attrs["r"]) <= len(self.nonce):
            raise AssertionError(f"server nonce does not extend ours: {server_first}")
        iterations = int(attrs["i"])
        if iterations < 4096:
            raise AssertionError(f"iteration count {iterations} < 4096")
        salted = hashlib.pbkdf2_hmac(self.hash, self.password.encode(), unb64(attrs["s"]),
                                     iterations)
        client_key = hmac.new(salted, b"Client Key", self.hash).digest()
        stored_key = hashlib.new(self.hash, client_key).digest()
        cbind = self.gs2.encode() + (self.cb_data if self.cb_flag.startswith("p=") else b"")
        without_proof = f"c={b64(cbind)},r={attrs['r']}"
        auth_message = f"{self.first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, self.hash).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        if corrupt:
            proof = bytes([proof[0] ^ 1]) + proof[1:]
        server_key = hmac.new(salted, b"Server Key", self.hash).digest()
        self.server_signature = hmac.new(server_key, auth_message, self.hash).digest()
        return f"{without_proof},p={b64(proof)}"

    def check_server_final(self, server_final):
        return server_final == "v=" + b64(self.server_signature)


def plain_message(user, password, authzid=""):
    return b64(f"{authzid}\0{user}\0{password}")


def cram_response(user, password, challenge):
    digest = hmac.new(password.encode(), challenge, "md5").hexdigest()
    return b64(f"{user} {digest}")


def apop_digest(timestamp, password):
    return hashlib.md5((timestamp + password).encode()).hexdigest()


class LineIO:
    """POP3 line I/O over a pair of pipes (openssl s_client's stdin/stdout)."""

    def __init__(self, proc):
        self.proc = proc
        self.transcript = []

    def line(self):
        data = self.proc.stdout.readline()
        if not data:
            raise AssertionError("s_client closed:\n" + "\n".join(self.transcript[-30:]))
        text = data.decode("latin-1").rstrip("\r\n")
        self.transcript.append("S: " + text)
        return text

    def send(self, text):
        self.transcript.append("C: " + text[:80])
        self.proc.stdin.write(text.encode() + b"\r\n")
        self.proc.stdin.flush()


# ---------------------------------------------------------------------------------------------
# The fixture: users with every kind of secret, TLS with client certificates, APOP

class SaslBase(PosternTestCase):
    mechanisms = ALL_MECHANISMS
    extra_auth = {}

    def setUp(self):
        super().setUp()
        self.before_start()
        w = self.world
        self.alice = w.add_user("alice", ALICE_PW, [Msg(simple_message("for alice"))])
        self.bob = w.add_user("bob", BOB_PW, [Msg(simple_message("for bob"))],
                              passwd_secret=posternd_hash("CRAM-MD5", BOB_PW))
        self.carol = w.add_user("carol", CAROL_PW, [Msg(simple_message("for carol"))],
                                passwd_secret=scram_secret("sha256", CAROL_PW))
        self.dave = w.add_user("dave", DAVE_PW, [Msg(simple_message("for dave"))],
                               passwd_secret=scram_secret("sha1", DAVE_PW))
        self.erin = w.add_user("erin", ERIN_PW, [],
                               passwd_secret="{SHA512-CRYPT}" + openssl_passwd("-6", ERIN_PW))
        w.add_passwd_line("frank:{PLAIN}Frank-pw-6::::::nologin")
        self.pki = Pki(w.dir)
        self.listeners = configure_tls(w, self.pki, mode="ondemand", client_ca=True,
                                       mechanisms=list(self.mechanisms), apop=True,
                                       external_user="subject:CN", **self.extra_auth)
        self.srv = w.start(listeners=self.listeners)
        plain, tls = listener_ports(self.srv)
        self.plain_port, self.tls_port = plain[0], tls[0]

    def before_start(self):
        """Hook for what must exist before posternd starts (the Kerberos realm)."""

    # -- connections
    def plain(self):
        return self.srv.connect(port=self.plain_port)

    def over_tls(self, cert=False, **kw):
        ctx = client_context(self.pki, cert=self.pki.client_cert if cert else None,
                             key=self.pki.client_key if cert else None, **kw)
        return tls_connect(self.world, self.tls_port, ctx)

    def capa_sasl(self, conn):
        st, body = conn.cmd_multi("CAPA")
        self.assertOk(st)
        lines = body.decode("latin-1").split("\r\n")[:-1]
        sasl = [line for line in lines if line.startswith("SASL")]
        return sasl[0].split()[1:] if sasl else []

    # -- checks
    def assertLoggedIn(self, conn, box):
        st = conn.cmd("STAT")
        self.assertOk(st)
        self.assertEqual(int(st.split()[1]), len(box.messages), st)
        self.assertOk(conn.quit())

    def assertNoSecretsLogged(self):
        log = self.srv.log()
        for secret in SECRETS:
            self.assertNotIn(secret, log)
            self.assertNotIn(b64(secret), log)

    def auth_failed_events(self, method):
        return self.srv.wait_events("auth failed", method=method)

    # -- conversations
    def scram(self, conn, client, initial=True, corrupt=False, mech=None):
        """Runs SCRAM; returns (final status, server-final signature ok or None)."""
        mech = mech or ("SCRAM-SHA-1" if client.hash == "sha1" else "SCRAM-SHA-256")
        if initial:
            st = conn.cmd(f"AUTH {mech} {b64(client.first())}")
        else:
            st = conn.cmd(f"AUTH {mech}")
            if st != "+ ":
                return st, None
            st = conn.cmd(b64(client.first()))
        if not st.startswith("+ "):
            return st, None
        st = conn.cmd(b64(client.final(unb64(st[2:]).decode(), corrupt)))
        if not st.startswith("+ "):
            return st, None
        ok = client.check_server_final(unb64(st[2:]).decode())
        return conn.cmd(""), ok


# ---------------------------------------------------------------------------------------------
# Mechanism lists

class MechanismLists(SaslBase):
    def test_capa_on_loopback_lists_what_is_usable_without_tls(self):
        conn = self.plain()
        # Loopback counts as secure (loopback_is_secure), so PLAIN and LOGIN are offered; no
        # TLS means no -PLUS and no EXTERNAL.
        self.assertEqual(self.capa_sasl(conn),
                         ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"])

    def test_capa_over_tls_with_client_certificate_lists_all_configured(self):
        conn = self.over_tls(cert=True)
        self.assertEqual(self.capa_sasl(conn), ALL_MECHANISMS)

    def test_capa_over_tls_without_certificate_has_no_external(self):
        conn = self.over_tls()
        self.assertEqual(self.capa_sasl(conn), [m for m in ALL_MECHANISMS if m != "EXTERNAL"])

    def test_bare_auth_lists_the_mechanisms(self):
        conn = self.over_tls(cert=True)
        st, body = conn.cmd_multi("AUTH")
        self.assertOk(st)
        self.assertEqual(body.decode().split("\r\n")[:-1], ALL_MECHANISMS)
        conn = self.plain()
        st, body = conn.cmd_multi("AUTH")
        self.assertEqual(body.decode().split("\r\n")[:-1], self.capa_sasl(conn))

    def test_unusable_mechanisms_are_refused(self):
        conn = self.plain()
        for mech in ("SCRAM-SHA-256-PLUS", "EXTERNAL", "GSSAPI", "DIGEST-MD5", "NTLM"):
            self.assertErr(conn.cmd(f"AUTH {mech}"), mech)
        self.assertOk(conn.cmd(f"AUTH PLAIN {plain_message('alice', ALICE_PW)}"))

    def test_mechanism_names_are_case_insensitive(self):
        conn = self.plain()
        self.assertOk(conn.cmd(f"AUTH plain {plain_message('alice', ALICE_PW)}"))
        self.assertLoggedIn(conn, self.alice)


class PlaintextPolicy(SaslBase):
    extra_auth = {"loopback_is_secure": False}

    def test_plain_and_login_are_neither_offered_nor_accepted_without_tls(self):
        conn = self.plain()
        self.assertEqual(self.capa_sasl(conn), ["CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"])
        st = conn.cmd(f"AUTH PLAIN {plain_message('alice', ALICE_PW)}")
        self.assertTrue(st.startswith("-ERR [AUTH]"), st)
        self.assertTrue(conn.cmd("AUTH LOGIN").startswith("-ERR [AUTH]"))
        # Challenge-response mechanisms still work.
        st, ok = self.scram(conn, Scram("SCRAM-SHA-256", "carol", CAROL_PW))
        self.assertOk(st)
        self.assertTrue(ok)

    def test_plain_is_offered_after_tls(self):
        conn = self.over_tls()
        self.assertIn("PLAIN", self.capa_sasl(conn))
        self.assertOk(conn.cmd(f"AUTH PLAIN {plain_message('alice', ALICE_PW)}"))


# ---------------------------------------------------------------------------------------------
# Raw conversations, mechanism by mechanism

class Plain(SaslBase):
    def test_with_initial_response(self):
        conn = self.plain()
        self.assertOk(conn.cmd(f"AUTH PLAIN {plain_message('alice', ALICE_PW)}"))
        self.assertLoggedIn(conn, self.alice)
        self.srv.wait_events("login", user="alice")

    def test_without_initial_response(self):
        conn = self.plain()
        self.assertEqual(conn.cmd("AUTH PLAIN"), "+ ")
        self.assertOk(conn.cmd(plain_message("alice", ALICE_PW, authzid="alice")))
        self.assertLoggedIn(conn, self.alice)

    def test_hashed_secret(self):
        conn = self.plain()
        self.assertOk(conn.cmd(f"AUTH PLAIN {plain_message('erin', ERIN_PW)}"))

    def test_wrong_password_then_retry(self):
        conn = self.plain()
        self.assertErr(conn.cmd(f"AUTH PLAIN {plain_message('alice', 'wrong')}"))
        self.assertErr(conn.cmd("STAT"))
        self.assertOk(conn.cmd(f"AUTH PLAIN {plain_message('alice', ALICE_PW)}"))
        ev = self.auth_failed_events("PLAIN")
        self.assertEqual(ev[0]["user"], "alice")
        self.assertNoSecretsLogged()

    def test_other_authzid_is_refused(self):
        conn = self.plain()
        self.assertErr(conn.cmd(f"AUTH PLAIN {plain_message('alice', ALICE_PW, 'bob')}"))

    def test_unknown_and_refused_users(self):
        conn = self.plain()
        self.assertErr(conn.cmd(f"AUTH PLAIN {plain_message('nobody', 'x')}"))
        self.assertErr(conn.cmd(f"AUTH PLAIN {plain_message('frank', 'Frank-pw-6')}"))

    def test_cancel(self):
        conn = self.plain()
        self.assertEqual(conn.cmd("AUTH PLAIN"), "+ ")
        self.assertErr(conn.cmd("*"))
        self.assertOk(conn.cmd(f"AUTH PLAIN {plain_message('alice', ALICE_PW)}"))

    def test_garbage_base64(self):
        conn = self.plain()
        self.assertErr(conn.cmd("AUTH PLAIN !!notbase64!!"))
        self.assertEqual(conn.cmd("AUTH PLAIN"), "+ ")
        self.assertErr(conn.cmd("AGFsaWNl AA=="))
        self.assertOk(conn.cmd(f"AUTH PLAIN {plain_message('alice', ALICE_PW)}"))


class Login(SaslBase):
    def test_conversation(self):
        conn = self.plain()
        st = conn.cmd("AUTH LOGIN")
        self.assertEqual(unb64(st[2:]), b"Username:")
        st = conn.cmd(b64("alice"))
        self.assertEqual(unb64(st[2:]), b"Password:")
        self.assertOk(conn.cmd(b64(ALICE_PW)))
        self.assertLoggedIn(conn, self.alice)

    def test_user_as_initial_response(self):
        conn = self.plain()
        st = conn.cmd(f"AUTH LOGIN {b64('alice')}")
        self.assertEqual(unb64(st[2:]), b"Password:")
        self.assertOk(conn.cmd(b64(ALICE_PW)))

    def test_wrong_password(self):
        conn = self.plain()
        conn.cmd("AUTH LOGIN")
        conn.cmd(b64("alice"))
        self.assertErr(conn.cmd(b64("wrong")))
        self.assertNoSecretsLogged()

    def test_cancel_and_garbage(self):
        conn = self.plain()
        conn.cmd("AUTH LOGIN")
        self.assertErr(conn.cmd("*"))
        conn.cmd("AUTH LOGIN")
        self.assertErr(conn.cmd("%%%"))


class CramMd5(SaslBase):
    def login(self, conn, user, password):
        st = conn.cmd("AUTH CRAM-MD5")
        self.assertTrue(st.startswith("+ "), st)
        challenge = unb64(st[2:])
        self.assertRegex(challenge.decode(), r"^<[0-9a-f]{32}\.\d+\.\d+@[A-Za-z0-9.-]+>$")
        return conn.cmd(cram_response(user, password, challenge))

    def test_stored_cram_secret(self):
        conn = self.plain()
        self.assertOk(self.login(conn, "bob", BOB_PW))
        self.assertLoggedIn(conn, self.bob)

    def test_plain_secret(self):
        conn = self.plain()
        self.assertOk(self.login(conn, "alice", ALICE_PW))

    def test_failures(self):
        conn = self.plain()
        self.assertErr(self.login(conn, "bob", "wrong"))
        self.assertErr(self.login(conn, "nobody", "x"))
        # Only a SCRAM or crypt secret: CRAM-MD5 cannot work and fails like a wrong password.
        self.assertErr(self.login(conn, "carol", CAROL_PW))
        self.assertErr(self.login(conn, "erin", ERIN_PW))
        self.assertNoSecretsLogged()

    def test_challenges_are_unique(self):
        seen = set()
        for _ in range(5):
            conn = self.plain()
            seen.add(conn.cmd("AUTH CRAM-MD5"))
            conn.close()
        self.assertEqual(len(seen), 5)

    def test_cancel_and_garbage(self):
        conn = self.plain()
        conn.cmd("AUTH CRAM-MD5")
        self.assertErr(conn.cmd("*"))
        conn.cmd("AUTH CRAM-MD5")
        self.assertErr(conn.cmd("not base64!"))
        self.assertErr(conn.cmd(f"AUTH CRAM-MD5 {b64('bob x')}"))  # no initial response


class ScramMechanisms(SaslBase):
    def test_sha256_stored_keys_with_server_signature(self):
        conn = self.plain()
        st, ok = self.scram(conn, Scram("SCRAM-SHA-256", "carol", CAROL_PW))
        self.assertOk(st)
        self.assertTrue(ok, "server-final signature does not verify")
        self.assertLoggedIn(conn, self.carol)

    def test_sha256_from_plain_without_initial_response(self):
        conn = self.plain()
        st, ok = self.scram(conn, Scram("SCRAM-SHA-256", "alice", ALICE_PW), initial=False)
        self.assertOk(st)
        self.assertTrue(ok)

    def test_sha1_stored_keys(self):
        conn = self.plain()
        st, ok = self.scram(conn, Scram("SCRAM-SHA-1", "dave", DAVE_PW))
        self.assertOk(st)
        self.assertTrue(ok)
        self.assertLoggedIn(conn, self.dave)

    def test_wrong_password_and_bad_proof(self):
        conn = self.plain()
        st, ok = self.scram(conn, Scram("SCRAM-SHA-256", "carol", "wrong"))
        self.assertErr(st)
        self.assertIsNone(ok, "the server must not send server-final for a bad proof")
        st, _ = self.scram(conn, Scram("SCRAM-SHA-256", "carol", CAROL_PW), corrupt=True)
        self.assertErr(st)
        self.assertNoSecretsLogged()

    def test_unknown_user_gets_a_stable_salt(self):
        def server_first(user):
            conn = self.plain()
            st = conn.cmd(f"AUTH SCRAM-SHA-256 {b64(Scram('SCRAM-SHA-256', user, 'x').first())}")
            self.assertTrue(st.startswith("+ "), st)
            attrs = dict(p.split("=", 1) for p in unb64(st[2:]).decode().split(","))
            conn.close()
            return attrs["s"], attrs["i"]
        self.assertEqual(server_first("nobody"), server_first("nobody"))
        st, _ = self.scram(self.plain(), Scram("SCRAM-SHA-256", "nobody", "x"))
        self.assertErr(st)

    def test_mismatched_secret_kind_fails(self):
        conn = self.plain()
        st, _ = self.scram(conn, Scram("SCRAM-SHA-1", "carol", CAROL_PW))  # SHA-256 keys only
        self.assertErr(st)
        st, _ = self.scram(conn, Scram("SCRAM-SHA-256", "erin", ERIN_PW))  # crypt only
        self.assertErr(st)

    def test_other_authzid_is_refused(self):
        st, _ = self.scram(self.plain(), Scram("SCRAM-SHA-256", "carol", CAROL_PW,
                                               authzid="alice"))
        self.assertErr(st)

    def test_channel_binding_downgrade_is_refused_over_tls(self):
        # "y": the client supports binding but believes the server does not. Over TLS this
        # server offers SCRAM-SHA-256-PLUS, so that belief means an attacker edited CAPA.
        conn = self.over_tls()
        st, _ = self.scram(conn, Scram("SCRAM-SHA-256", "carol", CAROL_PW, cb_flag="y"))
        self.assertErr(st)
        # Without TLS no -PLUS is offered and "y" is honest.
        st, ok = self.scram(self.plain(), Scram("SCRAM-SHA-256", "carol", CAROL_PW,
                                                cb_flag="y"))
        self.assertOk(st)

    def test_cancel_and_garbage(self):
        conn = self.plain()
        self.assertEqual(conn.cmd("AUTH SCRAM-SHA-256"), "+ ")
        self.assertErr(conn.cmd("*"))
        client = Scram("SCRAM-SHA-256", "carol", CAROL_PW)
        st = conn.cmd(f"AUTH SCRAM-SHA-256 {b64(client.first())}")
        self.assertTrue(st.startswith("+ "))
        self.assertErr(conn.cmd("*"))
        self.assertErr(conn.cmd("AUTH SCRAM-SHA-256 ****"))
        self.assertErr(conn.cmd(f"AUTH SCRAM-SHA-256 {b64('garbage')}"))

    def test_over_long_initial_response(self):
        # RFC 5034 section 4: an initial response must fit in the 255-octet command line.
        conn = self.plain()
        self.assertErr(conn.cmd("AUTH SCRAM-SHA-256 " + "A" * 300))
        st, ok = self.scram(conn, Scram("SCRAM-SHA-256", "carol", CAROL_PW))
        self.assertOk(st)

    def test_over_long_response(self):
        # More than 16384 characters: -ERR, which ends the exchange (RFC 5034 section 4), so
        # the next line is a command again.
        conn = self.plain()
        self.assertEqual(conn.cmd("AUTH SCRAM-SHA-256"), "+ ")
        self.assertErr(conn.cmd("A" * 20000))
        # The session survives and can log in.
        st, ok = self.scram(conn, Scram("SCRAM-SHA-256", "carol", CAROL_PW))
        self.assertOk(st, "after its -ERR for the over-long line the engine must leave the "
                          "AUTH exchange; it still took the next command as a SASL response")


class ScramPlus(SaslBase):
    def test_tls_unique_over_tls12(self):
        conn = self.over_tls(maximum=ssl.TLSVersion.TLSv1_2)
        self.assertEqual(conn.sock.version(), "TLSv1.2")
        cb = conn.sock.get_channel_binding("tls-unique")
        self.assertTrue(cb)
        client = Scram("SCRAM-SHA-256-PLUS", "carol", CAROL_PW, cb_flag="p=tls-unique",
                       cb_data=cb)
        st, ok = self.scram(conn, client, mech="SCRAM-SHA-256-PLUS")
        self.assertOk(st)
        self.assertTrue(ok)
        self.assertLoggedIn(conn, self.carol)

    def test_wrong_binding_is_refused(self):
        conn = self.over_tls(maximum=ssl.TLSVersion.TLSv1_2)
        client = Scram("SCRAM-SHA-256-PLUS", "carol", CAROL_PW, cb_flag="p=tls-unique",
                       cb_data=b"\x14\x00\x00\x0c" + b"\x00" * 12)  # not this connection's
        st, _ = self.scram(conn, client, mech="SCRAM-SHA-256-PLUS")
        self.assertErr(st)

    def test_tls_unique_is_refused_over_tls13(self):
        conn = self.over_tls()
        self.assertEqual(conn.sock.version(), "TLSv1.3")
        client = Scram("SCRAM-SHA-256-PLUS", "carol", CAROL_PW, cb_flag="p=tls-unique",
                       cb_data=b"x" * 12)
        st, _ = self.scram(conn, client, mech="SCRAM-SHA-256-PLUS")
        self.assertErr(st)

    @requires(OPENSSL, "openssl is not installed")
    def test_tls_exporter_over_tls13_through_s_client(self):
        for password, expect_ok in ((CAROL_PW, True), ("wrong", False)):
            proc = subprocess.Popen(
                [OPENSSL, "s_client", "-connect", f"127.0.0.1:{self.tls_port}",
                 "-servername", SERVER_NAME, "-CAfile", self.pki.ca_cert,
                 "-verify_return_error", "-tls1_3", "-nocommands", "-ign_eof",
                 "-keymatexport", "EXPORTER-Channel-Binding", "-keymatexportlen", "32"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            self.addCleanup(proc.kill)
            io = LineIO(proc)
            exporter = None
            while True:  # s_client's session report, then the greeting
                line = io.line()
                m = re.match(r"\s*Keying material:\s*([0-9A-Fa-f]+)", line)
                if m:
                    exporter = bytes.fromhex(m.group(1))
                if line.startswith("+OK"):
                    break
            self.assertIsNotNone(exporter, "\n".join(io.transcript))
            self.assertEqual(len(exporter), 32)
            client = Scram("SCRAM-SHA-256-PLUS", "carol", password, cb_flag="p=tls-exporter",
                           cb_data=exporter)
            io.send(f"AUTH SCRAM-SHA-256-PLUS {b64(client.first())}")
            st = io.line()
            self.assertTrue(st.startswith("+ "), "\n".join(io.transcript))
            io.send(b64(client.final(unb64(st[2:]).decode())))
            st = io.line()
            if expect_ok:
                self.assertTrue(st.startswith("+ "), "\n".join(io.transcript))
                self.assertTrue(client.check_server_final(unb64(st[2:]).decode()))
                io.send("")
                self.assertTrue(io.line().startswith("+OK"), "\n".join(io.transcript))
                io.send("STAT")
                self.assertTrue(io.line().startswith("+OK 1 "))
            else:
                self.assertTrue(st.startswith("-ERR"), "\n".join(io.transcript))
            io.send("QUIT")
            io.line()
            proc.stdin.close()
            proc.wait(DEFAULT_TIMEOUT)
            proc.stdout.close()


class External(SaslBase):
    def test_client_certificate_login(self):
        conn = self.over_tls(cert=True)
        self.assertOk(conn.cmd("AUTH EXTERNAL ="))
        self.assertLoggedIn(conn, self.alice)

    def test_with_authzid_and_without_initial_response(self):
        conn = self.over_tls(cert=True)
        self.assertEqual(conn.cmd("AUTH EXTERNAL"), "+ ")
        self.assertOk(conn.cmd(b64("alice")))

    def test_other_authzid_is_refused(self):
        conn = self.over_tls(cert=True)
        self.assertErr(conn.cmd(f"AUTH EXTERNAL {b64('bob')}"))

    def test_without_certificate_it_is_not_available(self):
        conn = self.over_tls()
        self.assertErr(conn.cmd("AUTH EXTERNAL ="))

    def test_cancel_and_garbage(self):
        conn = self.over_tls(cert=True)
        self.assertEqual(conn.cmd("AUTH EXTERNAL"), "+ ")
        self.assertErr(conn.cmd("*"))
        self.assertErr(conn.cmd("AUTH EXTERNAL @@@"))

    @needs("curl")
    def test_curl_with_client_certificate(self):
        res = subprocess.run(
            ["curl", "-s", "-S", "--max-time", str(int(scaled(60))), "--noproxy", "*",
             "--cacert", self.pki.ca_cert, "--cert", self.pki.client_cert,
             "--key", self.pki.client_key, "--login-options", "AUTH=EXTERNAL",
             "-u", "alice:", "--resolve", f"{SERVER_NAME}:{self.tls_port}:127.0.0.1",
             f"pop3s://{SERVER_NAME}:{self.tls_port}/1"],
            capture_output=True, timeout=scaled(90), stdin=subprocess.DEVNULL)
        self.assertEqual(res.returncode, 0, res.stderr.decode(errors="replace"))
        self.assertIn(b"for alice", res.stdout)
        self.srv.wait_events("login", user="alice", method="EXTERNAL")


class Apop(SaslBase):
    def timestamp(self, conn):
        m = re.search(r"(<[^<>]+>)$", conn.greeting)
        self.assertIsNotNone(m, conn.greeting)
        return m.group(1)

    def test_greeting_carries_a_fresh_timestamp(self):
        stamps = {self.timestamp(self.plain()) for _ in range(5)}
        self.assertEqual(len(stamps), 5)
        for s in stamps:
            self.assertRegex(s, r"^<[0-9a-f]{32}\.\d+\.\d+@[A-Za-z0-9.-]+>$")

    def test_apop_login(self):
        conn = self.plain()
        ts = self.timestamp(conn)
        self.assertOk(conn.cmd(f"APOP alice {apop_digest(ts, ALICE_PW)}"))
        self.assertLoggedIn(conn, self.alice)

    def test_apop_failures(self):
        conn = self.plain()
        ts = self.timestamp(conn)
        self.assertErr(conn.cmd(f"APOP alice {apop_digest(ts, 'wrong')}"))
        self.assertErr(conn.cmd(f"APOP nobody {apop_digest(ts, 'x')}"))
        self.assertErr(conn.cmd(f"APOP carol {apop_digest(ts, CAROL_PW)}"))  # no plaintext
        self.assertErr(conn.cmd(f"APOP alice {apop_digest('<other@host>', ALICE_PW)}"))
        self.assertErr(conn.cmd("APOP alice nothex"))
        self.srv.wait_log(r"no plaintext secret for APOP")
        self.assertOk(conn.cmd(f"APOP alice {apop_digest(ts, ALICE_PW)}"))


# ---------------------------------------------------------------------------------------------
# Real clients

class ClientBase(SaslBase):
    def setUp(self):
        super().setUp()
        self.env = dict(os.environ, HOME=self.world.path(), LC_ALL="C", LANG="C")
        self.env.pop("MAIL", None)

    def run_client(self, argv, **kw):
        res = subprocess.run(argv, capture_output=True, timeout=scaled(120),
                             stdin=subprocess.DEVNULL, env=self.env, cwd=self.world.path(),
                             **kw)
        self.last_output = (res.stdout + res.stderr).decode("utf-8", "replace")
        return res


@needs("curl")
class Curl(ClientBase):
    def curl(self, user, password, mech, url=None):
        url = url or f"pop3://127.0.0.1:{self.plain_port}/1"
        return self.run_client(["curl", "-s", "-S", "--max-time", str(int(scaled(60))),
                                "--noproxy", "*", "-u", f"{user}:{password}",
                                "--login-options", f"AUTH={mech}", url])

    def test_plain_login_cram(self):
        for mech, user, pw, box in (("PLAIN", "alice", ALICE_PW, self.alice),
                                    ("LOGIN", "alice", ALICE_PW, self.alice),
                                    ("CRAM-MD5", "bob", BOB_PW, self.bob)):
            res = self.curl(user, pw, mech)
            self.assertEqual(res.returncode, 0, f"{mech}: {self.last_output}")
            self.assertIn(f"for {user}".encode(), res.stdout)
            self.srv.wait_events("login", user=user, method=mech)

    def test_wrong_password(self):
        res = self.curl("bob", "wrong", "CRAM-MD5")
        self.assertNotEqual(res.returncode, 0)
        self.auth_failed_events("CRAM-MD5")


@needs("fetchmail")
class Fetchmail(ClientBase):
    def fetchmail(self, proto, auth, user, password):
        home = self.world.path("fetchmail")
        out = os.path.join(home, "out")
        os.makedirs(out, exist_ok=True)
        mda = os.path.join(home, "mda.sh")
        with open(mda, "w") as f:
            f.write(f'#!/bin/sh\nexec cat > "$(mktemp {out}/msg.XXXXXXXX)"\n')
        os.chmod(mda, 0o755)
        rc = os.path.join(home, "fetchmailrc")
        with open(rc, "w") as f:
            f.write("set no syslog\nset no bouncemail\nset invisible\n"
                    f"poll 127.0.0.1 with proto {proto} port {self.plain_port} "
                    f"and timeout {int(scaled(60))}\n"
                    f"  auth {auth} no dns no envelope\n"
                    f'  user "{user}" there with password "{password}" is "localuser" here\n'
                    "  options keep fetchall no rewrite stripcr sslproto ''\n"
                    f'  mda "{mda}"\n')
        os.chmod(rc, 0o600)
        env = dict(self.env, FETCHMAILHOME=home)
        res = subprocess.run(["fetchmail", "-f", rc, "--pidfile", os.path.join(home, "pid"),
                              "--nosyslog", "-v"], capture_output=True, env=env, cwd=home,
                             timeout=scaled(120), stdin=subprocess.DEVNULL)
        self.last_output = (res.stdout + res.stderr).decode("utf-8", "replace")
        return res, len(os.listdir(out))

    def test_cram_md5(self):
        res, n = self.fetchmail("POP3", "cram-md5", "bob", BOB_PW)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertEqual(n, 1)
        self.assertIn("AUTH CRAM-MD5", self.last_output)
        self.srv.wait_events("login", user="bob", method="CRAM-MD5")

    def test_cram_md5_wrong_password(self):
        res, n = self.fetchmail("POP3", "cram-md5", "bob", "wrong")
        self.assertNotEqual(res.returncode, 0, self.last_output)
        self.assertEqual(n, 0)

    def test_apop(self):
        res, n = self.fetchmail("APOP", "password", "alice", ALICE_PW)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertEqual(n, 1)
        self.srv.wait_events("login", user="alice", method="APOP")


@needs("mpop")
class Mpop(ClientBase):
    def mpop(self, auth, user, password, tls):
        home = self.world.path("mpop-" + auth)
        dest = os.path.join(home, "Maildir")
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(dest, sub), exist_ok=True)
        rc = os.path.join(home, "mpoprc")
        port = self.tls_port if tls else self.plain_port
        with open(rc, "w") as f:
            f.write(f"account test\nhost 127.0.0.1\nport {port}\ntimeout {int(scaled(60))}\n"
                    f"auth {auth}\nuser {user}\npassword {password}\n"
                    f"delivery maildir {dest}\nkeep on\nreceived_header off\n"
                    f"uidls_file {home}/uidls\n")
        os.chmod(rc, 0o600)
        tls_args = (["--tls=on", "--tls-starttls=off", f"--tls-trust-file={self.pki.ca_cert}"]
                    if tls else ["--tls=off"])
        res = self.run_client(["mpop", "-C", rc, *tls_args, "-d", "test"])
        count = len(os.listdir(os.path.join(dest, "new"))) + len(os.listdir(
            os.path.join(dest, "cur")))
        return res, count

    def test_scram_sha256_over_tls(self):
        res, n = self.mpop("scram-sha-256", "carol", CAROL_PW, tls=True)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertEqual(n, 1)
        # mpop (GNU SASL) binds the channel when the server offers -PLUS and its TLS library
        # gives it the binding data; either way the login is SCRAM-SHA-256(-PLUS).
        ev = self.srv.wait_events("login", user="carol")
        self.assertIn(ev[0]["method"], ("SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"))

    def test_scram_sha256_wrong_password(self):
        res, n = self.mpop("scram-sha-256", "carol", "wrong", tls=True)
        self.assertNotEqual(res.returncode, 0, self.last_output)
        self.assertEqual(n, 0)

    def test_cram_md5(self):
        res, n = self.mpop("cram-md5", "bob", BOB_PW, tls=False)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertEqual(n, 1)


class HashTool(SaslBase):
    def test_hash_output_logs_in(self):
        secret = posternd_hash("SCRAM-SHA-256", "Tool-made-7")
        self.assertRegex(secret, r"^\{SCRAM-SHA-256\}4096,[A-Za-z0-9+/=]+,[A-Za-z0-9+/=]+,"
                                 r"[A-Za-z0-9+/=]+$")
        self.world.add_user("tina", "Tool-made-7", [], passwd_secret=secret)
        conn = self.plain()
        st, ok = self.scram(conn, Scram("SCRAM-SHA-256", "tina", "Tool-made-7"))
        self.assertOk(st)
        self.assertTrue(ok)


# ---------------------------------------------------------------------------------------------
# GSSAPI against a loopback MIT KDC

KRB_PW = "Alice-krb-8"


class Gssapi(SaslBase):
    mechanisms = ALL_MECHANISMS + ["GSSAPI"]

    def before_start(self):
        # posternd checks the keytab and reads krb5.conf when it starts.
        self.kdc = Kdc(self.world.dir)
        self.addCleanup(self.kdc.stop)
        self.kdc.add_user("alice", KRB_PW)
        self.kdc.add_user("mallory", "Mallory-krb-9")   # a principal without a mailbox
        self.kdc.add_user("alice/admin", "Admin-krb-10")  # an instance, not a user
        keytab = self.kdc.add_service("pop", "localhost")
        self.kdc.apply_environment(self)
        self.extra_auth = {"gssapi_keytab": keytab, "gssapi_service": "pop",
                           "gssapi_hostname": "localhost"}

    def gss_client(self, mode="initial", authzid="", target="localhost"):
        exe = gssapi_python()
        if exe is None:
            missing("no Python with the gssapi module (apt-get install python3-gssapi)")
        res = subprocess.run([exe, "-c", GSSAPI_CLIENT, "127.0.0.1", str(self.plain_port),
                              "pop", target, authzid, mode],
                             capture_output=True, timeout=scaled(60), env=self.kdc.environ(),
                             stdin=subprocess.DEVNULL)
        text = res.stdout.decode("utf-8", "replace")
        try:
            out = json.loads(text.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.fail(f"GSSAPI client output: {text}\n{res.stderr.decode(errors='replace')}")
        out["transcript"] = "\n".join(out.get("lines", []))
        return out

    def test_keytab_without_the_service_key_stops_startup(self):
        self.world.config["auth"]["gssapi_hostname"] = "mail.example.org"
        srv = Server(self.world, self.world.write_config(), self.world.path("bad-keytab.log"))
        rc = srv.wait_exit()
        self.assertNotEqual(rc, 0)
        self.assertIn("holds no key for pop/mail.example.org", srv.log())

    def test_capa_lists_gssapi_as_configured(self):
        conn = self.over_tls(cert=True)
        self.assertEqual(self.capa_sasl(conn), ALL_MECHANISMS + ["GSSAPI"])

    def test_login_with_initial_response(self):
        self.kdc.kinit("alice", KRB_PW)
        out = self.gss_client("initial")
        self.assertNotIn("error", out, out["transcript"])
        self.assertTrue(out["result"].startswith("+OK"), out["transcript"])
        self.assertEqual(out["server_layers"][:2], "01", "only 'no security layer' offered")
        self.assertTrue(out["stat"].startswith("+OK 1 "), out["transcript"])
        self.srv.wait_events("login", user="alice", method="GSSAPI")

    def test_login_without_initial_response_and_authzid(self):
        self.kdc.kinit("alice", KRB_PW)
        out = self.gss_client("continue", authzid="alice")
        self.assertTrue(out.get("result", "").startswith("+OK"), out["transcript"])

    def test_other_authzid_is_refused(self):
        self.kdc.kinit("alice", KRB_PW)
        out = self.gss_client("initial", authzid="bob")
        self.assertTrue(out.get("result", "").startswith("-ERR"), out["transcript"])

    def test_principal_without_mailbox_is_refused(self):
        self.kdc.kinit("mallory", "Mallory-krb-9")
        out = self.gss_client("initial")
        self.assertTrue(out.get("result", "").startswith("-ERR"), out["transcript"])
        ev = self.auth_failed_events("GSSAPI")
        self.assertEqual(ev[0]["user"], "mallory")

    def test_instance_principal_is_refused(self):
        self.kdc.kinit("alice/admin", "Admin-krb-10")
        out = self.gss_client("initial")
        self.assertTrue(out.get("result", "").startswith("-ERR"), out["transcript"])

    def test_cancel_and_garbage(self):
        self.kdc.kinit("alice", KRB_PW)
        out = self.gss_client("cancel")
        self.assertTrue(out.get("result", "").startswith("-ERR"), out["transcript"])
        conn = self.plain()
        self.assertErr(conn.cmd("AUTH GSSAPI ()()"))
        self.assertErr(conn.cmd(f"AUTH GSSAPI {b64(b'not a kerberos token')}"))
        self.assertEqual(conn.cmd("AUTH GSSAPI"), "+ ")
        self.assertErr(conn.cmd("*"))

    def test_wrong_password_gets_no_ticket(self):
        # A wrong Kerberos password fails at the KDC; the server never sees a token.
        with self.assertRaises(AssertionError):
            self.kdc.kinit("alice", "wrong")
        self.kdc.kdestroy()
        out = self.gss_client("initial")
        self.assertIn("error", out)  # the client cannot even build a token

    @needs("curl")
    def test_curl(self):
        self.kdc.kinit("alice", KRB_PW)
        res = subprocess.run(
            ["curl", "-s", "-S", "--max-time", str(int(scaled(60))), "--noproxy", "*",
             # curl picks GSSAPI only for a user name with a realm; it sends that name
             # as the authorization identity, which the server accepts for the principal.
             "--login-options", "AUTH=GSSAPI", "-u", f"alice@{self.kdc.realm}:",
             "--resolve", f"localhost:{self.plain_port}:127.0.0.1",
             f"pop3://localhost:{self.plain_port}/1"],
            capture_output=True, timeout=scaled(90), env=self.kdc.environ(),
            stdin=subprocess.DEVNULL)
        self.assertEqual(res.returncode, 0, res.stderr.decode(errors="replace")
                         + self.srv.log()[-3000:])
        self.assertIn(b"for alice", res.stdout)
        self.srv.wait_events("login", user="alice", method="GSSAPI")


if __name__ == "__main__":
    unittest.main()
