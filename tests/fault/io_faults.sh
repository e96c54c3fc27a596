#!/usr/bin/env bash
# One failed system call at a time under the programs' write paths (tests/fault/io_shim.c,
# LD_PRELOADed): the Nth open for writing, write/pwrite (also a short one), fsync/fdatasync,
# rename, ftruncate, close of a written file or mkdir on the outputs fails with EIO, ENOSPC,
# EDQUOT or EINTR, for N = 1, 2, ... until the program makes no Nth such call. Each time:
#  - the program exits non-zero (not by a signal) with one error line naming a file of the
#    outputs and the cause (strerror's text), or ends as without the fault: an interrupted write
#    or fsync retried, a short write continued; after a failed close or fsync only with a warning
#    that it kept what it would have given up for the unsure file (older checkpoints), or of a
#    record that its exit status repeats (stopped.json);
#  - nothing half-written is under a final name: every file there is the previous version or
#    the new one, byte for byte, metrics.jsonl holds whole lines, no temporary file is left;
#  - the program run again without the fault (qarac-train --resume) ends with the outputs of a
#    run that met no fault, byte for byte.
# Scenarios: train (--resume of a run at step 2 to step 4: config.ini, metrics.jsonl, the
# checkpoint, best/ and export/, with failed.json on a failure), stop (the same, SIGTERMed in
# step 3: its checkpoint and stopped.json, exit 75), fresh (a new run of 2 steps:
# the run directory), prep (qarac-prep's task streams), npy, h5, jsonl (qarac-embed --output),
# eval (qarac-eval --output).
#   tests/fault/io_faults.sh BUILD_DIR SAMPLE_DIR SHIM [--quick | --all | --each S:CALL:ERROR[:PATH]...
#                                                     | S:CALL:N:ERROR[:PATH]...]
# --quick (the default; ctest fault.io_calls) runs a representative few (30 s); --all every call of
# every scenario with every error, one line each (about 15,000 faulted runs, each with its rerun,
# 3 to 4 s apiece: some 14 hours on 2 cores); --each every call of the classes named
# (train:close:EIO: 50 calls, 3 minutes); a list runs those named (train:close:3:EIO). PATH
# counts only the calls on the outputs whose path starts with it (train:close:2:EIO:run/
# metrics.jsonl: its second close), or is it when it ends in '$' (fresh:fsync:2:EIO:run$: the
# second fsync of the run directory itself). Exit 77 (skipped) when
# the programs cannot start with the shim preloaded (a sanitizer build preloads its runtime
# first). QARAC_KEEP_WORK=1 keeps the scratch folder.
set -euo pipefail
export LC_ALL=C
me=tests/fault/io_faults.sh
[ $# -ge 3 ] || { echo "usage: $me BUILD_DIR SAMPLE_DIR SHIM [--quick | --all | --each S:CALL:ERROR[:PATH]... | S:CALL:N:ERROR[:PATH]...]" >&2; exit 2; }
build=$(cd "$1" && pwd)
sample=$(cd "$2" && pwd)
shim=$(cd "$(dirname "$3")" && pwd)/$(basename "$3")
shift 3
[ $# -gt 0 ] || set -- --quick
train=$build/src/cli/qarac-train
prep=$build/src/cli/qarac-prep
embed=$build/src/cli/qarac-embed
evaluate=$build/src/cli/qarac-eval
export OPENBLAS_NUM_THREADS=1

work=$(mktemp -d "${TMPDIR:-/tmp}/qarac-io-XXXXXX")
trap '[ -n "${QARAC_KEEP_WORK:-}" ] || rm -rf "$work"' EXIT
out=$work/out  # everything the faulted programs write, and the shim's path filter
fail() { echo "$me: FAIL: $*" >&2; exit 1; }

# The shim fails a call, and the programs start with it (a sanitizer's runtime must come first).
probe=$(LD_PRELOAD=$shim QARAC_IO_FAIL=mkdir:1:EIO QARAC_IO_FAIL_PATH="$work/probe" mkdir "$work/probe" 2>&1 || true)
[[ $probe == *"Input/output error"* ]] || fail "$shim failed no mkdir: ${probe:-it succeeded}"
if ! probe=$(LD_PRELOAD=$shim "$train" --version 2>&1); then
  echo "$me: skipped: qarac-train does not start with $shim preloaded (a sanitizer build?): $(echo "$probe" | head -1)"
  exit 77
fi

# shellcheck source=tests/fault/common.sh
source "$(dirname "$0")/common.sh"
prepare_inputs
echo "a question about the sample" > "$work/texts.txt"
echo "another one" >> "$work/texts.txt"
args=(--model.base "$work/pretrain/export/base" --data.dir "$work/data" --task.ed.batch 4 --task.qa.batch 4
      --task.rs.batch 4 --task.cs.batch 4 --optimizer.warmup 1 --optimizer.lr 1e-3 --train.log_every 1
      --checkpoint.every 2 --checkpoint.keep 2 --eval.dir "$work/data" --eval.every 2 --eval.examples 4
      --eval.decoded 1 --eval.best cs.accuracy)

# run_scenario NAME: the scenario's program on its outputs under $out (prepared by setup_scenario).
run_scenario() {
  case $1 in
    train) "$train" "${args[@]}" --train.steps 4 --resume --output "$out/run" ;;
    stop) QARAC_FAULT=term:0:2 "$train" "${args[@]}" --train.steps 4 --resume --output "$out/run" ;;
    fresh) "$train" "${args[@]}" --train.steps 2 --output "$out/run" ;;
    prep) local code=0
          prep_sample "$out/data" || code=$?
          cat "$work/prep.log"
          return "$code" ;;
    npy|h5|jsonl) "$embed" --model "$work/state/export/question_encoder" --input "$work/texts.txt" --output "$out/v.$1" ;;
    eval) "$evaluate" --models "$work/state/export" --data "$work/data" --examples 4 --decoded 1 --output "$out/eval.txt" ;;
  esac
}
# What each scenario finds before it runs: train and stop a run at step 2, the embeddings and the metrics
# an older file of their own.
setup_scenario() {
  rm -rf "$out"
  mkdir "$out"
  case $1 in
    train|stop) cp -a "$work/state" "$out/run" ;;
    npy|h5|jsonl) echo "an older file" > "$out/v.$1" ;;
    eval) echo "an older file" > "$out/eval.txt" ;;
  esac
}
# The scenario run again without a fault, after the faulted one: a stopped run goes on to its
# end, a fresh run that failed before its first step removed its directory and starts anew.
rerun_scenario() {
  if [ "$1" = stop ]; then
    run_scenario train
  elif [ "$1" = fresh ] && [ -d "$out/run" ]; then
    "$train" "${args[@]}" --train.steps 2 --resume --output "$out/run"
  else
    run_scenario "$1"
  fi
}
# The exit status of the scenario run without a fault: stop's SIGTERM ends it with a checkpoint
# and status 75.
clean_status() { if [ "$1" = stop ]; then echo 75; else echo 0; fi; }

