"""systemd: the units in contrib/systemd, Type=notify (READY, RELOADING, STOPPING, the
watchdog) through a NOTIFY_SOCKET of the test's own, and socket activation through
systemd-socket-activate (named sockets, and --inetd with one process per connection).

No running systemd is needed: `systemd-analyze verify` checks the units offline, and the
notify protocol is a datagram per message on an AF_UNIX socket that the test binds itself.
"""

import os
import poplib
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest

from postern_harness import (DEFAULT_TIMEOUT, POSTERND, Pop3Conn, PosternTestCase, Server, posternd_preexec,
                             scaled, simple_message, wait_for)
from test_system_users import MSG1, SystemUsersBase
import tls_fixtures

HERE = os.path.dirname(os.path.abspath(__file__))
UNITS = os.path.join(HERE, "..", "..", "contrib", "systemd")

PASSWORD = "Sd-pass-1"
# WATCHDOG_USEC given to posternd: it pings every half of it.
WATCHDOG_USEC = 200_000


def require_tool(test, name):
    """The path of a tool the test drives. Never a skip: scripts/install-deps.sh installs it
    (Debian package systemd), and a test that silently does not run proves nothing."""
    path = shutil.which(name)
    if path is None:
        test.fail(f"{name} is not installed (Debian package systemd; scripts/install-deps.sh)")
    return path


