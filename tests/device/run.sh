#!/usr/bin/env bash
# The GPU check in one call: every GPU test, qarac-parity on CUDA, the exports under transformers
# (tests/python), qarac-bench on the issue's
# workloads (the RoBERTa-base classifier step; the QARAC step), qarac-train end to end on one GPU
# beside them, the classifier step's GPU time per kernel family (tests/device/breakdown.sh) and
# the PyTorch baseline of the same workloads, then a summary table. Runs a bundle
# made by tests/device/bundle.sh (carried to the GPU machine) or, without one, builds here.
#   tests/device/run.sh [BUNDLE_DIR]        (default: .device, holding bundle.tgz)
# Environment: QARAC_BENCH_ITERS (default 10), QARAC_SKIP_TORCH=1 to leave out the baseline,
# QARAC_SKIP_BREAKDOWN=1 to leave out the profile.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
bundle=${1:-.device}
iters=${QARAC_BENCH_ITERS:-10}
log=$(mktemp -d)
summary=()

qlib=${LD_LIBRARY_PATH:-}
if [ -f "$bundle/bundle.tgz" ]; then
  tar xzf "$bundle/bundle.tgz" -C "$log"
  bin=$log/bundle/bin
  golden=$log/bundle/golden
  qlib=$log/bundle/lib:$qlib
else
  echo "== no bundle in $bundle: building with cmake"
  if ! { cmake -S . -B build-device -DCMAKE_BUILD_TYPE=Release -DQARAC_CUDA=ON >"$log/cmake" 2>&1 &&
         cmake --build build-device -j"$(nproc)" >>"$log/cmake" 2>&1; }; then
    tail -30 "$log/cmake"
    exit 1
  fi
  bin=build-device/bin-links
  mkdir -p "$bin"
  ln -sf "$PWD"/build-device/src/cli/qarac-* "$PWD"/build-device/tests/unit/test_cuda_* "$PWD"/build-device/tests/unit/test_backend_ops \
    "$PWD"/build-device/tests/mpi/test_nccl "$bin/"
  golden=tests/golden/data
