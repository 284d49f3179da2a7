#!/usr/bin/env bash
# Builds Postern and runs every test: unit tests and integration tests with real clients,
# first against the optimized build, then against an AddressSanitizer + UBSan build, then
# each libFuzzer target for a bounded time (scripts/fuzz.sh; POSTERN_FUZZ_SECONDS per target).
# Usage: scripts/test.sh            (installs missing Debian packages first when run as root)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

jobs=$(nproc)
summary=()
total_pass=0
total_fail=0

run_suite() {
  local dir=$1 label=$2; shift 2
  cmake -S . -B "$dir" -G Ninja "$@" >/dev/null
  cmake --build "$dir" -j "$jobs"
  local log="$dir/ctest.log" rc=0
  (cd "$dir" && ctest --output-on-failure -j "$jobs" --timeout 900) 2>&1 | tee "$log" || rc=$?
  local line pass fail
  line=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests failed out of [0-9]+' "$log" | tail -n 1 || true)
  if [[ -z "$line" ]]; then
    echo "test.sh: $label: ctest printed no summary" >&2
    total_fail=$((total_fail + 1))
    summary+=("$label: no summary")
    return
  fi
  fail=$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1/' <<<"$line")
  local all
  all=$(sed -E 's/.* tests failed out of ([0-9]+).*/\1/' <<<"$line")
  pass=$((all - fail))
  total_pass=$((total_pass + pass))
  total_fail=$((total_fail + fail))
  summary+=("$label: $pass passed, $fail failed")
  if [[ $rc -ne 0 && $fail -eq 0 ]]; then
    total_fail=$((total_fail + 1))
  fi
}

run_suite build "optimized build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPOSTERN_TESTS=ON
run_suite build-asan "ASan+UBSan build" -DCMAKE_BUILD_TYPE=Debug -DPOSTERN_SANITIZE=ON -DPOSTERN_TESTS=ON
# libFuzzer targets, each for a bounded time (scripts/fuzz.sh); each target's run is one entry.
scripts/fuzz.sh --counts build-fuzz/fuzz.counts || true
read -r fuzz_pass fuzz_fail <build-fuzz/fuzz.counts
total_pass=$((total_pass + fuzz_pass)); total_fail=$((total_fail + fuzz_fail))
summary+=("fuzz targets (${POSTERN_FUZZ_SECONDS:-30} s each): $fuzz_pass passed, $fuzz_fail failed")

echo
for s in "${summary[@]}"; do echo "$s"; done
echo "total: $total_pass passed, $total_fail failed"
[[ $total_fail -eq 0 ]]
