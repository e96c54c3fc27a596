#!/usr/bin/env bash
# Runs COMMAND (a launcher with its program) and, once a line of its output matches PATTERN
# (grep -E), sends SIGNAL to COMMAND's own process (the launcher, not its ranks); then prints
# COMMAND's output and exits with its status.
#   tests/mpi/signal_launcher.sh SIGNAL PATTERN COMMAND...
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: tests/mpi/signal_launcher.sh SIGNAL PATTERN COMMAND..." >&2; exit 2; }
signal=$1 pattern=$2
shift 2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$@" >"$log" 2>&1 &
pid=$!
while ! grep -qE -- "$pattern" "$log" && kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
kill -s "$signal" "$pid" 2>/dev/null || true
rc=0
wait "$pid" || rc=$?
cat "$log"
exit "$rc"
