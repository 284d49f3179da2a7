"""mbox maildrops (docs/mbox.md) against the real posternd, real clients and real lockers.

Every check compares bytes: what a client received with the expected wire form of the
stored message (mboxo: a ">From " line start is served as "From "; the From_ separator
line and the mbox's blank line before the next separator are not part of a message), and
the spool file after an update with the file the update should have produced.

The spool directory and files belong to the test (root when run as root); the users are
virtual (passwd-file), the server runs in its default event mode.
"""

import collections
import os
import random
import re
import shutil
import subprocess
import threading
import time
import unittest

from postern_harness import missing, requires
from postern_harness import PosternTestCase, parse_listing, scaled, wire_body
from test_clients import client_form

PASSWORD = "Mb0x-pw"
USER = "alice"
FROM_LINE = b"From sender@example.org Tue Nov 14 22:13:20 2023\n"
IS_ROOT = os.geteuid() == 0


def needs(tool):
    return requires(shutil.which(tool), f"{tool} is not installed")


def unquote_mboxo(stored):
    """What a client receives (before CRLF conversion): ">From " at line start -> "From "."""
    return re.sub(rb"(?m)^>From ", b"From ", stored)


def wire_size(stored):
    return len(wire_body(unquote_mboxo(stored)))


def entry(stored, last=False, from_line=FROM_LINE):
    """One message as an MDA appends it: From_ line, the message, the separating blank line.

    A message without a final newline can only be the last one (nothing follows it)."""
    if last and not stored.endswith(b"\n"):
        return from_line + stored
    assert stored.endswith(b"\n"), "only the last message may lack a final newline"
    return from_line + stored + b"\n"


def build_spool(messages, prefix=b""):
    out = prefix
    for i, m in enumerate(messages):
        out += entry(m, last=(i == len(messages) - 1))
    return out


def msg(tag, body=b"Hello.\n", size=0):
    """A stored (LF) message with a unique Message-ID <tag@example.org>."""
    t = tag.encode() if isinstance(tag, str) else tag
    pad = b"".join(b"%05d padding line for %s to make the message bigger\n" % (i, t)
                   for i in range(size))
    return (b"From: Sender <sender@example.org>\nTo: alice@example.org\n"
            b"Message-ID: <" + t + b"@example.org>\nSubject: " + t + b"\n\n" + body + pad)


def odd_messages():
    """The messages of test 1: mboxo quoting, CRLF, dots, and no final newline (last)."""
    return [
        msg("plain"),
        msg("quoted", b"first paragraph\n\n>From the quoted line\n>>From stays quoted\n"
                      b"From inside a paragraph is no separator\n"),
        b"From: crlf@example.org\r\nMessage-ID: <crlf@example.org>\r\nSubject: crlf\r\n\r\n"
        b"line one\r\nline two\r\n",
        msg("dots", b".\n..\n.x\nx.\n"),
        msg("nonl", b"the last line has no line end"),
    ]


MESSAGE_ID = re.compile(rb"(?mi)^Message-ID: <([^>]*)>")


def parse_spool(data):
    """[(From_ line, content)] using the separator rule of docs/mbox.md (first line, or a
    "From " line after a blank line) and dropping the blank line before each separator."""
    lines = data.splitlines(keepends=True)
    starts = []
    prev_blank = True
    for i, line in enumerate(lines):
        if line.startswith(b"From ") and prev_blank:
            starts.append(i)
        prev_blank = line in (b"\n", b"\r\n")
    out = []
    for k, s in enumerate(starts):
        e = starts[k + 1] if k + 1 < len(starts) else len(lines)
        if e - 1 > s and lines[e - 1] in (b"\n", b"\r\n"):
            e -= 1  # the mbox's blank line before the next separator (or at the end)
        out.append((lines[s], b"".join(lines[s + 1:e])))
    prefix = b"".join(lines[:starts[0]]) if starts else data
    return prefix, out