# The files a scenario leaves, one digest each, but those whose bytes record times or the program's
# own state (logs, the lock, timings in metrics.jsonl, the run's records of a stop or a failure).
digests() {
  [ -d "$1" ] || return 0
  (cd "$1" && find . -type f ! -name '*.log' ! -name .qarac.lock ! -name metrics.jsonl ! -name failed.json \
     ! -name stopped.json -print0 | sort -z | xargs -0 -r sha256sum)
}

# The digests of FILE (digests' lines) without the checkpoints older than the newest, which depend
# on where a run stopped before (a stop, or a checkpoint that failed, adds one).
newest_checkpoint() {
  local lines newest
  lines=$(cat "$1")
  newest=$(grep -o 'checkpoints/step-[0-9]*/' <<< "$lines" | sort | tail -1 || true)
  grep -v 'checkpoints/step-' <<< "$lines" || true
  [ -z "$newest" ] || grep -F "$newest" <<< "$lines"
}

# The outputs of the scenarios run without a fault: $work/before/NAME (what they find),
# $work/after/NAME (what they leave) and $work/final/NAME (what their rerun leaves: the stopped
# run's end). The train and stop scenarios start from a run at step 2 ($work/state); stop is
# SIGTERMed in step 3 (QARAC_FAULT, train/fault.h): a checkpoint and stopped.json.
"$train" "${args[@]}" --train.steps 2 --output "$work/state" > "$work/state.log" 2>&1 ||
  fail "the run to step 2: $(tail -1 "$work/state.log")"
mkdir "$work/before" "$work/after" "$work/final"
scenarios=(train stop fresh prep npy h5 jsonl eval)
for s in "${scenarios[@]}"; do
  setup_scenario "$s"
  digests "$out" > "$work/before/$s"
  code=0
  run_scenario "$s" > "$work/clean.log" 2>&1 || code=$?
  [ "$code" -eq "$(clean_status "$s")" ] || fail "$s without a fault: exit $code: $(tail -1 "$work/clean.log")"
  digests "$out" > "$work/after/$s"
  if [ "$s" = stop ]; then
    rerun_scenario "$s" > "$work/clean.log" 2>&1 || fail "$s's rerun without a fault: $(tail -1 "$work/clean.log")"
    digests "$out" > "$work/final/$s"
  else
    cp "$work/after/$s" "$work/final/$s"
  fi
