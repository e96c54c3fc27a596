#!/usr/bin/env bash
# The main job, end to end on one machine: installs what is missing, builds, prepares the sample
# data (data/sample), pre-trains a tiny RoBERTa base by masked LM unless one is given, fine-tunes
# it on the four QARAC tasks, plots the metrics and prints the held-out metrics before and after.
# A few minutes on 2 CPU cores.
#
#   bash launch/quickstart.sh [options] [-- qarac-train options for the fine-tuning]
#     --out DIR        run directory (default runs/quickstart); must be empty or absent
#     --force          replace a previous quickstart run in --out
#     --base DIR       start from this Hugging Face RoBERTa directory (config.json,
#                      model.safetensors, with its MLM head for the forgetting monitor) instead of
#                      pre-training the tiny base
#     --tokenizer DIR  tokenizer of the data and the forgetting monitor (default: --base's when it
#                      holds one, else data/sample/tokenizer)
#     --steps N        fine-tuning steps (default: launch/configs/quickstart.ini's, 600); under
#                      600 the warmup is 5% of them, as the config's 30 of 600
#     --ranks N        MPI ranks of the fine-tuning (default 4: one per task; 1 runs the four
#                      tasks in one process, the QARAC step; any N >= 1 works)
#     --skip-build     use the programs already built (in QARAC_BUILD, else build/)
# e.g. -- --train.device cuda --train.dtype bf16 fine-tunes on a GPU (build with CUDA).
# Environment: QARAC_BUILD, the build directory (default build/); QARAC_CUDA=AUTO|ON|OFF for
# its first configure (as tests/run.sh).
#
# RUN (the run directory) gets: data/{train,heldout}/ (task streams), pretrain/ and finetune/
# (qarac-train run directories: config.ini, metrics.jsonl, checkpoints/, export/),
# finetune/metrics.svg (and pretrain/metrics.svg), logs/ (each phase's full output).
set -euo pipefail
# Text is matched in the C locale: under tr_TR.UTF-8 [a-z] leaves out i, and the example counts
# of question_answering and consistency went unshown.
export LC_ALL=C
me=launch/quickstart.sh
die() { echo "$me: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; }

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=launch/common.sh
source "$repo/launch/common.sh"
out=runs/quickstart   # relative to the repository; the options' paths are relative to the caller
base=""
tokenizer=""
steps=""
ranks=4
skip_build=0
force=0
finetune_args=()
while (($#)); do
  case "$1" in
    --out|--base|--tokenizer|--steps|--ranks)
      (($# >= 2)) || die "$1 needs a value (see --help)"
      case "$1" in
        --out) out=$(realpath -m -- "$2") ;;
        --base) base=$(realpath -m -- "$2") ;;
        --tokenizer) tokenizer=$(realpath -m -- "$2") ;;
        --steps) steps=$2 ;;
        --ranks) ranks=$2 ;;
      esac
      shift 2 ;;
    --force) force=1; shift ;;
    --skip-build) skip_build=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; finetune_args=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
build=$(realpath -m -- "${QARAC_BUILD:-$repo/build}")
cd "$repo"
out=$(realpath -m -- "$out")
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || die "--ranks must be a positive integer, not '$ranks'"
if [ -n "$steps" ]; then
  [[ "$steps" =~ ^[1-9][0-9]*$ ]] || die "--steps must be a positive integer, not '$steps'"
  # The config's warmup, 30 steps, must stay shorter than the run: 5% of a shorter one, unless
  # the options after -- set it.
  [[ " ${finetune_args[*]} " == *" --optimizer.warmup"[\ =]* ]] || ((steps >= 600)) ||
    finetune_args=(--optimizer.warmup $((steps / 20)) "${finetune_args[@]}")
  finetune_args=(--train.steps "$steps" "${finetune_args[@]}")
fi
if ((skip_build)); then
  for p in qarac-prep qarac-train; do
    [ -x "$build/src/cli/$p" ] || die "--skip-build: $build/src/cli/$p is missing; run without --skip-build"
  done
fi

# --- Checks before any work: the inputs, and a run directory that may be written.
if [ -n "$base" ]; then
  for f in config.json model.safetensors; do
    [ -f "$base/$f" ] || die "--base $base: no $f there (a Hugging Face RoBERTa directory is needed)"
  done
fi
if [ -z "$tokenizer" ]; then
  tokenizer=$repo/data/sample/tokenizer
  [ -z "$base" ] || ! has_tokenizer "$base" || tokenizer=$base
fi
has_tokenizer "$tokenizer" || die "tokenizer $tokenizer: neither tokenizer.json nor vocab.json + merges.txt"

