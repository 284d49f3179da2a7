"""SIGHUP reloads the TLS files in every process model: fork mode, several worker processes,
`chain` and `client_ca` along with the certificate, and a server that started as root and
dropped its privileges before the reload. Each case checks, with Python's ssl and with
`openssl s_client`, that new connections (pop3s and STLS) are shown the new certificate, and
that sessions opened before the reload, logged in, keep working and retrieve their mail.

(test_tls.py Reload covers event mode with one process and a key that does not match.)
"""

import os
import re
import signal

from postern_harness import PosternTestCase, missing, simple_message, test_user, wait_for
from test_large_messages import fork_mode_config, fork_mode_mailbox
import tls_fixtures
from tls_fixtures import (file_fingerprint, peer_fingerprint, s_client, s_client_fingerprint,
                          starttls, tls_connect)

PASSWORD = "Reload-pw-1"
RELOADED = r"SIGHUP: TLS certificate and key reloaded"


def messages():
    return [simple_message("reload one"), simple_message("reload two", [b"x" * 70] * 2000)]


def sent_certificates(res):
    """The subjects of the certificates `openssl s_client -showcerts` printed (depth order)."""
    return re.findall(r"(?m)^ ?\d+ s:(.*)$", res.stdout.decode("latin-1"))


class ReloadBase(PosternTestCase):
    processes = 1
    client_ca = False

    def setUp(self):
        super().setUp()
        self.pki = tls_fixtures.Pki(self.world.dir)
        self.boxes = {u: self.add_mailbox(u) for u in ("alice", "bob")}
        self.before = {u: b.contents() for u, b in self.boxes.items()}
        count = tls_fixtures.configure_tls(self.world, self.pki, mode="ondemand", tls_listen=True,
                                           client_ca=self.client_ca)
        self.configure()
        self.srv = self.world.start(listeners=count)
        self.plain, self.tls = tls_fixtures.listener_ports(self.srv)
        self.ctx = tls_fixtures.client_context(self.pki)
        self.a = file_fingerprint(self.pki.a_cert)
        self.b = file_fingerprint(self.pki.b_cert)

    def add_mailbox(self, user):
        return self.world.add_user(user, PASSWORD, messages())

    def configure(self):
        if self.processes != 1:
            self.world.config["server"]["processes"] = self.processes

    # -- sessions
    def open_sessions(self):
        """A pop3s session (alice) and an STLS session (bob), logged in, before the reload."""
        old_tls = tls_connect(self.world, self.tls[0], self.ctx)
        old_tls.login("alice", PASSWORD)
        old_stls = starttls(self.world, self.srv.connect(port=self.plain[0]), self.ctx)
        old_stls.login("bob", PASSWORD)
        return [(old_tls, "alice"), (old_stls, "bob")]

    def retrieve_all(self, conn, user):
        box = self.boxes[user]
        for n in range(1, len(box.messages) + 1):
            st, payload = conn.cmd_multi(f"RETR {n}")
            self.assertOk(st)
            # UIDL order is the store's; compare with the message the UIDL names.
            uidl = conn.cmd(f"UIDL {n}").split()[2]
            self.assertRetrieved(payload, box.by_uidl(uidl).content, f"{user}: RETR {n}")
        self.assertOk(conn.quit())
        self.assertEqual(box.contents(), self.before[user])

    # -- checks
    def reload_and_wait(self, count=1):
        self.srv.signal(signal.SIGHUP)
        self.srv.wait_log(RELOADED, count=count)

    def assertServes(self, fp, connections=1):
        """New pop3s and STLS connections (Python ssl and s_client) are shown `fp`."""
        for _ in range(connections):
            self.assertEqual(peer_fingerprint(self.tls[0], self.pki), fp)
            self.assertEqual(peer_fingerprint(self.plain[0], self.pki, starttls_first=True), fp)
        self.assertEqual(s_client_fingerprint(self.tls[0], self.pki), fp)
        self.assertEqual(s_client_fingerprint(self.plain[0], self.pki, starttls=True), fp)

    def new_session_works(self):
        conn = tls_connect(self.world, self.tls[0], self.ctx)
        conn.login("alice", PASSWORD)
        self.retrieve_all(conn, "alice")

    def check_certificate_reload(self, reloads=1, connections=1):
        self.assertServes(self.a)
        old = self.open_sessions()
        self.pki.install(self.pki.b_cert, self.pki.b_key)
        self.reload_and_wait(reloads)
        self.assertServes(self.b, connections)
        for conn, user in old:
            self.retrieve_all(conn, user)
        self.new_session_works()
        self.assertTrue(self.srv.alive())


class ForkModeReload(ReloadBase):
    """Fork mode: the master reloads; every later pre-auth process is forked with the new
    context, and the relays of sessions already running keep their TLS state."""

    world_as_root = True

    def setUp(self):
        if os.geteuid() != 0:
            missing("fork mode needs root")
        super().setUp()

    def add_mailbox(self, user):
        return fork_mode_mailbox(self.world, user, PASSWORD, messages())

    def configure(self):
        fork_mode_config(self.world)

    def test_sighup_serves_the_new_certificate(self):
        self.check_certificate_reload()


