#!/usr/bin/env bash
# The GPU check in one call: every GPU test, qarac-parity on CUDA, the NCCL backend, the kernels
# with two paths timed path against path (tests/bench/bench_kernels), qarac-bench on the issue's
# workloads (the RoBERTa-base classifier step; the QARAC step) and the PyTorch baseline of the
# same workloads and kernels, issue 16's speed goals against those figures (tests/device/goals.py),
# qarac-train under mpirun with NCCL and end to end on one GPU,
# the classifier and QARAC steps' GPU time per kernel family and the GPU's idle share
# (tests/device/breakdown.sh), the exports under transformers (tests/python), then a summary
# table. Runs a bundle made by tests/device/bundle.sh
# (carried to the GPU machine) or, without one, builds here.
#   tests/device/run.sh [BUNDLE_DIR]        (default: .device, holding bundle.tgz)
#
# A device session has minutes, and one call ends at its time limit with whatever was not saved
# lost, so the stages run in the order of what they tell (correctness first, then the figures the
# issue asks for), each ends by the deadline, a stage that would start within 20 s of it is
# reported as skipped, and the logs and the summary so far are copied to $OUT after every stage.
# Environment:
#   QARAC_DEVICE_DEADLINE  seconds after which running stages are stopped (killed 10 s later)
#                          and none starts (none with under 20 s left); default 540: a 600 s
#                          call with time left to pack the logs
#   QARAC_DEVICE_STAGES    the stages to run, comma-separated (default: all, in this order:
#                          correctness first, compute-sanitizer's the one check the CI's CUDA
#                          emulator cannot make, then the issue's figures):
#                          tests, parity, sanitize, nccl, dist, kernels, bench, torch, goals,
#                          e2e, python, breakdown
#   QARAC_DEVICE_BUILD     1: without a bundle, build here (sm_90 only); otherwise a missing
#                          bundle ends the run at once (a build takes most of a session's minutes)
#   QARAC_DEVICE_BIN       run the programs of this folder (a bundle's bin/ or a build's), with
#                          neither bundle nor build; the golden dumps are then tests/golden/data
#   QARAC_BENCH_ITERS      timed steps per benchmark (default 10)
# Exit status: 0 all ran and passed, 1 something failed, 2 nothing failed but stages were
# skipped at the deadline.
# shellcheck disable=SC2317  # the stage_* functions are called by name
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
bundle=${1:-.device}
iters=${QARAC_BENCH_ITERS:-10}
deadline=${QARAC_DEVICE_DEADLINE:-540}
stages=${QARAC_DEVICE_STAGES:-tests,parity,sanitize,nccl,dist,kernels,bench,torch,goals,e2e,python,breakdown}
log=$(mktemp -d)
summary=()
status=0
skipped=0

# ---- where the programs come from
qlib=${LD_LIBRARY_PATH:-}
golden=tests/golden/data
if [ -n "${QARAC_DEVICE_BIN:-}" ]; then
  bin=$QARAC_DEVICE_BIN
elif [ -f "$bundle/bundle.tgz" ]; then
  tar xzf "$bundle/bundle.tgz" -C "$log"
  bin=$log/bundle/bin
  golden=$log/bundle/golden
  qlib=$log/bundle/lib:$qlib
elif [ "${QARAC_DEVICE_BUILD:-0}" != 1 ]; then
  echo "run.sh: no $bundle/bundle.tgz (make it with tests/device/bundle.sh and name $bundle in the device call's" \
    "carry), and QARAC_DEVICE_BUILD=1 is not set to build here instead" >&2
  exit 1
else
  echo "== no bundle in $bundle: building with cmake (sm_90)"
  if ! { cmake -S . -B build-device -DCMAKE_BUILD_TYPE=Release -DQARAC_CUDA=ON -DQARAC_CUDA_ARCHS=90 >"$log/cmake" 2>&1 &&
         cmake --build build-device -j"$(nproc)" >>"$log/cmake" 2>&1; }; then
    tail -30 "$log/cmake"
    exit 1
  fi
  bin=build-device/bin-links
  mkdir -p "$bin"
  ln -sf "$PWD"/build-device/src/cli/qarac-* "$PWD"/build-device/tests/unit/test_cuda_* "$PWD"/build-device/tests/unit/test_backend_ops \
    "$PWD"/build-device/tests/mpi/test_nccl "$PWD"/build-device/tests/bench/bench_kernels "$bin/"
