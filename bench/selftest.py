#!/usr/bin/env python3
"""Checks that postern-bench catches servers that lie: a fake POP3 server on loopback, broken
in one way at a time, and the errors postern-bench must report for each.

Usage: selftest.py POSTERN_BENCH     (exit status 0 when every case is caught)

compare.sh --smoke runs it first, so a benchmark that stopped verifying replies fails CI
instead of quietly reporting fast numbers for wrong answers.
"""

import json
import socket
import socketserver
import subprocess
import sys
import threading

MESSAGE = (b"From: a@example.org\r\nSubject: self-test\r\n\r\nline one\r\n"
           b".a line that starts with a dot\r\nlast line\r\n")


def stuffed(body):
    lines = body.split(b"\r\n")
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines)


# mode -> the fault postern-bench must count (None: must be clean)
CASES = {
    "good": None,
    "octets": "octet_mismatch",      # "+OK n octets" disagrees with the body
    "bare_lf": "bare_lf",            # a body line ends in LF alone
    "unstuffed": "octet_mismatch",   # a line starting with "." sent without stuffing
    "uidl_repeat": "bad_uidl",       # two messages with one unique-id
    "uidl_count": "count_mismatch",  # UIDL lists fewer messages than STAT
    "after_quit": "data_after_quit",  # bytes after the QUIT reply
    "bad_status": "protocol",        # a status line that is neither +OK nor -ERR
    "auth": "auth",                  # PASS refused
    # retr --pipeline: replies read in order while several RETRs are outstanding
    "pipe_good": None,
    "pipe_octets": "octet_mismatch",  # the third reply of a pipelined run claims 7 octets more
}
# Cases run as `retr --cycle --pipeline 4` against a server that advertises PIPELINING, with the
# depth the run must report (a server without PIPELINING must be fetched from one at a time).
PIPELINED = {"pipe_good": 4, "pipe_octets": 4, "pipe_refused": 1}
CASES["pipe_refused"] = None  # no PIPELINING in CAPA: depth 1, still clean


class Handler(socketserver.StreamRequestHandler):
    def send(self, data):
        self.wfile.write(data)
        self.wfile.flush()

    def handle(self):
        mode = self.server.mode
        self.send(b"+OK fake ready\r\n")
        retrs = 0
        for raw in self.rfile:
            cmd = raw.strip().split(b" ")[0].upper()
            if cmd == b"USER":
                self.send(b"+OK\r\n")
            elif cmd == b"PASS":
                self.send(b"-ERR [AUTH] no\r\n" if mode == "auth" else b"+OK\r\n")
            elif cmd == b"CAPA":
                self.send(b"+OK\r\nUSER\r\nUIDL\r\n"
                          + (b"PIPELINING\r\n" if mode.startswith("pipe_") and mode != "pipe_refused" else b"")
                          + b".\r\n")
            elif cmd == b"LIST":
                self.send(b"+OK\r\n1 %d\r\n2 %d\r\n.\r\n" % (len(MESSAGE), len(MESSAGE)))
            elif cmd == b"STAT":
                self.send(b"+OK 2 %d\r\n" % (2 * len(MESSAGE)))
            elif cmd == b"UIDL":
                second = b"uid-1" if mode == "uidl_repeat" else b"uid-2"
                listing = b"1 uid-1\r\n" + (b"" if mode == "uidl_count" else b"2 " + second + b"\r\n")
                self.send(b"+OK\r\n" + listing + b".\r\n")
            elif cmd == b"RETR":
                retrs += 1
                size = len(MESSAGE) + (7 if mode == "octets" or (mode == "pipe_octets" and retrs == 3) else 0)
                body = stuffed(MESSAGE)
                if mode == "bare_lf":
                    body = body.replace(b"line one\r\n", b"line one\n")
                if mode == "unstuffed":
                    body = MESSAGE
                self.send(b"+OK %d octets\r\n" % size + body + b".\r\n")
            elif cmd == b"QUIT":
                if mode == "bad_status":
                    self.send(b"OK bye\r\n")
                else:
                    self.send(b"+OK bye\r\n" + (b"junk\r\n" if mode == "after_quit" else b""))
                return
            else:
                self.send(b"-ERR unknown\r\n")


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    bench = sys.argv[1]
    failures = 0
    for mode, expected in CASES.items():
        server = Server(("127.0.0.1", 0), Handler)
        server.mode = mode
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        if mode in PIPELINED:
            args = ["retr", "--cycle", "--pipeline", "4", "--count", "12"]
        else:
            args = ["session", "--count", "2"]
        proc = subprocess.run(
            [bench] + args + ["--port", str(port), "--clients", "1", "--warmup", "0",
                              "--timeout", "5", "--output", "json"],
            capture_output=True, text=True, timeout=60)
        server.shutdown()
        server.server_close()
        try:
            result = json.loads(proc.stdout)
            errors = result["errors"]
        except (ValueError, KeyError):
            print(f"FAIL {mode}: no JSON from postern-bench (exit {proc.returncode}): "
                  f"{proc.stderr.strip()[:200]}")
            failures += 1
            continue
        if expected is None:
            ok = errors["total"] == 0 and proc.returncode == 0
        else:
            ok = errors.get(expected, 0) > 0 and proc.returncode == 1
        if mode in PIPELINED and result.get("pipeline_depth") != PIPELINED[mode]:
            print(f"FAIL {mode}: pipeline depth {result.get('pipeline_depth')}, "
                  f"expected {PIPELINED[mode]}")
            ok = False
        print(f"{'ok  ' if ok else 'FAIL'} {mode}: expected {expected or 'no error'}, "
              f"got {errors} (exit {proc.returncode})")
        failures += 0 if ok else 1
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
