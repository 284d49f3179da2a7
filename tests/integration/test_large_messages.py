"""Messages larger than every buffer, byte-exact through RETR and TOP, in every process model
and over TLS: event mode with one process and with worker processes (plain, STLS, pop3s) and
fork mode (plain, and TLS through the pre-auth process's relay).

The messages are built so that the buffers' edges fall on the awkward bytes: a CRLF split
between two reads (its CR the last byte of every 4 KiB block of the file, and so of every 16 KiB
and 1 MiB read), lines starting with '.' right after such an edge, files of exactly 64 KiB and
1 MiB, a CRLF file of 1 MiB + 16 KiB whose 1 MiB read ends with a CR, and 200 KB of text. Every retrieval is compared, whole, with what the
stored file says the client must receive (the CRLF form, dot-stuffed); a single byte lost,
added or changed anywhere fails with the offset of the first difference.

Fork mode needs root (it switches to the mail owner): as an ordinary user those classes fail
with "needs root" through the harness's `missing`, as test_fork_mode.py does.
"""

import functools
import os

from postern_harness import (Msg, PosternTestCase, crlf, dot_stuff, missing, parse_listing,
                             test_user, top_body)
import tls_fixtures

PASSWORD = "Large-pw-1"
BLOCK = 4096  # every buffer of the server is a multiple of this (16 KiB relay, 1 MiB reads)


def _filler(n, seed):
    """n printable bytes, varying with seed."""
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ-_=+"
    return bytes(alphabet[(seed * 7 + i * 13) % len(alphabet)] for i in range(n))


def split_eol_message(size, eol, dot_after_edge=True):
    """A message of exactly `size` bytes whose line end sits on every 4 KiB edge: with
    eol=b"\\r\\n" the CR is the last byte of each block and the LF the first of the next; with
    b"\\n" the LF ends the block. The line after each edge starts with '.' (dot_after_edge)."""
    out = bytearray(b"From: large@example.org\nSubject: split line ends\n\n".replace(b"\n", eol))
    edges = list(range(BLOCK, size, BLOCK))
    n = 0
    for edge in edges:
        # Ordinary lines (some starting with '.') until close to the edge.
        while edge - 1 - len(out) > 200:
            n += 1
            out += (b"." if n % 5 == 0 else b"") + _filler(n % 150, n) + eol
        # The line whose end sits on the edge: CR (or LF) at edge-1.
        out += _filler(edge - 1 - len(out), edge) + eol
        # The line right after the edge.
        out += (b"." if dot_after_edge else b"x") + _filler(edge % 50, edge) + eol
    while len(out) < size - len(eol):
        take = min(100, size - len(eol) - len(out))
        out += _filler(take, len(out))
        if len(out) < size - len(eol):
            out += eol
    out += eol
    out = out[:size]
    if len(out) != size:
        raise AssertionError(f"message layout: {len(out)} != {size}")
    return bytes(out)


def text_message(size, seed):
    """About `size` bytes of LF text, one line in seven starting with '.', some '..' and a
    line holding only '.'."""
    out = bytearray(b"From: big@example.org\nSubject: big %d\n\n" % seed)
    n = 0
    while len(out) < size:
        n += 1
        if n % 97 == 0:
            out += b".\n"
        elif n % 7 == 0:
            out += b".." + _filler(n % 120, seed + n) + b"\n"
        else:
            out += _filler(n % 200, seed + n) + b"\n"
    return bytes(out)


@functools.cache
def _large_contents():
    return (
        (text_message(200 * 1000, 1), "new", ""),                          # 200 KB of text
        (split_eol_message((1 << 20) + 16 * 1024, b"\r\n"), "cur", "S"),   # CR ends the 1 MiB read
        (split_eol_message(1 << 20, b"\n"), "new", ""),                     # exactly 1 MiB
        (split_eol_message(64 * 1024, b"\n"), "new", ""),                   # exactly 64 KiB
        (split_eol_message(16 * 1024 * 5, b"\r\n", False), "new", ""),      # 80 KiB, no dots
        (b"Subject: small\n\nsmall\n", "new", ""),
    )


def large_messages():
    return [Msg(content, where, flags) for content, where, flags in _large_contents()]


def fork_mode_mailbox(world, user, password, messages):
    """A passwd-file user of a root World whose uid and gid are the test user's (fork mode
    switches the session to them), with a Maildir they own."""
    owner = test_user()
    home = world.path("mail", user)
    box = world.add_user(user, password, messages, home=home)
    world.passwd_lines[-1] = (f"{user}:{{PLAIN}}{password}:{owner.pw_uid}:{owner.pw_gid}"
                              f"::{home}::")
    world.write_passwd()
    for root, dirs, files in os.walk(home):
        for p in [root] + [os.path.join(root, x) for x in dirs + files]:
            os.lchown(p, owner.pw_uid, owner.pw_gid)
    return box


def fork_mode_config(world):
    """[server] keys of fork mode with a chroot of the test's own."""
    chroot = world.path("empty")
    os.makedirs(chroot, mode=0o555, exist_ok=True)
    world.config["server"].update({"process_model": "fork", "login_chroot": chroot})