class NotifySocket:
    """The service manager's side of sd_notify(): an AF_UNIX datagram socket in the abstract
    namespace (no file, no permissions: posternd sends to it after dropping privileges), with
    SO_PASSCRED so that each message comes with the sender's pid."""

    def __init__(self):
        self.name = f"postern-it-notify-{os.getpid()}-{secrets.token_hex(4)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + self.name)
        self.messages = []  # [(monotonic time, sender pid, {field: value})]

    @property
    def env(self):
        return {"NOTIFY_SOCKET": "@" + self.name}

    def close(self):
        self.sock.close()

    def _receive(self, timeout):
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
        except (socket.timeout, BlockingIOError):
            return False
        pid = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[:struct.calcsize("3i")])[0]
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
        self.messages.append((time.monotonic(), pid, fields))
        return True

    def wait(self, key, value="1", after=0, timeout=None):
        """Waits for a message (index >= after) with key=value; returns its index."""
        deadline = time.monotonic() + (timeout or DEFAULT_TIMEOUT)
        while True:
            for i in range(after, len(self.messages)):
                if self.messages[i][2].get(key) == value:
                    return i
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key}={value} from posternd on the notify socket; got "
                                     f"{[m[2] for m in self.messages]}")
            self._receive(left)

    def drain(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._receive(end - time.monotonic())

    def states(self, after=0):
        """The non-watchdog messages from index `after` on, as a list of field dicts."""
        return [m[2] for m in self.messages[after:] if "WATCHDOG" not in m[2]]

    def pings(self, after=0):
        return [m[0] for m in self.messages[after:] if m[2].get("WATCHDOG") == "1"]


class NotifyChecks:
    """READY, RELOADING/READY, STOPPING and the watchdog for one process mode; a mixin over a
    test case with start_server(env) and login_check(srv)."""

    def notify_socket(self):
        ns = NotifySocket()
        self.addCleanup(ns.close)
        return ns

    def run_lifecycle(self):
        ns = self.notify_socket()
        env = dict(ns.env, WATCHDOG_USEC=str(WATCHDOG_USEC))
        srv = self.start_server(env)
        main_pid = srv.proc.pid
        ready = ns.wait("READY")
        # When READY=1 arrives the port answers and sessions are served.
        self.login_check(srv)
        self.assertIn("STATUS", ns.messages[ready][2])
        # The watchdog: a ping every half interval (100 ms); allow a loaded machine its slack.
        start = len(ns.messages)
        ns.drain(scaled(1.0))
        pings = ns.pings(start)
        self.assertGreaterEqual(len(pings), 3, ns.messages[start:])
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        self.assertLess(max(gaps), scaled(WATCHDOG_USEC / 1e6), gaps)
        # SIGHUP: RELOADING=1 (with MONOTONIC_USEC), then READY=1.
        mark = len(ns.messages)
        srv.signal(signal.SIGHUP)
        reloading = ns.wait("RELOADING", after=mark)
        self.assertRegex(ns.messages[reloading][2].get("MONOTONIC_USEC", ""), r"^\d+$")
        ns.wait("READY", after=reloading + 1)
        self.login_check(srv)
        # SIGTERM: STOPPING=1, then the process ends.
        mark = len(ns.messages)
        srv.signal(signal.SIGTERM)
        ns.wait("STOPPING", after=mark)
        self.assertEqual(srv.wait_exit(), 0, srv.log())
        # Only the main process speaks (workers and session processes inherit NOTIFY_SOCKET),
        # and every state change came once, in order.
        senders = {m[1] for m in ns.messages}
        self.assertEqual(senders, {main_pid}, ns.messages)
        states = [next(k for k in ("READY", "RELOADING", "STOPPING") if k in m)
                  for m in ns.states()]
        self.assertEqual(states, ["READY", "RELOADING", "READY", "STOPPING"], ns.states())
        return ns

    def test_without_watchdog_usec_no_pings(self):
        ns = self.notify_socket()
        srv = self.start_server(ns.env)
        ns.wait("READY")
        ns.drain(scaled(0.5))
        self.assertEqual(ns.pings(), [])
        srv.signal(signal.SIGTERM)
        ns.wait("STOPPING")
        self.assertEqual(srv.wait_exit(), 0, srv.log())

    def test_stopped_process_stops_pinging(self):
        # A stopped (here: SIGSTOP) loop sends nothing: systemd would kill and restart it.
        ns = self.notify_socket()
        srv = self.start_server(dict(ns.env, WATCHDOG_USEC=str(WATCHDOG_USEC)))
        ns.wait("READY")
        ns.wait("WATCHDOG")
        srv.signal(signal.SIGSTOP)
        try:
            ns.drain(0.3)  # pings already in flight
            mark = len(ns.messages)
            ns.drain(scaled(0.6))
            self.assertEqual(ns.pings(mark), [])
        finally:
            srv.signal(signal.SIGCONT)
        mark = len(ns.messages)
        ns.wait("WATCHDOG", after=mark)


class EventModeNotify(NotifyChecks, PosternTestCase):
    processes = 1

    def setUp(self):
        super().setUp()
        self.world.config["server"]["processes"] = self.processes
        self.world.config["server"]["threads"] = 2
        self.world.add_user("alice", PASSWORD, [simple_message("notify", ["served"])])

    def start_server(self, env):
        return self.world.start(env=env)

    def login_check(self, srv):
        client = poplib.POP3("127.0.0.1", srv.port, timeout=DEFAULT_TIMEOUT)
        try:
            client.user("alice")
            client.pass_(PASSWORD)
            _, lines, _ = client.retr(1)
            self.assertIn(b"served", lines)
        finally:
            client.quit()

    def test_ready_reload_stop_and_watchdog(self):
        self.run_lifecycle()

    def test_watchdog_for_another_pid_is_not_ours(self):
        # WATCHDOG_PID names the process the watchdog is for (here: init): no pings.
        ns = self.notify_socket()
        srv = self.start_server(dict(ns.env, WATCHDOG_USEC=str(WATCHDOG_USEC), WATCHDOG_PID="1"))
        ns.wait("READY")
        ns.drain(scaled(0.5))
        self.assertEqual(ns.pings(), [])
        srv.stop()


class WorkersNotify(EventModeNotify):
    """processes = 2: the master is the main process; it notifies once the workers run."""
    processes = 2


class ForkModeNotify(NotifyChecks, SystemUsersBase):
    def setUp(self):
        super().setUp()
        self.user, _, _ = self.add_system_user(PASSWORD, messages=(MSG1,))

    def start_server(self, env):
        srv = self.world.start(self.write_unix(), env=env)
        self.addCleanup(lambda: srv.stopped or srv.stop(check=False))  # before userdel
        return srv

    def login_check(self, srv):
        client = poplib.POP3("127.0.0.1", srv.port, timeout=DEFAULT_TIMEOUT)
        try:
            client.user(self.user)
            client.pass_(PASSWORD)
            _, lines, _ = client.retr(1)
            self.assertTrue(lines)
        finally:
            client.quit()

    def test_ready_reload_stop_and_watchdog(self):
        self.run_lifecycle()


def free_port():
    """A loopback port nothing listens on right now (the kernel's choice, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refuses(port):
    """True when nothing listens on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=DEFAULT_TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    return False


class Activated(Server):
    """posternd started by `systemd-socket-activate ARGS posternd --config FILE POSTERND_ARGS`:
    systemd-socket-activate binds, and execs posternd in its own process (the same pid) at
    the first connection, or (with --accept) forks one per connection."""

    def __init__(self, world, config_path, activate_args, posternd_args=()):
        self.world = world
        self.config_path = config_path
        self.log_path = world._log_path("activated")
        self.logf = open(self.log_path, "ab")
        self._relay = None
        self._stuffer = None
        cmd = [shutil.which("systemd-socket-activate"), *activate_args, POSTERND, "--config",
               config_path, *posternd_args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=self.logf, close_fds=True, cwd=world.dir,
                                     preexec_fn=posternd_preexec(world, config_path))
        self.listeners = []
        self.stopped = False
        self.returncode = None
        world.servers.append(self)

    def wait_bound(self, count):
        """Waits for systemd-socket-activate's 'Listening on' lines (count of them)."""
        def bound():
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd-socket-activate exited with "
                                     f"{self.proc.returncode}:\n{self.log()}")
            return len(re.findall(r"^Listening on ", self.log(), re.M)) >= count or None
        wait_for(bound, what="systemd-socket-activate listening")
        return self


