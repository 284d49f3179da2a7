"""Real mail clients against the real posternd: curl, fetchmail, mpop and getmail6.

Each retrieved message is compared byte for byte with the stored one. What each client
changes, found by running them (and kept minimal by their options):
  curl       writes the message as sent on the wire with dot-stuffing undone: CRLF line ends.
  fetchmail  (`set invisible`, `no rewrite`, `stripcr`, mda) adds no header; LF line ends.
  mpop       (`received_header off`, maildir delivery) adds no header; LF line ends.
  getmail6   (`received = false`, `delivered_to = false`, Maildir) prepends one
             "Return-Path: <...>" line and nothing else; LF line ends.
The three delivering clients end a message that lacked a final line end with LF.

No client contacts anything but 127.0.0.1: every host is numeric, fetchmail has no SMTP
(an mda), no STARTTLS probe (`sslproto ''`) and no DNS use; test_no_traffic_beyond_loopback
checks that with strace when it can.
"""

import collections
import os
import pwd
import re
import shutil
import subprocess
import unittest

from postern_harness import requires
from postern_harness import (Msg, PosternTestCase, counts, octets, parse_listing, scaled,
                             simple_message, top_body, wire_body)

IS_ROOT = os.geteuid() == 0
PASSWORD = "Cl1ent-pw"

MEDIUM = b"Subject: medium\nFrom: m@example.org\n\n" + b"".join(
    b"%06d the quick brown fox jumps over the lazy dog %s\n" % (i, b"." * (i % 7))
    for i in range(6000))


def client_messages():
    return [
        Msg(simple_message("plain"), "new"),
        Msg(b"From: dots@example.org\nSubject: dots\n\n.\n..\n.x\nx.\n...\n", "cur", "S"),
        Msg(b"From: nonl@example.org\nSubject: no final newline\n\nlast line", "new",
            sizes=True),
        Msg(simple_message("utf8", ["Gr\u00fc\u00dfe aus K\u00f6ln \u2014 \u2713".encode()],
                           ["MIME-Version: 1.0",
                            "Content-Type: text/plain; charset=utf-8",
                            "Content-Transfer-Encoding: 8bit"]), "cur", ""),
        Msg(MEDIUM, "new", sizes=True),
        Msg(b"Received: from a.example.org by b.example.org; Tue, 14 Nov 2023 22:13:20 +0000\n"
            b"From: f@example.org\nSubject: from line\n\nFrom the body, a line\n>From too\n\n",
            "cur", "F"),
    ]


def client_form(content):
    """How a delivering client stores a message: LF line ends, a final LF."""
    data = content.replace(b"\r\n", b"\n")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    return data


def needs(tool):
    return requires(shutil.which(tool), f"{tool} is not installed")


class ClientBase(PosternTestCase):
    def setUp(self):
        super().setUp()
        self.box = self.world.add_user("alice", PASSWORD, client_messages())
        self.srv = self.world.start()
        self.before = self.box.contents()
        self.env = dict(os.environ, HOME=self.world.path(), LC_ALL="C", LANG="C")
        self.env.pop("MAIL", None)

    def run_client(self, argv, timeout=None, **kw):
        res = subprocess.run(argv, capture_output=True, timeout=timeout or scaled(120),
                             stdin=subprocess.DEVNULL, env=self.env, cwd=self.world.path(),
                             **kw)
        self.last_output = (res.stdout + res.stderr).decode("utf-8", "replace")
        return res

    def assertDelivered(self, delivered, expected_contents, strip=None):
        """delivered: list of bytes written by the client; compares as a multiset."""
        got = [strip(d) if strip else d for d in delivered]
        want = [client_form(c) for c in expected_contents]
        if collections.Counter(got) != collections.Counter(want):
            lines = [f"{len(got)} delivered, {len(want)} expected"]
            for d in got:
                if d not in want:
                    lines.append(f"unexpected: {d[:300]!r}")
            for w in want:
                if w not in got:
                    lines.append(f"missing:    {w[:300]!r}")
            self.fail("client delivered different bytes\n" + "\n".join(lines)
                      + "\n--- client output ---\n" + self.last_output[-4000:])

    def assertMaildropUnchanged(self):
        self.assertEqual(self.box.contents(), self.before)

    def assertMaildropEmpty(self):
        self.assertEqual(self.box.files(), {})

    def wait_quit_logout(self, count=1):
        return self.srv.wait_events("logout", count=count, user="alice", reason="QUIT")

    def stored(self):
        return [m.content for m in self.box.messages]


def read_maildir(path):
    out = []
    for sub in ("new", "cur"):
        d = os.path.join(path, sub)
        for name in sorted(os.listdir(d)):
            with open(os.path.join(d, name), "rb") as f:
                out.append(f.read())
    return out


