"""mbox message identity (docs/mbox.md, "Identity and verification") through the real posternd
with poplib: issue 10's defects 1 and 2, and X-UIDL trust off by default.

1. Mailing-list posts share their From_ line (one sender, one second) and their footer. A
   session lists five; mutt deletes message 3 in place (same inode, truncated and rewritten);
   another post arrives. Message 4's From_ line is then where message 5's is. RETR 4 must
   answer -ERR (not message 5's text) and QUIT must delete nothing; the next login lists the
   file as it is.
2. The "file only grew" path of the index: a same-length change (X-Status flags that mutt
   moved from one message to the next, or two messages swapped) followed by a delivery must
   give the right listing at the next login, and DELE + QUIT must work then and later.
"""

import os
import poplib
import re

from postern_harness import DEFAULT_TIMEOUT, PosternTestCase, wire_body

USER = "alice"
PASSWORD = "Mb0x-pw"
LIST_FROM = b"From list-bounces@lists.example.org Tue Nov 14 22:13:20 2023\n"
FOOTER = (b"-- \nlist mailing list\nlist@lists.example.org\n"
          b"https://lists.example.org/mailman/listinfo/list\n")


def post(n, x_status=b"", extra=b""):
    """A list post, stored: every post of one call pattern has the same length."""
    return (LIST_FROM
            + b"From: Poster <poster@example.org>\nTo: list@lists.example.org\n"
            + b"Subject: [list] post %d\nMessage-ID: <post%d@example.org>\n" % (n, n)
            + b"Status: RO\nX-Status: " + x_status + b"\n" + extra
            + b"\nText of post %d.\n" % n + FOOTER + b"\n")


def content(stored):
    """The message a client receives for a stored entry (no From_ line, no mbox blank line)."""
    body = stored[stored.index(b"\n") + 1:]
    assert body.endswith(b"\n\n")
    return body[:-1]


def wire_size(stored):
    return len(wire_body(content(stored)))


