"""Harness for Postern's integration tests: the real posternd, real clients, loopback only.

Each test gets a `World`: a private temporary directory holding a config file, a Dovecot-style
passwd-file and one Maildir per user, plus helpers to start `posternd` (daemon or inetd mode),
talk POP3 to it over a raw socket, read its log and compare what came over the wire with what
is stored. Nothing here sleeps blindly: every wait polls a condition with a deadline.

Environment:
  POSTERND            path to the binary (default: ../../build/posternd from this file)
  POSTERN_SANITIZE    1 for the AddressSanitizer+UBSan build: every timeout is scaled up
  POSTERN_TIME_SCALE  override the timeout scale factor
  POSTERN_KEEP_TMP    1: keep each test's temporary directory (its path is printed)
  POSTERN_TEST_USER   the unprivileged user of root runs (default postern-it, created with
                      useradd when missing and then left in place)

Only 127.0.0.1 and ::1 are ever contacted, always by numeric address.

Who owns the mail: posternd never opens a maildrop as root (event and inetd mode refuse to
start as root without [server] user). Run as an ordinary user, everything runs as that user.
Run as root (CI), each World belongs to the unprivileged POSTERN_TEST_USER: the test process
switches its real and effective ids to that user for the test (the saved uid stays 0, see
World.as_root()), so every file a test writes is owned by the mail owner, world.config sets
[server] user to it, and Server/Inetd start posternd as real root so that it drops privileges
itself (a config without [server] user and not in fork mode is started as the test user
instead). A test class that needs root throughout (system users, fork mode) sets
`world_as_root = True`: its World stays root and sets no user.
"""

import atexit
import contextlib
import fcntl
import grp
import importlib.machinery
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
POSTERND = os.path.abspath(
    os.environ.get("POSTERND") or os.path.join(HERE, "..", "..", "build", "posternd"))
SANITIZE = os.environ.get("POSTERN_SANITIZE", "0").strip().lower() in ("1", "on", "true", "yes")
TIME_SCALE = float(os.environ.get("POSTERN_TIME_SCALE") or (5.0 if SANITIZE else 1.0))
KEEP_TMP = os.environ.get("POSTERN_KEEP_TMP", "") not in ("", "0")

# Substrings that mean a sanitizer (or UBSan) reported something: never acceptable in a log.
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "ThreadSanitizer", "runtime error:")


def scaled(seconds):
    """A timeout in seconds, stretched for slow (sanitizer) builds."""
    return seconds * TIME_SCALE


DEFAULT_TIMEOUT = scaled(10.0)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def have_binary():
    return os.path.isfile(POSTERND) and os.access(POSTERND, os.X_OK)


# CI=true (set by .ci/run): a test may not skip for want of a tool, user, path or privilege.
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


class MissingRequirement(AssertionError):
    """A tool, user, path or privilege a test needs is missing in CI."""


def require(condition, reason):
    """Inside a test or setUp: go on when condition holds. Otherwise skip with reason, except in
    CI, where the test fails: CI must run every test. For a skip that means the test has no
    meaning here (a mode without the feature), call self.skipTest instead."""
    if condition:
        return
    if IN_CI:
        raise MissingRequirement(f"missing in CI: {reason}")
    raise unittest.SkipTest(reason)


def missing(reason):
    """require(False, reason): skips, or fails in CI."""
    require(False, reason)


def requires(condition, reason):
    """The decorator form of require() for a test method or a TestCase class."""
    if condition:
        return lambda obj: obj
    if not IN_CI:
        return unittest.skip(reason)

    def fail(*_args, **_kwargs):
        raise MissingRequirement(f"missing in CI: {reason}")

    def decorate(obj):
        if isinstance(obj, type):
            for name in dir(obj):
                if name.startswith("test") and callable(getattr(obj, name)):
                    setattr(obj, name, fail)
            return obj
        return fail
    return decorate


def wait_for(predicate, timeout=None, what="condition", interval=0.005):
    """Polls predicate() until it returns a truthy value, which is returned.

    Raises AssertionError naming `what` after `timeout` seconds (default DEFAULT_TIMEOUT).
    The poll interval grows from `interval` to at most 50 ms.
    """
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 2, 0.05)


# ---------------------------------------------------------------------------------------------
# Messages: stored form vs. wire form

