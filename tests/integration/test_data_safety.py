"""The rules that keep mail safe (DESIGN.md), checked against the real posternd.

1. Only QUIT in TRANSACTION deletes, and only what this session marked: drops, timeouts,
   SIGTERM and SIGKILL delete nothing.
2. Mail delivered during a session is never deleted by it and shows up in the next one.
3. Killed at any instant, the maildrop holds every undeleted message exactly once.
5. One session per maildrop at a time, across processes: the second gets -ERR [IN-USE]; the
   lock goes away with its holder, even after SIGKILL.
6. The server keeps serving others: many concurrent sessions all succeed.
"""

import os
import signal
import socket
import struct
import threading
import time
import unittest

from postern_harness import missing, requires
from postern_harness import (DEFAULT_TIMEOUT, SANITIZE, Msg, PosternTestCase, counts, privileged,
                             dot_stuff, parse_listing, scaled, simple_message, wait_for,
                             wire_body)

PASSWORD = "Saf3ty-pw"


def messages(tag="m", count=4):
    out = []
    for i in range(count):
        content = simple_message(f"{tag} {i}", [f"body of {tag} {i}", ".dot line"])
        out.append(Msg(content, "new" if i % 2 == 0 else "cur", sizes=(i == 1)))
    return out


def reset_close(conn):
    """Closes with RST instead of FIN (SO_LINGER 0), like a client that crashed."""
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class Base(PosternTestCase):
    def setUp(self):
        super().setUp()
        self.box = self.world.add_user("alice", PASSWORD, messages())
        self.before = self.box.contents()

    def numbering(self, conn, box=None):
        box = box or self.box
        st, body = conn.cmd_multi("UIDL")
        self.assertTrue(st.startswith("+OK"), st)
        return {n: u for n, u in parse_listing(body)}

    def assertNothingDeleted(self):
        self.assertEqual(self.box.contents(), self.before)

    def mark_all(self, conn, count=4):
        for n in range(1, count + 1):
            st = conn.cmd(f"DELE {n}")
            self.assertTrue(st.startswith("+OK"), st)


class NewMail(Base):
    def test_delivery_during_session_survives_quit(self):
        srv = self.world.start()
        conn = srv.session(self.box)
        listed = self.numbering(conn)
        self.assertEqual(len(listed), 4)
        late = self.box.deliver(simple_message("late", ["delivered during the session"]))
        # A name that sorts before every listed message: a server that re-reads the
        # directory and deletes by position would hit this one.
        early = self.box.deliver(simple_message("early", ["also during the session"]),
                                 timestamp=1600000000)
        # The session's view is a snapshot.
        self.assertRegex(conn.cmd("STAT"), r"^\+OK 4 ")
        self.assertEqual(self.numbering(conn), listed)
        self.assertTrue(conn.cmd("LIST 5").startswith("-ERR"))
        self.mark_all(conn)
        self.assertTrue(conn.quit().startswith("+OK"))
        self.assertEqual(self.box.contents(), {late.uidl: late.content,
                                               early.uidl: early.content})
        conn = srv.session(self.box)
        self.assertCountEqual(self.numbering(conn).values(), [late.uidl, early.uidl])
        for n in (1, 2):
            st, payload = conn.cmd_multi(f"RETR {n}")
            uidl = self.numbering(conn)[n]
            self.assertRetrieved(payload, self.box.by_uidl(uidl).content)

    def test_delivery_during_session_with_rset_and_partial_delete(self):
        srv = self.world.start()
        conn = srv.session(self.box)
        listed = self.numbering(conn)
        fresh = self.box.deliver(simple_message("fresh"))
        self.assertTrue(conn.cmd("DELE 1").startswith("+OK"))
        self.assertTrue(conn.cmd("DELE 3").startswith("+OK"))
        self.assertTrue(conn.quit().startswith("+OK"))
        expected = {u: c for u, c in self.before.items() if u not in (listed[1], listed[3])}
        expected[fresh.uidl] = fresh.content
        self.assertEqual(self.box.contents(), expected)

    def test_files_in_tmp_are_neither_listed_nor_touched(self):
        partial = os.path.join(self.box.path, "tmp", "1700009999.M1P1.partial")
        with open(partial, "wb") as f:
            f.write(b"Subject: half-written delivery\n\n")
        srv = self.world.start()
        conn = srv.session(self.box)
        self.assertEqual(len(self.numbering(conn)), 4)
        self.mark_all(conn)
        self.assertTrue(conn.quit().startswith("+OK"))
        self.assertEqual(self.box.contents(), {})
        with open(partial, "rb") as f:
            self.assertEqual(f.read(), b"Subject: half-written delivery\n\n")


