#!/usr/bin/env bash
# launch/quickstart.sh, the main job: its option handling (each mistake refused in one line before
# anything is written or removed), then a tiny run with the build's programs (a one-step base,
# 2 fine-tuning steps on 2 ranks, from another working directory into a path with a space),
# checking the summary, the warmup fitted to the short run, and that the commands it prints and
# saves run from anywhere.
#   bash tests/launch/test_quickstart.sh CASE [MPIEXEC BUILD_DIR]   (CASE: options, run)
# Exit 0 when every check of the case holds; else 1, naming each failed check; 77 when jq or
# gnuplot is missing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
case_name=${1:?usage: test_quickstart.sh CASE [MPIEXEC BUILD_DIR]}
# shellcheck source=tests/launch/checks.sh
source "$(dirname "$0")/checks.sh"
# shellcheck source=tests/launch/end_to_end.sh
source "$(dirname "$0")/end_to_end.sh"
# quickstart ARGS...: runs the script from $work; its output in out.txt, its status in rc.
quickstart() {
  rc=0
  (cd "$work" && bash "$repo/launch/quickstart.sh" "$@") >"$work/out.txt" 2>&1 || rc=$?
}
lines() { wc -l <"$work/out.txt"; }
# refused WHAT TEXT ARGS...: the script exits 1 with one line holding TEXT.
refused() {
  local what=$1 text=$2
  shift 2
  quickstart "$@"
  check "$what: exit 1 (got $rc)" test "$rc" = 1
  check "$what: one line (got $(lines))" test "$(lines)" = 1
  check "$what: says '$text'" has "$work/out.txt" "$text"
}
test_options() {
  quickstart --help
  check "--help: exit 0 (got $rc)" test "$rc" = 0
  check "--help: the usage" has "$work/out.txt" "bash launch/quickstart.sh [options]"
  refused "an unknown option" "launch/quickstart.sh: error: unknown option '--bogus'" --bogus
  refused "a bad step count" "--steps must be a positive integer, not '0'" --steps 0 --out out
  refused "a bad rank count" "--ranks must be a positive integer, not 'x'" --ranks x --out out
  check "nothing written" test ! -e "$work/out"
  QARAC_BUILD=$work/no-build refused "--skip-build without programs" \
    "--skip-build: $work/no-build/src/cli/qarac-prep is missing" --skip-build --out out
  check "nothing written" test ! -e "$work/out"
  # --force replaces only a quickstart run, and never one holding the --base it is given.
  mkdir -p "$work/mine" "$work/old/base"
  touch "$work/mine/notes.txt" "$work/old/.qarac-quickstart" "$work/old/base/config.json" "$work/old/base/model.safetensors"
  refused "--force on another folder" "holds no quickstart run (no .qarac-quickstart); not removing it" --out mine --force
  check "it stays" test -f "$work/mine/notes.txt"
  refused "--force over the --base" "--force would delete the --base or --tokenizer inside" --out old --force --base old/base
  check "it stays" test -f "$work/old/base/config.json"
}

test_run() {
  local out="$work/run dir"
  tiny_base
  quickstart --out "$out" --base "$work/base/export/base" --steps 2 --ranks 2 --skip-build
  check "exit 0 (got $rc)" test "$rc" = 0
  check "the summary at step 2" has_re "$work/out.txt" "step 0 +step 2"
  check "every task in it" has_re "$work/out.txt" "consistency +accuracy"
  check "the example counts of every task's streams" test "$(LC_ALL=C grep -cE '^ +(train|heldout) +[a-z_]+: [0-9]+ examples' "$work/out.txt")" = 8
  check "the warmup fits the 2 steps (5% of them)" has "$out/logs/finetune.cmd" "--train.steps 2 --optimizer.warmup 0"
  # Whether the build has the CUDA backend, said either way (a fresh Debian has no nvcc).
  if grep -qE '^CUDA backend +off$' <<<"$("$build/src/cli/qarac-train" --version)"; then
    check "CUDA said to be skipped" has_re "$work/out.txt" "^   CUDA skipped: .* configured without nvcc"
  else
    check "the CUDA backend named" has_re "$work/out.txt" "^   CUDA backend on, architectures "
  fi
  # What it prints and saves runs from any working directory.
  local again
  again=$(sed -n 's/^metrics: .* (again: \(.*\))$/\1/p' "$work/out.txt")
  check "the hint to print the table again" test -n "$again"
  (cd / && eval "$again") >"$work/again.txt" 2>&1 || true
  check "the hint runs from /" has_re "$work/again.txt" "step 0 +step 2"
  check "the saved fine-tuning command names the scripts by their full path" has "$out/logs/finetune.cmd" \
    "bash $repo/launch/train-local.sh -n 2 -- --config $repo/launch/configs/quickstart.ini"
}

declare -F "test_$case_name" >/dev/null || { echo "test_quickstart.sh: no case '$case_name'" >&2; exit 2; }
"test_$case_name"
finish launch/quickstart.sh