def crlf(data):
    """Stored bytes with every line end as CRLF (a lone LF becomes CRLF; CRLF stays)."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def octets(data):
    """RFC 1939 octet count of a stored message: CRLF line ends, before dot-stuffing."""
    return len(crlf(data))


def wire_body(data):
    """What a client receives for RETR once dot-stuffing is undone, without the terminator.

    The message with CRLF line ends; a message whose last line has no line end gets a CRLF
    so the terminating ".CRLF" starts a line."""
    body = crlf(data)
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body


def dot_stuff(body):
    """Byte-stuffs a CRLF body (RFC 1939 section 3): lines beginning with '.' get one more."""
    if body.startswith(b"."):
        body = b"." + body
    return body.replace(b"\r\n.", b"\r\n..")


def retr_payload(data):
    """The exact bytes after the RETR status line, terminator included."""
    return dot_stuff(wire_body(data)) + b".\r\n"


def top_body(data, lines):
    """Unstuffed body of `TOP msg lines`: the header, the blank line, then `lines` body lines."""
    body = wire_body(data)
    parts = body.split(b"\r\n")[:-1]  # body ends with CRLF, so the last part is empty
    out = []
    in_body = False
    count = 0
    for line in parts:
        if in_body:
            if count >= lines:
                break
            count += 1
        elif line == b"":
            in_body = True
        out.append(line)
    return b"".join(line + b"\r\n" for line in out)


def simple_message(subject, body_lines=("Hello.",), extra_headers=()):
    """A small LF-terminated RFC 5322 message."""
    head = [b"From: Sender <sender@example.org>", b"To: rcpt@example.org",
            b"Date: Tue, 14 Nov 2023 22:13:20 +0000",
            b"Message-ID: <%s@example.org>" % re.sub(rb"[^A-Za-z0-9]", b"-", _b(subject)),
            b"Subject: " + _b(subject)]
    head += [_b(h) for h in extra_headers]
    return b"\n".join(head) + b"\n\n" + b"".join(_b(line) + b"\n" for line in body_lines)


def _b(s):
    return s if isinstance(s, bytes) else s.encode()


# ---------------------------------------------------------------------------------------------
# Maildirs

_name_seq = [0]
_name_lock = threading.Lock()


def unique_base(timestamp=None, with_sizes_of=None):
    """A unique Maildir base name like 1700000001.M1P123.test[,S=..,W=..]."""
    with _name_lock:
        _name_seq[0] += 1
        seq = _name_seq[0]
    ts = 1700000000 + seq if timestamp is None else timestamp
    base = f"{ts}.M{seq}P{os.getpid()}.test"
    if with_sizes_of is not None:
        base += f",S={len(with_sizes_of)},W={octets(with_sizes_of)}"
    return base


class Msg:
    """A message to put into a Maildir.

    where: "new" or "cur"; flags: the Maildir info flags for cur ("" gives ":2,").
    sizes: put Dovecot's ,S=<stored>,W=<wire> into the name.
    """

    def __init__(self, content, where="new", flags="", sizes=False, base=None, timestamp=None):
        self.content = _b(content)
        self.where = where
        self.flags = flags
        self.base = base or unique_base(timestamp, self.content if sizes else None)

    @property
    def uidl(self):
        return self.base

    @property
    def filename(self):
        return self.base if self.where == "new" else f"{self.base}:2,{self.flags}"


class Mailbox:
    """One user's Maildir and the messages the test put there."""

    def __init__(self, path, user, password):
        self.path = path
        self.user = user
        self.password = password
        self.messages = []  # Msg, in the order the test stored them
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)

    def store(self, msg):
        """Writes msg atomically (tmp/ then rename), sets its mtime from its timestamp."""
        tmp = os.path.join(self.path, "tmp", msg.base)
        with open(tmp, "wb") as f:
            f.write(msg.content)
        ts = _timestamp_of(msg.base)
        if ts is not None:
            os.utime(tmp, (ts, ts))
        os.rename(tmp, os.path.join(self.path, msg.where, msg.filename))
        self.messages.append(msg)
        return msg

    def deliver(self, content, timestamp=None):
        """Delivers a new message into new/ like an MDA would (while a session may run)."""
        return self.store(Msg(content, "new", timestamp=timestamp))

    def by_uidl(self, uidl):
        for m in self.messages:
            if m.uidl == uidl:
                return m
        raise KeyError(uidl)

    def files(self):
        """{(subdir, filename): content} for everything in new/ and cur/."""
        out = {}
        for sub in ("new", "cur"):
            d = os.path.join(self.path, sub)
            for name in sorted(os.listdir(d)):
                with open(os.path.join(d, name), "rb") as f:
                    out[(sub, name)] = f.read()
        return out

    def state(self):
        """{uidl: (subdir, flags or None, content)}; fails if a message is present twice."""
        out = {}
        for (sub, name), content in self.files().items():
            base, _, info = name.partition(":")
            if base in out:
                raise AssertionError(f"message {base} present twice in {self.path}: "
                                     f"{out[base][0]} and {sub}/{name}")
            flags = info[2:] if info.startswith("2,") else None
            out[base] = (sub, flags, content)
        return out

    def contents(self):
        """{uidl: content} of every message now in the maildir."""
        return {uidl: v[2] for uidl, v in self.state().items()}

    def tmp_files(self):
        return sorted(os.listdir(os.path.join(self.path, "tmp")))


def _timestamp_of(base):
    m = re.match(r"(\d+)\.", base)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------
# A raw POP3 connection

class Closed(Exception):
    """The peer closed the connection (EOF or reset) before a complete reply."""