class MboxBase(PosternTestCase):
    locking = ["dotlock", "fcntl"]
    lock_timeout = None

    def setUp(self):
        super().setUp()
        self.spool_dir = self.world.path("spool")
        os.makedirs(self.spool_dir, exist_ok=True)
        self.configure(self.spool_dir)
        self.world.add_passwd_line(f"{USER}:{{PLAIN}}{PASSWORD}::::::")
        self.env = dict(os.environ, HOME=self.world.path(), LC_ALL="C", LANG="C")
        self.env.pop("MAIL", None)

    def configure(self, spool_dir):
        self.spool_dir = spool_dir
        self.spool = os.path.join(spool_dir, USER)
        self.world.config["mail"] = {"location": f"mbox:{spool_dir}/%u",
                                     "mbox_locking": list(self.locking)}
        if self.lock_timeout:
            self.world.config["mail"]["mbox_lock_timeout"] = self.lock_timeout

    def write_spool(self, data):
        with open(self.spool, "wb") as f:
            f.write(data)

    def read_spool(self):
        with open(self.spool, "rb") as f:
            return f.read()

    def session(self, srv):
        conn = srv.connect()
        conn.login(USER, PASSWORD)
        return conn

    def journal_files(self):
        return sorted(n for n in os.listdir(self.spool_dir) if "postern-journal" in n)

    def run_client(self, argv, timeout=None):
        res = subprocess.run(argv, capture_output=True, timeout=timeout or scaled(120),
                             stdin=subprocess.DEVNULL, env=self.env, cwd=self.world.path())
        self.last_output = (res.stdout + res.stderr).decode("utf-8", "replace")
        return res

    def assertClientGot(self, delivered, expected):
        got = collections.Counter(delivered)
        want = collections.Counter(expected)
        if got != want:
            lines = [f"{len(delivered)} delivered, {len(expected)} expected"]
            lines += [f"unexpected: {d[:300]!r}" for d in delivered if d not in want]
            lines += [f"missing:    {w[:300]!r}" for w in expected if w not in got]
            self.fail("client delivered different bytes\n" + "\n".join(lines)
                      + "\n--- client output ---\n" + self.last_output[-4000:])


# ---------------------------------------------------------------------------------------------
# 1. Real clients

