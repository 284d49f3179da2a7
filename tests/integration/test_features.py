"""The seed manuals' features through the real posternd (issue 6), in Maildir and mbox.

GNU Mailutils: LOGIN-DELAY with a login statistics database, EXPIRE (expire, delete_expired,
Mailutils' X-Expire-Timestamp header), bulletins (bulletin_source, bulletin_db, ~/.popbull),
undelete, access lists. Qualcomm/Tru64: XTND XLIST and XMIT, the logout statistics line (-s),
the trace file (-t), debug logging (-d). Cyrus: per-user telemetry. Dovecot migrations:
uidl_format with dovecot-uidlist, X-UID/X-IMAPbase and X-UIDL. And the command-line options the
seed manuals name (docs/seed-options.md maps every one of them to a test).

Time is never waited for: where expiry depends on age, the test writes the stamps itself
(Postern's side files, or the X-Expire-Timestamp header) dated days in the past, and the
LOGIN-DELAY tests use a delay of an hour.

Layout of the side files the tests read or pre-date (docs/features.md):
  Maildir: <maildir>/postern-expire ("UIDL SECONDS" lines), <maildir>/postern-uidlist
  mbox:    <spool dir>/.<user>.postern-expire, <spool dir>/.<user>.postern-uidlist
"""

import base64
import os
import re
import stat
import time
import unittest

from postern_harness import (Msg, PosternTestCase, parse_listing, run_posternd, simple_message,
                             wait_for)

DAY = 86400
ALICE_PW = "Al1ce-feature.pw"
BOB_PW = "B0b-feature.pw"
WRONG_PW = "Wr0ng-feature.pw"
# Dovecot's pop3_uidl_format default; X is lower-case hex in Dovecot's var_expand.
DOVECOT_FORMAT = "%08Xu%08Xv"


def msg(subject, extra=(), body=("Hello.",)):
    return simple_message(subject, body, extra)


def subjects_of(contents):
    """Subjects of stored messages (bytes), in order."""
    out = []
    for c in contents:
        m = re.search(rb"^Subject: (.*)$", c, re.M)
        out.append(m.group(1).decode() if m else None)
    return out


# ---------------------------------------------------------------------------------------------
# Mailboxes in either store

class MboxBox:
    """One user's mbox spool file ([mail] location = "mbox:<spool>/%u")."""

    def __init__(self, spool, user, password):
        self.path = os.path.join(spool, user)
        self.spool = spool
        self.user = user
        self.password = password

    def write(self, messages):
        data = b""
        for m in messages:
            data += b"From sender@example.org Tue Nov 14 22:13:20 2023\n" + m
            if not m.endswith(b"\n"):
                data += b"\n"
            data += b"\n"
        with open(self.path, "wb") as f:
            f.write(data)

    def append(self, m):
        with open(self.path, "ab") as f:
            f.write(b"From sender@example.org Tue Nov 14 22:13:20 2023\n" + m + b"\n")

    def raw(self):
        with open(self.path, "rb") as f:
            return f.read()

    def contents(self):
        """The messages in file order (From_ lines and separator blank lines removed)."""
        data = self.raw()
        parts = re.split(rb"(?:^|\n)From [^\n]*\n", data)
        out = []
        for p in parts[1:]:
            if p.endswith(b"\n\n"):
                p = p[:-1]
            out.append(p)
        return out

    def side_file(self, name):
        return os.path.join(self.spool, f".{self.user}.{name}")