marker=$out/.qarac-quickstart   # tells --force that the directory is a quickstart run
if [ -e "$out" ] && [ ! -d "$out" ]; then
  die "--out $out exists and is not a directory"
elif [ -d "$out" ] && [ -n "$(ls -A -- "$out")" ]; then
  ((force)) || die "$out is not empty: --force replaces a previous quickstart run, or choose --out DIR"
  [[ "$base/" != "$out/"* && "$tokenizer/" != "$out/"* ]] ||
    die "--force would delete the --base or --tokenizer inside $out: copy it elsewhere first"
  [ -f "$marker" ] || die "$out is not empty and holds no quickstart run (no $(basename "$marker")); not removing it"
  rm -rf -- "$out"
fi
mkdir -p -- "$out/logs"
touch -- "$marker"
logs=$out/logs

# --- Output: numbered phases with their time; each tool's full output in logs/.
phases=6
phase_no=0
t_start=$SECONDS
duration() { local s=$1; if ((s >= 60)); then echo "$((s / 60)) min $((s % 60)) s"; else echo "$s s"; fi; }
phase() {
  phase_no=$((phase_no + 1))
  phase_t0=$SECONDS
  printf '\n== [%d/%d] %s\n' "$phase_no" "$phases" "$1"
}
phase_done() { echo "   done in $(duration $((SECONDS - phase_t0)))${1:+: $1}"; }
# show LOG REGEX: copies its input to LOG and to the terminal the lines matching REGEX, a step's
# progress line only every 1/12 of the run. Under mpirun a rank's stdout is a pseudo-terminal, so
# qarac-train redraws its progress line in place (carriage return, erase to end of line): each
# redraw becomes a line here. Ctrl-C leaves it reading, as train-local.sh stops the ranks with a
# checkpoint: their last lines would meet a closed pipe.
show() {
  local line next=0 n m
  trap '' INT
  stdbuf -oL tr '\r' '\n' | while IFS= read -r line; do
    line=${line//$'\e[K'/}
    [ -n "$line" ] || continue
    printf '%s\n' "$line" >&3
    [[ $line =~ $2 ]] || continue
    if [[ $line =~ ^step\ ([0-9]+)/([0-9]+) ]]; then
      n=${BASH_REMATCH[1]} m=${BASH_REMATCH[2]}
      ((n >= next || n == m)) || continue
      next=$((n + (m + 11) / 12))
    fi
    printf '   %s\n' "$line"
  done 3>"$1"
}
# logged_showing NAME REGEX COMMAND...: logged (launch/common.sh), the lines matching REGEX shown
# as it runs.
logged_showing() {
  local name=$1 regex=$2 rc=0
  shift 2
  { printf '%q ' "$@"; printf '\n'; } >"$logs/$name.cmd"
  "$@" 2>&1 | show "$logs/$name.log" "$regex" || rc=$?
  ((rc == 0)) || log_failed "$name" "$rc"
}

echo "QARAC-MT quickstart: run directory $out"

phase "dependencies (Debian packages; only those missing are installed)"
logged install-deps bash "$repo/launch/install-deps.sh" --job
phase_done

phase "build (Release, -j2, into $build)"
if ((skip_build)); then
  phase_done "skipped (--skip-build)"
else
  # nvcc is usually not on PATH in a non-interactive shell even when the toolkit is installed.
  if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH=/usr/local/cuda/bin:$PATH
  fi
  # Configured once, as tests/run.sh does (so that both share build/); afterwards cmake --build
  # reconfigures by itself when a CMakeLists.txt changed. Only the programs the job and its
  # exports' model cards name are built here.
  if [ ! -f "$build/CMakeCache.txt" ]; then
    logged configure cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release \
      -DQARAC_CUDA="${QARAC_CUDA:-AUTO}" -DQARAC_TESTS=ON
  fi
  logged_showing build '^\[ *[0-9]+%\] Built target' cmake --build "$build" -j2 \
    --target qarac-prep qarac-train qarac-embed qarac-generate
  phase_done
fi
prep=$build/src/cli/qarac-prep
train=$build/src/cli/qarac-train
# OpenBLAS takes a CPU model it does not know (a cloud VM's) for an old one and runs SSE3
# kernels: qarac-train --version names the core to set (train-local.sh sets it for its ranks too).
# A program that cannot answer is left to the phases below to report.
version=$("$train" --version 2>/dev/null || true)
blas_core=$(sed -n "s/^OpenBLAS .*this CPU's own: OPENBLAS_CORETYPE=\([A-Za-z0-9_]*\).*/\1/p" <<<"$version")
# A machine without the CUDA toolkit (a fresh Debian: no package has nvcc) builds the CPU backend
# alone; said here, not only in logs/configure.log.
cuda=$(sed -n 's/^CUDA backend  *//p' <<<"$version")
case "$cuda" in
  off) echo "   CUDA skipped: $build was configured without nvcc (no CUDA toolkit found): the CPU backend only" ;;
  on*) echo "   CUDA backend $cuda" ;;