fi
# CUDA's libraries: the toolkit's folder and the Python wheels' (cuDNN, NCCL live there). Only
# our programs get this path: the bundled Debian libraries must not shadow PyTorch's.
site=$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)
for d in /usr/local/cuda/lib64 "$site"/nvidia/*/lib; do
  [ -d "$d" ] && qlib="$qlib:$d"
done
q() { LD_LIBRARY_PATH="$qlib" "$@"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
status=0

# ---- GPU tests (GoogleTest binaries; each prints its own failures). test_backend_ops runs every
# op on CUDA f32/bf16 against the CPU in f64 and, with QARAC_BACKEND_OPS_MARGINS=1, prints each
# output's error as a fraction of its bound (the margins to record next to the bounds).
export QARAC_BACKEND_OPS_MARGINS=1
for t in "$bin"/test_backend_ops "$bin"/test_cuda_*; do
  name=$(basename "$t")
  if q timeout 150 "$t" --gtest_brief=1 >"$log/$name" 2>&1; then result=passed; else result=FAILED; status=1; fi
  counts=$(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$log/$name" | tr '\n' ' ')
  echo "== $name: $result $counts"
  [ "$result" = passed ] || grep -E 'Failure|error|Expected|Which is|actual' "$log/$name" | head -40
  summary+=("$name|$result|$counts")
done

# ---- parity with Hugging Face on the GPU
for dt in f32 bf16; do
  tol=1e-4; [ "$dt" = bf16 ] && tol=${QARAC_BF16_PARITY_TOL:-5e-2}
  if q timeout 120 "$bin/qarac-parity" "$golden/tiny_dev" --device cuda --dtype "$dt" --tolerance "$tol" >"$log/parity_$dt" 2>&1; then
    result=passed; else result=FAILED; status=1; fi
  echo "== qarac-parity cuda $dt: $result"
  cat "$log/parity_$dt"
  summary+=("parity cuda $dt|$result|$(tail -1 "$log/parity_$dt")")
done

# ---- distributed: the NCCL backend on one rank, then qarac-train on the GPU under mpirun with
# the NCCL backend (one rank per GPU: with several GPUs, several ranks share the models), every
# rank tracing its collective launches (the contrastive QA objective adds its exchange of vectors),
# and the check that they admit one global order
mpi=(mpirun --oversubscribe --bind-to none -x LD_LIBRARY_PATH)
[ "$(id -u)" -ne 0 ] || mpi+=(--allow-run-as-root)
if LD_LIBRARY_PATH="$qlib" timeout 120 "${mpi[@]}" -np 1 "$bin/test_nccl" --gtest_brief=1 >"$log/test_nccl" 2>&1; then
  result=passed; else result=FAILED; status=1; fi
echo "== test_nccl: $result $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$log/test_nccl" | tr '\n' ' ')"
[ "$result" = passed ] || tail -30 "$log/test_nccl"
summary+=("test_nccl|$result|")
gpus=$(nvidia-smi -L | wc -l)
ranks=$((gpus >= 4 ? 4 : gpus))
dist=$log/dist
sample=data/sample
q "$bin/qarac-prep" --tokenizer $sample/tokenizer --out "$dist/data" --text $sample/corpus_train.txt \
  --wikiqa $sample/WikiQA-train.tsv --avicenna $sample/Avicenna_Train.csv --snli $sample/snli_1.0_train.jsonl >"$log/dist_prep" 2>&1
q "$bin/qarac-train" --config launch/configs/quickstart-pretrain.ini --output "$dist/pretrain" --model.tokenizer $sample/tokenizer \
  --data.dir "$dist/data" --train.steps 1 --optimizer.warmup 0 --model.max_positions 130 >"$log/dist_base" 2>&1
trace=$log/dist_trace
if LD_LIBRARY_PATH="$qlib" QARAC_TRACE_COLLECTIVES="$trace" timeout 180 "${mpi[@]}" -x QARAC_TRACE_COLLECTIVES \
     -np "$ranks" "$bin/qarac-train" --config launch/configs/quickstart.ini \
     --output "$dist/finetune" --model.base "$dist/pretrain/export/base" --data.dir "$dist/data" --train.device cuda \
     --train.dtype bf16 --parallel.backend nccl --parallel.check_every 10 --train.steps 40 --eval.every 0 \
     --task.qa.objective contrastive >"$log/dist_train" 2>&1; then
  result=passed; else result=FAILED; status=1; fi
echo "== qarac-train cuda nccl, $ranks rank(s): $result"
grep -E '^step 40|replica check|error' "$log/dist_train" | tail -5
summary+=("qarac-train nccl np=$ranks|$result|$(grep -oE 'step 40/40[^|]*\|[^|]*' "$log/dist_train" | tail -1)")
summary+=("  its throughput|train|$(python3 tests/device/train_throughput.py "$dist/finetune/metrics.jsonl" 2>&1)")
if LD_LIBRARY_PATH="$qlib" QARAC_CHECK_COLLECTIVE_TRACE="$trace" timeout 60 "${mpi[@]}" -np 1 "$bin/test_nccl" \
     --gtest_filter='CollectiveTrace.*' >"$log/dist_trace_check" 2>&1 && grep -q 'collective launches' "$log/dist_trace_check"; then
  result=passed; else result=FAILED; status=1; fi
echo "== collective order of that run: $result $(grep 'collective launches' "$log/dist_trace_check")"
[ "$result" = passed ] || tail -20 "$log/dist_trace_check"
summary+=("collective order np=$ranks|$result|$(grep 'collective launches' "$log/dist_trace_check")")

# ---- the exports as transformers loads them (tests/python), qarac-embed and qarac-generate on
# the GPU; the programs get their libraries, PyTorch its own
QARAC_BIN="$bin" QARAC_TEST_DEVICE=cuda QARAC_LD_LIBRARY_PATH="$qlib" timeout 900 bash tests/python/run.sh >"$log/python" 2>&1
case $? in 0) result=passed ;; 77) result=skipped ;; *) result=FAILED; status=1 ;; esac
echo "== python exports (pytest, cuda): $result"
tail -15 "$log/python"
summary+=("python exports cuda|$result|$(tail -1 "$log/python")")

# ---- benchmarks: ours, then PyTorch on the same workloads
workloads=("128 64" "512 16")
for w in "${workloads[@]}"; do
  read -r seq batch <<<"$w"
  set -- "$seq" "$batch"
  for ragged in "" "--ragged"; do
    out=$(q timeout 180 "$bin/qarac-bench" --workload classifier --device cuda --dtype bf16 --preset base \
          --seq "$1" --batch "$2" $ragged --warmup 3 --iters "$iters" 2>&1) || status=1
    echo "$out"
    summary+=("qarac S=$1 B=$2 ${ragged:+ragged}|bench|$(echo "$out" | grep -m1 "ms/step")")
  done
done
for ragged in "" "--ragged"; do
  out=$(q timeout 240 "$bin/qarac-bench" --workload qarac --device cuda --dtype bf16 --preset base \
        --batch 64 $ragged --warmup 3 --iters "$iters" 2>&1) || status=1
  echo "$out"
  summary+=("qarac QARAC step B=64 ${ragged:+ragged}|bench|$(echo "$out" | grep -m1 "ms/step")")
done

# ---- qarac-train end to end on one GPU beside those figures: data loading, metrics and a
# checkpoint (at step 20) included, from a RoBERTa-base-sized base (the sample tokenizer's 1500
# words) pre-trained one step here; 64 examples per task as the QARAC step above, but the sample
# data's fields are shorter, so compare tokens/s (tests/device/train_throughput.py also gives the
# step's compute alone, what qarac-bench times)
e2e=$log/e2e
q timeout 120 "$bin/qarac-train" --config launch/configs/quickstart-pretrain.ini --output "$e2e/pretrain" \
  --model.tokenizer $sample/tokenizer --data.dir "$dist/data" --train.steps 1 --optimizer.warmup 0 \
  --model.max_positions 130 --model.hidden 768 --model.layers 12 --model.heads 12 --train.device cuda \
  --train.dtype bf16 >"$log/e2e_base" 2>&1
if q timeout 240 "$bin/qarac-train" --config launch/configs/quickstart.ini --output "$e2e/finetune" \
     --model.base "$e2e/pretrain/export/base" --data.dir "$dist/data" --train.device cuda --train.dtype bf16 \
     --train.steps 40 --optimizer.warmup 0 --eval.every 0 --checkpoint.every 20 --checkpoint.keep 1 \
     --task.ed.batch 64 --task.qa.batch 64 --task.rs.batch 64 --task.cs.batch 64 >"$log/e2e_train" 2>&1 &&
   detail=$(python3 tests/device/train_throughput.py "$e2e/finetune/metrics.jsonl" 2>&1); then
  result=passed; else result=FAILED; status=1; detail=$(tail -qn1 "$log/e2e_base" "$log/e2e_train" | tr '\n' ' '); fi
echo "== qarac-train cuda bf16 end to end, base sizes, 1 rank: $result $detail"
summary+=("qarac-train e2e B=64/task|$result|$detail")
# Checkpoints and exports of base-sized models: gigabytes the logs must not carry.
rm -rf "$e2e"/*/checkpoints "$e2e"/*/export

# ---- the classifier step's GPU time per kernel family (Nsight Systems, 5 profiled steps): full
# lengths, ragged and with dropout, the two the issue holds to the full-length figure, and where
# each spends more (breakdown.py --compare). Each CSV (breakdown*/kern_sum.csv in the logs) is what
# a later breakdown.py --compare takes as BEFORE or AFTER.
if [ "${QARAC_SKIP_BREAKDOWN:-0}" != 1 ]; then
  for variant in "" ragged dropout; do
    dir=$log/breakdown${variant:+-$variant}
    timeout 300 bash tests/device/breakdown.sh --bench "$bin/qarac-bench" --lib "$qlib" --out "$dir" \
      --seq 128 --batch 64 --warmup 3 --iters 5 ${variant:+--$variant} >"$dir.out" 2>&1
    case $? in 0) result=passed ;; 77) result=skipped ;; *) result=FAILED; status=1 ;; esac
    echo "== breakdown ${variant:-full}: $result"
    cat "$dir.out"
    summary+=("breakdown S=128 B=64 ${variant}|$result|$(grep -E '^  total ' "$dir.out" || tail -1 "$dir.out")")
    if [ -n "$variant" ] && [ -f "$dir/kern_sum.csv" ] && [ -f "$log/breakdown/kern_sum.csv" ]; then
      echo "== full lengths (BEFORE) against $variant (AFTER), per family"
      python3 tests/device/breakdown.py --compare "$log/breakdown/kern_sum.csv" "$dir/kern_sum.csv" --steps 5 || true
    fi
  done