class SocketActivation:
    """Named sockets from systemd-socket-activate; a mixin over a test case with
    user_and_password() and mode config in self.world.config."""

    def activate(self, names, extra=(), env=None, posternd_args=(), toml=""):
        """systemd-socket-activate on a fresh port per name ("pop3", "pop3s"); the configured
        listen and tls_listen get other fresh ports, which posternd must leave alone.
        posternd_args: none by default, as in postern.service: started with sockets, posternd
        stays in the foreground (the pid systemd-socket-activate execs it in, LISTEN_PID)."""
        require_tool(self, "systemd-socket-activate")
        server = self.world.config["server"]
        self.configured = [free_port() for _ in range(2)]
        server["listen"] = [f"127.0.0.1:{self.configured[0]}"]
        if "tls" in self.world.config:
            server["tls_listen"] = [f"127.0.0.1:{self.configured[1]}"]
        ports = {name: free_port() for name in names}
        args = [a for name in names for a in ("-l", f"127.0.0.1:{ports[name]}")]
        args += ["--fdname=" + ":".join(names)]
        for k, v in (env or {}).items():
            args += ["-E", f"{k}={v}"]
        config = self.write_config()
        if toml:
            with open(config, "a") as f:
                f.write(toml)
        srv = Activated(self.world, config, args + list(extra), posternd_args)
        srv.wait_bound(len(names))
        self.addCleanup(lambda: srv.stopped or srv.stop(check=False))
        return srv, ports

    def write_config(self):
        return self.world.write_config()

    def retr(self, client):
        user, password = self.user_and_password()
        client.user(user)
        client.pass_(password)
        _, lines, _ = client.retr(1)
        self.assertTrue(lines)
        client.quit()

    def assert_configured_ports_unbound(self, srv):
        for port in self.configured:
            self.assertTrue(refuses(port), f"posternd bound its configured port {port}\n"
                                           + srv.log())

    def test_serves_the_inherited_socket(self):
        ns = NotifySocket()
        self.addCleanup(ns.close)
        srv, ports = self.activate(["pop3"], env=ns.env)
        # The first connection makes systemd-socket-activate exec posternd.
        self.retr(poplib.POP3("127.0.0.1", ports["pop3"], timeout=DEFAULT_TIMEOUT))
        ns.wait("READY")
        self.assertEqual({m[1] for m in ns.messages}, {srv.proc.pid})
        self.retr(poplib.POP3("127.0.0.1", ports["pop3"], timeout=DEFAULT_TIMEOUT))
        self.assert_configured_ports_unbound(srv)
        srv.signal(signal.SIGTERM)
        ns.wait("STOPPING")
        self.assertEqual(srv.wait_exit(), 0, srv.log())

    def test_plain_and_tls_sockets_by_name(self):
        pki = tls_fixtures.Pki(self.world.dir)
        tls_fixtures.configure_tls(self.world, pki, mode="ondemand", tls_listen=True)
        srv, ports = self.activate(["pop3", "pop3s"])
        ctx = tls_fixtures.client_context(pki)
        # pop3s: the TLS handshake comes first.
        self.retr(poplib.POP3_SSL("127.0.0.1", ports["pop3s"], context=ctx,
                                  timeout=DEFAULT_TIMEOUT))
        # pop3: plain POP3 with STLS.
        client = poplib.POP3("127.0.0.1", ports["pop3"], timeout=DEFAULT_TIMEOUT)
        self.assertIn("STLS", client.capa())
        client.stls(context=ctx)
        self.retr(client)
        self.assert_configured_ports_unbound(srv)
        srv.stop()

    def test_names_choose_the_transport(self):
        # "pop3s-*" is implicit TLS, a [[server.listener]] name takes that listener's tls,
        # any other name is served like `listen`.
        pki = tls_fixtures.Pki(self.world.dir)
        tls_fixtures.configure_tls(self.world, pki, mode="ondemand", tls_listen=True)
        named_port = free_port()
        toml = (f'\n[[server.listener]]\naddress = "127.0.0.1:{named_port}"\n'
                'tls = "implicit"\nname = "secure"\n')
        srv, ports = self.activate(["other", "pop3s-public", "secure"], toml=toml)
        ctx = tls_fixtures.client_context(pki)
        for name in ("pop3s-public", "secure"):
            self.retr(poplib.POP3_SSL("127.0.0.1", ports[name], context=ctx,
                                      timeout=DEFAULT_TIMEOUT))
        client = poplib.POP3("127.0.0.1", ports["other"], timeout=DEFAULT_TIMEOUT)
        client.stls(context=ctx)
        self.retr(client)
        self.assert_configured_ports_unbound(srv)
        self.assertTrue(refuses(named_port))
        srv.stop()



