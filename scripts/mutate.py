#!/usr/bin/env python3
"""Mutation check: applies each deliberate bug of tests/mutants.toml, one at a time, in a
scratch copy of the tree, rebuilds, runs the tests listed for it and reports whether they
noticed (docs/reliability.md, "Mutation check").

Usage:
  scripts/mutate.py                 every mutant; exit 1 if any survived or did not build
  scripts/mutate.py --only NAME...  the named mutants only
  scripts/mutate.py --list          names and what each breaks
  scripts/mutate.py --check         the list parses and every original snippet occurs exactly
                                    once in its file (fast; the ctest case mutants.list)
Options: --scratch DIR (default build-mutation/ in the tree), --timeout SECONDS per mutant for
its tests (default 600), --no-baseline (skip running the tests once without any mutant first),
--markdown (the results table as Markdown as well).

The scratch copy holds the tracked and untracked-but-not-ignored files of the working tree
(so the check sees uncommitted tests too); the working tree itself is never written. Only
files whose content differs are copied, so the scratch build stays incremental (ccache
helps the first configure). A mutant is killed by the first failing test: the unit tests of
its `unit` filter first, then its `integration` names in order. A test run that passes the
time bound counts as killed by a hang, and is reported as such.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIST = os.path.join(ROOT, "tests", "mutants.toml")
KEYS = {"name", "what", "file", "original", "mutant", "unit", "integration"}
TARGETS = ["postern_unit_tests", "posternd"]


def load(path=LIST):
    """The mutants of `path`, checked for shape; raises ValueError naming the problem."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    mutants = data.get("mutant")
    if not isinstance(mutants, list) or not mutants:
        raise ValueError(f"{path}: no [[mutant]] tables")
    seen = set()
    for i, m in enumerate(mutants):
        where = f"{path}: mutant {i + 1} ({m.get('name', '?')})"
        if set(m) != KEYS:
            raise ValueError(f"{where}: keys must be {sorted(KEYS)}, not {sorted(m)}")
        if not re.fullmatch(r"[a-z0-9_]+", m["name"]) or m["name"] in seen:
            raise ValueError(f"{where}: the name must be unique and [a-z0-9_]+")
        seen.add(m["name"])
        if not m["original"] or m["original"] == m["mutant"]:
            raise ValueError(f"{where}: original must be non-empty and differ from mutant")
        if not isinstance(m["integration"], list) or not isinstance(m["unit"], str):
            raise ValueError(f"{where}: unit is a string, integration a list")
        if not m["unit"] and not m["integration"]:
            raise ValueError(f"{where}: names no test")
    return mutants


def check(mutants, root=ROOT):
    """Problems with the list against the tree at `root`: each original once in its file,
    each integration file present. Empty when all is well."""
    problems = []
    for m in mutants:
        path = os.path.join(root, m["file"])
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            problems.append(f"{m['name']}: {m['file']}: {e.strerror}")
            continue
        n = text.count(m["original"])
        if n != 1:
            problems.append(f"{m['name']}: the original occurs {n} times in {m['file']}")
        for t in m["integration"]:
            module = t.split(".")[0]
            if not os.path.exists(os.path.join(root, "tests", "integration", module + ".py")):
                problems.append(f"{m['name']}: no tests/integration/{module}.py")
    return problems


def tree_files():
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                         check=True, capture_output=True).stdout
    return [p for p in out.decode().split("\0") if p and os.path.isfile(os.path.join(ROOT, p))]


def sync(scratch):
    """Copies the working tree's files into `scratch` where their content differs."""
    copied = 0
    for rel in tree_files():
        src, dst = os.path.join(ROOT, rel), os.path.join(scratch, rel)
        with open(src, "rb") as f:
            data = f.read()
        try:
            with open(dst, "rb") as f:
                if f.read() == data:
                    continue
        except OSError:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as f:
            f.write(data)
        shutil.copymode(src, dst)
        copied += 1
    return copied


def build(scratch, env, log, targets=TARGETS):
    bdir = os.path.join(scratch, "build")
    if not os.path.exists(os.path.join(bdir, "build.ninja")):
        cmd = ["cmake", "-S", scratch, "-B", bdir, "-G", "Ninja",
               "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DPOSTERN_TESTS=ON"]
        if shutil.which("ccache"):
            cmd.append("-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode != 0:
            return False
    cmd = ["cmake", "--build", bdir, "-j", str(os.cpu_count() or 2), "--target", *targets]
    return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode == 0


def run_bounded(cmd, cwd, env, deadline, log):
    """(returncode or None on timeout, output)."""
    left = deadline - time.monotonic()
    if left <= 0:
        return None, ""
    # Its own process group, so that a timeout ends the servers a test started as well.
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, errors="replace",
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=left)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        log.write(out + f"\n[timed out after {left:.0f} s]\n")
        return None, ""
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    log.write(out)
    log.flush()
    return p.returncode, out


