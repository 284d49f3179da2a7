"""Event mode with several worker processes (`[server] processes = N`): the master binds the
listeners and supervises N workers; sessions are spread over them, a killed worker is
replaced, SIGTERM and SIGHUP reach every worker, and the connection limits hold across them.
"""

import base64
import os
import poplib
import re
import resource
import signal
import subprocess
import time
import unittest

from postern_harness import (DEFAULT_TIMEOUT, POSTERND, Closed, Msg, PosternTestCase, privileged,
                             run_posternd, scaled, simple_message, toml_text, wait_for)

PASSWORD = "W0rkers-pw"
PROCESSES = 3


def children(pid):
    """The pids whose parent is `pid` (the master's workers)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(name))
    return sorted(out)


def socket_count(pid):
    """Sockets a process holds: its listeners and its connections."""
    n = 0
    with privileged():  # posternd, having dropped privileges, is not dumpable
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
            except OSError:  # closed since listdir: no longer held
                pass
    return n


def session_owners(conns, pids):
    """For each connection of `conns`, which of `pids` holds the server's end of it (None
    if none does): the server-side TCP socket (local = the server's port, remote = the
    client's) of /proc/net/tcp{,6}, by inode, among the processes' descriptors."""
    inode_of = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for row in f:
                fields = row.split()
                local, remote = (int(a.rsplit(":", 1)[1], 16) for a in fields[1:3])
                inode_of[(local, remote)] = fields[9]
    holder = {}
    with privileged():
        for pid in pids:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:  # closed since listdir: no longer held
                    continue
                if link.startswith("socket:["):
                    holder[link[len("socket:["):-1]] = pid
    return [holder.get(inode_of.get((c.sock.getpeername()[1], c.sock.getsockname()[1])))
            for c in conns]


def answers(conn):
    """Whether the session still answers: NOOP gets +OK (logged in) or -ERR (NOOP is not a
    command before login); EOF or a reset means the session is gone."""
    try:
        st = conn.cmd("NOOP")
    except (Closed, OSError):
        return False
    if not st.startswith(("+OK", "-ERR")):
        raise AssertionError(f"NOOP: {st!r}")
    return True


def busiest(pids):
    """The worker holding the most connections."""
    return max(pids, key=socket_count)


def session_pids(log):
    """Pids of the processes that logged a login."""
    return {int(m.group(1)) for m in re.finditer(r"\[(\d+)\]: \w+: login: user=<", log)}


class ProcessesBase(PosternTestCase):
    processes = PROCESSES

    def setUp(self):
        super().setUp()
        self.box = self.world.add_user("alice", PASSWORD, [Msg(simple_message(f"m{i}"))
                                                           for i in range(3)])
        self.world.config["server"]["processes"] = self.processes
        self.world.config["server"]["threads"] = 1
        self.configure()
        self.srv = self.world.start()
        self.master = self.srv.proc.pid
        self.workers = wait_for(lambda: (c := children(self.master)) and len(c) == self.processes and c,
                                what=f"{self.processes} worker processes")

    def configure(self):
        pass

    def poplib_session(self):
        p = poplib.POP3("127.0.0.1", self.srv.port, timeout=DEFAULT_TIMEOUT)
        self.addCleanup(p.close)
        self.assertTrue(p.getwelcome().startswith(b"+OK"))
        p.user("alice")
        p.pass_(PASSWORD)
        return p

    def full_session(self):
        """Logs in, checks every message byte for byte, quits without deleting."""
        p = self.poplib_session()
        count, size = p.stat()
        self.assertEqual(count, 3)
        self.assertEqual(size, sum(len(m.content.replace(b"\n", b"\r\n")) for m in self.box.messages))
        _, lines, _ = p.uidl()
        uidls = sorted(line.decode().split(" ")[1] for line in lines)
        self.assertEqual(uidls, sorted(m.uidl for m in self.box.messages))
        for n in range(1, count + 1):
            _, body, _ = p.retr(n)
            self.assertIn(b"".join(line + b"\r\n" for line in body),
                          [m.content.replace(b"\n", b"\r\n") for m in self.box.messages])
        self.assertTrue(p.quit().startswith(b"+OK"))


class Workers(ProcessesBase):
    def test_sessions_are_spread_over_the_workers(self):
        for _ in range(24):
            self.full_session()
        pids = session_pids(self.srv.log())
        self.assertNotIn(self.master, pids)
        self.assertTrue(pids <= set(self.workers), f"{pids} not among {self.workers}")
        self.assertGreater(len(pids), 1, f"every session served by {pids}")
        self.assertEqual(len(self.box.files()), 3)

    def test_a_killed_worker_is_replaced_and_others_keep_their_sessions(self):
        conns = [self.srv.session(self.box) for _ in range(1)]
        # Idle sessions spread over the workers (no login: the maildrop allows one session).
        idle = [self.srv.connect() for _ in range(15)]
        sessions = idle + conns
        owners = session_owners(sessions, self.workers)
        self.assertNotIn(None, owners, "a session held by no worker")
        victim = busiest(self.workers)
        self.assertIn(victim, owners)
        self.assertGreater(len(set(owners)), 1, f"every session on one worker: {owners}")
        os.kill(victim, signal.SIGKILL)
        self.srv.wait_log(rf"worker \d+ \(pid {victim}\) killed by signal 9 unexpectedly; restarting")
        fresh = wait_for(lambda: (c := children(self.master)) and len(c) == self.processes
                         and victim not in c and c, what="a replacement worker")
        self.assertEqual(len(set(fresh) & set(self.workers)), self.processes - 1)
        # Every session of another worker answers; every session of the killed one is gone.
        alive = [answers(c) for c in sessions]
        self.assertEqual(alive, [owner != victim for owner in owners],
                         f"sessions by worker {owners}, killed {victim}")
        # Service continues on every worker, the replacement included.
        for c in conns:
            c.close()
        for _ in range(24):
            self.full_session()
        replacement = set(fresh) - set(self.workers)
        self.assertTrue(replacement <= session_pids(self.srv.log()),
                        f"the replacement {replacement} served no session")
        self.assertTrue(self.srv.alive())

    def test_sigterm_stops_master_and_workers(self):
        idle = [self.srv.connect() for _ in range(6)]
        s = self.srv.session(self.box)
        s.cmd("DELE 1")
        started = time.monotonic()
        self.srv.signal(signal.SIGTERM)
        rc = self.srv.wait_exit(scaled(10))
        self.assertEqual(rc, 0, self.world.tail(self.srv.log()))
        self.assertLess(time.monotonic() - started, scaled(10))
        wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in self.workers),
                 what="every worker gone")
        # The session was cut, not committed: nothing was deleted.
        self.assertEqual(len(self.box.files()), 3)
        self.srv.check_log_clean()
        del idle

    def test_sighup_reaches_every_worker(self):
        self.srv.signal(signal.SIGHUP)
        self.srv.wait_log(r"SIGHUP: reloading 3 workers")
        matches = self.srv.wait_log(r"\[(\d+)\]: \w+: SIGHUP: nothing to reload", count=3)
        self.assertEqual(sorted(int(m.group(1)) for m in matches), self.workers)
        self.full_session()

    def test_descriptors_of_a_worker_are_its_own(self):
        # Each worker holds its own listening sockets (one thread, one address), not every
        # worker's.
        for pid in self.workers:
            # A worker closes the others' sockets first thing after fork().
            wait_for(lambda: socket_count(pid) == 1, what=f"worker {pid} with one socket")
        # The master keeps one per worker, to hand to a replacement.
        self.assertEqual(socket_count(self.master), self.processes)


    def test_a_worker_that_keeps_dying_is_restarted_with_a_delay(self):
        first = busiest(self.workers)
        os.kill(first, signal.SIGKILL)
        self.srv.wait_log(rf"\(pid {first}\) killed by signal 9 unexpectedly; restarting it\n")
        second = wait_for(lambda: (c := set(children(self.master)) - set(self.workers)) and c,
                          what="the first replacement").pop()
        os.kill(second, signal.SIGKILL)
        killed = time.monotonic()
        self.srv.wait_log(rf"\(pid {second}\) killed by signal 9 unexpectedly; restarting it in 1s")
        third = wait_for(lambda: (c := set(children(self.master)) - set(self.workers) - {second}) and c,
                         what="the second replacement", timeout=scaled(5)).pop()
        self.assertGreaterEqual(time.monotonic() - killed, 0.9)
        self.assertNotIn(third, (first, second))
        for _ in range(6):
            self.full_session()


class Descriptors(ProcessesBase):
    def configure(self):
        self.world.config["server"]["max_connections"] = 1_000_000

    def test_soft_limit_raised_and_capacity_warning(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        for pid in self.workers:
            with privileged(), open(f"/proc/{pid}/limits") as f:
                line = next(l for l in f if l.startswith("Max open files"))
            self.assertEqual(line.split()[3], line.split()[4], line)
            self.assertEqual(line.split()[4], "unlimited" if hard == resource.RLIM_INFINITY else str(hard))
        if hard != resource.RLIM_INFINITY and 2_000_000 > 3 * hard:
            self.srv.wait_log(r"server\.max_connections = 1000000 needs at least 2000000 descriptors.*"
                              r"set server\.processes to at least \d+")


class ScramAcrossWorkers(ProcessesBase):
    def configure(self):
        self.world.config["auth"]["mechanisms"] = ["PLAIN", "SCRAM-SHA-256"]

    def test_unknown_user_gets_one_salt_from_every_worker(self):
        # A salt that depended on the worker would tell an unknown user from a real one.
        first = base64.b64encode(b"n,,n=nobody,r=0123456789abcdef").decode()
        salts = {}  # worker pid -> the (salt, iterations) it sent
        # Connections until every worker has answered one (the kernel picks the worker from
        # the addresses: 60 tries leave a worker unasked with a chance of about 1e-10).
        for _ in range(60):
            conn = self.srv.connect()
            [worker] = session_owners([conn], self.workers)
            st = conn.cmd(f"AUTH SCRAM-SHA-256 {first}")
            self.assertTrue(st.startswith("+ "), st)
            attrs = dict(p.split("=", 1) for p in base64.b64decode(st[2:]).decode().split(","))
            salts.setdefault(worker, set()).add((attrs["s"], attrs["i"]))
            conn.close()
            if len(salts) == len(self.workers):
                break
        self.assertEqual(sorted(salts), sorted(self.workers), "a worker was never asked")
        self.assertEqual(len(set().union(*salts.values())), 1, salts)


class SetupFailure(PosternTestCase):
    def test_master_stops_when_workers_cannot_start(self):
        self.world.config["server"]["processes"] = 3
        self.world.config["auth"]["passdb"] = f"passwd-file:{self.world.path('no-such-users')}"
        srv = self.world.start()
        rc = srv.wait_exit(scaled(10))
        self.assertNotEqual(rc, 0)
        self.assertRegex(srv.log(), r"worker \d \(pid \d+\) could not start; stopping")
        srv.check_log_clean()


class PerSourceLimitAcrossWorkers(ProcessesBase):
    def configure(self):
        self.world.config["server"]["max_connections_per_ip"] = 4

    def refused(self):
        conn = self.srv.connect(greet=False)
        line = conn.status()
        conn.close()
        return line.startswith("-ERR [SYS/TEMP]")

    def try_connect(self):
        """A greeted connection, or None when the server refused it."""
        conn = self.srv.connect(greet=False)
        if conn.status().startswith("+OK"):
            return conn
        conn.close()
        return None

    def test_limit_holds_across_workers_and_dead_workers_release(self):
        held = [self.srv.connect() for _ in range(4)]
        # Whichever worker the kernel hands them to, every further connection is refused.
        for _ in range(9):
            self.assertTrue(self.refused())
        held.pop().close()
        held.append(wait_for(self.try_connect, what="the slot of a closed session"))
        self.assertTrue(self.refused())
        # Kill a worker: the master forgets what it held.
        owners = session_owners(held, self.workers)
        victim = busiest(self.workers)
        self.assertIn(victim, owners)
        os.kill(victim, signal.SIGKILL)
        self.srv.wait_log(rf"\(pid {victim}\) killed by signal 9")
        wait_for(lambda: (c := children(self.master)) and len(c) == self.processes and victim not in c,
                 what="a replacement worker")
        live = [c for c in held if answers(c)]
        self.assertEqual(len(live), sum(owner != victim for owner in owners),
                         f"sessions by worker {owners}, killed {victim}")
        more = [wait_for(self.try_connect, what="a slot released for the dead worker")
                for _ in range(4 - len(live))]
        self.assertEqual(len(live) + len(more), 4)
        self.assertTrue(self.refused())


class BadSettings(PosternTestCase):
    def check(self, value, expect):
        text = toml_text(self.world.config).replace("[server]\n", f"[server]\nprocesses = {value}\n", 1)
        path = self.world.write_config(text, name="p.toml")
        res = run_posternd(["--check-config", "--config", path])
        self.assertNotEqual(res.returncode, 0, f"accepted processes = {value!r}")
        self.assertIn("server.processes", res.stderr)
        self.assertIn(expect, res.stderr)

    def test_bad_values(self):
        self.check("0", "must be from 1 to 256, not 0")
        self.check("-1", "must be from 1 to 256, not -1")
        self.check("100000", "must be from 1 to 256, not 100000")
        self.check('"many"', '"many" is not "auto"')
        self.check("2.5", 'expected an integer from 1 to 256 or "auto", got a floating-point number')
        self.check("true", "got a boolean")

    def test_auto_and_number_are_shown(self):
        for value, shown in (("auto", 'processes = "auto"'), (4, "processes = 4")):
            cfg = dict(self.world.config)
            cfg["server"] = dict(cfg["server"], processes=value)
            path = self.world.write_config(toml_text(cfg), name="p.toml")
            res = run_posternd(["--check-config", "--config", path])
            self.assertEqual(res.returncode, 0, res.stderr)
            self.assertIn(shown, res.stdout)

    def test_fork_mode_contradiction(self):
        cfg = dict(self.world.config)
        cfg["server"] = dict(cfg["server"], processes=2, process_model="fork")
        path = self.world.write_config(toml_text(cfg), name="p.toml")
        res = run_posternd(["--check-config", "--config", path])
        self.assertNotEqual(res.returncode, 0)
        self.assertIn("server.processes applies to event mode only", res.stderr)
        cfg["server"] = dict(cfg["server"], processes=2)
        del cfg["server"]["process_model"]
        path = self.world.write_config(toml_text(cfg), name="q.toml")
        res = run_posternd(["--daemon", "--foreground", "--config", path])
        self.assertNotEqual(res.returncode, 0)
        self.assertIn("--daemon selects fork mode", res.stderr)


class OneProcessIsUnchanged(ProcessesBase):
    processes = 1

    def setUp(self):
        super(ProcessesBase, self).setUp()
        self.box = self.world.add_user("alice", PASSWORD, [Msg(simple_message(f"m{i}"))
                                                           for i in range(3)])
        self.srv = self.world.start()
        self.master = self.srv.proc.pid

    def test_no_worker_processes(self):
        self.full_session()
        self.assertEqual(children(self.master), [])
        self.assertEqual(session_pids(self.srv.log()), {self.master})


if __name__ == "__main__":
    unittest.main()
