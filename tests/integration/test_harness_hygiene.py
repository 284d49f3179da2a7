"""The harness leaves the machine as it found it: system users and /etc/pam.d files that a test
run creates are removed when the run ends normally, by an exception, by SIGTERM or SIGINT, also
while the test process runs as the World's owner; and what a SIGKILLed run left is removed by
the next one. And a failing comparison of a large listing reports a short difference quickly.

The runs are child Python processes using the harness as the test files do. Needs root
(useradd), like test_system_users.py.
"""

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time

from postern_harness import (HERE, LEFTOVERS_DIR, PosternTestCase, missing, scaled,
                             describe_listing_difference, wait_for)

CHILD = r"""
import os, subprocess, sys, time
sys.path.insert(0, {here!r})
import postern_harness as h
h.record_machine_change("user", {user!r})
subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", {user!r}], check=True)
h.record_machine_change("file", {pam!r})
with open({pam!r}, "w") as f:
    f.write("auth required pam_deny.so\n")
if {as_owner!r}:
    h._become(h.test_user())  # as a World does for the length of a test
print("ready", flush=True)
if {end!r} == "exception":
    raise RuntimeError("a test run that fails with an exception")
time.sleep(60)
"""


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


class MachineChanges(PosternTestCase):
    world_as_root = True

    def setUp(self):
        if os.geteuid() != 0:
            missing("needs root: creates a system user and a PAM file")
        for tool in ("useradd", "userdel"):
            if shutil.which(tool) is None:
                missing(f"{tool} not installed")
        super().setUp()
        tag = secrets.token_hex(4)
        self.user = f"pt_{tag}"
        self.pam = f"/etc/pam.d/pt-{tag}"
        self.addCleanup(self.remove_anyway)

    def remove_anyway(self):
        """Whatever the test found, nothing of it stays."""
        subprocess.run(["userdel", "-f", self.user], capture_output=True, timeout=60)
        subprocess.run(["groupdel", self.user], capture_output=True, timeout=60)
        for path in (self.pam, os.path.join(LEFTOVERS_DIR, f"user:{self.user}"),
                     os.path.join(LEFTOVERS_DIR, f"file:{self.pam.replace('/', '%')}")):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def start_child(self, end="signal", as_owner=False):
        code = CHILD.format(here=HERE, user=self.user, pam=self.pam, end=end, as_owner=as_owner)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.addCleanup(lambda: proc.poll() is not None or (proc.kill(), proc.wait()))
        line = proc.stdout.readline()
        if line != b"ready\n":
            proc.kill()
            _, err = proc.communicate(timeout=scaled(30))
            self.fail(f"child did not start: {line!r}\n{err.decode(errors='replace')}")
        self.assertTrue(user_exists(self.user))
        self.assertTrue(os.path.exists(self.pam))
        return proc

    def assertLeftNothing(self):
        self.assertFalse(user_exists(self.user), f"user {self.user} left behind")
        self.assertFalse(os.path.exists(self.pam), f"{self.pam} left behind")
        self.assertEqual([e for e in os.listdir(LEFTOVERS_DIR) if self.user in e
                          or self.pam.rsplit("/", 1)[1] in e], [])

    def end_with(self, sig, as_owner=False):
        proc = self.start_child(as_owner=as_owner)
        proc.send_signal(sig)
        proc.communicate(timeout=scaled(60))
        self.assertLeftNothing()

    def test_sigterm(self):
        self.end_with(signal.SIGTERM)

    def test_sigterm_while_running_as_the_world_owner(self):
        self.end_with(signal.SIGTERM, as_owner=True)

    def test_sigint(self):
        self.end_with(signal.SIGINT)

    def test_exception(self):
        proc = self.start_child(end="exception")
        proc.communicate(timeout=scaled(60))
        self.assertNotEqual(proc.returncode, 0)
        self.assertLeftNothing()

    def test_sigkill_is_swept_by_the_next_run(self):
        proc = self.start_child()
        proc.kill()
        proc.wait(timeout=scaled(30))
        self.assertTrue(user_exists(self.user))  # nothing could run in the killed process
        res = subprocess.run([sys.executable, "-c",
                              f"import sys; sys.path.insert(0, {HERE!r}); import postern_harness"],
                             capture_output=True, timeout=scaled(60))
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertLeftNothing()

    def test_a_live_runs_changes_are_not_swept(self):
        proc = self.start_child()
        res = subprocess.run([sys.executable, "-c",
                              f"import sys; sys.path.insert(0, {HERE!r}); import postern_harness"],
                             capture_output=True, timeout=scaled(60))
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertTrue(user_exists(self.user))
        self.assertTrue(os.path.exists(self.pam))
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=scaled(60))
        self.assertLeftNothing()


class LargeListingDifference(PosternTestCase):
    def test_a_short_report_quickly(self):
        expected = [(n, f"uidl-{n:08d}") for n in range(1, 200001)]
        actual = list(expected)
        actual[123456] = (123457, "uidl-changed")
        start = time.monotonic()
        with self.assertRaises(AssertionError) as caught:
            self.assertSameListing(actual, expected, "UIDL")
        elapsed = time.monotonic() - start
        message = str(caught.exception)
        self.assertLess(elapsed, 1.0)
        self.assertLess(len(message), 2000, message)
        self.assertIn("first difference at line 123457", message)
        self.assertIn("uidl-changed", message)
        body = b"".join(b"%d %s\r\n" % (n, u.encode()) for n, u in expected)
        self.assertSameListing(body, expected)  # raw bodies are parsed
        self.assertIn("200000 lines expected, 199999 received",
                      describe_listing_difference(expected, expected[:-1]))