class Clients(MboxBase):
    def setUp(self):
        super().setUp()
        self.stored = odd_messages()
        self.original = build_spool(self.stored)
        self.write_spool(self.original)
        self.srv = self.world.start()
        self.expected = [unquote_mboxo(m) for m in self.stored]

    def test_raw_list_uidl_retr(self):
        # The fixture itself: the parser of this file sees the five messages.
        prefix, parsed = parse_spool(self.original)
        self.assertEqual(prefix, b"")
        self.assertEqual([c for _, c in parsed], self.stored)
        with self.session(self.srv) as c:
            st = c.cmd("STAT")
            self.assertEqual(st, "+OK %d %d" % (len(self.stored),
                                                sum(wire_size(m) for m in self.stored)))
            st, body = c.cmd_multi("LIST")
            self.assertOk(st)
            self.assertSameListing(body, [(i + 1, str(wire_size(m)))
                                          for i, m in enumerate(self.stored)], "LIST")
            st, body = c.cmd_multi("UIDL")
            self.assertOk(st)
            uidls = [u for _, u in parse_listing(body)]
            self.assertEqual(len(set(uidls)), len(self.stored), uidls)
            for i, m in enumerate(self.expected):
                st, body = c.cmd_multi(f"RETR {i + 1}")
                self.assertOk(st)
                self.assertRetrieved(body, m, f"RETR {i + 1}")
            self.assertOk(c.quit())
        self.assertSameBytes(self.read_spool(), self.original, "spool after a read-only session")
        # UIDLs are stable across sessions.
        with self.session(self.srv) as c:
            st, body = c.cmd_multi("UIDL")
            self.assertSameListing(body, list(enumerate(uidls, 1)), "UIDL in a later session")
            c.quit()

    @needs("curl")
    def test_curl(self):
        for i, m in enumerate(self.expected):
            with self.subTest(msg=i + 1):
                res = self.run_client(["curl", "-s", "-S", "--max-time", str(int(scaled(60))),
                                       "--noproxy", "*", "-u", f"{USER}:{PASSWORD}",
                                       f"pop3://127.0.0.1:{self.srv.port}/{i + 1}"])
                self.assertEqual(res.returncode, 0, self.last_output)
                self.assertSameBytes(res.stdout, wire_body(m), f"curl RETR {i + 1}")
        self.srv.wait_events("logout", count=len(self.expected), user=USER, reason="QUIT")
        self.assertSameBytes(self.read_spool(), self.original, "spool after curl")

    def fetchmail(self, keep):
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
                    f"poll 127.0.0.1 with proto POP3 port {self.srv.port} and timeout "
                    f"{int(scaled(60))}\n"
                    "  auth password no dns no envelope\n"
                    f'  user "{USER}" there with password "{PASSWORD}" is "localuser" here\n'
                    f"  options {'keep' if keep else 'no keep'} fetchall no rewrite stripcr"
                    " sslproto ''\n"
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
            os.unlink(os.path.join(out, name))
        return res, delivered

    @needs("fetchmail")
    def test_fetchmail_keep_then_delete(self):
        res, delivered = self.fetchmail(keep=True)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertClientGot(delivered, [client_form(m) for m in self.expected])
        self.srv.wait_events("logout", count=1, user=USER, reason="QUIT")
        self.assertSameBytes(self.read_spool(), self.original, "spool after fetchmail keep")

        res, delivered = self.fetchmail(keep=False)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertClientGot(delivered, [client_form(m) for m in self.expected])
        self.srv.wait_events("logout", count=2, user=USER, reason="QUIT")
        self.assertTrue(os.path.isfile(self.spool), "the spool file must remain")
        self.assertSameBytes(self.read_spool(), b"", "spool after fetchmail delete")
        self.assertEqual(self.journal_files(), [])
        self.assertFalse(os.path.exists(self.spool + ".lock"))

        res, delivered = self.fetchmail(keep=False)
        self.assertEqual(res.returncode, 1, self.last_output)  # no mail
        self.assertEqual(delivered, [])

    @needs("mpop")
    def test_mpop(self):
        home = self.world.path("mpop")
        dest = os.path.join(home, "Maildir")
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(dest, sub))
        rc = os.path.join(home, "mpoprc")
        with open(rc, "w") as f:
            f.write("defaults\naccount test\nhost 127.0.0.1\n"
                    f"port {self.srv.port}\ntimeout {int(scaled(60))}\n"
                    f"tls off\nauth user\nuser {USER}\npassword {PASSWORD}\n"
                    f"delivery maildir {dest}\nkeep on\nreceived_header off\n"
                    f"uidls_file {home}/uidls\n")
        os.chmod(rc, 0o600)
        res = self.run_client(["mpop", "-C", rc, "-q", "test"])
        self.assertEqual(res.returncode, 0, self.last_output)
        delivered = []
        for sub in ("new", "cur"):
            for name in sorted(os.listdir(os.path.join(dest, sub))):
                with open(os.path.join(dest, sub, name), "rb") as f:
                    delivered.append(f.read())
        self.assertClientGot(delivered, [client_form(m) for m in self.expected])
        self.srv.wait_events("logout", count=1, user=USER, reason="QUIT")
        self.assertSameBytes(self.read_spool(), self.original, "spool after mpop keep")


# ---------------------------------------------------------------------------------------------
# 2. Concurrent delivery under a real dotlock

