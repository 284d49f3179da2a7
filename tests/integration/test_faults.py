"""Syscall faults injected into the real posternd (libpostern_faults.so, fault_injection.py).

FaultLibrary checks the library itself on a small Python child: each action, errno, path and
kind filter, the counting scopes across fork, and that a malformed rule stops the process.
"""

import os
import signal
import subprocess
import sys
import textwrap
import unittest

from fault_injection import FaultLog, RulesFile, fault_env
from postern_harness import DEFAULT_TIMEOUT, PosternTestCase


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


if __name__ == "__main__":
    unittest.main()