class MboxIdentity(PosternTestCase):
    def setUp(self):
        super().setUp()
        self.spool_dir = self.world.path("spool")
        os.makedirs(self.spool_dir, exist_ok=True)
        self.spool = os.path.join(self.spool_dir, USER)
        self.index = os.path.join(self.spool_dir, f".{USER}.postern-index")
        self.world.config["mail"] = {"location": f"mbox:{self.spool_dir}/%u",
                                     "mbox_lock_timeout": "5s"}
        self.world.add_passwd_line(f"{USER}:{{PLAIN}}{PASSWORD}::::::")

    def write_spool(self, data):
        with open(self.spool, "wb") as f:
            f.write(data)

    def read_spool(self):
        with open(self.spool, "rb") as f:
            return f.read()

    def rewrite_in_place(self, data):
        """As mutt does: the same inode, rewritten from the start and truncated."""
        with open(self.spool, "r+b") as f:
            f.write(data)
            f.truncate()

    def deliver(self, data):
        with open(self.spool, "ab") as f:
            f.write(data)

    def login(self, srv):
        p = poplib.POP3("127.0.0.1", srv.port, timeout=DEFAULT_TIMEOUT)
        p.user(USER)
        p.pass_(PASSWORD)
        return p

    @staticmethod
    def listing(p):
        sizes = [int(line.split()[1]) for line in p.list()[1]]
        uidls = [line.split()[1].decode() for line in p.uidl()[1]]
        return sizes, uidls

    @staticmethod
    def retr(p, n):
        return b"\r\n".join(p.retr(n)[1]) + b"\r\n"

    def assertServes(self, p, stored):
        """The listing and every message are those of `stored` (a list of entries)."""
        sizes, uidls = self.listing(p)
        self.assertEqual(sizes, [wire_size(s) for s in stored])
        self.assertEqual(len(set(uidls)), len(stored), uidls)
        for i, s in enumerate(stored):
            self.assertEqual(self.retr(p, i + 1), wire_body(content(s)), f"RETR {i + 1}")
        return uidls

    def reference_uidls(self, srv):
        """The UIDLs of a full scan: the index removed first."""
        os.unlink(self.index)
        p = self.login(srv)
        uidls = self.listing(p)[1]
        p.quit()
        return uidls

    # -----------------------------------------------------------------------------------------
    # Defect 1

    def defect_1(self, retr_first):
        posts = [post(n) for n in range(1, 7)]
        self.assertEqual(len({len(p) for p in posts}), 1)  # equal lengths, like the defect
        self.write_spool(b"".join(posts[:5]))
        srv = self.world.start()
        p = self.login(srv)
        sizes, uidls = self.listing(p)
        self.assertEqual(len(sizes), 5)
        # mutt deletes message 3 in place; post 6 arrives.
        after = posts[0] + posts[1] + posts[3] + posts[4]
        self.rewrite_in_place(after)
        self.deliver(posts[5])
        if retr_first:
            with self.assertRaises(poplib.error_proto) as cm:
                self.retr(p, 4)
            self.assertRegex(cm.exception.args[0], rb"^-ERR \[SYS/TEMP\]")
        p.dele(4)
        with self.assertRaises(poplib.error_proto) as cm:
            p.quit()
        p.close()
        self.assertRegex(cm.exception.args[0], rb"^-ERR \[SYS/TEMP\]")
        self.assertEqual(self.read_spool(), after + posts[5], "QUIT must delete nothing")
        srv.wait_log(r"differs from the listing")
        self.assertFalse(os.path.exists(self.index), "the index must be removed")
        # The next login lists the file as it is; deleting works again.
        p = self.login(srv)
        now = [posts[0], posts[1], posts[3], posts[4], posts[5]]
        got = self.assertServes(p, now)
        self.assertEqual(got[:2], uidls[:2])
        self.assertEqual(got[2:4], uidls[3:5])
        p.dele(3)
        self.assertRegex(p.quit(), rb"^\+OK")
        self.assertEqual(self.read_spool(), posts[0] + posts[1] + posts[4] + posts[5])

    def test_defect_1_retr_then_dele_of_a_shifted_message(self):
        self.defect_1(retr_first=True)

    def test_defect_1_dele_of_a_shifted_message_without_retr(self):
        self.defect_1(retr_first=False)

    # -----------------------------------------------------------------------------------------
    # Defect 2

    def defect_2(self, before, after):
        """`before` and `after` (lists of entries) have the same total length."""
        self.assertEqual(len(b"".join(before)), len(b"".join(after)))
        self.write_spool(b"".join(before))
        srv = self.world.start()
        p = self.login(srv)
        self.assertServes(p, before)
        p.quit()
        self.assertTrue(os.path.exists(self.index))
        self.rewrite_in_place(b"".join(after))
        late = post(9)
        self.deliver(late)
        now = after + [late]
        p = self.login(srv)
        uidls = self.assertServes(p, now)
        p.quit()
        self.assertEqual(uidls, self.reference_uidls(srv))
        # DELE + QUIT works, at this login and at the later ones.
        for _ in range(2):
            p = self.login(srv)
            self.assertServes(p, now)
            p.dele(1)
            self.assertRegex(p.quit(), rb"^\+OK")
            now = now[1:]
            self.assertEqual(self.read_spool(), b"".join(now))
        p = self.login(srv)
        self.assertServes(p, now)
        p.quit()

    def test_defect_2_x_status_flags_moved_between_messages(self):
        # mutt sets a flag on message 2 and clears one on message 3: the file keeps its
        # length and its first and last From_ lines, messages 2 and 3 change size.
        before = [post(1), post(2, b"A"), post(3, b"AF"), post(4)]
        after = [post(1), post(2, b"AF"), post(3, b"A"), post(4)]
        self.defect_2(before, after)

    def test_defect_2_two_messages_swapped(self):
        before = [post(1), post(2, extra=b"X-Extra: a longer message\n"), post(3), post(4)]
        self.defect_2(before, [before[0], before[2], before[1], before[3]])

    def test_defect_2_same_length_edit_inside_a_message(self):
        # One message's body corrected in place, same length: its UIDL changes.
        before = [post(1), post(2), post(3)]
        edited = before[1].replace(b"Text of post 2.", b"Text of POST 2.")
        self.defect_2(before, [before[0], edited, before[2]])

    # -----------------------------------------------------------------------------------------
    # X-UIDL

    def test_x_uidl_is_ignored_unless_turned_on(self):
        forged = post(1, extra=b"X-UIDL: someone-elses-uidl\n")
        self.write_spool(forged + post(2))
        srv = self.world.start()
        p = self.login(srv)
        uidls = self.listing(p)[1]
        p.quit()
        self.assertNotIn("someone-elses-uidl", uidls)
        self.assertTrue(all(re.fullmatch(r"[0-9a-f]{40}", u) for u in uidls), uidls)
        srv.stop()
        self.world.config["mail"]["mbox_x_uidl"] = True
        srv = self.world.start()
        p = self.login(srv)
        self.assertEqual(self.listing(p)[1][0], "someone-elses-uidl")
        p.quit()
