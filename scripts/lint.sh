#!/usr/bin/env bash
# Static analysis of src/, tools/ and fuzz/: clang-tidy (.clang-tidy), cppcheck and
# clang-format --check (scripts/format.sh). Fails on any finding of any of them.
# Usage: scripts/lint.sh [--counts FILE]
#   --counts FILE  also write "PASSED FAILED" (tools clean, tools with findings) to FILE
# Configures build-lint/ (configure only, nothing is compiled) for its compile_commands.json.
# clang-tidy skips the unit tests (*_test.cpp) to fit the CI time budget; cppcheck and
# clang-format check them too. docs/reliability.md, "Static analysis", lists the checks.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
counts_file=
if [[ "${1:-}" == "--counts" ]]; then
  counts_file=$2
fi
jobs=${POSTERN_LINT_JOBS:-$(nproc)}
dir=build-lint
mkdir -p "$dir"
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPOSTERN_TESTS=ON >/dev/null

passed=0
failed=0
step() {  # step NAME FINDINGS
  if [[ $2 -eq 0 ]]; then
    echo "lint: $1 clean"
    passed=$((passed + 1))
  else
    echo "lint: $1: $2 finding(s)"
    failed=$((failed + 1))
  fi
}

# clang-tidy. The build uses g++, whose warning options clang does not all know; Asio's
# coroutine support needs the two macros that CMakeLists.txt also sets for clang (POSTERN_FUZZ).
start=$SECONDS
rc=0
run-clang-tidy-14 -p "$dir" -j "$jobs" -quiet \
  -header-filter="^$root/(src|tools|fuzz)/" \
  -extra-arg=-Wno-unknown-warning-option \
  -extra-arg=-DASIO_HAS_CO_AWAIT=1 -extra-arg=-DASIO_HAS_STD_COROUTINE=1 \
  "^$root/(src|tools|fuzz)/.*(?<!_test)\\.cpp\$" >"$dir/clang-tidy.log" 2>&1 || rc=$?
# Each finding once, though a header's is reported by every file that includes it.
sed 's/\x1b\[[0-9;]*m//g' "$dir/clang-tidy.log" \
  | grep -E "^$root/[^ ]*:[0-9]+:[0-9]+: (warning|error):" | sort -u >"$dir/clang-tidy.findings" || true
n=$(wc -l <"$dir/clang-tidy.findings")
sed "s|^$root/||" "$dir/clang-tidy.findings"
if [[ $rc -ne 0 && $n -eq 0 ]]; then
  echo "lint: run-clang-tidy-14 failed (exit $rc) without a finding; see $dir/clang-tidy.log"
  n=1
fi
step "clang-tidy ($((SECONDS - start)) s)" "$n"

# cppcheck: warnings, performance and portability (errors always), on every file of the
# project, unit tests included. missingReturn is off: cppcheck 2.10 does not know coroutines
# and reports every co_return as a missing return (GCC's -Wreturn-type, in -Wall, checks it).
# readdirCalled is off: it recommends readdir_r, which glibc deprecates; readdir is safe on a
# DIR stream that one thread owns, as each of ours is.
# A false positive elsewhere is suppressed where it occurs, with its reason
# ("// cppcheck-suppress ID ; why").
start=$SECONDS
rm -f "$dir/cppcheck.log"
rc=0
cppcheck --project="$dir/compile_commands.json" -j "$jobs" --quiet \
  --enable=warning,performance,portability --inline-suppr --library=googletest,posix,gnu,openssl \
  --suppress=missingIncludeSystem --suppress=unmatchedSuppression --suppress=missingReturn --suppress=readdirCalled \
  --file-filter="src/*" --file-filter="tools/*" --file-filter="fuzz/*" \
  --template='{file}:{line}:{column}: {severity}: {message} [{id}]' \
  --output-file="$dir/cppcheck.log" || rc=$?
n=$( (grep -E '^[^ ]+:[0-9]+:[0-9]+: ' "$dir/cppcheck.log" || true) | sort -u | tee "$dir/cppcheck.findings" | wc -l)
sed "s|^$root/||" "$dir/cppcheck.findings"
if [[ $rc -ne 0 && $n -eq 0 ]]; then
  echo "lint: cppcheck failed (exit $rc); see $dir/cppcheck.log"
  n=1
fi
step "cppcheck ($((SECONDS - start)) s)" "$n"

start=$SECONDS
n=0
scripts/format.sh --check || n=$?
step "clang-format ($((SECONDS - start)) s)" "$n"

echo "lint: $passed passed, $failed failed, 0 skipped"
if [[ -n $counts_file ]]; then
  echo "$passed $failed" >"$counts_file"
fi
[[ $failed -eq 0 ]]