class StoreMixin:
    """Users and messages in the store named by `store` ("maildir" or "mbox")."""

    store = "maildir"

    def setUp(self):
        super().setUp()
        self.spool = self.world.path("spool")
        os.makedirs(self.spool, exist_ok=True)
        if self.store == "mbox":
            self.world.config["mail"]["location"] = f"mbox:{self.spool}/%u"
            self.world.config["mail"]["mbox_lock_timeout"] = "5s"

    def pop3(self):
        return self.world.config.setdefault("pop3", {})

    def add_user(self, user, password, messages, home=""):
        """messages: bytes in the order they should be numbered."""
        if self.store == "maildir":
            box = self.world.add_user(
                user, password,
                [Msg(m, "new", timestamp=1700000000 + i) for i, m in enumerate(messages)],
                home=home)
            box.kind = "maildir"
            return box
        self.world.add_passwd_line(f"{user}:{{PLAIN}}{password}::::{home}::")
        box = MboxBox(self.spool, user, password)
        box.write(messages)
        box.kind = "mbox"
        return box

    def contents(self, box):
        if box.kind == "mbox":
            return box.contents()
        return [m for _, m in sorted(box.contents().items(), key=lambda kv: kv[0])]

    def subjects(self, box):
        return subjects_of(self.contents(box))

    def side_file(self, box, name):
        if box.kind == "mbox":
            return box.side_file(name)
        return os.path.join(box.path, name)

    def uidls(self, conn):
        """{msgno: uidl} of the current session."""
        st, body = conn.cmd_multi("UIDL")
        self.assertOk(st)
        return dict(parse_listing(body))

    def top_subject(self, conn, n):
        st, body = conn.cmd_multi(f"TOP {n} 0")
        self.assertOk(st)
        m = re.search(rb"^Subject: (.*)\r$", body, re.M)
        return m.group(1).decode() if m else None

    def session_subjects(self, conn):
        """Subjects of every message of the session, in message-number order (via TOP)."""
        st = conn.cmd("STAT")
        self.assertOk(st)
        n = int(st.split()[1])
        return [self.top_subject(conn, i) for i in range(1, n + 1)]


class FeatureCase(StoreMixin, PosternTestCase):
    pass


# ---------------------------------------------------------------------------------------------
# CAPA

class Capabilities(FeatureCase):
    def capa(self, conn):
        st, body = conn.cmd_multi("CAPA")
        self.assertOk(st)
        return body.decode().split("\r\n")[:-1]

    def test_defaults_expire_never_and_no_login_delay(self):
        self.add_user("alice", ALICE_PW, [msg("a")])
        srv = self.world.start()
        conn = srv.connect()
        caps = self.capa(conn)
        self.assertIn("EXPIRE NEVER", caps)
        self.assertFalse([c for c in caps if c.startswith("LOGIN-DELAY")], caps)

    def test_login_delay_and_expire_values(self):
        box = self.add_user("alice", ALICE_PW, [msg("a")])
        self.pop3().update({"login_delay": 900, "stat_file": self.world.path("state/login.db"),
                            "expire": 5})
        srv = self.world.start()
        conn = srv.connect()
        caps = self.capa(conn)
        self.assertIn("LOGIN-DELAY 900", caps)
        self.assertIn("EXPIRE 5", caps)
        conn.login(box.user, box.password)
        self.assertIn("EXPIRE 5", self.capa(conn))
        conn.quit()

    def test_expire_zero(self):
        self.add_user("alice", ALICE_PW, [msg("a")])
        self.pop3().update({"expire": 0})
        srv = self.world.start()
        self.assertIn("EXPIRE 0", self.capa(srv.connect()))


# ---------------------------------------------------------------------------------------------
# LOGIN-DELAY (store-independent)

class LoginDelay(FeatureCase):
    def setUp(self):
        super().setUp()
        self.alice = self.add_user("alice", ALICE_PW, [msg("a")])
        self.bob = self.add_user("bob", BOB_PW, [msg("b")])
        self.stat_file = self.world.path("state", "login-stats.sqlite")

    def test_second_login_within_the_delay_is_refused_only_after_a_valid_password(self):
        self.pop3().update({"login_delay": 3600, "stat_file": self.stat_file})
        srv = self.world.start()
        conn = srv.session(self.alice)
        conn.quit()
        self.assertEqual(stat.S_IMODE(os.stat(self.stat_file).st_mode), 0o600)

        conn = srv.connect()
        self.assertOk(conn.cmd("USER alice"))
        # A wrong password says nothing about the delay (no account harvesting).
        st = conn.cmd(f"PASS {WRONG_PW}")
        self.assertTrue(st.startswith("-ERR [AUTH]"), st)
        self.assertOk(conn.cmd("USER alice"))
        st = conn.cmd(f"PASS {ALICE_PW}")
        self.assertTrue(st.startswith("-ERR [LOGIN-DELAY]"), st)
        conn.close()

        # Other users are not affected; a refused login is not recorded, so it stays refused.
        srv.session(self.bob).quit()
        conn = srv.connect()
        self.assertOk(conn.cmd("USER alice"))
        self.assertTrue(conn.cmd(f"PASS {ALICE_PW}").startswith("-ERR [LOGIN-DELAY]"))

    def test_refused_login_leaves_the_maildrop_alone(self):
        self.pop3().update({"login_delay": 3600, "stat_file": self.stat_file})
        srv = self.world.start()
        srv.session(self.alice).quit()
        conn = srv.connect()
        conn.cmd("USER alice")
        self.assertTrue(conn.cmd(f"PASS {ALICE_PW}").startswith("-ERR [LOGIN-DELAY]"))
        conn.close()
        self.assertEqual(self.subjects(self.alice), ["a"])

    def test_unusable_statistics_database_runs_without_the_delay(self):
        blocker = self.world.path("not-a-dir")
        with open(blocker, "w") as f:
            f.write("x")
        self.pop3().update({"login_delay": 3600, "stat_file": os.path.join(blocker, "db")})
        srv = self.world.start()
        srv.wait_log(r"(?i)statistics db")
        conn = srv.connect()
        st, body = conn.cmd_multi("CAPA")
        self.assertNotIn(b"LOGIN-DELAY", body)
        conn.close()
        for _ in range(2):
            srv.session(self.alice).quit()