class Drops(Base):
    def drop_after_marking(self, close):
        srv = self.world.start()
        conn = srv.session(self.box)
        st, payload = conn.cmd_multi("RETR 1")
        self.assertTrue(st.startswith("+OK"))
        self.mark_all(conn)
        close(conn)
        ev = srv.wait_events("logout", user="alice")[0]
        self.assertEqual(ev.get("reason"), "disconnected", ev["_line"])
        self.assertEqual(counts(ev["del"]), (0, 0), ev["_line"])
        self.assertNothingDeleted()
        # The lock went with the session: the next login works at once.
        conn = srv.session(self.box)
        self.assertRegex(conn.cmd("STAT"), r"^\+OK 4 ")

    def test_fin_before_quit_deletes_nothing(self):
        self.drop_after_marking(lambda c: c.close())

    def test_half_close_before_quit_deletes_nothing(self):
        self.drop_after_marking(lambda c: c.sock.shutdown(socket.SHUT_WR))

    def test_reset_before_quit_deletes_nothing(self):
        self.drop_after_marking(reset_close)

    def test_drop_while_streaming_a_large_message(self):
        big = b"Subject: big\n\n" + b"".join(b"%08d %s\n" % (i, b"z" * 90)
                                             for i in range(100000))
        bob = self.world.add_user("bob", PASSWORD, [Msg(big), simple_message("small")])
        bob_before = bob.contents()
        srv = self.world.start()
        conn = srv.session(bob)
        self.assertTrue(conn.cmd("DELE 2").startswith("+OK"))
        conn.send(b"RETR 1\r\n")
        self.assertTrue(conn.status().startswith("+OK"))
        conn.read_line()  # some of the body has arrived; the rest is in flight
        reset_close(conn)
        ev = srv.wait_events("logout", user="bob", timeout=scaled(30))[0]
        self.assertEqual(ev.get("reason"), "disconnected", ev["_line"])
        self.assertEqual(bob.contents(), bob_before)
        conn = srv.session(bob)
        self.assertRegex(conn.cmd("STAT"), r"^\+OK 2 ")
        self.assertTrue(conn.quit().startswith("+OK"))
        self.assertEqual(bob.contents(), bob_before)

    def test_message_removed_by_someone_else_during_session(self):
        srv = self.world.start()
        conn = srv.session(self.box)
        listed = self.numbering(conn)
        victim = self.box.by_uidl(listed[2])
        for (sub, name) in self.box.files():
            if name.split(":")[0] == victim.uidl:
                os.unlink(os.path.join(self.box.path, sub, name))
        self.assertTrue(conn.cmd("RETR 2").startswith("-ERR"))
        st, payload = conn.cmd_multi("RETR 1")
        self.assertTrue(st.startswith("+OK"), st)
        self.assertRetrieved(payload, self.box.by_uidl(listed[1]).content)
        self.assertTrue(conn.cmd("DELE 3").startswith("+OK"))
        self.assertTrue(conn.quit().startswith("+OK"))
        expected = {u: c for u, c in self.before.items() if u not in (listed[2], listed[3])}
        self.assertEqual(self.box.contents(), expected)


    def test_messages_renamed_by_another_client_during_session(self):
        # An IMAP server on the same Maildir moves and flags messages while we hold a
        # session (the POP3 lock does not stop it). Our session must still find them by
        # base name, delete what it marked, and keep the other client's flags.
        srv = self.world.start()
        conn = srv.session(self.box)
        listed = self.numbering(conn)
        renamed = {}
        for n, flags in ((1, "F"), (2, "R"), (3, "T"), (4, "FR")):
            uidl = listed[n]
            [(sub, name)] = [k for k in self.box.files() if k[1].split(":")[0] == uidl]
            os.rename(os.path.join(self.box.path, sub, name),
                      os.path.join(self.box.path, "cur", f"{uidl}:2,{flags}"))
            renamed[uidl] = flags
        st, payload = conn.cmd_multi("RETR 1")
        self.assertTrue(st.startswith("+OK"), st)
        self.assertRetrieved(payload, self.before[listed[1]])
        st, payload = conn.cmd_multi("RETR 2")
        self.assertTrue(st.startswith("+OK"), st)
        self.assertRetrieved(payload, self.before[listed[2]])
        self.assertTrue(conn.cmd("DELE 1").startswith("+OK"))
        self.assertTrue(conn.quit().startswith("+OK"))
        state = self.box.state()
        self.assertEqual(set(state), {listed[2], listed[3], listed[4]})
        self.assertEqual(state[listed[2]][:2], ("cur", "RS"), "RETR adds S to the new flags")
        self.assertEqual(state[listed[3]][:2], ("cur", "T"))
        self.assertEqual(state[listed[4]][:2], ("cur", "FR"))
        for uidl, (_, _, content) in state.items():
            self.assertEqual(content, self.before[uidl])

    def test_marked_message_removed_by_someone_else_before_quit(self):
        srv = self.world.start()
        conn = srv.session(self.box)
        listed = self.numbering(conn)
        self.assertTrue(conn.cmd("DELE 1").startswith("+OK"))
        self.assertTrue(conn.cmd("DELE 2").startswith("+OK"))
        [(sub, name)] = [k for k in self.box.files() if k[1].split(":")[0] == listed[1]]
        os.unlink(os.path.join(self.box.path, sub, name))
        self.assertTrue(conn.quit().startswith("+OK"))
        self.assertEqual(set(self.box.contents()), {listed[3], listed[4]})