class Pop3Conn:
    """A byte-exact POP3 client over one socket. Every read has a deadline.

    Replies are returned as str status lines (CRLF removed) and raw bytes for multi-line
    bodies (still dot-stuffed, terminator removed) so tests can compare exactly.
    """

    def __init__(self, port=None, host="127.0.0.1", timeout=None, sock=None):
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        if sock is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect((host, port))
        self.sock = sock
        self.sock.settimeout(self.timeout)
        self.buf = bytearray()
        self.eof = False
        self.transcript = []  # (direction, bytes) for failure messages, bounded
        self.greeting = None

    # -- plumbing
    def _note(self, direction, data):
        if len(self.transcript) < 200:
            self.transcript.append((direction, bytes(data[:300])))

    def describe(self):
        return "\n".join(f"{d} {b!r}" for d, b in self.transcript[-30:])

    def _fill(self, deadline):
        if self.eof:
            raise Closed("connection closed by server\n" + self.describe())
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("timed out waiting for the server\n" + self.describe())
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            raise AssertionError("timed out waiting for the server\n" + self.describe())
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            raise Closed("connection closed by server\n" + self.describe())
        self.buf += data

    def send(self, data):
        data = _b(data)
        self._note(">", data)
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)

    def read_line(self, timeout=None):
        """One reply line as bytes, CRLF included."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        scanned = 0
        while True:
            i = self.buf.find(b"\r\n", scanned)
            if i >= 0:
                line = bytes(self.buf[:i + 2])
                del self.buf[:i + 2]
                self._note("<", line)
                return line
            scanned = max(0, len(self.buf) - 1)
            if len(self.buf) > 1 << 16:
                raise AssertionError(f"reply line longer than 64 KiB: {bytes(self.buf[:100])!r}")
            self._fill(deadline)

    def status(self, timeout=None):
        """One status line as str without CRLF."""
        return self.read_line(timeout).decode("latin-1")[:-2]

    def read_body(self, timeout=None):
        """The rest of a multi-line reply: raw (dot-stuffed) bytes, terminator removed."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self.buf) < 3:
            self._fill(deadline)
        if self.buf[:3] == b".\r\n":
            del self.buf[:3]
            self._note("<", b".\r\n")
            return b""
        scanned = 0
        while True:
            i = self.buf.find(b"\r\n.\r\n", scanned)
            if i >= 0:
                body = bytes(self.buf[:i + 2])
                del self.buf[:i + 5]
                self._note("<", body)
                return body
            scanned = max(0, len(self.buf) - 4)
            self._fill(deadline)

    # -- commands
    def read_greeting(self):
        self.greeting = self.status()
        return self.greeting

    def cmd(self, line, timeout=None):
        """Sends one command line, returns the status line."""
        self.send(_b(line) + b"\r\n")
        return self.status(timeout)

    def cmd_multi(self, line, timeout=None):
        """Sends a command with a multi-line reply: returns (status, raw body or None)."""
        st = self.cmd(line, timeout)
        if not st.startswith("+OK"):
            return st, None
        return st, self.read_body(timeout)

    def login(self, user, password):
        """USER/PASS; raises AssertionError unless both answer +OK."""
        st = self.cmd(f"USER {user}")
        if not st.startswith("+OK"):
            raise AssertionError(f"USER {user}: {st}")
        st = self.cmd(f"PASS {password}")
        if not st.startswith("+OK"):
            raise AssertionError(f"PASS for {user}: {st}")
        return st

    def quit(self):
        """QUIT; returns the status line and checks that the server then closes."""
        st = self.cmd("QUIT")
        self.expect_closed()
        return st

    def expect_closed(self, timeout=None, max_lines=1):
        """Waits for EOF; returns the lines (at most max_lines) that came before it."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        lines = []
        while True:
            while b"\r\n" in self.buf:
                i = self.buf.find(b"\r\n")
                lines.append(bytes(self.buf[:i]).decode("latin-1"))
                del self.buf[:i + 2]
            if len(lines) > max_lines:
                raise AssertionError(f"expected the server to close, got lines {lines!r}")
            try:
                self._fill(deadline)
            except Closed:
                if self.buf:
                    lines.append(bytes(self.buf).decode("latin-1"))
                return lines

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------------
# Config

def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def toml_text(sections):
    """{section: {key: value}} as TOML text, in the given order."""
    out = []
    for section, keys in sections.items():
        out.append(f"[{section}]")
        for k, v in keys.items():
            out.append(f"{k} = {toml_value(v)}")
        out.append("")
    return "\n".join(out)


def parse_duration(v):
    """Seconds (float) from an integer or "500ms"/"30s"/"10m"/"1h"."""
    if isinstance(v, bool):
        raise ValueError(v)
    if isinstance(v, (int, float)):
        return float(v)
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h)?\s*", str(v))
    if not m:
        raise ValueError(v)
    return int(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]


def openssl_passwd(flag, password, salt="xyzsalt1"):
    """crypt(3) hash via `openssl passwd -1|-5|-6`."""
    out = subprocess.run(["openssl", "passwd", flag, "-salt", salt, password],
                         capture_output=True, check=True, timeout=30)
    return out.stdout.decode().strip()


# ---------------------------------------------------------------------------------------------
# Log parsing

_FIELD = re.compile(r"(\w+)=(<[^>]*>|[^,\s]*)")


def parse_fields(text):
    """{key: value} from "key=<v>, key=v, ..." (angle brackets removed)."""
    out = {}
    for k, v in _FIELD.findall(text):
        if v.startswith("<") and v.endswith(">"):
            v = v[1:-1]
        out.setdefault(k, v)
    return out


def log_events(text, kind):
    """Parsed fields of every log line containing "<kind>: " (login, logout, auth failed)."""
    events = []
    for line in text.splitlines():
        i = line.find(kind + ": ")
        if i >= 0:
            fields = parse_fields(line[i + len(kind) + 2:])
            fields["_line"] = line
            events.append(fields)
    return events


def counts(field):
    """"N/BYTES" -> (N, BYTES)."""
    n, _, b = field.partition("/")
    return int(n), int(b)


def sanitizer_findings(text):
    return [m for m in SANITIZER_MARKERS if m in text]


# ---------------------------------------------------------------------------------------------
# Processes

LISTEN_RE = re.compile(
    r"listening on (\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:]*:[0-9A-Fa-f:]*|[0-9.]+):(\d+)")


class Server:
    """A running `posternd --foreground`, its stderr captured to a file.

    With log_pipe=True, stderr is a small pipe relayed to the file by a thread, and
    block_log() makes the server's next log write block (the pipe is filled and the relay
    paused) until unblock_log(): a way to hold the server at a log statement and widen a race.
    """

    def __init__(self, world, config_path, log_path, args=(), log_pipe=False):
        self.world = world
        self.config_path = config_path
        self.log_path = log_path
        self.logf = open(log_path, "ab")
        self._relay = None
        self._stuffer = None
        out = self.logf
        if log_pipe:
            r, w = os.pipe()
            fcntl.fcntl(w, F_SETPIPE_SZ, 4096)
            # A second open file description, so O_NONBLOCK here does not reach posternd.
            self._stuffer = os.open(f"/proc/self/fd/{w}", os.O_WRONLY | os.O_NONBLOCK)
            self._relay_go = threading.Event()
            self._relay_go.set()
            self._relay_parked = threading.Event()
            self._relay = threading.Thread(target=self._relay_loop, args=(r,), daemon=True)
            out = w
        cmd = [POSTERND, "--config", config_path, "--foreground", *args]
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=out, close_fds=True, cwd=world.dir,
                                         preexec_fn=posternd_preexec(world, config_path))
        finally:
            if log_pipe:
                os.close(w)
        if self._relay:
            self._relay.start()
        self.listeners = []  # [(host, port)] in log order
        self.stopped = False
        self.returncode = None

    def _relay_loop(self, r):
        try:
            while True:
                if not self._relay_go.is_set():
                    self._relay_parked.set()
                    self._relay_go.wait()
                    self._relay_parked.clear()
                data = os.read(r, 65536)
                if not data:
                    break
                self.logf.write(data)
                self.logf.flush()
        finally:
            os.close(r)

    def block_log(self):
        """Fills the log pipe: the server's next log write blocks until unblock_log()."""
        self._relay_go.clear()
        os.write(self._stuffer, b"\n")  # wakes the relay if it sits in read()
        if not self._relay_parked.wait(DEFAULT_TIMEOUT):
            raise AssertionError("log relay thread did not pause")
        deadline = time.monotonic() + DEFAULT_TIMEOUT
        while time.monotonic() < deadline:
            try:
                os.write(self._stuffer, b"\n")
            except BlockingIOError:
                return
        raise AssertionError("could not fill posternd's log pipe")

    def unblock_log(self):
        self._relay_go.set()

    def _close_log(self):
        if self._stuffer is not None:
            os.close(self._stuffer)
            self._stuffer = None
        if self._relay is not None:
            self._relay_go.set()
            self._relay.join(DEFAULT_TIMEOUT)
        if not self.logf.closed:
            self.logf.close()

    def wait_listening(self, count):
        def ready():
            found = LISTEN_RE.findall(self.log())
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"posternd exited with {self.proc.returncode} before "
                                     f"listening:\n{self.log()}")
            return None
        found = wait_for(ready, what=f"{count} 'listening on' log lines")
        self.listeners = [(h.strip("[]"), int(p)) for h, p in found[:count]]
        return self

    @property
    def port(self):
        """The first IPv4 listener's port."""
        for h, p in self.listeners:
            if ":" not in h:
                return p
        return self.listeners[0][1]

    def port_for(self, host):
        for h, p in self.listeners:
            if h == host:
                return p
        raise AssertionError(f"no listener on {host}: {self.listeners}")

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_log(self, pattern, timeout=None, count=1):
        """Waits until `pattern` (regex) matches at least `count` times; returns the matches."""
        rx = re.compile(pattern)

        def found():
            m = list(rx.finditer(self.log()))
            return m if len(m) >= count else None
        return wait_for(found, timeout, what=f"log line /{pattern}/ x{count}")

    def events(self, kind):
        return log_events(self.log(), kind)

    def wait_events(self, kind, count=1, timeout=None, **match):
        """Waits for `count` log events of `kind` whose fields equal `match`; returns them."""
        def found():
            ev = [e for e in self.events(kind)
                  if all(e.get(k) == v for k, v in match.items())]
            return ev if len(ev) >= count else None
        return wait_for(found, timeout, what=f"{count} '{kind}' log events with {match}")

    def connect(self, host="127.0.0.1", port=None, timeout=None, greet=True):
        conn = Pop3Conn(port or (self.port if host == "127.0.0.1" else self.port_for(host)),
                        host=host, timeout=timeout)
        self.world.on_cleanup(conn.close)
        if greet:
            g = conn.read_greeting()
            if not g.startswith("+OK"):
                raise AssertionError(f"greeting: {g!r}")
        return conn

    def session(self, mailbox, **kw):
        """A connection logged in as mailbox's user."""
        conn = self.connect(**kw)
        conn.login(mailbox.user, mailbox.password)
        return conn

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        with privileged():  # fork mode's master stays root
            self.proc.send_signal(sig)

    def wait_exit(self, timeout=None):
        timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with privileged():
                self.proc.kill()
            self.proc.wait(DEFAULT_TIMEOUT)
            raise AssertionError(f"posternd did not exit within {timeout:.1f}s; killed\n"
                                 + self.world.tail(self.log()))
        self.stopped = True
        self._close_log()
        return self.returncode

    def stop(self, check=True):
        """SIGTERM, bounded wait; with check, asserts exit status 0 and a clean log."""
        if self.stopped:
            return self.returncode
        if self._relay is not None:
            self.unblock_log()
        if self.proc.poll() is None:
            with privileged():
                self.proc.send_signal(signal.SIGTERM)
        rc = self.wait_exit(scaled(15))
        if check:
            self.check_exit(rc)
        return rc

    def check_exit(self, rc):
        log = self.log()
        if rc != 0:
            raise AssertionError(f"posternd exited with status {rc}, expected 0\n"
                                 + self.world.tail(log))
        self.check_log_clean()

    def check_log_clean(self):
        log = self.log()
        bad = sanitizer_findings(log)
        if bad:
            raise AssertionError(f"sanitizer findings {bad} in posternd log:\n" + log[-20000:])

    def kill(self):
        """SIGKILL and reap (nothing more may be expected of the process)."""
        if self.proc.poll() is None:
            with privileged():
                self.proc.kill()
        self.proc.wait(DEFAULT_TIMEOUT)
        self.stopped = True
        self.returncode = self.proc.returncode
        self._close_log()