class EventModeActivation(SocketActivation, PosternTestCase):
    processes = 1

    def setUp(self):
        super().setUp()
        self.world.config["server"]["processes"] = self.processes
        self.world.add_user("alice", PASSWORD, [simple_message("activated", ["served"])])
        self.world.add_user("bob", PASSWORD, [simple_message("activated", ["served"])])

    def user_and_password(self):
        return "alice", PASSWORD

    def test_inetd_one_process_per_connection(self):
        # Accept=yes: systemd-socket-activate accepts and runs `posternd --inetd` with the
        # connection on stdin and stdout, one process per connection.
        srv, ports = self.activate(["pop3"], extra=["--accept", "--inetd"],
                                   posternd_args=("--inetd",))
        first = Pop3Conn(ports["pop3"])
        second = Pop3Conn(ports["pop3"])
        for conn, user in ((first, "alice"), (second, "bob")):
            self.world.on_cleanup(conn.close)
            self.assertTrue(conn.read_greeting().startswith("+OK"))
            conn.login(user, PASSWORD)

        def login_pids():
            found = {int(m.group(1)) for m in
                     re.finditer(r"\[(\d+)\]: \w+: login: user=<(alice|bob)>", srv.log())}
            return found if len(found) >= 2 else None
        pids = wait_for(login_pids, what="two logins from two processes")
        self.assertEqual(len(pids), 2)
        self.assertNotIn(srv.proc.pid, pids)
        for conn in (first, second):
            self.assertTrue(conn.cmd("QUIT").startswith("+OK"))
        self.assert_configured_ports_unbound(srv)
        srv.stop(check=False)


class WorkersActivation(EventModeActivation):
    """processes = 2: the master takes the inherited sockets, both workers accept on them."""
    processes = 2