class Locking(Base):
    def test_second_session_gets_in_use(self):
        srv = self.world.start()
        first = srv.session(self.box)
        self.assertTrue(first.cmd("DELE 1").startswith("+OK"))
        second = srv.connect()
        self.assertTrue(second.cmd("USER alice").startswith("+OK"))
        st = second.cmd(f"PASS {PASSWORD}")
        self.assertTrue(st.startswith("-ERR [IN-USE]"), st)
        self.assertTrue(second.cmd("STAT").startswith("-ERR"), "not logged in after IN-USE")
        # The first session is unaffected and its QUIT releases the lock.
        self.assertRegex(first.cmd("STAT"), r"^\+OK 3 ")
        self.assertTrue(first.quit().startswith("+OK"))
        third = srv.session(self.box)
        self.assertRegex(third.cmd("STAT"), r"^\+OK 3 ")

    def test_in_use_connection_can_retry_after_release(self):
        srv = self.world.start()
        first = srv.session(self.box)
        second = srv.connect()
        second.cmd("USER alice")
        self.assertTrue(second.cmd(f"PASS {PASSWORD}").startswith("-ERR [IN-USE]"))
        self.assertTrue(first.quit().startswith("+OK"))
        self.assertTrue(second.cmd("USER alice").startswith("+OK"))
        self.assertTrue(second.cmd(f"PASS {PASSWORD}").startswith("+OK"))
        self.assertRegex(second.cmd("STAT"), r"^\+OK 4 ")

    def test_in_use_across_two_server_processes(self):
        srv1 = self.world.start()
        srv2 = self.world.start()
        first = srv1.session(self.box)
        other = srv2.connect()
        other.cmd("USER alice")
        st = other.cmd(f"PASS {PASSWORD}")
        self.assertTrue(st.startswith("-ERR [IN-USE]"), st)
        self.assertTrue(first.quit().startswith("+OK"))
        other = srv2.session(self.box)
        self.assertRegex(other.cmd("STAT"), r"^\+OK 4 ")

    def test_lock_is_released_once_the_quit_reply_and_close_are_seen(self):
        # A client that got "+OK" to QUIT and saw the connection close may connect again at
        # once (fetchmail and mpop polling do) and must not be told [IN-USE]. The race is
        # narrow, so it is widened: the first server's log pipe is filled, so it stalls at
        # its next log write, which is exactly where a server that closes the connection
        # before releasing the lock would stall with the lock held.
        srv1 = self.world.start(log_pipe=True)
        srv2 = self.world.start()
        first = srv1.session(self.box)
        self.assertTrue(first.cmd("DELE 1").startswith("+OK"))
        srv1.block_log()
        try:
            first.send(b"QUIT\r\n")
            # posternd answers QUIT and closes before its next log write; a timeout here (a
            # server that logs first and so stalls on the full pipe) fails the test.
            st = first.status(timeout=scaled(5))
            self.assertTrue(st.startswith("+OK"), st)
            lines = first.expect_closed(timeout=scaled(5))
            self.assertEqual(lines, [])
            second = srv2.connect()
            self.assertTrue(second.cmd("USER alice").startswith("+OK"))
            st = second.cmd(f"PASS {PASSWORD}")
        finally:
            srv1.unblock_log()
        self.assertTrue(st.startswith("+OK"), f"login right after QUIT completed: {st}")
        self.assertRegex(second.cmd("STAT"), r"^\+OK 3 ")

    def test_other_users_unaffected_by_a_held_lock(self):
        bob = self.world.add_user("bob", PASSWORD, messages("bob", 2))
        srv = self.world.start()
        first = srv.session(self.box)
        conn = srv.session(bob)
        self.assertRegex(conn.cmd("STAT"), r"^\+OK 2 ")
        self.assertTrue(first.quit().startswith("+OK"))


