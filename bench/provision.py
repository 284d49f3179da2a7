#!/usr/bin/env python3
"""Writes the benchmark's mail content once, deterministically, for every server to share.

Usage: provision.py content OUTDIR [--smoke]
       provision.py maildirs ROOT PREFIX COUNT SOURCE PASSWD_FILE PASSWORD_PREFIX

"content" writes the messages:

OUTDIR/maildir/NAME/{cur,new,tmp}  Maildirs with LF line endings, messages in cur/ marked seen:
  session   10 messages of realistic sizes (message 1 is a 3.2 KB text mail); names carry
            Dovecot's ,S=<stored size>,W=<wire size> as its LDA writes them
  large     one 100 MB message (a text part and a base64 attachment)
  cycle     1,000 messages of 10 KB
  bigbox    100,000 messages, ~1.9 KB on average, no sizes in the file names
OUTDIR/mbox/NAME     the same messages as mbox files (From_ separator lines, blank line after
                     each message; no body line starts with "From ", so none needs quoting)
OUTDIR/manifest.json the message count and total RFC 1939 octets (CRLF) of each maildrop

--smoke makes everything small (1 MB large message, 50 cycle messages, 2,000 bigbox messages).
The same seed always gives the same bytes, so runs on different days compare.

"maildirs" makes COUNT users PREFIX1..PREFIXn, each with ROOT/PREFIXi/Maildir holding hard
links to the messages of the Maildir SOURCE (cheap: no data is copied), and appends their
passwd-file lines "PREFIXi:{PLAIN}PASSWORD_PREFIXi::::::" to PASSWD_FILE. The servers only
rename and unlink message files, never rewrite them, so sharing inodes is safe.
"""

import base64
import json
import os
import random
import sys

SEED = 1939
WORDS = ("the a of to and in is it that for on with as was at by be this have not are but "
         "or an they which one you had all were we when your can said there use each she do "
         "how their if will up other about out many then them these so some her would make "
         "like him into time has look two more write go see number no way could people my "
         "than first water been call who oil its now find long down day did get come made may "
         "part mail server message meeting report budget quarter review draft attached please "
         "thanks regards tomorrow schedule project invoice delivery order shipment account "
         "password login backup storage network release version update patch deploy").split()
BASE_TIME = 1700000000
MANIFEST_VERSION = 2  # compare.sh rewrites content written by another version


def text_pool(rng, lines=40000):
    """Lines of wrapped prose, 20 to 76 characters, a few starting with '.' (dot-stuffing)."""
    pool = []
    for _ in range(lines):
        width = rng.randint(20, 76)
        words = []
        length = 0
        while length < width:
            w = rng.choice(WORDS)
            words.append(w)
            length += len(w) + 1
        line = " ".join(words)[:76].rstrip()
        line = line[0].upper() + line[1:]
        roll = rng.random()
        if roll < 0.01:
            line = "..." + line  # quoted ellipsis: needs dot-stuffing on the wire
        elif roll < 0.012:
            line = "."
        elif roll < 0.08:
            line = ""
        pool.append(line)
    return pool


def headers(n, size_hint, rng, multipart=None):
    ts = BASE_TIME + n
    subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7)))
    h = [
        f"Return-Path: <sender{n % 97}@example.org>",
        f"Received: from mx{n % 3}.example.org (mx{n % 3}.example.org [192.0.2.{n % 250 + 1}])",
        f"\tby mail.example.net with ESMTPS id {n:08X}; Tue, 14 Nov 2023 22:13:20 +0000",
        f"From: Sender {n % 97} <sender{n % 97}@example.org>",
        "To: Recipient <rcpt@example.net>",
        f"Subject: {subject} #{n}",
        "Date: Tue, 14 Nov 2023 22:13:20 +0000",
        f"Message-ID: <{ts}.{n}.{size_hint}@example.org>",
        "MIME-Version: 1.0",
    ]
    if multipart:
        h.append(f'Content-Type: multipart/mixed; boundary="{multipart}"')
    else:
        h.append("Content-Type: text/plain; charset=us-ascii")
    return "\n".join(h) + "\n\n"


def text_message(n, size, rng, pool):
    """A text/plain message of about `size` bytes (LF endings)."""
    out = [headers(n, size, rng)]
    length = len(out[0])
    i = rng.randrange(len(pool))
    while length < size:
        line = pool[i % len(pool)] + "\n"
        out.append(line)
        length += len(line)
        i += 1
    return "".join(out).encode()