@needs("dotlockfile")
class ConcurrentDelivery(MboxBase):
    def test_delivery_during_sessions(self):
        rng = random.Random(20231114)
        initial = [msg(f"init{i}", size=rng.randrange(0, 40)) for i in range(5)]
        contents = {f"init{i}".encode(): m for i, m in enumerate(initial)}
        self.write_spool(b"".join(entry(m) for m in initial))
        srv = self.world.start()
        lock = self.spool + ".lock"
        delivered = []
        errors = []
        stop = threading.Event()

        drng = random.Random(4155)
        during = [0]

        def deliver():
            try:
                for i in range(300):
                    if stop.is_set():
                        break
                    tag = f"conc{i}".encode()
                    m = msg(tag, size=drng.randrange(0, 60))
                    contents[tag] = m
                    r = subprocess.run(["dotlockfile", "-l", "-r", "10", "-i", "1", lock],
                                       capture_output=True, timeout=scaled(60))
                    if r.returncode != 0:
                        errors.append(f"dotlockfile -l: {r.returncode} {r.stderr!r}")
                        return
                    try:
                        with open(self.spool, "ab") as f:
                            f.write(entry(m))
                            f.flush()
                            os.fsync(f.fileno())
                        delivered.append(tag)
                    finally:
                        r = subprocess.run(["dotlockfile", "-u", lock], capture_output=True,
                                           timeout=scaled(30))
                        if r.returncode != 0:
                            errors.append(f"dotlockfile -u: {r.returncode} {r.stderr!r}")
                    time.sleep(drng.uniform(0, 0.03))
            except Exception as e:  # reported by the main thread
                errors.append(repr(e))

        t = threading.Thread(target=deliver, daemon=True)
        t.start()
        deleted = set()
        last_left = 0
        try:
            deadline = time.monotonic() + scaled(40)
            for rnd in range(300):
                # At least 20 rounds, and on until 15 messages came in while sessions ran
                # (a delivery that meets Postern's dotlock sleeps 1 s in dotlockfile).
                if rnd >= 20 and (len(delivered) >= 15 or time.monotonic() > deadline
                                  or not t.is_alive()):
                    break
                with self.session(srv) as c:
                    st, body = c.cmd_multi("LIST")
                    self.assertOk(st)
                    listing = parse_listing(body)
                    if rnd and len(listing) != last_left:
                        during[0] += 1
                    pick = [n for n, _ in listing if rng.random() < 0.3]
                    last_left = len(listing) - len(pick)
                    for n in pick:
                        st, body = c.cmd_multi(f"RETR {n}")
                        self.assertOk(st, f"round {rnd}: RETR {n}: {st}")
                        m = MESSAGE_ID.search(body)
                        self.assertIsNotNone(m, body[:200])
                        tag = m.group(1).split(b"@")[0]
                        self.assertNotIn(tag, deleted, f"deleted message {tag!r} is back")
                        self.assertRetrieved(body, contents[tag], f"RETR {n} ({tag!r})")
                        self.assertOk(c.cmd(f"DELE {n}"))
                        deleted.add(tag)
                    st = c.quit()
                    self.assertOk(st, f"round {rnd}: QUIT: {st}")
                time.sleep(rng.uniform(0.02, 0.08))  # let deliveries interleave
        finally:
            stop.set()
            t.join(scaled(120))
        self.assertFalse(t.is_alive(), "delivery thread did not finish")
        self.assertEqual(errors, [])
        self.assertGreaterEqual(len(delivered), 15)
        self.assertGreater(len(deleted), 0)

        prefix, parsed = parse_spool(self.read_spool())
        self.assertEqual(prefix, b"")
        seen = collections.Counter()
        for from_line, content in parsed:
            self.assertEqual(from_line, FROM_LINE)
            m = MESSAGE_ID.search(content)
            self.assertIsNotNone(m, f"torn message: {content[:200]!r}")
            tag = m.group(1).split(b"@")[0]
            seen[tag] += 1
            self.assertSameBytes(content, contents[tag], f"message {tag!r} in the spool")
        expect = set(contents) - deleted
        self.assertEqual({k for k, v in seen.items() if v > 1}, set(), "duplicated messages")
        self.assertEqual(set(seen) & deleted, set(), "deleted messages still present")
        self.assertEqual(set(seen), expect, "kept messages missing")
        self.assertEqual(self.journal_files(), [])
        self.assertFalse(os.path.exists(self.spool + ".lock"))
        print(f"\n  delivered {len(delivered)}, deleted {len(deleted)}, "
              f"{during[0]} sessions saw new mail", end=" ")


# ---------------------------------------------------------------------------------------------
# 3. kill -9 around QUIT: test_crash_trials.py places the kill at every step of the update
# (and of its replay) and asserts that both the roll-back and the roll-forward path ran.


# ---------------------------------------------------------------------------------------------
# 4. Stale and live dotlocks