done

# check NAME CALL N ERROR [PATH]: the scenario with the Nth CALL failing with ERROR, counting only
# the calls on paths under $out that start with PATH when it is given; returns 1 when the program
# made no Nth call (nothing injected). Prints one line: the outcome, or what went wrong
# (counted in `failures`; the enumeration goes on).
failures=0
bad() {
  echo "$what | $file | FAIL: ${*//$work\//}"
  failures=$((failures + 1))
}
check() {
  local s=$1 call=$2 n=$3 error=$4 what="$1:$2:$3:$4${5:+:$5}" code=0
  setup_scenario "$s"
  rm -f "$work/injected"
  QARAC_IO_FAIL="$call:$n:$error" QARAC_IO_FAIL_PATH="$out${5:+/$5}" QARAC_IO_FAIL_LOG="$work/injected" LD_PRELOAD=$shim \
    run_scenario "$s" > "$work/fault.log" 2>&1 || code=$?
  grep -q '^injected' "$work/injected" 2>/dev/null || return 1
  local file
  file=$(sed -n "s|^injected [^ ]* [^ ]* [^ ]* $work/||p" "$work/injected")
  [ "$code" -lt 128 ] || { bad "killed by signal $((code - 128)): $(tail -3 "$work/fault.log")"; return 0; }
  local pattern='^qarac-[a-z]+: (internal )?error' errors outcome
  errors=$(grep -E "$pattern" "$work/fault.log" || true)
  # An interrupted write or fsync is retried, a short write continued: the program goes on.
  if [[ $call:$error == write:short || $call:$error == write:EINTR || $call:$error == fsync:EINTR ]]; then
    [ "$code" -eq "$(clean_status "$s")" ] || { bad "exit $code, not retried or continued: $errors"; return 0; }
  fi
  if [ "$code" -eq "$(clean_status "$s")" ]; then
    [ -z "$errors" ] || { bad "exit $code after an error line: $errors"; return 0; }
    outcome="exit $code"
    local warning
    # Named as its message names it: a temporary file by the file it stands for.
    warning=$(grep -m1 -F "warn] $work/${file%.tmp.*}" "$work/fault.log" || true)
    [ -z "$warning" ] || outcome+=", ${warning//$work\//}"
    # A failed close may have lost what was written (a network file system says so only there),
    # and a later fsync succeeds without writing what a failed one lost: a program that goes on
    # must keep what it would otherwise give up for the unsure file (older checkpoints), and say so.
    # (A stop's record says what exit status 75 says; the run's lock file is never failed:
    # io_shim.c.)
    # A folder's fsync that the file system cannot do (EINVAL) is skipped: --quick checks it.
    if [[ $warning != *kept* && $warning != *"says the stop"* &&
          ($call == close || ($call == fsync && $error != EINTR && $error != EINVAL)) ]]; then
      bad "exit $code after the failed $call${warning:+ (${warning//$work\//})}"
      return 0
    fi
  else
    [ "$(grep -cE "$pattern" "$work/fault.log")" -eq 1 ] ||
      { bad "exit $code with $(grep -cE "$pattern" "$work/fault.log") error lines: $(tail -3 "$work/fault.log")"; return 0; }
    local cause
    case $error in
      short) cause="" ;;
      *) cause=$(python3 -c 'import errno, os, sys; print(os.strerror(getattr(errno, sys.argv[1])))' "$error") ;;
    esac
    case $errors in
      *"$out/"*"$cause"*) ;;
      *) bad "the error names no output or not the cause ($cause): $errors"
         return 0 ;;
    esac
    outcome="exit $code, ${errors//$work\//}"
  fi
  # Nothing temporary left, every file whole: the one found before or the one a clean run leaves.
  local leftovers
  leftovers=$(find "$out" -name '*.tmp*' -o -name '*.del' -o -name '*.old' | sed "s|$out/||" | head -3)
  [ -z "$leftovers" ] || { bad "left $leftovers"; return 0; }
  # But qarac-prep's marker of a publishing cut short, which qarac-train refuses and a rerun of
  # qarac-prep removes (docs/data-format.md).
  local sum name
  while read -r sum name; do
    [ "$name" != ./data/.qarac-prep-publishing ] || continue
    grep -qxF "$sum  $name" "$work/before/$s" "$work/after/$s" ||
      { bad "$name is neither what was there nor what a run without the fault writes"; return 0; }
  done < <(digests "$out")
  [ ! -f "$out/run/metrics.jsonl" ] ||
    python3 -c 'import json, sys; [json.loads(l) for l in open(sys.argv[1])]' "$out/run/metrics.jsonl" ||
    { bad "metrics.jsonl holds a line that is not whole JSON"; return 0; }
  # Without the fault the program ends where a run that met none ends.
  rerun_scenario "$s" > "$work/rerun.log" 2>&1 || { bad "the run again: $(tail -1 "$work/rerun.log")"; return 0; }
  if ! newest_checkpoint <(digests "$out") > "$work/rerun.digests" ||
     ! newest_checkpoint "$work/final/$s" | cmp -s - "$work/rerun.digests"; then
    newest_checkpoint "$work/final/$s" | diff "$work/rerun.digests" - > "$work/rerun.diff" || true
    bad "the run again left other outputs: $(head -3 "$work/rerun.diff")"
    return 0
  fi
  if [ -f "$out/run/metrics.jsonl" ]; then
    python3 - "$out/run/metrics.jsonl" "$s" <<'EOF' || { bad "metrics.jsonl after the run again"; return 0; }
