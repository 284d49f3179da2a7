"""Load and abuse against the real posternd with its default limits (docs/reliability.md,
"Load and abuse").

Each test starts posternd with the defaults of max_connections, max_connections_per_ip,
idle_timeout, login_timeout, max_bad_commands, failure_delay and the per-address penalty,
measures a legitimate client's login + RETR of a 100 KB message on the idle server (median),
runs one abuse scenario from many loopback source addresses (tests/integration/load_driver.py,
a process of its own), and asserts while it runs:

- the legitimate client's median latency stays within 2x of the idle median (measured in the
  same run, on the same server);
- the abuse got what the defaults promise (every connection held, floods turned away, no
  guess succeeded);

and afterwards that the server still serves and its descriptor count is back to what it was
before the scenario.

Sizes (CI default; the figures in docs/reliability.md were made with the larger ones):
  POSTERN_LOAD_CONNECTIONS  authenticated connections held (2000; 10000 in the docs)
  POSTERN_LOAD_SLOW         slow clients (400; 1000 in the docs)
  POSTERN_LOAD_SECONDS      how long each flood runs while the latency is measured (5)
  POSTERN_LOAD_FLOOD_LOOPS  connections the connection flood keeps in flight (16; ASan 4)
  POSTERN_LOAD_FLOOD_RATE   its connections per second, 0 = unpaced (1000; ASan 200)
  POSTERN_LOAD_PROCESSES    server.processes (unset: the default, 1)
"""

import statistics
import time

from postern_harness import SANITIZE, PosternTestCase, scaled, simple_message
from load_support import (Driver, Legit, add_users, big_message, env_int, fd_count, rss_kib,
                          use_defaults, wait_fds)

CONNECTIONS = env_int("POSTERN_LOAD_CONNECTIONS", 2000)
SLOW = env_int("POSTERN_LOAD_SLOW", 400)
SECONDS = env_int("POSTERN_LOAD_SECONDS", 5)
# Only for the figures of a machine whose hard RLIMIT_NOFILE cannot hold 2 x 10,000 session
# descriptors in one process (docs/reliability.md); unset, server.processes keeps its default.
PROCESSES = env_int("POSTERN_LOAD_PROCESSES", 0)
SAMPLES = 15
# Connections the flood keeps in flight, each opened and closed again at once, and how many
# it makes per second in all (0: as fast as the driver can). On CI's two cores an unpaced
# flood puts the driver, the server and the legitimate client on the same CPUs, and then
# measures the scheduler more than the server: CI paces it (the figures in
# docs/reliability.md include unpaced runs). The ASan build is about five times slower.
FLOOD_LOOPS = env_int("POSTERN_LOAD_FLOOD_LOOPS", 4 if SANITIZE else 16)
FLOOD_RATE = env_int("POSTERN_LOAD_FLOOD_RATE", 200 if SANITIZE else 1000)  # legit sessions per median
MESSAGE_SIZE = 100 * 1024