def clear_maildir(path):
    for sub in ("new", "cur"):
        d = os.path.join(path, sub)
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))


def make_maildir(path):
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    return path


@needs("curl")
class Curl(ClientBase):
    def curl(self, path="", *args, user="alice", password=PASSWORD):
        res = self.run_client(["curl", "-s", "-S", "--max-time", str(int(scaled(60))),
                               "--noproxy", "*", "-u", f"{user}:{password}", *args,
                               f"pop3://127.0.0.1:{self.srv.port}/{path}"])
        return res

    def numbering(self):
        res = self.curl("", "-X", "UIDL")
        self.assertEqual(res.returncode, 0, self.last_output)
        listing = parse_listing(res.stdout)
        self.assertCountEqual([u for _, u in listing], [m.uidl for m in self.box.messages])
        return {n: self.box.by_uidl(u) for n, u in listing}

    def test_uidl_listing(self):
        num = self.numbering()
        self.assertEqual(sorted(num), list(range(1, 7)))

    def test_list(self):
        num = self.numbering()
        res = self.curl("")
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertSameBytes(res.stdout, b"".join(
            b"%d %d\r\n" % (n, octets(num[n].content)) for n in sorted(num)), "LIST via curl")

    def test_retrieve_each_message(self):
        num = self.numbering()
        for n, m in sorted(num.items()):
            with self.subTest(msg=n):
                res = self.curl(str(n))
                self.assertEqual(res.returncode, 0, self.last_output)
                self.assertSameBytes(res.stdout, wire_body(m.content), f"curl RETR {n}")
        self.wait_quit_logout(count=len(num) + 1)
        self.assertMaildropUnchanged()

    def test_top(self):
        num = self.numbering()
        for n, m in sorted(num.items()):
            with self.subTest(msg=n):
                res = self.curl("", "-X", f"TOP {n} 2")
                self.assertEqual(res.returncode, 0, self.last_output)
                self.assertSameBytes(res.stdout, top_body(m.content, 2), f"curl TOP {n} 2")

    def test_dele(self):
        num = self.numbering()
        res = self.curl("3", "-X", "DELE", "-I")
        self.assertEqual(res.returncode, 0, self.last_output)
        ev = self.wait_quit_logout(count=2)
        self.assertEqual(counts(ev[-1]["del"]), (1, octets(num[3].content)), ev[-1]["_line"])
        expected = dict(self.before)
        del expected[num[3].uidl]
        self.assertEqual(self.box.contents(), expected)

    def test_wrong_password(self):
        res = self.curl("1", password="not-it")
        self.assertEqual(res.returncode, 67, f"curl should report login denied\n"
                         f"{self.last_output}")
        self.assertEqual(res.stdout, b"")
        self.assertMaildropUnchanged()


@needs("fetchmail")
class Fetchmail(ClientBase):
    def fetchmail(self, keep, password=PASSWORD):
        home = self.world.path("fetchmail")
        out = os.path.join(home, "out")
        os.makedirs(out, exist_ok=True)
        mda = os.path.join(home, "mda.sh")
        with open(mda, "w") as f:
            f.write(f'#!/bin/sh\nexec cat > "$(mktemp {out}/msg.XXXXXXXX)"\n')
        os.chmod(mda, 0o755)
        rc = os.path.join(home, "fetchmailrc")
        with open(rc, "w") as f:
            f.write(
                "set no syslog\n"
                "set no bouncemail\n"
                "set invisible\n"
                f"poll 127.0.0.1 with proto POP3 port {self.srv.port} and timeout "
                f"{int(scaled(60))}\n"
                "  auth password no dns no envelope\n"
                f'  user "alice" there with password "{password}" is "localuser" here\n'
                f"  options {'keep' if keep else 'no keep'} fetchall no rewrite stripcr"
                " sslproto ''\n"
                f'  mda "{mda}"\n')
        os.chmod(rc, 0o600)
        env = dict(self.env, FETCHMAILHOME=home)
        res = subprocess.run(["fetchmail", "-f", rc, "--pidfile", os.path.join(home, "pid"),
                              "--nosyslog", "-v"], capture_output=True, env=env,
                             cwd=home, timeout=scaled(120), stdin=subprocess.DEVNULL)
        self.last_output = (res.stdout + res.stderr).decode("utf-8", "replace")
        delivered = []
        for name in sorted(os.listdir(out)):
            with open(os.path.join(out, name), "rb") as f:
                delivered.append(f.read())
            os.unlink(os.path.join(out, name))
        return res, delivered

    def test_keep(self):
        res, delivered = self.fetchmail(keep=True)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertDelivered(delivered, self.stored())
        self.wait_quit_logout()
        self.assertMaildropUnchanged()
        # Retrieved messages are marked seen (S) and sit in cur/.
        for uidl, (sub, flags, _) in self.box.state().items():
            self.assertEqual(sub, "cur", uidl)
            self.assertIn("S", flags or "", uidl)
        # A second run with fetchall gets everything again.
        res, delivered = self.fetchmail(keep=True)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertDelivered(delivered, self.stored())

    def test_delete(self):
        res, delivered = self.fetchmail(keep=False)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertDelivered(delivered, self.stored())
        ev = self.wait_quit_logout()[0]
        self.assertEqual(counts(ev["del"]),
                         (6, sum(octets(c) for c in self.stored())), ev["_line"])
        self.assertMaildropEmpty()
        # Nothing left: fetchmail's "no mail" status is 1.
        res, delivered = self.fetchmail(keep=False)
        self.assertEqual(res.returncode, 1, self.last_output)
        self.assertEqual(delivered, [])

    def test_wrong_password(self):
        res, delivered = self.fetchmail(keep=False, password="not-it")
        self.assertEqual(res.returncode, 3, f"fetchmail should report an authentication "
                         f"failure (3)\n{self.last_output}")
        self.assertEqual(delivered, [])
        self.assertMaildropUnchanged()


