"""The Maildir store's trust rules (docs/storage.md), checked through the real posternd with
Python's poplib.

1. Sizes: a message rewritten in place, or removed and re-created under the same name, is
   never sent with a byte count other than the one LIST gave: the session that sees the
   change answers -ERR for that message (no [SYS/TEMP]: retrying cannot help), the index is
   corrected, and the next session lists and sends the truth.
2. A message without a final newline is listed with the octets RETR really sends (the CRLF
   added before the terminator included).
3. No symlink below the location's root is followed: a Maildir, cur/ or a message file that
   is a symlink is refused, and nothing it points at is read, renamed or removed.
4. A file owned by another uid is neither served nor removed.
5. A message removed by another program during the session answers a permanent -ERR.
"""

import os
import poplib
import shutil
import unittest

from postern_harness import requires
from postern_harness import (DEFAULT_TIMEOUT, Msg, PosternTestCase, octets, simple_message,
                             wire_body)

PASSWORD = "Tru5t-pw"


def tree_snapshot(root):
    """{relative path: (content or link target, inode, size, mtime_ns, ctime_ns)}."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if os.path.islink(p):
                what = ("link", os.readlink(p))
            elif os.path.isdir(p):
                what = ("dir",)
            else:
                with open(p, "rb") as f:
                    what = ("file", f.read())
            out[os.path.relpath(p, root)] = (what, st.st_ino, st.st_size, st.st_mtime_ns,
                                             st.st_ctime_ns)
    return out


class Base(PosternTestCase):
    def start(self, messages):
        self.box = self.world.add_user("alice", PASSWORD, messages)
        self.srv = self.world.start()

    def client(self, expect_login=True):
        p = poplib.POP3("127.0.0.1", self.srv.port, timeout=DEFAULT_TIMEOUT)
        self.addCleanup(p.close)
        self.assertTrue(p.getwelcome().startswith(b"+OK"))
        p.user("alice")
        if expect_login:
            p.pass_(PASSWORD)
        return p

    def login_error(self):
        p = self.client(expect_login=False)
        with self.assertRaises(poplib.error_proto) as cm:
            p.pass_(PASSWORD)
        return cm.exception.args[0].decode()

    @staticmethod
    def sizes(p):
        _, lines, _ = p.list()
        return {int(n): int(s) for n, s in (line.decode().split() for line in lines)}

    def retr(self, p, n):
        """(announced octets, received octets after unstuffing, body bytes)."""
        resp, lines, received = p.retr(n)
        announced = int(resp.decode().split()[1])
        return announced, received, b"".join(line + b"\r\n" for line in lines)

    def path_of(self, msg):
        return os.path.join(self.box.path, msg.where, msg.filename)


class Sizes(Base):
    def test_message_rewritten_in_place(self):
        a = Msg(simple_message("a", ["x" * 260]), "cur", flags="S")
        b = Msg(simple_message("b", ["b"]), "cur", flags="S")
        self.start([a, b])
        p = self.client()
        self.assertEqual(self.sizes(p)[1], octets(a.content))
        p.quit()  # the index now records a

        path = self.path_of(a)
        ino = os.stat(path).st_ino
        longer = simple_message("a", ["y" * 300, "z" * 280])
        with open(path, "r+b") as f:  # in place: same name, same inode
            f.write(longer)
            f.truncate()
        self.assertEqual(os.stat(path).st_ino, ino)

        p = self.client()
        listed = self.sizes(p)[1]
        if listed == octets(longer):
            # The session saw the change at login: then RETR sends exactly that.
            announced, received, body = self.retr(p, 1)
            self.assertEqual((announced, received), (listed, listed))
        else:
            # It listed the old size: RETR refuses rather than send another byte count.
            self.assertEqual(listed, octets(a.content))
            with self.assertRaises(poplib.error_proto) as cm:
                p.retr(1)
            text = cm.exception.args[0].decode()
            self.assertNotIn("[SYS/TEMP]", text)
            self.assertIn("changed", text)
            self.srv.wait_log(r"changed since it was indexed")
            self.assertIn(a.base, self.srv.log())
        announced, received, _ = self.retr(p, 2)
        self.assertEqual(announced, received)
        p.quit()

        # The next session is right.
        p = self.client()
        self.assertEqual(self.sizes(p)[1], octets(longer))
        announced, received, body = self.retr(p, 1)
        self.assertEqual((announced, received), (octets(longer), octets(longer)))
        self.assertEqual(body, wire_body(longer))
        p.quit()

    def test_message_removed_and_recreated_under_the_same_name(self):
        msgs = [Msg(simple_message(f"m{i}", ["m" * 100]), "cur", flags="S") for i in range(3)]
        self.start(msgs)
        p = self.client()
        self.sizes(p)
        p.quit()

        target = msgs[1]
        path = self.path_of(target)
        bigger = simple_message("m1 again", ["n" * 400, "o" * 50])
        os.unlink(path)
        with open(path, "wb") as f:  # ext4 and tmpfs often give it the freed inode
            f.write(bigger)

        # However the file system numbered it, no session sends a byte count other than
        # the one LIST gave, and the session after the one that saw it lists the truth.
        for session in range(2):
            p = self.client()
            listed = self.sizes(p)
            try:
                announced, received, body = self.retr(p, 2)
                self.assertEqual((announced, received), (listed[2], listed[2]))
                self.assertEqual(body, wire_body(bigger))
            except poplib.error_proto as e:
                self.assertEqual(session, 0, "only the first session may refuse it")
                self.assertNotIn("[SYS/TEMP]", e.args[0].decode())
            p.quit()
        self.assertEqual(listed[2], octets(bigger))

    def test_message_without_a_final_newline(self):
        content = b"Subject: short\r\n\r\nno last newline"
        self.assertEqual(len(content), 33)
        with_cr = b"Subject: cr\n\nends in a CR\r"
        self.start([Msg(content, "cur", flags="S"), Msg(with_cr, "new")])
        for _ in range(2):  # sized by reading, then from the index
            p = self.client()
            listed = self.sizes(p)
            self.assertEqual(listed[1], 35)
            for n in (1, 2):
                announced, received, _ = self.retr(p, n)
                self.assertEqual((listed[n], announced), (received, received))
            p.quit()


class Symlinks(Base):
    def scratch(self):
        """A scratch directory outside the Maildir, shaped like a Maildir's subdirectory."""
        d = self.world.path("scratch")
        os.makedirs(d)
        for i in range(3):
            with open(os.path.join(d, f"17000000{i}.secret:2,"), "wb") as f:
                f.write(b"Subject: secret\n\nnot mail\n")
        return d

    def test_symlinked_cur_is_refused(self):
        self.start([Msg(simple_message("a"), "new")])
        scratch = self.scratch()
        before = tree_snapshot(scratch)
        cur = os.path.join(self.box.path, "cur")
        os.rmdir(cur)
        os.symlink(scratch, cur)
        text = self.login_error()
        self.assertNotIn("[IN-USE]", text)
        self.srv.wait_log(r"symbolic link")
        self.assertEqual(tree_snapshot(scratch), before)

    def test_symlinked_maildir_is_refused(self):
        self.start([])
        scratch = self.world.path("elsewhere")
        os.makedirs(os.path.join(scratch, "tmp"))
        os.makedirs(os.path.join(scratch, "new"))
        os.symlink(self.scratch(), os.path.join(scratch, "cur"))
        with open(os.path.join(scratch, "new", "1700000000.x.test"), "wb") as f:
            f.write(b"Subject: x\n\nx\n")
        before = tree_snapshot(scratch)
        shutil.rmtree(self.box.path)
        os.symlink(scratch, self.box.path)
        self.login_error()
        self.srv.wait_log(r"symbolic link")
        self.assertEqual(tree_snapshot(scratch), before)

    def test_symlinked_message_files(self):
        keep = Msg(simple_message("kept"), "new")
        swapped = Msg(simple_message("swapped"), "new")
        self.start([keep, swapped])
        scratch = self.scratch()
        secret = os.path.join(scratch, os.listdir(scratch)[0])
        planted = os.path.join(self.box.path, "new", "1690000000.planted.test")
        os.symlink(secret, planted)  # never listed
        p = self.client()
        self.assertEqual(len(self.sizes(p)), 2)
        os.unlink(self.path_of(swapped))  # swapped for a symlink after LIST
        os.symlink(secret, self.path_of(swapped))
        before = tree_snapshot(scratch)
        with self.assertRaises(poplib.error_proto) as cm:
            p.retr(2)
        self.assertIn("[SYS/PERM]", cm.exception.args[0].decode())
        p.retr(1)
        p.dele(2)
        with self.assertRaises(poplib.error_proto):
            p.quit()  # the symlink is not removed: not every deletion was done
        self.assertTrue(os.path.islink(planted))
        self.assertTrue(os.path.islink(self.path_of(swapped)))
        self.assertEqual(tree_snapshot(scratch), before)
        self.assertTrue(os.path.exists(os.path.join(self.box.path, "cur", keep.base + ":2,S")))