class ForkModeActivation(SocketActivation, SystemUsersBase):
    def setUp(self):
        super().setUp()
        self.user, _, _ = self.add_system_user(PASSWORD, messages=(MSG1,))

    def user_and_password(self):
        return self.user, PASSWORD

    def write_config(self):
        return self.write_unix()

    def test_inetd_session_with_privilege_separation(self):
        srv, ports = self.activate(["pop3"], extra=["--accept", "--inetd"],
                                   posternd_args=("--inetd",))
        self.retr(poplib.POP3("127.0.0.1", ports["pop3"], timeout=DEFAULT_TIMEOUT))
        pre_pid, _ = self.wait_process(srv, "pre-auth")
        sess_pid, _ = self.wait_process(srv, "session")
        self.assertNotIn(srv.proc.pid, (pre_pid, sess_pid))
        self.assert_configured_ports_unbound(srv)
        srv.stop(check=False)


class Units(unittest.TestCase):
    """contrib/systemd parses cleanly: `systemd-analyze verify` prints nothing and succeeds.
    ExecStart must name an executable, so the units are checked in a scratch copy that points
    at the built posternd."""

    def test_units_verify(self):
        analyze = require_tool(self, "systemd-analyze")
        if not os.access(POSTERND, os.X_OK):
            self.fail(f"posternd not built: {POSTERND}")
        names = sorted(n for n in os.listdir(UNITS) if n.endswith((".service", ".socket")))
        self.assertEqual(names, ["postern-inetd.socket", "postern-inetd@.service",
                                 "postern-pop3s.socket", "postern.service", "postern.socket"])
        with tempfile.TemporaryDirectory(prefix="postern-units-") as scratch:
            for n in names:
                with open(os.path.join(UNITS, n)) as f:
                    text = f.read()
                if n.endswith(".service"):
                    self.assertIn("/usr/sbin/posternd", text)
                with open(os.path.join(scratch, n), "w") as f:
                    f.write(text.replace("/usr/sbin/posternd", POSTERND))
            # A template is verified through an instance of it.
            targets = [os.path.join(scratch, n.replace("@.", "@1.")) for n in names]
            shutil.copy(os.path.join(scratch, "postern-inetd@.service"),
                        os.path.join(scratch, "postern-inetd@1.service"))
            res = subprocess.run([analyze, "verify", "--man=no", "--generators=no", *targets],
                                 capture_output=True, text=True, timeout=120, cwd=scratch)
            # Unknown keys and bad values are warnings with status 0: the output must be empty.
            self.assertEqual((res.returncode, res.stdout + res.stderr), (0, ""))

    def test_verify_catches_a_bad_unit(self):
        # The check above is only worth something if verify reports mistakes.
        analyze = require_tool(self, "systemd-analyze")
        with tempfile.TemporaryDirectory(prefix="postern-units-") as scratch:
            path = os.path.join(scratch, "bad.service")
            with open(path, "w") as f:
                f.write(f"[Service]\nType=notfy\nExecStart={POSTERND}\nWatchdgSec=1\n")
            res = subprocess.run([analyze, "verify", "--man=no", "--generators=no", path],
                                 capture_output=True, text=True, timeout=120, cwd=scratch)
            self.assertIn("notfy", res.stderr)
            self.assertIn("WatchdgSec", res.stderr)

    def test_service_settings(self):
        with open(os.path.join(UNITS, "postern.service")) as f:
            text = f.read()
        for line in ("Type=notify", "NotifyAccess=main",
                     "ExecStart=/usr/sbin/posternd --config /etc/postern/postern.toml",
                     "ExecReload=/bin/kill -HUP $MAINPID", "ProtectSystem=strict",
                     "NoNewPrivileges=yes", "PrivateTmp=yes"):
            self.assertIn("\n" + line + "\n", text)
        caps = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
        for cap in ("CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_SYS_CHROOT",
                    "CAP_KILL"):
            self.assertIn(cap, caps)
        self.assertRegex(text, r"\nWatchdogSec=\d+")
        for name, fdname in (("postern.socket", "pop3"), ("postern-pop3s.socket", "pop3s")):
            with open(os.path.join(UNITS, name)) as f:
                self.assertIn(f"\nFileDescriptorName={fdname}\n", f.read())


if __name__ == "__main__":
    unittest.main()