@needs("mpop")
class Mpop(ClientBase):
    def mpop(self, keep, only_new=False, password=PASSWORD):
        home = self.world.path("mpop")
        dest = make_maildir(os.path.join(home, "Maildir"))
        rc = os.path.join(home, "mpoprc")
        with open(rc, "w") as f:
            f.write("defaults\n"
                    "account test\n"
                    "host 127.0.0.1\n"
                    f"port {self.srv.port}\n"
                    f"timeout {int(scaled(60))}\n"
                    "tls off\n"
                    "auth user\n"
                    "user alice\n"
                    f"password {password}\n"
                    f"delivery maildir {dest}\n"
                    f"keep {'on' if keep else 'off'}\n"
                    f"only_new {'on' if only_new else 'off'}\n"
                    "received_header off\n"
                    f"uidls_file {home}/uidls\n")
        os.chmod(rc, 0o600)
        res = self.run_client(["mpop", "-C", rc, "-q", "test"])
        delivered = read_maildir(dest)
        shutil.rmtree(dest)
        return res, delivered

    def test_keep(self):
        res, delivered = self.mpop(keep=True)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertDelivered(delivered, self.stored())
        self.wait_quit_logout()
        self.assertMaildropUnchanged()

    def test_delete(self):
        res, delivered = self.mpop(keep=False)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertDelivered(delivered, self.stored())
        self.wait_quit_logout()
        self.assertMaildropEmpty()

    def test_only_new_relies_on_stable_uidls(self):
        res, delivered = self.mpop(keep=True, only_new=True)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertDelivered(delivered, self.stored())
        res, delivered = self.mpop(keep=True, only_new=True)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertDelivered(delivered, [])
        fresh = simple_message("fresh", ["arrived between runs"])
        self.box.deliver(fresh)
        res, delivered = self.mpop(keep=True, only_new=True)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertDelivered(delivered, [fresh])

    def test_wrong_password(self):
        res, delivered = self.mpop(keep=False, password="not-it")
        self.assertNotEqual(res.returncode, 0, self.last_output)
        self.assertEqual(delivered, [])
        self.assertMaildropUnchanged()


def _nobody():
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


@needs("getmail")
@requires(not (IS_ROOT and _nobody() is None),
                 "getmail refuses Maildir delivery as root and there is no 'nobody' user")
