"""Real front ends for Postern's integration tests: HAProxy and nginx's mail proxy.

Both run in the foreground from the configuration templates in contrib/ (contrib/haproxy/
postern.cfg, contrib/nginx/postern-mail.conf), with every @NAME@ placeholder filled: pid file,
logs and state all inside the test's temporary directory, listening on free loopback ports.
They never touch a system instance: own configs, own ports, own pid files.

Each process runs in its own process group as the World's owner (root runs) and gets SIGTERM
if this process dies; World cleanup stops the whole group (SIGTERM, then SIGKILL), also when
the test failed. nginx's mail proxy needs an auth_http service: AuthHttp is a tiny
http.server in a thread that answers Auth-Status OK with Postern's address.

Only 127.0.0.1 (and 127.0.0.2 as a client source) is used.
"""

import ctypes
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

from postern_harness import _child_as, scaled, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
CONTRIB = os.path.normpath(os.path.join(HERE, "..", "..", "contrib"))
HAPROXY_TEMPLATE = os.path.join(CONTRIB, "haproxy", "postern.cfg")
NGINX_TEMPLATE = os.path.join(CONTRIB, "nginx", "postern-mail.conf")
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def have_haproxy():
    return os.access(HAPROXY, os.X_OK)


def have_nginx_mail():
    return os.access(NGINX, os.X_OK) and os.path.exists(NGINX_MAIL_MODULE)


def free_port(host="127.0.0.1"):
    """A port nothing listens on right now (bound then released; loopback only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def listening(port):
    """True if a TCP socket listens on 127.0.0.1:port, read from /proc/net/tcp so that the
    probe makes no connection (through a proxy it would reach Postern and be logged)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":
                return True
    return False


def fill_template(path, values):
    """The template's text with every @NAME@ replaced; refuses a placeholder left unfilled."""
    with open(path) as f:
        text = f.read()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    wanted = set(re.findall(r"@([A-Z0-9_]+)@", body))
    missing = wanted - set(values)
    if missing:
        raise AssertionError(f"{path}: no value for {sorted(missing)}")
    for name in wanted:
        body = body.replace(f"@{name}@", str(values[name]))
    return body + "\n"


def _preexec(world):
    """As the World's owner when the tests run as root, in a new session, and SIGTERM when
    the test process goes away (set after the id change, which would clear it)."""
    as_owner = _child_as(world.owner) if world.owner is not None else None

    def run():
        if as_owner is not None:
            as_owner()
        os.setsid()
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return run


