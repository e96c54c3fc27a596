#!/usr/bin/env bash
# launch/forgetting.sh: its option handling (each mistake refused in one line before any work),
# then a tiny end-to-end --quick experiment with the build's programs (a one-step base, 8 steps,
# the sequential and the parallel run) checking the phases, forgetting.csv, forgetting.svg and
# the table, --summarise-only, and the srun launcher under the stand-in srun.
#   bash tests/launch/test_forgetting.sh CASE [MPIEXEC BUILD_DIR]   (CASE: options, quick, srun)
# Exit 0 when every check of the case holds; else 1, naming each failed check; 77 when jq or
# gnuplot is missing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
case_name=${1:?usage: test_forgetting.sh CASE [MPIEXEC BUILD_DIR]}
# shellcheck source=tests/launch/checks.sh
source "$(dirname "$0")/checks.sh"
# shellcheck source=tests/launch/end_to_end.sh
source "$(dirname "$0")/end_to_end.sh"
unset SLURM_JOB_ID SLURM_NTASKS SLURM_NTASKS_PER_NODE QARAC_SRUN_MPI QARAC_SRUN_OPTS
# forgetting ARGS...: runs the script; its output in out.txt, its status in rc.
forgetting() {
  rc=0
  bash "$repo/launch/forgetting.sh" "$@" >"$work/out.txt" 2>&1 || rc=$?
}
lines() { wc -l <"$work/out.txt"; }
# refused WHAT TEXT ARGS...: the script exits 1 with one line holding TEXT, and writes nothing.
refused() {
  local what=$1 text=$2
  shift 2
  forgetting --out "$work/refused" "$@"
  check "$what: exit 1 (got $rc)" test "$rc" = 1
  check "$what: one line (got $(lines))" test "$(lines)" = 1
  check "$what: says '$text'" has "$work/out.txt" "$text"
  check "$what: nothing written" test ! -e "$work/refused"
}
test_options() {
  forgetting --help
  check "--help: exit 0 (got $rc)" test "$rc" = 0
  check "--help: the usage" has "$work/out.txt" "bash launch/forgetting.sh --quick [options]"
  check "--help: the runs" has "$work/out.txt" "(c) rehearsal"
  refused "an unknown option" "launch/forgetting.sh: error: unknown option '--bogus'" --quick --bogus
  refused "a missing value" "--steps needs a value" --quick --steps
  refused "no inputs without --quick" "--base is needed (or --quick" --steps 8
  refused "no --steps without --quick" "--steps is needed" --base "$work" --data "$work" --eval-data "$work"
  refused "--quick with --data" "--quick prepares the sample data itself" --quick --data "$work"
  refused "an unknown run" "--runs: unknown run 'e'" --quick --runs a,e
  refused "too few steps" "--steps 3: the sequential run needs 4 at least" --quick --steps 3
  refused "a bad step count" "--steps must be a positive integer, not 'x'" --quick --steps x
  # Bash's arithmetic would read 08 as octal (an error) and 010 as 8.
  refused "a warmup with a leading zero" "--warmup must be a non-negative integer (no leading zero), not '08'" \
    --quick --steps 40 --warmup 08
  refused "a warmup as long as the first phase" "--warmup 5 is not shorter than the first sequential phase (5 steps" \
    --quick --steps 20 --warmup 5
  refused "a bad launcher" "--launcher must be local or srun" --quick --launcher ssh
  refused "a bad device" "--device must be cpu or cuda" --quick --device tpu
  refused "an option the script sets, after --" "--train.steps after -- is set by launch/forgetting.sh" \
    --quick -- --train.steps 5
  refused "a task weight after --" "--task.qa.weight after -- is set" --quick -- --task.qa.weight=2
  # The stand-in qarac-train knows none of the options of runs c and d (and qarac-prep is not
  # reached).
  mkdir -p "$work/fake/src/cli"
  ln -s "$repo/tests/launch/fake/qarac-train" "$work/fake/src/cli/qarac-train"
  printf '#!/bin/sh\nexit 1\n' >"$work/fake/src/cli/qarac-prep"
  chmod +x "$work/fake/src/cli/qarac-prep"
  QARAC_BUILD=$work/fake refused "a run whose option qarac-train lacks" \
    "run c (rehearsal) needs qarac-train's --task.mlm.weight, which $work/fake/src/cli/qarac-train lacks" --quick --runs a,c
  mkdir -p "$work/other-base"
  echo '{"max_position_embeddings": 130, "vocab_size": 5}' >"$work/other-base/config.json"
  touch "$work/other-base/model.safetensors"
  QARAC_BUILD=$work/fake refused "--quick with a base of another vocabulary" \
    "tokenizer $repo/data/sample/tokenizer has 1500 tokens, the base 5: give the base's with --tokenizer DIR" \
    --quick --runs a,b --base "$work/other-base"
  refused "srun outside an allocation" "--launcher srun runs inside a Slurm allocation" --quick --launcher srun
  mkdir -p "$work/full"
  touch "$work/full/something"
  forgetting --quick --runs a,b --out "$work/full"
  check "a non-empty --out: exit 1 (got $rc)" test "$rc" = 1
  check "a non-empty --out: one line" test "$(lines)" = 1
  check "a non-empty --out: says so" has "$work/out.txt" "is not empty: --force replaces a previous forgetting experiment"
  forgetting --quick --runs a,b --out "$work/full" --force
  check "--force on a directory of something else: exit 1 (got $rc)" test "$rc" = 1
  check "--force on a directory of something else: kept" test -f "$work/full/something"
  # launch/common.sh's prepare_out keeps an input inside the directory it replaces whichever
  # path, physical or through a symbolic link (a repository under a linked home), names each.
  mkdir -p "$work/previous/base"
  touch "$work/previous/.qarac-forgetting" "$work/previous/base/config.json"
  ln -s "$work" "$work/link"
  rc=0
  (die() { echo "$*"; exit 1; }
   out=$work/link/previous marker=$work/link/previous/.qarac-forgetting force=1
   source "$repo/launch/common.sh"
   prepare_out "forgetting experiment" "$work/previous/base") >"$work/out.txt" 2>&1 || rc=$?
  check "--force over an input, --out through a link: exit 1 (got $rc)" test "$rc" = 1
  check "--force over an input, --out through a link: says so" has "$work/out.txt" "--force would delete $work/previous/base inside"
  check "--force over an input, --out through a link: kept" test -f "$work/previous/base/config.json"
  forgetting --summarise-only --out "$work/none"
  check "--summarise-only without runs: exit 1 (got $rc)" test "$rc" = 1
  check "--summarise-only without runs: says so" has "$work/out.txt" "--summarise-only: no runs in $work/none"
}