class Inetd:
    """`posternd --inetd` with one end of a socketpair as its stdin and stdout."""

    def __init__(self, world, config_path, log_path):
        self.world = world
        self.log_path = log_path
        self.logf = open(log_path, "ab")
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen([POSTERND, "--config", config_path, "--inetd"],
                                         stdin=child.fileno(), stdout=child.fileno(),
                                         stderr=self.logf, close_fds=True, cwd=world.dir,
                                         preexec_fn=posternd_preexec(world, config_path))
        finally:
            child.close()
        self.conn = Pop3Conn(sock=parent)
        world.on_cleanup(self.conn.close)
        self.returncode = None

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_exit(self, timeout=None):
        timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with privileged():
                self.proc.kill()
            self.proc.wait(DEFAULT_TIMEOUT)
            raise AssertionError(f"posternd --inetd did not exit within {timeout:.1f}s\n"
                                 + self.world.tail(self.log()))
        self.logf.close()
        return self.returncode

    def check_log_clean(self):
        bad = sanitizer_findings(self.log())
        if bad:
            raise AssertionError(f"sanitizer findings {bad} in posternd log:\n" + self.log())

    def stop(self):
        if self.proc.poll() is None:
            with privileged():
                self.proc.kill()
        self.proc.wait(DEFAULT_TIMEOUT)
        if not self.logf.closed:
            self.logf.close()