def large_message(n, size, rng, pool):
    """About `size` bytes: a short text part and a base64 attachment, 76-character lines."""
    boundary = f"=_bench_{n}"
    head = headers(n, size, rng, multipart=boundary)
    text = "".join(pool[i] + "\n" for i in range(40))
    part = (f"--{boundary}\nContent-Type: text/plain; charset=us-ascii\n\n{text}\n"
            f"--{boundary}\nContent-Type: application/octet-stream; name=\"data.bin\"\n"
            f"Content-Transfer-Encoding: base64\n"
            f"Content-Disposition: attachment; filename=\"data.bin\"\n\n")
    tail = f"\n--{boundary}--\n"
    room = size - len(head) - len(part) - len(tail)
    lines = max(1, room // 77)
    raw = rng.randbytes(lines * 57)  # 57 bytes -> 76 base64 characters
    b64 = base64.b64encode(raw)
    body = b"\n".join(b64[i:i + 76] for i in range(0, len(b64), 76)) + b"\n"
    msg = head.encode() + part.encode() + body + tail.encode()
    pad = size - len(msg)
    if pad > 1:  # fill the last few bytes with a comment line before the closing boundary
        msg = msg[:-len(tail)] + b"\n" + b"x" * (pad - 1) + tail.encode()
    return msg


def wire_octets(data):
    """RFC 1939 size: every LF becomes CRLF (the content has no CR)."""
    return len(data) + data.count(b"\n")


def write_maildir(root, name, messages, with_sizes):
    path = os.path.join(root, "maildir", name)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    octets = 0
    for seq, data in enumerate(messages):
        ts = BASE_TIME + seq
        base = f"{ts}.M{seq % 1000000:06d}P{4242 + seq // 1000000}.bench"
        if with_sizes:
            base += f",S={len(data)},W={wire_octets(data)}"
        fname = os.path.join(path, "cur", base + ":2,S")
        with open(fname, "wb") as f:
            f.write(data)
        os.utime(fname, (ts, ts))
        octets += wire_octets(data)
    return {"messages": len(messages), "octets": octets}


def write_mbox(root, name, messages):
    os.makedirs(os.path.join(root, "mbox"), exist_ok=True)
    path = os.path.join(root, "mbox", name)
    with open(path, "wb") as f:
        for data in messages:
            assert b"\nFrom " not in data and not data.startswith(b"From ")
            f.write(b"From sender@example.org Tue Nov 14 22:13:20 2023\n")
            f.write(data)
            f.write(b"\n")
    return os.path.getsize(path)


def make_maildirs(root, prefix, count, source, passwd_file, password_prefix):
    names = sorted(os.listdir(os.path.join(source, "cur")))
    sources = [(name, os.path.join(source, "cur", name)) for name in names]
    with open(passwd_file, "a") as passwd:
        for i in range(1, count + 1):
            user = f"{prefix}{i}"
            md = os.path.join(root, user, "Maildir")
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(md, sub), exist_ok=True)
            cur = os.path.join(md, "cur")
            for name, src in sources:  # 50,000 users for the idle-max row: no extra stat
                try:
                    os.link(src, os.path.join(cur, name))
                except FileExistsError:
                    pass
            passwd.write(f"{user}:{{PLAIN}}{password_prefix}{i}::::::\n")


def main():
    if len(sys.argv) >= 8 and sys.argv[1] == "maildirs":
        make_maildirs(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6],
                      sys.argv[7])
        return
    if len(sys.argv) < 3 or sys.argv[1] != "content":
        sys.exit(__doc__)
    root = sys.argv[2]
    smoke = "--smoke" in sys.argv[3:]
    rng = random.Random(SEED)
    pool = text_pool(rng)
    manifest = {"version": MANIFEST_VERSION, "smoke": smoke}

    session_sizes = [3200, 4100, 5600, 7900, 2400, 12000, 6500, 35000, 4800, 120000]
    session = [text_message(i, s, rng, pool) for i, s in enumerate(session_sizes)]
    manifest["session"] = write_maildir(root, "session", session, with_sizes=True)
    manifest["session"]["first_octets"] = wire_octets(session[0])

    large_size = 1_000_000 if smoke else 100_000_000
    large = [large_message(0, large_size, rng, pool)]
    manifest["large"] = write_maildir(root, "large", large, with_sizes=True)
    manifest["large"]["mbox_bytes"] = write_mbox(root, "large", large)
    del large

    cycle = [text_message(i, 10_000, rng, pool) for i in range(50 if smoke else 1000)]
    manifest["cycle"] = write_maildir(root, "cycle", cycle, with_sizes=True)
    manifest["cycle"]["mbox_bytes"] = write_mbox(root, "cycle", cycle)
    del cycle

    count = 2_000 if smoke else 100_000
    # Log-normal sizes around 1.5 KB, mean ~1.85 KB: the mbox stays below popa3d's 200 MB
    # limit on an opened mailbox (MAX_MAILBOX_OPEN_BYTES).
    sizes = [min(60_000, max(700, int(rng.lognormvariate(7.3, 0.55)))) for _ in range(count)]
    bigbox = [text_message(i, s, rng, pool) for i, s in enumerate(sizes)]
    manifest["bigbox"] = write_maildir(root, "bigbox", bigbox, with_sizes=False)
    manifest["bigbox"]["mbox_bytes"] = write_mbox(root, "bigbox", bigbox)
    assert manifest["bigbox"]["mbox_bytes"] < 200_000_000, "popa3d would refuse the mbox"

    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(json.dumps(manifest))


if __name__ == "__main__":
    main()