fi
if [ "${QARAC_SKIP_TORCH:-0}" != 1 ]; then
  for ragged in "" "--ragged"; do
    out=$(timeout 300 python3 tests/device/torch_qarac_baseline.py --batch 64 $ragged --iters "$iters" 2>&1) || status=1
    echo "$out"
    summary+=("torch QARAC step B=64 ${ragged:+ragged}|bench|$(echo "$out" | tail -1)")
  done
  for w in "${workloads[@]}"; do
    read -r seq batch <<<"$w"
    set -- "$seq" "$batch"
    for ragged in "" "--ragged"; do
      out=$(timeout 240 python3 tests/device/torch_baseline.py --seq "$1" --batch "$2" $ragged --iters "$iters" 2>&1) || status=1
      echo "$out"
      summary+=("torch S=$1 B=$2 ${ragged:+ragged}|bench|$(echo "$out" | tail -1)")
    done
  done
fi

echo
echo "==================== summary ===================="
for s in "${summary[@]}"; do
  IFS='|' read -r what result detail <<<"$s"
  printf '%-28s %-7s %s\n' "$what" "$result" "$detail"
done
[ -f "$log/breakdown/breakdown.txt" ] && cat "$log/breakdown/breakdown.txt"
# Logs come back from the device tool when it sets OUT.
# The profile itself stays out (its CSV is kept): it could outgrow what the tool returns.
[ -n "${OUT:-}" ] && tar czf "$OUT/logs.tgz" -C "$log" --exclude bundle --exclude '*.nsys-rep' --exclude '*.sqlite' . 2>/dev/null
exit $status