fi
# CUDA's libraries: the toolkit's folder and the Python wheels' (cuDNN, NCCL live there). Only
# our programs get this path: the bundled Debian libraries must not shadow PyTorch's.
site=$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)
for d in /usr/local/cuda/lib64 "$site"/nvidia/*/lib; do
  [ -d "$d" ] && qlib="$qlib:$d"
done

# Open MPI from the machine, not the bundle: its mpirun loads its own MCA components, which must
# be of the libmpi the ranks run (Debian's 4.1.4 libmpi beside Ubuntu's 4.1.6 components can
# fail MPI_Init), and libmpi.so.40 keeps one interface across 4.x. Only Open MPI's runtime moves:
# a soname does not promise the rest (HDF5 aborts on a release other than its headers'). Should
# the machine's copies leave a symbol of the programs unresolved, the bundle's are put back.
unresolved() { for f in "$bin"/*; do LD_LIBRARY_PATH="$qlib" ldd -r "$f" 2>&1; done | grep -cE 'not found|undefined symbol'; }
use_the_machines_mpi() {
  local libs=$1 mpilib known before
  mpilib=$(dirname "$(command -v mpirun || echo /)")/../lib
  known=$({ ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null)
  [ -e "$mpilib/libmpi.so.40" ] || grep -q 'libmpi\.so\.40 ' <<<"$known" || return 0
  before=$(unresolved)
  mkdir -p "$libs.bundled"
  mv "$libs"/lib{mpi,open-rte,open-pal,hwloc,event}*.so* "$libs.bundled/" 2>/dev/null
  [ -e "$mpilib/libmpi.so.40" ] && qlib=$qlib:$(cd "$mpilib" && pwd)
  if (($(unresolved) > before)); then
    mv "$libs.bundled"/* "$libs/"
    echo "== Open MPI: the machine's leaves symbols unresolved; the bundle's (Debian's) is used"
  else
    echo "== Open MPI: the machine's ($(command -v mpirun)), not the bundle's"
  fi
}
[ -d "$log/bundle" ] && use_the_machines_mpi "$log/bundle/lib"
q() { LD_LIBRARY_PATH="$qlib" "$@"; }
# Open MPI 4 refuses to start, even one process on one node, when it finds neither ssh nor rsh
# (open-mpi/ompi#12386); without its rsh launcher it starts local processes itself.
command -v ssh >/dev/null || command -v rsh >/dev/null || export OMPI_MCA_plm=^rsh
mpi=(mpirun --oversubscribe --bind-to none -x LD_LIBRARY_PATH)
[ "$(id -u)" -ne 0 ] || mpi+=(--allow-run-as-root)
sample=data/sample
workloads=("128 64" "512 16")

# ---- time: every timeout is capped by what is left before the deadline
left() { echo $((deadline - SECONDS)); }
# A timeout of at most $1 seconds, and at least 1, that ends by the deadline.
cap() {
  local t=$1 l
  l=$(left)
  ((t > l)) && t=$l
  ((t < 1)) && t=1
  echo "$t"
}
# Adds a summary row: what | result | detail.
row() { summary+=("$1|$2|$3"); }
# A command's exit status as a result: 77 is a program's own skip; a timeout's (124, 137 after
# -k) once the deadline has come is the deadline's cut, not a failure of what it ran.
result_of() {
  case $1 in
    0) echo passed ;;
    77) echo skipped ;;
    124 | 137) if (($(left) <= 1)); then echo cut; else echo FAILED; fi ;;
    *) echo FAILED ;;
  esac
}
# FAILED makes the run fail; a cut counts as skipped at the deadline.
fail_if() {
  [ "$1" = FAILED ] && status=1
  [ "$1" = cut ] && skipped=1
  return 0
}

print_summary() {
  local s what result detail width=0 result_width=0
  echo "==================== summary ($SECONDS s) ===================="
  for s in "${summary[@]}"; do
    IFS='|' read -r what result detail <<<"$s"
    ((${#what} > width)) && width=${#what}
    ((${#result} > result_width)) && result_width=${#result}
  done
  for s in "${summary[@]}"; do
    IFS='|' read -r what result detail <<<"$s"
    printf '%-*s %-*s %s\n' "$width" "$what" "$result_width" "$result" "$detail"
  done
}
# The logs and the summary so far, to $OUT (the device tool brings them back even when the call
# is stopped later). The profiles themselves stay out (their CSVs are kept): they could outgrow
# what the tool returns.
save_logs() {
  [ -n "${OUT:-}" ] || return 0
  print_summary >"$OUT/summary.txt"
  tar czf "$OUT/logs.tgz" -C "$log" --exclude bundle --exclude '*.nsys-rep' --exclude '*.sqlite' --exclude '*.qdstrm' \
    . 2>/dev/null
}

# ---- the stages

# GoogleTest binaries; each prints its own failures. test_backend_ops runs every op on CUDA
# f32/bf16 against the CPU in f64 and, with QARAC_BACKEND_OPS_MARGINS=1, prints each output's
# error as a fraction of its bound (the margins to record next to the bounds). The same binaries'
# runs on the CUDA emulator (names with "Emulated" or "emulated") are CI's, not the GPU's.
stage_tests() {
  local t name result counts
  export QARAC_BACKEND_OPS_MARGINS=1
  for t in "$bin"/test_backend_ops "$bin"/test_cuda_*; do
    name=$(basename "$t")
    q timeout -k 10 "$(cap 150)" "$t" --gtest_brief=1 --gtest_filter='-*mulated*' >"$log/$name" 2>&1
    result=$(result_of $?)
    # On a GPU machine no GPU test may skip: a skip means the check did not happen (no device
    # found, a build without CUDA).
    [ "$result" = passed ] && grep -q '^\[  SKIPPED \]' "$log/$name" && result=SKIPPED
    [ "$result" = SKIPPED ] && status=1
    fail_if "$result"
    counts=$(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$log/$name" | tr '\n' ' ')
    echo "== $name: $result $counts"
    [ "$result" = passed ] || grep -E 'Failure|error|Expected|Which is|actual|Skipped' "$log/$name" | head -40
    row "$name" "$result" "$counts"
  done
}

# Parity with Hugging Face on the GPU.
stage_parity() {
  local dt tol result
  for dt in f32 bf16; do
    tol=1e-4
    [ "$dt" = bf16 ] && tol=${QARAC_BF16_PARITY_TOL:-5e-2}
    q timeout -k 10 "$(cap 120)" "$bin/qarac-parity" "$golden/tiny_dev" --device cuda --dtype "$dt" --tolerance "$tol" >"$log/parity_$dt" 2>&1
    result=$(result_of $?)
    fail_if "$result"
    echo "== qarac-parity cuda $dt: $result"
    cat "$log/parity_$dt"
    row "parity cuda $dt" "$result" "$(tail -1 "$log/parity_$dt")"
  done
}

# The NCCL backend, one rank per GPU: with several GPUs the all-reduce sums across them.
stage_nccl() {
  local result ranks
  ranks=$(nvidia-smi -L | wc -l)
  ranks=$((ranks >= 8 ? 8 : ranks))
  # CollectiveTrace checks stage_dist's trace, there.
  LD_LIBRARY_PATH="$qlib" timeout -k 10 "$(cap 120)" "${mpi[@]}" -np "$ranks" "$bin/test_nccl" --gtest_brief=1 \
    --gtest_filter='Nccl.*' >"$log/test_nccl" 2>&1
  result=$(result_of $?)
  # As in stage_tests: a skip means no NCCL check happened.
  [ "$result" = passed ] && grep -q '^\[  SKIPPED \]' "$log/test_nccl" && result=SKIPPED
  [ "$result" = SKIPPED ] && status=1
  fail_if "$result"
  echo "== test_nccl np=$ranks: $result $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$log/test_nccl" | tr '\n' ' ')"
  [ "$result" = passed ] || tail -30 "$log/test_nccl"
  row "test_nccl np=$ranks" "$result" "$( ((ranks > 1)) || echo 'one GPU: a sum over one rank')"
}

# The kernels with two paths (the one-block attention backward against the tiled kernels, the
# one-kernel LayerNorm backward against rows then columns), each pair on the same inputs: which
# path is faster, and how far apart their results are; a layer's GEMMs over several applications
# of a model as one pass against separate passes, and its weight gradients on a second stream;
# the embedding gradient with ids even, Zipf and masked (one path: the three times side by side).
stage_kernels() {
  local out result line
  out=$(q timeout -k 10 "$(cap 120)" "$bin/bench_kernels" --warmup 5 --iters 20 2>&1)
  result=$(result_of $?)
  fail_if "$result"
  echo "$out"
  while IFS= read -r line; do
    row "${line%% one-*}" "$result" "one-${line#* one-}"
  done < <(echo "$out" | grep -E '^((attention|layernorm) backward|layer (backward )?GEMMs)')
  while IFS= read -r line; do
    row "${line%% time *}" "$result" "${line#* time }"
  done < <(echo "$out" | grep -E '^embedding backward')
  [ "$result" = passed ] || row bench_kernels "$result" "$(echo "$out" | tail -1)"
}

# qarac-bench on the classifier step (full and ragged lengths) and the QARAC step.
stage_bench() {
  local w seq batch variant out
  # The classifier step at the issue's sizes: S=128 B=64 at full lengths, ragged and with dropout
  # 0.1 (each held to the full-length figure), B=256, and S=512. Each output is kept in the logs
  # under the name tests/device/goals.py reads.
  for w in "128 64 -" "128 64 ragged" "128 64 dropout" "128 256 -" "512 16 -" "512 16 ragged"; do
    read -r seq batch variant <<<"$w"
    [ "$variant" = - ] && variant=""
    out=$(q timeout -k 10 "$(cap 180)" "$bin/qarac-bench" --workload classifier --device cuda --dtype bf16 --preset base \
          --seq "$seq" --batch "$batch" ${variant:+"--$variant"} --warmup 3 --iters "$iters" 2>&1) || status=1
    echo "$out" | tee "$log/bench_S${seq}_B${batch}${variant:+_$variant}"
    row "qarac S=$seq B=$batch $variant" bench "$(echo "$out" | grep -m1 "ms/step")"
  done
  for variant in "" ragged; do
    out=$(q timeout -k 10 "$(cap 240)" "$bin/qarac-bench" --workload qarac --device cuda --dtype bf16 --preset base \
          --batch 64 ${variant:+"--$variant"} --warmup 3 --iters "$iters" 2>&1) || status=1
    echo "$out" | tee "$log/bench_qarac_B64${variant:+_$variant}"
    row "qarac QARAC step B=64 $variant" bench "$(echo "$out" | grep -m1 "ms/step")"
  done
  # Greedy decoding over the key/value cache (the evaluation's token accuracy, qarac-generate):
  # 64 vectors to 32 tokens each with the decoder at RoBERTa-base's sizes; never run on a GPU yet.
  out=$(q timeout -k 10 "$(cap 120)" "$bin/qarac-bench" --workload decode --device cuda --dtype bf16 --preset base \
        --seq 32 --batch 64 --warmup 1 --iters 3 2>&1) || status=1
  echo "$out" | tee "$log/bench_decode_B64"
  row "qarac greedy decoding B=64, 32 tokens" bench "$(echo "$out" | grep -m1 "ms/step")"
}

# PyTorch on the same workloads, in the same run: its kernels on bench_kernels' shapes, then the
# steps.
stage_torch() {
  local w seq batch ragged out line
  out=$(timeout -k 10 "$(cap 120)" python3 tests/device/torch_kernels.py 2>&1) || status=1
  echo "$out"
  while IFS= read -r line; do
    row "${line%%:*}" bench "${line#*: }"
  done < <(echo "$out" | grep -E '^torch (attention|layernorm|embedding) backward')
  # The issue's baseline runs AE once per field; --paired gives PyTorch qarac-bench's single pass
  # over reasoning's and consistency's two fields too.
  for variant in "" ragged paired; do
    out=$(timeout -k 10 "$(cap 300)" python3 tests/device/torch_qarac_baseline.py --batch 64 ${variant:+"--$variant"} --iters "$iters" 2>&1) || status=1
    echo "$out" | tee "$log/torch_qarac_B64${variant:+_$variant}"
    row "torch QARAC step B=64 $variant" bench "$(echo "$out" | tail -1)"
  done
  for w in "${workloads[@]}"; do
    read -r seq batch <<<"$w"
    for ragged in "" "--ragged"; do
      out=$(timeout -k 10 "$(cap 240)" python3 tests/device/torch_baseline.py --seq "$seq" --batch "$batch" ${ragged:+"$ragged"} --iters "$iters" 2>&1) || status=1
      echo "$out"
      row "torch S=$seq B=$batch ${ragged:+ragged}" bench "$(echo "$out" | tail -1)"
    done
  done
}

# Issue 16's must-show figures against their goals (tests/device/goals.py), from the outputs the
# bench and torch stages kept: a goal not met is a figure to read, not a failure of the run.
stage_goals() {
  local line
  while IFS= read -r line; do
    echo "== goal: ${line//|/: }"
    summary+=("goal: $line")
  done < <(python3 tests/device/goals.py "$log")
}

# The sample data, prepared once for the stages that train.
data=$log/data
prepare_data() {
  [ -f "$data/.done" ] && return 0
  q timeout -k 10 "$(cap 120)" "$bin/qarac-prep" --tokenizer "$sample"/tokenizer --out "$data" --text "$sample"/corpus_train.txt \
    --wikiqa "$sample"/WikiQA-train.tsv --avicenna "$sample"/Avicenna_Train.csv --snli "$sample"/snli_1.0_train.jsonl \
    >"$log/prep" 2>&1 && touch "$data/.done"
}

# qarac-train on the GPU under mpirun with the NCCL backend (one rank per GPU: with several
# GPUs, several ranks share the models), every rank tracing its collective launches (the
# contrastive QA objective adds its exchange of vectors), and the check that they admit one
# global order.
stage_dist() {
  local gpus ranks dist trace result
  gpus=$(nvidia-smi -L | wc -l)
  ranks=$((gpus >= 4 ? 4 : gpus))
  dist=$log/dist
  trace=$log/dist_trace
  prepare_data
  q timeout -k 10 "$(cap 120)" "$bin/qarac-train" --config launch/configs/quickstart-pretrain.ini --output "$dist/pretrain" \
    --model.tokenizer "$sample"/tokenizer --data.dir "$data" --train.steps 1 --optimizer.warmup 0 \
    --model.max_positions 130 >"$log/dist_base" 2>&1
  LD_LIBRARY_PATH="$qlib" QARAC_TRACE_COLLECTIVES="$trace" timeout -k 10 "$(cap 180)" "${mpi[@]}" -x QARAC_TRACE_COLLECTIVES \
    -np "$ranks" "$bin/qarac-train" --config launch/configs/quickstart.ini \
    --output "$dist/finetune" --model.base "$dist/pretrain/export/base" --data.dir "$data" --train.device cuda \
    --train.dtype bf16 --parallel.backend nccl --parallel.check_every 10 --train.steps 40 --eval.every 0 \
    --task.qa.objective contrastive >"$log/dist_train" 2>&1
  result=$(result_of $?)
  fail_if "$result"
  echo "== qarac-train cuda nccl, $ranks rank(s): $result"
  grep -E '^step 40|replica check|error' "$log/dist_train" | tail -5
  [ "$result" = passed ] || tail -qn3 "$log/prep" "$log/dist_base" "$log/dist_train"
  row "qarac-train nccl np=$ranks" "$result" \
    "$( ((ranks > 1)) || echo 'one GPU, so no all-reduce: ')$(grep -oE 'step 40/40[^|]*\|[^|]*' "$log/dist_train" | tail -1)"
  row "  its throughput" train "$(python3 tests/device/train_throughput.py "$dist/finetune/metrics.jsonl" 2>&1)"
  LD_LIBRARY_PATH="$qlib" QARAC_CHECK_COLLECTIVE_TRACE="$trace" timeout -k 10 "$(cap 60)" "${mpi[@]}" -np 1 "$bin/test_nccl" \
    --gtest_filter='CollectiveTrace.*' >"$log/dist_trace_check" 2>&1 && grep -q 'collective launches' "$log/dist_trace_check"
  result=$(result_of $?)
  fail_if "$result"
  echo "== collective order of that run: $result $(grep 'collective launches' "$log/dist_trace_check")"
  [ "$result" = passed ] || tail -20 "$log/dist_trace_check"
  row "collective order np=$ranks" "$result" "$(grep 'collective launches' "$log/dist_trace_check")"
  # qarac-eval of that run's exports on the GPU and on the CPU, both f32, over the first 64
  # examples of each task: the same metrics, the losses apart by rounding only (a tenth of a
  # percent bounds what summation order does to losses of about 1 to 10; a wrong kernel or a
  # model loaded wrongly moves them by far more).
  local device
  for device in cpu cuda; do
    q timeout -k 10 "$(cap 60)" "$bin/qarac-eval" --models "$dist/finetune/export" --data "$data" --examples 64 \
      --device "$device" --json >"$log/eval_$device" 2>"$log/eval_$device.err"
  done
  python3 - "$log/eval_cpu" "$log/eval_cuda" >"$log/eval_compare" 2>&1 <<'PY'
import json, sys
cpu, gpu = (json.load(open(path)) for path in sys.argv[1:3])
assert cpu.keys() == gpu.keys(), (sorted(cpu), sorted(gpu))
worst = max(abs(cpu[k] - gpu[k]) / max(abs(cpu[k]), 1e-12) for k in cpu if k.endswith(".loss"))
print(f"{len(cpu)} metrics, losses at most {worst:.1e} apart (relative); cs.accuracy {cpu.get('cs.accuracy')} "
      f"on the CPU, {gpu.get('cs.accuracy')} on the GPU")
sys.exit(0 if worst < 1e-3 else 1)
PY
  result=$(result_of $?)
  fail_if "$result"
  echo "== qarac-eval cuda against cpu: $result $(tail -1 "$log/eval_compare")"
  [ "$result" = passed ] || tail -qn3 "$log/eval_cpu.err" "$log/eval_cuda.err" "$log/eval_compare"
  row "qarac-eval cuda vs cpu" "$result" "$(tail -1 "$log/eval_compare")"
}

# qarac-train end to end on one GPU beside the qarac-bench figures: data loading, metrics and a
# checkpoint (at step 20) included, from a RoBERTa-base-sized base (the sample tokenizer's 1500
# words) pre-trained one step here; 64 examples per task as the QARAC step, but the sample data's
# fields are shorter, so compare tokens/s (tests/device/train_throughput.py also gives the step's
# compute alone, what qarac-bench times).
stage_e2e() {
  local e2e=$log/e2e detail result
  prepare_data
  q timeout -k 10 "$(cap 120)" "$bin/qarac-train" --config launch/configs/quickstart-pretrain.ini --output "$e2e/pretrain" \
    --model.tokenizer "$sample"/tokenizer --data.dir "$data" --train.steps 1 --optimizer.warmup 0 \
    --model.max_positions 130 --model.hidden 768 --model.layers 12 --model.heads 12 --train.device cuda \
    --train.dtype bf16 >"$log/e2e_base" 2>&1
  if q timeout -k 10 "$(cap 240)" "$bin/qarac-train" --config launch/configs/quickstart.ini --output "$e2e/finetune" \
       --model.base "$e2e/pretrain/export/base" --data.dir "$data" --train.device cuda --train.dtype bf16 \
       --train.steps 40 --optimizer.warmup 0 --eval.every 0 --checkpoint.every 20 --checkpoint.keep 1 \
       --task.ed.batch 64 --task.qa.batch 64 --task.rs.batch 64 --task.cs.batch 64 >"$log/e2e_train" 2>&1 &&
     detail=$(python3 tests/device/train_throughput.py "$e2e/finetune/metrics.jsonl" 2>&1); then
    result=passed
  else
    result=FAILED
    detail=$(tail -qn1 "$log/e2e_base" "$log/e2e_train" | tr '\n' ' ')
  fi
  fail_if "$result"
  echo "== qarac-train cuda bf16 end to end, base sizes, 1 rank: $result $detail"
  row "qarac-train e2e B=64/task" "$result" "$detail"
  # Checkpoints and exports of base-sized models: gigabytes the logs must not carry.
  rm -rf "$e2e"/*/checkpoints "$e2e"/*/export
}

# The GPU time per kernel family (Nsight Systems) and the share of the step the GPU waits for the
# host: the classifier step over 5 profiled steps at full lengths, ragged and with dropout (the
# two the issue holds to the full-length figure, with where each spends more: breakdown.py
# --compare), then the QARAC step (three models, B=64 per task, the issue's furthest goal) over
# 3. Each CSV (breakdown*/kern_sum.csv in the logs) is what a later breakdown.py --compare takes
# as BEFORE or AFTER.
stage_breakdown() {
  local variant dir result figures label
  for variant in "" ragged dropout qarac; do
    dir=$log/breakdown${variant:+-$variant}
    if [ "$variant" = qarac ]; then
      timeout -k 10 "$(cap 240)" bash tests/device/breakdown.sh --bench "$bin/qarac-bench" --lib "$qlib" --out "$dir" \
        --workload qarac --batch 64 --warmup 3 --iters 3 >"$dir.out" 2>&1
    else
      timeout -k 10 "$(cap 300)" bash tests/device/breakdown.sh --bench "$bin/qarac-bench" --lib "$qlib" --out "$dir" \
        --seq 128 --batch 64 --warmup 3 --iters 5 ${variant:+--$variant} >"$dir.out" 2>&1
    fi
    result=$(result_of $?)
    fail_if "$result"
    echo "== breakdown ${variant:-full}: $result"
    cat "$dir.out"
    figures=$(grep -E '^  (total|GPU busy) ' "$dir.out" | tr -s ' ' | tr '\n' ' ')
    if [ "$variant" = qarac ]; then label="QARAC step B=64"; else label="S=128 B=64 $variant"; fi
    row "breakdown $label" "$result" "${figures:-$(tail -1 "$dir.out")}"
    if [ "$variant" = ragged ] || [ "$variant" = dropout ] && [ -f "$dir/kern_sum.csv" ] &&
       [ -f "$log/breakdown/kern_sum.csv" ]; then
      echo "== full lengths (BEFORE) against $variant (AFTER), per family"
      python3 tests/device/breakdown.py --compare "$log/breakdown/kern_sum.csv" "$dir/kern_sum.csv" --steps 5 || true
    fi
  done
  [ -f "$log/breakdown/breakdown.txt" ] && cat "$log/breakdown/breakdown.txt"
  return 0
}