import collections, json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
steps = collections.Counter(r["step"] for r in records if not r.get("eval"))
last = 2 if sys.argv[2] == "fresh" else 4
assert steps == collections.Counter(range(1, last + 1)), sorted(steps.elements())
EOF
  fi
  echo "$what | $file | $outcome"
}

errors_of() {
  case $1 in
    write) echo EIO ENOSPC EDQUOT EINTR short ;;
    close) echo EIO EINTR ;;
    ftruncate) echo EIO ;;
    *) echo EIO ENOSPC EDQUOT EINTR ;;
  esac
}

# enumerate NAME CALL ERROR [PATH]: every call of the kind, N = 1, 2, ... until there is no Nth.
enumerate() {
  local n=1
  while check "$1" "$2" "$n" "$3" "${4:-}"; do n=$((n + 1)); done
  echo "$1:$2:$3${4:+:$4}: $((n - 1)) calls"
}

case $1 in
  --all)
    for s in "${scenarios[@]}"; do
      for call in open write fsync rename ftruncate close mkdir; do
        for error in $(errors_of "$call"); do enumerate "$s" "$call" "$error"; done
      done
    done ;;
  --each)
    shift
    for class in "$@"; do
      IFS=: read -r s call error path <<< "$class"
      enumerate "$s" "$call" "$error" "$path"
    done ;;
  --quick)
    # A checkpoint's dataset, the last close of metrics.jsonl, config.ini's fsync interrupted,
    # metrics.jsonl's rewrite, the checkpoint's folder, a short append to metrics.jsonl, the run
    # directory, a task stream's seal, the streams' publishing, each writer of qarac-embed and
    # qarac-eval: a close, an interrupted and a short write, the file's folder; a stop's record and
    # its close of metrics.jsonl; the run directory's fsync after best/ at step 0, which failed a
    # fresh run before its first step.
    for case in train:write:40:EIO train:close:2:EIO:run/metrics.jsonl train:fsync:1:EINTR train:rename:2:EDQUOT train:mkdir:1:EIO \
                train:write:5:short fresh:mkdir:1:EDQUOT prep:close:4:EIO prep:rename:1:ENOSPC npy:close:1:EIO \
                npy:write:1:EINTR h5:close:1:EIO h5:write:1:ENOSPC jsonl:write:1:short eval:fsync:2:EIO \
                stop:close:1:EIO:run/stopped.json stop:close:2:EIO:run/metrics.jsonl 'fresh:fsync:2:EIO:run$'; do
      IFS=: read -r s call n error path <<< "$case"
      check "$s" "$call" "$n" "$error" "$path" || fail "$case: the program made no such call"
    done
    # A file system that cannot fsync a folder (EINVAL, as some FUSE mounts answer): the write goes
    # on, as PostgreSQL's do (before, every write there failed: the folder's fsync is an error).
    check eval fsync 2 EINVAL || fail "eval:fsync:2:EINVAL: the program made no such call"
    ! grep -qE '^qarac-[a-z]+: (internal )?error' "$work/fault.log" ||
      fail "eval:fsync:2:EINVAL: a folder fsync the file system cannot do ended the program: $(tail -1 "$work/fault.log")" ;;
  *)
    for case in "$@"; do
      IFS=: read -r s call n error path <<< "$case"
      check "$s" "$call" "$n" "$error" "$path" || echo "$case: no such call"
    done ;;
esac
[ "$failures" -eq 0 ] || fail "$failures failed calls were not handled (the lines with FAIL above)"
echo "$me: every failed call ended its program with one line or was retried, and left nothing half-written"
