"""Soak: many POP3 sessions with deliveries in between, against one posternd, watching its
descriptors and memory in /proc, and (in the ASan build) LeakSanitizer's report at exit
(docs/reliability.md, "Load and abuse").

Each round delivers new mail to some users, then runs a batch of sessions from a few threads,
mixing what clients do: read everything and delete one message (QUIT commits), read and drop
the connection without QUIT, drop the connection in the middle of a large RETR, fail a login,
send pre-auth junk, and leave at once. After every round, once the sessions are gone, the
server's descriptor count must equal the count before the first round, and its resident
memory is sampled; after the warm-up (the first quarter of the rounds) it may not grow by
more than MEMORY_BOUND_KIB. At the end posternd is stopped with SIGTERM and its log (its
stderr) must hold no sanitizer report: with the ASan build, LeakSanitizer checks for leaks at
exit (detect_leaks=1 is set explicitly) and prints its report to stderr, which the harness
reads (Server.check_log_clean). test_leak_report_reaches_the_log proves that path with a
deliberate leak.

  POSTERN_SOAK_SESSIONS   sessions in all (CI: 6000, ASan build 2000; tens of thousands in the docs)
"""

import os
import random
import shutil
import subprocess
import threading
import time

from postern_harness import (SANITIZE, Closed, PosternTestCase, require, scaled, simple_message,
                             wait_for)
from load_support import add_users, big_message, env_int, fd_count, rss_kib, wait_fds

SESSIONS = env_int("POSTERN_SOAK_SESSIONS", 2000 if SANITIZE else 6000)
ROUNDS = 20
THREADS = 6
USERS = 60
# The resident memory may grow this much after the warm-up (allocator caches settling, the
# ASan quarantine, which asan_options() makes small so that it is full after the warm-up).
MEMORY_BOUND_KIB = 8 * 1024 if SANITIZE else 2 * 1024


def asan_options():
    """ASAN_OPTIONS for the server: the CI's, plus leak detection on and a quarantine small
    enough to be full after the warm-up (the default 256 MB would look like growth)."""
    base = os.environ.get("ASAN_OPTIONS", "")
    return ":".join(x for x in (base, "detect_leaks=1", "quarantine_size_mb=16") if x)


def settled_fd_count(pid):
    """The descriptor count once it has stayed the same for half a second."""
    last = [fd_count(pid), time.monotonic()]

    def settled():
        n = fd_count(pid)
        if n != last[0]:
            last[:] = [n, time.monotonic()]
        return n if time.monotonic() - last[1] >= 0.5 else None
    return wait_for(settled, scaled(20), what="posternd's descriptor count to settle")