# The exports as transformers loads them (tests/python), qarac-embed and qarac-generate on the
# GPU; the programs get their libraries, PyTorch its own.
stage_python() {
  local result
  QARAC_BIN="$bin" QARAC_TEST_DEVICE=cuda QARAC_LD_LIBRARY_PATH="$qlib" timeout -k 10 "$(cap 300)" bash tests/python/run.sh tests/python/test_hf_export.py >"$log/python" 2>&1
  result=$(result_of $?)
  # pytest passes when every test skipped (transformers or tokenizers failed to import): no check.
  [ "$result" = passed ] && ! tail -1 "$log/python" | grep -q ' passed' && result=SKIPPED
  [ "$result" = SKIPPED ] && status=1
  fail_if "$result"
  echo "== python exports (pytest, cuda): $result"
  tail -15 "$log/python"
  row "python exports cuda" "$result" "$(tail -1 "$log/python")"
}

# compute-sanitizer on the kernels that have run least: racecheck (shared-memory hazards between
# the warps of a block, cp.async double buffering) and synccheck (a barrier or warp collective
# that some threads miss) on the attention kernels (tiled, over row-strided views, and one block
# per sequence up to 128 tokens, causal and not) and the column sums (the LayerNorm backward's
# one-pass and row-then-column paths); memcheck (out-of-bounds and misaligned accesses: x86, the
# emulator's host, forgives a misaligned 16-byte load) on every op of the backend table (the
# optimizer's runs, the embedding gradient's chunks, cross-entropy, LayerNorm) and attention.
stage_sanitize() {
  local sanitizer tool filter name result
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  if [ ! -x "$sanitizer" ]; then
    echo "== compute-sanitizer: not found, skipped"
    row compute-sanitizer skipped "not found"
    return 0
  fi
  for tool in racecheck synccheck memcheck; do
    filter='CudaRuntime.AttentionOnRowStridedViews:CudaRuntime.AttentionEmptySequences:CudaRuntime.AttentionBackwardIsDeterministic:Backends/CudaBits.FusedBranchDropout*/gpu'
    [ "$tool" = memcheck ] && filter='CudaRuntime.Dropout*:Backends/CudaBits.*/gpu:CudaRuntime.AttentionEmptySequences:CudaRuntime.AttentionOtherHeadDims'
    name=sanitize_$tool
    q timeout -k 10 "$(cap 90)" "$sanitizer" --tool "$tool" --error-exitcode 1 "$bin/test_cuda_runtime" \
      --gtest_filter="$filter" --gtest_brief=1 >"$log/$name" 2>&1
    result=$(result_of $?)
    # As in stage_tests: a skipped test was not sanitized.
    [ "$result" = passed ] && grep -q '^\[  SKIPPED \]' "$log/$name" && result=SKIPPED
    [ "$result" = SKIPPED ] && status=1
    fail_if "$result"
    echo "== compute-sanitizer $tool: $result"
    [ "$result" = passed ] || grep -E 'Error|error|Hazard|Invalid|FAILED' "$log/$name" | head -20
    row "compute-sanitizer $tool" "$result" "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log/$name" | tail -1)"
  done
}