esac
if [ -z "${OPENBLAS_CORETYPE+x}" ] && [ -n "$blas_core" ]; then
  export OPENBLAS_CORETYPE=$blas_core
  echo "   OPENBLAS_CORETYPE=$blas_core: OpenBLAS takes this CPU for an older one and would run SSE3 kernels"
fi

phase "data: sample datasets to task streams (tokenizer $tokenizer)"
# The longest field the model's position table holds: RoBERTa counts 2 positions beyond it.
if [ -n "$base" ]; then
  max_positions=$(base_positions "$base" "$tokenizer") || exit 1
else
  max_positions=130   # the tiny base: 128 tokens, as long as every sample example
fi
max_length=$((max_positions - 2))
data=$out/data
sample=$repo/data/sample
logged prep-train "$prep" --tokenizer "$tokenizer" --out "$data/train" --max-length "$max_length" \
  --text "$sample/corpus_train.txt" --wikiqa "$sample/WikiQA-train.tsv" \
  --avicenna "$sample/Avicenna_Train.csv" --snli "$sample/snli_1.0_train.jsonl"
logged prep-heldout "$prep" --tokenizer "$tokenizer" --out "$data/heldout" --max-length "$max_length" \
  --text "$sample/corpus_heldout.txt" --wikiqa "$sample/WikiQA-dev.tsv" \
  --avicenna "$sample/Avicenna_Test.csv" --snli "$sample/snli_1.0_dev.txt"
grep -E '^[a-z_]+: [0-9]+ examples' "$logs/prep-train.log" | sed 's/^/   train   /'
grep -E '^[a-z_]+: [0-9]+ examples' "$logs/prep-heldout.log" | sed 's/^/   heldout /'
phase_done

# The fine-tuning runs under mpirun (launch/train-local.sh: binding, one BLAS thread per rank
# when there are more ranks than cores): by default 4 ranks, one per task, each holding the
# models its task uses; the gradients of every model meet in an all-reduce over its holders.
progress='^(step |qarac-train: |\[qarac [0-9:]+ (warn|error)|\[qarac [0-9:]+ info( r0)?\] (eval|exported|replica))'

if [ -n "$base" ]; then
  phase "base model: given, $base"
  phase_done "no pre-training"
else
  phase "base model: masked-LM pre-training of a tiny RoBERTa (launch/configs/quickstart-pretrain.ini)"
  # One process: a single task (the text stream) and seconds of work.
  logged_showing pretrain "$progress" "$train" --config "$repo/launch/configs/quickstart-pretrain.ini" \
    --output "$out/pretrain" --model.max_positions "$max_positions" --model.tokenizer "$tokenizer" \
    --data.dir "$data/train" --eval.dir "$data/heldout"
  base=$out/pretrain/export/base
  phase_done "$base"
fi

phase "fine-tuning on the four tasks (launch/configs/quickstart.ini, $ranks MPI rank(s))"
logged_showing finetune "$progress" env QARAC_BUILD="$build" bash "$repo/launch/train-local.sh" -n "$ranks" -- \
  --config "$repo/launch/configs/quickstart.ini" \
  --output "$out/finetune" --model.base "$base" --data.dir "$data/train" \
  --eval.dir "$data/heldout" --eval.tokenizer "$tokenizer" "${finetune_args[@]}"
phase_done

phase "plots"
plots=()
for run in pretrain finetune; do
  [ -s "$out/$run/metrics.jsonl" ] || continue
  logged "plot-$run" bash "$repo/launch/plot-metrics.sh" "$out/$run"
  plots+=("$out/$run/metrics.svg")
done
phase_done

printf '\n== summary\n\n'
bash "$repo/launch/metrics-table.sh" "$out/finetune"
echo
echo "fine-tuned models (Hugging Face directories): $out/finetune/export/"
printf 'their vectors: %q --model %q --input TEXTS (and %q)\n' "$build/src/cli/qarac-embed" \
  "$out/finetune/export/answer_encoder" "$build/src/cli/qarac-generate"
for plot in "${plots[@]}"; do echo "plot:    $plot"; done
printf 'metrics: %s (again: bash %q %q)\n' "$out/finetune/metrics.jsonl" "$repo/launch/metrics-table.sh" "$out/finetune"
echo "logs:    $logs/"
echo
echo "quickstart finished in $(duration $((SECONDS - t_start)))"
