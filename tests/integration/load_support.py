"""What the load and soak tests share (test_load.py, test_leak_soak.py): a World with
posternd's default limits, many users written at once, the legitimate client's latency, the
server's descriptor count and memory from /proc, and the load driver as a child process."""

import json
import os
import select
import statistics
import subprocess
import sys
import time

from postern_harness import (DEFAULT_TIMEOUT, Msg, Mailbox, _child_as_root,
                             dot_stuff, privileged, wait_for, wire_body)

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "load_driver.py")


def env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v else default


def use_defaults(world):
    """Drops every limit the harness sets for other tests: posternd runs with its own defaults
    (max_connections, max_connections_per_ip, idle and login timeouts, max_bad_commands,
    failure_delay, the per-address penalty, the log level)."""
    server = world.config["server"]
    for key in ("idle_timeout", "max_connections", "max_connections_per_ip", "max_bad_commands"):
        server.pop(key, None)
    for key in ("failure_delay", "penalty_max"):
        world.config["auth"].pop(key, None)
    world.config["log"].pop("level", None)


def add_users(world, prefix, count, password="secret", messages=()):
    """count users PREFIX0..PREFIX{count-1}, each with a Maildir holding `messages`, written
    with one passwd-file write (World.add_user rewrites the file for every user)."""
    boxes = []
    for i in range(count):
        user = f"{prefix}{i}"
        world.passwd_lines.append(f"{user}:{{PLAIN}}{password}::::::")
        box = Mailbox(os.path.join(world.mail_root, user, "Maildir"), user, password)
        if not boxes:
            for m in messages:
                box.store(Msg(m))
        else:  # the first user's files, hard-linked: many large mailboxes cost no disk
            for m in boxes[0].messages:
                os.link(os.path.join(boxes[0].path, m.where, m.filename),
                        os.path.join(box.path, m.where, m.filename))
                box.messages.append(m)
        world.mailboxes[user] = box
        boxes.append(box)
    world.write_passwd()
    return boxes


def big_message(size, tag="load"):
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = line * (size // len(line) + 1)
    return (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: " + tag.encode() +
            b"\r\nMessage-ID: <" + tag.encode() + b"@example.org>\r\n\r\n" + body)


class Legit:
    """The legitimate client: connect, USER/PASS, RETR 1 (checked byte-exact), QUIT."""

    def __init__(self, server, box):
        self.server = server
        self.box = box
        self.expected = None

    def once(self, timeout=None):
        t = time.perf_counter()
        conn = self.server.connect(timeout=timeout or DEFAULT_TIMEOUT)
        conn.login(self.box.user, self.box.password)
        st, body = conn.cmd_multi("RETR 1")
        if not st.startswith("+OK"):
            raise AssertionError(f"legit RETR: {st!r}")
        conn.quit()
        elapsed = time.perf_counter() - t
        conn.close()
        if body != self._expected():
            raise AssertionError("legit RETR: retrieved bytes differ from the stored message")
        return elapsed

    def _expected(self):
        if self.expected is None:
            self.expected = dot_stuff(wire_body(self.box.messages[0].content))
        return self.expected

    def median(self, n):
        return statistics.median(self.once() for _ in range(n))


def fd_count(pid):
    """Open descriptors of posternd and its worker processes, if any (a process that dropped
    privileges is not dumpable: its /proc/PID/fd belongs to root)."""
    with privileged():
        n = len(os.listdir(f"/proc/{pid}/fd"))
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = f.read().split()
        except OSError:
            children = []
        for child in children:
            try:
                n += len(os.listdir(f"/proc/{child}/fd"))
            except OSError:
                pass
        return n


def describe_fds(pid):
    """What posternd's descriptors point at, and its TCP connections (for failure messages)."""
    with privileged():
        d = f"/proc/{pid}/fd"
        links = []
        for name in sorted(os.listdir(d), key=int):
            try:
                links.append(f"{name} -> {os.readlink(os.path.join(d, name))}")
            except OSError:
                pass
    ss = subprocess.run(["ss", "-tanpi"], capture_output=True, text=True).stdout
    mine = [line for line in ss.splitlines() if f"pid={pid}," in line]
    return "\n".join(links + mine)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


class Driver:
    """load_driver.py as a child process (as root when the test runs as root, so that it may
    raise its own descriptor limit); stop() closes its stdin and returns its final counts."""

    def __init__(self, world, port, scenario, **opts):
        cmd = [sys.executable, DRIVER, "--port", str(port), "--scenario", scenario]
        for k, v in opts.items():
            cmd += ["--" + k.replace("_", "-"), str(v)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, preexec_fn=_child_as_root)
        world.on_cleanup(self.kill)
        self.ready = None

    def _read_event(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"load driver: no report within {timeout:.0f}s")
            r, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if r:
                line = self.proc.stdout.readline()
                if not line:
                    err = self.proc.stderr.read().decode("utf-8", "replace")
                    raise AssertionError(f"load driver exited ({self.proc.wait()}):\n{err[-4000:]}")
                return json.loads(line)

    def wait_ready(self, timeout):
        self.ready = self._read_event(timeout)
        return self.ready

    def stop(self, timeout=None):
        self.proc.stdin.close()
        done = self._read_event(timeout or DEFAULT_TIMEOUT * 3)
        self.proc.wait(DEFAULT_TIMEOUT)
        return done

    def kill(self):
        if self.proc.poll() is None:
            with privileged():
                self.proc.kill()
            self.proc.wait()


def wait_fds(pid, baseline, timeout, what="the scenario"):
    """Waits until posternd's descriptor count is back to baseline."""
    try:
        wait_for(lambda: fd_count(pid) <= baseline, timeout)
    except AssertionError:
        raise AssertionError(f"posternd's descriptors not back to {baseline} after {what} "
                             f"within {timeout:.0f}s (now {fd_count(pid)}):\n"
                             + describe_fds(pid)) from None