test_quick() {
  tiny_base
  local out=$work/experiment csv=$work/experiment/forgetting.csv
  forgetting --quick --base "$work/base/export/base" --tokenizer "$repo/data/sample/tokenizer" --out "$out" \
    --steps 8 --eval-every 4 --runs b,a --ranks 2 -- --eval.examples 16 --eval.decoded 4
  check "exit 0 (got $rc)" test "$rc" = 0
  check "the CSV's columns" test "$(head -n 1 "$csv")" = \
    "run,step,ed.token_accuracy,qa.retrieval_accuracy,qa.selection_accuracy,rs.token_accuracy,cs.accuracy,forgetting.mlm_loss"
  # Sequential: step 0, every 4 steps and each phase's end (2, 4, 6, 8); parallel: 0, 4, 8.
  check "the CSV's rows: the runs in order, each evaluated step" test "$(cut -d, -f1,2 "$csv" | tail -n +2 | tr '\n' ' ')" = \
    "sequential,0 sequential,2 sequential,4 sequential,6 sequential,8 parallel,0 parallel,4 parallel,8 "
  check "every field of the CSV measured" test "$(tail -n +2 "$csv" | grep -c ',,\|,$')" = 0
  check "both runs start from the base's forgetting.mlm_loss" \
    test "$(awk -F, '$2 == 0 { print $8 }' "$csv" | sort -u | wc -l)" = 1
  check "the SVG" has "$out/forgetting.svg" "<svg"
  check "each run's own plot" test -s "$out/runs/sequential/metrics.svg" -a -s "$out/runs/parallel/metrics.svg"
  check "phase 1 trains ed alone" has "$out/logs/sequential-1-ed.cmd" \
    "--train.steps 2 --task.ed.weight 1 --task.qa.weight 0 --task.rs.weight 0 --task.cs.weight 0"
  check "phase 2 resumes and trains qa alone" has "$out/logs/sequential-2-qa.cmd" \
    "--resume --train.steps 4 --task.ed.weight 0 --task.qa.weight 1"
  check "phase 1 has no --resume" lacks_text "$out/logs/sequential-1-ed.cmd" "--resume"
  check "the parallel run trains all four" has "$out/logs/parallel.cmd" \
    "--train.steps 8 --task.ed.weight 1 --task.qa.weight 1 --task.rs.weight 1 --task.cs.weight 1"
  check "every run: a constant rate after the warmup" has "$out/logs/parallel.cmd" "--optimizer.warmup 0 --optimizer.decay constant"
  check "the passthrough last" has "$out/logs/parallel.cmd" "--eval.examples 16 --eval.decoded 4"
  check "a checkpoint at each phase's end" test -d "$out/runs/sequential/checkpoints/step-0000000006"
  check "the table's rows" has_re "$work/out.txt" "^sequential +8 +[0-9.]+ +[0-9.]+ +[-+][0-9.]+ \("
  check "the table's parallel row" has_re "$work/out.txt" "^parallel +8 "
  check "which forgets more" has_re "$work/out.txt" "^(sequential|parallel) forgets more, as measured|^sequential and parallel forget as much"
  check "what the sequential run kept of each task" has_re "$work/out.txt" "^  ed.token_accuracy +phase 1 \(ed\) ends at step +2: "
  cp "$csv" "$work/first.csv"
  forgetting --summarise-only --out "$out" --runs a,b
  check "--summarise-only: exit 0 (got $rc)" test "$rc" = 0
  check "--summarise-only: the same CSV" cmp -s "$csv" "$work/first.csv"
  forgetting --summarise-only --out "$out" --runs b,c
  check "--summarise-only of a run and one not run: exit 0 (got $rc)" test "$rc" = 0
  check "--summarise-only of b,c: parallel's rows only" test "$(cut -d, -f1 "$csv" | tail -n +2 | sort -u)" = parallel
  check "no verdict without the sequential run" lacks_text "$work/out.txt" "forgets more"
  # Held-out QA data without candidate sentences has no selection metrics: empty fields, no panel.
  local run
  for run in sequential parallel; do
    jq -c 'del(."qa.selection_accuracy", ."qa.selection_chance")' "$out/runs/$run/metrics.jsonl" >"$work/m.jsonl"
    mv "$work/m.jsonl" "$out/runs/$run/metrics.jsonl"
  done
  forgetting --summarise-only --out "$out"
  check "without selection metrics: exit 0 (got $rc)" test "$rc" = 0
  check "without selection metrics: the field empty" test "$(cut -d, -f5 "$csv" | tail -n +2 | sort -u)" = ""
  check "without selection metrics: no panel" lacks_text "$out/forgetting.svg" "qa.selection_accuracy"
  check "without selection metrics: a dash in the table" has_re "$work/out.txt" "^parallel +8 .* - +[0-9.]+ +[0-9.]+$"
}