class WorkersReload(ReloadBase):
    """Two worker processes: each reloads; connections, whichever worker takes them, are
    shown the new certificate."""

    processes = 2

    def test_every_worker_serves_the_new_certificate(self):
        self.check_certificate_reload(reloads=2)
        pids = {m.group(1) for m in re.finditer(r"\[(\d+)\]: \w+: " + RELOADED, self.srv.log())}
        self.assertEqual(len(pids), 2, "not every worker reloaded:\n" + self.srv.log()[-3000:])
        # New connections until each worker has taken some: all see the new certificate.
        start = len(self.srv.log())
        handshakes = r"posternd\[(\d+)\]: debug: S?TLS established"
        for _ in range(50):
            self.assertEqual(peer_fingerprint(self.tls[0], self.pki), self.b)
            self.assertEqual(peer_fingerprint(self.plain[0], self.pki, starttls_first=True), self.b)
            served = set(re.findall(handshakes, self.srv.log()[start:]))
            if served >= pids:
                break
        self.assertEqual(served, pids, "connections did not reach every worker")


class ChainAndClientCaReload(ReloadBase):
    """`chain` and `client_ca` are read again too: the extra certificates sent, the CA names
    requested from clients and the CA that client certificates (AUTH EXTERNAL) must verify
    against change with them."""

    client_ca = True

    def configure(self):
        self.chain = self.pki.path("chain.pem")
        self.first_chain, _ = self.pki.make_ca("chain-one", "Postern Chain One")
        self.second_chain, _ = self.pki.make_ca("chain-two", "Postern Chain Two")
        self.second_client_ca, _ = self.pki.make_ca("client-ca-two", "Postern Client CA Two")
        tls_fixtures._replace_file(self.first_chain, self.chain)
        self.world.config["tls"]["chain"] = self.chain
        self.world.config["auth"].update({"mechanisms": ["PLAIN", "LOGIN", "EXTERNAL"],
                                          "external_user": "subject:CN"})
        ca_two = (self.second_client_ca, self.pki.path("client-ca-two.key"))
        self.second_client_cert = self.pki.issue("client-alice-two", "alice", "client", ca=ca_two)

    def external_login(self, cert_and_key):
        """AUTH EXTERNAL over pop3s with this client certificate: the status line."""
        cert, key = cert_and_key
        ctx = tls_fixtures.client_context(self.pki, cert=cert, key=key)
        conn = tls_connect(self.world, self.tls[0], ctx)
        st = conn.cmd("AUTH EXTERNAL =")
        conn.quit()
        return st

    def handshake_facts(self):
        res = s_client(self.tls[0], self.pki, quiet=False, extra=("-showcerts",))
        out = res.stdout.decode("latin-1")
        m = re.search(r"Acceptable client certificate CA names\n((?:.+\n)+?)(?:Requested|Client Certificate|Server Temp|Peer signing|---)", out)
        names = m.group(1) if m else ""
        return sent_certificates(res), names

    def test_chain_and_client_ca_are_reloaded(self):
        sent, names = self.handshake_facts()
        self.assertTrue(any("Postern Chain One" in s for s in sent), sent)
        self.assertIn("Postern Client CA", names)
        self.assertNotIn("Postern Client CA Two", names)
        first_client = (self.pki.client_cert, self.pki.client_key)
        self.assertOk(self.external_login(first_client))
        self.assertErr(self.external_login(self.second_client_cert))
        old = self.open_sessions()

        tls_fixtures._replace_file(self.second_chain, self.chain)
        tls_fixtures._replace_file(self.second_client_ca, self.pki.client_ca_cert)
        self.pki.install(self.pki.b_cert, self.pki.b_key)
        self.reload_and_wait()

        self.assertServes(self.b)
        sent, names = self.handshake_facts()
        self.assertTrue(any("Postern Chain Two" in s for s in sent), sent)
        self.assertFalse(any("Postern Chain One" in s for s in sent), sent)
        self.assertIn("Postern Client CA Two", names)
        for conn, user in old:
            self.retrieve_all(conn, user)
        # Client certificates are verified against the new client_ca only.
        self.assertOk(self.external_login(self.second_client_cert))
        self.assertErr(self.external_login(first_client))
        self.new_session_works()


class ReloadAfterPrivilegeDrop(ReloadBase):
    """Started as root with [server] user: the reload runs as that user. Files it may read
    are reloaded; a key only root can read fails the reload, which keeps the old certificate
    (as docs/tls.md says), and works once the file is readable."""

    def setUp(self):
        if os.geteuid() != 0:
            missing("needs root: the server starts as root and drops to [server] user")
        super().setUp()
        self.assertIn("user", self.world.config["server"])

    def test_reload_reads_files_the_dropped_user_can_read(self):
        owner = test_user()
        self.assertServes(self.a)
        old = self.open_sessions()
        # The new key, owned by root and private to it: the reload fails, A stays.
        with self.world.as_root():
            self.pki.install(self.pki.b_cert, self.pki.b_key)  # root's files, 0600
            os.chown(self.pki.server_cert, 0, owner.pw_gid)
            os.chmod(self.pki.server_cert, 0o640)
        self.srv.signal(signal.SIGHUP)
        self.srv.wait_log(r"SIGHUP: TLS reload failed, keeping the old certificate.*"
                          + re.escape(self.pki.server_key) + r".*Permission denied")
        self.assertServes(self.a)
        # Readable by the server's group: the next reload takes it.
        with self.world.as_root():
            os.chown(self.pki.server_key, 0, owner.pw_gid)
            os.chmod(self.pki.server_key, 0o640)
        self.reload_and_wait()
        self.assertServes(self.b)
        for conn, user in old:
            self.retrieve_all(conn, user)
        self.new_session_works()