class LargeBase(PosternTestCase):
    """A World with the large messages; subclasses say how the server runs."""

    def setUp(self):
        super().setUp()
        self.box = self.add_mailbox()
        self.before = self.box.contents()

    def add_mailbox(self):
        return self.world.add_user("alice", PASSWORD, large_messages())

    # -- checks
    def retrieve_everything(self, conn, login=True):
        """RETR of every message and TOP of each with 0 and 10 lines, and of the one over 1 MiB
        with all its lines, byte-exact; then QUIT (nothing deleted)."""
        if login:
            conn.login("alice", PASSWORD)
        st, body = conn.cmd_multi("UIDL")
        self.assertOk(st)
        listing = parse_listing(body)
        self.assertEqual(sorted(u for _, u in listing), sorted(m.uidl for m in self.box.messages))
        for n, uidl in listing:
            content = self.box.by_uidl(uidl).content
            st = conn.cmd(f"LIST {n}")
            self.assertEqual(st, f"+OK {n} {len(crlf(content))}")
            st, payload = conn.cmd_multi(f"RETR {n}")
            self.assertOk(st)
            self.assertRetrieved(payload, content, f"RETR {n} ({len(content)} bytes)")
            for lines in (0, 10) + ((100000,) if len(content) > 1 << 20 else ()):
                st, payload = conn.cmd_multi(f"TOP {n} {lines}")
                self.assertOk(st)
                expected = dot_stuff(top_body(content, lines))
                if payload != expected:
                    self.assertSameBytes(payload, expected, f"TOP {n} {lines}")
        self.assertOk(conn.quit())
        self.assertEqual(self.box.contents(), self.before)


class LargeMessageLayout(PosternTestCase):
    """The generated messages have the layout the other tests rely on."""

    def test_edges_fall_on_line_ends(self):
        size = (1 << 20) + 16 * 1024
        crlf_msg = split_eol_message(size, b"\r\n")
        self.assertEqual(len(crlf_msg), size)
        self.assertEqual(crlf_msg[(1 << 20) - 1:(1 << 20) + 1], b"\r\n")
        for edge in range(BLOCK, size, BLOCK):
            self.assertEqual(crlf_msg[edge - 1:edge + 1], b"\r\n", edge)
            self.assertEqual(crlf_msg[edge + 1:edge + 2], b".", edge)
        lf_msg = split_eol_message(64 * 1024, b"\n")
        self.assertEqual(len(lf_msg), 64 * 1024)
        for edge in range(BLOCK, 64 * 1024, BLOCK):
            self.assertEqual(lf_msg[edge - 1:edge + 1], b"\n.", edge)


class EventModeOneProcess(LargeBase):
    def test_plain(self):
        srv = self.world.start()
        self.retrieve_everything(srv.connect())


class EventModeWorkers(LargeBase):
    def setUp(self):
        super().setUp()
        self.pki = tls_fixtures.Pki(self.world.dir)
        count = tls_fixtures.configure_tls(self.world, self.pki, mode="ondemand", tls_listen=True)
        self.world.config["server"]["processes"] = 2
        self.srv = self.world.start(listeners=count)
        self.plain, self.tls = tls_fixtures.listener_ports(self.srv)
        self.ctx = tls_fixtures.client_context(self.pki)

    def test_plain_on_every_worker(self):
        # Sessions at once, so that both workers serve some.
        conns = [self.srv.connect(port=self.plain[0]) for _ in range(2)]
        for c in conns:
            self.retrieve_everything(c)

    def test_stls(self):
        conn = tls_fixtures.starttls(self.world, self.srv.connect(port=self.plain[0]), self.ctx)
        self.retrieve_everything(conn)

    def test_pop3s(self):
        self.retrieve_everything(tls_fixtures.tls_connect(self.world, self.tls[0], self.ctx))


class ForkMode(LargeBase):
    """Fork mode with a passwd-file user whose uid and gid are the test user's: the session
    process runs as that user; TLS sessions are relayed by the pre-auth process."""

    world_as_root = True

    def setUp(self):
        if os.geteuid() != 0:
            missing("fork mode needs root")
        super().setUp()
        self.pki = tls_fixtures.Pki(self.world.dir)
        count = tls_fixtures.configure_tls(self.world, self.pki, mode="ondemand", tls_listen=True)
        fork_mode_config(self.world)
        self.srv = self.world.start(listeners=count)
        self.plain, self.tls = tls_fixtures.listener_ports(self.srv)
        self.ctx = tls_fixtures.client_context(self.pki)

    def add_mailbox(self):
        return fork_mode_mailbox(self.world, "alice", PASSWORD, large_messages())

    def test_plain(self):
        self.retrieve_everything(self.srv.connect(port=self.plain[0]))

    def test_stls_through_the_relay(self):
        conn = tls_fixtures.starttls(self.world, self.srv.connect(port=self.plain[0]), self.ctx)
        self.retrieve_everything(conn)

    def test_pop3s_through_the_relay(self):
        self.retrieve_everything(tls_fixtures.tls_connect(self.world, self.tls[0], self.ctx))
