#!/usr/bin/env bash
# cppcheck's warning, performance and portability checks over src/, kernels/ and the test
# helpers, from a compile database; under a minute, by hand like clang-tidy.sh (tests/lint/README.md).
#
# Usage: tests/lint/cppcheck.sh BUILD_DIR
#   BUILD_DIR: a build configured with -DCMAKE_EXPORT_COMPILE_COMMANDS=ON.
# The database passed on leaves out the generated files (which may not exist yet) and the test
# programs, and the system include paths, which cppcheck need not parse. Exit 1 on any finding.
set -euo pipefail
if [ "$#" -ne 1 ]; then
  echo "usage: $0 BUILD_DIR" >&2
  exit 2
fi
db="$1/compile_commands.json"
[ -f "$db" ] || { echo "$0: $db: no compile database (configure with -DCMAKE_EXPORT_COMPILE_COMMANDS=ON)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -c '
import json, os, sys
build = os.path.realpath(sys.argv[2])
kept = []
for entry in json.load(open(sys.argv[1])):
    path = os.path.realpath(os.path.join(entry["directory"], entry["file"]))
    if path.startswith(build + "/") or any(f"/tests/{d}/" in path for d in ("unit", "mpi", "golden", "bench")) \
            or "/tests/emulation/test_" in path:
        continue
    words = entry["command"].split() if "command" in entry else entry["arguments"]
    entry.pop("arguments", None)
    entry["command"] = " ".join(w for w in words if not w.startswith("-isystem") and "/usr/" not in w)
    kept.append(entry)
json.dump(kept, open(sys.argv[3], "w"))' "$db" "$1" "$work/compile_commands.json"
out="$work/findings"
nice cppcheck --project="$work/compile_commands.json" --enable=warning,performance,portability \
  --suppress=missingIncludeSystem -q --template='{file}:{line}:{column}: {severity}: {message} [{id}]' 2>"$out"
cat "$out"
[ ! -s "$out" ]