class Getmail(ClientBase):
    def getmail(self, delete, read_all=True):
        home = self.world.path("getmail")
        state = os.path.join(home, "state")
        os.makedirs(state, exist_ok=True)
        dest = make_maildir(os.path.join(home, "Maildir"))
        dest_user = ""
        if os.geteuid() == 0:
            # getmail will not deliver as root; it switches to `user` for delivery. (Root runs
            # of the harness run the test as an unprivileged user, so this is rarely taken.)
            nobody = _nobody()
            for root, dirs, files in os.walk(home):
                for p in [root] + [os.path.join(root, x) for x in dirs + files]:
                    os.chown(p, nobody.pw_uid, nobody.pw_gid)
            dest_user = "user = nobody\n"
        rc = os.path.join(home, "getmailrc")
        with open(rc, "w") as f:
            f.write("[retriever]\n"
                    "type = SimplePOP3Retriever\n"
                    "server = 127.0.0.1\n"
                    f"port = {self.srv.port}\n"
                    "username = alice\n"
                    f"password = {PASSWORD}\n"
                    f"timeout = {int(scaled(60))}\n"
                    "\n[destination]\n"
                    "type = Maildir\n"
                    f"path = {dest}/\n"
                    f"{dest_user}"
                    "\n[options]\n"
                    "verbose = 1\n"
                    f"read_all = {'true' if read_all else 'false'}\n"
                    f"delete = {'true' if delete else 'false'}\n"
                    "received = false\n"
                    "delivered_to = false\n"
                    "message_log_syslog = false\n")
        os.chmod(rc, 0o600)
        before = self.box.contents()
        for attempt in (1, 2):
            res = self.run_client(["getmail", f"--getmaildir={state}", f"--rcfile={rc}"])
            delivered = read_maildir(dest)
            clear_maildir(dest)
            if (attempt == 1 and res.returncode != 0 and "waiting child pid" in
                    self.last_output and self.box.contents() == before):
                # getmail's own bug: its SIGCHLD handler can notify before the parent
                # waits, and the parent then gives up on a delivery child that is long
                # gone. The maildrop is untouched (no QUIT), so running it again is clean.
                continue
            break
        shutil.rmtree(dest)
        return res, delivered

    @staticmethod
    def strip_return_path(data):
        m = re.match(rb"Return-Path: <[^>\n]*>\n", data)
        if not m:
            raise AssertionError(f"getmail output without its Return-Path line: {data[:200]!r}")
        return data[m.end():]

    def test_keep(self):
        res, delivered = self.getmail(delete=False)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertDelivered(delivered, self.stored(), strip=self.strip_return_path)
        self.wait_quit_logout()
        self.assertMaildropUnchanged()

    def test_delete(self):
        res, delivered = self.getmail(delete=True)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertDelivered(delivered, self.stored(), strip=self.strip_return_path)
        self.wait_quit_logout()
        self.assertMaildropEmpty()

    def test_only_unseen_by_uidl(self):
        res, delivered = self.getmail(delete=False, read_all=False)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertDelivered(delivered, self.stored(), strip=self.strip_return_path)
        fresh = simple_message("fresh", ["arrived between runs"])
        self.box.deliver(fresh)
        res, delivered = self.getmail(delete=False, read_all=False)
        self.assertEqual(res.returncode, 0, self.last_output)
        self.assertDelivered(delivered, [fresh], strip=self.strip_return_path)


def _strace_works():
    if not shutil.which("strace"):
        return False
    try:
        return subprocess.run(["strace", "-f", "-o", os.devnull, "true"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@requires(_strace_works(), "strace missing or ptrace not permitted here")
class NoTrafficBeyondLoopback(ClientBase):
    """Each client, as configured above, connects to nothing but 127.0.0.1 (no DNS)."""

    INET = re.compile(r"(connect|sendto|sendmsg)\(\d+, .*sa_family=AF_INET6?\b(.*)")

    def traced(self, name, fn):
        trace = self.world.path(f"strace-{name}.txt")
        real_run = subprocess.run

        def run_traced(argv, *a, **kw):
            if argv and argv[0] in ("curl", "fetchmail", "mpop", "getmail"):
                argv = ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg",
                        "-o", trace] + list(argv)
            return real_run(argv, *a, **kw)
        subprocess.run = run_traced
        try:
            fn()
        finally:
            subprocess.run = real_run
        with open(trace) as f:
            text = f.read()
        bad = []
        for line in text.splitlines():
            m = self.INET.search(line)
            if m and not re.search(r'inet_addr\("127\.0\.0\.1"\)|inet_pton\(AF_INET6, "::1"',
                                   m.group(2)):
                bad.append(line)
        self.assertEqual(bad, [], f"{name} talked to something other than loopback")
        self.assertIn(f"htons({self.srv.port})", text, f"{name} never connected to posternd")

    @needs("curl")
    def test_curl(self):
        self.traced("curl", lambda: Curl.curl(self, "1"))

    @needs("fetchmail")
    def test_fetchmail(self):
        self.traced("fetchmail", lambda: Fetchmail.fetchmail(self, keep=True))

    @needs("mpop")
    def test_mpop(self):
        self.traced("mpop", lambda: Mpop.mpop(self, keep=True))

    @needs("getmail")
    @requires(not (IS_ROOT and _nobody() is None), "no 'nobody' user for getmail as root")
    def test_getmail(self):
        self.traced("getmail", lambda: Getmail.getmail(self, delete=False))


if __name__ == "__main__":
    unittest.main()