class Signals(Base):
    def test_sigkill_mid_session_loses_nothing_and_releases_lock(self):
        srv = self.world.start()
        conn = srv.session(self.box)
        st, payload = conn.cmd_multi("RETR 2")
        self.assertTrue(st.startswith("+OK"))
        self.mark_all(conn)
        srv.kill()
        self.assertEqual(srv.returncode, -signal.SIGKILL)
        conn.expect_closed(max_lines=0)
        self.assertNothingDeleted()
        self.assertEqual(self.box.tmp_files(), [])
        srv2 = self.world.start()
        t0 = time.monotonic()
        conn = srv2.session(self.box)  # asserts PASS +OK on the first try
        self.assertLess(time.monotonic() - t0, scaled(5))
        self.assertRegex(conn.cmd("STAT"), r"^\+OK 4 ")
        self.assertTrue(conn.quit().startswith("+OK"))
        self.assertNothingDeleted()

    def test_sigterm_mid_session_deletes_nothing_and_exits_zero(self):
        srv = self.world.start()
        conn = srv.session(self.box)
        self.mark_all(conn)
        idle = srv.connect()  # a second client still in AUTHORIZATION
        srv.signal(signal.SIGTERM)
        lines = conn.expect_closed(timeout=scaled(15))
        for line in lines:
            self.assertTrue(line.startswith("-ERR"), lines)
        idle.expect_closed(timeout=scaled(15))
        self.assertEqual(srv.wait_exit(scaled(15)), 0, srv.log())
        srv.check_log_clean()
        self.assertNothingDeleted()
        ev = [e for e in srv.events("logout") if e.get("user") == "alice"]
        self.assertEqual(len(ev), 1, srv.log())
        self.assertEqual(ev[0].get("reason"), "shutdown", ev[0]["_line"])
        self.assertEqual(counts(ev[0]["del"]), (0, 0), ev[0]["_line"])

    def test_sighup_does_not_stop_the_server(self):
        srv = self.world.start()
        conn = srv.session(self.box)
        srv.signal(signal.SIGHUP)
        self.assertRegex(conn.cmd("STAT"), r"^\+OK 4 ")
        self.assertTrue(conn.quit().startswith("+OK"))
        conn = srv.session(self.box)
        self.assertTrue(conn.quit().startswith("+OK"))
        self.assertTrue(srv.alive())
        self.assertEqual(srv.stop(), 0)

    def test_sigterm_without_sessions(self):
        srv = self.world.start()
        conn = srv.session(self.box)
        self.assertTrue(conn.quit().startswith("+OK"))
        self.assertEqual(srv.stop(), 0)
        # The listener is gone.
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=DEFAULT_TIMEOUT).close()

    def test_sigkill_around_quit_keeps_every_message_exactly_once(self):
        # Crash atomicity (rule 3): kill the server at varying moments around the UPDATE
        # state. Marked messages may be gone or not; every other message must be there
        # exactly once and intact, and no message may be torn.
        box = self.world.add_user("carol", PASSWORD, messages("carol", 12))
        originals = {m.uidl: m.content for m in box.messages}
        for round_ in range(12):
            srv = self.world.start()
            conn = srv.session(box)
            listed = self.numbering(conn, box)
            st, _ = conn.cmd_multi("RETR 1")
            marked = set()
            for n in sorted(listed)[::2]:
                self.assertTrue(conn.cmd(f"DELE {n}").startswith("+OK"))
                marked.add(listed[n])
            conn.send(b"QUIT\r\n")
            # Progressively later kills: from "before QUIT is read" to "after it finished".
            deadline = time.monotonic() + round_ * 0.002
            while time.monotonic() < deadline:
                pass
            srv.kill()
            conn.close()
            state = box.state()  # fails on duplicates
            for uidl, (_, _, content) in state.items():
                self.assertEqual(content, originals[uidl], f"round {round_}: {uidl} torn")
            for uidl in set(listed.values()) - marked:
                self.assertIn(uidl, state, f"round {round_}: unmarked {uidl} lost")
            if not state:
                break


    def test_sigterm_with_a_client_that_stops_reading(self):
        big = b"Subject: big\n\n" + b"".join(b"%07d %s\n" % (i, b"s" * 92)
                                             for i in range(200000))
        bob = self.world.add_user("bob", PASSWORD, [big, simple_message("small")])
        bob_before = bob.contents()
        srv = self.world.start()
        conn = srv.session(bob)
        self.assertTrue(conn.cmd("DELE 2").startswith("+OK"))
        conn.send(b"RETR 1\r\n")
        self.assertTrue(conn.status().startswith("+OK"))
        # The client reads nothing more: the server is blocked writing to it.
        srv.signal(signal.SIGTERM)
        self.assertEqual(srv.wait_exit(scaled(15)), 0, srv.log())
        srv.check_log_clean()
        self.assertEqual(bob.contents(), bob_before)


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def fds_of(pid):
    with privileged():  # posternd, having dropped privileges, is not dumpable
        return sorted(os.listdir(f"/proc/{pid}/fd"))


