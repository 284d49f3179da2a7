#!/usr/bin/env python3
"""Load and abuse driver for posternd (tests/integration/test_load.py, docs/reliability.md).

Runs one scenario against 127.0.0.1:PORT from many loopback source addresses (each socket is
bound to 127.A.B.C before it connects, so per-address limits and penalties see many clients)
in one asyncio event loop, in a process of its own so that the test's legitimate client is
not starved by it. Protocol with the parent, one JSON object per line on stdout:

  {"event": "ready", ...}   the scenario is established (connections held, flood running)
  {"event": "done", ...}    after stdin closes: everything is closed again; the counts

Scenarios (--scenario):
  hold       --count N connections, connection i logs in as USER_PREFIX + i and stays idle.
  slow       --count N: half trickle "USER x\\r\\n" one byte every --interval seconds before
             login; half log in, send RETR 1 (a large message) and never read.
  pipeline   --count N clients log in and send --megabytes of --commands each without
             reading an answer; pre-auth, one more sends garbage lines the same way. Reports
             {"event": "flooding"} once every login has been answered (the floods start), and
             is ready when every one of them is stopped (blocked for --interval seconds, closed
             by the server, or done).
  connflood  --count N concurrent loops connect, (every other time) read the greeting, close,
             as fast as they can or --rate connections per second in all.
  guess      --count N concurrent loops, each from its own address, try USER victim /
             PASS wrong-guess over and over.

Addresses: --first-octet A gives sources 127.A.x.y, --per-source connections each (kept under
the server's max_connections_per_ip).
"""

import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import time


