#!/usr/bin/env bash
# Builds Postern and runs every test: unit tests and integration tests with real clients,
# first against the optimized build, then against an AddressSanitizer + UBSan build, then
# each libFuzzer target for a bounded time (scripts/fuzz.sh; POSTERN_FUZZ_SECONDS per target),
# then a ThreadSanitizer build of the unit tests and event-mode integration tests (scripts/tsan.sh).
# Usage: scripts/test.sh            (installs missing Debian packages first when run as root)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

jobs=$(nproc)
summary=()
total_pass=0
total_fail=0
total_skip=0

# Adds one suite's counts, printed by scripts/summarize-tests.py as its first line
# "LABEL: P passed, F failed, S skipped" (skip reasons follow, indented), to the totals.
add_counts() {
  local text=$1 first
  first=${text%%$'\n'*}
  if [[ ! $first =~ :\ ([0-9]+)\ passed,\ ([0-9]+)\ failed,\ ([0-9]+)\ skipped$ ]]; then
    total_fail=$((total_fail + 1))
    summary+=("$text")
    return
  fi
  total_pass=$((total_pass + BASH_REMATCH[1]))
  total_fail=$((total_fail + BASH_REMATCH[2]))
  total_skip=$((total_skip + BASH_REMATCH[3]))
  summary+=("$text")
}

run_suite() {
  local dir=$1 label=$2; shift 2
  cmake -S . -B "$dir" -G Ninja "$@" >/dev/null
  cmake --build "$dir" -j "$jobs"
  local log="$dir/ctest.log" rc=0 counts
  rm -rf "$dir/it-results" "$dir/ctest.xml"
  (cd "$dir" && ctest --output-on-failure -j "$jobs" --timeout 900 --output-junit ctest.xml) 2>&1 \
    | tee "$log" || rc=$?
  counts=$(python3 scripts/summarize-tests.py "$dir" "$label") || true
  add_counts "$counts"
  # ctest failed but no test case did: still a failure.
  if [[ $rc -ne 0 && $counts =~ \ 0\ failed, ]]; then
    total_fail=$((total_fail + 1))
  fi
}

run_suite build "optimized build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPOSTERN_TESTS=ON
run_suite build-asan "ASan+UBSan build" -DCMAKE_BUILD_TYPE=Debug -DPOSTERN_SANITIZE=ON -DPOSTERN_TESTS=ON
# libFuzzer targets, each for a bounded time (scripts/fuzz.sh); each target's run is one entry.
scripts/fuzz.sh --counts build-fuzz/fuzz.counts || true
read -r fuzz_pass fuzz_fail <build-fuzz/fuzz.counts
add_counts "fuzz targets (${POSTERN_FUZZ_SECONDS:-45} s each): $fuzz_pass passed, $fuzz_fail failed, 0 skipped"
# ThreadSanitizer build: unit tests and event-mode integration files (scripts/tsan.sh).
scripts/tsan.sh --counts build-tsan/tsan.counts || true
add_counts "$(cat build-tsan/tsan.counts)"
# Static analysis: clang-tidy, cppcheck and clang-format (scripts/lint.sh); each tool is one entry.
scripts/lint.sh --counts build-lint/lint.counts || true
read -r lint_pass lint_fail <build-lint/lint.counts || { lint_pass=0; lint_fail=1; }
add_counts "static analysis (clang-tidy, cppcheck, clang-format): $lint_pass passed, $lint_fail failed, 0 skipped"

echo
for s in "${summary[@]}"; do echo "$s"; done
echo "total: $total_pass passed, $total_fail failed, $total_skip skipped"
[[ $total_fail -eq 0 ]]