def open_fds(pid):
    return len(fds_of(pid))


@requires(os.path.isdir("/proc/self/fd"), "needs Linux /proc")
class Resources(Base):
    def test_no_descriptor_leak_across_session_kinds(self):
        bob = self.world.add_user("bob", PASSWORD, messages("bob", 2))
        srv = self.world.start()
        pid = srv.proc.pid
        warm = srv.session(self.box)  # first use may open long-lived descriptors
        st, _ = warm.cmd_multi("RETR 1")
        self.assertTrue(warm.quit().startswith("+OK"))
        srv.wait_events("logout", count=1)
        baseline = open_fds(pid)
        sessions = 1
        for i in range(10):
            conn = srv.session(self.box if i % 2 else bob)
            st, _ = conn.cmd_multi("RETR 1")
            self.assertTrue(conn.quit().startswith("+OK"))
            sessions += 1
        for close in (lambda c: c.close(), reset_close):
            for _ in range(3):
                conn = srv.session(bob)
                conn.cmd("DELE 1")
                close(conn)
                sessions += 1
                # The next login to bob must wait until the server has seen the drop.
                srv.wait_events("logout", count=sessions)
        for _ in range(3):  # failed logins
            conn = srv.connect()
            conn.cmd("USER alice")
            self.assertTrue(conn.cmd("PASS wrong").startswith("-ERR"))
            conn.close()
        holder = srv.session(self.box)  # IN-USE refusals
        for _ in range(3):
            conn = srv.connect()
            conn.cmd("USER alice")
            self.assertTrue(conn.cmd(f"PASS {PASSWORD}").startswith("-ERR [IN-USE]"))
            conn.close()
        self.assertTrue(holder.quit().startswith("+OK"))
        sessions += 1
        for _ in range(3):  # never said anything
            srv.connect().close()
        srv.wait_events("logout", count=sessions)
        wait_for(lambda: open_fds(pid) <= baseline,
                 what=f"posternd's descriptors to return to {baseline} "
                      f"(now {open_fds(pid)}: {fds_of(pid)})")
        self.assertEqual(bob.contents(), {m.uidl: m.content for m in bob.messages})

    @unittest.skipIf(SANITIZE, "ASan's allocator quarantine inflates resident memory")
    def test_streaming_does_not_hold_the_message_in_memory(self):
        big = b"Subject: big\n\n" + b"".join(b"%07d %s\n" % (i, b"m" * 92)
                                             for i in range(400000))  # 40 MB
        bob = self.world.add_user("bob", PASSWORD, [big])
        srv = self.world.start()
        pid = srv.proc.pid
        if proc_status(pid, "RssAnon") is None:
            missing("kernel without RssAnon in /proc/PID/status")
        conn = srv.session(bob)
        self.assertRegex(conn.cmd("STAT"), r"^\+OK 1 ")
        baseline = proc_status(pid, "RssAnon")
        conn.send(b"RETR 1\r\n")
        self.assertTrue(conn.status().startswith("+OK"))
        # Read slowly, sampling the server's anonymous memory while it streams.
        received = 0
        peak = baseline
        body = bytearray(conn.buf)  # what came with the status line
        conn.buf.clear()
        while not body.endswith(b"\r\n.\r\n"):
            chunk = conn.sock.recv(256 * 1024)
            if not chunk:
                self.fail("connection closed mid-message")
            body += chunk
            received += len(chunk)
            peak = max(peak, proc_status(pid, "RssAnon"))
        self.assertRetrieved(bytes(body[:-3]), big, "40 MB message")
        growth_mb = (peak - baseline) / 1024
        self.assertLess(growth_mb, 16, f"resident anonymous memory grew by {growth_mb:.1f} MB "
                        f"while streaming a {len(big) >> 20} MB message")