# ---------------------------------------------------------------------------------------------
# EXPIRE

class _Expire:
    def start(self, expire, delete_expired=True):
        self.pop3().update({"expire": expire, "delete_expired": delete_expired})
        return self.world.start()

    def test_expire_zero_removes_retrieved_messages_at_quit(self):
        box = self.add_user("alice", ALICE_PW, [msg("retr"), msg("top"), msg("kept")])
        srv = self.start(0, delete_expired=False)  # expire 0 always deletes
        conn = srv.session(box)
        st, _ = conn.cmd_multi("RETR 1")
        self.assertOk(st)
        self.assertOk(conn.cmd_multi("TOP 2 1")[0])
        self.assertOk(conn.cmd("LIST 3"))
        conn.quit()
        self.assertEqual(self.subjects(box), ["kept"])
        ev = srv.wait_events("logout", user="alice")[-1]
        self.assertEqual(ev["del"].split("/")[0], "2", ev["_line"])

    def test_no_quit_no_expiry(self):
        box = self.add_user("alice", ALICE_PW, [msg("a"), msg("b")])
        srv = self.start(0)
        conn = srv.session(box)
        self.assertOk(conn.cmd_multi("RETR 1")[0])
        conn.close()  # dropped: nothing may leave storage
        srv.wait_events("logout", user="alice")
        self.assertEqual(self.subjects(box), ["a", "b"])

    def test_old_stamps_expire_at_quit(self):
        box = self.add_user("alice", ALICE_PW, [msg("old"), msg("recent"), msg("fresh")])
        srv = self.start(3)
        # The native UIDLs (the stamp file's keys) from a first session.
        conn = srv.session(box)
        uidls = self.uidls(conn)
        conn.quit()
        now = int(time.time())
        with open(self.side_file(box, "postern-expire"), "w") as f:
            f.write(f"{uidls[1]} {now - 4 * DAY}\n{uidls[2]} {now - DAY}\n")
        conn = srv.session(box)
        self.assertOk(conn.cmd_multi("RETR 3")[0])
        conn.quit()
        self.assertEqual(self.subjects(box), ["recent", "fresh"])
        with open(self.side_file(box, "postern-expire")) as f:
            lines = dict(line.split() for line in f.read().splitlines())
        self.assertEqual(set(lines), {uidls[2], uidls[3]})
        self.assertEqual(int(lines[uidls[2]]), now - DAY)
        self.assertLessEqual(abs(int(lines[uidls[3]]) - int(time.time())), 120)

    def test_stamps_without_delete_expired_delete_nothing(self):
        box = self.add_user("alice", ALICE_PW, [msg("a"), msg("b")])
        srv = self.start(3, delete_expired=False)
        conn = srv.session(box)
        uidls = self.uidls(conn)
        conn.quit()
        with open(self.side_file(box, "postern-expire"), "w") as f:
            f.write(f"{uidls[1]} {int(time.time()) - 30 * DAY}\n")
        conn = srv.session(box)
        self.assertOk(conn.cmd_multi("RETR 2")[0])
        conn.quit()
        self.assertEqual(self.subjects(box), ["a", "b"])
        with open(self.side_file(box, "postern-expire")) as f:
            self.assertIn(uidls[2], f.read())

    def test_undelete_is_accepted_and_marks_never_outlive_a_session(self):
        box = self.add_user("alice", ALICE_PW, [msg("a"), msg("b")])
        self.pop3()["undelete"] = True
        srv = self.world.start()
        conn = srv.session(box)
        self.assertOk(conn.cmd("DELE 1"))
        conn.close()
        srv.wait_events("logout", user="alice")
        conn = srv.session(box)
        st = conn.cmd("STAT")
        self.assertTrue(st.startswith("+OK 2 "), st)
        conn.quit()
        self.assertEqual(self.subjects(box), ["a", "b"])


