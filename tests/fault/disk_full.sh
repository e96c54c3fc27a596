#!/usr/bin/env bash
# A full disk (a small tmpfs) under qarac-prep's output, a checkpoint, the metrics and the export:
# each time one line naming the file, a non-zero exit, no temporary file left, and the run's
# previous checkpoint intact (--resume goes on once there is room again).
#   tests/fault/disk_full.sh BUILD_DIR SAMPLE_DIR [MPIEXEC]
# Mounting needs root (CI runs as root); without it the script exits 77, which ctest reports as
# skipped, with the reason. With MPIEXEC, a checkpoint of 2 ranks is run into the full disk too
# (MPIEXEC's flags: QARAC_MPI_FLAGS, else by its MPI, mpi_flags_of in common.sh).
set -euo pipefail
# Its patterns match in the C locale: under tr_TR.UTF-8 [a-z] leaves out i, and qarac-train's
# error lines went uncounted.
export LC_ALL=C
me=tests/fault/disk_full.sh
[ $# -eq 2 ] || [ $# -eq 3 ] || { echo "usage: $me BUILD_DIR SAMPLE_DIR [MPIEXEC]" >&2; exit 2; }
build=$(cd "$1" && pwd)
sample=$(cd "$2" && pwd)
mpiexec=${3:-}
train=$build/src/cli/qarac-train
prep=$build/src/cli/qarac-prep
export OPENBLAS_NUM_THREADS=1

work=$(mktemp -d "${TMPDIR:-/tmp}/qarac-disk-XXXXXX")
disk=$work/disk
mkdir "$disk"
cleanup() {
  umount "$disk" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
if ! mount -t tmpfs -o size=8m tmpfs "$disk" 2>/dev/null; then
  echo "$me: skipped: cannot mount a tmpfs here (needs root and permission to mount)"
  exit 77
fi

fail() { echo "$me: FAIL: $*" >&2; exit 1; }
# shellcheck source=tests/fault/common.sh
source "$(dirname "$0")/common.sh"
[ -z "$mpiexec" ] || mpi_flags_of "$mpiexec"

# Leaves BYTES free on the tmpfs (a filler file takes the rest); "all" frees the filler.
leave_free() {
  rm -f "$disk/filler"
  [ "$1" != all ] || return 0
  local avail
  avail=$(df --output=avail -B1 "$disk" | tail -1)
  [ "$avail" -le "$1" ] || fallocate -l $((avail - $1)) "$disk/filler"
}

# expect_full LOG WHAT CODE [MOST]: the run failed (CODE non-zero) with one error line (up to MOST:
# one from each rank that met the full disk), each naming a file under the tmpfs and saying that
# there is no space, and left no temporary file.
expect_full() {
  local log=$1 what=$2 code=$3 most=${4:-1} errors
  [ "$code" -ne 0 ] || fail "$what: exit 0 on a full disk"
  [ "$code" -lt 128 ] || fail "$what: killed by signal $((code - 128)) on a full disk: $(tail -3 "$log")"
  local pattern='^(\[[0-9,]+\]<stderr>:)?qarac-[a-z]+: (internal )?error'
  errors=$(grep -cE "$pattern" "$log" || true)
  if [ "$errors" -lt 1 ] || [ "$errors" -gt "$most" ]; then
    fail "$what: $errors error lines, expected 1 to $most: $(tail -3 "$log")"
  fi
  ! grep -E "$pattern" "$log" | grep -v "$disk/.*No space left on device" ||
    fail "$what: an error names no file of the full disk, or not the cause: $(grep -E "$pattern" "$log")"
  local leftovers
  leftovers=$(find "$disk" -name '*.tmp*' | head -3)
  [ -z "$leftovers" ] || fail "$what: temporary files left: $leftovers"
  echo "$what: exit $code, $(grep -E "$pattern" "$log" | sed "s|$disk|<tmpfs>|g")"
}

# qarac-prep writing its task streams into a disk with 64 KiB free.
leave_free 65536
code=0
prep_sample "$disk/data" || code=$?
expect_full "$work/prep.log" "qarac-prep" "$code"
leave_free all
rm -rf "$disk/data"

# The data and a tiny base live off the tmpfs; the runs write into it.
prepare_inputs
run=$disk/run
args=(--model.base "$work/pretrain/export/base" --data.dir "$work/data" --task.ed.batch 8 --task.qa.batch 8
      --task.rs.batch 8 --task.cs.batch 8 --optimizer.warmup 1 --optimizer.lr 1e-3 --train.log_every 1
      --checkpoint.keep 1 --output "$run")
"$train" "${args[@]}" --checkpoint.every 2 --train.steps 2 > "$work/run.log" 2>&1 || fail "the first 2 steps: $(tail -1 "$work/run.log")"
rm -rf "$run/export"
checkpoint_bytes=$(du -sb "$run/checkpoints/step-0000000002" | cut -f1)
digest_before=$(cd "$run/checkpoints" && sha256sum step-0000000002/*)

# The checkpoint of step 4 does not fit: the run stops at it; the one of step 2 is intact.
leave_free $((checkpoint_bytes / 2))
code=0
"$train" "${args[@]}" --checkpoint.every 2 --resume --train.steps 6 > "$work/checkpoint.log" 2>&1 || code=$?
expect_full "$work/checkpoint.log" "checkpoint" "$code"
grep -qE "checkpoint.keep 1 needs room for 2 checkpoints while the newest is written .*: one takes [0-9.]+ MiB, and $run/checkpoints has [0-9.]+ (bytes|MiB) free" \
  "$work/checkpoint.log" || fail "checkpoint: the error does not say what checkpoint.keep 1 needs: $(tail -1 "$work/checkpoint.log")"
[ "$(cd "$run/checkpoints" && sha256sum step-0000000002/*)" = "$digest_before" ] ||
  fail "checkpoint: the checkpoint of step 2 changed"
[ ! -e "$run/checkpoints/step-0000000004" ] || fail "checkpoint: a checkpoint of step 4 exists"

# The same on 2 ranks, each writing its own parts. Before, the rank that failed first removed the
# folder while the other still wrote into it, whose line then gave a false cause ("No such file").
if [ -n "$mpiexec" ]; then
  leave_free 307200  # each rank meets the full disk partway through its parts
  code=0
  "$mpiexec" -np 2 "${mpi_flags[@]}" "$train" "${args[@]}" --checkpoint.every 2 --resume --train.steps 6 \
    > "$work/checkpoint2.log" 2>&1 || code=$?
  expect_full "$work/checkpoint2.log" "checkpoint on 2 ranks" "$code" 2
  [ "$(cd "$run/checkpoints" && sha256sum step-0000000002/*)" = "$digest_before" ] ||
    fail "checkpoint on 2 ranks: the checkpoint of step 2 changed"
fi

# metrics.jsonl with room for a page more (tmpfs allocates by pages) and no checkpoint due: the
# run stops at the first line that does not fit; every line left is whole.
leave_free 4096
code=0
"$train" "${args[@]}" --resume --train.steps 40 --checkpoint.every 100 > "$work/metrics.log" 2>&1 || code=$?
expect_full "$work/metrics.log" "metrics" "$code"
grep -qE '^qarac-train: error: .*metrics.jsonl' "$work/metrics.log" || fail "metrics: the error names another file"
python3 -c 'import json, sys; [json.loads(l) for l in open(sys.argv[1])]' "$run/metrics.jsonl" ||
  fail "metrics: metrics.jsonl holds a line that is not whole JSON"

# The export of a run whose last checkpoint is written: only the export needs room.
leave_free all
"$train" "${args[@]}" --resume --train.steps 4 > "$work/to4.log" 2>&1 || fail "steps 3-4: $(tail -1 "$work/to4.log")"
rm -rf "$run/export"
leave_free 65536
code=0
"$train" "${args[@]}" --resume --train.steps 4 > "$work/export.log" 2>&1 || code=$?
expect_full "$work/export.log" "export" "$code"

# With room again, the run goes on from its last checkpoint to the end.
leave_free all
"$train" "${args[@]}" --resume --train.steps 6 > "$work/end.log" 2>&1 || fail "the resumed run: $(tail -1 "$work/end.log")"
[ -f "$run/export/question_encoder/model.safetensors" ] || fail "the resumed run exported nothing"
python3 - "$run/metrics.jsonl" <<'EOF' || fail "the resumed run's metrics.jsonl"
import collections, json, sys
steps = collections.Counter(r["step"] for r in map(json.loads, open(sys.argv[1])) if not r.get("eval"))
assert steps == collections.Counter(range(1, 7)), sorted(steps.elements())
EOF
echo "$me: every full disk stopped its program with one line and no temporary file; the run went on to the end"