def run_tests(m, scratch, env, deadline, log):
    """The first failing test of mutant `m`'s tests: (kind, name), or None when all pass.
    Also returns the skipped integration tests seen."""
    bdir = os.path.join(scratch, "build")
    skipped = 0
    if m["unit"]:
        rc, out = run_bounded([os.path.join(bdir, "postern_unit_tests"),
                               "--gtest_filter=" + m["unit"], "--gtest_brief=1"],
                              scratch, env, deadline, log)
        if rc is None:
            return ("timeout", "unit " + m["unit"]), skipped
        if rc != 0:
            failed = re.findall(r"^\[  FAILED  \] ([\w/.]+)", out, re.M)
            return ("unit", failed[0] if failed else f"unit tests (exit {rc})"), skipped
        if not re.search(r"^\[  PASSED  \] [1-9]", out, re.M):
            return ("error", f"unit filter {m['unit']} ran no test"), skipped
    it_env = dict(env, POSTERND=os.path.join(bdir, "posternd"))
    it_dir = os.path.join(scratch, "tests", "integration")
    for name in m["integration"]:
        rc, out = run_bounded([sys.executable, "-m", "unittest", "-v", name], it_dir, it_env,
                              deadline, log)
        if rc is None:
            return ("timeout", name), skipped
        skipped += sum(int(n) for n in re.findall(r"skipped=(\d+)", out))
        if rc != 0:
            failed = re.findall(r"^(?:FAIL|ERROR): (\w+) \(([\w.]+)\)", out, re.M)
            return ("integration", failed[0][1] if failed else f"{name} (exit {rc})"), skipped
    return None, skipped


def apply(scratch, m, mutated):
    path = os.path.join(scratch, m["file"])
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if mutated:
        if text.count(m["original"]) != 1:
            raise RuntimeError(f"{m['name']}: original not found once in {m['file']}")
        text = text.replace(m["original"], m["mutant"])
    else:
        with open(os.path.join(ROOT, m["file"]), encoding="utf-8") as f:
            text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def baseline(mutants, scratch, env, timeout, log):
    """Runs every listed test once without mutants; returns the failures."""
    units = sorted({f for m in mutants for f in m["unit"].split(":") if f})
    its = []
    for m in mutants:
        its += [t for t in m["integration"] if t not in its]
    probe = {"name": "baseline", "unit": ":".join(units), "integration": its}
    return run_tests(probe, scratch, env, time.monotonic() + timeout, log)[0]


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--only", nargs="+", metavar="NAME")
    ap.add_argument("--scratch", default=os.path.join(ROOT, "build-mutation"))
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv[1:])
    try:
        mutants = load()
    except (ValueError, tomllib.TOMLDecodeError, OSError) as e:
        print(f"mutate.py: {e}", file=sys.stderr)
        return 2
    if args.list:
        for m in mutants:
            print(f"{m['name']:45} {m['file']}: {m['what']}")
        return 0
    problems = check(mutants)
    if args.check or problems:
        for p in problems:
            print(f"mutate.py: {p}", file=sys.stderr)
        if not problems:
            print(f"mutants.toml: {len(mutants)} mutants, every original found once")
        return 1 if problems else 0
    if args.only:
        unknown = set(args.only) - {m["name"] for m in mutants}
        if unknown:
            print(f"mutate.py: unknown mutant {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m["name"] in args.only]

    scratch = os.path.abspath(args.scratch)
    if os.path.realpath(scratch) == os.path.realpath(ROOT):
        print("mutate.py: the scratch copy cannot be the working tree", file=sys.stderr)
        return 2
    os.makedirs(scratch, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("CCACHE_BASEDIR", os.path.dirname(ROOT))
    log_path = os.path.join(scratch, "mutate.log")
    log = open(log_path, "w")
    print(f"scratch copy {scratch} ({sync(scratch)} files updated); log {log_path}", flush=True)
    started = time.monotonic()
    if not build(scratch, env, log):
        print("mutate.py: the unmutated tree does not build (see the log)", file=sys.stderr)
        return 2
    if not args.no_baseline:
        failure = baseline(mutants, scratch, env, 4 * args.timeout, log)
        if failure:
            print(f"mutate.py: without any mutant, {failure[1]} fails ({failure[0]}); fix that "
                  "first (see the log)", file=sys.stderr)
            return 2
        print(f"baseline: every listed test passes ({time.monotonic() - started:.0f} s)",
              flush=True)

    rows = []
    for m in mutants:
        t0 = time.monotonic()
        log.write(f"\n===== {m['name']}\n")
        try:
            apply(scratch, m, True)
            # Only what its tests run: the unit-test binary, posternd, or both.
            targets = [t for t, used in zip(TARGETS, (m["unit"], m["integration"])) if used]
            if not build(scratch, env, log, targets):
                verdict, by, skipped = "did not build", "", 0
            else:
                found, skipped = run_tests(m, scratch, env, time.monotonic() + args.timeout, log)
                if found is None:
                    verdict, by = "SURVIVED", ""
                elif found[0] == "error":
                    verdict, by = "error", found[1]
                else:
                    verdict = "killed" if found[0] != "timeout" else "killed (timeout)"
                    by = found[1]
        finally:
            apply(scratch, m, False)
        secs = time.monotonic() - t0
        note = f" ({skipped} integration tests skipped)" if skipped else ""
        print(f"{m['name']:45} {verdict:16} {secs:5.0f} s  {by}{note}", flush=True)
        rows.append((m, verdict, by, secs))
    build(scratch, env, log)  # leave the scratch build unmutated

    bad = [r for r in rows if not r[1].startswith("killed")]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} mutants killed, "
          f"{time.monotonic() - started:.0f} s in all")
    for m, verdict, _, _ in bad:
        print(f"  {verdict}: {m['name']} ({m['file']}: {m['what']})")
    if args.markdown:
        print("\n| mutant | what it breaks | result | killed by | time |\n|---|---|---|---|---|")
        for m, verdict, by, secs in rows:
            print(f"| `{m['name']}` | {m['what']} | {verdict} | {by and '`' + by + '`'} | "
                  f"{secs:.0f} s |")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
