#!/usr/bin/env python3
"""Runs one integration test file and records what ran.

Usage: run_file.py MODULE

Runs the tests of MODULE (test_protocol, ...) with the output of `python3 -m unittest -v MODULE`
and, when POSTERN_IT_RESULTS names a directory, writes POSTERN_IT_RESULTS/MODULE.json:

  {"file": MODULE, "run": N, "passed": N, "failed": N, "errors": N,
   "skipped": [{"test": ID, "reason": TEXT}, ...],
   "expected_failures": N, "unexpected_successes": N}

A skipped test is counted as skipped, never as passed. scripts/summarize-tests.py adds these
records to the ctest results. The exit status is 0 only when no test failed or errored.
"""

import json
import os
import sys
import unittest


class CountingResult(unittest.TextTestResult):
    """The verbose text result, plus the reason of every skip kept for the record."""

    def record(self, module):
        failed = len(self.failures) + len(self.unexpectedSuccesses)
        errors = len(self.errors)
        skipped = [{"test": test.id(), "reason": reason} for test, reason in self.skipped]
        passed = self.testsRun - failed - errors - len(skipped) - len(self.expectedFailures)
        return {
            "file": module,
            "run": self.testsRun,
            "passed": passed,
            "failed": failed,
            "errors": errors,
            "skipped": skipped,
            "expected_failures": len(self.expectedFailures),
            "unexpected_successes": len(self.unexpectedSuccesses),
        }


def write_record(directory, record):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, record["file"] + ".json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def main(argv):
    if len(argv) != 2:
        print("usage: run_file.py MODULE", file=sys.stderr)
        return 2
    module = argv[1]
    sys.path.insert(0, os.getcwd())  # as `python3 -m unittest` does
    suite = unittest.defaultTestLoader.loadTestsFromName(module)
    runner = unittest.TextTestRunner(verbosity=2, resultclass=CountingResult)
    result = runner.run(suite)
    record = result.record(module)
    directory = os.environ.get("POSTERN_IT_RESULTS", "")
    if directory:
        write_record(directory, record)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
