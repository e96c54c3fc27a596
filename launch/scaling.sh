#!/usr/bin/env bash
# Scaling test: runs the same short four-task training job at several world sizes W and writes
# a CSV of throughput, speedup and efficiency per W, with an SVG plot of both.
#
#   bash launch/scaling.sh [options] [-- qarac-train options]
#     --ranks LIST         world sizes, comma-separated (default 1,2,4,8)
#     --mode M             weak, strong or both (default both)
#     --steps N            steps of each run (default 30)
#     --warmup-steps K     first steps left out of the averages (default 5; K < N)
#     --batch B            examples per task (default 48): strong scaling keeps each task's global
#                          batch at B (task.<t>.batch B) for every W; weak scaling keeps each rank's
#                          share at B, so task t's global batch is B · n_t (n_t: ranks running t)
#     --launcher L         local (launch/train-local.sh with MPIRUN, any MPI; the default) or
#                          srun (srun -n W inside a Slurm allocation, with slurm/common.sh's
#                          options: --label, the plugin of QARAC_SRUN_MPI, one GPU per rank bound
#                          as QARAC_GPU_BIND says; extra srun options in QARAC_SRUN_OPTS)
#     --device D           cpu (default) or cuda
#     --config FILE        qarac-train settings of the runs (default launch/configs/quickstart.ini);
#                          the model comes from --base
#     --base DIR           Hugging Face RoBERTa directory to fine-tune (default: a tiny random
#                          one, made by one masked-LM step of launch/configs/quickstart-pretrain.ini)
#     --data DIR           qarac-prep task streams (default: data/sample prepared into OUT/data)
#     --tokenizer DIR      tokenizer of the prepared sample data and of the tiny base (default:
#                          --base's when it holds one, else data/sample/tokenizer)
#     --out DIR            output directory (default runs/scaling); must be empty or absent
#     --force              replace a previous scaling run in --out
#     --summarise-only     run nothing: read the runs already in --out (same --ranks, --mode,
#                          --warmup-steps) and write the CSV and the plot again (titled as the
#                          runs were made, whatever the other options say)
# e.g. on a GPU node, roberta-base in bf16:
#   bash launch/scaling.sh --ranks 1,2,4,8 --device cuda --config launch/configs/qarac-roberta-base.ini \
#       --base models/roberta-base --data prepared --batch 256 -- --train.dtype bf16
#
# Task plans: W a multiple of 4 runs ed:W/4,qa:W/4,rs:W/4,cs:W/4; W < 4 runs auto (a rank runs
# several tasks, each task on one rank); any other W > 4 runs floor(W/4) ranks per task plus one
# more for each of the first W mod 4 of ed, rs, qa, cs (the costliest first), written out
# explicitly so that the weak-scaling global batches B · n_t are known.
# Strong scaling (fixed global batches) runs at every W of --ranks, against the smallest (W0).
# Weak scaling (fixed per-rank share) starts at W0 = 4, one rank per task: below 4 tasks share a
# rank, so a rank's work is not one share. It runs at the W >= 4 of --ranks, and at 4 itself when
# --ranks has a larger W but not 4. At W = 4 both modes are the same run (each task's global
# batch is one rank's share, B): it runs once and gives both rows.
# Every run evaluates nothing (--eval.dir '' --eval.every 0) and checkpoints only at its end
# (--checkpoint.every 0: qarac-train always writes a final checkpoint and export, after the
# timed steps). Steps 1..K are the warm-up; the averages are over steps K+1..N.
#
# OUT gets: scaling.csv, scaling.svg, runs/<w|weak-w|strong-w><W>/ (the qarac-train run
# directories), logs/ (each run's full output), data/ and base/ when made here. CSV columns:
#   mode, world_size, plan, steps_timed, step_time_s (mean wall time of a step on rank 0),
#   global_tokens_per_s, global_examples_per_s (tokens, examples of all ranks over the summed
#   step times), speedup (throughput over that of the mode's W0), efficiency
#   (throughput(W) · W0 / (W · throughput(W0)): weak W0 = 4, strong W0 the smallest W),
#   compute_time_s, comm_wait_s, data_time_s (per step, means over ranks and timed steps),
#   step_time_rel_error (the standard error of the mean step time over that mean).
# A run too short for its figures is named in a warning: fewer than 20 timed steps, a mean step
# time uncertain by more than 5 %, or an efficiency above 1.05 (more than linear scaling, which a
# data-parallel step cannot reach: warm-up or noise in the timed steps).
# The averages come from rank 0's metrics.jsonl; they need the step fields of the distributed
# qarac-train (world_size, global_tokens, global_examples, compute_time_s, comm_wait_s,
# data_time_s). Needs jq and gnuplot (bash launch/install-deps.sh --job).
set -euo pipefail
# Numbers are read and written with a decimal point in any locale: under de_DE.UTF-8 mawk
# (Debian's awk) read 7.3257 as 7 and wrote 7,0000, and gnuplot stopped at the data.
export LC_ALL=C
me=launch/scaling.sh
die() { echo "$me: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; }

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=launch/common.sh
source "$repo/launch/common.sh"
ranks_list=1,2,4,8
mode=both
steps=30
warmup=5
batch=48
launcher=local
device=cpu
config=$repo/launch/configs/quickstart.ini
base=""
data=""
tokenizer=""
out=runs/scaling
force=0
summarise_only=0
train_args=()
while (($#)); do
  case "$1" in
    --ranks|--mode|--steps|--warmup-steps|--batch|--launcher|--device|--config|--base|--data|--tokenizer|--out)
      (($# >= 2)) || die "$1 needs a value (see --help)"
      case "$1" in
        --ranks) ranks_list=$2 ;;
        --mode) mode=$2 ;;
        --steps) steps=$2 ;;
        --warmup-steps) warmup=$2 ;;
        --batch) batch=$2 ;;
        --launcher) launcher=$2 ;;
        --device) device=$2 ;;
        --config) config=$(realpath -m -- "$2") ;;
        --base) base=$(realpath -m -- "$2") ;;
        --data) data=$(realpath -m -- "$2") ;;
        --tokenizer) tokenizer=$(realpath -m -- "$2") ;;
        --out) out=$2 ;;
      esac
      shift 2 ;;
    --force) force=1; shift ;;
    --summarise-only) summarise_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; train_args=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
