"""The other programs of the crash trials (test_crash_trials.py), each its own process (the
test forks one per role and calls run()): a delivery agent and a mail reader working on the
same maildrop as posternd. From a shell:

  python3 crash_workers.py mbox-deliver  SPOOL LOG SEED
  python3 crash_workers.py mbox-edit     SPOOL LOG SEED
  python3 crash_workers.py maildir-deliver MAILDIR LOG SEED
  python3 crash_workers.py maildir-edit    MAILDIR LOG SEED

Each does a few operations at random moments (a bounded number per run: paced()) and then
waits for SIGTERM, which it obeys between two operations (never in the middle of one), so
that the log it leaves says exactly what it did. Every completed operation is one JSON
line in LOG, written before the locks are released:
  {"op": "deliver", "id": ID, "content": BASE64}   a new message (mbox: without From_ line)
  {"op": "edit", "id": ID, "content": BASE64}      the message's bytes changed (mbox)
  {"op": "expunge", "id": ID}                      the message was removed
  {"op": "flag", "id": ID}                         a Maildir file renamed with more flags

The mbox programs follow the conventions posternd honours (docs/mbox.md): the dotlock
SPOOL.lock made the liblockfile way (a unique file linked to the lock name, holding the pid),
then a whole-file fcntl write lock. The delivery agent breaks a dotlock whose pid is dead, as
Dovecot's LDA does: after posternd is killed holding it, it appends to the file the crash left
(the recovery must keep that mail). The mail reader, like mutt, never breaks a lock by its pid
(only by age, 500 s as Postfix), and skips its turn while posternd's journal of an interrupted
update exists (one that rewrote the torn file first would make the recovery set the journal
aside, with kept messages possibly twice: the limit docs/mbox.md states). It rewrites the file
the way mutt does: in place from the first changed message on, then truncated; it adds or
changes a Status: header (which changes the message's length) or expunges a message.

The Maildir delivery agent writes into tmp/ and links into new/ (qmail's way); the Maildir
reader renames files as an IMAP server does when it sets flags (new/ to cur/, cur/ to cur/
with more flags) and now and then expunges one.
"""

import base64
import fcntl
import json
import os
import random
import re
import signal
import socket
import sys
import time

FROM_LINE = b"From crash@example.org Tue Nov 14 22:13:20 2023\n"
MESSAGE_ID = re.compile(rb"(?mi)^Message-ID: <([^>]*)>")
STALE_AGE = 500  # seconds, Postfix's

stopping = False


def on_term(_sig, _frame):
    global stopping
    stopping = True


def message(rng, ident):
    lines = b"".join(b"line %d of message %s, %s\n" % (i, ident.encode(), b"x" * rng.randrange(60))
                     for i in range(rng.randrange(1, 60)))
    return (b"From: crash@example.org\nTo: alice@example.org\nSubject: trial " + ident.encode()
            + b"\nMessage-ID: <" + ident.encode() + b"@example.org>\n\n" + lines)


class Log:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)

    def write(self, **record):
        if "content" in record:
            record["content"] = base64.b64encode(record["content"]).decode()
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())


def holder_is_dead(lock):
    try:
        with open(lock, "rb") as f:
            pid = int(f.read().split()[0])
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, IndexError):
        pass  # gone meanwhile, being written, or alive
    return False


def take_dotlock(spool, break_dead):
    """liblockfile's lockfile_create: a unique file, link() to SPOOL.lock, judged by lstat.
    A lock older than STALE_AGE is broken; with break_dead also one whose pid is dead (Dovecot's
    rule, which posternd shares)."""
    lock = spool + ".lock"
    tmp = (f"{os.path.dirname(spool)}/.lk{os.getpid()}.{random.randrange(1 << 30)}."
           f"{socket.gethostname()}")
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        while not stopping:
            try:
                os.link(tmp, lock)
            except FileExistsError:
                pass
            try:
                if os.lstat(tmp).st_ino == os.lstat(lock).st_ino:
                    return lock
                if (time.time() - os.lstat(lock).st_mtime > STALE_AGE
                        or (break_dead and holder_is_dead(lock))):
                    os.unlink(lock)
            except FileNotFoundError:
                continue
            time.sleep(0.005)
        return None
    finally:
        os.unlink(tmp)