class Dotlocks(MboxBase):
    lock_timeout = "2s"

    def setUp(self):
        super().setUp()
        self.msgs = [msg("one"), msg("two")]
        self.original = build_spool(self.msgs)
        self.write_spool(self.original)
        self.srv = self.world.start()
        self.lock = self.spool + ".lock"

    def login_works(self):
        with self.session(self.srv) as c:
            st = c.cmd("STAT")
            self.assertEqual(st, "+OK 2 %d" % sum(wire_size(m) for m in self.msgs))
            st, body = c.cmd_multi("RETR 2")
            self.assertRetrieved(body, self.msgs[1])
            self.assertOk(c.quit())

    def dead_pid(self):
        p = subprocess.Popen(["true"])
        p.wait(30)
        return p.pid

    def test_stale_dotlock_with_dead_pid(self):
        pid = self.dead_pid()
        with open(self.lock, "w") as f:
            f.write(f"{pid}\n")
        self.login_works()
        self.assertFalse(os.path.exists(self.lock), "stale dotlock not broken/released")
        self.assertSameBytes(self.read_spool(), self.original, "spool")

    def test_stale_dotlock_old_without_pid(self):
        for content in (b"", b"0\n"):
            with self.subTest(content=content):
                with open(self.lock, "wb") as f:
                    f.write(content)
                old = time.time() - 3600
                os.utime(self.lock, (old, old))
                self.login_works()
                self.assertFalse(os.path.exists(self.lock))

    @needs("dotlockfile")
    def test_live_dotlock(self):
        r = subprocess.run(["dotlockfile", "-l", "-r", "0", self.lock], capture_output=True,
                           timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        held = True
        try:
            with open(self.lock, "rb") as f:
                held_content = f.read()
            c = self.srv.connect()
            self.assertOk(c.cmd(f"USER {USER}"))
            t0 = time.monotonic()
            st = c.cmd(f"PASS {PASSWORD}", timeout=scaled(20))
            elapsed = time.monotonic() - t0
            # A dotlock held by a live process is another program's lock: [IN-USE].
            self.assertTrue(st.startswith("-ERR [IN-USE]"), f"PASS with a live dotlock: {st!r}")
            self.assertGreaterEqual(elapsed, 1.5, "gave up before mbox_lock_timeout")
            c.close()
            # The live lock was not broken nor replaced.
            with open(self.lock, "rb") as f:
                self.assertEqual(f.read(), held_content)
            r = subprocess.run(["dotlockfile", "-u", self.lock], capture_output=True,
                               timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            held = False
            self.login_works()
        finally:
            if held:
                subprocess.run(["dotlockfile", "-u", self.lock], capture_output=True,
                               timeout=30)
        self.assertSameBytes(self.read_spool(), self.original, "spool")


# ---------------------------------------------------------------------------------------------
# 5. Odd spools

class OddSpools(MboxBase):
    def test_garbage_prefix_kept_intact(self):
        garbage = (b"This is not a message.\nFromage is no separator\n"
                   b"X-Junk: left by some tool\n\n")
        msgs = [msg("g1"), msg("g2", b"text\nFrom inside a paragraph\n"), msg("g3")]
        data = build_spool(msgs, prefix=garbage)
        self.write_spool(data)
        srv = self.world.start()
        with self.session(srv) as c:
            self.assertEqual(c.cmd("STAT"), "+OK 3 %d" % sum(wire_size(m) for m in msgs))
            for i, m in enumerate(msgs):
                st, body = c.cmd_multi(f"RETR {i + 1}")
                self.assertRetrieved(body, unquote_mboxo(m), f"RETR {i + 1}")
            self.assertOk(c.cmd("DELE 1"))
            self.assertOk(c.quit())
        self.assertSameBytes(self.read_spool(), build_spool(msgs[1:], prefix=garbage),
                             "spool after DELE 1")
        with self.session(srv) as c:
            self.assertEqual(c.cmd("STAT"), "+OK 2 %d" % sum(wire_size(m) for m in msgs[1:]))
            self.assertOk(c.cmd("DELE 1"))
            self.assertOk(c.cmd("DELE 2"))
            self.assertOk(c.quit())
        self.assertSameBytes(self.read_spool(), garbage, "spool after deleting everything")
        with self.session(srv) as c:
            self.assertEqual(c.cmd("STAT"), "+OK 0 0")
            self.assertOk(c.quit())
        self.assertEqual(self.journal_files(), [])

    def test_empty_file(self):
        self.write_spool(b"")
        srv = self.world.start()
        with self.session(srv) as c:
            self.assertEqual(c.cmd("STAT"), "+OK 0 0")
            st, body = c.cmd_multi("LIST")
            self.assertOk(st)
            self.assertEqual(body, b"")
            self.assertErr(c.cmd("DELE 1"))
            self.assertOk(c.quit())
        self.assertSameBytes(self.read_spool(), b"", "empty spool")

    def test_missing_spool(self):
        srv = self.world.start()
        with self.session(srv) as c:
            self.assertEqual(c.cmd("STAT"), "+OK 0 0")
            st, body = c.cmd_multi("UIDL")
            self.assertOk(st)
            self.assertEqual(body, b"")
            self.assertOk(c.quit())
        self.assertFalse(os.path.lexists(self.spool), "a missing spool must not be created")
        self.assertFalse(os.path.lexists(self.spool + ".lock"))


# ---------------------------------------------------------------------------------------------
# 6. Full disk

def _mount_tmpfs(world, path, size):
    """Mounts a tmpfs owned by the World's mail owner (root runs only)."""
    if not IS_ROOT or not shutil.which("mount"):
        return False
    owner = f",uid={world.owner.pw_uid},gid={world.owner.pw_gid}" if world.owner else ""
    try:
        with world.as_root():
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755{owner}",
                                "tmpfs", path], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def _umount(world, path):
    with world.as_root():
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)