def run_posternd(args, timeout=None, cwd=None):
    """Runs posternd to completion (--check-config, --version): CompletedProcess, text mode."""
    res = subprocess.run([POSTERND, *args], capture_output=True, timeout=timeout or
                         DEFAULT_TIMEOUT, stdin=subprocess.DEVNULL, cwd=cwd)
    res.stdout = res.stdout.decode("utf-8", "replace")
    res.stderr = res.stderr.decode("utf-8", "replace")
    return res


# ---------------------------------------------------------------------------------------------
# The unprivileged mail owner of root runs

TEST_USER = os.environ.get("POSTERN_TEST_USER") or "postern-it"
_ROOT_GROUPS = os.getgroups() if os.getuid() == 0 else None


def test_user():
    """The pwd entry of TEST_USER, created (useradd, under a lock shared by parallel test
    processes) when missing. Only for root runs."""
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        pass
    with open("/tmp/postern-it-useradd.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return pwd.getpwnam(TEST_USER)
        except KeyError:
            pass
        res = subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                              "--user-group", "--comment", "Postern integration tests", TEST_USER],
                             capture_output=True, timeout=60)
        if res.returncode != 0:
            raise AssertionError(f"useradd {TEST_USER} failed: {res.stderr!r}")
        return pwd.getpwnam(TEST_USER)


# ---------------------------------------------------------------------------------------------
# Changes to the machine outside the test's directory: removed even when the run is cut short

# Tests that create system users or files outside their temporary directory (/etc/pam.d)
# record each one here before making it, and remove it (and its record) when done. What a run
# could not remove (SIGKILL, a crash, a reboot) is removed by the next run: at import, every
# record whose process is gone is undone. The records live in LEFTOVERS_DIR (kept across
# reboots, as the users are), one file per change, holding the pid and boot of the test
# process that made it, so parallel runs never undo each other's.
LEFTOVERS_DIR = "/var/tmp/postern-it-leftovers"
_made_here = {}  # (kind, name) -> record path, for this process


def _boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _record_path(kind, name):
    return os.path.join(LEFTOVERS_DIR, f"{kind}:{name.replace('/', '%')}")


def record_machine_change(kind, name):
    """Records that this process is about to create `name` (kind "user" or "file"); undone
    by forget_machine_change, at exit, on SIGTERM/SIGINT/SIGHUP, or by the next run."""
    if not _may_undo(kind, name):
        raise ValueError(f"not a change the harness can undo: {kind} {name!r}")
    with _effective_root():
        os.makedirs(LEFTOVERS_DIR, mode=0o700, exist_ok=True)
        path = _record_path(kind, name)
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n{_boot_id()}\n{name}\n")
    _made_here[(kind, name)] = path


