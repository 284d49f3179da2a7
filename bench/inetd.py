#!/usr/bin/env python3
"""A tiny inetd for the benchmark: serve one TCP port with one process per connection.

Usage: inetd.py ADDRESS PORT PROGRAM [ARG...]

Accepts on ADDRESS:PORT (numeric; compare.sh passes 127.0.0.1) and runs PROGRAM with the
connection as its stdin and stdout, like an inetd "nowait" service. compare.sh uses it for
popa3d, whose own daemon mode (-D) always binds port 110 on every address. Children are
reaped as they exit; SIGTERM stops accepting and exits (running sessions finish on their own).
"""

import os
import signal
import socket
import sys


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    address, port, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(4096)

    def reap(_signum, _frame):
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass

    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stdout.write(f"inetd.py: listening on {address}:{port} for {argv[0]}\n")
    sys.stdout.flush()
    while True:
        conn, _ = listener.accept()
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                listener.close()
                os.dup2(conn.fileno(), 0)
                os.dup2(conn.fileno(), 1)
                conn.close()
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        conn.close()


if __name__ == "__main__":
    main()
