#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets that log in (fuzz/corpus/sasl/, sasl_scram/,
and the seed-* files of pop3_session/): one exchange or session per file, in the input
format each target's header comment describes. Rerun after changing that format:
python3 fuzz/make_login_seeds.py"""
import base64
import hashlib
import hmac
import pathlib

root = pathlib.Path(__file__).resolve().parent / "corpus"
challenge = b"<1896.697170952@postoffice.example.net>"


def write(target, name, data):
    d = root / target
    d.mkdir(parents=True, exist_ok=True)
    (d / ("seed-" + name)).write_bytes(data)


def cram(user, pw):
    return user + b" " + hmac.new(pw, challenge, hashlib.md5).hexdigest().encode()


# sasl: option byte (bits 0-1 mechanism, 2 as-is, 3 fixed challenge, 4 no plaintext),
# then responses separated by '\n'.
PLAIN, LOGIN, CRAM, LOWER = 0, 1, 2, 3
s = {
    "plain-ok": bytes([PLAIN]) + b"\0alice\0alice-Pa55",
    "plain-authzid-same": bytes([PLAIN]) + b"alice\0alice\0alice-Pa55",
    "plain-authzid-other": bytes([PLAIN]) + b"bob\0alice\0alice-Pa55",
    "plain-wrong": bytes([PLAIN]) + b"\0alice\0alice-Pa56",
    "plain-no-initial": bytes([PLAIN]) + b"\n\0alice\0alice-Pa55\nextra",
    "plain-scram-user": bytes([PLAIN]) + b"\0carol\0carol-Pa55",
    "plain-cram-user": bytes([PLAIN]) + b"\0bob\0bob-Pa55",
    "plain-ssha-user": bytes([PLAIN]) + b"\0erin\0erin-Pa55",
    "plain-refused": bytes([PLAIN]) + b"\0frank\0frank-Pa55",
    "plain-backend-down": bytes([PLAIN]) + b"\0tim\0tim-Pa55",
    "plain-locked": bytes([PLAIN]) + b"\0locked\0*",
    "plain-bad-stored": bytes([PLAIN]) + b"\0badscram\0x",
    "plain-malformed": bytes([PLAIN]) + b"alice\0alice-Pa55",
    "plain-lower": bytes([LOWER]) + b"\0alice\0alice-Pa55",
    "plain-no-plaintext": bytes([PLAIN | 16]) + b"\0alice\0alice-Pa55",
    "plain-asis": bytes([PLAIN | 4]) + base64.b64encode(b"\0alice\0alice-Pa55"),
    "plain-asis-unpadded": bytes([PLAIN | 4]) + base64.b64encode(b"\0alice\0alice-Pa5").rstrip(b"="),
    "plain-asis-empty": bytes([PLAIN | 4]) + b"=\n=",
    "plain-asis-cancel": bytes([PLAIN | 4]) + b"\n*",
    "plain-asis-junk": bytes([PLAIN | 4]) + b"AG=a\nA===\n****",
    "login-ok": bytes([LOGIN]) + b"\nalice\nalice-Pa55",
    "login-initial": bytes([LOGIN]) + b"alice\nalice-Pa55\nmore",
    "login-wrong": bytes([LOGIN]) + b"\nalice\nwrong",
    "login-nul-user": bytes([LOGIN]) + b"\na\0b\nx",
    "login-steps": bytes([LOGIN]) + b"\n" * 12,
    "login-asis": bytes([LOGIN | 4]) + b"\n" + base64.b64encode(b"dave") + b"\n" + base64.b64encode(b"dave-Pa55"),
    "cram-ok": bytes([CRAM | 8]) + b"\n" + cram(b"alice", b"alice-Pa55"),
    "cram-stored": bytes([CRAM | 8]) + b"\n" + cram(b"bob", b"bob-Pa55"),
    "cram-upper": bytes([CRAM | 8]) + b"\n" + cram(b"bob", b"bob-Pa55").upper().replace(b"BOB ", b"bob "),
    "cram-scram-user": bytes([CRAM | 8]) + b"\n" + cram(b"carol", b"carol-Pa55"),
    "cram-bad-stored": bytes([CRAM | 8]) + b"\n" + cram(b"badcram", b"x"),
    "cram-wrong": bytes([CRAM | 8]) + b"\n" + cram(b"alice", b"alice-Pa56"),
    "cram-random": bytes([CRAM]) + b"\n" + cram(b"alice", b"alice-Pa55"),
    "cram-initial": bytes([CRAM | 8]) + b"alice\n",
    "cram-no-space": bytes([CRAM | 8]) + b"\nalice",
    "cram-no-plaintext": bytes([CRAM | 8 | 16]) + b"\n" + cram(b"tim", b"tim-Pa55"),
}
for k, v in s.items():
    write("sasl", k, v)

# sasl_scram: option byte (bits 0-1 SHA-1, SHA-1-PLUS, SHA-256, SHA-256-PLUS; 2 tls-exporter;
# 3 tls-unique; 4 raw; 5 as-is; 6 no initial response), then client mode: flags byte, fields
# name, password, nonce, authzid, extension, further responses (separated by '\n').
SHA1, SHA1P, SHA256, SHA256P = 0, 1, 2, 3
EXP, UNI, RAW, ASIS, ABSENT = 4, 8, 16, 32, 64
N, Y, PEXP, PUNI = 0, 1, 2, 3
TCB, TNONCE, TPROOF, EXT, NOESC = 4, 8, 16, 32, 64


def client(opt, flags, name, pw=b"", nonce=b"fyko+d2lbbFgONRv9qkxdawL", authzid=b"", ext=b"", more=b""):
    return bytes([opt, flags]) + b"\n".join([name, pw, nonce, authzid, ext, more])


# A name field of one byte 0x80 + i picks user i of fuzz/fuzz_users.hpp: alice 0, bob 1,
# carol 2, dave 3, erin 4, frank 5, tim 6, locked 7, nosecret 8, badscram 9, badcram 10.
t = {
    "sha256-stored": client(SHA256, N, bytes([0x80 + 2])),
    "sha1-stored": client(SHA1, N, bytes([0x80 + 3])),
    "sha256-plain": client(SHA256, N, bytes([0x80 + 0])),
    "sha1-plain": client(SHA1, N, b"alice", b"alice-Pa55"),
    "sha256-wrong-hash": client(SHA256, N, bytes([0x80 + 3])),
    "sha256-typed-password": client(SHA256, N, b"carol", b"carol-Pa55"),
    "sha256-wrong-password": client(SHA256, N, b"carol", b"carol-Pa56"),
    "sha256-unknown": client(SHA256, N, b"nobody", b"x"),
    "sha256-refused": client(SHA256, N, bytes([0x80 + 5])),
    "sha256-backend-down": client(SHA256, N, bytes([0x80 + 6])),
    "sha256-locked": client(SHA256, N, bytes([0x80 + 7])),
    "sha256-no-secret": client(SHA256, N, bytes([0x80 + 8])),
    "sha256-bad-stored": client(SHA256, N, bytes([0x80 + 9])),
    "sha256-cram-user": client(SHA256, N, bytes([0x80 + 1])),
    "sha256-authzid-same": client(SHA256, N, bytes([0x80 + 2]), authzid=b"carol"),
    "sha256-authzid-other": client(SHA256, N, bytes([0x80 + 2]), authzid=b"alice"),
    "sha256-tamper-proof": client(SHA256, TPROOF, bytes([0x80 + 2])),
    "sha256-tamper-nonce": client(SHA256, TNONCE, bytes([0x80 + 2])),
    "sha256-ext": client(SHA256, EXT, bytes([0x80 + 2]), ext=b"x=extension"),
    "sha256-mext": client(SHA256, EXT, bytes([0x80 + 2]), ext=b"m=mandatory"),
    "sha256-absent": client(SHA256 | ABSENT, N, bytes([0x80 + 2])),
    "sha256-more": client(SHA256, N, bytes([0x80 + 2]), more=b"\nextra\n*"),
    "sha256-escaped-name": client(SHA256, N, b"a,b=c", b"pw"),
    "sha256-unescaped-name": client(SHA256, NOESC, b"a,b=c", b"pw"),
    "sha256-y-downgrade": client(SHA256 | EXP, Y, bytes([0x80 + 2])),
    "sha256-y-no-plus": client(SHA256, Y, bytes([0x80 + 2])),
    "sha256-p-on-plain": client(SHA256 | EXP, PEXP, bytes([0x80 + 2])),
    "sha256plus-exporter": client(SHA256P | EXP, PEXP, bytes([0x80 + 2])),
    "sha256plus-unique": client(SHA256P | UNI, PUNI, bytes([0x80 + 2])),
    "sha256plus-both": client(SHA256P | EXP | UNI, PEXP, bytes([0x80 + 0])),
    "sha256plus-tamper-cb": client(SHA256P | EXP, PEXP | TCB, bytes([0x80 + 2])),
    "sha256plus-missing-cb": client(SHA256P | UNI, PEXP, bytes([0x80 + 2])),
    "sha256plus-n": client(SHA256P | EXP, N, bytes([0x80 + 2])),
    "sha256plus-no-channel": client(SHA256P, PEXP, bytes([0x80 + 2])),
    "sha1plus-exporter": client(SHA1P | EXP, PEXP, bytes([0x80 + 3])),
    "sha1plus-unique": client(SHA1P | UNI, PUNI, bytes([0x80 + 0])),
    "sha256-comma-nonce": client(SHA256, N, bytes([0x80 + 2]), nonce=b"ab,c"),
    "raw-sha256": bytes([SHA256 | RAW]) + b"n,,n=carol,r=abc\nc=biws,r=abcdef,p=AAAA\n",
    "raw-sha1": bytes([SHA1 | RAW]) + b"n,,n=dave,r=abc\nc=biws,r=abc,p=AAAA",
    "raw-asis": bytes([SHA256 | RAW | ASIS]) + base64.b64encode(b"n,,n=alice,r=x") + b"\n=\n*",
    "raw-junk": bytes([SHA256 | RAW]) + b"x\ny\nz",
    "raw-plus": bytes([SHA256P | EXP | RAW]) + b"p=tls-exporter,,n=carol,r=abc\nc=cD10bHMtZXhwb3J0ZXIsLFpaWlpa,r=abc,p=AAAA",
}
for k, v in t.items():
    write("sasl_scram", k, v)

# pop3_session: option byte, mode byte, count n, client bytes, n answer choices.
# Option bits: 1 no USER/PASS, 2 STLS, 4 TLS required, 8 SASL, 16 APOP, 32 XMIT, 64 XLIST,
# 128 LOGIN-DELAY/EXPIRE. Mode: bits 0-2 max bad commands - 1, bits 3-4 feeding (0 chunks,
# 1 whole, 2 byte by byte), 32 resumed for alice, 64 line observer.
# Answer choices (chunk sizes take some too, unless fed whole or byte by byte): authenticate
# 3 = real check; open 0 = ok (0x28: empty maildrop, 0x50: handoff, then ok); sasl 3 = a real
# exchange (whose further steps take a choice each, unused); retrieve 1 = served, 0 = failed;
# commit 1 = ok.
WHOLE, BYTES, RESUMED, OBS = 8, 16, 32, 64


def session(opt, mode, client, choices=b""):
    return bytes([opt, mode, len(choices)]) + client + choices


apop = hashlib.md5(b"<1.2@fuzz>alice-Pa55").hexdigest().encode()
p = {
    "user-pass-real": session(0, WHOLE | OBS, b"CAPA\r\nUSER alice\r\nPASS alice-Pa55\r\nSTAT\r\nLIST\r\nUIDL 1\r\nRETR 1\r\nTOP 3 0\r\nDELE 2\r\nQUIT\r\n", b"\x03\x00\x01\x01\x01"),
    "user-pass-wrong": session(0, BYTES | OBS, b"USER alice\r\nPASS alice-Pa56\r\nUSER tim\r\nPASS tim-Pa55\r\nQUIT\r\n", b"\x03"),
    "user-pass-handoff": session(0, WHOLE | OBS, b"USER carol\r\nPASS carol-Pa55\r\nLIST\r\nRETR 2\r\nQUIT\r\n", b"\x03\x50\x01\x01"),
    "apop-real": session(16, WHOLE | OBS, b"APOP alice " + apop + b"\r\nSTAT\r\nRSET\r\nQUIT\r\n", b"\x03\x00\x01"),
    "auth-plain-real": session(8, WHOLE | OBS, b"AUTH PLAIN " + base64.b64encode(b"\0alice\0alice-Pa55") + b"\r\nSTAT\r\nQUIT\r\n", b"\x03\x28\x01"),
    "auth-plain-continued": session(8, BYTES | OBS, b"AUTH PLAIN\r\n" + base64.b64encode(b"\0bob\0bob-Pa55") + b"\r\nQUIT\r\n", b"\x03\x03\x00"),
    "auth-login-real": session(8, WHOLE | OBS, b"AUTH LOGIN\r\n" + base64.b64encode(b"dave") + b"\r\n" + base64.b64encode(b"dave-Pa55") + b"\r\nLIST\r\nQUIT\r\n", b"\x03\x03\x03\x00\x01"),
    "auth-cram-real": session(8, WHOLE | OBS, b"AUTH CRAM-MD5\r\n" + base64.b64encode(cram(b"alice", b"alice-Pa55")) + b"\r\nQUIT\r\n", b"\x03\x03\x00"),
    "auth-scram-real": session(8, WHOLE | OBS, b"AUTH SCRAM-SHA-256 " + base64.b64encode(b"n,,n=carol,r=abcdef") + b"\r\n" + base64.b64encode(b"c=biws,r=abcdef,p=AAAA") + b"\r\nQUIT\r\n", b"\x03"),
    "auth-cancel": session(8, WHOLE | OBS, b"AUTH PLAIN\r\n*\r\nAUTH LOGIN\r\n*\r\nQUIT\r\n", b"\x03\x05"),
    "auth-scripted-final": session(8, WHOLE, b"AUTH SCRAM-SHA-256 =\r\nabc\r\n\r\nQUIT\r\n", b"\x00\x09\x00"),
    "resumed": session(0, WHOLE | RESUMED | OBS, b"STAT\r\nXTND XLIST Subject\r\nQUIT\r\n", b"\x00\x03"),
    "xmit": session(32 | 64, WHOLE, b"USER alice\r\nPASS alice-Pa55\r\nXTND XMIT\r\nSubject: x\r\n\r\n..dot\r\n.\r\nXTND XLIST X-A 1\r\nQUIT\r\n", b"\x03\x00\x01\x03"),
    "stls": session(2 | 4, OBS, b"CAPA\r\nUSER a\r\nSTLS\r\nCAPA\r\nUSER alice\r\nPASS alice-Pa55\r\nQUIT\r\n", b"\x07\x03\x00"),
    "bad-commands": session(0, 2 | BYTES | OBS, b"FOO\r\nPAS secret\r\n" + b"x" * 300 + b"\r\n\x00\r\nQUIT\r\n", b""),
}
for k, v in p.items():
    write("pop3_session", k, v)
