# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154  # work, build and mpiexec go to the sourcing test; failures and case_name come from it
# Sourced by the launch tests that run a script end to end with the build's programs, after
# checks.sh and with `repo` set; their arguments are CASE [MPIEXEC BUILD_DIR]. Skips the test
# (exit 77) without jq or gnuplot, which the scripts need; sets `build` and `mpiexec`, exports
# them as QARAC_BUILD and MPIRUN, and makes the scratch folder `work`, removed on exit.
mpiexec=${2:-mpirun}
build=$(realpath -m -- "${3:-$repo/build}")
if ! command -v jq >/dev/null || ! command -v gnuplot >/dev/null; then echo "jq or gnuplot missing: skipped"; exit 77; fi
work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT
export QARAC_BUILD=$build MPIRUN=$mpiexec

# A tiny base in $work/base/export/base: one masked-LM step of the quickstart's tiny RoBERTa on
# the prepared sample text.
tiny_base() {
  local sample=$repo/data/sample
  "$build/src/cli/qarac-prep" --tokenizer "$sample/tokenizer" --out "$work/text" --max-length 128 \
    --text "$sample/corpus_train.txt" >"$work/prep.log" 2>&1
  "$build/src/cli/qarac-train" --config "$repo/launch/configs/quickstart-pretrain.ini" --output "$work/base" \
    --model.max_positions 130 --model.tokenizer "$sample/tokenizer" --data.dir "$work/text" \
    --train.steps 1 --optimizer.warmup 0 --checkpoint.every 0 >"$work/base.log" 2>&1
}

# The end of a test case: its failures with the output of the script's last run ($work/out.txt),
# exit 1; else says that every check holds.
finish() {
  if ((failures)); then
    echo "--- output of the last run of $1:" >&2
    cat "$work/out.txt" >&2
    exit 1
  fi
  echo "$(basename "$0") $case_name: every check holds"
}
