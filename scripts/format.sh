#!/usr/bin/env bash
# Formats the C++ sources of src/, tools/ and fuzz/ with clang-format and .clang-format.
# Usage: scripts/format.sh            reformat every file in place
#        scripts/format.sh --check    change nothing; list the files that need formatting
#                                     and exit 1 if there is any (scripts/lint.sh runs this)
set -euo pipefail
cd "$(dirname "$0")/.."

clang_format=${CLANG_FORMAT:-$(command -v clang-format-14 || command -v clang-format)}
mapfile -t files < <(git ls-files -- 'src/*.cpp' 'src/*.hpp' 'tools/*.cpp' 'tools/*.hpp' \
  'fuzz/*.cpp' 'fuzz/*.hpp')

if [[ "${1:-}" != "--check" ]]; then
  "$clang_format" -i --style=file "${files[@]}"
  exit 0
fi

bad=0
for f in "${files[@]}"; do
  if ! "$clang_format" --style=file --dry-run -Werror "$f" >/dev/null 2>&1; then
    echo "format: $f needs formatting (scripts/format.sh)"
    bad=$((bad + 1))
  fi
done
echo "clang-format: $bad of ${#files[@]} files need formatting"
[[ $bad -eq 0 ]]
