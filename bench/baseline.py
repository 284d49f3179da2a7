#!/usr/bin/env python3
"""What the machine allows for the huge-mailbox rows, measured the way a server would work.

Usage: baseline.py MAILDIR_CUR MBOX_FILE   (prints one JSON object, milliseconds)

  read_files_ms  open, read to the end and close every file of the directory once
  list_stat_ms   list the directory and stat every file
  mbox_read_ms   read the mbox from start to end in 1 MiB pieces

Python adds a few microseconds per file, so these are upper bounds of the system calls'
own cost. compare.sh pins this to the server CPU and runs it with the page cache warm, as the
servers find it.
"""

import json
import os
import sys
import time


def timed(fn):
    t = time.perf_counter()
    fn()
    return round((time.perf_counter() - t) * 1000, 1)


def read_files(d):
    buf = bytearray(1 << 16)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with os.scandir(dfd) as it:
            for e in it:
                fd = os.open(e.name, os.O_RDONLY, dir_fd=dfd)
                try:
                    while os.readv(fd, [buf]) == len(buf):
                        pass
                finally:
                    os.close(fd)
    finally:
        os.close(dfd)


def list_stat(d):
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with os.scandir(dfd) as it:
            for e in it:
                os.stat(e.name, dir_fd=dfd)
    finally:
        os.close(dfd)


def read_file(path):
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(1 << 20)
        while f.readinto(buf):
            pass


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    d, mbox = sys.argv[1], sys.argv[2]
    print(json.dumps({"read_files_ms": timed(lambda: read_files(d)),
                      "list_stat_ms": timed(lambda: list_stat(d)),
                      "mbox_read_ms": timed(lambda: read_file(mbox))}))


if __name__ == "__main__":
    main()
