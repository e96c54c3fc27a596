#!/usr/bin/env bash
# clang-tidy's bug-finding checks (the repository's .clang-tidy) over the C++ sources of one or
# more folders, one file at a time, niced: slow (5 s to 4 min a file), so not part of ctest or
# .ci/run. Each folder's findings go to LOGDIR/<folder with / as _>.log.
#
# Usage: tests/lint/clang-tidy.sh BUILD_DIR LOGDIR FOLDER...
#   BUILD_DIR: a build configured with -DCMAKE_EXPORT_COMPILE_COMMANDS=ON (clang++ preferred:
#   CXX=clang++ cmake -S . -B build-tidy -DQARAC_CUDA=OFF -DCMAKE_EXPORT_COMPILE_COMMANDS=ON)
#   FOLDER: e.g. src/core kernels/cpu tests/emulation; its .cpp files present in the database.
# Exit 1 when any file has a finding, 0 otherwise.
set -euo pipefail
if [ "$#" -lt 3 ]; then
  echo "usage: $0 BUILD_DIR LOGDIR FOLDER..." >&2
  exit 2
fi
build=$1
logs=$2
shift 2
db="$build/compile_commands.json"
[ -f "$db" ] || { echo "$0: $db: no compile database (configure with -DCMAKE_EXPORT_COMPILE_COMMANDS=ON)" >&2; exit 2; }
mkdir -p "$logs"
repo=$(cd "$(dirname "$0")/../.." && pwd)
found=0
for folder in "$@"; do
  log="$logs/${folder//\//_}.log"
  : >"$log"
  mapfile -t files < <(python3 -c '
import json, os, sys
root, folder = sys.argv[2], os.path.join(sys.argv[2], sys.argv[3])
for entry in json.load(open(sys.argv[1])):
    path = os.path.realpath(os.path.join(entry["directory"], entry["file"]))
    if os.path.dirname(path) == os.path.realpath(folder) and path.endswith(".cpp"):
        print(path)' "$db" "$repo" "$folder" | sort -u)
  for file in "${files[@]}"; do
    echo "== $file" >>"$log"
    nice clang-tidy --quiet -p "$build" "$file" >>"$log" 2>/dev/null || true
  done
  count=$(grep -c ': warning: \|: error: ' "$log" || true)
  echo "$folder: ${#files[@]} files, $count findings ($log)"
  [ "$count" -eq 0 ] || found=1
done
exit "$found"
