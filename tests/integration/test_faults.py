"""Syscall faults injected into the real posternd (libpostern_faults.so, fault_injection.py).

FaultLibrary checks the library itself on a small Python child: each action, errno, path and
kind filter, the counting scopes across fork, and that a malformed rule stops the process.

The other classes loop over fault points of a whole session against one running posternd:
a clean run counts the matching calls (action=count), then for N = 1..count the N-th call
fails (or comes back short) while the same session runs again from the same mailbox. After
each fault the session's replies are +OK with exact bytes, a clear -ERR, or a closed
connection (never a wrong body ended as if complete); posternd still runs and answers a
session of another user that was open all along; the mailbox on disk holds every message
exactly once, byte for byte (the deleted ones gone when QUIT said +OK, and present when QUIT
was never sent); and a clean session afterwards lists and retrieves exactly that.
docs/reliability.md ("Fault injection") records the counts.
"""

import os
import re
import signal
import subprocess
import sys
import textwrap
import unittest

from fault_injection import FaultLog, RulesFile, fault_env
from postern_harness import (DEFAULT_TIMEOUT, SANITIZE, Closed, Msg, PosternTestCase,
                             parse_listing, scaled, simple_message, wire_body)
from test_system_users import MSG1, MSG2, SystemUsersBase


class FaultLibrary(PosternTestCase):
    """The preload library on a Python child process (its calls go through libc's PLT)."""

    world_as_root = True  # the child is this Python, which the test user may not be able to run

    def run_child(self, rules, code, log=None, args=()):
        env = dict(os.environ)
        env.update(fault_env(rules, log, prog=None, binary=sys.executable))
        prelude = "import errno, mmap, os, socket, sys\nD = sys.argv[1]\n"
        return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code),
                               self.world.dir, *args], env=env, capture_output=True,
                              timeout=DEFAULT_TIMEOUT, text=True)

    def outcome(self, rules, code, log=None, args=()):
        res = self.run_child(rules, code, log, args)
        self.assertEqual(res.returncode, 0, res.stderr)
        return res.stdout.split()

    def test_nth_write_fails_with_the_errno_named(self):
        out = self.outcome("write:path~/data:nth=2:errno=ENOSPC", """
            fd = os.open(D + "/data", os.O_WRONLY | os.O_CREAT, 0o600)
            for i in range(3):
                try:
                    print(os.write(fd, b"abcd"))
                except OSError as e:
                    print(errno.errorcode[e.errno])
        """)
        self.assertEqual(out, ["4", "ENOSPC", "4"])
        with open(self.world.path("data"), "rb") as f:
            self.assertEqual(f.read(), b"abcdabcd")

    def test_path_filter_leaves_other_files_alone(self):
        out = self.outcome("write:path~/data:times=0", """
            for name in ("other", "data"):
                fd = os.open(D + "/" + name, os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    print(os.write(fd, b"abcd"))
                except OSError as e:
                    print(errno.errorcode[e.errno])
        """)
        self.assertEqual(out, ["4", "EIO"])

    def test_short_reads_and_writes(self):
        out = self.outcome("write:path~/data:action=short:short=3;"
                           "read:path~/data:nth=1:action=short;"
                           "read:path~/data:nth=2:action=short:short=0", """
            fd = os.open(D + "/data", os.O_RDWR | os.O_CREAT, 0o600)
            print(os.write(fd, b"abcdefgh"), os.write(fd, b"ijkl"))
            os.lseek(fd, 0, 0)
            print(len(os.read(fd, 8)), len(os.read(fd, 8)), len(os.read(fd, 8)))
        """)
        self.assertEqual(out, ["3", "4", "4", "0", "3"])

    def test_every_and_times(self):
        # EAGAIN: Python retries a call that fails with EINTR (PEP 475)
        out = self.outcome("fsync:nth=2:every=3:times=2:errno=EAGAIN", """
            fd = os.open(D + "/data", os.O_WRONLY | os.O_CREAT, 0o600)
            for i in range(10):
                try:
                    os.fsync(fd)
                    print("ok")
                except OSError as e:
                    print(errno.errorcode[e.errno])
        """)
        self.assertEqual(out, ["ok", "EAGAIN", "ok", "ok", "EAGAIN", "ok", "ok", "ok", "ok", "ok"])

    def test_rename_matches_either_path_and_open_fails(self):
        out = self.outcome("rename:path~/new/:errno=EXDEV;open:path~/missing:errno=EMFILE", """
            open(D + "/a", "w").close()
            os.mkdir(D + "/new")
            for src, dst in ((D + "/a", D + "/b"), (D + "/b", D + "/new/c")):
                try:
                    os.rename(src, dst)
                    print("ok")
                except OSError as e:
                    print(errno.errorcode[e.errno])
            try:
                os.open(D + "/missing", os.O_RDONLY)
            except OSError as e:
                print(errno.errorcode[e.errno])
        """)
        self.assertEqual(out, ["ok", "EXDEV", "EMFILE"])

    def test_mmap_of_a_file_fails_anonymous_memory_does_not(self):
        out = self.outcome("mmap:times=0:errno=ENOMEM", """
            m = mmap.mmap(-1, 4096)
            print("anon")
            with open(D + "/data", "wb") as f:
                f.write(b"x" * 4096)
            with open(D + "/data", "rb") as f:
                try:
                    mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
                except OSError as e:
                    print(errno.errorcode[e.errno])
        """)
        self.assertEqual(out, ["anon", "ENOMEM"])

    def test_kind_filter_tells_tcp_from_unix_sockets(self):
        out = self.outcome("send:on=tcp:errno=ECONNRESET:times=0", """
            a, b = socket.socketpair()
            print(a.send(b"x"))
            srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
            c = socket.create_connection(srv.getsockname())
            try:
                c.send(b"x")
            except OSError as e:
                print(errno.errorcode[e.errno])
        """)
        self.assertEqual(out, ["1", "ECONNRESET"])

    def test_kill_before_and_after_the_call(self):
        res = self.run_child("fsync:nth=2:action=kill", """
            fd = os.open(D + "/data", os.O_WRONLY | os.O_CREAT, 0o600)
            os.fsync(fd); print("first", flush=True); os.fsync(fd); print("second")
        """)
        self.assertEqual(res.returncode, -signal.SIGKILL)
        self.assertEqual(res.stdout.split(), ["first"])
        res = self.run_child("rename:action=kill:when=after", """
            open(D + "/a", "w").close()
            os.rename(D + "/a", D + "/b"); print("after")
        """)
        self.assertEqual(res.returncode, -signal.SIGKILL)
        self.assertTrue(os.path.exists(self.world.path("b")), "the rename was made")

    def test_process_scope_restarts_in_a_child_tree_scope_does_not(self):
        code = """
            fd = os.open(D + "/data", os.O_WRONLY | os.O_CREAT, 0o600)
            def attempt():
                try:
                    os.fsync(fd); return "ok"
                except OSError:
                    return "EIO"
            first = attempt()
            pid = os.fork()
            if pid == 0:
                os.write(1, (attempt() + " " + attempt() + "\\n").encode()); os._exit(0)
            os.waitpid(pid, 0)
            print(first, attempt())
        """
        # the child's two calls print first, then the parent's first and second
        self.assertEqual(self.outcome("fsync:nth=2", code), ["ok", "EIO", "ok", "EIO"])
        self.assertEqual(self.outcome("fsync:nth=2:scope=tree", code), ["EIO", "ok", "ok", "ok"])

    def test_count_logs_every_matching_call(self):
        log = FaultLog(self.world)
        self.outcome("write:path~/data:action=count;write:path~/data:nth=3", """
            fd = os.open(D + "/data", os.O_WRONLY | os.O_CREAT, 0o600)
            for i in range(4):
                try:
                    os.write(fd, b"x")
                except OSError:
                    pass
        """, log)
        self.assertEqual([e["n"] for e in log.counted(rule=1)], [1, 2, 3, 4])
        self.assertEqual([(e["rule"], e["n"], e["action"]) for e in log.acts()], [(2, 3, "fail")])
        self.assertTrue(log.acts()[0]["path"].endswith("/data"), log.acts())

    def test_rules_file_is_reread_when_it_changes(self):
        rules = RulesFile(self.world, "fsync:nth=2")
        out = self.outcome(rules, """
            fd = os.open(D + "/data", os.O_WRONLY | os.O_CREAT, 0o600)
            def attempt():
                try:
                    os.fsync(fd); return "ok"
                except OSError as e:
                    return errno.errorcode[e.errno]
            print(attempt(), attempt(), attempt())
            sys.stdout.flush()
            path = sys.argv[2]
            for text in ("fsync:errno=ENOSPC", "", "write:path~/nothing"):
                with open(path + ".new", "w") as f:
                    f.write(text)
                os.rename(path + ".new", path)
                print(attempt(), attempt())
        """, args=(rules.path,))
        self.assertEqual(out, ["ok", "EIO", "ok", "ENOSPC", "ok", "ok", "ok", "ok", "ok"])

    def test_malformed_rules_stop_the_process(self):
        for rules in ("fsync:nth=0", "nosuchcall", "write:errno=EWHAT", "write:action=explode",
                      "write:path"):
            with self.subTest(rules=rules):
                res = self.run_child(rules, "print('ran')")
                self.assertEqual(res.returncode, 127, res.stdout)
                self.assertIn("postern_faults:", res.stderr)


