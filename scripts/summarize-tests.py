#!/usr/bin/env python3
"""Counts what one ctest run ran: one line of totals, then the reason of every skip.

Usage: scripts/summarize-tests.py BUILD_DIR LABEL

Reads BUILD_DIR/ctest.xml (written by `ctest --output-junit`) and the records that
tests/integration/run_file.py leaves in BUILD_DIR/it-results/. Every ctest entry counts once,
except an integration file (integration.test_*), which counts each of its Python test cases:
passed, failed (failures, errors and unexpected successes) or skipped. An integration file that
ctest saw fail while its record shows no failing case (it crashed, timed out or exited non-zero
after its tests) counts one more failure; so does one that left no record.

Prints "LABEL: P passed, F failed, S skipped" first, then one indented line per skip reason.
"""

import collections
import json
import os
import sys
import xml.etree.ElementTree as ET

IT_PREFIX = "integration."


# How ctest marks a test that skipped itself (gtest_discover_tests sets SKIP_REGULAR_EXPRESSION,
# so a GTEST_SKIP is reported this way); any other "not run" is a failure.
CTEST_SKIPS = {"SKIP_REGULAR_EXPRESSION_MATCHED", "SKIP_RETURN_CODE"}


def skip_reason(case):
    """The reason a GoogleTest case gave for skipping itself: the line after '...: Skipped'."""
    lines = (case.findtext("system-out") or "").splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.endswith(": Skipped"):
            return lines[i + 1].strip() or "no reason given"
    return "no reason given"


def ctest_entries(path):
    """[(name, 'passed' | 'failed' | 'skipped', skip reason or None)] of ctest's JUnit file."""
    entries = []
    for case in ET.parse(path).getroot().iter("testcase"):
        skip = case.find("skipped")
        reason = None
        if case.find("failure") is not None or case.find("error") is not None:
            state = "failed"
        elif skip is not None and case.get("status") == "disabled":
            state, reason = "skipped", "disabled"
        elif skip is not None and skip.get("message") in CTEST_SKIPS:
            state, reason = "skipped", skip_reason(case)
        elif case.get("status", "run") == "run":
            state = "passed"
        else:
            state = "failed"  # not run, timed out, crashed: ctest counts these as failed
        entries.append((case.get("name"), state, reason))
    return entries


def read_record(directory, module):
    try:
        with open(os.path.join(directory, module + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def summarize(build_dir):
    """(passed, failed, skipped, {(file, reason): count}, [notes])"""
    passed = failed = skipped = 0
    reasons = collections.Counter()
    notes = []
    records = os.path.join(build_dir, "it-results")
    for name, state, skip_why in ctest_entries(os.path.join(build_dir, "ctest.xml")):
        if not name.startswith(IT_PREFIX):
            passed += state == "passed"
            failed += state == "failed"
            skipped += state == "skipped"
            if skip_why is not None:
                reasons[(name, skip_why)] += 1
            continue
        module = name[len(IT_PREFIX):]
        record = read_record(records, module)
        if record is None:
            failed += 1
            notes.append(f"{name}: {state}, no record of its test cases")
            continue
        bad = record["failed"] + record["errors"]
        passed += record["passed"] + record["expected_failures"]
        failed += bad
        skipped += len(record["skipped"])
        for skip in record["skipped"]:
            reasons[(module, skip["reason"])] += 1
        if state == "failed" and bad == 0:
            failed += 1
            notes.append(f"{name}: failed after its test cases passed (exit status, timeout)")
    return passed, failed, skipped, reasons, notes


def main(argv):
    if len(argv) != 3:
        print("usage: summarize-tests.py BUILD_DIR LABEL", file=sys.stderr)
        return 2
    build_dir, label = argv[1], argv[2]
    try:
        passed, failed, skipped, reasons, notes = summarize(build_dir)
    except (OSError, ET.ParseError) as e:
        print(f"{label}: no summary ({e})")
        return 1
    print(f"{label}: {passed} passed, {failed} failed, {skipped} skipped")
    for (module, reason), n in sorted(reasons.items()):
        print(f"  skipped {n} in {module}: {reason}")
    for note in notes:
        print(f"  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