def raise_nofile(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 256
    if soft >= want:
        return
    if hard < want:
        try:  # root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def source(first_octet, index):
    """The index-th source address 127.first.x.y (x.y from 0.1, never .0 or .255)."""
    x, y = divmod(index, 254)
    return f"127.{first_octet}.{x}.{y + 1}"


class Counters(dict):
    def add(self, key, n=1):
        self[key] = self.get(key, 0) + n


def connect_socket(src, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((src, 0))
    return s


async def open_from(src, port, loop):
    s = connect_socket(src, port)
    try:
        await loop.sock_connect(s, ("127.0.0.1", port))
    except BaseException:
        s.close()
        raise
    return s


class LineReader:
    def __init__(self, sock, loop):
        self.sock = sock
        self.loop = loop
        self.buf = b""

    async def line(self):
        while b"\r\n" not in self.buf:
            data = await self.loop.sock_recv(self.sock, 4096)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line


def close_reset(s):
    """Closes with an RST (SO_LINGER 0): no TIME_WAIT left on this side."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    s.close()


class Driver:
    def __init__(self, args):
        self.a = args
        self.loop = asyncio.get_running_loop()
        self.c = Counters()
        self.stop = asyncio.Event()
        self.socks = []
        self.logins_answered = 0

    async def login(self, s, user, password):
        r = LineReader(s, self.loop)
        greeting = await r.line()
        if not greeting.startswith(b"+OK"):
            return r, b"greeting " + greeting
        await self.loop.sock_sendall(s, b"USER %s\r\nPASS %s\r\n" % (user.encode(), password.encode()))
        u = await r.line()
        p = await r.line()
        if not u.startswith(b"+OK"):
            return r, u
        return r, (None if p.startswith(b"+OK") else p)

    # -- hold
    async def hold_one(self, i, sem):
        async with sem:
            src = source(self.a.first_octet, i // self.a.per_source)
            try:
                s = await open_from(src, self.a.port, self.loop)
            except OSError as e:
                self.c.add("connect_error")
                self.c["last_error"] = str(e)
                return
            self.socks.append(s)
            try:
                _, err = await self.login(s, f"{self.a.user_prefix}{i}", self.a.password)
            except (OSError, ConnectionError) as e:
                self.c.add("login_error")
                self.c["last_error"] = str(e)
                return
            if err is not None:
                self.c.add("login_refused")
                self.c["last_error"] = err.decode("latin-1")
                return
            self.c.add("held")

    async def hold(self):
        sem = asyncio.Semaphore(self.a.parallel)
        await asyncio.gather(*(self.hold_one(i, sem) for i in range(self.a.count)))
        self.ready()
        await self.stop.wait()
        # Still held? A connection the server closed reads EOF at once.
        alive = 0
        for s in self.socks:
            try:
                s.setblocking(False)
                if s.recv(1, socket.MSG_PEEK) == b"":
                    continue
            except BlockingIOError:
                alive += 1
                continue
            except OSError:
                continue
            alive += 1
        self.c["alive_at_end"] = alive

    # -- slow
    async def trickle(self, i):
        src = source(self.a.first_octet, i // self.a.per_source)
        try:
            s = await open_from(src, self.a.port, self.loop)
        except OSError:
            self.c.add("connect_error")
            return
        self.socks.append(s)
        data = b"USER trickle%d\r\n" % i
        try:
            r = LineReader(s, self.loop)
            await r.line()
            self.c.add("trickling")
            k = 0
            while not self.stop.is_set():
                await self.loop.sock_sendall(s, data[k % len(data):k % len(data) + 1])
                k += 1
                self.c.add("trickle_bytes")
                try:
                    await asyncio.wait_for(self.stop.wait(), self.a.interval)
                except asyncio.TimeoutError:
                    pass
        except (OSError, ConnectionError):
            self.c.add("trickle_closed_by_server")

    async def stalled_retr(self, i):
        src = source(self.a.first_octet, i // self.a.per_source)
        try:
            s = await open_from(src, self.a.port, self.loop)
        except OSError:
            self.c.add("connect_error")
            return
        # A small receive buffer: the server's writes block soon.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.socks.append(s)
        try:
            _, err = await self.login(s, f"{self.a.user_prefix}{i}", self.a.password)
            if err is not None:
                self.c.add("login_refused")
                self.c["last_error"] = err.decode("latin-1")
                return
            await self.loop.sock_sendall(s, b"RETR 1\r\n")
            self.c.add("stalled_retr")
        except (OSError, ConnectionError):
            self.c.add("login_error")

    async def slow(self):
        half = self.a.count // 2
        sem = asyncio.Semaphore(self.a.parallel)

        async def limited(coro):
            async with sem:
                await coro

        await asyncio.gather(*(limited(self.stalled_retr(i)) for i in range(half)))
        trick = [asyncio.ensure_future(self.trickle(half + i)) for i in range(self.a.count - half)]
        while (self.c.get("trickling", 0) + self.c.get("connect_error", 0) +
               self.c.get("trickle_closed_by_server", 0) < len(trick)):
            await asyncio.sleep(0.05)  # until every trickler is greeted (or failed)
        self.ready()
        await self.stop.wait()
        await asyncio.gather(*trick)

    # -- pipeline
    async def pipe_one(self, i, preauth):
        src = source(self.a.first_octet, i)
        s = await open_from(src, self.a.port, self.loop)
        self.socks.append(s)
        if preauth:
            r = LineReader(s, self.loop)
            await r.line()
            chunk = b"XYZZY " + b"a" * 40 + b"\r\n"
        else:
            _, err = await self.login(s, f"{self.a.user_prefix}{i}", self.a.password)
            self.logins_answered += 1
            if self.logins_answered == self.a.count:
                emit("flooding", self.c)
            if err is not None:
                self.c.add("login_refused")
                return
            chunk = self.a.commands.encode().replace(b",", b"\r\n") + b"\r\n"
        block = chunk * (65536 // len(chunk))
        total = self.a.megabytes << 20
        sent = 0
        key = "preauth" if preauth else "authed"
        try:
            while sent < total and not self.stop.is_set():
                try:
                    await asyncio.wait_for(self.loop.sock_sendall(s, block), self.a.interval)
                except asyncio.TimeoutError:
                    self.c.add(f"{key}_send_blocked")  # the server stopped reading: back-pressure
                    break
                sent += len(block)
        except OSError:
            self.c.add(f"{key}_closed_by_server")
        self.c.add(f"{key}_bytes_sent", sent)

    async def pipeline(self):
        """Ready once every flood has been stopped: by back-pressure (the server no longer
        reads), by the server closing it, or by reaching --megabytes."""
        tasks = [asyncio.ensure_future(self.pipe_one(i, False)) for i in range(self.a.count)]
        tasks.append(asyncio.ensure_future(self.pipe_one(self.a.count, True)))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        if errors:
            self.c["errors"] = errors
        self.ready()
        await self.stop.wait()

    # -- connflood
    async def flood_loop(self, k):
        n = 0
        # --rate: connections per second over all loops (0: as fast as possible).
        period = self.a.count / self.a.rate if self.a.rate > 0 else 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            if period:
                next_at += period
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            src = source(self.a.first_octet, (k * 7919 + n) % (254 * 200))
            n += 1
            try:
                s = await open_from(src, self.a.port, self.loop)
            except OSError:
                self.c.add("connect_error")
                await asyncio.sleep(0.01)
                continue
            try:
                if n % 2 == 0:
                    data = await asyncio.wait_for(self.loop.sock_recv(s, 512), 5)
                    self.c.add("greeted" if data.startswith(b"+OK") else "turned_away")
                self.c.add("connections")
            except (OSError, asyncio.TimeoutError):
                self.c.add("read_error")
            finally:
                close_reset(s)

    async def connflood(self):
        tasks = [asyncio.ensure_future(self.flood_loop(k)) for k in range(self.a.count)]
        await asyncio.sleep(0.5)
        self.ready()
        await asyncio.gather(*tasks)

    # -- guess
    async def guess_loop(self, k):
        src = source(self.a.first_octet, k)
        n = 0
        while not self.stop.is_set():
            try:
                s = await open_from(src, self.a.port, self.loop)
            except OSError:
                self.c.add("connect_error")
                await asyncio.sleep(0.05)
                continue
            try:
                r = LineReader(s, self.loop)
                await r.line()
                while not self.stop.is_set():
                    n += 1
                    await self.loop.sock_sendall(
                        s, b"USER %s\r\nPASS guess-%d-%d\r\n" % (self.a.victim.encode(), k, n))
                    await r.line()
                    answer = await r.line()
                    self.c.add("guesses")
                    if answer.startswith(b"+OK"):
                        self.c.add("guessed_right")
            except (OSError, ConnectionError):
                self.c.add("closed_by_server")
            finally:
                close_reset(s)

    async def guess(self):
        tasks = [asyncio.ensure_future(self.guess_loop(k)) for k in range(self.a.count)]
        await asyncio.sleep(0.5)
        self.ready()
        await asyncio.gather(*tasks)

    # -- plumbing
    def ready(self):
        emit("ready", self.c)

    async def run(self):
        self.loop.add_reader(sys.stdin.fileno(), self._stdin)
        started = time.monotonic()
        await getattr(self, self.a.scenario)()
        for s in self.socks:
            close_reset(s)
        self.c["seconds"] = round(time.monotonic() - started, 2)
        emit("done", self.c)

    def _stdin(self):
        if not os.read(sys.stdin.fileno(), 4096):
            self.loop.remove_reader(sys.stdin.fileno())
            self.stop.set()


def emit(event, counters):
    sys.stdout.write(json.dumps({"event": event, **counters}) + "\n")
    sys.stdout.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--scenario", required=True,
                   choices=["hold", "slow", "pipeline", "connflood", "guess"])
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--first-octet", type=int, default=1)
    p.add_argument("--per-source", type=int, default=40)
    p.add_argument("--parallel", type=int, default=200, help="logins in flight at once")
    p.add_argument("--user-prefix", default="load")
    p.add_argument("--password", default="secret")
    p.add_argument("--victim", default="victim")
    p.add_argument("--interval", type=float, default=3.0)
    p.add_argument("--megabytes", type=int, default=8)
    p.add_argument("--rate", type=float, default=0,
                   help="connflood: connections per second in all (0: as fast as possible)")
    p.add_argument("--commands", default="STAT,LIST,UIDL,NOOP,TOP 1 0",
                   help="pipeline: the commands an authenticated flood repeats")
    a = p.parse_args()
    raise_nofile(a.count + 64)
    async def go():
        await Driver(a).run()

    asyncio.run(go())


if __name__ == "__main__":
    main()