class ExpireMaildir(_Expire, FeatureCase):
    store = "maildir"


class ExpireMbox(_Expire, FeatureCase):
    store = "mbox"

    def test_mailutils_x_expire_timestamp_header_counts(self):
        # Read in mbox maildrops only (docs/features.md).
        now = int(time.time())
        box = self.add_user("alice", ALICE_PW, [
            msg("stamped-long-ago", [f"X-Expire-Timestamp: {now - 10 * DAY}"]),
            msg("stamped-yesterday", [f"X-Expire-Timestamp: {now - DAY}"]),
            msg("never-retrieved")])
        srv = self.start(5)
        srv.session(box).quit()
        self.assertEqual(self.subjects(box), ["stamped-yesterday", "never-retrieved"])


# ---------------------------------------------------------------------------------------------
# Bulletins

class _Bulletins:
    def bulletin_source(self, subjects, kind="mbox"):
        if kind == "mbox":
            path = self.world.path("bull", "mbox")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            src = MboxBox(os.path.dirname(path), "mbox", "")
            src.write([msg(s) for s in subjects])
            return src
        path = self.world.path("bull", "Maildir")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)
        for i, s in enumerate(subjects):
            with open(os.path.join(path, "cur", f"{1600000000 + i}.M{i}P1.admin:2,S"), "wb") as f:
                f.write(msg(s))
        return path

    def test_bulletins_arrive_at_login_exactly_once(self):
        box = self.add_user("alice", ALICE_PW, [msg("mine")])
        src = self.bulletin_source(["bulletin 1", "bulletin 2"])
        self.pop3().update({"bulletin_source": f"mbox:{src.path}",
                            "bulletin_db": self.world.path("state", "bulletins.sqlite")})
        srv = self.world.start()
        conn = srv.session(box)
        self.assertCountEqual(self.session_subjects(conn), ["mine", "bulletin 1", "bulletin 2"])
        conn.quit()
        conn = srv.session(box)
        self.assertEqual(len(self.session_subjects(conn)), 3)  # not delivered again
        conn.quit()
        src.append(msg("bulletin 3"))
        conn = srv.session(box)
        self.assertCountEqual(self.session_subjects(conn),
                              ["mine", "bulletin 1", "bulletin 2", "bulletin 3"])
        conn.quit()
        self.assertEqual(sorted(self.subjects(box)),
                         ["bulletin 1", "bulletin 2", "bulletin 3", "mine"])

    def test_popbull_in_the_home_directory_without_a_database(self):
        home = self.world.path("home", "alice")
        os.makedirs(home)
        box = self.add_user("alice", ALICE_PW, [msg("mine")], home=home)
        src = self.bulletin_source(["bulletin 1", "bulletin 2"])
        with open(os.path.join(home, ".popbull"), "w") as f:
            f.write("1\n")  # Mailutils already delivered bulletin 1
        self.pop3().update({"bulletin_source": f"mbox:{src.path}"})
        srv = self.world.start()
        conn = srv.session(box)
        self.assertCountEqual(self.session_subjects(conn), ["mine", "bulletin 2"])
        conn.quit()
        with open(os.path.join(home, ".popbull")) as f:
            self.assertEqual(f.read().strip(), "2")

    def test_maildir_bulletin_source(self):
        box = self.add_user("alice", ALICE_PW, [])
        src = self.bulletin_source(["first", "second"], kind="maildir")
        self.pop3().update({"bulletin_source": f"maildir:{src}",
                            "bulletin_db": self.world.path("state", "bulletins.sqlite")})
        srv = self.world.start()
        conn = srv.session(box)
        self.assertEqual(self.session_subjects(conn), ["first", "second"])
        conn.quit()


