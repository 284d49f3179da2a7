#!/usr/bin/env bash
# Builds the unit tests and posternd with ThreadSanitizer (g++, POSTERN_TSAN=ON) in a build
# directory of their own and runs the ctest entries labelled tsan: every unit test and the
# event-mode integration files listed in CMakeLists.txt (POSTERN_TSAN_IT_FILES).
#
# Every process writes its ThreadSanitizer reports to <build dir>/tsan-reports/report.PID
# (TSAN_OPTIONS log_path), posternd's worker processes and its processes after the privilege
# drop included, so a report counts even where a test never reads the server's stderr. A run
# with any report file fails: each file is one more failure in the counts, and its first
# lines are printed. Suppressions: scripts/tsan.supp (each with its reason).
#
# Kernels with more address-space randomisation than this ThreadSanitizer runtime knows
# (vm.mmap_rnd_bits above 28) make every TSan binary die with "unexpected memory mapping";
# then the whole run is repeated under `setarch -R` (no randomisation, for these processes only).
#
# Usage: scripts/tsan.sh [--build-dir DIR] [--counts FILE] [CTEST ARGS...]
#   --counts   write the summary line "ThreadSanitizer build: P passed, F failed, S skipped"
#              (scripts/summarize-tests.py, plus one failure per report file) to FILE
#   CTEST ARGS e.g. -R 'Admission|integration.test_processes' to run fewer
# The exit status is 0 only if every test passed and no report was written.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=build-tsan
counts=
ctest_args=()
while (($#)); do
  case "$1" in
    --build-dir) dir=$2; shift 2 ;;
    --counts) counts=$2; shift 2 ;;
    *) ctest_args+=("$1"); shift ;;
  esac
done
label="ThreadSanitizer build"
# Until the run is counted, the whole step counts as one failure (a failed build included).
[[ -z "$counts" ]] || { mkdir -p "$(dirname "$counts")"; echo "$label: 0 passed, 1 failed, 0 skipped" >"$counts"; }

mkdir -p "$dir"
# Does a TSan binary start on this kernel? If not, and it does without randomisation, run
# everything (the build too: test discovery runs the unit test binary) under setarch -R.
if [[ -z "${POSTERN_TSAN_NO_ASLR:-}" ]]; then
  echo 'int main() { return 0; }' | g++ -fsanitize=thread -x c++ - -o "$dir/tsan-probe"
  if ! probe=$("$dir/tsan-probe" 2>&1); then
    if [[ $probe == *"unexpected memory mapping"* ]] &&
        setarch "$(uname -m)" -R "$dir/tsan-probe" >/dev/null 2>&1; then
      echo "tsan.sh: ThreadSanitizer needs setarch -R on this kernel; running under it" >&2
      POSTERN_TSAN_NO_ASLR=1 exec setarch "$(uname -m)" -R "$0" --build-dir "$dir" \
        ${counts:+--counts "$counts"} "${ctest_args[@]}"
    fi
    echo "tsan.sh: a ThreadSanitizer binary does not run here:" >&2
    echo "$probe" >&2
    exit 1
  fi
fi

CXX=g++ cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPOSTERN_TSAN=ON \
  -DPOSTERN_TESTS=ON >/dev/null
cmake --build "$dir" -j "$(nproc)" --target postern_unit_tests posternd

reports="$dir/tsan-reports"
rm -rf "$reports" "$dir/it-results" "$dir/ctest.xml"
mkdir -p "$reports"
chmod 1777 "$reports"  # posternd writes here after dropping privileges
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 log_path=$PWD/$reports/report suppressions=$PWD/scripts/tsan.supp ${POSTERN_TSAN_OPTIONS:-}"
# TSan slows posternd by 5 to 15 times: the integration tests stretch their timeouts.
export POSTERN_TIME_SCALE=${POSTERN_TIME_SCALE:-5}

# Two single-threaded mbox store tests that build large files take 2 to 4 minutes each under
# TSan and exercise no thread: the other two builds run them.
slow_single_threaded='^mbox_index_files\.(appended_mail_scans_only_the_new_part|commit_writes_the_index_of_the_new_file)$'
rc=0
(cd "$dir" && ctest -L tsan -E "$slow_single_threaded" --output-on-failure -j "$(nproc)" --timeout 900 \
  --output-junit ctest.xml "${ctest_args[@]}") 2>&1 | tee "$dir/ctest.log" || rc=$?
line=$(python3 scripts/summarize-tests.py "$dir" "$label") || true

shopt -s nullglob
found=("$reports"/report.*)
if ((${#found[@]})); then
  echo "tsan.sh: ${#found[@]} ThreadSanitizer report file(s) in $reports:" >&2
  for f in "${found[@]}"; do
    echo "--- $f" >&2
    grep -E '^(WARNING|SUMMARY|ERROR|FATAL): |^    #[0-3] ' "$f" | head -n 40 >&2 || head -n 40 "$f" >&2
  done
fi
first=${line%%$'\n'*}
if [[ $first =~ :\ ([0-9]+)\ passed,\ ([0-9]+)\ failed,\ ([0-9]+)\ skipped$ ]]; then
  failed=$((BASH_REMATCH[2] + ${#found[@]}))
  # ctest failed but no test case did: still a failure.
  if [[ $rc -ne 0 && $failed -eq 0 ]]; then
    failed=1
  fi
  rest=${line#"$first"}
  line="$label: ${BASH_REMATCH[1]} passed, $failed failed, ${BASH_REMATCH[3]} skipped$rest"
  if ((${#found[@]})); then
    line+=$'\n'"  ${#found[@]} ThreadSanitizer report file(s) in $reports"
  fi
else
  failed=1
  line="$label: no summary ($line)"
fi
[[ -z "$counts" ]] || echo "$line" >"$counts"
echo "$line"
[[ $failed -eq 0 ]]