# --out is relative to the repository unless given (as launch/quickstart.sh's).
if [ "$out" = runs/scaling ]; then out=$repo/runs/scaling; else out=$(realpath -m -- "$out"); fi
cd "$repo"

# --- The options.
positive() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, not '$2'"; }
positive --steps "$steps"
positive --batch "$batch"
[[ "$warmup" =~ ^(0|[1-9][0-9]*)$ ]] || die "--warmup-steps must be a non-negative integer (no leading zero), not '$warmup'"
((warmup < steps)) || die "--warmup-steps $warmup leaves no step of --steps $steps to time"
case "$mode" in
  weak|strong) modes=("$mode") ;;
  both) modes=(weak strong) ;;
  *) die "--mode must be weak, strong or both, not '$mode'" ;;
esac
case "$launcher" in local|srun) ;; *) die "--launcher must be local or srun, not '$launcher'" ;; esac
case "$device" in cpu|cuda) ;; *) die "--device must be cpu or cuda, not '$device'" ;; esac
IFS=, read -r -a world_sizes <<<"$ranks_list"
((${#world_sizes[@]})) || die "--ranks is empty"
for w in "${world_sizes[@]}"; do positive "--ranks (each world size)" "$w"; done
mapfile -t world_sizes < <(printf '%s\n' "${world_sizes[@]}" | sort -n -u)
max_w=${world_sizes[-1]}
# Each mode's world sizes: strong all of them, weak those from W0 = 4 on (4 added when missing).
strong_ws=("${world_sizes[@]}")
weak_ws=()
for w in "${world_sizes[@]}"; do ((w < 4)) || weak_ws+=("$w"); done
if [[ " ${modes[*]} " == *" weak "* ]]; then
  if ((max_w < 4)); then
    [ "$mode" = both ] || die "weak scaling starts at W = 4 (one rank per task); --ranks $ranks_list has no W >= 4"
    echo "$me: warning: weak scaling starts at W = 4 (one rank per task); --ranks $ranks_list measures strong scaling only" >&2
    modes=(strong)
  elif ((weak_ws[0] != 4)); then
    echo "$me: weak scaling is measured against W0 = 4 (one rank per task): adding W = 4" >&2
    weak_ws=(4 "${weak_ws[@]}")
    mapfile -t world_sizes < <(printf '%s\n' "${world_sizes[@]}" 4 | sort -n -u)
  fi
  [[ " ${modes[*]} " != *" weak "* ]] || ((${#weak_ws[@]} > 1)) ||
    echo "$me: warning: weak scaling at W = 4 alone has nothing to compare: add a larger W to --ranks" >&2
fi
# mode_ws MODE: that mode's world sizes, one a line; in_mode MODE W: W is one of them.
mode_ws() { if [ "$1" = weak ]; then printf '%s\n' "${weak_ws[@]}"; else printf '%s\n' "${strong_ws[@]}"; fi; }
in_mode() { local v; for v in $(mode_ws "$1"); do ((v != $2)) || return 0; done; return 1; }
# What this script sets for every run may not come through the passthrough as well (qarac-train
# refuses an option given twice): name the option of this script instead.
for arg in "${train_args[@]}"; do
  key=${arg%%=*}
  case "$key" in
    --output|--resume|--config|--model.base|--data.dir|--train.steps|--train.device|--parallel.tasks|\
    --task.*.batch|--eval.every|--eval.dir|--checkpoint.every|--optimizer.warmup)
      die "$key after -- is set by $me for every run (see --help: --out, --config, --base, --data, --steps, --device, --batch)" ;;
  esac
done

# The programs (launch/common.sh says where they are looked for).
find_programs
for tool in jq gnuplot; do
  command -v "$tool" >/dev/null || die "$tool not found; install it with: bash launch/install-deps.sh --job"
done

# --- Task plans and budgets. Tasks in qarac-train's order; "first extra" order for other W.
tasks=(ed qa rs cs)
# ranks_per_task W: n_t of ed, qa, rs, cs, one per line (auto for W < 4: one rank each).
ranks_per_task() {
  local w=$1 q r t
  if ((w < 4)); then printf '1\n1\n1\n1\n'; return; fi
  q=$((w / 4)) r=$((w % 4))
  declare -A n=([ed]=$q [qa]=$q [rs]=$q [cs]=$q)
  for t in ed rs qa cs; do ((r > 0)) || break; n[$t]=$((n[$t] + 1)); r=$((r - 1)); done
  for t in "${tasks[@]}"; do echo "${n[$t]}"; done
}
plan_of() {
  local w=$1 n spec="" i=0
  if ((w < 4)); then echo auto; return; fi
  while read -r n; do spec+="${spec:+,}${tasks[i]}:$n"; i=$((i + 1)); done < <(ranks_per_task "$w")
  echo "$spec"
}
# run_name MODE W: the run directory's name; W <= 4 is one run for both modes (weak has only 4).
run_name() { if (($2 <= 4)); then echo "w$2"; else echo "$1-w$2"; fi; }
# Strong scaling divides each task's B examples among its ranks: each needs one at least.
if [[ " ${modes[*]} " == *" strong "* ]]; then
  most=$(ranks_per_task "$max_w" | sort -n | tail -n 1)
  ((batch >= most)) || die "--batch $batch is smaller than the $most ranks of a task at W = $max_w: strong scaling needs one example per rank at least"
fi

# --- The output directory.
marker=$out/.qarac-scaling   # tells --force that the directory is a scaling run
if ((summarise_only)); then
  [ -d "$out/runs" ] || die "--summarise-only: no runs in $out (no $out/runs/)"
else
  # The help captured first: grep -q leaving a pipe early would fail the writer under pipefail.
  if ((max_w > 1)) && [ -x "$train" ] && ! grep -q -- '--parallel.timeout' <<<"$("$train" --help 2>/dev/null || true)"; then
    die "$train predates distributed training (no --parallel.timeout in its --help): only --ranks 1 can be measured with it; rebuild it"
  fi
  [ -x "$train" ] || die "no qarac-train at $train: build it (bash launch/quickstart.sh builds it into build/) or set QARAC_BUILD"
  [ -f "$config" ] || die "--config $config: no such file"
  if [ "$launcher" = srun ]; then
    [ -n "${SLURM_JOB_ID:-}" ] || die "--launcher srun runs inside a Slurm allocation (sbatch or salloc); none here (no SLURM_JOB_ID)"
    command -v srun >/dev/null || die "--launcher srun: srun not found"
    # shellcheck source=slurm/common.sh
    source "$repo/slurm/common.sh"
    if [ -n "${SLURM_NTASKS:-}" ] && ((max_w > SLURM_NTASKS)); then
      die "--ranks asks for $max_w ranks, the allocation has $SLURM_NTASKS tasks (SLURM_NTASKS)"
    fi
  fi
  if [ -n "$base" ]; then
    for f in config.json model.safetensors; do
      [ -f "$base/$f" ] || die "--base $base: no $f there (a Hugging Face RoBERTa directory is needed)"
    done
  fi
  if [ -n "$data" ]; then
    for t in encode_decode question_answering reasoning consistency; do
      [ -f "$data/$t.h5" ] || die "--data $data: no $t.h5 there (qarac-prep's output is needed)"
    done
  fi
  if [ -z "$tokenizer" ]; then
    tokenizer=$repo/data/sample/tokenizer
    [ -z "$base" ] || ! has_tokenizer "$base" || tokenizer=$base
  fi
  if [ -z "$data" ] || [ -z "$base" ]; then
    has_tokenizer "$tokenizer" || die "tokenizer $tokenizer: neither tokenizer.json nor vocab.json + merges.txt"
    [ -x "$prep" ] || [ -n "$data" ] || die "no qarac-prep at $prep: build it or set QARAC_BUILD"
  fi
  prepare_out "scaling run" "$base" "$data" "$tokenizer" "$config"
fi
logs=$out/logs
# The plot's title says how the runs were made: --summarise-only takes it from the runs' record,
# not from its own options' defaults.
title_file=$logs/plot-title.txt
if ((summarise_only)) && [ -s "$title_file" ]; then
  title=$(<"$title_file")
else
  title="QARAC-MT scaling: $device, $launcher, $batch examples per task (strong) or per rank (weak), $steps steps ($warmup warm-up)"
  ((summarise_only)) || printf '%s\n' "$title" >"$title_file"
fi

if ! ((summarise_only)); then
  # --- Inputs: the sample data and a tiny random base when none is given.
  if [ -z "$data" ]; then
    # The longest field the base's position table holds (RoBERTa counts 2 positions beyond).
    max_positions=514   # the tiny base below
    if [ -n "$base" ]; then
      max_positions=$(base_positions "$base" "$tokenizer") || exit 1
    fi
    data=$out/data
    sample=$repo/data/sample
    echo "$me: preparing the sample data ($sample, tokenizer $tokenizer) into $data"
    logged prep "$prep" --tokenizer "$tokenizer" --out "$data" --max-length "$((max_positions - 2))" \
      --text "$sample/corpus_train.txt" --wikiqa "$sample/WikiQA-train.tsv" \
      --avicenna "$sample/Avicenna_Train.csv" --snli "$sample/snli_1.0_train.jsonl"
  fi
  if [ -z "$base" ]; then
    # One masked-LM step of the quickstart's 2-layer, 64-wide RoBERTa: random weights, which is
    # all a timing needs. 514 positions hold any field qarac-prep's default length allows.
    echo "$me: making a tiny random base (one step of launch/configs/quickstart-pretrain.ini) in $out/base"
    logged base "$train" --config launch/configs/quickstart-pretrain.ini --output "$out/base" \
      --model.max_positions 514 --model.tokenizer "$tokenizer" --data.dir "$data" \
      --train.steps 1 --train.device cpu --optimizer.warmup 0 --checkpoint.every 0
    base=$out/base/export/base
  fi

  # --- The timing runs.
  declare -A done_runs=()
  total=0
  for w in "${world_sizes[@]}"; do
    for m in "${modes[@]}"; do
      in_mode "$m" "$w" || continue
      name=$(run_name "$m" "$w")
      [ -n "${done_runs[$name]:-}" ] || { done_runs[$name]=planned; total=$((total + 1)); }
    done
  done
  done_runs=()
  echo "$me: $total run(s) of $steps steps ($warmup warm-up), $device, $launcher launcher, into $out/runs"
  index=0
  for w in "${world_sizes[@]}"; do
    plan=$(plan_of "$w")
    mapfile -t n_t < <(ranks_per_task "$w")
    for m in "${modes[@]}"; do
      in_mode "$m" "$w" || continue
      name=$(run_name "$m" "$w")
      [ -z "${done_runs[$name]:-}" ] || continue
      done_runs[$name]=1
      index=$((index + 1))
      budgets=()
      budget_text=""
      for i in "${!tasks[@]}"; do
        b=$batch
        [ "$m" = strong ] || b=$((batch * n_t[i]))
        budgets+=("--task.${tasks[i]}.batch" "$b")
        budget_text+="${budget_text:+ }${tasks[i]} $b"
      done
      # No learning-rate warmup: a timing run is shorter than any useful one, and the rate does
      # not change what a step costs.
      run_args=(--config "$config" --output "$out/runs/$name" --model.base "$base" --data.dir "$data"
                --train.steps "$steps" --train.device "$device" --parallel.tasks "$plan"
                "${budgets[@]}" --eval.every 0 --eval.dir "" --checkpoint.every 0
                --optimizer.warmup 0
                "${train_args[@]}")
      [ "$device" != cpu ] || mapfile -t -O "${#run_args[@]}" run_args < <(cpu_dtype_options "$config" "${train_args[@]}")
      if [ "$launcher" = local ]; then
        cmd=(bash "$repo/launch/train-local.sh" -n "$w" -- "${run_args[@]}")
      else
        # Whole nodes first: ceil(W / tasks per node) nodes when the allocation says how many.
        mapfile -t srun_opts < <(srun_options "$device")
        srun_cmd=(srun "${srun_opts[@]}" -n "$w")
        tpn=${SLURM_NTASKS_PER_NODE:-}
        if [[ "$tpn" =~ ^[1-9][0-9]*$ ]]; then srun_cmd+=(-N "$(((w + tpn - 1) / tpn))"); fi
        read -r -a srun_extra <<<"${QARAC_SRUN_OPTS:-}"
        cmd=("${srun_cmd[@]}" "${srun_extra[@]}" "$train" "${run_args[@]}")
      fi
      what=$m
      # W0 = 4 is one run for both modes when both have it (not with --ranks 2,5: weak only).
      if ((w == 4 && ${#modes[@]} == 2)) && in_mode weak 4 && in_mode strong 4; then what="weak = strong"; fi
      echo "   [$index/$total] W=$w ($what), plan $plan, global batches: $budget_text"
      t0=$SECONDS
      { printf '%q ' "${cmd[@]}"; printf '\n'; } >"$logs/$name.cmd"
      logged "$name" "${cmd[@]}"
      echo "         done in $((SECONDS - t0)) s"
    done
  done
fi

# --- Summary: the timed steps' averages of each run, from rank 0's metrics.jsonl.
tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT
# averages RUN_DIR W > one tab-separated line: steps_timed, step_time_s, global_tokens_per_s,
# global_examples_per_s, compute_time_s, comm_wait_s, data_time_s, step_time_rel_error. Step
# lines only (no "eval"), a step written twice keeps its last record, a half-written line is
# skipped.
averages() {
  local metrics=$1/metrics.jsonl
  [ -s "$metrics" ] || die "no metrics: '$metrics' is missing or empty (did the run start? see $logs/)"
  jq -Rrn --argjson warmup "$warmup" --argjson w "$2" '
    def mean(f): (map(f) | add) / length;
    # The standard error of the mean step time over that mean (0 for one step).
    def rel_error: (map(.step_time_s)) as $t | ($t | add / length) as $m
      | if ($t | length) < 2 or $m <= 0 then 0
        else (($t | map((. - $m) * (. - $m)) | add) / (($t | length) - 1) / ($t | length) | sqrt) / $m end;
    ["world_size", "step_time_s", "global_tokens", "global_examples", "compute_time_s",
     "comm_wait_s", "data_time_s"] as $needed
    | [inputs | fromjson? | objects | select(.eval != true and (.step | type) == "number")]
    | group_by(.step) | map(.[-1]) | map(select(.step > $warmup)) as $timed
    | ($needed - ($needed | map(. as $k | select(all($timed[]; (.[$k] | type) == "number"))))) as $missing
    | if ($timed | length) == 0 then error("no step after the \($warmup) warm-up steps")
      elif ($missing | length) > 0 then
        error("the step lines lack \($missing | join(", ")): a qarac-train from before the distributed metrics (rebuild it)")
      elif any($timed[]; .world_size != $w) then
        error("world_size \([$timed[].world_size] | unique | map(tostring) | join(",")) in the step lines, not \($w): the ranks did not form one job")
      else
        [($timed | length), ($timed | mean(.step_time_s)),
         ($timed | (map(.global_tokens) | add) / (map(.step_time_s) | add)),
         ($timed | (map(.global_examples) | add) / (map(.step_time_s) | add)),
         ($timed | mean(.compute_time_s)), ($timed | mean(.comm_wait_s)), ($timed | mean(.data_time_s)),
         ($timed | rel_error)]
        | @tsv
      end' "$metrics" 2>"$tmp/jq.err" || die "$metrics: $(sed 's/^jq: error ([^)]*): //' "$tmp/jq.err")"
}

# rows.tsv: mode, world_size, plan, then the averages; in mode order, then W.
for m in "${modes[@]}"; do
  for w in $(mode_ws "$m"); do
    averages "$out/runs/$(run_name "$m" "$w")" "$w" >"$tmp/averages.tsv"   # not in $(): die must end the script
    printf '%s\t%s\t%s\t%s\n' "$m" "$w" "$(plan_of "$w")" "$(cat "$tmp/averages.tsv")"
  done
done >"$tmp/rows.tsv"

# Speedup and efficiency against each mode's W0 (its first row: weak 4, strong the smallest W);
# the CSV (plan quoted: it holds commas), one TSV per mode for the plot (W, throughput,
# efficiency, ideal throughput: linear from W0) and the warnings of runs too short for their figures.
csv=$out/scaling.csv
awk -F'\t' -v OFS=, -v dir="$tmp" -v warmup="$warmup" '
  BEGIN { print "mode,world_size,plan,steps_timed,step_time_s,global_tokens_per_s,global_examples_per_s,speedup,efficiency,compute_time_s,comm_wait_s,data_time_s,step_time_rel_error" }
  {
    if (!($1 in w0)) { w0[$1] = $2; t0[$1] = $6 }
    speedup = $6 / t0[$1]
    efficiency = speedup * w0[$1] / $2
    printf "%s,%d,\"%s\",%d,%.6g,%.6g,%.6g,%.4f,%.4f,%.6g,%.6g,%.6g,%.4f\n", $1, $2, $3, $4, $5, $6, $7,
           speedup, efficiency, $8, $9, $10, $11
    printf "%d\t%.6g\t%.6g\t%.6g\n", $2, $6, efficiency, t0[$1] * $2 / w0[$1] >> (dir "/" $1 ".tsv")
    if (NR == 1)
      printf "%-6s %5s  %-19s %9s %12s %10s %7s %10s %9s %9s %9s\n", "mode", "W", "plan", "step (s)",
             "tokens/s", "examples/s", "speedup", "efficiency", "compute", "comm wait", "data" > (dir "/table.txt")
    printf "%-6s %5d  %-19s %9.4f %12.0f %10.1f %7.2f %10.3f %9.4f %9.4f %9.4f\n", $1, $2, $3, $5, $6, $7,
           speedup, efficiency, $8, $9, $10 > (dir "/table.txt")
    run = $1 " W=" $2
    if ($4 < 20) { short = short (short == "" ? "" : ", ") run; fewest = (fewest == "" || $4 < fewest) ? $4 : fewest }
    if ($11 > 0.05)
      printf "%s: the mean step time is uncertain by %.0f %% (its standard error): more steps, or a quieter machine\n", run, 100 * $11 > (dir "/warnings.txt")
    if (efficiency > 1.05)
      printf "%s: efficiency %.2f is above 1, more than linear scaling: the timed steps hold warm-up or noise (raise --warmup-steps %d and --steps)\n", run, efficiency, warmup > (dir "/warnings.txt")
  }
  END {
    if (short != "")
      printf "%s: as few as %d timed steps; the means need 20 at least (raise --steps)\n", short, fewest > (dir "/warnings.txt")
  }' "$tmp/rows.tsv" >"$tmp/scaling.csv"
mv -f -- "$tmp/scaling.csv" "$csv"

# The plot: throughput against W (log-log; each mode's ideal, linear scaling from its W0, in its
# colour) and efficiency against W, one line per mode. Weak is drawn wide under strong, and its
# ideal wide and dotted under strong's dashed one, so that both show where they coincide.
style() {
  case "$1" in
    weak) echo "lw 4 pt 7 ps 1.1 lc rgb '#1f77b4'" ;;
    strong) echo "lw 1.5 pt 5 ps 0.6 lc rgb '#ff7f0e'" ;;
  esac
}
ideal_style() {
  case "$1" in
    weak) echo "dt 3 lw 3 lc rgb '#1f77b4'" ;;
    strong) echo "dt 2 lw 1.2 lc rgb '#ff7f0e'" ;;
  esac
}
declare -A w0_of=()
through=() effic=()
for m in "${modes[@]}"; do
  f=$tmp/$m.tsv
  w0_of[$m]=$(mode_ws "$m" | head -n 1)
  through+=("'$f' using 1:2 with linespoints $(style "$m") title '$m'"
            "'$f' using 1:4 with lines $(ideal_style "$m") title '$m, ideal (from W0 = ${w0_of[$m]})'")
  effic+=("'$f' using 1:3 with linespoints $(style "$m") title '$m'")
done
w0_text=""
for m in "${modes[@]}"; do w0_text+="${w0_text:+, }$m W0 = ${w0_of[$m]}"; done
# Room above the ideal efficiency 1, and above any efficiency over it.
eff_top=$(for m in "${modes[@]}"; do cat "$tmp/$m.tsv"; done |
          awk -F'\t' 'BEGIN { top = 1 } $3 + 0 > top { top = $3 + 0 } END { print top * 1.1 }')
xtics=$(printf '%s,' "${world_sizes[@]}")
title=${title//\'/\'\'}
{
  echo "set terminal svg size 1500,560 dynamic background rgb 'white' font 'sans,13' noenhanced"
  echo "set output '$tmp/scaling.svg'"
  echo "set datafile separator tab"
  echo "set grid lc rgb '#dddddd'; set border lc rgb '#444444'; set key opaque box lc rgb '#cccccc'"
  echo "set multiplot layout 1,2 title '$title' font 'sans,16'"
  echo "set xlabel 'world size W (ranks)'; set xtics (${xtics%,}); set key outside right top vertical"
  echo "set logscale x 2; set xrange [${world_sizes[0]} / 1.3 : $max_w * 1.3]"
  echo "set title 'throughput'; set ylabel 'global tokens/s'; set logscale y"
  echo "plot $(IFS=,; echo "${through[*]}")"
  echo "unset logscale y"
  echo "set title 'efficiency: throughput(W) · W0 / (W · throughput(W0)); $w0_text'; set ylabel 'efficiency'"
  echo "set yrange [0:$eff_top]; set ytics auto"
  echo "plot $(IFS=,; echo "${effic[*]}"), 1 with lines dt 2 lw 1 lc rgb '#555555' title 'ideal'"
  echo "unset multiplot"
} >"$tmp/plot.gp"
gnuplot "$tmp/plot.gp" 2>"$tmp/gnuplot.log" || { cat "$tmp/gnuplot.log" >&2; die "gnuplot failed"; }
svg=$out/scaling.svg
mv -f -- "$tmp/scaling.svg" "$svg"

echo
cat "$tmp/table.txt"
echo
if [ -s "$tmp/warnings.txt" ]; then
  sed "s|^|$me: warning: |" "$tmp/warnings.txt" >&2
  echo
fi
echo "csv:  $csv"
echo "plot: $svg"
