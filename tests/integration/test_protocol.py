"""POP3 conversations with the real posternd over raw sockets (RFC 1939, 2449, 3206).

Every reply is checked byte for byte where the RFCs fix it (listings, octet counts, message
bodies, dot-stuffing, terminators) and by prefix where they leave the text free (+OK/-ERR and
response codes). Message numbers are mapped to stored messages through UIDL, so nothing here
depends on the order in which the server lists a Maildir.
"""

import os
import re
import socket
import time
import unittest

from postern_harness import (Closed, Msg, PosternTestCase, counts, crlf, dot_stuff, octets,
                             openssl_passwd, parse_listing, retr_payload, scaled,
                             simple_message, top_body, wait_for, wire_body)

M_SIMPLE = simple_message("one")
M_DOTS = (b"From: dots@example.org\nSubject: dots\n\n"
          b".\n..\n.leading dot\ntrailing dot.\n . space dot\n...\nmiddle\n.\n")
M_NONL = (b"From: nonl@example.org\nSubject: no final newline\n\n"
          b"first line\nlast line without newline")
M_LONG = simple_message("long", [f"body line {i}" for i in range(1, 11)])
M_EMPTY_BODY = b"From: x@example.org\nSubject: empty body\n\n"
ALICE_PW = "Al1ce-pw.7Q"
WRONG_PW = "Wr0ng-pw.9Z"


def standard_messages():
    """Five messages covering new/ and cur/, flags, sizes in names, stuffing, no final LF."""
    return [
        Msg(M_SIMPLE, "new"),
        Msg(M_DOTS, "cur", flags="S"),
        Msg(M_NONL, "new", sizes=True),
        Msg(M_LONG, "cur", flags=""),
        Msg(M_EMPTY_BODY, "cur", flags="F", sizes=True),
    ]


class Base(PosternTestCase):
    def setUp(self):
        super().setUp()
        self.box = self.world.add_user("alice", ALICE_PW, standard_messages())

    def start(self, **server_options):
        self.world.config["server"].update(server_options)
        self.srv = self.world.start()
        return self.srv

    def login(self, box=None):
        return self.srv.session(box or self.box)

    def numbering(self, conn, box=None):
        """{msgno: Msg} from UIDL, checking it lists exactly the stored messages 1..N."""
        box = box or self.box
        st, body = conn.cmd_multi("UIDL")
        self.assertOk(st)
        listing = parse_listing(body)
        self.assertEqual([n for n, _ in listing], list(range(1, len(listing) + 1)),
                         f"UIDL numbers: {listing}")
        self.assertCountEqual([u for _, u in listing], [m.uidl for m in box.messages],
                              "UIDL must list every stored message, named by base name")
        return {n: box.by_uidl(u) for n, u in listing}

    def msgno_of(self, numbering, content):
        return next(n for n, m in numbering.items() if m.content == content)

    def stat(self, conn):
        st = conn.cmd("STAT")
        m = re.fullmatch(r"\+OK (\d+) (\d+)(?: .*)?", st)
        self.assertIsNotNone(m, f"STAT reply {st!r}")
        return int(m.group(1)), int(m.group(2))


