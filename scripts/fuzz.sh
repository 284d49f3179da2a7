#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with clang (POSTERN_FUZZ=ON: coverage, ASan and UBSan)
# in a build directory of their own and runs each for a bounded time, starting from its
# checked-in seed corpus, with its dictionary (fuzz/dict/<target>.dict). A target fails on a
# crash, a failed property, a leak, a timeout of one input, an out-of-memory or any sanitizer
# report; the input that did it is kept as
# <build dir>/artifacts/<target>-crash-... (copy it into fuzz/corpus/<target>/ once fixed).
# Usage: scripts/fuzz.sh [--time SECONDS] [--jobs N] [--build-dir DIR] [--counts FILE] [TARGET...]
#   --time       seconds per target (default 45, or $POSTERN_FUZZ_SECONDS)
#   --jobs       targets fuzzed at once, one core each (default nproc, or $POSTERN_FUZZ_JOBS)
#   --counts     write "PASSED FAILED" to FILE (for scripts/test.sh's summary)
#   TARGET       e.g. mbox_parser (default: every fuzz/*_fuzz.cpp)
# The last line is "fuzz: N passed, N failed"; the exit status is 0 only if none failed.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${POSTERN_FUZZ_SECONDS:-45}
jobs=${POSTERN_FUZZ_JOBS:-$(nproc)}
dir=build-fuzz
counts=
targets=()
while (($#)); do
  case "$1" in
    --time) secs=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --build-dir) dir=$2; shift 2 ;;
    --counts) counts=$2; shift 2 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if ((${#targets[@]} == 0)); then
  for f in fuzz/*_fuzz.cpp; do
    f=${f##*/}
    targets+=("${f%_fuzz.cpp}")
  done
fi
# Until the runs are counted, the whole step counts as one failure (a failed build included).
[[ -z "$counts" ]] || { mkdir -p "$(dirname "$counts")"; echo "0 1" >"$counts"; }

CC=clang CXX=clang++ cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DPOSTERN_FUZZ=ON -DPOSTERN_TESTS=OFF >/dev/null
cmake --build "$dir" -j "$(nproc)" --target "${targets[@]/#/fuzz_}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
mkdir -p "$dir/artifacts"

# Runs target $1; its exit status goes to $dir/fuzz-$1.rc.
run_target() {
  local t=$1 rc=0 dict=()
  mkdir -p "$dir/corpus/$t"
  [[ ! -f "fuzz/dict/$t.dict" ]] || dict=(-dict="fuzz/dict/$t.dict")
  # New inputs go to the work corpus; the checked-in seeds are only read.
  "$dir/fuzz_$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "${dict[@]}" -artifact_prefix="$dir/artifacts/$t-" "$dir/corpus/$t" "fuzz/corpus/$t" \
    >"$dir/fuzz-$t.log" 2>&1 || rc=$?
  echo "$rc" >"$dir/fuzz-$t.rc"
}

# Each fuzzer is one process on one core: run as many at once as there are jobs.
for t in "${targets[@]}"; do
  rm -f "$dir/fuzz-$t.rc"
  while (($(jobs -rp | wc -l) >= jobs)); do
    wait -n || true
  done
  run_target "$t" &
done
wait || true

passed=0
failed=0
for t in "${targets[@]}"; do
  log="$dir/fuzz-$t.log"
  rc=$(cat "$dir/fuzz-$t.rc" 2>/dev/null || echo missing)
  execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -n 1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1 || true)
  if [[ $rc == 0 ]]; then
    passed=$((passed + 1))
    echo "fuzz $t: passed, ${execs:-?} executions in $secs s ($cov)"
  else
    failed=$((failed + 1))
    echo "fuzz $t: FAILED (exit $rc); log $log:" >&2
    grep -E 'ERROR|SUMMARY|property failed|Test unit written' "$log" | head -n 20 >&2 || tail -n 30 "$log" >&2
  fi
done
[[ -z "$counts" ]] || echo "$passed $failed" >"$counts"
echo "fuzz: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