# ---- run them
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# What the stages need from the machine, said before any of them fails for the want of it.
echo "== mpirun: $(command -v mpirun || echo 'not found: the nccl and dist stages will fail')"
echo "== compute-sanitizer: $( (command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer) 2>/dev/null || echo 'not found')"
echo "== nsys: $(command -v nsys || echo 'not found: no breakdown')"
IFS=',' read -r -a wanted <<<"$stages"
for stage in "${wanted[@]}"; do
  if ! declare -F "stage_$stage" >/dev/null; then
    echo "run.sh: unknown stage '$stage' in QARAC_DEVICE_STAGES (tests, parity, sanitize, nccl, dist, kernels, bench, torch, goals, e2e, python, breakdown)" >&2
    exit 1
  fi
done
for stage in "${wanted[@]}"; do
  # A stage needs some time: one begun in the last seconds would only be cut.
  if (($(left) < 20)); then
    echo "== stage $stage: skipped, under 20 s left before the ${deadline} s deadline"
    row "stage $stage" skipped "deadline ${deadline} s"
    skipped=1
    continue
  fi
  start=$SECONDS
  echo "== stage $stage ($(left) s left)"
  "stage_$stage"
  echo "== stage $stage: $((SECONDS - start)) s"
  row "  (stage $stage)" time "$((SECONDS - start)) s"
  save_logs
done

echo
print_summary
save_logs
((status != 0)) && exit 1
((skipped != 0)) && exit 2
exit 0