class BulletinsMaildir(_Bulletins, FeatureCase):
    store = "maildir"


class BulletinsMbox(_Bulletins, FeatureCase):
    store = "mbox"


# ---------------------------------------------------------------------------------------------
# XTND (Qualcomm)

class _Xtnd:
    def test_xlist_all_and_one(self):
        box = self.add_user("alice", ALICE_PW, [msg("first"), msg("second"), msg("third")])
        srv = self.world.start()
        conn = srv.session(box)
        self.assertOk(conn.cmd("DELE 3"))
        st, body = conn.cmd_multi("XTND XLIST Subject")
        self.assertOk(st)
        self.assertEqual(body, b"1 Subject: first\r\n2 Subject: second\r\n")
        st, body = conn.cmd_multi("XTND XLIST subject 2")
        self.assertOk(st)
        self.assertEqual(body, b"2 Subject: second\r\n")
        st, body = conn.cmd_multi("XTND XLIST X-Missing")
        self.assertOk(st)
        self.assertEqual(body, b"")
        conn.quit()

    def test_xmit_submits_through_the_configured_program(self):
        box = self.add_user("alice", ALICE_PW, [msg("a")])
        out = self.world.path("submitted.eml")
        script = self.world.path("fake-sendmail.sh")
        with open(script, "w") as f:
            f.write('#!/bin/sh\ncat > "$1"\n')
        os.chmod(script, 0o755)
        self.pop3().update({"xtnd_xmit": True, "xmit_command": [script, out]})
        srv = self.world.start()
        conn = srv.session(box)
        self.assertOk(conn.cmd("XTND XMIT"))
        conn.send(b"To: bob@example.org\r\nSubject: via xmit\r\n\r\nhello\r\n..dot\r\n.\r\n")
        self.assertOk(conn.status())
        conn.quit()
        with open(out, "rb") as f:
            self.assertEqual(f.read(),
                             b"To: bob@example.org\nSubject: via xmit\n\nhello\n.dot\n")

    def test_xmit_is_off_by_default(self):
        box = self.add_user("alice", ALICE_PW, [msg("a")])
        srv = self.world.start()
        conn = srv.session(box)
        self.assertErr(conn.cmd("XTND XMIT"))
        conn.quit()


class XtndMaildir(_Xtnd, FeatureCase):
    store = "maildir"


class XtndMbox(_Xtnd, FeatureCase):
    store = "mbox"


# ---------------------------------------------------------------------------------------------
# Logs: statistics (-s), debug (-d), trace file (-t), Cyrus telemetry