class FullDisk(MboxBase):
    def setUp(self):
        super().setUp()
        self.mnt = self.world.path("tmpfs")
        os.makedirs(self.mnt)
        if not _mount_tmpfs(self.world, self.mnt, "256k"):
            missing("needs root and a mountable tmpfs")
        self.addCleanup(lambda: _umount(self.world, self.mnt))
        self.configure(self.mnt)

    def fill(self, msgs):
        data = build_spool(msgs)
        self.write_spool(data)
        # Leave little free space: a filler file takes most of what the spool does not.
        st = os.statvfs(self.mnt)
        free = st.f_bavail * st.f_frsize
        filler = os.path.join(self.mnt, "filler")
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, free - 16 * 1024))
        return data

    def run_dele(self, n, msgs, data):
        srv = self.world.start()
        with self.session(srv) as c:
            self.assertEqual(c.cmd("STAT"), "+OK %d %d" % (len(msgs),
                                                          sum(wire_size(m) for m in msgs)))
            self.assertOk(c.cmd(f"DELE {n}"))
            st = c.quit()
        after = self.read_spool()
        if st.startswith("+OK"):
            self.assertSameBytes(after, build_spool(msgs[:n - 1] + msgs[n:]),
                                 "spool after a successful update")
        else:
            self.assertTrue(st.startswith("-ERR [SYS/TEMP]"), f"QUIT: {st!r}")
            self.assertSameBytes(after, data, "spool after a failed update")
        self.assertEqual(self.journal_files(), [], "journal files left on a full disk")
        with self.session(srv) as c:
            prefix, parsed = parse_spool(after)
            self.assertEqual(c.cmd("STAT").split()[1], str(len(parsed)))
            self.assertOk(c.quit())
        return st

    def test_dele_first_on_full_disk(self):
        msgs = [msg(f"d{i}", size=500) for i in range(5)]  # about 5 x 30 KB
        data = self.fill(msgs)
        st = self.run_dele(1, msgs, data)
        print(f"\n  full disk, DELE 1: {st}", end=" ")

    def test_dele_last_on_full_disk(self):
        msgs = [msg(f"e{i}", size=500) for i in range(5)]
        data = self.fill(msgs)
        st = self.run_dele(5, msgs, data)
        print(f"\n  full disk, DELE 5: {st}", end=" ")


if __name__ == "__main__":
    unittest.main()