# ---------------------------------------------------------------------------------------------
# Loops over fault points of a real session

# The ASan build tries every STRIDE-th fault point (about a quarter), to stay within its time
# budget; the optimized build tries them all.
STRIDE = 4 if SANITIZE else 1
OLD = 1_600_000_000  # mtimes of restored mail: well in the past, so no "just changed" waits


def big_message(size, seed):
    line = (b"%d " % seed) + b"abcdefghijklmnopqrstuvwxyz0123456789" * 2 + b"\n"
    return b"Subject: big %d\n\n" % seed + line * (size // len(line) + 1)


class Credentials:
    """A user and password, as session() of the harness needs them."""

    def __init__(self, user, password):
        self.user = user
        self.password = password


class Session:
    """What one faulted session saw: the replies in order and how it ended."""

    def __init__(self):
        self.replies = []     # (command, status or "closed")
        self.quit_sent = False
        self.quit_ok = False
        self.closed = False

    def summary(self):
        return "; ".join(f"{c} -> {st[:60]}" for c, st in self.replies)


class FaultLoop(PosternTestCase):
    """One posternd with a rules file; a mailbox restored before each run of the session."""

    scope = ""        # ":scope=tree": one count for all of posternd's processes
    extra_config = None

    def start_server(self, extra_config=None):
        extra_config = extra_config or self.extra_config
        self.rules = RulesFile(self.world)
        self.flog = FaultLog(self.world)
        if extra_config:
            for section, keys in extra_config.items():
                self.world.config.setdefault(section, {}).update(keys)
        self.srv = self.world.start(env=fault_env(self.rules, self.flog))
        # Another user's session, open all along: it must keep being served.
        self.other = self.srv.session(self.bob)
        self.assertOk(self.other.cmd("STAT"))
        # The UIDL of each message, from a clean session (mbox UIDLs are digests)
        self.restore()
        with self.srv.session(Credentials("alice", "secret")) as c:
            st, body = c.cmd_multi("UIDL")
            self.assertOk(st)
            self.uidl_of = {k: u for (k, _), (_, u) in zip(self.expected, parse_listing(body))}
            self.assertEqual(len(self.uidl_of), len(self.expected))
            self.assertOk(c.quit())

    # -- to be provided: the mailbox under test
    def restore(self):
        raise NotImplementedError

    def on_disk(self):
        """{key: bytes} of every message now stored (fails on a message stored twice)."""
        raise NotImplementedError

    # -- the session
    def run_session(self, sess, deletes=(1, 3), retr=(2, 4), listed=None):
        """LIST, UIDL, RETR, DELE, QUIT as alice; every reply recorded, every body checked."""
        try:
            conn = self.srv.connect(greet=False, timeout=scaled(20))
        except OSError as e:
            sess.replies.append(("connect", f"closed ({e})"))
            sess.closed = True
            return
        try:
            sess.replies.append(("greeting", conn.read_greeting()))
            for cmd in ("USER alice", "PASS secret"):
                st = conn.cmd(cmd)
                sess.replies.append((cmd, st))
                self.assertClearReply(st, cmd)
                if not st.startswith("+OK"):
                    return
            listing = {}
            for cmd in ("LIST", "UIDL"):
                st, body = conn.cmd_multi(cmd)
                sess.replies.append((cmd, st))
                self.assertClearReply(st, cmd)
                if body is not None:
                    listing[cmd] = parse_listing(body)
            listed = [k for k, _ in self.expected] if listed is None else listed
            expected_uidls = [self.uidl_of[k] for k in listed]
            if "UIDL" in listing:
                self.assertEqual([u for _, u in listing["UIDL"]], expected_uidls,
                                 "UIDL listing")
            # LIST is checked in the clean session after: a message that could not be read
            # to size it is listed with its file size (docs/storage.md)
            for n in retr:
                st, body = conn.cmd_multi(f"RETR {n}")
                sess.replies.append((f"RETR {n}", st))
                self.assertClearReply(st, f"RETR {n}")
                if body is not None:
                    self.assertRetrieved(body, self.served(self.expected[n - 1][1]),
                                         f"RETR {n} after a fault")
            for n in deletes:
                st = conn.cmd(f"DELE {n}")
                sess.replies.append((f"DELE {n}", st))
                self.assertClearReply(st, f"DELE {n}")
            sess.quit_sent = True
            st = conn.cmd("QUIT")
            sess.replies.append(("QUIT", st))
            self.assertClearReply(st, "QUIT")
            sess.quit_ok = st.startswith("+OK")
            conn.expect_closed()
        except Closed:
            sess.replies.append(("?", "closed"))
            sess.closed = True
        finally:
            conn.close()

    def served(self, content):
        """What RETR serves of a stored message (the mbox subclass unquotes)."""
        return content

    def assertClearReply(self, status, what):
        if not (status.startswith("+OK") or status == "-ERR" or status.startswith("-ERR ")):
            self.fail(f"{what}: neither +OK nor -ERR: {status!r}")

    # -- the checks after each fault
    def check_after(self, sess, label, deletes=(1, 3)):
        where = f"{label}: {sess.summary()}"
        self.assertTrue(self.srv.alive(), f"posternd exited after {where}\n"
                        + self.world.tail(self.srv.log()))
        self.assertOk(self.other.cmd("NOOP"), f"the other session after {where}")
        deleted = {self.expected[n - 1][0] for n in deletes}
        stored = self.settled_on_disk()
        if stored is not None:
            self.check_stored(stored, sess, deleted, where)
        listed = self.check_clean_session(where)
        # The clean session's login finished any update left pending (the mbox journal)
        stored = self.on_disk()
        self.check_stored(stored, sess, deleted, "the clean session after " + where)
        self.assertEqual(listed, sorted(stored), f"listing and mailbox differ after {where}")

    def settled_on_disk(self):
        """on_disk(), or None while an update the next login completes is pending."""
        return self.on_disk()

    def check_stored(self, stored, sess, deleted, where):
        """Every message exactly once with its bytes; deleted ones gone if QUIT said +OK, and
        all there if QUIT was never sent."""
        for key, content in self.expected:
            if key in deleted:
                if sess.quit_ok:
                    self.assertNotIn(key, stored, f"deleted message kept although QUIT said "
                                     f"+OK: {where}")
                elif not sess.quit_sent:
                    self.assertIn(key, stored, f"message deleted without QUIT: {where}")
                if key in stored:
                    self.assertSameBytes(stored[key], content, f"message {key} after {where}")
                continue
            self.assertIn(key, stored, f"message {key} lost after {where}")
            self.assertSameBytes(stored[key], content, f"message {key} after {where}")

    def check_clean_session(self, where):
        """A session without faults lists and retrieves what is stored; returns the keys."""
        conn = self.srv.connect()
        try:
            conn.login("alice", "secret")
            st, body = conn.cmd_multi("UIDL")
            self.assertOk(st, f"UIDL after {where}")
            key_of = {u: k for k, u in self.uidl_of.items()}
            uidls = [u for _, u in parse_listing(body)]
            for u in uidls:
                self.assertIn(u, key_of, f"an unknown UIDL listed after {where}")
            want = [key_of[u] for u in uidls]
            self.assertEqual(want, [k for k, _ in self.expected if k in want],
                             f"listing order after {where}")
            content = dict(self.expected)
            st, body = conn.cmd_multi("LIST")
            self.assertOk(st, f"LIST after {where}")
            self.assertEqual([int(v) for _, v in parse_listing(body)],
                             [len(wire_body(self.served(content[k]))) for k in want],
                             f"LIST sizes after {where}")
            for i, key in enumerate(want):
                if len(content[key]) > 300_000:
                    continue  # a large one: its bytes on disk are compared
                st, body = conn.cmd_multi(f"RETR {i + 1}")
                self.assertOk(st, f"RETR {i + 1} after {where}")
                self.assertRetrieved(body, self.served(content[key]),
                                     f"RETR {i + 1} after {where}")
            self.assertOk(conn.quit())
        finally:
            conn.close()
        return sorted(want)

    # -- the loop
    def count_points(self, calls, path, session_args, kind=""):
        self.restore()
        self.flog.clear()
        self.rules.set(f"{calls}:path~{path}{kind}{self.scope}:action=count")
        sess = Session()
        self.run_session(sess, **session_args)
        self.rules.set("")
        self.assertTrue(sess.quit_ok, f"the clean run failed: {sess.summary()}")
        return [e["call"] for e in self.flog.counted()]

    def one_fault(self, rule, transient):
        """One session under `rule` (times=0: every matching call), checked like a loop's."""
        self.restore()
        self.flog.clear()
        self.rules.set(rule)
        sess = Session()
        self.run_session(sess)
        self.rules.set("")
        self.assertGreater(len(self.flog.acts()), 0, f"{rule} never acted")
        if transient:
            self.assertTrue(sess.quit_ok and all(st.startswith("+OK") for _, st in sess.replies),
                            f"{rule} showed: {sess.summary()}")
        self.check_after(sess, rule)
        return sess

    def fault_points(self, calls, path, variant, session_args=None, kind="", transient=False,
                     reach_slack=2):
        """Fails each matching call of the session once (N = 1..count), checking after each.
        transient: the fault must not show (EINTR, a short read or write): every reply +OK.
        Returns {"points", "reached", ...}: how the sessions ended."""
        session_args = session_args or {}
        points = self.count_points(calls, path, session_args, kind)
        self.assertGreater(len(points), 0, f"no {calls} calls on {path}")
        tally = {"points": len(points), "reached": 0, "quit +OK": 0, "quit -ERR": 0,
                 "closed": 0, "login -ERR": 0}
        tried = range(1, len(points) + 1, STRIDE)
        for n in tried:
            self.restore()
            self.flog.clear()
            rule = f"{calls}:path~{path}{kind}{self.scope}:nth={n}:{variant}"
            self.rules.set(rule)
            sess = Session()
            self.run_session(sess, **session_args)
            self.rules.set("")
            acts = self.flog.acts()
            if acts:
                tally["reached"] += 1
            if sess.quit_ok:
                tally["quit +OK"] += 1
            elif sess.quit_sent and not sess.closed:
                tally["quit -ERR"] += 1
            elif sess.closed:
                tally["closed"] += 1
            else:
                tally["login -ERR"] += 1
            label = f"{rule} ({points[n - 1]}" + (f" {acts[0]['path']})" if acts else ", not reached)")
            if transient:
                self.assertTrue(sess.quit_ok and all(st.startswith("+OK") for _, st in sess.replies),
                                f"a transient fault showed: {label}: {sess.summary()}")
            try:
                self.check_after(sess, label, session_args.get("deletes", (1, 3)))
            except AssertionError as e:
                raise AssertionError(f"after {label}: {sess.summary()}\n{e}") from None
        # The session is the same every run up to the fault: nearly every point is reached
        # (a timing-dependent call, such as a lock retry, may shift the count by one).
        tally["tried"] = len(tried)
        self.assertGreaterEqual(tally["reached"], len(tried) - reach_slack,
                                f"{variant} on {calls}: {tally}")
        sys.stderr.write(f"\n  {self.id().split('.')[-1]} {calls} {variant}: {tally}\n")
        return tally


class RetrChecks:
    """Checks of RETR shared by the store classes (a mixin: not a test case itself)."""

    def test_retr_when_mapping_is_refused(self):
        # RETR of the 1.2 MB message maps it; refused, it is read instead, to the same bytes.
        # (A read failing once the status line is out ends the connection: the loops' EIO
        # points in RETR, counted as "closed".)
        self.one_fault(f"mmap:path~{self.path}:times=0:errno=ENOMEM", transient=True)


class MaildirFaults(RetrChecks, FaultLoop):
    """Maildir: the scan, the index written at login and at QUIT, RETR (read, and mmap for
    the 1.2 MB message), the QUIT update (unlink, rename new/ -> cur/, directory fsync)."""

    store_calls = ("open|openat|read|pread|write|pwrite|mmap|fsync|fdatasync|rename|renameat|"
                   "renameat2|unlink|unlinkat|link|linkat|mkdir|ftruncate")

    def setUp(self):
        super().setUp()
        self.contents = [simple_message("one"), big_message(1_200_000, 2),
                         simple_message("three"), big_message(200_000, 4),
                         simple_message("five")]
        self.box = self.world.add_user("alice")
        self.bob = self.world.add_user("bob", messages=[simple_message("bob's")])
        self.bases = [f"{1700000000 + i}.M{i}P1.faults" for i in range(len(self.contents))]
        self.expected = list(zip(self.bases, self.contents))
        self.path = self.box.path + "/"
        self.start_server()

    def restore(self):
        for sub in ("new", "cur", "tmp"):
            d = os.path.join(self.box.path, sub)
            for name in os.listdir(d):
                os.unlink(os.path.join(d, name))
        for name in os.listdir(self.box.path):
            if name.startswith("postern-pop3.index"):
                os.unlink(os.path.join(self.box.path, name))
        for i, (base, content) in enumerate(self.expected):
            where = "new" if i % 2 == 0 else "cur"
            name = base if where == "new" else base + ":2,"
            path = os.path.join(self.box.path, where, name)
            with open(path, "wb") as f:
                f.write(content)
            os.utime(path, (OLD, OLD))
        for sub in ("new", "cur", "tmp", ""):
            os.utime(os.path.join(self.box.path, sub), (OLD, OLD))

    def on_disk(self):
        return {uidl: content for uidl, content in self.box.contents().items()}

    def test_every_store_call_failing_with_eio(self):
        self.fault_points(self.store_calls, self.path, "errno=EIO")

    def test_writes_failing_with_enospc(self):
        self.fault_points("write|pwrite|ftruncate|fsync|rename|renameat|renameat2|link|linkat|"
                          "openat|open", self.path, "errno=ENOSPC")

    def test_opens_failing_with_emfile(self):
        self.fault_points("open|openat", self.path, "errno=EMFILE")

    def test_reads_and_writes_interrupted(self):
        self.fault_points("read|pread|write|pwrite|open|openat", self.path, "errno=EINTR",
                          transient=True)

    def test_short_reads_and_writes(self):
        self.fault_points("read|pread|write|pwrite", self.path, "action=short", transient=True)


FROM_LINE = b"From sender@example.org Tue Nov 14 22:13:20 2023\n"


class MboxFaults(RetrChecks, FaultLoop):
    """mbox: the dotlock, the scan, the index, RETR (pread through the mboxo unquoting), the
    QUIT update through its journal (write, fsync, rename, apply, truncate), and the recovery
    of an update cut short after its commit point, which the next login runs."""

    store_calls = MaildirFaults.store_calls

    def setUp(self):
        super().setUp()
        self.spool_dir = self.world.path("spool")
        os.makedirs(self.spool_dir)
        self.spool = os.path.join(self.spool_dir, "alice")
        self.world.add_passwd_line("alice:{PLAIN}secret::::::")
        self.world.add_passwd_line("bob:{PLAIN}secret::::::")
        with open(os.path.join(self.spool_dir, "bob"), "wb") as f:
            f.write(self.spool_of([simple_message("bob's")]))
        self.bob = Credentials("bob", "secret")
        self.world.config["mail"] = {"location": f"mbox:{self.spool_dir}/%u",
                                     "mbox_locking": ["dotlock", "fcntl"]}
        quoted = simple_message("quoted", body_lines=("Hello.", ">From the past.", "Bye."))
        self.contents = [simple_message("one"), big_message(1_200_000, 2), quoted,
                         big_message(200_000, 4), simple_message("five")]
        self.expected = [(f"m{i + 1}", c) for i, c in enumerate(self.contents)]
        self.original = self.spool_of(self.contents)
        self.path = self.spool_dir + "/"
        self.start_server()

    @staticmethod
    def spool_of(contents):
        return b"".join(FROM_LINE + c + b"\n" for c in contents)

    def restore(self):
        for name in os.listdir(self.spool_dir):
            if name.startswith(".alice.") or name.startswith("alice"):
                os.unlink(os.path.join(self.spool_dir, name))
        with open(self.spool, "wb") as f:
            f.write(self.original)
        os.utime(self.spool, (OLD, OLD))

    def served(self, content):
        return content.replace(b"\n>From ", b"\nFrom ")

    def settled_on_disk(self):
        if os.path.exists(os.path.join(self.spool_dir, ".alice.postern-journal")):
            return None  # committed, not yet applied: the next login completes it
        return self.on_disk()

    def on_disk(self):
        journal = os.path.join(self.spool_dir, ".alice.postern-journal")
        self.assertFalse(os.path.exists(journal), "a journal left after a clean session")
        return self.spool_messages()

    def spool_messages(self):
        with open(self.spool, "rb") as f:
            data = f.read()
        parts = data.split(b"\n" + FROM_LINE)
        if parts and parts[0].startswith(FROM_LINE):
            parts[0] = parts[0][len(FROM_LINE):]
        by_content = {c: k for k, c in self.expected}
        out = {}
        for i, p in enumerate(parts):
            # each message keeps its own final newline; the mbox's blank line follows it
            body = p[:-1] if i == len(parts) - 1 and p.endswith(b"\n\n") else p
            key = by_content.get(body)
            if key is None:
                raise AssertionError(f"the spool holds a message not stored: {body[:200]!r}")
            if key in out:
                raise AssertionError(f"message {key} twice in the spool")
            out[key] = body
        return out

    # With quoting (mboxo, the default) RETR goes through the unquoting filter, which reads;
    # only mbox_quoting = "none" maps a message
    test_retr_when_mapping_is_refused = None

    def test_every_store_call_failing_with_eio(self):
        self.fault_points(self.store_calls, self.path, "errno=EIO")

    def test_writes_failing_with_enospc(self):
        self.fault_points("write|pwrite|ftruncate|fsync|fdatasync|rename|renameat|renameat2|"
                          "link|linkat|openat|open", self.path, "errno=ENOSPC")

    def test_reads_and_writes_interrupted(self):
        self.fault_points("read|pread|write|pwrite|open|openat", self.path, "errno=EINTR",
                          transient=True)

    def test_short_reads_and_writes(self):
        self.fault_points("read|pread|write|pwrite", self.path, "action=short", transient=True)

    # -- the recovery of a committed update
    def leave_committed_journal(self):
        """A QUIT whose update fails at its first write to the spool, after the commit
        point: the journal stays for the next login to finish."""
        self.restore()
        self.rules.set(f"pwrite:path~{self.spool}:nth=1:errno=EIO")
        sess = Session()
        self.run_session(sess, retr=())
        self.rules.set("")
        self.assertTrue(sess.quit_sent and not sess.quit_ok, sess.summary())
        self.assertIsNone(self.settled_on_disk(), "no journal left by the failed update")

    def test_recovery_failing_with_eio(self):
        """Each call of the login that finishes the update fails once: that login may fail,
        but the update is never lost or applied twice, and a later login completes it."""
        calls = self.store_calls
        kept = ["m2", "m4", "m5"]  # what a finished update leaves (DELE 1 and 3)
        self.leave_committed_journal()
        self.flog.clear()
        self.rules.set(f"{calls}:path~{self.path}:action=count")
        sess = Session()
        self.run_session(sess, deletes=(), retr=(), listed=kept)
        self.rules.set("")
        self.assertTrue(sess.quit_ok, sess.summary())
        points = len(self.flog.counted())
        tried = range(1, points + 1, STRIDE)
        outcomes = {"login +OK": 0, "login -ERR": 0}
        for n in tried:
            self.leave_committed_journal()
            rule = f"{calls}:path~{self.path}:nth={n}:errno=EIO"
            self.flog.clear()
            self.rules.set(rule)
            sess = Session()
            self.run_session(sess, deletes=(), retr=(), listed=kept)
            self.rules.set("")
            acts = self.flog.acts()
            label = f"{rule} ({acts[0]['call']} {acts[0]['path']})" if acts else rule
            outcomes["login +OK" if sess.quit_sent else "login -ERR"] += 1
            try:
                # The update was committed: it is finished, by this login or the next
                done = Session()
                done.quit_sent = done.quit_ok = True
                self.check_after(done, label)
            except AssertionError as e:
                raise AssertionError(f"after {label}: {sess.summary()}\n{e}") from None
        sys.stderr.write(f"\n  recovery {calls} errno=EIO: points {points}, tried "
                         f"{len(tried)}: {outcomes}\n")


class MaildirSizingRegression(PosternTestCase):
    """A message that could not be read to size it at login is listed with its file size for
    that session (docs/storage.md); the index must not keep that size for the next ones.
    Found by MaildirFaults (EIO on the sizing read): every later session listed the file size,
    and RETR then sent more octets than LIST had announced."""

    def run_case(self, where, flags):
        content = simple_message("sized", body_lines=("line %d" % i for i in range(20)))
        box = self.world.add_user("alice", messages=[
            Msg(simple_message("first")), Msg(content, where=where, flags=flags)])
        base = box.messages[1].base
        for sub in ("new", "cur", "tmp", ""):
            for name in os.listdir(os.path.join(box.path, sub)) if sub else []:
                os.utime(os.path.join(box.path, sub, name), (OLD, OLD))
            os.utime(os.path.join(box.path, sub), (OLD, OLD))
        rules = RulesFile(self.world, f"pread:path~/{where}/{base}:errno=EIO")
        log = FaultLog(self.world)
        srv = self.world.start(env=fault_env(rules, log))
        with srv.session(box) as c:
            st, body = c.cmd_multi("LIST")
            self.assertOk(st)
            self.assertEqual(int(parse_listing(body)[1][1]), len(content),
                             f"listed with its file size while unreadable {log.entries()}")
            self.assertOk(c.quit())
        self.assertEqual(len(log.acts()), 1, log.entries())
        rules.set("")
        for attempt in range(2):
            with srv.session(box) as c:
                st, body = c.cmd_multi("LIST")
                self.assertOk(st)
                self.assertEqual(int(parse_listing(body)[1][1]), len(wire_body(content)),
                                 f"LIST in session {attempt + 2}, once the file is readable")
                st, body = c.cmd_multi("RETR 2")
                self.assertEqual(st, f"+OK {len(wire_body(content))} octets")
                self.assertRetrieved(body, content)
                self.assertOk(c.quit())

    def test_in_cur_whose_directory_does_not_change(self):
        self.run_case("cur", "S")

    def test_in_new_moved_to_cur_at_quit(self):
        self.run_case("new", "")


class MboxDotlockRegression(PosternTestCase):
    """Releasing the mbox dotlock must not leave it behind when the check that it is still
    ours cannot read it (EMFILE, EIO) or its first removal fails: left in place, it holds our
    own (live) pid, so every login waits out mbox_lock_timeout until it is stale
    (mbox_dotlock_stale_age, 10 minutes by default). Found by MboxFaults."""

    def check_release_fault(self, rule):
        spool_dir = self.world.path("spool")
        os.makedirs(spool_dir)
        with open(os.path.join(spool_dir, "alice"), "wb") as f:
            f.write(FROM_LINE + simple_message("one") + b"\n" + FROM_LINE + simple_message("two"))
        self.world.add_passwd_line("alice:{PLAIN}secret::::::")
        self.world.config["mail"] = {"location": f"mbox:{spool_dir}/%u",
                                     "mbox_locking": ["dotlock", "fcntl"],
                                     "mbox_lock_timeout": "2s"}
        log = FaultLog(self.world)
        srv = self.world.start(env=fault_env(rule, log))
        alice = Credentials("alice", "secret")
        with srv.session(alice) as c:
            self.assertOk(c.cmd("DELE 1"))
            self.assertOk(c.quit())
        self.assertEqual(len(log.acts()), 1, log.entries())
        self.assertFalse(os.path.exists(os.path.join(spool_dir, "alice.lock")),
                         "the dotlock was left behind")
        with srv.session(alice) as c:
            self.assertEqual(c.cmd("STAT"), f"+OK 1 {len(wire_body(simple_message('two')))}")
            self.assertOk(c.quit())

    def test_check_that_cannot_open_the_lock(self):
        self.check_release_fault("open:path~/spool/alice.lock:errno=EMFILE")

    def test_check_that_cannot_read_the_lock(self):
        self.check_release_fault("pread:path~/spool/alice.lock:errno=EIO")

    def test_removal_that_fails_once(self):
        self.check_release_fault("unlink:path~/spool/alice.lock:errno=EIO")


class NetworkFaults(MaildirFaults):
    """The client's socket: every send and receive of a Maildir session (a 1.2 MB RETR sent
    from a mapping among them) interrupted, refused for now, cut short or reset. Only the
    reset may show, and only to that client: its session ends, nothing it did not QUIT is
    applied, and the others go on."""

    net_calls = "send|recv|write|read|sendmsg|recvmsg|writev|readv|sendto|recvfrom"

    # The Maildir loops of the parent class are not repeated here
    test_every_store_call_failing_with_eio = None
    test_writes_failing_with_enospc = None
    test_opens_failing_with_emfile = None
    test_reads_and_writes_interrupted = None
    test_short_reads_and_writes = None
    test_retr_when_mapping_is_refused = None

    # Receives depend on how the commands arrive (a read that finds nothing yet is a call
    # too), so a few points of the clean run may not come in a faulted one.
    def net_points(self, variant, transient):
        return self.fault_points(self.net_calls, "socket\\:", variant, kind=":on=tcp",
                                 transient=transient, reach_slack=4)

    def test_interrupted(self):
        self.net_points("errno=EINTR", True)

    def test_would_block(self):
        self.net_points("errno=EAGAIN", True)

    def test_short(self):
        self.net_points("action=short", True)

    def test_reset_by_the_peer(self):
        tally = self.net_points("errno=ECONNRESET", False)
        self.assertGreater(tally["closed"], 0, tally)


class AcceptFaults(PosternTestCase):
    """accept() failing (out of descriptors, EMFILE and ENFILE, or a connection reset before
    it was accepted): the listener goes on accepting, and the connections waiting in the
    backlog are served once accept succeeds again."""

    def check_accept_fault(self, errno_name):
        box = self.world.add_user("alice", messages=[simple_message("one")])
        bob = self.world.add_user("bob", messages=[simple_message("bob's")])
        log = FaultLog(self.world)
        rules = RulesFile(self.world)
        srv = self.world.start(env=fault_env(rules, log))
        other = srv.session(bob)
        rules.set(f"accept|accept4:errno={errno_name}:times=3")
        with srv.session(box) as c:
            self.assertEqual(c.cmd("STAT"), f"+OK 1 {len(wire_body(simple_message('one')))}")
            self.assertOk(c.quit())
        self.assertEqual(len(log.acts()), 3, log.entries())
        self.assertOk(other.cmd("NOOP"))
        self.assertTrue(srv.alive())

    def test_out_of_descriptors_for_the_process(self):
        self.check_accept_fault("EMFILE")

    def test_out_of_descriptors_for_the_system(self):
        self.check_accept_fault("ENFILE")

    def test_connection_reset_before_accept(self):
        self.check_accept_fault("ECONNRESET")


class WorkerProcessFaults(MaildirFaults):
    """The Maildir EIO loop with two worker processes (server.processes = 2): the library is
    inherited by the forked workers, and scope=tree counts the calls of all of them, so the
    N-th call is the same whichever worker takes the session."""

    scope = ":scope=tree"
    extra_config = {"server": {"processes": 2}}

    def tearDown(self):
        # the sessions were served by both workers (the loops' hundred logins spread over them)
        pids = set(re.findall(r"posternd\[(\d+)\]: info: login:", self.srv.log()))
        self.assertGreaterEqual(len(pids), 2, "one worker served every session")
        super().tearDown()

    test_writes_failing_with_enospc = None
    test_opens_failing_with_emfile = None
    test_reads_and_writes_interrupted = None
    test_short_reads_and_writes = None
    test_retr_when_mapping_is_refused = None


class ForkModeFaults(SystemUsersBase):
    """Fork mode (a process per session, system users, mbox spools): the library reaches the
    session processes, each counts its own calls from 0 (scope=process), and a failed store
    call there costs only that session."""

    def test_each_session_process_counts_its_own_calls(self):
        name, _, spool = self.add_system_user(messages=(MSG1, MSG2))
        other, _, _ = self.add_system_user(messages=(MSG1,))
        with open(spool, "rb") as f:
            before = f.read()
        log = FaultLog(self.world)
        rules = RulesFile(self.world)
        srv = self.world.start(self.write_unix(), env=fault_env(rules, log))
        self.addCleanup(lambda: srv.stopped or srv.stop(check=False))
        held = srv.connect()
        held.login(other, "Pt-pass-1")
        # The first write to the spool in each session process fails: the update of QUIT
        # after its commit point, then the next session's finishing of it at login
        rules.set(f"pwrite:path~{spool}:nth=1:times=0:errno=EIO")
        conn = srv.connect()
        conn.login(name, "Pt-pass-1")
        self.assertOk(conn.cmd("DELE 1"))
        self.assertErr(conn.cmd("QUIT"))
        conn.close()
        conn = srv.connect()
        self.assertOk(conn.cmd(f"USER {name}"))
        self.assertErr(conn.cmd("PASS Pt-pass-1"), "the journal could not be finished")
        conn.close()
        acts = log.acts()
        self.assertEqual(len(acts), 2, log.entries())
        self.assertNotEqual(acts[0]["pid"], acts[1]["pid"], "one process per session")
        self.assertNotIn(srv.proc.pid, {a["pid"] for a in acts}, "not in the master")
        rules.set("")
        self.assertRegex(held.cmd("STAT"), r"^\+OK 1 ")
        conn = srv.connect()
        conn.login(name, "Pt-pass-1")
        self.assertEqual(conn.cmd("STAT"), f"+OK 1 {len(wire_body(MSG2))}")
        self.assertOk(conn.quit())
        with open(spool, "rb") as f:
            self.assertEqual(f.read(), before[before.index(b"From sender", 1):])