class Logs(FeatureCase):
    def test_logout_statistics_line(self):
        box = self.add_user("alice", ALICE_PW, [msg("a"), msg("bb"), msg("ccc")])
        srv = self.world.start()
        conn = srv.session(box)
        st, _ = conn.cmd_multi("RETR 1")
        size1 = int(conn.cmd("LIST 1").split()[2])
        self.assertOk(conn.cmd("DELE 1"))
        conn.quit()
        ev = srv.wait_events("logout", user="alice")[-1]
        self.assertEqual(ev["del"], f"1/{size1}")
        self.assertEqual(ev["left"].split("/")[0], "2")

    def test_debug_level_logs_sessions_that_never_log_in(self):
        self.add_user("alice", ALICE_PW, [msg("a")])
        srv = self.world.start()  # the harness runs with [log] level = "debug"
        conn = srv.connect()
        conn.quit()
        srv.wait_log(r"disconnect: rip=127\.0\.0\.1")

    def test_trace_file_records_the_exchange_with_secrets_redacted(self):
        box = self.add_user("alice", ALICE_PW, [msg("private subject", body=("secret body",))])
        trace = self.world.path("trace.log")
        self.world.config["log"]["trace_file"] = trace
        srv = self.world.start()
        conn = srv.session(box)
        self.assertOk(conn.cmd_multi("RETR 1")[0])
        conn.quit()
        # AUTH PLAIN with an initial response (offered on loopback).
        conn = srv.connect()
        ir = base64.b64encode(f"\0alice\0{ALICE_PW}".encode()).decode()
        st = conn.cmd(f"AUTH PLAIN {ir}")
        conn.quit()

        def traced():
            with open(trace) as f:
                text = f.read()
            return text if "S: +OK Logging out." in text and text.count("C: QUIT") >= 2 else None
        text = wait_for(traced, what="both sessions in the trace file")
        self.assertIn("C: USER alice", text)
        self.assertIn("C: PASS [redacted]", text)
        self.assertIn("C: AUTH PLAIN [redacted]", text)
        self.assertIn("C: RETR 1", text)
        self.assertNotIn(ALICE_PW, text)
        self.assertNotIn(ir, text)
        self.assertNotIn("secret body", text)  # bodies are summarized
        self.assertRegex(text, r"S: \[message body: \d+ octets\]")
        self.assertOk(st)  # the first session's QUIT released the maildrop
        self.assertEqual(stat.S_IMODE(os.stat(trace).st_mode), 0o600)

    def test_telemetry_only_for_users_whose_directory_exists(self):
        alice = self.add_user("alice", ALICE_PW, [msg("a")])
        bob = self.add_user("bob", BOB_PW, [msg("b")])
        tele = self.world.path("telemetry")
        os.makedirs(os.path.join(tele, "alice"))
        self.world.config["log"]["telemetry_dir"] = tele
        srv = self.world.start()
        srv.session(alice).quit()
        srv.session(bob).quit()
        conn = srv.connect()  # a failed login writes no telemetry either
        conn.cmd("USER alice")
        self.assertErr(conn.cmd(f"PASS {WRONG_PW}"))
        conn.quit()

        def files():
            names = os.listdir(os.path.join(tele, "alice"))
            if len(names) != 1:
                return None
            with open(os.path.join(tele, "alice", names[0])) as f:
                text = f.read()
            return text if "C: QUIT" in text else None
        text = wait_for(files, what="alice's telemetry file")
        self.assertIn("C: USER alice", text)   # the pre-login lines were kept
        self.assertIn("C: PASS [redacted]", text)
        self.assertNotIn(ALICE_PW, text)
        self.assertEqual(os.listdir(tele), ["alice"])  # nothing for bob
        srv.wait_events("logout", user="bob")
        self.assertEqual(len(os.listdir(os.path.join(tele, "alice"))), 1)


# ---------------------------------------------------------------------------------------------
# Access lists

class Acl(FeatureCase):
    def test_deny_refuses_with_err_and_a_log_line(self):
        self.add_user("alice", ALICE_PW, [msg("a")])
        self.pop3()["acl"] = ["deny 127.0.0.1", "allow any"]
        srv = self.world.start()
        conn = srv.connect(greet=False)
        line = conn.status()
        self.assertTrue(line.startswith("-ERR"), line)
        conn.expect_closed(max_lines=0)
        srv.wait_log(r"connection refused: rip=127\.0\.0\.1, reason=acl")

    def test_first_match_wins_and_no_match_allows(self):
        box = self.add_user("alice", ALICE_PW, [msg("a")])
        self.pop3()["acl"] = ["allow 127.0.0.0/8", "deny any"]
        srv = self.world.start()
        srv.session(box).quit()
        srv.stop()
        self.pop3()["acl"] = ["deny 10.0.0.0/8", "deny ::1"]
        srv = self.world.start()
        srv.session(box).quit()


# ---------------------------------------------------------------------------------------------
# UIDLs of older servers (Dovecot, qpopper, UW)

class UidlFormatMaildir(FeatureCase):
    store = "maildir"

    def test_dovecot_uidlist_reproduces_dovecot_uidls(self):
        box = self.add_user("alice", ALICE_PW, [])
        long_base = ("1655390418.M100238P743770V0000000000000030I00000000081274AE_0."
                     "mail.example.org,S=3734")
        old1 = box.store(Msg(msg("old one"), "cur", flags="S", base=long_base))
        old2 = box.store(Msg(msg("old two"), "cur", flags="", timestamp=1700000001))
        box.store(Msg(msg("new since"), "new", timestamp=1700000002))
        with open(os.path.join(box.path, "dovecot-uidlist"), "w") as f:
            f.write("3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n"
                    f"7 :{old1.base}:2,S\n"
                    f"8 :{old2.base}\n")
        self.pop3()["uidl_format"] = DOVECOT_FORMAT
        srv = self.world.start()
        expected = {"old one": "000000074c0907b0", "old two": "000000084c0907b0",
                    "new since": "000061be4c0907b0"}
        for _ in range(2):  # the same in every session
            conn = srv.session(box)
            uidls = self.uidls(conn)
            got = {self.top_subject(conn, n): u for n, u in uidls.items()}
            self.assertEqual(got, expected)
            conn.quit()
        with open(os.path.join(box.path, "dovecot-uidlist")) as f:
            text = f.read()  # one UID space: the new number is in Dovecot's own file
        self.assertTrue(text.startswith("3 V1275660208 N25023 "), text)
        self.assertTrue(text.endswith(f"25022 :{box.messages[2].base}\n"), text)
        self.assertFalse(os.path.exists(os.path.join(box.path, "postern-uidlist")))

    def test_native_uidls_without_a_format(self):
        box = self.add_user("alice", ALICE_PW, [msg("a")])
        srv = self.world.start()
        conn = srv.session(box)
        self.assertEqual(list(self.uidls(conn).values()), [box.messages[0].uidl])
        conn.quit()


