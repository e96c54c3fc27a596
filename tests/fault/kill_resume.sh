#!/usr/bin/env bash
# Kill -9 at random moments, then --resume: every run must complete and equal the straight run
# bit for bit (the exported weights), with a metrics.jsonl whose every line is whole JSON and
# whose every step appears once.
#   tests/fault/kill_resume.sh BUILD_DIR SAMPLE_DIR MPIEXEC [KILLS] [SEED]
# KILLS (default 20) runs are killed: about a third of them 4-rank runs (mpirun, one rank
# SIGKILLed, checkpoint.keep 1), the rest one process (checkpoint.keep 2). The moment is drawn
# uniformly over the straight run's duration, so some kills land before the directory or the
# first checkpoint exists, some while a checkpoint is being written. Prints one line per kill.
# Environment: QARAC_MPI_FLAGS, what MPIEXEC needs to run 4 ranks here (default: by its MPI,
# mpi_flags_of in common.sh); QARAC_KEEP_WORK=1 keeps the scratch folder.
set -euo pipefail
me=tests/fault/kill_resume.sh
[ $# -ge 3 ] || { echo "usage: $me BUILD_DIR SAMPLE_DIR MPIEXEC [KILLS] [SEED]" >&2; exit 2; }
build=$(cd "$1" && pwd)
sample=$(cd "$2" && pwd)
mpiexec=$3
kills=${4:-20}
RANDOM=${5:-$$}
train=$build/src/cli/qarac-train
prep=$build/src/cli/qarac-prep
export OPENBLAS_NUM_THREADS=1

work=$(mktemp -d "${TMPDIR:-/tmp}/qarac-kill-XXXXXX")
trap '[ -n "${QARAC_KEEP_WORK:-}" ] || rm -rf "$work"' EXIT

fail() { echo "$me: FAIL: $*" >&2; exit 1; }
# Whether process $1 runs: exists and is no zombie (one not yet waited for, as a killed child is).
running() {
  local state
  { read -r _ _ state _ < "/proc/$1/stat"; } 2>/dev/null || return 1
  [ "$state" != Z ]
}

# shellcheck source=tests/fault/common.sh
source "$(dirname "$0")/common.sh"
mpi_flags_of "$mpiexec"
prepare_inputs

steps=8
args=(--model.base "$work/pretrain/export/base" --data.dir "$work/data" --task.ed.batch 8 --task.qa.batch 8
      --task.rs.batch 8 --task.cs.batch 8 --optimizer.warmup 2 --optimizer.lr 1e-3 --train.steps "$steps"
      --train.log_every 1 --checkpoint.every 2 --eval.dir "$work/data" --eval.every 4 --eval.examples 4
      --eval.decoded 1)

# run RANKS KEEP OUTPUT [extra args]: the command of a run, into the array `cmd`.
command_of() {
  local ranks=$1 keep=$2 out=$3
  shift 3
  cmd=("$train" "${args[@]}" --checkpoint.keep "$keep" --output "$out" "$@")
  [ "$ranks" -eq 1 ] || cmd=("$mpiexec" -np "$ranks" "${mpi_flags[@]}" "${cmd[@]}")
}

# The exported weights of a finished run, as one digest per model.
digest() { (cd "$1/export" && sha256sum ./*/model.safetensors); }

# Every line whole JSON; steps 1..steps once each; evaluations at 0, 4 and 8 once each.
check_metrics() {
  python3 - "$1/metrics.jsonl" "$steps" <<'EOF'
import collections, json, sys
path, steps = sys.argv[1], int(sys.argv[2])
seen, evals = collections.Counter(), collections.Counter()
with open(path) as f:
    for n, line in enumerate(f, 1):
        try:
            record = json.loads(line)
        except ValueError:
            sys.exit(f"{path}:{n}: not a JSON line: {line[:60]!r}")
        (evals if record.get("eval") else seen)[record["step"]] += 1
if seen != collections.Counter(range(1, steps + 1)):
    sys.exit(f"{path}: steps {sorted(seen.elements())}, expected 1..{steps} once each")
if evals != collections.Counter([0, 4, 8]):
    sys.exit(f"{path}: evaluations at {sorted(evals.elements())}, expected 0, 4, 8 once each")
EOF
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

declare -A straight_digest straight_ms
for ranks in 1 4; do
  keep=$([ "$ranks" -eq 1 ] && echo 2 || echo 1)
  command_of "$ranks" "$keep" "$work/straight-$ranks"
  start=$(now_ms)
  "${cmd[@]}" > "$work/straight-$ranks.log" 2>&1 || fail "straight run on $ranks rank(s): $(tail -1 "$work/straight-$ranks.log")"
  straight_ms[$ranks]=$(($(now_ms) - start))
  straight_digest[$ranks]=$(digest "$work/straight-$ranks")
  check_metrics "$work/straight-$ranks" || fail "straight run on $ranks rank(s)"
  echo "straight run, $ranks rank(s): ${straight_ms[$ranks]} ms"
done

# What a killed run had left: no directory, no checkpoint, the checkpoints, a temporary folder.
state_of() {
  local out=$1 done_ tmp
  [ -d "$out" ] || { echo "no directory"; return; }
  done_=$(find "$out/checkpoints" -maxdepth 1 -name 'step-*' ! -name '*.tmp' ! -name '*.del' 2>/dev/null | wc -l)
  tmp=$(find "$out/checkpoints" -maxdepth 1 -name 'step-*.tmp' 2>/dev/null | wc -l)
  if [ "$done_" -eq 0 ]; then echo -n "no checkpoint"; else echo -n "$done_ checkpoint(s)"; fi
  [ "$tmp" -eq 0 ] || echo -n ", one being written"
  [ ! -d "$out/export" ] || echo -n ", exported"
  echo
}

before_first=0 finished_first=0 landed=0
for ((i = 1; i <= kills; i++)); do
  ranks=$((i % 3 == 0 ? 4 : 1))
  keep=$([ "$ranks" -eq 1 ] && echo 2 || echo 1)
  out=$work/run-$i
  command_of "$ranks" "$keep" "$out"
  # A moment in [0, 1.1 × the straight run): some runs finish first.
  delay=$((straight_ms[$ranks] * 11 * RANDOM / 327670))
  "${cmd[@]}" > "$work/run-$i.log" 2>&1 &
  launcher=$!
  sleep "$((delay / 1000)).$(printf %03d $((delay % 1000)))"
  # One process of the run, drawn at random: the process itself, or one of mpirun's ranks.
  victims=()
  # (Shell builtins only: a process per /proc entry would take longer than the run.)
  for comm in /proc/[0-9]*/comm; do
    name=
    { read -r name < "$comm"; } 2>/dev/null || continue
    [ "$name" = qarac-train ] || continue
    p=${comm#/proc/}
    p=${p%/comm}
    grep -qa -- "$out" "/proc/$p/cmdline" 2>/dev/null && victims+=("$p")
  done
  if [ ${#victims[@]} -gt 0 ] && kill -9 "${victims[RANDOM % ${#victims[@]}]}" 2>/dev/null; then
    landed=$((landed + 1))
  fi
  # Open MPI 4.1's mpirun can hang once it has reported a rank killed while PMIx was connecting it
  # ("PMIX ERROR: UNREACHABLE", the other ranks ended): its bug, not the run's, whose processes
  # are gone. Waited for as long as a whole run takes, then ended, and said.
  for ((t = 0; t < 2 * (straight_ms[ranks] / 1000 + 30); t++)); do
    running "$launcher" || break
    sleep 0.5
  done
  if running "$launcher"; then
    echo "$me: kill $i: $mpiexec still runs $((straight_ms[ranks] / 1000 + 30)) s after losing a rank; ended (kill -9)"
    kill -9 "$launcher" 2>/dev/null || true
  fi
  wait "$launcher" 2>/dev/null && code=0 || code=$?
  # mpirun ends the other ranks of a job that lost one; nothing of the run may linger.
  for p in "${victims[@]}"; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$p" 2>/dev/null && fail "kill $i: process $p of the killed run still runs"
  done
  state=$(state_of "$out")
  case $state in "no directory"*|"no checkpoint"*) before_first=$((before_first + 1)) ;; esac
  # The checkpoint a resume must start from (a restart from step 0 would end with the same bits).
  newest=
  [ ! -d "$out/checkpoints" ] ||
    newest=$(find "$out/checkpoints" -maxdepth 1 -name 'step-*' ! -name '*.tmp' ! -name '*.del' | sort | tail -1)
  [ "$code" -eq 0 ] && finished_first=$((finished_first + 1))
  resumes=0
  while [ "$code" -ne 0 ]; do
    resumes=$((resumes + 1))
    [ "$resumes" -le 2 ] || fail "kill $i: --resume failed twice: $(tail -2 "$work/resume-$i.log")"
    if [ -d "$out" ]; then
      command_of "$ranks" "$keep" "$out" --resume
    else
      command_of "$ranks" "$keep" "$out"
    fi
    "${cmd[@]}" > "$work/resume-$i.log" 2>&1 && code=0 || code=$?
  done
  if [ "$resumes" -gt 0 ] && [ -n "$newest" ]; then
    grep -q "resuming from $newest at step" "$work/resume-$i.log" ||
      fail "kill $i ($state): the resume did not start from $newest: $(grep -m1 -e resuming -e step "$work/resume-$i.log")"
  fi
  [ "$(digest "$out")" = "${straight_digest[$ranks]}" ] ||
    fail "kill $i ($ranks rank(s), after $delay ms, $state): the weights differ from the straight run's"
  check_metrics "$out" || fail "kill $i ($ranks rank(s), after $delay ms, $state)"
  printf 'kill %2d: %d rank(s), after %4d ms: %s; %d resume(s); equal to the straight run\n' \
    "$i" "$ranks" "$delay" "$( [ "$resumes" -eq 0 ] && echo "finished first" || echo "$state")" "$resumes"
  rm -rf "$out"
done
# A kill that found no process of the run (the name or command line no longer matched) would let
# every run finish and pass: at least one must have landed.
[ "$landed" -gt 0 ] || fail "none of the $kills kills found a qarac-train process of its run to kill"
echo "$me: $kills kills ($landed landed), $before_first before the first checkpoint, $finished_first finished before the kill;" \
  "every run completed and equals the straight run bit for bit"