class FrontProcess:
    """A front end started in the foreground with its output in <dir>/<name>.out."""

    def __init__(self, world, name, argv, ports):
        self.world = world
        self.name = name
        self.out_path = world.path(f"{name}.out")
        self.out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=subprocess.STDOUT, preexec_fn=_preexec(world),
                                     cwd=world.dir)
        world.on_cleanup(self.stop)
        try:
            for port in ports:
                wait_for(lambda p=port: listening(p) or self.proc.poll() is not None,
                         timeout=scaled(15), what=f"{name} listening on {port}")
                if self.proc.poll() is not None:
                    raise AssertionError(f"{name} exited with {self.proc.returncode}:\n"
                                         + self.output())
        except BaseException:
            self.stop()
            raise

    def output(self):
        with open(self.out_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        """Stops the whole process group: SIGTERM, then SIGKILL after a few seconds."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=scaled(5))
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # workers left behind, if any
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=scaled(5))
        if not self.out.closed:
            self.out.close()


class Haproxy(FrontProcess):
    """HAProxy from contrib/haproxy/postern.cfg: frontend pop3 (plain, `send_proxy` towards
    Postern) on self.port and frontend pop3s (TLS terminated, send-proxy-v2-ssl) on
    self.tls_port, both forwarding to postern_addr ("127.0.0.1:PORT")."""

    def __init__(self, world, postern_addr, tls_pem, send_proxy="send-proxy-v2"):
        self.port = free_port()
        self.tls_port = free_port()
        state = world.path("haproxy")
        os.makedirs(state, exist_ok=True)
        self.config_path = world.path("haproxy.cfg")
        with open(self.config_path, "w") as f:
            f.write(fill_template(HAPROXY_TEMPLATE, {
                "LOG": "stderr", "STATE_DIR": state,
                "POP3_BIND": f"127.0.0.1:{self.port}", "POP3S_BIND": f"127.0.0.1:{self.tls_port}",
                "TLS_PEM": tls_pem, "POSTERN_ADDR": postern_addr, "SEND_PROXY": send_proxy}))
        check = subprocess.run([HAPROXY, "-c", "-f", self.config_path], capture_output=True,
                               timeout=scaled(30), preexec_fn=_preexec(world))
        if check.returncode != 0:
            raise AssertionError("haproxy -c refused the config:\n"
                                 + (check.stdout + check.stderr).decode("utf-8", "replace"))
        super().__init__(world, "haproxy", [HAPROXY, "-f", self.config_path, "-db"],
                         [self.port, self.tls_port])


class AuthHttp:
    """nginx's auth_http service: every request is answered Auth-Status OK, sending the user
    to `postern_port` on 127.0.0.1. self.requests holds the headers of each request."""

    def __init__(self, world, postern_port):
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.requests.append(dict(self.headers))
                self.send_response(200)
                self.send_header("Auth-Status", "OK")
                self.send_header("Auth-Server", "127.0.0.1")
                self.send_header("Auth-Port", str(postern_port))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        world.on_cleanup(self.stop)

    def stop(self):
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


class NginxMail(FrontProcess):
    """nginx's mail proxy from contrib/nginx/postern-mail.conf on self.port, sending each
    logged-in user to Postern's PROXY listener on 127.0.0.1:postern_port."""

    def __init__(self, world, postern_port):
        self.auth = AuthHttp(world, postern_port)
        self.port = free_port()
        self.prefix = world.path("nginx")
        os.makedirs(self.prefix, exist_ok=True)
        self.config_path = os.path.join(self.prefix, "nginx.conf")
        with open(self.config_path, "w") as f:
            f.write(fill_template(NGINX_TEMPLATE, {
                "STATE_DIR": self.prefix, "POP3_BIND": f"127.0.0.1:{self.port}",
                "AUTH_HTTP": f"127.0.0.1:{self.auth.port}/auth"}))
        # -e: the error log before the config is read; -p: every relative path inside prefix.
        argv = [NGINX, "-e", os.path.join(self.prefix, "nginx-error.log"), "-p", self.prefix + "/",
                "-c", self.config_path, "-g", "daemon off;"]
        check = subprocess.run(argv + ["-t"], capture_output=True, timeout=scaled(30),
                               preexec_fn=_preexec(world))
        if check.returncode != 0:
            raise AssertionError("nginx -t refused the config:\n"
                                 + (check.stdout + check.stderr).decode("utf-8", "replace"))
        super().__init__(world, "nginx", argv, [self.port])

    def error_log(self):
        try:
            with open(os.path.join(self.prefix, "nginx-error.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""


class FakeBackend:
    """A listening socket that records the bytes of each connection (what a front end sends
    before the client's own bytes), greeting like POP3 and answering QUIT (health checks).
    answer_lines: also answer +OK to every other line but a "PROXY " one (nginx's login)."""

    def __init__(self, world, answer_lines=False):
        self.answer_lines = answer_lines
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received = []  # bytes per connection, in order of accept
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        world.on_cleanup(self.stop)

    def _serve(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with self.lock:
            index = len(self.received)
            self.received.append(b"")
        conn.settimeout(scaled(5))
        answered = 0
        try:
            conn.sendall(b"+OK fake\r\n")
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                with self.lock:
                    self.received[index] += data
                    got = self.received[index]
                if b"QUIT\r\n" in got:
                    conn.sendall(b"+OK bye\r\n")
                    break
                lines = [x for x in got.split(b"\r\n")[:-1] if not x.startswith(b"PROXY ")]
                if self.answer_lines and len(lines) > answered:
                    conn.sendall(b"+OK\r\n" * (len(lines) - answered))
                    answered = len(lines)
        except OSError:
            pass
        finally:
            conn.close()

    def wait_connections(self, count, timeout=None):
        wait_for(lambda: len(self.received) >= count, timeout=timeout or scaled(10),
                 what=f"{count} connections to the fake backend")
        time.sleep(0.05)
        with self.lock:
            return list(self.received)

    def stop(self):
        self.stopping = True
        self.sock.close()