class LeakSoakTest(PosternTestCase):

    def setUp(self):
        super().setUp()
        self.in_use = 0
        self.world.config["log"].pop("level", None)  # info: tens of thousands of sessions

    def start(self, env=None):
        if SANITIZE:
            env = dict(env or {}, ASAN_OPTIONS=asan_options())
        return self.world.start(env=env)

    def test_sessions_with_deliveries_keep_descriptors_and_memory_flat_and_leak_nothing(self):
        rng = random.Random(12)
        boxes = add_users(self.world, "soak", USERS, messages=[
            simple_message("first"), big_message(300 * 1024, "big")])
        srv = self.start()
        pid = srv.proc.pid
        baseline = None  # after the first round: the server opens some things lazily
        per_round = max(1, SESSIONS // ROUNDS)
        warm = max(1, ROUNDS // 4)
        rss = []
        counts = {}
        lock = threading.Lock()
        for r in range(ROUNDS):
            for box in rng.sample(boxes, USERS // 3):
                box.deliver(simple_message(f"round {r}", body_lines=[f"line {k}" for k in range(rng.randrange(1, 200))]))
            jobs = [(rng.choice(boxes), rng.randrange(6), rng.randrange(1 << 30)) for _ in range(per_round)]
            self.run_batch(srv, jobs, counts, lock)
            if baseline is None:
                baseline = settled_fd_count(pid)
            wait_fds(pid, baseline, scaled(20), f"round {r}")
            rss.append(rss_kib(pid))
        after_warm = rss[warm - 1]
        growth = max(rss[warm:]) - after_warm
        print(f"\n[soak: {per_round * ROUNDS} sessions {counts}; descriptors {baseline} "
              f"after every round; RSS KiB per round {rss}; growth after warm-up {growth} KiB; "
              f"{self.in_use} logins answered [IN-USE] right after a drop and tried again]",
              flush=True)
        self.assertEqual(counts.get("error", 0), 0, counts)
        self.assertLessEqual(growth, MEMORY_BOUND_KIB,
                             f"resident memory grew {growth} KiB after the warm-up: {rss}")
        srv.stop(check=True)  # exit 0 and no sanitizer report (LeakSanitizer) in its stderr

    def run_batch(self, srv, jobs, counts, lock):
        """Runs jobs from THREADS threads; a user's sessions all go to one thread, so that no
        two of them overlap (the second would be refused as [IN-USE])."""
        def worker(t):
            for box, kind, seed in jobs:
                if int(box.user[len("soak"):]) % THREADS != t:
                    continue
                name = self.session(srv, box, kind, seed)
                with lock:
                    counts[name] = counts.get(name, 0) + 1

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def session(self, srv, box, kind, seed):
        """One client session of the given kind; returns its name, or "error" with the
        reason printed when the server answered what it should not have."""
        try:
            conn = srv.connect(timeout=scaled(20))
        except (AssertionError, OSError) as e:
            print(f"\n[soak connect for {box.user}: {e}]", flush=True)
            return "error"
        try:
            if kind == 0:  # read everything, delete one, QUIT commits
                self.login(conn, box)
                st, listing = conn.cmd_multi("LIST")
                n = len(listing.split(b"\r\n")) - 1
                conn.cmd_multi("UIDL")
                for i in range(1, n + 1):
                    conn.cmd_multi(f"RETR {i}")
                if n > 2:
                    conn.cmd(f"DELE {3 + seed % (n - 2)}")
                conn.quit()
                name = "read_delete_quit"
            elif kind == 1:  # read, then drop the connection without QUIT
                self.login(conn, box)
                conn.cmd_multi("TOP 1 5")
                conn.cmd_multi("RETR 1")
                conn.cmd("DELE 1")
                name = "drop_without_quit"
            elif kind == 2:  # drop in the middle of a large RETR
                self.login(conn, box)
                conn.send(b"RETR 2\r\n")
                conn.read_line()
                name = "drop_mid_retr"
            elif kind == 3:  # a failed login
                conn.send(f"USER {box.user}\r\nPASS wrong{seed}\r\n".encode())
                conn.read_line()
                st = conn.status()
                if not st.startswith("-ERR"):
                    raise AssertionError(f"wrong password answered {st!r}")
                conn.quit()
                name = "failed_login"
            elif kind == 4:  # pre-auth junk and CAPA
                conn.send(b"XYZZY\r\n\x00\xff\r\nCAPA\r\n")
                conn.read_line()
                conn.read_line()
                if conn.status().startswith("+OK"):
                    conn.read_body()
                name = "junk"
            else:
                name = "leave_at_once"
            return name
        except (AssertionError, Closed, OSError) as e:
            print(f"\n[soak session kind {kind} for {box.user}: {e}]", flush=True)
            return "error"
        finally:
            conn.close()

    def login(self, conn, box):
        """USER/PASS. This thread's previous session of the user may have dropped its
        connection a moment ago, and the server releases the maildrop once it sees that: until
        then the answer is [IN-USE], and the login is tried again."""
        deadline = time.monotonic() + scaled(5)
        conn.cmd(f"USER {box.user}")
        while True:
            st = conn.cmd(f"PASS {box.password}")
            if st.startswith("+OK"):
                return
            if "[IN-USE]" not in st or time.monotonic() > deadline:
                raise AssertionError(f"PASS for {box.user}: {st}")
            self.in_use += 1
            time.sleep(0.01)
            conn.cmd(f"USER {box.user}")

    def test_leak_report_reaches_the_log(self):
        """The soak's leak check can fail: a server that leaks (here a library preloaded into
        posternd that drops a 4242-byte allocation) is reported in the log the harness reads."""
        if not SANITIZE:
            self.skipTest("LeakSanitizer runs in the ASan build only")
        gcc = shutil.which("gcc")
        require(gcc, "gcc (to build the leaking library)")
        libasan = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True,
                                 text=True).stdout.strip()
        require(os.path.isabs(libasan), "libasan.so of gcc")
        lib = self.world.path("leak.so")
        src = self.world.path("leak.c")
        with open(src, "w") as f:
            f.write("#include <stdlib.h>\n"
                    "void *volatile postern_test_leak;\n"
                    "__attribute__((constructor)) static void leak(void) {\n"
                    "  postern_test_leak = malloc(4242);\n  postern_test_leak = 0;\n}\n")
        res = subprocess.run([gcc, "-O0", "-shared", "-fPIC", "-o", lib, src],
                             capture_output=True, text=True)
        self.assertEqual(res.returncode, 0, res.stderr)
        add_users(self.world, "soak", 1, messages=[simple_message("one")])
        srv = self.start(env={"LD_PRELOAD": f"{libasan} {lib}"})
        srv.session(self.world.mailboxes["soak0"]).quit()
        rc = srv.stop(check=False)
        log = srv.log()
        self.assertIn("LeakSanitizer", log)
        self.assertIn("4242 byte", log)
        self.assertNotEqual(rc, 0, "a leak must also fail the exit status")


if __name__ == "__main__":
    import unittest
    unittest.main()