class UidlFormatMbox(FeatureCase):
    store = "mbox"

    def test_x_uid_x_imapbase_and_x_uidl(self):
        box = self.add_user("alice", ALICE_PW, [
            msg("one", ["X-IMAPbase: 1181234567 0000000007", "X-UID: 5"]),
            msg("two", ["X-UID: 7"]),
            msg("qpopper", ["X-UIDL: qp-0001"]),
            msg("new")])
        self.pop3()["uidl_format"] = DOVECOT_FORMAT
        self.world.config["mail"]["mbox_x_uidl"] = True  # off by default
        srv = self.world.start()
        for _ in range(2):
            conn = srv.session(box)
            self.assertEqual(self.uidls(conn), {1: "0000000546683587", 2: "0000000746683587",
                                                3: "qp-0001", 4: "0000000846683587"})
            conn.quit()

    def test_x_uidl_reused_without_a_format(self):
        box = self.add_user("alice", ALICE_PW, [msg("qpopper", ["X-UIDL: qp-0002"])])
        self.world.config["mail"]["mbox_x_uidl"] = True  # off by default
        srv = self.world.start()
        conn = srv.session(box)
        self.assertEqual(self.uidls(conn), {1: "qp-0002"})
        conn.quit()


# ---------------------------------------------------------------------------------------------
# Command-line options the seed manuals name

class CommandLine(PosternTestCase):
    def test_help_lists_the_options(self):
        res = run_posternd(["--help"])
        self.assertEqual(res.returncode, 0, res.stderr)
        for opt in ("-C", "--config", "-i", "--inetd", "-f", "--foreground", "--daemon",
                    "-4", "-6", "-V", "--version", "--check-config"):
            self.assertRegex(res.stdout, rf"(^|[\s,]){re.escape(opt)}\b", opt)

    def test_help_short_flag(self):
        long = run_posternd(["--help"])
        short = run_posternd(["-h"])
        self.assertEqual(short.returncode, 0, short.stderr)
        self.assertEqual(short.stdout, long.stdout)

    def test_short_version_flag(self):
        long = run_posternd(["--version"])
        short = run_posternd(["-V"])
        self.assertEqual(short.returncode, 0, short.stderr)
        self.assertEqual(short.stdout, long.stdout)

    def listen_line(self, *args):
        self.world.config["server"]["listen"] = ["127.0.0.1:0", "[::1]:0"]
        path = self.world.write_config()
        res = run_posternd(["--config", path, "--check-config", *args])
        self.assertEqual(res.returncode, 0, res.stderr)
        m = re.search(r"^listen = (.*)$", res.stdout, re.M)
        self.assertIsNotNone(m, res.stdout)
        return m.group(1)

    def test_address_family_flags(self):
        self.assertIn("::1", self.listen_line())
        v4 = self.listen_line("-4")
        self.assertIn("127.0.0.1", v4)
        self.assertNotIn("::1", v4)
        v6 = self.listen_line("-6")
        self.assertIn("::1", v6)
        self.assertNotIn("127.0.0.1", v6)

    def test_daemon_with_and_without_a_count(self):
        path = self.world.write_config()
        for args in (["--daemon=3"], ["--daemon"]):
            res = run_posternd(["--config", path, "--check-config", *args])
            self.assertEqual(res.returncode, 0, res.stderr)


if __name__ == "__main__":
    unittest.main()
