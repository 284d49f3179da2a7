"""The README's demo (`posternd --demo DIR`, what scripts/demo.sh runs) serves its sample
mailbox to Python's poplib: as the invoking user, and, started as root, as the system user
`postern` (Postern never opens mail as root), which must be able to reach the demo files."""

import os
import poplib
import pwd
import socket
import subprocess

from postern_harness import record_machine_change, remove_user, requires
from postern_harness import DEFAULT_TIMEOUT, POSTERND, PosternTestCase, wait_for

IS_ROOT = os.geteuid() == 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoAsRoot(PosternTestCase):
    world_as_root = True

    @requires(IS_ROOT, "the demo as root needs root")
    def test_root_demo_runs_as_postern_and_serves_the_sample(self):
        try:
            pwd.getpwnam("postern")
        except KeyError:  # what scripts/demo.sh does; removed again after the test
            record_machine_change("user", "postern")
            self.addCleanup(remove_user, "postern")
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                            "/usr/sbin/nologin", "postern"], check=True)
        demo_dir = self.world.path("demo")
        port = free_port()
        log = open(self.world.path("demo.log"), "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen([POSTERND, "--demo", demo_dir, "--demo-port", str(port)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)

        def stop():
            proc.kill()
            proc.wait(DEFAULT_TIMEOUT)
        self.addCleanup(stop)

        def answers():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                self.assertIsNone(proc.poll(), "posternd --demo exited:\n"
                                  + open(self.world.path("demo.log")).read())
                return False
        wait_for(answers, what="the demo server")
        client = poplib.POP3("127.0.0.1", port, timeout=DEFAULT_TIMEOUT)
        client.user("demo")
        client.pass_("demo")
        count, _ = client.stat()
        self.assertEqual(count, 5)
        _, lines, _ = client.retr(1)
        self.assertTrue(lines)
        client.quit()
        postern = pwd.getpwnam("postern").pw_uid
        with open(f"/proc/{proc.pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        self.assertEqual({int(u) for u in uids}, {postern})
        mail = os.path.join(demo_dir, "mail")
        self.assertEqual(os.stat(mail).st_uid, postern)
        self.assertEqual(os.stat(demo_dir).st_mode & 0o777, 0o711)
