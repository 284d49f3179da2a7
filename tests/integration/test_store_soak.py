"""Randomized long-running trial of the mbox and Maildir stores against the real posternd.

Each round mixes what really happens to a mailbox: deliveries, in-place edits by another
program (mutt deleting a message, flipping a status header of the same length, swapping two
messages; an IMAP server renaming or removing Maildir files, a restore rewriting one), POP3
sessions that read, delete and quit, and kill -9 of the server in the middle of QUIT. Every
answer is compared with a fresh scan of the files made by this test:

- LIST at login equals the wire sizes of the messages in the file at that moment (for a
  Maildir file rewritten in place, once the server has opened it since: docs/storage.md);
- a UIDL never names two different messages (Message-IDs) over the whole run;
- RETR answers either exactly the message LIST described, or -ERR;
- QUIT +OK removes exactly the messages the session deleted, and those only if they are
  still the bytes the client was shown; QUIT -ERR removes nothing;
- a session killed during QUIT leaves, after the next login's recovery, either the state
  before the QUIT or the state after it, plus everything delivered meanwhile: no message lost,
  none duplicated, none resurrected.

The run is bounded: POSTERN_SOAK_SECONDS (default 30 per store; a sanitizer build runs fewer
rounds) and a round limit. POSTERN_SOAK_SEED replays a run; the seed is printed on failure.
"""

import collections
import os
import random
import re
import signal
import time

from postern_harness import Closed, PosternTestCase, scaled, wire_body, octets
from test_mbox import FROM_LINE, PASSWORD, USER, parse_spool, unquote_mboxo

SECONDS = float(os.environ.get("POSTERN_SOAK_SECONDS") or 30)
MAX_ROUNDS = 3000
MESSAGE_ID = re.compile(rb"(?mi)^Message-ID: <([^>]*)>")


def message_id(content):
    m = MESSAGE_ID.search(content)
    return m.group(1) if m else None


class Soak:
    """What every store's trial shares: the seeded random source, the deadline and the
    bookkeeping of UIDLs seen."""

    def __init__(self, test):
        self.test = test
        seed = os.environ.get("POSTERN_SOAK_SEED")
        self.seed = int(seed) if seed else random.SystemRandom().randrange(1 << 32)
        self.rng = random.Random(self.seed)
        self.deadline = time.monotonic() + SECONDS  # a sanitizer build runs fewer rounds
        self.serial = 0
        self.uidl_owner = {}  # UIDL -> Message-ID
        self.stats = collections.Counter()
        self.log = collections.deque(maxlen=40)

    def note(self, what):
        self.log.append(what)

    def fail(self, what):
        self.test.fail(f"{what}\nseed {self.seed} (POSTERN_SOAK_SEED replays it); last steps:\n  "
                       + "\n  ".join(self.log))

    def check(self, cond, what):
        if not cond:
            self.fail(what)

    def rounds(self):
        for r in range(MAX_ROUNDS):
            if time.monotonic() >= self.deadline:
                break
            self.stats["rounds"] += 1
            yield r
        print(f"\n[soak seed {self.seed}: {dict(sorted(self.stats.items()))}]", flush=True)

    def new_message(self, extra=b""):
        """A list post: the same sender, the same footer; only the Message-ID and the body
        length tell messages apart."""
        self.serial += 1
        body = b"".join(b"line %d of the digest\n" % i for i in range(self.rng.randrange(1, 40)))
        if self.rng.random() < 0.2:
            body += b">From a quoted line\n"
        if self.rng.random() < 0.2:
            body += b".a line with a leading dot\n"
        return (b"From: list@example.org\nTo: alice@example.org\nSubject: [list] digest\n"
                b"Message-ID: <soak-%d@example.org>\nX-Status: O\n" % self.serial
                + extra + b"\n" + body + b"-- \nThe list footer, the same in every post.\n")

    def check_uidls(self, uidls, contents):
        """Each UIDL names one Message-ID for the whole run."""
        self.check(len(set(uidls)) == len(uidls), f"duplicate UIDLs in one listing: {uidls}")
        for u, c in zip(uidls, contents):
            mid = message_id(c)
            owner = self.uidl_owner.setdefault(u, mid)
            self.check(owner == mid, f"UIDL {u} named {owner!r} before and now {mid!r}")


def listing(conn, command):
    st, body = conn.cmd_multi(command)
    if not st.startswith("+OK"):
        return st, None
    rows = [line.split(b" ", 1) for line in body.split(b"\r\n") if line]
    return st, [r[1].decode() for r in rows]