def locked(spool, fn, break_dead=False):
    """Runs fn(fd) under the dotlock and an fcntl write lock; False if stopped while waiting."""
    lock = take_dotlock(spool, break_dead)
    if lock is None:
        return False
    try:
        fd = os.open(spool, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if stopping:
                        return False
                    time.sleep(0.002)
            fn(fd)
        finally:
            os.close(fd)
    finally:
        os.unlink(lock)
    return True


def split_mbox(data):
    """[(offset, From_ line, content)] by docs/mbox.md's separator rule; the blank line before
    a separator (or at the end) is the mbox's."""
    out = []
    pos = 0
    starts = []
    prev_blank = True
    for line in data.splitlines(keepends=True):
        if line.startswith(b"From ") and prev_blank:
            starts.append(pos)
        prev_blank = line in (b"\n", b"\r\n")
        pos += len(line)
    for k, s in enumerate(starts):
        e = starts[k + 1] if k + 1 < len(starts) else len(data)
        chunk = data[s:e]
        nl = chunk.index(b"\n") + 1
        content = chunk[nl:]
        if content.endswith(b"\n\n"):
            content = content[:-1]
        out.append((s, chunk[:nl], content))
    return out


def ident_of(content):
    m = MESSAGE_ID.search(content)
    return m.group(1).decode().split("@")[0] if m else None


def pause(seconds):
    """Sleeps, returning early (False) on SIGTERM."""
    end = time.monotonic() + seconds
    while not stopping and time.monotonic() < end:
        time.sleep(min(0.01, max(0.0, end - time.monotonic())))
    return not stopping


def paced(rng, budget, low, high):
    """Yields `budget` times, after a random pause in [low, high) seconds each time, then waits
    for SIGTERM: a bounded amount of work per trial keeps the maildrop's size and the share of
    QUITs refused for an edit steady however slow the machine is."""
    for _ in range(budget):
        if not pause(rng.uniform(low, high)):
            return
        yield
    while not stopping:
        time.sleep(0.01)


def mbox_deliver(spool, log, rng, prefix):
    n = 0
    for _ in paced(rng, rng.randrange(1, 5), 0.02, 0.3):
        n += 1
        ident = f"{prefix}d{n}"
        content = message(rng, ident)

        def append(fd):
            os.lseek(fd, 0, os.SEEK_END)
            os.write(fd, FROM_LINE + content + b"\n")
            os.fsync(fd)
            log.write(op="deliver", id=ident, content=content)
        locked(spool, append, break_dead=True)


def mbox_edit(spool, log, rng, _prefix):
    journal = os.path.join(os.path.dirname(spool), f".{os.path.basename(spool)}.postern-journal")
    for _ in paced(rng, rng.randrange(0, 3), 0.0, 0.4):
        def rewrite(fd):
            if os.path.exists(journal):
                # posternd died in an update that its next start completes. A reader that
                # rewrites the file in between makes the recovery set the journal aside and
                # may leave kept messages twice (docs/mbox.md, the documented limit); the
                # trials check the exact outcome, so this reader waits like one that knew.
                return
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0)
            msgs = split_mbox(data)
            if not msgs:
                return
            i = rng.randrange(len(msgs))
            off, from_line, content = msgs[i]
            ident = ident_of(content)
            expunge = rng.random() < 0.15 and len(msgs) > 3
            head, sep, body = content.partition(b"\n\n")
            if b"\nStatus: RO" in head:
                head = head.replace(b"\nStatus: RO", b"\nStatus: O", 1)
            elif b"\nStatus: O" in head:
                head = head.replace(b"\nStatus: O", b"\nStatus: RO", 1)
            else:
                head += b"\nStatus: O"
            new = head + sep + body
            rest = b"".join(f + c + b"\n" for _, f, c in msgs[i + 1:])
            tail = (b"" if expunge else from_line + new + b"\n") + rest
            os.pwrite(fd, tail, off)
            os.ftruncate(fd, off + len(tail))
            os.fsync(fd)
            if expunge:
                log.write(op="expunge", id=ident)
            else:
                log.write(op="edit", id=ident, content=new)
        locked(spool, rewrite)


def maildir_deliver(root, log, rng, prefix):
    n = 0
    host = socket.gethostname()
    for _ in paced(rng, rng.randrange(1, 5), 0.02, 0.3):
        n += 1
        ident = f"{prefix}d{n}"
        content = message(rng, ident)
        base = f"{int(time.time())}.M{n}P{os.getpid()}.{host}"
        tmp = os.path.join(root, "tmp", base)
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, os.path.join(root, "new", base))
        os.unlink(tmp)
        log.write(op="deliver", id=base, content=content)


def maildir_edit(root, log, rng, _prefix):
    for _ in paced(rng, rng.randrange(5, 30), 0.002, 0.03):
        files = [(sub, n) for sub in ("new", "cur") for n in os.listdir(os.path.join(root, sub))]
        if files:
            sub, name = rng.choice(files)
            base, _, flags = name.partition(":2,")
            src = os.path.join(root, sub, name)
            if rng.random() < 0.1 and len(files) > 3:
                try:
                    os.unlink(src)
                    log.write(op="expunge", id=base)
                except FileNotFoundError:
                    pass
            else:
                flag = rng.choice("FRS")
                new = "".join(sorted(set(flags + flag)))
                try:
                    os.rename(src, os.path.join(root, "cur", f"{base}:2,{new}"))
                    log.write(op="flag", id=base)
                except FileNotFoundError:
                    pass  # renamed or removed by posternd meanwhile


ROLES = {"mbox-deliver": mbox_deliver, "mbox-edit": mbox_edit,
         "maildir-deliver": maildir_deliver, "maildir-edit": maildir_edit}


def run(role, target, log_path, seed):
    """Runs one worker until SIGTERM (in this process)."""
    global stopping
    stopping = False
    signal.signal(signal.SIGTERM, on_term)
    rng = random.Random(seed)
    log = Log(log_path)
    try:
        ROLES[role](target, log, rng, f"w{seed}")
    finally:
        log.f.close()


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