def forget_machine_change(kind, name):
    """The change was undone: drops its record."""
    path = _made_here.pop((kind, name), None) or _record_path(kind, name)
    with _effective_root():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _may_undo(kind, name):
    """Only users with plain names and files in /etc/pam.d are ever recorded or removed."""
    if kind == "user":
        return re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", name) is not None
    return (kind == "file" and os.path.dirname(name) == "/etc/pam.d"
            and re.fullmatch(r"[A-Za-z0-9._-]+", os.path.basename(name)) is not None
            and os.path.basename(name) not in (".", ".."))


def _undo(kind, name):
    if not _may_undo(kind, name):
        return
    if kind == "user":
        subprocess.run(["userdel", "-f", name], capture_output=True, timeout=60)
        try:
            grp.getgrnam(name)
            subprocess.run(["groupdel", name], capture_output=True, timeout=60)
        except KeyError:
            pass
    else:
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


def remove_user(name):
    """userdel (and groupdel) of a user recorded with record_machine_change, and its record."""
    _undo("user", name)
    forget_machine_change("user", name)


def undo_machine_changes():
    """Undoes every change this process recorded and has not undone (atexit, signals)."""
    if not _made_here:
        return
    if os.getresuid()[2] == 0 and os.geteuid() != 0:
        _regain_root()
    for (kind, name) in list(_made_here):
        try:
            _undo(kind, name)
        finally:
            forget_machine_change(kind, name)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers():
    """Undoes the recorded changes of test processes that are gone (an earlier, killed run).
    Returns [(kind, name)] undone."""
    undone = []
    try:
        entries = os.listdir(LEFTOVERS_DIR)
    except (FileNotFoundError, PermissionError):
        return undone
    for entry in entries:
        path = os.path.join(LEFTOVERS_DIR, entry)
        try:
            with open(path) as f:
                pid_text, boot, name = f.read().split("\n")[:3]
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        kind = entry.split(":", 1)[0]
        if not _may_undo(kind, name) or (boot == _boot_id() and _pid_alive(pid)):
            continue
        _undo(kind, name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        undone.append((kind, name))
    return undone


def _on_fatal_signal(signo, _frame):
    undo_machine_changes()
    signal.signal(signo, signal.SIG_DFL)
    os.kill(os.getpid(), signo)


if os.getuid() == 0:
    atexit.register(undo_machine_changes)
    for _sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(_sig) in (signal.SIG_DFL, None):
            signal.signal(_sig, _on_fatal_signal)
    # SIGINT raises KeyboardInterrupt, which ends the run through atexit. The default
    # handler is kept so that unittest's own handling of ^C (if enabled) still works.
    sweep_leftovers()


class _ImportsAsRoot:
    """While a World runs as its owner, Python's own files may be out of its reach (a Python
    under /root, mode 0700): a module imported then (lazily, inside a test) is found and
    loaded with the effective uid 0 for that moment. Installed first in sys.meta_path."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if os.geteuid() == 0 or os.getresuid()[2] != 0:
            return None
        with _effective_root():
            spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _LoaderAsRoot(spec.loader)
        return spec

    @classmethod
    def invalidate_caches(cls):
        pass


class _LoaderAsRoot:
    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        with _effective_root():
            return self._inner.create_module(spec)

    def exec_module(self, module):
        with _effective_root():
            return self._inner.exec_module(module)

    def __getattr__(self, attr):
        return getattr(self._inner, attr)


@contextlib.contextmanager
def _effective_root():
    euid, egid = os.geteuid(), os.getegid()
    if euid == 0 or os.getresuid()[2] != 0:  # root already, or never root (an ordinary user)
        yield
        return
    os.setresuid(-1, 0, -1)
    os.setresgid(-1, 0, -1)
    try:
        yield
    finally:
        os.setresgid(-1, egid, -1)
        os.setresuid(-1, euid, -1)


if os.getuid() == 0:
    sys.meta_path.insert(0, _ImportsAsRoot)


def privileged():
    """Context manager: effective root for the block when the harness switched this process to
    a World's owner (reading /proc/PID/fd of posternd, which is not dumpable once it dropped
    privileges); otherwise runs the block with the ids it has."""
    return _effective_root()


def _become(pw):
    """Real and effective ids to pw's; the saved ids stay 0 so _regain_root() can undo it."""
    os.setgroups([pw.pw_gid])
    os.setresgid(pw.pw_gid, pw.pw_gid, 0)
    os.setresuid(pw.pw_uid, pw.pw_uid, 0)


def _regain_root():
    os.setresuid(0, 0, 0)
    os.setresgid(0, 0, 0)
    if _ROOT_GROUPS is not None:
        os.setgroups(_ROOT_GROUPS)


def _child_as_root():
    """preexec_fn: the child becomes root again (it drops privileges itself)."""
    if os.getresuid()[2] == 0:
        _regain_root()


def _child_as(pw):
    """preexec_fn: the child is pw through and through (no saved root uid)."""
    def run():
        if os.getresuid()[2] == 0:
            _regain_root()
            os.setgroups([pw.pw_gid])
            os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
            os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    return run


