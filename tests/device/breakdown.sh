#!/usr/bin/env bash
# The GPU time of a qarac-bench step per kernel family (issue 16): runs qarac-bench under Nsight
# Systems, capturing its timed steps alone (qarac-bench brackets them with cudaProfilerStart/Stop,
# so the warmup, the setup and its GEMM peak measurement stay out), then prints
# tests/device/breakdown.py's table over those steps.
#   tests/device/breakdown.sh [options] [-- more qarac-bench options]
# Options (defaults: the RoBERTa-base classifier step, bf16, S=128, B=64):
#   --workload classifier|encoder|qarac   --seq S (128)   --batch B (64)   --ragged   --dropout
#   --warmup W (3)   --iters N (5: the profiled steps)
#   --bench PATH     qarac-bench (default: on PATH, else build/src/cli/qarac-bench)
#   --lib DIRS       LD_LIBRARY_PATH for qarac-bench alone, not for nsys (a bundle's libraries)
#   --out DIR        keeps profile.nsys-rep, kern_sum.csv (for breakdown.py --compare), bench.txt,
#                    breakdown.txt and breakdown.json (default: a new temporary folder)
#   --nsys PATH      nsys (default: on PATH, in /usr/local/cuda/bin or /opt/nvidia/nsight-systems)
# Exit 77 with one line when nsys is missing, 1 when the profile or its table fails.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
workload=classifier seq=128 batch=64 warmup=3 iters=5 bench="" lib="" out="" nsys=""
flags=()
while [ $# -gt 0 ]; do
  case $1 in
    --workload|--seq|--batch|--warmup|--iters|--bench|--lib|--out|--nsys)
      [ $# -ge 2 ] || { echo "breakdown.sh: $1 needs a value" >&2; exit 2; }
      declare "${1#--}=$2"
      shift 2 ;;
    --ragged|--dropout) flags+=("$1"); shift ;;
    --) shift; flags+=("$@"); break ;;
    *) echo "breakdown.sh: unknown option $1 (see the comment at the top of $0)" >&2; exit 2 ;;
  esac
done

if [ -z "$nsys" ]; then
  # The last that exists wins: the one on PATH, else the toolkit's, else the newest installed.
  for candidate in /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/bin/nsys "$(command -v nsys || true)"; do
    [ -x "$candidate" ] && nsys=$candidate
  done
fi
if [ -z "$nsys" ] || [ ! -x "$nsys" ]; then
  echo "breakdown.sh: nsys (Nsight Systems) not found on PATH, in /usr/local/cuda/bin or /opt/nvidia/nsight-systems: no breakdown"
  exit 77
fi
if [ -z "$bench" ]; then
  bench=$(command -v qarac-bench || echo "$here/../../build/src/cli/qarac-bench")
fi
[ -x "$bench" ] || { echo "breakdown.sh: $bench is not an executable qarac-bench (give --bench)" >&2; exit 2; }
[ -n "$out" ] || out=$(mktemp -d)
mkdir -p "$out"

args=(--workload "$workload" --device cuda --dtype bf16 --preset base --seq "$seq" --batch "$batch"
      --warmup "$warmup" --iters "$iters" ${flags[@]+"${flags[@]}"})
echo "== breakdown: qarac-bench ${args[*]} under $nsys"
# CUDA tracing only: CPU sampling and context switches would add overhead and need privileges.
# --capture-range-end=stop lets qarac-bench finish and print its figures after the capture.
if ! "$nsys" profile --trace=cuda --sample=none --cpuctxsw=none --capture-range=cudaProfilerApi \
     --capture-range-end=stop --force-overwrite=true --output "$out/profile" \
     env LD_LIBRARY_PATH="${lib:-${LD_LIBRARY_PATH:-}}" "$bench" "${args[@]}" >"$out/bench.txt" 2>&1; then
  tail -5 "$out/bench.txt"
  echo "breakdown.sh: nsys profile failed (its output: $out/bench.txt)"
  exit 1
fi
grep -E 'ms/step' "$out/bench.txt" || true
# The step's wall time in the profiled run, for the GPU's idle share.
step_ms=$(sed -nE 's/^ *([0-9.]+) ms\/step.*/\1/p' "$out/bench.txt" | head -1)
if [ ! -f "$out/profile.nsys-rep" ]; then
  echo "breakdown.sh: nsys wrote no $out/profile.nsys-rep: an empty capture (a qarac-bench without cudaProfilerStart?), see $out/bench.txt"
  exit 1
fi
wall=(${step_ms:+--step-ms "$step_ms"})
python3 "$here/breakdown.py" "$out/profile.nsys-rep" --nsys "$nsys" --steps "$iters" --save-csv "$out/kern_sum.csv" \
  ${wall[@]+"${wall[@]}"} | tee "$out/breakdown.txt"
python3 "$here/breakdown.py" "$out/kern_sum.csv" --steps "$iters" ${wall[@]+"${wall[@]}"} --json >"$out/breakdown.json"