class LoadTest(PosternTestCase):

    def setUp(self):
        super().setUp()
        use_defaults(self.world)
        if PROCESSES:
            self.world.config["server"]["processes"] = PROCESSES

    def start(self, users=0, user_messages=()):
        """posternd with default limits, `users` load users, the legitimate user and the
        guessing victim; returns (server, legit, baseline descriptor count)."""
        add_users(self.world, "load", users, messages=user_messages)
        legit_box = add_users(self.world, "legit", 1, password="legit-pass",
                              messages=[big_message(MESSAGE_SIZE)])[0]
        add_users(self.world, "victim", 1, password="not-guessable-8c1e")
        srv = self.world.start()
        legit = Legit(srv, legit_box)
        legit.once()  # warm: the first session opens what later ones reuse
        return srv, legit, fd_count(srv.proc.pid)

    def idle_times(self, legit):
        return [legit.once() for _ in range(SAMPLES)]

    def assert_latency(self, idle_before, idle_after, loaded, what, cpu_bound=False):
        """The idle median pools the samples taken before the scenario and after it ended:
        the machine's own load drifts (CI runs other work beside), and both sides see it.

        cpu_bound: a flood whose cost is the server's CPU: the pipelined flood, which kept
        the ASan build (about five times slower) reading its buffered commands for seconds
        before the engine yielded between batches (not yet measured in the ASan build since),
        and the connection flood, whose ratio in the ASan build swung from 0.9x to 4.4x
        between runs on a loaded two-core machine. In the ASan build their bound is printed,
        not asserted."""
        idle = statistics.median(idle_before + idle_after)
        asserted = not (cpu_bound and SANITIZE)
        print(f"\n[{what}: legit login+RETR median idle {idle * 1000:.1f} ms, "
              f"loaded {loaded * 1000:.1f} ms ({loaded / idle:.2f}x)"
              f"{'' if asserted else '; 2x bound not asserted in the ASan build'}]", flush=True)
        if not asserted:
            return
        self.assertLessEqual(loaded, 2 * idle,
                             f"{what}: legitimate client's median {loaded * 1000:.1f} ms is more "
                             f"than twice the idle server's {idle * 1000:.1f} ms")

    def after(self, srv, legit, baseline, what):
        """The server still serves, and its descriptors return to the baseline."""
        legit.once()
        wait_fds(srv.proc.pid, baseline, scaled(30))
        self.assertTrue(srv.alive(), f"posternd died after {what}")

    def test_held_authenticated_connections_leave_legit_latency_within_twice_idle(self):
        srv, legit, baseline = self.start(users=CONNECTIONS - 1)
        idle = self.idle_times(legit)
        driver = Driver(self.world, srv.port, "hold", count=CONNECTIONS - 1, first_octet=1,
                        per_source=40)
        ready = driver.wait_ready(scaled(120))
        self.assertEqual(ready.get("held"), CONNECTIONS - 1, f"not every connection held: {ready}")
        loaded = self.loaded_for(legit, 0)
        held_fds = fd_count(srv.proc.pid)
        done = driver.stop(scaled(60))
        wait_fds(srv.proc.pid, baseline, scaled(30))
        print(f"\n[{done}]")
        self.assert_latency(idle, self.idle_times(legit), loaded, f"{CONNECTIONS - 1} held sessions")
        self.assertEqual(done.get("alive_at_end"), CONNECTIONS - 1, f"sessions lost: {done}")
        print(f"[descriptors: {baseline} idle, {held_fds} with {CONNECTIONS - 1} sessions]")
        self.after(srv, legit, baseline, "held connections")

    def test_slow_clients_leave_legit_latency_within_twice_idle(self):
        half = SLOW // 2
        srv, legit, baseline = self.start(users=half, user_messages=[big_message(1 << 20, "slow")])
        idle = self.idle_times(legit)
        driver = Driver(self.world, srv.port, "slow", count=SLOW, first_octet=2, per_source=40,
                        interval=2)
        ready = driver.wait_ready(scaled(120))
        self.assertEqual(ready.get("stalled_retr"), half, f"stalled RETRs: {ready}")
        self.assertEqual(ready.get("trickling"), SLOW - half, f"tricklers: {ready}")
        loaded = self.loaded_for(legit, 0)
        done = driver.stop(scaled(60))
        wait_fds(srv.proc.pid, baseline, scaled(30))
        print(f"\n[{done}]")
        self.assert_latency(idle, self.idle_times(legit), loaded, f"{SLOW} slow clients")
        self.assertFalse(done.get("login_refused") or done.get("connect_error"), done)
        self.after(srv, legit, baseline, "slow clients")

    def test_pipelined_flood_is_throttled_and_legit_latency_within_twice_idle(self):
        """The latency is measured twice: over the first second from the floods' start,
        while the server still reads and answers megabytes of buffered commands (the engine
        yields every pop3::limits::max_lines_per_turn commands, so the legitimate client is not
        held behind a whole read's worth), and once back-pressure holds them. The reading
        lasts only a few hundred milliseconds here, so the first sessions' median and maximum
        are printed as well (docs/reliability.md, "Load and abuse")."""
        srv, legit, baseline = self.start(users=4, user_messages=[simple_message("flood")])
        idle = self.idle_times(legit)
        rss_before = rss_kib(srv.proc.pid)
        driver = Driver(self.world, srv.port, "pipeline", count=4, first_octet=3, megabytes=16,
                        interval=2)
        flooding = driver.wait_ready(scaled(60))
        self.assertEqual(flooding.get("event"), "flooding", flooding)
        first = []
        loaded_reading = self.loaded_for(legit, 1, first)
        print(f"\n[pipelined flood, first {SAMPLES} sessions from its start: median "
              f"{statistics.median(first[:SAMPLES]) * 1000:.1f} ms, "
              f"max {max(first[:SAMPLES]) * 1000:.1f} ms]", flush=True)
        ready = driver.wait_ready(scaled(60))
        self.assertEqual(ready.get("event"), "ready", ready)
        self.assertFalse(ready.get("errors"), ready)
        loaded = self.loaded_for(legit, 0)
        rss_held = rss_kib(srv.proc.pid)
        # Unread answers stay in the socket buffers, not in the server's memory (the ASan
        # build also keeps up to 256 MiB of freed memory in its quarantine).
        bound = (64 + (256 if SANITIZE else 0)) * 1024
        self.assertLess(rss_held - rss_before, bound, f"RSS {rss_before} -> {rss_held} KiB")
        done = driver.stop(scaled(60))
        wait_fds(srv.proc.pid, baseline, scaled(30))
        print(f"\n[{done}]")
        idle_after = self.idle_times(legit)
        self.assert_latency(idle, idle_after, loaded_reading, "pipelined flood, first second",
                            cpu_bound=True)
        self.assert_latency(idle, idle_after, loaded, "pipelined flood, held", cpu_bound=True)
        # Nobody reads the answers, so the server must stop reading commands (back-pressure)
        # instead of buffering answers to megabytes of them; pre-auth, the bad commands end the
        # connection.
        self.assertEqual(done.get("authed_send_blocked"), 4, f"authenticated floods: {done}")
        self.assertLess(done.get("authed_bytes_sent", 0), 4 * (16 << 20), done)
        self.assertTrue(done.get("preauth_closed_by_server") or done.get("preauth_send_blocked"),
                        f"pre-auth flood: {done}")
        self.after(srv, legit, baseline, "pipelined flood")

    def test_connection_flood_leaves_legit_latency_within_twice_idle(self):
        srv, legit, baseline = self.start()
        idle = self.idle_times(legit)
        driver = Driver(self.world, srv.port, "connflood", count=FLOOD_LOOPS, first_octet=4,
                        rate=FLOOD_RATE)
        driver.wait_ready(scaled(30))
        loaded = self.loaded_for(legit, SECONDS)
        done = driver.stop(scaled(60))
        print(f"[connection flood, {FLOOD_LOOPS} loops, rate {FLOOD_RATE or 'unpaced'}: {done}]")
        self.assertGreater(done.get("connections", 0), 100 * SECONDS, done)
        wait_fds(srv.proc.pid, baseline, scaled(30))
        self.assert_latency(idle, self.idle_times(legit), loaded, "connection flood",
                            cpu_bound=True)
        self.after(srv, legit, baseline, "connection flood")

    def test_guessing_from_many_addresses_fails_and_legit_latency_within_twice_idle(self):
        srv, legit, baseline = self.start()
        idle = self.idle_times(legit)
        driver = Driver(self.world, srv.port, "guess", count=500, first_octet=5, victim="victim0")
        driver.wait_ready(scaled(30))
        loaded = self.loaded_for(legit, SECONDS)
        done = driver.stop(scaled(60))
        print(f"[guessing: {done}]")
        self.assertGreater(done.get("guesses", 0), 0, done)
        self.assertFalse(done.get("guessed_right"), done)
        wait_fds(srv.proc.pid, baseline, scaled(30))
        self.assert_latency(idle, self.idle_times(legit), loaded, "guessing from 500 addresses")
        self.after(srv, legit, baseline, "guessing")

    def test_reconnecting_right_after_quit_is_never_refused(self):
        """Regression: the session freed its place in max_connections and its maildrop lock
        only after closing the connection, so a client that logged in again as soon as it
        saw the close could be turned away ("Too many connections" at the limit, [IN-USE])."""
        self.world.config["server"]["max_connections"] = 1
        srv, legit, _ = self.start()
        for _ in range(300):
            legit.once()  # asserts +OK greeting, login and RETR

    def loaded_for(self, legit, seconds, times=None):
        """The legit median over at least SAMPLES sessions and `seconds` of the scenario;
        `times`, if given, receives every session's time in the order they ran."""
        times = [] if times is None else times
        end = time.monotonic() + seconds
        while len(times) < SAMPLES or time.monotonic() < end:
            times.append(legit.once())
        times = sorted(times)
        return times[len(times) // 2]


if __name__ == "__main__":
    import unittest
    unittest.main()