class GreetingAndCapa(Base):
    def test_greeting(self):
        self.start()
        conn = self.srv.connect(greet=False)
        line = conn.read_line()
        self.assertTrue(line.startswith(b"+OK"), line)
        self.assertTrue(line.endswith(b"\r\n") and b"\n" not in line[:-1], line)
        self.assertLessEqual(len(line), 512)
        self.assertNotIn(b"\0", line)

    def test_configured_greeting(self):
        self.start(greeting="POP3 server of example.org ready.")
        conn = self.srv.connect()
        self.assertTrue(conn.greeting.startswith("+OK POP3 server of example.org ready."),
                        conn.greeting)

    def capa(self, conn):
        st, body = conn.cmd_multi("CAPA")
        self.assertOk(st)
        lines = body.decode("latin-1").split("\r\n")[:-1]
        self.assertEqual(len(lines), len(set(lines)), f"duplicate CAPA lines: {lines}")
        for line in lines:
            self.assertRegex(line, r"^[A-Z0-9-]+( \S.*)?$")
            self.assertLessEqual(len(line) + 2, 512)
        return lines

    def test_capa_in_authorization(self):
        self.start()
        conn = self.srv.connect()
        lines = self.capa(conn)
        for cap in ("TOP", "USER", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"):
            self.assertIn(cap, lines)
        impl = [line for line in lines if line.split(" ")[0] == "IMPLEMENTATION"]
        self.assertEqual(len(impl), 1, lines)
        self.assertRegex(impl[0], r"^IMPLEMENTATION \S")
        # Session still usable afterwards.
        conn.login("alice", ALICE_PW)
        self.assertEqual(self.stat(conn)[0], 5)

    def test_capa_in_transaction(self):
        self.start()
        conn = self.login()
        lines = self.capa(conn)
        for cap in ("TOP", "UIDL", "RESP-CODES", "PIPELINING"):
            self.assertIn(cap, lines)
        self.assertEqual(self.stat(conn)[0], 5)

    def test_implementation_capability_can_be_turned_off(self):
        self.start(implementation_capability=False)
        conn = self.srv.connect()
        lines = self.capa(conn)
        self.assertFalse([line for line in lines if line.startswith("IMPLEMENTATION")], lines)
        self.assertIn("UIDL", lines)

    def test_capa_with_argument_is_rejected(self):
        self.start()
        conn = self.srv.connect()
        self.assertErr(conn.cmd("CAPA extra"))
        self.capa(conn)


class Authorization(Base):
    def test_login_logs_user_method_rip_session(self):
        self.start()
        conn = self.srv.connect()
        self.assertOk(conn.cmd("USER alice"))
        self.assertOk(conn.cmd(f"PASS {ALICE_PW}"))
        ev = self.srv.wait_events("login", user="alice")[0]
        self.assertEqual(ev.get("method"), "USER", ev["_line"])
        self.assertEqual(ev.get("rip"), "127.0.0.1", ev["_line"])
        self.assertTrue(ev.get("session"), ev["_line"])
        self.assertNotIn(ALICE_PW, self.srv.log(), "the password must never be logged")

    def failed_login(self, user, password):
        conn = self.srv.connect()
        user_reply = conn.cmd(f"USER {user}")
        t0 = time.monotonic()
        pass_reply = conn.cmd(f"PASS {password}")
        elapsed = time.monotonic() - t0
        return conn, user_reply, pass_reply, elapsed

    def test_unknown_user_and_wrong_password_look_identical(self):
        self.start()
        _, u1, p1, t1 = self.failed_login("alice", WRONG_PW)
        _, u2, p2, t2 = self.failed_login("nosuchuser", WRONG_PW)
        self.assertOk(u1)
        self.assertEqual(u1.replace("alice", "USER"), u2.replace("nosuchuser", "USER"),
                         "USER replies must not reveal whether the user exists")
        self.assertTrue(p1.startswith("-ERR [AUTH]"), p1)
        self.assertEqual(p1, p2, "PASS replies must not reveal whether the user exists")
        # failure_delay = 200ms must be applied to both.
        self.assertGreaterEqual(t1, 0.18, f"wrong password answered after {t1:.3f}s")
        self.assertGreaterEqual(t2, 0.18, f"unknown user answered after {t2:.3f}s")
        for user in ("alice", "nosuchuser"):
            ev = self.srv.wait_events("auth failed", user=user)[0]
            self.assertEqual(ev.get("method"), "USER", ev["_line"])
            self.assertEqual(ev.get("rip"), "127.0.0.1", ev["_line"])
            self.assertTrue(ev.get("session"), ev["_line"])
        self.assertNotIn(WRONG_PW, self.srv.log(), "attempted passwords must never be logged")
        self.assertEqual(self.srv.events("login"), [])

    def test_login_after_failure_on_same_connection(self):
        self.start()
        conn, _, p, _ = self.failed_login("alice", WRONG_PW)
        self.assertTrue(p.startswith("-ERR [AUTH]"), p)
        conn.login("alice", ALICE_PW)
        self.assertEqual(self.stat(conn), (5, sum(octets(m.content) for m in self.box.messages)))

    def test_pass_without_user(self):
        self.start()
        conn = self.srv.connect()
        self.assertErr(conn.cmd(f"PASS {ALICE_PW}"))
        conn.login("alice", ALICE_PW)

    def test_user_and_pass_need_arguments(self):
        self.start()
        conn = self.srv.connect()
        self.assertErr(conn.cmd("USER"))
        self.assertErr(conn.cmd(f"PASS {ALICE_PW}"))
        self.assertOk(conn.cmd("USER alice"))
        self.assertErr(conn.cmd("PASS"))
        conn.login("alice", ALICE_PW)

    def test_apop_without_timestamp_is_rejected(self):
        self.start()
        conn = self.srv.connect()
        if re.search(r"<[^>]*@[^>]*>", conn.greeting):
            self.skipTest("greeting carries an APOP timestamp")
        self.assertErr(conn.cmd("APOP alice 0123456789abcdef0123456789abcdef"))
        conn.login("alice", ALICE_PW)

    def test_stls_without_tls_is_rejected(self):
        self.start()
        conn = self.srv.connect()
        st, body = conn.cmd_multi("CAPA")
        if b"STLS\r\n" in body:
            self.skipTest("server offers STLS")
        self.assertErr(conn.cmd("STLS"))
        conn.login("alice", ALICE_PW)

    def test_second_user_command(self):
        # USER alice, USER bob, PASS <bob's>: whatever the server makes of the second USER,
        # a login must be for the user named by the last accepted USER, with that user's
        # password, and open that user's maildrop.
        self.world.add_user("bob", "B0b-pw", [M_SIMPLE])
        self.start()
        conn = self.srv.connect()
        self.assertOk(conn.cmd("USER alice"))
        second = conn.cmd("USER bob")
        st = conn.cmd("PASS B0b-pw")
        if second.startswith("+OK"):
            self.assertOk(st)
            self.assertEqual(self.stat(conn), (1, octets(M_SIMPLE)))
            self.srv.wait_events("login", user="bob")
        else:
            self.assertErr(second)
            self.assertErr(st)
        logins = [e.get("user") for e in self.srv.events("login")]
        self.assertEqual(logins, ["bob"] if second.startswith("+OK") else [])

    def test_password_containing_spaces(self):
        # RFC 1939 section 7 lets servers treat spaces as part of the PASS argument; real
        # users have such passwords.
        self.world.add_user("spacey", "two words  and more")
        self.start()
        conn = self.srv.connect()
        conn.login("spacey", "two words  and more")
        self.assertEqual(self.stat(conn), (0, 0))

    def test_password_schemes(self):
        users = {
            "md5user": ("pw-md5", "{MD5-CRYPT}" + openssl_passwd("-1", "pw-md5")),
            "sha256user": ("pw-256", "{SHA256-CRYPT}" + openssl_passwd("-5", "pw-256")),
            "sha512user": ("pw-512", "{SHA512-CRYPT}" + openssl_passwd("-6", "pw-512")),
            "cryptuser": ("pw-crypt", "{CRYPT}" + openssl_passwd("-6", "pw-crypt")),
        }
        try:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt as cryptmod
            bf = cryptmod.crypt("pw-bf", cryptmod.mksalt(cryptmod.METHOD_BLOWFISH, rounds=32))
            des = cryptmod.crypt("pw-des", "ab")
        except Exception:  # no crypt module or no bcrypt/DES in this libcrypt
            bf = des = None
        if bf and bf.startswith("$2"):
            users["bfuser"] = ("pw-bf", "{BLF-CRYPT}" + bf)
        if des and len(des) == 13:
            users["desuser"] = ("pw-des", "{CRYPT}" + des)
        for user, (pw, secret) in users.items():
            self.world.add_user(user, pw, [M_SIMPLE], passwd_secret=secret)
        self.start()
        for user, (pw, secret) in users.items():
            with self.subTest(user=user, scheme=secret.split("}")[0] + "}"):
                conn = self.srv.connect()
                self.assertOk(conn.cmd(f"USER {user}"))
                self.assertTrue(conn.cmd(f"PASS {pw}x").startswith("-ERR [AUTH]"))
                conn.login(user, pw)
                self.assertEqual(self.stat(conn), (1, octets(M_SIMPLE)))
                self.assertOk(conn.quit())

    def test_passwd_file_changes_apply_without_restart(self):
        self.start()
        # Added while running.
        self.world.add_user("newbie", "N3w-pw", [M_SIMPLE])
        replace_passwd_file(self.world)
        conn = self.srv.connect()
        conn.login("newbie", "N3w-pw")
        self.assertEqual(self.stat(conn), (1, octets(M_SIMPLE)))
        self.assertOk(conn.quit())
        # Password changed: the old one stops working, the new one works.
        self.world.passwd_lines = [line for line in self.world.passwd_lines
                                   if not line.startswith("newbie:")]
        self.world.add_passwd_line("newbie:{PLAIN}Ch4nged-pw::::::")
        replace_passwd_file(self.world)
        conn = self.srv.connect()
        self.assertOk(conn.cmd("USER newbie"))
        self.assertTrue(conn.cmd("PASS N3w-pw").startswith("-ERR [AUTH]"))
        conn.login("newbie", "Ch4nged-pw")
        self.assertOk(conn.quit())
        # Removed: refused, while the others still log in.
        self.world.passwd_lines = [line for line in self.world.passwd_lines
                                   if not line.startswith("newbie:")]
        replace_passwd_file(self.world)
        conn = self.srv.connect()
        self.assertOk(conn.cmd("USER newbie"))
        self.assertTrue(conn.cmd("PASS Ch4nged-pw").startswith("-ERR [AUTH]"))
        self.login()

    def test_location_variables_domain_and_local_part(self):
        root = self.world.path("vmail")
        self.world.config["mail"]["location"] = f"maildir:{root}/%d/%n/Maildir"
        bob = self.world.add_user("bob@example.org", "bobpw", [M_LONG],
                                  maildir=os.path.join(root, "example.org", "bob", "Maildir"))
        self.start()
        conn = self.login(bob)
        self.assertEqual(self.stat(conn), (1, octets(M_LONG)))
        st, body = conn.cmd_multi("RETR 1")
        self.assertOk(st)
        self.assertRetrieved(body, M_LONG)

    def test_location_override_from_passwd_file(self):
        # userdb_mail=... in the extra fields overrides [mail] location for that user.
        elsewhere = self.world.path("elsewhere", "olga", "Maildir")
        olga = self.world.add_user("olga", "olgapw", [M_LONG], maildir=elsewhere)
        self.world.passwd_lines[-1] = f"olga:{{PLAIN}}olgapw::::::userdb_mail=maildir:{elsewhere}"
        self.world.write_passwd()
        self.start()
        conn = self.login(olga)
        self.assertEqual(self.stat(conn), (1, octets(M_LONG)))

    def test_location_with_dovecot_parameters(self):
        root = self.world.mail_root
        self.world.config["mail"]["location"] = (f"maildir:{root}/%u/Maildir"
                                                 f":INDEX={root}/idx/%u:LAYOUT=fs")
        self.start()
        conn = self.login()
        self.assertEqual(self.stat(conn)[0], 5)

    def test_location_home_from_passwd_file(self):
        home = self.world.path("home", "carol")
        self.world.config["mail"]["location"] = "maildir:~/Maildir"
        carol = self.world.add_user("carol", "carolpw", [M_DOTS], home=home,
                                    maildir=os.path.join(home, "Maildir"))
        self.start()
        conn = self.login(carol)
        self.assertEqual(self.stat(conn), (1, octets(M_DOTS)))

    def test_user_name_with_path_characters_is_refused(self):
        # Even if the passwd-file lists such a name, it must never reach a path: Maildirs
        # exist where the expansion would point, so only a check on the name can refuse.
        evil = ("../evil", "x/../../evil", "a/b", "..")
        for user in evil:
            self.world.add_passwd_line(f"{user}:{{PLAIN}}pw::::::")
            target = os.path.normpath(os.path.join(self.world.mail_root, user, "Maildir"))
            if target.startswith(self.world.dir):
                for sub in ("new", "cur", "tmp"):
                    os.makedirs(os.path.join(target, sub), exist_ok=True)
        self.start()
        for user in evil:
            with self.subTest(user=user):
                conn = self.srv.connect()
                st = conn.cmd(f"USER {user}")
                if st.startswith("+OK"):
                    st = conn.cmd("PASS pw")
                self.assertErr(st)
                self.assertEqual(self.stat_or_none(conn), None)

    def stat_or_none(self, conn):
        st = conn.cmd("STAT")
        return None if st.startswith("-ERR") else st


class States(Base):
    def test_transaction_commands_rejected_in_authorization(self):
        self.start(max_bad_commands=1000)
        conn = self.srv.connect()
        for line in ("STAT", "LIST", "LIST 1", "UIDL", "UIDL 1", "RETR 1", "TOP 1 0",
                     "DELE 1", "RSET", "NOOP", "LAST"):
            with self.subTest(command=line):
                self.assertErr(conn.cmd(line))
        conn.login("alice", ALICE_PW)
        self.assertEqual(self.stat(conn)[0], 5)

    def test_authorization_commands_rejected_in_transaction(self):
        self.start(max_bad_commands=1000)
        conn = self.login()
        for line in ("USER alice", f"PASS {ALICE_PW}", "USER bob", "APOP alice 0123456789abcdef"):
            with self.subTest(command=line):
                self.assertErr(conn.cmd(line))
        self.assertEqual(self.stat(conn)[0], 5)

    def test_unknown_and_malformed_commands(self):
        self.start(max_bad_commands=1000)
        conn = self.srv.connect()
        for line in (b"XYZZY", b"", b" ", b"STATX", b"RETRX 1", b"NO\x00OP", b"\xff\xfe",
                     b"USER\x00alice"):
            with self.subTest(line=line):
                self.assertErr(conn.cmd(line))
        conn.login("alice", ALICE_PW)
        for line in (b"XYZZY", b"", b"ST AT", b"NO\x00OP", b"LIST\x001", b"\x7f"):
            with self.subTest(line=line):
                self.assertErr(conn.cmd(line))
        self.assertEqual(self.stat(conn)[0], 5)

    def test_quit_in_authorization(self):
        self.start()
        conn = self.srv.connect()
        before = self.box.files()
        self.assertOk(conn.cmd("USER alice"))
        self.assertOk(conn.quit())
        self.assertEqual(self.box.files(), before)

    def test_case_insensitive_commands(self):
        self.start()
        conn = self.srv.connect()
        st, body = conn.cmd_multi("capa")
        self.assertOk(st)
        self.assertOk(conn.cmd("user alice"))
        self.assertOk(conn.cmd(f"pAsS {ALICE_PW}"))
        num = self.numbering(conn)
        self.assertRegex(conn.cmd("sTaT"), r"^\+OK 5 ")
        st, body = conn.cmd_multi("list")
        self.assertOk(st)
        self.assertEqual(len(parse_listing(body)), 5)
        self.assertEqual(conn.cmd("Uidl 1"), f"+OK 1 {num[1].uidl}")
        st, body = conn.cmd_multi("rEtR 1")
        self.assertOk(st)
        self.assertRetrieved(body, num[1].content)
        st, body = conn.cmd_multi("Top 1 0")
        self.assertOk(st)
        self.assertSameBytes(body, dot_stuff(top_body(num[1].content, 0)))
        self.assertOk(conn.cmd("noop"))
        self.assertOk(conn.cmd("dele 1"))
        self.assertOk(conn.cmd("Rset"))
        self.assertOk(conn.cmd("quit"))
        conn.expect_closed()
        self.assertEqual(len(self.box.state()), 5)

    def test_bare_lf_line_ends_accepted(self):
        self.start()
        conn = self.srv.connect()
        conn.send(b"USER alice\nPASS " + ALICE_PW.encode() + b"\n")
        self.assertOk(conn.status())
        self.assertOk(conn.status())
        conn.send(b"STAT\n")
        self.assertRegex(conn.status(), r"^\+OK 5 \d+")


class Transaction(Base):
    def test_stat_list_uidl_exact(self):
        self.start()
        conn = self.login()
        num = self.numbering(conn)
        total = sum(octets(m.content) for m in num.values())
        self.assertEqual(self.stat(conn), (5, total))
        st, body = conn.cmd_multi("LIST")
        self.assertOk(st)
        expected = b"".join(b"%d %d\r\n" % (n, octets(num[n].content)) for n in sorted(num))
        self.assertSameBytes(body, expected, "LIST body")
        st, body = conn.cmd_multi("UIDL")
        expected = b"".join(b"%d %s\r\n" % (n, num[n].uidl.encode()) for n in sorted(num))
        self.assertSameBytes(body, expected, "UIDL body")
        for n, m in num.items():
            with self.subTest(msg=n):
                self.assertRegex(conn.cmd(f"LIST {n}"), rf"^\+OK {n} {octets(m.content)}( .*)?$")
                self.assertRegex(conn.cmd(f"UIDL {n}"), rf"^\+OK {n} {re.escape(m.uidl)}( .*)?$")

    def test_uidl_for_names_that_cannot_be_uidls(self):
        # RFC 1939 section 7: a UIDL is 1 to 70 octets in 0x21..0x7E. Maildir base names that
        # are longer or contain other octets still need valid, unique, stable UIDLs.
        names = ["1700000001.M1P1." + "x" * 84, "1700000002.M2P1.has space",
                 "1700000003.M3P1.caf\u00e9", "1700000004.M4P1.fine"]
        contents = [simple_message(f"odd {i}") for i in range(len(names))]
        nina = self.world.add_user("nina", "ninapw",
                                   [Msg(c, "new", base=n) for c, n in zip(contents, names)])
        self.start()

        def listing():
            conn = self.srv.session(nina)
            st, body = conn.cmd_multi("UIDL")
            pairs = parse_listing(body)
            by_uidl = {}
            for n, uidl in pairs:
                st, payload = conn.cmd_multi(f"RETR {n}")
                by_uidl[uidl] = payload
            self.assertOk(conn.quit())
            return by_uidl
        first = listing()
        self.assertEqual(len(first), len(names), "UIDLs must be unique")
        for uidl in first:
            self.assertRegex(uidl, r"^[\x21-\x7e]{1,70}$")
        self.assertIn("1700000004.M4P1.fine", first)
        self.assertCountEqual(first.values(), [dot_stuff(wire_body(c)) for c in contents])
        # Stable across sessions, also after QUIT moved everything from new/ to cur/.
        self.assertEqual(listing(), first)

    def test_uidl_values_are_valid_and_base_names(self):
        self.start()
        conn = self.login()
        num = self.numbering(conn)
        for m in num.values():
            self.assertRegex(m.uidl, r"^[\x21-\x7e]{1,70}$")
            self.assertNotIn(":", m.uidl)

    def test_retr_exact(self):
        self.start()
        conn = self.login()
        num = self.numbering(conn)
        for n, m in sorted(num.items()):
            with self.subTest(msg=n, content=m.content[:40]):
                conn.send(f"RETR {n}\r\n")
                st = conn.status()
                self.assertOk(st)
                payload = conn.read_body()
                self.assertSameBytes(payload + b".\r\n", retr_payload(m.content), "RETR payload")

    def test_dot_stuffing_on_the_wire(self):
        self.start()
        conn = self.login()
        n = self.msgno_of(self.numbering(conn), M_DOTS)
        st, payload = conn.cmd_multi(f"RETR {n}")
        self.assertOk(st)
        self.assertSameBytes(payload, b"From: dots@example.org\r\nSubject: dots\r\n\r\n"
                             b"..\r\n...\r\n..leading dot\r\ntrailing dot.\r\n . space dot\r\n"
                             b"....\r\nmiddle\r\n..\r\n", "stuffed payload")

    def test_message_without_final_newline(self):
        self.start()
        conn = self.login()
        n = self.msgno_of(self.numbering(conn), M_NONL)
        self.assertEqual(conn.cmd(f"LIST {n}"), f"+OK {n} {len(crlf(M_NONL))}")
        st, payload = conn.cmd_multi(f"RETR {n}")
        self.assertOk(st)
        self.assertSameBytes(payload, crlf(M_NONL) + b"\r\n", "payload of a message without LF")

    def test_top_exact(self):
        self.start()
        conn = self.login()
        num = self.numbering(conn)
        for n, m in sorted(num.items()):
            for lines in (0, 1, 3, 10, 11, 1000):
                with self.subTest(msg=n, lines=lines):
                    st, payload = conn.cmd_multi(f"TOP {n} {lines}")
                    self.assertOk(st)
                    self.assertSameBytes(payload, dot_stuff(top_body(m.content, lines)),
                                         f"TOP {n} {lines}")

    def test_top_long_message_literal(self):
        self.start()
        conn = self.login()
        n = self.msgno_of(self.numbering(conn), M_LONG)
        st, payload = conn.cmd_multi(f"TOP {n} 2")
        self.assertOk(st)
        head = M_LONG.split(b"\n\n")[0]
        self.assertSameBytes(payload, crlf(head) + b"\r\n\r\nbody line 1\r\nbody line 2\r\n")

    def test_dele_rset_and_deleted_message_rules(self):
        self.start()
        conn = self.login()
        num = self.numbering(conn)
        total = sum(octets(m.content) for m in num.values())
        self.assertOk(conn.cmd("DELE 2"))
        self.assertEqual(self.stat(conn), (4, total - octets(num[2].content)))
        st, body = conn.cmd_multi("LIST")
        self.assertEqual([n for n, _ in parse_listing(body)], [1, 3, 4, 5])
        st, body = conn.cmd_multi("UIDL")
        self.assertEqual([n for n, _ in parse_listing(body)], [1, 3, 4, 5])
        for line in ("LIST 2", "UIDL 2", "RETR 2", "TOP 2 0", "DELE 2"):
            with self.subTest(command=line):
                self.assertErr(conn.cmd(line))
        # Other messages are still reachable by their original numbers.
        st, payload = conn.cmd_multi("RETR 3")
        self.assertRetrieved(payload, num[3].content)
        self.assertOk(conn.cmd("RSET"))
        self.assertEqual(self.stat(conn), (5, total))
        self.assertRegex(conn.cmd("LIST 2"), rf"^\+OK 2 {octets(num[2].content)}")
        st, payload = conn.cmd_multi("RETR 2")
        self.assertRetrieved(payload, num[2].content)

    def test_noop(self):
        self.start()
        conn = self.login()
        self.assertOk(conn.cmd("NOOP"))
        self.assertEqual(self.stat(conn)[0], 5)

    def test_last(self):
        # LAST (RFC 1460): the highest message number accessed; RSET makes it 0.
        self.start()
        conn = self.login()
        self.assertEqual(conn.cmd("LAST"), "+OK 0")
        st, _ = conn.cmd_multi("RETR 2")
        self.assertOk(st)
        self.assertEqual(conn.cmd("LAST"), "+OK 2")
        st, _ = conn.cmd_multi("RETR 1")
        self.assertEqual(conn.cmd("LAST"), "+OK 2")
        self.assertOk(conn.cmd("RSET"))
        self.assertEqual(conn.cmd("LAST"), "+OK 0")

    def test_bad_arguments(self):
        self.start(max_bad_commands=10000)
        conn = self.login()
        num = self.numbering(conn)
        self.assertOk(conn.cmd("DELE 2"))
        bad_numbers = ["0", "-1", "+1", "99999999999999999999", "18446744073709551617",
                       "4294967297", "abc", "1abc", "1.0", "0x1", "6", "2"]
        cases = []
        for verb in ("LIST", "UIDL", "RETR", "DELE"):
            cases += [f"{verb} {a}" for a in bad_numbers]
            cases.append(f"{verb} 1 1")
        cases += ["RETR", "DELE", "TOP", "TOP 1", "TOP 1 -1", "TOP 1 +1", "TOP 1 abc",
                  "TOP 1 1 1", "TOP 1 99999999999999999999", "TOP 2 1", "TOP 6 0", "TOP 0 0",
                  "TOP -1 0", "TOP abc 0", "STAT 1", "NOOP 1", "RSET 1", "LAST 1"]
        for line in cases:
            with self.subTest(command=line):
                st = conn.cmd(line)
                self.assertErr(st)
        # Nothing changed: only message 2 is marked.
        total = sum(octets(m.content) for n, m in num.items() if n != 2)
        self.assertEqual(self.stat(conn), (4, total))
        self.assertOk(conn.quit())
        self.assertNotIn(num[2].uidl, self.box.state())
        self.assertEqual(len(self.box.state()), 4)

    def test_stored_crlf_message_is_not_doubled(self):
        data = b"From: crlf@example.org\r\nSubject: stored with CRLF\r\n\r\nline\r\n.dot\r\n"
        dave = self.world.add_user("dave", "davepw", [data])
        self.start()
        conn = self.login(dave)
        self.assertEqual(self.stat(conn), (1, len(data)))
        st, payload = conn.cmd_multi("RETR 1")
        self.assertOk(st)
        self.assertSameBytes(payload, data.replace(b"\r\n.dot", b"\r\n..dot"))

    def test_empty_message_file(self):
        erin = self.world.add_user("erin", "erinpw", [b"", M_SIMPLE])
        self.start()
        conn = self.login(erin)
        num = self.numbering(conn, erin)
        n = self.msgno_of(num, b"")
        self.assertEqual(conn.cmd(f"LIST {n}"), f"+OK {n} 0")
        st, payload = conn.cmd_multi(f"RETR {n}")
        self.assertOk(st)
        self.assertEqual(payload, b"")

    def test_empty_maildrop(self):
        self.world.add_user("frank", "frankpw")
        self.start()
        conn = self.srv.connect()
        conn.login("frank", "frankpw")
        self.assertEqual(self.stat(conn), (0, 0))
        st, body = conn.cmd_multi("LIST")
        self.assertOk(st)
        self.assertEqual(body, b"")
        st, body = conn.cmd_multi("UIDL")
        self.assertEqual(body, b"")
        self.assertErr(conn.cmd("RETR 1"))
        self.assertErr(conn.cmd("LIST 1"))
        self.assertOk(conn.quit())

    def test_large_message_exact(self):
        # 20 MB with lines that need stuffing scattered through it, so stuffing state must
        # survive every buffer boundary.
        lines = []
        size = 0
        i = 0
        while size < 20 * 1024 * 1024:
            if i % 97 == 0:
                line = b".stuffed %08d ...................................." % i
            else:
                line = b"line %08d abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRS" % i
            lines.append(line)
            size += len(line) + 1
            i += 1
        big = b"From: big@example.org\nSubject: big\n\n" + b"\n".join(lines) + b"\n"
        gina = self.world.add_user("gina", "ginapw", [Msg(big, sizes=True), M_SIMPLE])
        self.start()
        conn = self.srv.connect(timeout=scaled(120))
        conn.login("gina", "ginapw")
        num = self.numbering(conn, gina)
        n = self.msgno_of(num, big)
        self.assertEqual(conn.cmd(f"LIST {n}"), f"+OK {n} {octets(big)}")
        st, payload = conn.cmd_multi(f"RETR {n}")
        self.assertOk(st)
        self.assertRetrieved(payload, big, "20 MB message")
        st, payload = conn.cmd_multi(f"TOP {n} 5")
        self.assertSameBytes(payload, dot_stuff(top_body(big, 5)))
        # The session is still in sync.
        st, payload = conn.cmd_multi(f"RETR {3 - n}")
        self.assertRetrieved(payload, M_SIMPLE)
        self.assertOk(conn.quit())


    def test_top_edge_messages(self):
        headers_only = b"From: h@example.org\nSubject: headers only, no separator\n"
        empty_header = b"\nbody right after an empty header section\n.dot\nmore\n"
        crlf_stored = b"Subject: crlf\r\n\r\n.one\r\ntwo\r\nthree\r\n"
        blank_body = b"Subject: blank lines\n\n\n\n\nafter three blank lines\n"
        stored = [headers_only, empty_header, crlf_stored, blank_body]
        ivy = self.world.add_user("ivy", "ivypw", stored)
        self.start()
        conn = self.login(ivy)
        num = self.numbering(conn, ivy)
        for content in stored:
            n = self.msgno_of(num, content)
            for lines in (0, 1, 2, 5):
                with self.subTest(content=content[:20], lines=lines):
                    st, payload = conn.cmd_multi(f"TOP {n} {lines}")
                    self.assertOk(st)
                    self.assertSameBytes(payload, dot_stuff(top_body(content, lines)))
            st, payload = conn.cmd_multi(f"RETR {n}")
            self.assertRetrieved(payload, content)

    def dense_dots(self, newline):
        # Lines of 1..5 octets, almost all starting with '.', so that whatever buffer size
        # the server streams with, chunks end at every position of a line: just before a
        # dot, between CR and LF, right after the line end.
        lines = []
        size = 0
        i = 0
        while size < 3 * 1024 * 1024:
            line = b"." + b"abcd"[: i % 5] if i % 11 else b"x" * (i % 7)
            lines.append(line)
            size += len(line) + len(newline)
            i += 1
        return b"Subject: dense dots" + newline + newline + newline.join(lines) + newline

    def test_dense_dot_lines_across_buffer_boundaries(self):
        lf = self.dense_dots(b"\n")
        crlf_msg = self.dense_dots(b"\r\n")
        jack = self.world.add_user("jack", "jackpw", [lf, crlf_msg])
        self.start()
        conn = self.srv.connect(timeout=scaled(60))
        conn.login("jack", "jackpw")
        num = self.numbering(conn, jack)
        for content in (lf, crlf_msg):
            n = self.msgno_of(num, content)
            with self.subTest(line_ends="CRLF" if content is crlf_msg else "LF"):
                self.assertEqual(conn.cmd(f"LIST {n}"), f"+OK {n} {octets(content)}")
                st, payload = conn.cmd_multi(f"RETR {n}")
                self.assertRetrieved(payload, content)
                st, payload = conn.cmd_multi(f"TOP {n} 100000")
                self.assertSameBytes(payload, dot_stuff(top_body(content, 100000)))

    def test_very_long_lines(self):
        content = (b"Subject: long lines\n\n" + b"a" * 300000 + b"\n.b" + b"c" * 200000 +
                   b"\n." + b"\n" + b"d" * 100000)
        kate = self.world.add_user("kate", "katepw", [Msg(content, sizes=True)])
        self.start()
        conn = self.srv.connect(timeout=scaled(60))
        conn.login("kate", "katepw")
        self.assertEqual(conn.cmd("LIST 1"), f"+OK 1 {octets(content)}")
        st, payload = conn.cmd_multi("RETR 1")
        self.assertRetrieved(payload, content)
        st, payload = conn.cmd_multi("TOP 1 2")
        self.assertSameBytes(payload, dot_stuff(top_body(content, 2)))

    def test_many_messages(self):
        count = 3000
        stored = [Msg(simple_message(f"bulk {i}", [f"n={i}"] * (i % 4)),
                      "new" if i % 3 else "cur", sizes=(i % 2 == 0)) for i in range(count)]
        lena = self.world.add_user("lena", "lenapw", stored)
        self.start()
        conn = self.srv.connect(timeout=scaled(60))
        conn.login("lena", "lenapw")
        num = self.numbering(conn, lena)
        self.assertEqual(len(num), count)
        st, body = conn.cmd_multi("LIST")
        self.assertSameBytes(body, b"".join(b"%d %d\r\n" % (n, octets(num[n].content))
                                            for n in range(1, count + 1)))
        self.assertEqual(self.stat(conn), (count, sum(octets(m.content) for m in stored)))
        # Mark every other message in one pipelined write.
        conn.send(b"".join(b"DELE %d\r\n" % n for n in range(1, count + 1, 2)))
        for n in range(1, count + 1, 2):
            self.assertOk(conn.status())
        self.assertOk(conn.cmd("QUIT"))
        conn.expect_closed(max_lines=0)
        kept = {num[n].uidl: num[n].content for n in range(2, count + 1, 2)}
        self.assertEqual(lena.contents(), kept)


class Pipelining(Base):
    def test_pipelined_transaction_commands(self):
        self.start()
        conn = self.login()
        num = self.numbering(conn)
        total = sum(octets(m.content) for m in num.values())
        conn.send(b"STAT\r\nLIST\r\nRETR 2\r\nTOP 4 3\r\nLIST 99\r\nUIDL 3\r\nNOOP\r\n"
                  b"DELE 1\r\nSTAT\r\nRETR 1\r\nRSET\r\nSTAT\r\nRETR 3\r\n")
        self.assertEqual(conn.status(), f"+OK 5 {total}")
        self.assertOk(conn.status())
        self.assertSameBytes(conn.read_body(), b"".join(
            b"%d %d\r\n" % (n, octets(num[n].content)) for n in sorted(num)))
        self.assertOk(conn.status())
        self.assertRetrieved(conn.read_body(), num[2].content)
        self.assertOk(conn.status())
        self.assertSameBytes(conn.read_body(), dot_stuff(top_body(num[4].content, 3)))
        self.assertErr(conn.status())
        self.assertRegex(conn.status(), rf"^\+OK 3 {re.escape(num[3].uidl)}")
        self.assertOk(conn.status())
        self.assertOk(conn.status())
        self.assertEqual(conn.status(), f"+OK 4 {total - octets(num[1].content)}")
        self.assertErr(conn.status())
        self.assertOk(conn.status())
        self.assertEqual(conn.status(), f"+OK 5 {total}")
        self.assertOk(conn.status())
        self.assertRetrieved(conn.read_body(), num[3].content)
        self.assertEqual(conn.buf, b"", "no stray bytes after the pipelined replies")

    def test_pipelined_login(self):
        self.start()
        conn = self.srv.connect()
        conn.send(b"CAPA\r\nUSER alice\r\nPASS " + ALICE_PW.encode() + b"\r\nSTAT\r\nQUIT\r\n")
        self.assertOk(conn.status())
        conn.read_body()
        self.assertOk(conn.status())
        self.assertOk(conn.status())
        self.assertRegex(conn.status(), r"^\+OK 5 \d+")
        self.assertOk(conn.status())
        conn.expect_closed(max_lines=0)

    def test_pipelined_failed_login_then_success(self):
        self.start()
        conn = self.srv.connect()
        conn.send(b"USER alice\r\nPASS nope\r\nUSER alice\r\nPASS " + ALICE_PW.encode()
                  + b"\r\nSTAT\r\n")
        self.assertOk(conn.status())
        self.assertTrue(conn.status().startswith("-ERR [AUTH]"))
        self.assertOk(conn.status())
        self.assertOk(conn.status())
        self.assertRegex(conn.status(), r"^\+OK 5 \d+")

    def test_many_pipelined_noops(self):
        self.start()
        conn = self.login()
        conn.send(b"NOOP\r\n" * 2000 + b"STAT\r\n")
        for i in range(2000):
            st = conn.status()
            if not st.startswith("+OK"):
                self.fail(f"reply {i + 1} to pipelined NOOPs: {st!r}")
        self.assertRegex(conn.status(), r"^\+OK 5 \d+")

    def test_pipelined_retrievals_of_a_larger_message(self):
        body = [b"line %05d %s" % (i, b"x" * 60) for i in range(2000)]
        big = b"Subject: medium\n\n" + b"\n".join(body) + b"\n"
        hank = self.world.add_user("hank", "hankpw", [big])
        self.start()
        conn = self.srv.connect(timeout=scaled(60))
        conn.login("hank", "hankpw")
        conn.send(b"RETR 1\r\n" * 40 + b"NOOP\r\n")
        for i in range(40):
            self.assertOk(conn.status())
            self.assertRetrieved(conn.read_body(), big, f"retrieval {i + 1}")
        self.assertOk(conn.status())
        self.assertEqual(conn.buf, b"")


    def test_commands_after_quit_are_not_executed(self):
        self.start()
        conn = self.login()
        conn.send(b"DELE 1\r\nQUIT\r\nDELE 2\r\nNOOP\r\n")
        self.assertOk(conn.status())
        self.assertOk(conn.status())
        conn.expect_closed(max_lines=0)
        self.assertEqual(len(self.box.state()), 4)

    def test_whole_session_then_half_close_still_commits(self):
        # Like `printf 'USER..PASS..DELE 1..QUIT' | nc`: the client shuts its sending side
        # right after the last command; the server must still run every command, QUIT
        # included, before it treats the end of input as a hangup.
        self.start()
        conn = self.srv.connect()
        conn.send(f"USER alice\r\nPASS {ALICE_PW}\r\nUIDL 1\r\nDELE 1\r\nQUIT\r\n")
        conn.sock.shutdown(socket.SHUT_WR)
        self.assertOk(conn.status())
        self.assertOk(conn.status())
        uidl = conn.status()
        self.assertOk(uidl)
        self.assertOk(conn.status())
        self.assertOk(conn.status())
        conn.expect_closed(max_lines=0)
        state = self.box.state()
        self.assertEqual(len(state), 4)
        self.assertNotIn(uidl.split(" ")[2], state)
        ev = self.srv.wait_events("logout", user="alice")[0]
        self.assertEqual(ev.get("reason"), "QUIT", ev["_line"])


class Limits(Base):
    def test_overlong_line_in_authorization(self):
        self.start()
        conn = self.srv.connect()
        self.assertErr(conn.cmd(b"USER " + b"a" * 10240))
        conn.login("alice", ALICE_PW)
        self.assertEqual(self.stat(conn)[0], 5)

    def test_overlong_line_in_transaction(self):
        self.start()
        conn = self.login()
        self.assertErr(conn.cmd(b"NOOP " + b"x" * 10240))
        self.assertOk(conn.cmd("NOOP"))
        self.assertErr(conn.cmd(b"RETR 1" + b"0" * 10240))
        self.assertEqual(self.stat(conn)[0], 5)

    def test_one_mebibyte_line_then_pipelined_command(self):
        self.start()
        conn = self.login()
        conn.send(b"X" * (1 << 20) + b"\r\nSTAT\r\n")
        self.assertErr(conn.status(timeout=scaled(30)))
        self.assertRegex(conn.status(), r"^\+OK 5 \d+")

    def test_too_many_bad_commands_disconnects(self):
        limit = 5
        self.start(max_bad_commands=limit)
        # limit - 1 bad commands are tolerated.
        conn = self.srv.connect()
        for _ in range(limit - 1):
            self.assertErr(conn.cmd("XYZZY"))
        st, _ = conn.cmd_multi("CAPA")
        self.assertOk(st)
        # Unbounded bad commands end the session within limit + 1 of them.
        # Replies counted may include one farewell line ("-ERR Too many bad commands").
        conn = self.srv.connect()
        replies = 0
        closed = False
        for _ in range(limit + 4):
            try:
                conn.send(b"XYZZY\r\n")
                st = conn.status()
            except (Closed, BrokenPipeError, ConnectionResetError):
                closed = True
                break
            self.assertErr(st)
            replies += 1
        self.assertTrue(closed, f"{limit + 4} bad commands answered without a disconnect")
        self.assertLessEqual(replies, limit + 2, "server kept answering past max_bad_commands")
        self.assertGreaterEqual(replies, limit, "server disconnected before max_bad_commands")
        # The server keeps serving others.
        other = self.login()
        self.assertEqual(self.stat(other)[0], 5)

    def test_idle_timeout_in_authorization(self):
        self.start(idle_timeout="2s")
        conn = self.srv.connect(timeout=scaled(20))
        t0 = time.monotonic()
        lines = conn.expect_closed(timeout=scaled(20))
        elapsed = time.monotonic() - t0
        self.assertGreaterEqual(elapsed, 1.5, "closed before the idle timeout")
        for line in lines:
            self.assertTrue(line.startswith("-ERR"), lines)
        # The server still accepts new sessions.
        conn = self.login()
        self.assertEqual(self.stat(conn)[0], 5)

    def test_idle_timeout_in_transaction_deletes_nothing(self):
        self.start(idle_timeout="2s")
        before = self.box.contents()
        conn = self.srv.session(self.box, timeout=scaled(20))
        self.assertOk(conn.cmd("DELE 1"))
        self.assertOk(conn.cmd("DELE 2"))
        t0 = time.monotonic()
        lines = conn.expect_closed(timeout=scaled(20))
        self.assertGreaterEqual(time.monotonic() - t0, 1.5)
        for line in lines:
            self.assertTrue(line.startswith("-ERR"), lines)
        ev = self.srv.wait_events("logout", user="alice")[0]
        self.assertEqual(ev.get("reason"), "timeout", ev["_line"])
        self.assertEqual(counts(ev["del"]), (0, 0), ev["_line"])
        self.assertEqual(self.box.contents(), before)

    def test_activity_resets_idle_timer(self):
        self.start(idle_timeout="3s")
        conn = self.srv.session(self.box)
        t0 = time.monotonic()
        # Commands at 1 s intervals keep the session alive well past the 3 s timeout.
        for k in range(1, 6):
            wait_for(lambda: time.monotonic() - t0 >= k, timeout=k + 1, what="pacing")
            self.assertOk(conn.cmd("NOOP"))
        self.assertEqual(self.stat(conn)[0], 5)

    def test_partial_line_does_not_defeat_idle_timeout(self):
        self.start(idle_timeout="2s")
        conn = self.srv.connect(timeout=scaled(20))
        conn.send(b"USER al")
        t0 = time.monotonic()
        conn.expect_closed(timeout=scaled(20))
        self.assertGreaterEqual(time.monotonic() - t0, 1.5)

    def test_client_that_stops_reading_is_dropped(self):
        # A client that asks for a big message and never reads must not hold its session
        # (and maildrop lock) forever: the idle timeout covers blocked writes too.
        big = b"Subject: big\n\n" + b"".join(b"%07d %s\n" % (i, b"w" * 92)
                                             for i in range(200000))
        mona = self.world.add_user("mona", "monapw", [big, M_SIMPLE])
        before = mona.contents()
        self.start(idle_timeout="2s")
        conn = self.srv.connect()
        conn.login("mona", "monapw")
        self.assertOk(conn.cmd("DELE 2"))
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.send(b"RETR 1\r\n")
        ev = self.srv.wait_events("logout", user="mona", timeout=scaled(30))[0]
        self.assertIn(ev.get("reason"), ("timeout", "disconnected"), ev["_line"])
        self.assertEqual(counts(ev["del"]), (0, 0), ev["_line"])
        self.assertEqual(mona.contents(), before)
        other = self.srv.connect()
        other.login("mona", "monapw")
        self.assertEqual(self.stat(other)[0], 2)

    def connections_refused_beyond(self, limit):
        conns = [self.srv.connect() for _ in range(limit)]
        extra = self.srv.connect(greet=False)
        lines = extra.expect_closed(timeout=scaled(10))
        self.assertLessEqual(len(lines), 1)
        for line in lines:
            self.assertTrue(line.startswith("-ERR"), f"over-limit connection got {line!r}")
        # The admitted ones still work.
        for c in conns:
            st, _ = c.cmd_multi("CAPA")
            self.assertOk(st)
        # Once one closes, a new connection is admitted.
        conns[0].quit()

        def admitted():
            c = self.srv.connect(greet=False)
            try:
                line = c.read_line()
            except Closed:
                return None
            return c if line.startswith(b"+OK") else None
        c = wait_for(admitted, what="a new connection to be admitted")
        c.login("alice", ALICE_PW)

    def test_max_connections_per_ip(self):
        self.start(max_connections_per_ip=3)
        self.connections_refused_beyond(3)

    def test_max_connections(self):
        self.start(max_connections=2)
        self.connections_refused_beyond(2)


class Update(Base):
    def test_quit_deletes_marked_and_updates_flags(self):
        self.start()
        conn = self.login()
        num = self.numbering(conn)
        original = {m.uidl: m for m in num.values()}
        for n in (1, 3):
            self.assertOk(conn.cmd(f"DELE {n}"))
        st, payload = conn.cmd_multi("RETR 2")
        self.assertRetrieved(payload, num[2].content)
        st, payload = conn.cmd_multi("RETR 5")
        self.assertRetrieved(payload, num[5].content)
        self.assertOk(conn.cmd("QUIT"))
        conn.expect_closed(max_lines=0)
        state = self.box.state()
        self.assertEqual(set(state), {num[2].uidl, num[4].uidl, num[5].uidl})
        for uidl, (sub, flags, content) in state.items():
            m = original[uidl]
            with self.subTest(uidl=uidl):
                self.assertEqual(content, m.content)
                self.assertEqual(sub, "cur", "listed messages move to cur/ at QUIT")
                expected = set(m.flags if m.where == "cur" else "")
                if uidl in (num[2].uidl, num[5].uidl):
                    expected.add("S")
                self.assertIsNotNone(flags, f"{uidl} in cur/ without :2, info")
                self.assertEqual(flags, "".join(sorted(expected)),
                                 "flags must be kept, S added for RETR, in ASCII order")
        ev = self.srv.wait_events("logout", user="alice")[0]
        self.assertEqual(ev.get("reason"), "QUIT", ev["_line"])
        self.assertEqual(counts(ev["retr"])[0], 2, ev["_line"])
        self.assertEqual(counts(ev["top"]), (0, 0), ev["_line"])
        deleted = octets(num[1].content) + octets(num[3].content)
        self.assertEqual(counts(ev["del"]), (2, deleted), ev["_line"])
        left = sum(octets(num[n].content) for n in (2, 4, 5))
        self.assertEqual(counts(ev["left"]), (3, left), ev["_line"])
        retr_bytes = counts(ev["retr"])[1]
        low = octets(num[2].content) + octets(num[5].content)
        high = len(retr_payload(num[2].content)) + len(retr_payload(num[5].content))
        self.assertTrue(low <= retr_bytes <= high, f"retr bytes {retr_bytes} not in "
                        f"[{low}, {high}]: {ev['_line']}")
        self.assertEqual(ev.get("session"), self.srv.events("login")[0].get("session"))
        # The next session sees the survivors with the same UIDLs and sizes.
        conn = self.login()
        st, body = conn.cmd_multi("UIDL")
        self.assertCountEqual([u for _, u in parse_listing(body)],
                              [num[2].uidl, num[4].uidl, num[5].uidl])
        for n, u in parse_listing(body):
            self.assertRegex(conn.cmd(f"LIST {n}"), rf"^\+OK {n} {octets(original[u].content)}")
            st, payload = conn.cmd_multi(f"RETR {n}")
            self.assertRetrieved(payload, original[u].content)

    def test_rset_then_quit_deletes_nothing(self):
        self.start()
        before = self.box.contents()
        conn = self.login()
        for n in range(1, 6):
            self.assertOk(conn.cmd(f"DELE {n}"))
        self.assertOk(conn.cmd("RSET"))
        self.assertOk(conn.quit())
        self.assertEqual(self.box.contents(), before)

    def test_delete_all_then_quit(self):
        self.start()
        conn = self.login()
        for n in range(1, 6):
            self.assertOk(conn.cmd(f"DELE {n}"))
        self.assertEqual(self.stat(conn), (0, 0))
        self.assertOk(conn.quit())
        self.assertEqual(self.box.files(), {})
        self.assertEqual(self.box.tmp_files(), [])
        conn = self.login()
        self.assertEqual(self.stat(conn), (0, 0))

    def test_uidl_stable_across_sessions(self):
        self.start()
        # Message numbers belong to one session; each message keeps its UIDL and size.
        def listing(srv):
            conn = srv.session(self.box)
            st, uidl = conn.cmd_multi("UIDL")
            st, sizes = conn.cmd_multi("LIST")
            self.assertOk(conn.quit())
            return sorted(zip([u for _, u in parse_listing(uidl)],
                              [s for _, s in parse_listing(sizes)]))
        first = listing(self.srv)
        self.assertEqual(first, sorted((m.uidl, str(octets(m.content)))
                                       for m in self.box.messages))
        self.assertEqual(listing(self.srv), first)
        self.srv.stop()
        self.assertEqual(listing(self.world.start()), first)


def replace_passwd_file(world):
    """Rewrites the passwd-file the way admins and tools do: a new file renamed over it."""
    tmp = world.passwd_path + ".new"
    with open(tmp, "w") as f:
        f.write("".join(line + "\n" for line in world.passwd_lines))
    os.chmod(tmp, 0o600)
    os.rename(tmp, world.passwd_path)


if __name__ == "__main__":
    unittest.main()
