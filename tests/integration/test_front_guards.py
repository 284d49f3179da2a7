"""Guards at posternd's front: the passwd-file that grants logins must be trusted (owner, mode)
at start, in --check-config and at every re-read; a client that does not log in within
server.login_timeout is cut however slowly it trickles bytes; min_connection_interval and
listen_backlog take effect in event mode."""

import os
import signal
import subprocess
import time
import unittest

from postern_harness import requires
from postern_harness import (Closed, PosternTestCase, Server, run_posternd, sanitizer_findings,
                             scaled)
from test_system_users import SystemUsersBase

LOGIN_TIMEOUT = 2  # seconds


def trickle_until_cut(test, conn, limit):
    """Sends one byte every 0.2 s (never a whole line) until the server answers and closes;
    returns (seconds from the greeting, the answer)."""
    start = time.monotonic()
    answer = None
    while time.monotonic() - start < limit:
        try:
            conn.send(b"N")
        except OSError:
            break
        try:
            answer = conn.read_line(timeout=0.2)
            break
        except Closed:
            break
        except AssertionError:  # the harness's read timeout: nothing yet
            continue
    elapsed = time.monotonic() - start
    test.assertIsNotNone(answer, f"no answer after {elapsed:.1f}s of trickling")
    conn.expect_closed(max_lines=0)
    return elapsed, answer.decode("latin-1").rstrip("\r\n")


class PasswdFileTrust(PosternTestCase):
    def setUp(self):
        super().setUp()
        self.world.add_user("alice", "pw")

    def refused_at_start(self, what):
        path = self.world.write_config()
        res = run_posternd(["--check-config", "-C", path])
        self.assertNotEqual(res.returncode, 0, res.stdout)
        self.assertIn(self.world.passwd_path, res.stderr)
        self.assertIn(what, res.stderr)
        srv = Server(self.world, path, self.world.path("refused.log"))
        self.world.servers.append(srv)
        rc = srv.wait_exit(scaled(15))
        self.assertNotEqual(rc, 0, "started with an untrusted passwd-file")
        log = srv.log()
        self.assertIn(self.world.passwd_path, log)
        self.assertIn(what, log)
        self.assertNotIn("listening on", log)
        self.assertEqual(sanitizer_findings(log), [])

    def test_world_writable_file_is_refused_at_start(self):
        os.chmod(self.world.passwd_path, 0o666)
        self.refused_at_start("mode 0666")

    def test_group_writable_file_is_refused_at_start(self):
        os.chmod(self.world.passwd_path, 0o620)
        self.refused_at_start("chmod go-w")

    @requires(os.geteuid() == 0 or os.getuid() == 0, "needs root to chown")
    def test_file_owned_by_another_user_is_refused_at_start(self):
        with self.world.as_root():
            os.chown(self.world.passwd_path, 65534, -1)
        self.refused_at_start("owned by")

    def test_symlink_to_a_world_writable_file_is_refused(self):
        real = self.world.path("real-users")
        os.rename(self.world.passwd_path, real)
        os.chmod(real, 0o666)
        os.symlink(real, self.world.passwd_path)
        self.refused_at_start("mode 0666")

    def test_trusted_file_passes_check_config(self):
        res = run_posternd(["--check-config", "-C", self.world.write_config()])
        self.assertEqual(res.returncode, 0, res.stderr)

    def test_untrusted_file_at_reload_keeps_the_previous_contents(self):
        victim = self.world.add_user("victim", "vpw")
        srv = self.world.start()
        conn = srv.session(self.world.mailboxes["alice"])  # the file is loaded
        self.assertTrue(conn.quit().startswith("+OK"))
        # A local user edits the now world-writable file: an account reading victim's mail.
        self.world.add_passwd_line(
            f"mallory:{{PLAIN}}evil::::::userdb_mail=maildir:{victim.path}")
        os.chmod(self.world.passwd_path, 0o666)
        conn = srv.connect()
        self.assertTrue(conn.cmd("USER mallory").startswith("+OK"))
        self.assertTrue(conn.cmd("PASS evil").startswith("-ERR"))
        conn.close()
        srv.wait_log("passwd-file not re-read, using previous contents: .*mode 0666")
        conn = srv.session(self.world.mailboxes["alice"])  # the previous contents still serve
        self.assertTrue(conn.quit().startswith("+OK"))
        os.chmod(self.world.passwd_path, 0o600)
        conn = srv.connect()
        self.assertTrue(conn.cmd("USER mallory").startswith("+OK"))
        self.assertTrue(conn.cmd("PASS evil").startswith("+OK"))
        conn.quit()
        self.assertEqual(srv.stop(), 0)

    def test_sighup_rechecks_the_file(self):
        srv = self.world.start()
        conn = srv.session(self.world.mailboxes["alice"])  # the file is loaded
        self.assertTrue(conn.quit().startswith("+OK"))
        os.chmod(self.world.passwd_path, 0o606)
        srv.signal(signal.SIGHUP)
        srv.wait_log(r"error: passwd-file not re-read, using previous contents: .*mode 0606")
        conn = srv.session(self.world.mailboxes["alice"])
        self.assertTrue(conn.quit().startswith("+OK"))
        os.chmod(self.world.passwd_path, 0o600)
        self.assertEqual(srv.stop(), 0)