class Owners(Base):
    @requires(os.geteuid() == 0, "needs root to give a file away")
    def test_file_owned_by_another_uid(self):
        mine = Msg(simple_message("mine"), "new")
        theirs = Msg(simple_message("theirs"), "new")
        self.start([mine, theirs])
        with self.world.as_root():  # the test runs as the mail owner: giving away needs root
            os.chown(self.path_of(theirs), 65534, 65534)
        p = self.client()
        with self.assertRaises(poplib.error_proto) as cm:
            p.retr(2)
        self.assertIn("[SYS/PERM]", cm.exception.args[0].decode())
        self.srv.wait_log(r"owned by uid 65534")
        p.dele(2)
        with self.assertRaises(poplib.error_proto):
            p.quit()
        self.assertTrue(os.path.exists(self.path_of(theirs)))


class Unreadable(Base):
    def test_one_unreadable_file_does_not_block_the_login(self):
        # The server runs as the mail owner (the harness's test user in root runs, this user
        # otherwise), never as root: a file of mode 0 is unreadable to it.
        if os.geteuid() == 0:
            self.skipTest("no unprivileged mail owner: root reads every file")
        unreadable = Msg(simple_message("unreadable", ["u" * 50]), "cur", flags="S")
        fine = Msg(simple_message("fine"), "new")
        self.box = self.world.add_user("alice", PASSWORD, [unreadable, fine])
        os.chmod(self.path_of(unreadable), 0)
        self.srv = self.world.start()
        p = self.client()
        listed = self.sizes(p)
        self.assertEqual(len(listed), 2)
        self.srv.wait_log(r"cannot read .*" + unreadable.base)
        with self.assertRaises(poplib.error_proto):
            p.retr(1)
        announced, received, body = self.retr(p, 2)
        self.assertEqual((announced, received), (listed[2], listed[2]))
        p.quit()


class Vanished(Base):
    def test_message_deleted_by_another_program(self):
        gone = Msg(simple_message("gone"), "cur", flags="S")
        self.start([gone, Msg(simple_message("stays"), "cur", flags="S")])
        p = self.client()
        self.sizes(p)
        os.unlink(self.path_of(gone))
        with self.assertRaises(poplib.error_proto) as cm:
            p.retr(1)
        text = cm.exception.args[0].decode()
        self.assertNotIn("[SYS/", text)
        self.assertIn("deleted by another program", text)
        p.retr(2)
        p.quit()


if __name__ == "__main__":
    unittest.main()