# --launcher srun inside an allocation: srun with slurm/common.sh's options and the allocation's
# ranks, under the stand-in srun (which runs the program once).
test_srun() {
  tiny_base
  local out=$work/experiment
  PATH="$repo/tests/launch/fake:$PATH" FAKE_LOG=$work/log SLURM_JOB_ID=7 SLURM_NTASKS=2 SLURM_NTASKS_PER_NODE=2 \
    forgetting --quick --base "$work/base/export/base" --tokenizer "$repo/data/sample/tokenizer" --out "$out" \
    --steps 4 --eval-every 4 --runs b --launcher srun -- --eval.examples 16 --eval.decoded 4
  check "exit 0 (got $rc)" test "$rc" = 0
  check "srun with labels, the MPI plugin, the allocation's 2 ranks on 1 node" has "$work/log" \
    "srun --label --kill-on-bad-exit=1 --mpi=pmix -n 2 -N 1 $build/src/cli/qarac-train --config"
  check "the CSV's rows" test "$(cut -d, -f1,2 "$out/forgetting.csv" | tail -n +2 | tr '\n' ' ')" = \
    "parallel,0 parallel,4 "
}

lacks_text() { ! grep -qF -- "$2" "$1"; }  # lacks_text FILE TEXT
declare -F "test_$case_name" >/dev/null || { echo "test_forgetting.sh: no case '$case_name'" >&2; exit 2; }
"test_$case_name"
finish launch/forgetting.sh