def _wants_root_start(config_path):
    """True when posternd, given this config, should start as root: it names [server] user
    (and so drops privileges itself) or runs fork mode."""
    try:
        with open(config_path, "rb") as f:
            cfg = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return True
    server = cfg.get("server", {}) if isinstance(cfg.get("server"), dict) else {}
    return bool(server.get("user")) or server.get("process_model") == "fork"


def posternd_preexec(world, config_path):
    """The preexec_fn for a posternd child of `world` (None: inherit this process's ids)."""
    if world is None or world.owner is None:
        return None
    if _wants_root_start(config_path):
        return _child_as_root
    return _child_as(world.owner)


# ---------------------------------------------------------------------------------------------
# One test's world

class World:
    """A temporary directory with users, maildirs, config and the processes of one test."""

    def __init__(self, test, as_root=None):
        self.test = test
        if as_root is None:
            as_root = getattr(test, "world_as_root", False)
        # Root runs: the test's files belong to the unprivileged mail owner (see the top).
        self.owner = test_user() if os.geteuid() == 0 and not as_root else None
        if self.owner is not None:
            _become(self.owner)
            test.addCleanup(_regain_root)  # runs after _cleanup (cleanups run last-in first-out)
        self.dir = tempfile.mkdtemp(prefix="postern-it-")
        os.chmod(self.dir, 0o755)
        self.mail_root = os.path.join(self.dir, "mail")
        os.makedirs(self.mail_root)
        self.passwd_path = os.path.join(self.dir, "users")
        self.passwd_lines = []
        self.mailboxes = {}
        self.servers = []
        self.inetds = []
        self._cleanups = []
        self.config = {
            "server": {
                "listen": ["127.0.0.1:0"],
                "idle_timeout": "60s",
                "max_connections": 10000,
                "max_connections_per_ip": 200,
                "max_bad_commands": 20,
            },
            "mail": {"location": f"maildir:{self.mail_root}/%u/Maildir"},
            # The per-address penalty is off unless a test turns it on (test_auth_penalty.py):
            # other tests fail logins on purpose from the one address they all share.
            "auth": {"passdb": f"passwd-file:{self.passwd_path}", "failure_delay": "200ms",
                     "penalty_max": 0},
            "log": {"level": "debug", "target": "stderr"},
        }
        if self.owner is not None:
            self.config["server"]["user"] = self.owner.pw_name
        self._nconfig = 0
        self._nlog = 0
        test.addCleanup(self._cleanup)

    # -- users and mail
    def add_user(self, user, password="secret", messages=(), passwd_secret=None, home="",
                 maildir=None):
        """Adds a passwd-file line and a Maildir holding `messages` (Msg or bytes).

        passwd_secret: the "{SCHEME}..." field (default {PLAIN}password).
        maildir: where the Maildir goes (default mail/<user>/Maildir, matching the config).
        """
        secret = passwd_secret or "{PLAIN}" + password
        self.passwd_lines.append(f"{user}:{secret}::::{home}::")
        self.write_passwd()
        path = maildir or os.path.join(self.mail_root, user, "Maildir")
        box = Mailbox(path, user, password)
        for m in messages:
            box.store(m if isinstance(m, Msg) else Msg(m))
        self.mailboxes[user] = box
        return box

    def add_passwd_line(self, line):
        self.passwd_lines.append(line)
        self.write_passwd()

    def write_passwd(self):
        with open(self.passwd_path, "w") as f:
            f.write("".join(line + "\n" for line in self.passwd_lines))
        os.chmod(self.passwd_path, 0o600)

    # -- config and processes
    def write_config(self, text=None, name=None):
        """Writes the config (default: self.config as TOML); returns its path."""
        self._nconfig += 1
        path = os.path.join(self.dir, name or f"postern{self._nconfig}.toml")
        with open(path, "w") as f:
            f.write(toml_text(self.config) if text is None else text)
        return path

    def _log_path(self, stem):
        self._nlog += 1
        return os.path.join(self.dir, f"{stem}{self._nlog}.log")

    def start(self, config_path=None, listeners=None, log_pipe=False, env=None):
        """Starts posternd --foreground and waits until every listener is bound.

        env: variables added to the server's environment (test hooks of a test build)."""
        config_path = config_path or self.write_config()
        if listeners is None:
            listeners = len(self.config["server"]["listen"])
        saved = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            srv = Server(self, config_path, self._log_path("posternd"), log_pipe=log_pipe)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.servers.append(srv)
        return srv.wait_listening(listeners)

    def inetd(self, config_path=None):
        config_path = config_path or self.write_config()
        inetd = Inetd(self, config_path, self._log_path("inetd"))
        self.inetds.append(inetd)
        return inetd

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    @contextlib.contextmanager
    def as_root(self):
        """Runs the block as root (useradd, chown to another user, mount), then switches back
        to the World's owner. Without an owner (not root, or world_as_root) it only runs it."""
        if self.owner is None:
            yield
            return
        _regain_root()
        try:
            yield
        finally:
            _become(self.owner)

    def give(self, *paths):
        """chown -R to the World's owner (files a test made inside as_root())."""
        if self.owner is None:
            return
        with self.as_root():
            for top in paths:
                for root, dirs, files in os.walk(top):
                    for p in [root] + [os.path.join(root, x) for x in dirs + files]:
                        os.lchown(p, self.owner.pw_uid, self.owner.pw_gid)

    def on_cleanup(self, fn):
        self._cleanups.append(fn)

    def tail(self, text, lines=150):
        return "\n".join(text.splitlines()[-lines:])

    def _cleanup(self):
        errors = []
        if self.owner is not None:
            _regain_root()  # stops servers and removes files whoever made them
        try:
            for fn in reversed(self._cleanups):
                try:
                    fn()
                except Exception:  # a client socket already gone, etc.
                    pass
            for srv in self.servers:
                if not srv.stopped:
                    try:
                        srv.stop(check=True)
                    except Exception as e:
                        errors.append(str(e))
            for inetd in self.inetds:
                try:
                    inetd.stop()
                except Exception as e:
                    errors.append(str(e))
                bad = sanitizer_findings(inetd.log())
                if bad:
                    errors.append(f"sanitizer findings {bad} in {inetd.log_path}:\n"
                                  f"{inetd.log()}")
            if errors or _has_failed(self.test):
                for srv in self.servers:
                    sys.stderr.write(f"\n--- {srv.log_path} (tail) ---\n"
                                     f"{self.tail(srv.log())}\n")
                for inetd in self.inetds:
                    sys.stderr.write(f"\n--- {inetd.log_path} (tail) ---\n"
                                     f"{self.tail(inetd.log())}\n")
        finally:
            if KEEP_TMP:
                sys.stderr.write(f"\n[kept {self.dir}]\n")
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise AssertionError("\n".join(errors))