class LoginTimeoutChecks:
    def check_trickler_is_cut(self, srv_or_conn_factory):
        conn = srv_or_conn_factory()
        elapsed, answer = trickle_until_cut(self, conn, scaled(LOGIN_TIMEOUT + 10))
        self.assertEqual(answer, "-ERR Login timeout, disconnecting.")
        self.assertGreaterEqual(elapsed, LOGIN_TIMEOUT - 0.5)
        self.assertLess(elapsed, scaled(LOGIN_TIMEOUT + 3))


class LoginTimeout(LoginTimeoutChecks, PosternTestCase):
    def setUp(self):
        super().setUp()
        self.world.add_user("alice", "pw")
        self.world.config["server"]["login_timeout"] = f"{LOGIN_TIMEOUT}s"

    def test_trickling_client_is_cut_in_event_mode(self):
        srv = self.world.start()
        self.check_trickler_is_cut(srv.connect)
        srv.wait_log(r"disconnect: rip=127\.0\.0\.1, session=<[^>]+>, reason=login timeout")

    def test_trickling_client_is_cut_with_worker_processes(self):
        self.world.config["server"]["processes"] = 2
        srv = self.world.start()
        self.check_trickler_is_cut(srv.connect)

    def test_trickling_client_is_cut_in_inetd_mode(self):
        inetd = self.world.inetd()

        def greeted():
            inetd.conn.read_greeting()
            return inetd.conn
        self.check_trickler_is_cut(greeted)
        inetd.wait_exit(scaled(10))

    def test_logged_in_session_outlives_the_login_timeout(self):
        srv = self.world.start()
        conn = srv.session(self.world.mailboxes["alice"])
        time.sleep(LOGIN_TIMEOUT + 0.5)
        self.assertTrue(conn.cmd("NOOP").startswith("+OK"))
        self.assertTrue(conn.quit().startswith("+OK"))

    def test_zero_turns_it_off(self):
        self.world.config["server"]["login_timeout"] = 0
        srv = self.world.start()
        conn = srv.connect()
        conn.send(b"QU")
        time.sleep(LOGIN_TIMEOUT + 0.5)
        conn.send(b"IT\r\n")
        reply = conn.status()
        self.assertTrue(reply.startswith("+OK"), reply)
        conn.expect_closed(max_lines=0)


class LoginTimeoutForkMode(LoginTimeoutChecks, SystemUsersBase):
    def test_trickling_client_is_cut_in_fork_mode(self):
        self.world.config["server"]["login_timeout"] = f"{LOGIN_TIMEOUT}s"
        srv = self.start()
        self.check_trickler_is_cut(srv.connect)


class PasswdFileTrustForkMode(SystemUsersBase):
    def test_world_writable_file_is_refused_at_start_in_fork_mode(self):
        self.world.write_passwd()
        os.chmod(self.world.passwd_path, 0o666)
        self.unix["auth"] = {"passdb": f"passwd-file:{self.world.passwd_path}"}
        srv = Server(self.world, self.write_unix(), self.world.path("refused.log"))
        self.world.servers.append(srv)
        self.assertNotEqual(srv.wait_exit(scaled(15)), 0, "started with a world-writable passwd-file")
        self.assertIn(self.world.passwd_path, srv.log())
        self.assertIn("mode 0666", srv.log())


class EventModeKeys(PosternTestCase):
    def setUp(self):
        super().setUp()
        self.world.add_user("alice", "pw")

    def test_min_connection_interval_is_enforced(self):
        self.world.config["server"]["min_connection_interval"] = "30s"
        srv = self.world.start()
        first = srv.connect()
        second = srv.connect(greet=False)
        line = second.status()
        self.assertTrue(line.startswith("-ERR [SYS/TEMP]"), line)
        second.expect_closed(max_lines=0)
        srv.wait_log(r"connection refused: rip=127\.0\.0\.1, reason=min_connection_interval")
        self.assertTrue(first.quit().startswith("+OK"))

    def test_without_min_connection_interval_connections_follow_at_once(self):
        srv = self.world.start()
        for _ in range(3):
            self.assertTrue(srv.connect().quit().startswith("+OK"))

    def test_min_connection_interval_with_worker_processes_is_refused(self):
        self.world.config["server"]["min_connection_interval"] = "1s"
        self.world.config["server"]["processes"] = 2
        srv = Server(self.world, self.world.write_config(), self.world.path("refused.log"))
        self.world.servers.append(srv)
        self.assertNotEqual(srv.wait_exit(scaled(15)), 0)
        self.assertIn("server.min_connection_interval", srv.log())
        self.assertIn("server.processes = 2", srv.log())

    def test_min_connection_interval_with_inetd_is_refused(self):
        self.world.config["server"]["min_connection_interval"] = "1s"
        inetd = self.world.inetd()
        self.assertNotEqual(inetd.wait_exit(scaled(10)), 0)
        self.assertIn("server.min_connection_interval", inetd.log())

    def listen_queue_sizes(self, port):
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                             check=True).stdout
        # State Recv-Q Send-Q Local Peer: for a listening socket Send-Q is the backlog.
        return [int(line.split()[2]) for line in out.splitlines() if line.strip()]

    def check_backlog(self):
        self.world.config["server"]["listen_backlog"] = 7
        srv = self.world.start()
        sizes = self.listen_queue_sizes(srv.port)
        self.assertTrue(sizes, "no listening socket found with ss")
        self.assertEqual(set(sizes), {7}, sizes)

    def test_listen_backlog_is_applied(self):
        self.check_backlog()

    def test_listen_backlog_is_applied_with_worker_processes(self):
        self.world.config["server"]["processes"] = 2
        self.check_backlog()


if __name__ == "__main__":
    unittest.main()
