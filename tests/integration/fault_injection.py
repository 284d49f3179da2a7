"""Syscall fault injection for the integration tests: libpostern_faults.so preloaded into posternd.

The library (tests/faults/fault_inject.c, built with the tests next to posternd) makes chosen
calls of the process fail, come back short or stop it, as POSTERN_FAULTS says; the grammar is
at the top of that file and in docs/reliability.md ("Fault injection"). Typical use:

    from fault_injection import FaultLog, fault_env
    log = FaultLog(world)
    srv = world.start(env=fault_env("renameat:path~/cur/:nth=2:errno=EIO", log))
    ...
    self.assertEqual(len(log.acts()), 1)        # the fault really happened

With a RulesFile instead of the rules text, one running posternd takes new rules whenever the
test sets them (counting from 0 again), so a loop over fault points needs no restart.

fault_env() preloads the ASan runtime first when posternd is the sanitizer build, and limits the
rules to posternd (not to programs it spawns). Counting the calls of a clean run
(action=count) gives the range N = 1..count of a loop over fault points.

Environment: POSTERN_FAULT_LIB overrides the library's path.
"""

import os
import re
import subprocess

from postern_harness import POSTERND, missing

FAULT_LIB = os.path.abspath(os.environ.get("POSTERN_FAULT_LIB") or
                            os.path.join(os.path.dirname(POSTERND), "libpostern_faults.so"))

_asan_runtime = {}


def asan_runtime(binary=POSTERND):
    """The ASan runtime `binary` links (a path), or None for an uninstrumented binary."""
    if binary not in _asan_runtime:
        found = None
        try:
            out = subprocess.run(["ldd", binary], capture_output=True, timeout=30).stdout
            m = re.search(rb"libasan\.so[.\d]* => (\S+)", out)
            found = m.group(1).decode() if m else None
        except (OSError, subprocess.SubprocessError):
            found = None
        _asan_runtime[binary] = found
    return _asan_runtime[binary]


def require_library():
    """Skips (or fails in CI) when the library was not built."""
    if not os.path.isfile(FAULT_LIB):
        missing(f"{FAULT_LIB} not built (target postern_faults)")


def fault_env(rules, log=None, prog="posternd", binary=POSTERND):
    """The environment that runs `binary` with `rules` (POSTERN_FAULTS text, or a RulesFile).

    log: a FaultLog (or a path) receiving a line per act or counted call; prog: limit the rules
    to processes of that executable name (None: every process that loads the library)."""
    require_library()
    preload = [FAULT_LIB]
    asan = asan_runtime(binary)
    if asan:
        preload.insert(0, asan)  # ASan wants its runtime first in the library list
    env = {"LD_PRELOAD": " ".join(preload)}
    if isinstance(rules, RulesFile):
        env["POSTERN_FAULTS_FILE"] = rules.path
    else:
        env["POSTERN_FAULTS"] = rules
    if log is not None:
        env["POSTERN_FAULTS_LOG"] = log.path if isinstance(log, FaultLog) else log
    if prog:
        env["POSTERN_FAULTS_PROG"] = prog
    return env


_LINE = re.compile(r"^fault pid=(\d+) rule=(\d+) call=(\S+) n=(\d+) action=(\S+) path=(.*)$")


class FaultLog:
    """The file the library appends to: one line per act or counted call."""

    _seq = [0]

    def __init__(self, world, name=None):
        FaultLog._seq[0] += 1
        self.path = world.path(name or f"faults{FaultLog._seq[0]}.log")
        with open(self.path, "w"):
            pass
        os.chmod(self.path, 0o666)  # posternd may write it after dropping privileges

    def entries(self):
        """[{pid, rule, call, n, action, path}] in order."""
        out = []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = _LINE.match(line.rstrip("\n"))
                if m:
                    out.append({"pid": int(m.group(1)), "rule": int(m.group(2)),
                                "call": m.group(3), "n": int(m.group(4)),
                                "action": m.group(5), "path": m.group(6)})
        return out

    def acts(self):
        return [e for e in self.entries() if e["action"] != "count"]

    def counted(self, rule=None):
        return [e for e in self.entries()
                if e["action"] == "count" and (rule is None or e["rule"] == rule)]

    def clear(self):
        with open(self.path, "w"):
            pass


class RulesFile:
    """POSTERN_FAULTS_FILE: rules a running process rereads when the file changes (its counts
    start again at 0). set() replaces the file atomically; set("") removes every rule."""

    _seq = [0]

    def __init__(self, world, rules=""):
        RulesFile._seq[0] += 1
        self.path = world.path(f"fault-rules{RulesFile._seq[0]}")
        self.set(rules)

    def set(self, rules):
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            f.write(rules)
        os.chmod(tmp, 0o644)
        os.rename(tmp, self.path)