def unstuff(body):
    if body.startswith(b".."):
        body = body[1:]
    return body.replace(b"\r\n..", b"\r\n.")


class MboxSoak(PosternTestCase):
    """mbox under mutt-like edits, deliveries and crashes."""

    def setUp(self):
        super().setUp()
        self.spool_dir = self.world.path("spool")
        os.makedirs(self.spool_dir)
        self.spool = os.path.join(self.spool_dir, USER)
        self.world.config["mail"] = {"location": f"mbox:{self.spool_dir}/%u",
                                     "mbox_locking": ["dotlock", "fcntl"]}
        self.world.add_passwd_line(f"{USER}:{{PLAIN}}{PASSWORD}::::::")
        self.config_path = self.world.write_config()

    # -- the file, as another program sees it
    def read(self):
        try:
            with open(self.spool, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def messages(self):
        prefix, parsed = parse_spool(self.read())
        self.soak.check(prefix == b"", f"garbage before the first message: {prefix[:200]!r}")
        for from_line, _ in parsed:
            self.soak.check(from_line == FROM_LINE, f"torn separator {from_line[:200]!r}")
        return [c for _, c in parsed]

    def locked(self, edit):
        """Runs edit() under the dotlock, as a delivery agent or mutt would."""
        lock = self.spool + ".lock"
        deadline = time.monotonic() + scaled(10)
        while True:
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:
                self.break_if_stale(lock)
                self.soak.check(time.monotonic() < deadline, "the dotlock stayed taken")
                time.sleep(0.01)
        try:
            os.write(fd, b"%d\n" % os.getpid())
            edit()
        finally:
            os.close(fd)
            os.unlink(lock)

    @staticmethod
    def break_if_stale(lock):
        """A delivery agent's rule (liblockfile): a dotlock whose pid is dead is broken."""
        try:
            with open(lock, "rb") as f:
                pid = int(f.read().split()[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            os.unlink(lock)
        except (OSError, ValueError, IndexError):
            pass  # gone meanwhile, being written, or alive

    def write_in_place(self, msgs):
        """mutt's way: the same inode, rewritten from the start and truncated."""
        data = b"".join(FROM_LINE + m + b"\n" for m in msgs)

        def rewrite():
            with open(self.spool, "r+b" if os.path.exists(self.spool) else "wb") as f:
                f.write(data)
                f.truncate()
        self.locked(rewrite)

    def deliver(self, count):
        added = [self.soak.new_message() for _ in range(count)]

        def append():
            with open(self.spool, "ab") as f:
                f.write(b"".join(FROM_LINE + m + b"\n" for m in added))
        self.locked(append)
        self.soak.note(f"delivered {[message_id(m) for m in added]}")
        return added

    def foreign_edit(self):
        msgs = self.messages()
        if not msgs:
            return
        kind = self.soak.rng.choice(["delete", "flag", "swap"])
        i = self.soak.rng.randrange(len(msgs))
        if kind == "delete":
            del msgs[i]
        elif kind == "flag":
            old = msgs[i]
            msgs[i] = (old.replace(b"X-Status: O\n", b"X-Status: A\n", 1) if b"X-Status: O\n" in old
                       else old.replace(b"X-Status: A\n", b"X-Status: O\n", 1))
        elif len(msgs) > 1:
            j = self.soak.rng.randrange(len(msgs))
            msgs[i], msgs[j] = msgs[j], msgs[i]
        self.write_in_place(msgs)
        self.soak.stats["foreign edits"] += 1
        self.soak.note(f"foreign {kind} at {i + 1}")

    def assert_same(self, got, want, what):
        c_got = collections.Counter(got)
        c_want = collections.Counter(want)
        if c_got != c_want:
            lost = [message_id(m) for m in (c_want - c_got)]
            extra = [message_id(m) for m in (c_got - c_want)]
            self.soak.fail(f"{what}: lost {lost}, unexpected {extra}")

    # -- one session
    def session(self, kill_at_quit):
        srv = self.world.inetd(self.config_path)
        c = srv.conn
        c.read_greeting()
        c.login(USER, PASSWORD)
        shown = self.messages()  # nothing else writes while this test's thread is here
        st, sizes = listing(c, "LIST")
        self.soak.check(st.startswith("+OK"), f"LIST: {st}")
        want = [str(len(wire_body(unquote_mboxo(m)))) for m in shown]
        self.soak.check(sizes == want, f"LIST {sizes} but the file holds sizes {want}")
        st, uidls = listing(c, "UIDL")
        self.soak.check(st.startswith("+OK"), f"UIDL: {st}")
        self.soak.check_uidls(uidls, shown)
        self.soak.note(f"session lists {[message_id(m) for m in shown]}")
        rng = self.soak.rng
        if shown and rng.random() < 0.5:
            self.foreign_edit()
        if rng.random() < 0.5:
            self.deliver(rng.randrange(1, 3))
        deleted = set()
        for n in rng.sample(range(len(shown)), k=min(len(shown), rng.randrange(0, 4))):
            st = c.cmd(f"RETR {n + 1}")
            if st.startswith("+OK"):
                body = unstuff(c.read_body())
                self.soak.check(body == wire_body(unquote_mboxo(shown[n])),
                                f"RETR {n + 1} sent other bytes than the message listed")
            else:
                self.soak.stats["RETR -ERR"] += 1
                self.soak.note(f"RETR {n + 1}: {st}")
            if rng.random() < 0.7:
                self.soak.check(c.cmd(f"DELE {n + 1}").startswith("+OK"), "DELE refused")
                deleted.add(n)
        before = self.messages()
        after = list(before)
        for n in deleted:
            if shown[n] in after:
                after.remove(shown[n])
        self.soak.note(f"QUIT deleting {[message_id(shown[n]) for n in sorted(deleted)]}"
                       + (" (killed)" if kill_at_quit else ""))
        if kill_at_quit:
            self.soak.stats["killed at QUIT"] += 1
            c.send(b"QUIT\r\n")
            time.sleep(rng.random() * 0.004)
            srv.proc.send_signal(signal.SIGKILL)
            srv.wait_exit()
            return before, after
        try:
            st = c.cmd("QUIT")
        except Closed:
            self.soak.fail("the server closed the connection at QUIT")
        srv.wait_exit()
        now = self.messages()
        self.soak.stats["QUIT " + st[:4].strip()] += 1
        if st.startswith("+OK"):
            self.soak.check(all(shown[n] in before for n in deleted),
                            f"QUIT {st} though a deleted message had changed")
            self.assert_same(now, after, f"after QUIT {st}")
        else:
            self.assert_same(now, before, f"after QUIT {st}")
        return None

    def test_random_rounds(self):
        self.soak = Soak(self)
        self.write_in_place([self.soak.new_message() for _ in range(6)])
        pending = None  # (state before, state after) of a killed QUIT, plus mail since
        for _ in self.soak.rounds():
            rng = self.soak.rng
            delivered = self.deliver(rng.randrange(0, 3)) if rng.random() < 0.6 else []
            if pending is None and rng.random() < 0.3:
                self.foreign_edit()
            if pending is not None:
                before, after = pending
                pending = None
                # The next login recovers; this session's listing must be one of the two states.
                srv = self.world.inetd(self.config_path)
                srv.conn.read_greeting()
                srv.conn.login(USER, PASSWORD)
                now = self.messages()
                srv.conn.cmd("QUIT")
                srv.wait_exit()
                c_now = collections.Counter(now)
                if c_now != collections.Counter(before + delivered):
                    self.assert_same(now, after + delivered, "after recovery of a killed QUIT")
                continue
            pending = self.session(kill_at_quit=rng.random() < 0.25)
        self.assertGreater(self.soak.serial, 6)


class MaildirSoak(PosternTestCase):
    """Maildir under deliveries, IMAP-like renames and removals, and in-place rewrites."""

    def setUp(self):
        super().setUp()
        self.box = self.world.add_user(USER, PASSWORD)
        self.config_path = self.world.write_config()

    def files(self):
        """{path: bytes} of every message file in new/ and cur/."""
        out = {}
        for sub in ("new", "cur"):
            d = os.path.join(self.box.path, sub)
            for name in os.listdir(d):
                with open(os.path.join(d, name), "rb") as f:
                    out[os.path.join(sub, name)] = f.read()
        return out

    def deliver(self):
        m = self.soak.new_message()
        self.box.deliver(m)
        self.soak.note(f"delivered {message_id(m)}")

    def foreign_edit(self):
        names = sorted(self.files())
        if not names:
            return
        rng = self.soak.rng
        name = rng.choice(names)
        path = os.path.join(self.box.path, name)
        kind = rng.choice(["seen", "remove", "rewrite", "recreate"])
        base = os.path.basename(name).split(":2,")[0]
        if kind == "seen":
            os.rename(path, os.path.join(self.box.path, "cur", base + ":2,S"))
        elif kind == "remove":
            os.unlink(path)
        else:
            # The same message (its Message-ID) with other bytes, as a restore from a backup
            # or an editor leaves it: in place, or removed and re-created under the same name.
            with open(path, "rb") as f:
                old = f.read()
            header = b"X-Restored: %d\n" % rng.randrange(10 ** rng.randrange(1, 6))
            new = header + old + b"restored line\n" * rng.randrange(0, 3)
            if kind == "recreate":
                os.unlink(path)
            with open(path, "r+b" if kind == "rewrite" else "wb") as f:
                f.write(new)
                f.truncate()
        if kind in ("rewrite", "recreate"):
            # Sizes are verified when a message is opened, not by a stat of every file at
            # each login (docs/storage.md): until then LIST may give the old size.
            self.unverified.add(base)
        self.soak.stats["foreign edits"] += 1
        self.soak.note(f"foreign {kind} of {name}")

    def session(self):
        rng = self.soak.rng
        srv = self.world.inetd(self.config_path)
        c = srv.conn
        c.read_greeting()
        c.login(USER, PASSWORD)
        st, sizes = listing(c, "LIST")
        self.soak.check(st.startswith("+OK"), f"LIST: {st}")
        st, uidls = listing(c, "UIDL")
        self.soak.check(st.startswith("+OK"), f"UIDL: {st}")
        files = self.files()
        by_uidl = {}
        for name, data in files.items():
            by_uidl[os.path.basename(name).split(":2,")[0]] = data
        shown = []
        for u, size in zip(uidls, sizes):
            self.soak.check(u in by_uidl, f"UIDL {u} names no file")
            shown.append(by_uidl[u])
            self.soak.check(str(octets(by_uidl[u])) == size or u in self.unverified,
                            f"LIST says {size} for {u}, the file has {octets(by_uidl[u])}")
        self.soak.check(len(shown) == len(files), f"{len(files)} files, {len(shown)} listed")
        self.soak.check_uidls(uidls, shown)
        if shown and rng.random() < 0.5:
            self.foreign_edit()
        if rng.random() < 0.4:
            self.deliver()
        deleted = []
        for n in rng.sample(range(len(shown)), k=min(len(shown), rng.randrange(0, 4))):
            st = c.cmd(f"RETR {n + 1}")
            self.unverified.discard(uidls[n])
            if st.startswith("+OK"):
                body = unstuff(c.read_body())
                # What LIST described, or the file as it is now if it kept that size.
                now = {os.path.basename(k).split(":2,")[0]: v for k, v in self.files().items()}
                current = now.get(uidls[n])
                self.soak.check(body == wire_body(shown[n]) or
                                (current is not None and body == wire_body(current)
                                 and str(octets(current)) == sizes[n]),
                                f"RETR {n + 1} sent other bytes than the message listed")
            else:
                self.soak.stats["RETR -ERR"] += 1
                self.soak.note(f"RETR {n + 1}: {st}")
            if rng.random() < 0.7:
                self.soak.check(c.cmd(f"DELE {n + 1}").startswith("+OK"), "DELE refused")
                deleted.append(uidls[n])
        before = self.files()
        try:
            st = c.cmd("QUIT")
        except Closed:
            self.soak.fail("the server closed the connection at QUIT")
        srv.wait_exit()
        after = self.files()
        base = {os.path.basename(k).split(":2,")[0]: v for k, v in before.items()}
        now = {os.path.basename(k).split(":2,")[0]: v for k, v in after.items()}
        for u in base:
            if u in deleted and st.startswith("+OK"):
                continue
            self.soak.check(now.get(u) == base[u], f"message {u} changed or vanished at QUIT {st}")
        for u in now:
            self.soak.check(u in base, f"message {u} appeared at QUIT")
        self.soak.stats["QUIT " + st[:4].strip()] += 1
        self.soak.note(f"QUIT {st}, deleted {deleted}")

    def test_random_rounds(self):
        self.soak = Soak(self)
        self.unverified = set()  # rewritten in place since the server last opened them
        for _ in range(5):
            self.deliver()
        for _ in self.soak.rounds():
            if self.soak.rng.random() < 0.5:
                self.deliver()
            if self.soak.rng.random() < 0.2:
                self.foreign_edit()
            self.session()
        self.assertGreater(self.soak.serial, 5)