def _has_failed(test):
    """True if the running test (or one of its subtests) has recorded a failure or error.

    Cleanups run inside their own unittest "test part", so the outcome's success flag says
    nothing about the test body; the result's lists do."""
    result = getattr(getattr(test, "_outcome", None), "result", None)
    if result is None:
        return False
    for t, _ in list(getattr(result, "failures", [])) + list(getattr(result, "errors", [])):
        if t is test or getattr(t, "test_case", None) is test:
            return True
    return False


class PosternTestCase(unittest.TestCase):
    """Base class: self.world is a fresh World for each test."""

    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        if not have_binary():
            raise AssertionError(f"posternd not found or not executable: {POSTERND} "
                                 "(build it, or set POSTERND)")

    def setUp(self):
        self.world = World(self)

    # -- assertions shared by the test files
    def assertOk(self, status, msg=None):
        self.assertTrue(status.startswith("+OK"), msg or f"expected +OK, got {status!r}")

    def assertErr(self, status, msg=None):
        self.assertTrue(status == "-ERR" or status.startswith("-ERR "),
                        msg or f"expected -ERR, got {status!r}")

    def assertRetrieved(self, payload, content, what="message"):
        """payload: raw bytes after the RETR status line, terminator removed."""
        expected = dot_stuff(wire_body(content))
        if payload != expected:
            self.fail(f"{what}: retrieved bytes differ from the stored message\n"
                      + describe_difference(expected, payload))

    def assertSameBytes(self, actual, expected, what="bytes"):
        if actual != expected:
            self.fail(f"{what} differ\n" + describe_difference(expected, actual))

    def assertSameListing(self, actual, expected, what="listing"):
        """LIST/UIDL listings (raw bodies, or lists of lines or pairs) are equal; on failure
        the message shows the counts and the lines around the first difference only."""
        if isinstance(actual, (bytes, bytearray)):
            actual = parse_listing(actual)
        if isinstance(expected, (bytes, bytearray)):
            expected = parse_listing(expected)
        actual, expected = list(actual), list(expected)
        if actual != expected:
            self.fail(f"{what} differs\n" + describe_listing_difference(expected, actual))


def first_difference(a, b):
    """Index of the first byte (or item) where a and b differ; min(len) if one is a prefix.
    Compares halves (C speed), so a 1 MiB comparison takes microseconds, not a Python loop."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], and they differ before hi
    while hi - lo > 32:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return next(k for k in range(lo, hi) if a[k] != b[k])


def describe_difference(expected, actual):
    i = first_difference(expected, actual)
    lo = max(0, i - 60)
    return (f"lengths: expected {len(expected)}, actual {len(actual)}; first difference at "
            f"byte {i}\n expected[{lo}:{i + 60}] = {expected[lo:i + 60]!r}\n"
            f" actual  [{lo}:{i + 60}] = {actual[lo:i + 60]!r}")


def describe_listing_difference(expected, actual, context=3):
    """A short report of how two listings (lists of lines or (n, value) pairs) differ: the
    counts and a few lines around the first difference, never the whole listings."""
    i = first_difference(expected, actual)
    lo = max(0, i - context)
    lines = [f"{len(expected)} lines expected, {len(actual)} received; first difference at line "
             f"{i + 1}"]
    for k in range(lo, min(max(len(expected), len(actual)), i + context + 1)):
        e = expected[k] if k < len(expected) else "(none)"
        a = actual[k] if k < len(actual) else "(none)"
        mark = "  " if e == a else "!!"
        lines.append(f"{mark} line {k + 1}: expected {e!r}, received {a!r}")
    return "\n".join(lines)


def parse_listing(body):
    """LIST/UIDL body -> [(msgno, value)] (raw body, CRLF lines)."""
    out = []
    for line in body.decode("latin-1").split("\r\n")[:-1]:
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0].isdigit():
            raise AssertionError(f"malformed listing line {line!r}")
        out.append((int(parts[0]), parts[1]))
    return out


def ipv6_loopback_available():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False