class Concurrency(Base):
    def test_fifty_concurrent_sessions(self):
        users = 50
        boxes = [self.world.add_user(f"user{i:02d}", f"pw-{i}", messages(f"u{i}", 3))
                 for i in range(users)]
        befores = [b.contents() for b in boxes]
        srv = self.world.start()
        barrier = threading.Barrier(users, timeout=scaled(60))
        errors = []
        deleted = {}

        def run(i):
            box = boxes[i]
            try:
                conn = srv.connect(timeout=scaled(60))
                conn.login(box.user, box.password)
                barrier.wait()  # every session is logged in at the same time
                listed = self.numbering(conn, box)
                for n, uidl in listed.items():
                    st, payload = conn.cmd_multi(f"RETR {n}")
                    if payload != dot_stuff(wire_body(box.by_uidl(uidl).content)):
                        errors.append(f"{box.user}: RETR {n} bytes differ")
                n = 1 + i % 3
                st = conn.cmd(f"DELE {n}")
                deleted[box.user] = listed[n]
                st = conn.cmd("QUIT")
                if not st.startswith("+OK"):
                    errors.append(f"{box.user}: QUIT -> {st}")
                conn.expect_closed(max_lines=0)
            except Exception as e:  # collected and reported below
                errors.append(f"{box.user}: {type(e).__name__}: {e}")
                barrier.abort()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(scaled(120))
        self.assertFalse(any(t.is_alive() for t in threads), "sessions did not finish")
        self.assertEqual(errors, [])
        for box, before in zip(boxes, befores):
            expected = dict(before)
            del expected[deleted[box.user]]
            self.assertEqual(box.contents(), expected, box.user)
        ev = srv.wait_events("logout", count=users, reason="QUIT")
        self.assertEqual(len({e.get("session") for e in ev}), users, "session ids must differ")
        self.assertEqual(len(srv.events("login")), users)


class MaildirIndex(Base):
    """postern-pop3.index is a cache: whatever it says, every login lists exactly what is in
    the Maildir, and mail delivered at any moment (within the same clock tick as the last
    listing, too) is seen by the next login."""

    def listing(self, box):
        conn = self.server.session(box)
        st, body = conn.cmd_multi("LIST")
        self.assertOk(st)
        sizes = [int(sz) for _, sz in parse_listing(body)]
        uidls = [u for _, u in parse_listing(conn.cmd_multi("UIDL")[1])]
        self.assertOk(conn.cmd("QUIT"))
        conn.expect_closed()
        return sizes, uidls

    def expected(self, box):
        msgs = sorted(box.messages, key=lambda m: (m.base.split(".")[0], m.base))
        return [len(wire_body(m.content)) for m in msgs], sorted(m.uidl for m in msgs)

    def test_deliveries_between_logins_are_always_listed(self):
        self.server = self.world.start()
        index = os.path.join(self.box.path, "postern-pop3.index")
        for round_ in range(12):
            sizes, uidls = self.listing(self.box)
            self.assertTrue(os.path.exists(index))
            want_sizes, want_uidls = self.expected(self.box)
            self.assertEqual(sorted(uidls), want_uidls, f"round {round_}")
            self.assertEqual(sum(sizes), sum(want_sizes), f"round {round_}")
            # Right after the listing, in the same tick or later: a new message.
            self.box.deliver(simple_message(f"late {round_}", ["x" * (round_ + 1)]))
            if round_ % 3 == 2:
                time.sleep(scaled(0.05))

    def test_index_memory_keeps_no_index(self):
        self.world.config["mail"]["location"] = (
            f"maildir:{self.world.mail_root}/%u/Maildir:INDEX=MEMORY")
        self.server = self.world.start()
        index = os.path.join(self.box.path, "postern-pop3.index")
        for round_ in range(3):
            sizes, uidls = self.listing(self.box)
            want_sizes, want_uidls = self.expected(self.box)
            self.assertEqual(sorted(uidls), want_uidls)
            self.assertEqual(sum(sizes), sum(want_sizes))
            self.assertFalse(os.path.exists(index))
            self.box.deliver(simple_message(f"late {round_}"))


if __name__ == "__main__":
    unittest.main()
