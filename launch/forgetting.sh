#!/usr/bin/env bash
# Forgetting experiment: does training the four QARAC tasks one after another make the model
# forget more than training them in parallel? From one base model and one data set it runs
#   (a) sequential   the four tasks one after another (ed, qa, rs, cs), S/4 steps each: four
#                    qarac-train runs on one run directory, each resuming the one before and
#                    training its task alone (its weight 1, the others 0);
#   (b) parallel     the four tasks at once (QARAC), S steps;
#   (c) rehearsal    as (b) with a fifth objective, masked LM on the text stream through the
#                    answer encoder's base (--task.mlm.weight 1);
#   (d) contrastive  as (b) with the contrastive QA objective (--task.qa.objective contrastive);
# all with the same seed, batches and learning-rate schedule (a warmup, then a constant rate:
# --optimizer.decay constant, so that cutting a run into phases leaves its schedule the same),
# evaluating every E steps on held-out data. Writes forgetting.csv (run, step, each task's
# held-out metric, forgetting.mlm_loss), forgetting.svg (those over the steps, one colour per run)
# and prints the final figures of each run, which of sequential and parallel forgot more, and
# how much of each task the sequential run kept after its own phase. docs/forgetting.md explains
# the experiment and its figures.
#
#   bash launch/forgetting.sh --quick [options] [-- qarac-train options]
#   bash launch/forgetting.sh --base DIR --data DIR --eval-data DIR --steps S [options] [-- qarac-train options]
#     --quick            the sample data (data/sample) prepared into OUT/data, a tiny base
#                        pre-trained on it (launch/configs/quickstart-pretrain.ini, as
#                        launch/quickstart.sh does) unless --base gives one, the fine-tuning
#                        settings of launch/configs/quickstart.ini, S = 200 steps: minutes on 2 cores
#     --base DIR         Hugging Face RoBERTa directory with its MLM head (the forgetting monitor
#                        reads it); with --quick: instead of pre-training the tiny base
#     --data DIR         qarac-prep task streams to train on
#     --eval-data DIR    qarac-prep task streams held out for the evaluations
#     --tokenizer DIR    tokenizer of the forgetting monitor (and of --quick's data); default:
#                        --base's when it holds one, with --quick data/sample/tokenizer
#     --config FILE      qarac-train settings of every run (default launch/configs/quickstart.ini
#                        with --quick, else launch/configs/qarac-roberta-base.ini)
#     --steps S          steps of each run, S >= 4 (the sequential phases end at S/4, S/2, 3S/4, S)
#     --eval-every E     held-out evaluation every E steps, and at step 0 and each phase's end
#                        (default S/8)
#     --warmup K         learning-rate warmup of every run, in steps (default S/10; shorter than
#                        the first sequential phase)
#     --runs LIST        which runs, comma-separated letters (default a,b,c,d)
#     --ranks N          MPI ranks of every run (default 4, one per task; with --launcher srun the
#                        allocation's SLURM_NTASKS)
#     --launcher L       local (launch/train-local.sh under MPIRUN, any MPI; the default) or srun
#                        (inside a Slurm allocation, with slurm/common.sh's options as
#                        launch/scaling.sh uses them; extra srun options in QARAC_SRUN_OPTS)
#     --device D         cpu or cuda (default cpu with --quick, else cuda)
#     --out DIR          output directory (default runs/forgetting); must be empty or absent
#     --force            replace a previous forgetting experiment in --out
#     --summarise-only   run nothing: read the runs of --runs already in --out and write the CSV,
#                        the plots and the table again
# Options after -- go to every run's qarac-train and win over --config, except the ones this
# script sets (output, resume, base, data, evaluation, steps, device, schedule, task weights).
# e.g. roberta-base on one GPU node, 4 ranks:
#   bash launch/forgetting.sh --base models/roberta-base --data prepared --eval-data prepared-dev \
#       --steps 4000 --eval-every 250 --warmup 200 -- --train.dtype bf16
#
# OUT gets: forgetting.csv, forgetting.svg, runs/<run>/ (the qarac-train run directories, each
# with its own metrics.svg of launch/plot-metrics.sh), logs/ (each run's or phase's full output
# and exact command), data/ and base/ with --quick. CSV columns: run, step, ed.token_accuracy,
# qa.retrieval_accuracy, qa.selection_accuracy, rs.token_accuracy, cs.accuracy,
# forgetting.mlm_loss (the evaluation lines of each run's metrics.jsonl; an empty field: the run
# did not measure it). Needs jq and gnuplot (bash launch/install-deps.sh --job).
set -euo pipefail
# Numbers are read and written with a decimal point in any locale: under de_DE.UTF-8 mawk
# (Debian's awk) read 7.3257 as 7 and wrote 7,0000, and gnuplot stopped at the data.
export LC_ALL=C
me=launch/forgetting.sh
die() { echo "$me: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; }

# The QA files of --quick, in data/sample: training and held-out. Their subjects recur between
# the two (in other words), so that retrieval among all held-out answers can be learnt.
quick_wikiqa_train=WikiQA-subjects-train.tsv
quick_wikiqa_heldout=WikiQA-subjects-dev.tsv
# The rehearsal's batch with --quick: that of every task in launch/configs/quickstart.ini.
quick_rehearsal_batch=48

# The runs, each in one place: its name (its directory and its rows in the CSV) and the
# qarac-train options that make it what it is beyond what every run shares (the sequential
# run's phases are made below).
all_runs=(a b c d)
declare -A run_name=([a]=sequential [b]=parallel [c]=rehearsal [d]=contrastive)
declare -A run_options=([a]="" [b]="" [c]="--task.mlm.weight 1" [d]="--task.qa.objective contrastive")
tasks=(ed qa rs cs)   # the sequential run's order of phases
# The held-out metrics of the CSV, the table and the plot; the task of each is its prefix.
metrics=(ed.token_accuracy qa.retrieval_accuracy qa.selection_accuracy rs.token_accuracy cs.accuracy
         forgetting.mlm_loss)

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=launch/common.sh
source "$repo/launch/common.sh"
quick=0
base=""
data=""
eval_data=""
tokenizer=""
config=""
steps=""
eval_every=""
warmup=""
runs_list=$(IFS=,; echo "${all_runs[*]}")
ranks=""
launcher=local
device=""
out=runs/forgetting
force=0
summarise_only=0
train_args=()
while (($#)); do
  case "$1" in
    --base|--data|--eval-data|--tokenizer|--config|--steps|--eval-every|--warmup|--runs|--ranks|--launcher|--device|--out)
      (($# >= 2)) || die "$1 needs a value (see --help)"
      case "$1" in
        --base) base=$(realpath -m -- "$2") ;;
        --data) data=$(realpath -m -- "$2") ;;
        --eval-data) eval_data=$(realpath -m -- "$2") ;;
        --tokenizer) tokenizer=$(realpath -m -- "$2") ;;
        --config) config=$(realpath -m -- "$2") ;;
        --steps) steps=$2 ;;
        --eval-every) eval_every=$2 ;;
        --warmup) warmup=$2 ;;
        --runs) runs_list=$2 ;;
        --ranks) ranks=$2 ;;
        --launcher) launcher=$2 ;;
        --device) device=$2 ;;
        --out) out=$2 ;;
      esac
      shift 2 ;;
    --quick) quick=1; shift ;;
    --force) force=1; shift ;;
    --summarise-only) summarise_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; train_args=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
# --out is relative to the repository unless given (as launch/quickstart.sh's).
if [ "$out" = runs/forgetting ]; then out=$repo/runs/forgetting; else out=$(realpath -m -- "$out"); fi
cd "$repo"

# --- The options.
IFS=, read -r -a runs <<<"$runs_list"
((${#runs[@]})) || die "--runs is empty"
declare -A chosen=()
for r in "${runs[@]}"; do
  [ -n "${run_name[$r]:-}" ] || die "--runs: unknown run '$r' (a sequential, b parallel, c rehearsal, d contrastive)"
  chosen[$r]=1
done
runs=()
for r in "${all_runs[@]}"; do [ -z "${chosen[$r]:-}" ] || runs+=("$r"); done
for tool in jq gnuplot; do
  command -v "$tool" >/dev/null || die "$tool not found; install it with: bash launch/install-deps.sh --job"
done

if ! ((summarise_only)); then
  positive() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, not '$2'"; }
  if ((quick)); then
    [ -z "$data$eval_data" ] || die "--quick prepares the sample data itself: leave out --data and --eval-data"
    steps=${steps:-200}
    config=${config:-$repo/launch/configs/quickstart.ini}
    device=${device:-cpu}
    run_options[c]+=" --task.mlm.batch $quick_rehearsal_batch"
  else
    for pair in "--base:$base" "--data:$data" "--eval-data:$eval_data" "--steps:$steps"; do
      [ -n "${pair#*:}" ] || die "${pair%%:*} is needed (or --quick for the sample data; see --help)"
    done
    config=${config:-$repo/launch/configs/qarac-roberta-base.ini}
    device=${device:-cuda}
  fi
  positive --steps "$steps"
  ((steps >= 4)) || die "--steps $steps: the sequential run needs 4 at least (one a phase)"
  eval_every=${eval_every:-$((steps / 8 > 0 ? steps / 8 : 1))}
  positive --eval-every "$eval_every"
  warmup=${warmup:-$((steps / 10))}
  [[ "$warmup" =~ ^(0|[1-9][0-9]*)$ ]] || die "--warmup must be a non-negative integer (no leading zero), not '$warmup'"
  ((warmup < steps / 4)) ||
    die "--warmup $warmup is not shorter than the first sequential phase ($((steps / 4)) steps of --steps $steps)"
  case "$launcher" in local|srun) ;; *) die "--launcher must be local or srun, not '$launcher'" ;; esac
  case "$device" in cpu|cuda) ;; *) die "--device must be cpu or cuda, not '$device'" ;; esac
  if [ -z "$ranks" ]; then
    ranks=4
    [ "$launcher" != srun ] || ranks=${SLURM_NTASKS:-4}
  fi
  positive --ranks "$ranks"
  # What this script sets for every run may not come through the passthrough as well
  # (qarac-train refuses an option given twice): name the option of this script instead.
  for arg in "${train_args[@]}"; do
    key=${arg%%=*}
    case "$key" in
      --output|--resume|--config|--model.base|--data.dir|--eval.dir|--eval.every|--eval.tokenizer|\
      --train.steps|--train.device|--optimizer.decay|--optimizer.warmup|--task.*.weight)
        die "$key after -- is set by $me for every run (see --help: --out, --config, --base, --data, --eval-data, --tokenizer, --steps, --device, --eval-every, --warmup, --runs)" ;;
    esac
  done
fi

# --- The programs (launch/common.sh says where they are looked for).
find_programs

# --- Checks before any work: the inputs, and an output directory that may be written.
marker=$out/.qarac-forgetting   # tells --force that the directory is a forgetting experiment
if ((summarise_only)); then
  [ -d "$out/runs" ] || die "--summarise-only: no runs in $out (no $out/runs/)"
else
  [ -x "$train" ] || die "no qarac-train at $train: build it (bash launch/quickstart.sh builds it into build/) or set QARAC_BUILD"
  if ((quick)); then [ -x "$prep" ] || die "no qarac-prep at $prep: build it or set QARAC_BUILD"; fi
  [ -f "$config" ] || die "--config $config: no such file"
  if [ -n "$base" ]; then
    for f in config.json model.safetensors; do
      [ -f "$base/$f" ] || die "--base $base: no $f there (a Hugging Face RoBERTa directory is needed)"
    done
  fi
  for pair in "--data:$data" "--eval-data:$eval_data"; do
    dir=${pair#*:}
    [ -n "$dir" ] || continue
    for t in encode_decode question_answering reasoning consistency; do
      [ -f "$dir/$t.h5" ] || die "${pair%%:*} $dir: no $t.h5 there (qarac-prep's output is needed)"
    done
  done
  if [ -z "$tokenizer" ]; then
    if [ -n "$base" ] && has_tokenizer "$base"; then tokenizer=$base
    elif ((quick)); then tokenizer=$repo/data/sample/tokenizer
    else die "the forgetting monitor needs the base's tokenizer: --base $base holds none, give it with --tokenizer DIR"
    fi
  fi
  has_tokenizer "$tokenizer" || die "tokenizer $tokenizer: neither tokenizer.json nor vocab.json + merges.txt"
  # --quick prepares the data for the base's position table: its longest field + 2 (RoBERTa).
  if ((quick)) && [ -n "$base" ]; then
    max_positions=$(base_positions "$base" "$tokenizer") || exit 1
  elif ((quick)); then
    max_positions=130   # the tiny base: 128 tokens, as long as every sample example
  fi
  if [ "$launcher" = srun ]; then
    [ -n "${SLURM_JOB_ID:-}" ] || die "--launcher srun runs inside a Slurm allocation (sbatch or salloc); none here (no SLURM_JOB_ID)"
    command -v srun >/dev/null || die "--launcher srun: srun not found"
    # shellcheck source=slurm/common.sh
    source "$repo/slurm/common.sh"
    if [ -n "${SLURM_NTASKS:-}" ] && ((ranks > SLURM_NTASKS)); then
      die "--ranks $ranks: the allocation has $SLURM_NTASKS tasks (SLURM_NTASKS)"
    fi
  fi
  # Each run's own options must be known to this qarac-train (the help captured first: grep -q
  # leaving a pipe early would fail the writer under pipefail).
  help=$("$train" --help 2>/dev/null || true)
  for r in "${runs[@]}"; do
    for option in ${run_options[$r]}; do
      [[ "$option" != --* ]] || grep -q -- "^ *$option " <<<"$help" ||
        die "run $r (${run_name[$r]}) needs qarac-train's $option, which $train lacks: leave it out (--runs) or rebuild"
    done
  done
  prepare_out "forgetting experiment" "$base" "$data" "$eval_data" "$tokenizer" "$config"
fi
logs=$out/logs

duration() { local s=$1; if ((s >= 60)); then echo "$((s / 60)) min $((s % 60)) s"; else echo "$s s"; fi; }
# last_eval RUN_DIR KEY: KEY of the run's last evaluation so far, or '-'.
last_eval() {
  jq -Rrn --arg k "$2" '[inputs | fromjson? | objects | select(.eval == true)] | last | .[$k] // "-"
    | if type == "number" then (. * 10000 | round / 10000) else . end' "$1/metrics.jsonl" 2>/dev/null || echo -
}

if ! ((summarise_only)); then
  # --- The inputs of --quick: the sample data and, unless --base gives one, the tiny base.
  if ((quick)); then
    sample=$repo/data/sample
    data=$out/data/train
    eval_data=$out/data/heldout
    echo "$me: preparing the sample data ($sample, tokenizer $tokenizer) into $out/data"
    logged prep-train "$prep" --tokenizer "$tokenizer" --out "$data" --max-length "$((max_positions - 2))" \
      --text "$sample/corpus_train.txt" --wikiqa "$sample/$quick_wikiqa_train" \
      --avicenna "$sample/Avicenna_Train.csv" --snli "$sample/snli_1.0_train.jsonl"
    logged prep-heldout "$prep" --tokenizer "$tokenizer" --out "$eval_data" --max-length "$((max_positions - 2))" \
      --text "$sample/corpus_heldout.txt" --wikiqa "$sample/$quick_wikiqa_heldout" \
      --avicenna "$sample/Avicenna_Test.csv" --snli "$sample/snli_1.0_dev.txt"
    if [ -z "$base" ]; then
      echo "$me: pre-training the tiny base (launch/configs/quickstart-pretrain.ini) into $out/base"
      t0=$SECONDS
      # One process: a single task (the text stream).
      logged base "$train" --config launch/configs/quickstart-pretrain.ini --output "$out/base" \
        --model.max_positions "$max_positions" --model.tokenizer "$tokenizer" \
        --data.dir "$data" --eval.dir "$eval_data"
      base=$out/base/export/base
      echo "   done in $(duration $((SECONDS - t0))): held-out MLM loss $(last_eval "$out/base" mlm.loss)"
    fi
  fi

  # --- The runs. What every run shares; then each run's own options.
  common=(--config "$config" --model.base "$base" --data.dir "$data" --eval.dir "$eval_data"
          --eval.tokenizer "$tokenizer" --eval.every "$eval_every" --train.device "$device"
          --optimizer.warmup "$warmup" --optimizer.decay constant)
  [ "$device" != cpu ] || mapfile -t -O "${#common[@]}" common < <(cpu_dtype_options "$config" "${train_args[@]}")
  # launch ARGS...: the command that runs qarac-train ARGS with the ranks under the launcher.
  launch() {
    if [ "$launcher" = local ]; then
      cmd=(bash "$repo/launch/train-local.sh" -n "$ranks" -- "$@")
    else
      local srun_opts srun_extra tpn
      mapfile -t srun_opts < <(srun_options "$device")
      cmd=(srun "${srun_opts[@]}" -n "$ranks")
      # Whole nodes first: ceil(ranks / tasks per node) nodes when the allocation says how many.
      tpn=${SLURM_NTASKS_PER_NODE:-}
      if [[ "$tpn" =~ ^[1-9][0-9]*$ ]]; then cmd+=(-N "$(((ranks + tpn - 1) / tpn))"); fi
      read -r -a srun_extra <<<"${QARAC_SRUN_OPTS:-}"
      cmd+=("${srun_extra[@]}" "$train" "$@")
    fi
  }
  # weights TASK...: qarac-train's task weights, one a line: 1 for the tasks named, 0 for the others.
  weights() {
    local t w
    for t in "${tasks[@]}"; do
      w=0
      [[ " $* " != *" $t "* ]] || w=1
      printf -- '--task.%s.weight\n%d\n' "$t" "$w"
    done
  }
  t_runs=$SECONDS
  echo "$me: runs ${runs[*]} ($(for r in "${runs[@]}"; do printf '%s ' "${run_name[$r]}"; done | sed 's/ $//')) of $steps steps, evaluated every $eval_every, warmup $warmup then a constant rate; $ranks rank(s), $device, $launcher launcher, into $out/runs"
  for r in "${runs[@]}"; do
    name=${run_name[$r]}
    dir=$out/runs/$name
    read -r -a own <<<"${run_options[$r]}"
    t0=$SECONDS
    if [ "$r" = a ]; then
      for k in 1 2 3 4; do
        task=${tasks[k - 1]}
        end=$((k * steps / 4))
        resume=()
        ((k == 1)) || resume=(--resume)
        mapfile -t phase_weights < <(weights "$task")
        printf '   (%s) %s, phase %d/4: %s alone, steps %d..%d\n' "$r" "$name" "$k" "$task" "$(((k - 1) * steps / 4))" "$end"
        launch "${common[@]}" --output "$dir" "${resume[@]}" --train.steps "$end" "${phase_weights[@]}" \
          "${own[@]}" "${train_args[@]}"
        logged "$name-$k-$task" "${cmd[@]}"
        [ -d "$dir/checkpoints/$(printf 'step-%010d' "$end")" ] ||
          die "$name phase $k left no checkpoint of step $end in $dir/checkpoints: the next phase could not resume it"
      done
    else
      printf '   (%s) %s: steps 0..%d\n' "$r" "$name" "$steps"
      mapfile -t all_weights < <(weights "${tasks[@]}")
      launch "${common[@]}" --output "$dir" --train.steps "$steps" "${all_weights[@]}" "${own[@]}" "${train_args[@]}"
      logged "$name" "${cmd[@]}"
    fi
    echo "         done in $(duration $((SECONDS - t0))): forgetting.mlm_loss $(last_eval "$dir" forgetting.mlm_loss)"
  done
  echo "$me: the runs took $(duration $((SECONDS - t_runs)))"
fi

# --- Summary: the evaluation lines of every run.
tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT
keys_json=$(printf '%s\n' "${metrics[@]}" qa.selection_chance qa.retrieval_chance | jq -R . | jq -cs .)
summarised=()
for r in "${runs[@]}"; do
  name=${run_name[$r]}
  file=$out/runs/$name/metrics.jsonl
  if [ ! -s "$file" ]; then
    ((summarise_only)) || die "no metrics: '$file' is missing or empty (see $logs/)"
    continue
  fi
  # <name>.tsv: step, the metrics, qa.selection_chance, qa.retrieval_chance; one row per
  # evaluated step (a step recorded twice keeps its last record, a half-written line is
  # skipped); NaN: not measured.
  jq -Rrn --argjson keys "$keys_json" '
    [inputs | fromjson? | objects | select(.eval == true and (.step | type) == "number")]
    | group_by(.step) | map(.[-1]) | .[] | . as $e
    | [.step] + [$keys[] | $e[.] | if type == "number" then . else "NaN" end] | @tsv' "$file" >"$tmp/$name.tsv"
  (($(wc -l <"$tmp/$name.tsv") >= 2)) ||
    die "$file: fewer than two evaluations (one at step 0 and one later needed)"
  summarised+=("$r")
done
((${#summarised[@]})) || die "--summarise-only: none of the runs ${runs[*]} is in $out/runs/"

csv=$out/forgetting.csv
{
  (IFS=,; echo "run,step,${metrics[*]}")
  for r in "${summarised[@]}"; do
    awk -F'\t' -v OFS=, -v run="${run_name[$r]}" -v n="${#metrics[@]}" '
      { line = run OFS $1; for (i = 2; i <= n + 1; i++) line = line OFS ($i == "NaN" ? "" : $i); print line }' \
      "$tmp/${run_name[$r]}.tsv"
  done
} >"$tmp/forgetting.csv"
mv -f -- "$tmp/forgetting.csv" "$csv"

# The table: one row per run, its last evaluation against its first (step 0, the base model).
forgetting_col=${#metrics[@]}   # forgetting.mlm_loss is the last metric: column n + 1 of a TSV
{
  printf '%-12s %6s %11s %10s %18s' run step "mlm step 0" "mlm end" "rise"
  for m in "${metrics[@]:0:${#metrics[@]}-1}"; do printf ' %*s' "$((${#m} > 10 ? ${#m} : 10))" "$m"; done
  printf '\n'
  for r in "${summarised[@]}"; do
    awk -F'\t' -v run="${run_name[$r]}" -v f="$((forgetting_col + 1))" -v names="${metrics[*]}" '
      function value(x) { return x == "NaN" ? "-" : sprintf("%.4f", x) }
      NR == 1 { first = $f }
      { for (i = 1; i <= NF; i++) last[i] = $i }
      END {
        n = split(names, name, " ")
        rise = "-"
        if (first != "NaN" && last[f] != "NaN")
          rise = sprintf("%+.4f (%+.1f %%)", last[f] - first, first > 0 ? 100 * (last[f] - first) / first : 0)
        printf "%-12s %6d %11s %10s %18s", run, last[1], value(first), value(last[f]), rise
        for (i = 1; i < n; i++) printf " %*s", (length(name[i]) > 10 ? length(name[i]) : 10), value(last[i + 1])
        printf "\n"
      }' "$tmp/${run_name[$r]}.tsv"
  done
} >"$tmp/table.txt"

# rise RUN: the rise of forgetting.mlm_loss from the run's first evaluation to its last.
rise() {
  awk -F'\t' -v f="$((forgetting_col + 1))" 'NR == 1 { first = $f } END { if (first == "NaN" || $f == "NaN") print "NaN"; else printf "%.6f\n", $f - first }' \
    "$tmp/$1.tsv"
}
verdict=""
if [ -f "$tmp/sequential.tsv" ] && [ -f "$tmp/parallel.tsv" ]; then
  verdict=$(awk -v s="$(rise sequential)" -v p="$(rise parallel)" 'BEGIN {
    if (s == "NaN" || p == "NaN") { print "sequential or parallel has no forgetting.mlm_loss: which forgets more is not measured"; exit }
    if (sprintf("%.4f", s) == sprintf("%.4f", p)) which = "sequential and parallel forget as much"
    else which = (s > p ? "sequential" : "parallel") " forgets more"
    printf "%s, as measured: forgetting.mlm_loss rises by %+.4f training the tasks one after another, by %+.4f training them in parallel\n", which, s, p }')
fi

# The sequential run's tasks at the end of their own phase and at the end of the run: what
# training the later tasks took from each.
kept=""
if [ -f "$tmp/sequential.tsv" ]; then
  kept=$(awk -F'\t' -v names="${metrics[*]}" -v order="${tasks[*]}" '
    { for (i = 1; i <= NF; i++) v[NR, i] = $i; step[NR] = $1; rows = NR }
    END {
      n = split(names, name, " "); split(order, task, " ")
      s = step[rows]
      for (i = 1; i < n; i++) {
        split(name[i], part, "."); phase = 0
        for (k = 1; k <= 4; k++) if (task[k] == part[1]) phase = k
        end = int(phase * s / 4); row = 0
        for (j = 1; j <= rows; j++) if (step[j] == end) row = j
        if (!row || v[row, i + 1] == "NaN" || v[rows, i + 1] == "NaN") continue
        printf "  %-24s phase %d (%s) ends at step %4d: %.4f, step %d: %.4f (%+.4f)\n", name[i], phase, part[1],
               end, v[row, i + 1], s, v[rows, i + 1], v[rows, i + 1] - v[row, i + 1]
      }
    }' "$tmp/sequential.tsv")
fi

# --- The plot: forgetting.mlm_loss and each task's metric over the steps, one colour (and
# marker and dash) per run; the base model's MLM loss (step 0) dashed; the answer selection's
# chance level dotted; the sequential run's phases marked. Accuracies span [0, 1] and the MLM
# loss [0, its largest], so that small changes read as small.
declare -A colour=([a]=d62728 [b]=1f77b4 [c]=2ca02c [d]=9467bd)
declare -A marker=([a]=7 [b]=5 [c]=9 [d]=11)
declare -A dash=([a]=1 [b]=2 [c]=4 [d]=5)
first=${run_name[${summarised[0]}]}
mlm_top=$(for r in "${summarised[@]}"; do cat "$tmp/${run_name[$r]}.tsv"; done |
          awk -F'\t' -v f="$((forgetting_col + 1))" '$f != "NaN" && $f + 0 > top { top = $f + 0 } END { print (top > 0 ? top * 1.15 : 1) }')
base_mlm=$(awk -F'\t' -v f="$((forgetting_col + 1))" 'NR == 1 { print $f }' "$tmp/$first.tsv")
phase_marks=""
if [ -f "$tmp/sequential.tsv" ]; then
  s=$(awk -F'\t' 'END { print $1 }' "$tmp/sequential.tsv")
  for k in 1 2 3 4; do
    from=$(((k - 1) * s / 4)) to=$((k * s / 4))
    ((k == 4)) || phase_marks+="set arrow from $to, graph 0 to $to, graph 1 nohead dt 3 lw 1 lc rgb '#999999'"$'\n'
    phase_marks+="set label 'sequential: ${tasks[k - 1]}' at $(((from + to) / 2)), graph 0.97 center font 'sans,10' tc rgb '#888888'"$'\n'
  done
fi
# measured COL: some run has a value in column COL of its TSV (gnuplot refuses a plot of none).
measured() {
  for r in "${summarised[@]}"; do
    awk -F'\t' -v c="$1" '$c != "NaN" { found = 1; exit } END { exit !found }' "$tmp/${run_name[$r]}.tsv" && return 0
  done
  return 1
}
panels=()
# forgetting.mlm_loss first, the task metrics after it; a metric no run measured is left out.
for i in "$((${#metrics[@]} - 1))" $(seq 0 $((${#metrics[@]} - 2))); do
  m=${metrics[i]}
  col=$((i + 2))
  measured "$col" || continue
  clauses=()
  for r in "${summarised[@]}"; do
    clauses+=("'$tmp/${run_name[$r]}.tsv' using 1:$col with linespoints lw 2 ps 0.7 pt ${marker[$r]} dt ${dash[$r]} lc rgb '#${colour[$r]}' title '${run_name[$r]}'")
  done
  if [ "$m" = forgetting.mlm_loss ]; then
    [ "$base_mlm" = NaN ] || clauses+=("$base_mlm with lines dt 2 lw 1.5 lc rgb '#555555' title 'base model (step 0)'")
    panels+=("set title 'forgetting.mlm_loss (lower: less forgotten)'
set ylabel 'held-out MLM loss'; set yrange [0:$mlm_top]
plot $(IFS=,; echo "${clauses[*]}")")
  else
    # The chance of a random pick: among a question's sentences, or among all held-out answers.
    chance_col=
    case $m in
      qa.selection_accuracy) chance_col=$((${#metrics[@]} + 2)) ;;
      qa.retrieval_accuracy) chance_col=$((${#metrics[@]} + 3)) ;;
    esac
    if [ -n "$chance_col" ] && measured "$chance_col"; then
      clauses+=("'$tmp/$first.tsv' using 1:$chance_col with lines dt 3 lw 1.5 lc rgb '#555555' title 'chance (a random pick)'")
    fi
    panels+=("set title 'held-out $m (higher is better)'
set ylabel '$m'; set yrange [0:1.05]
plot $(IFS=,; echo "${clauses[*]}")")
  fi
done
title="QARAC-MT forgetting, held-out figures against the training step: $(basename -- "$out"), $(awk -F'\t' 'END { print $1 }' "$tmp/$first.tsv") steps, runs: $(for r in "${summarised[@]}"; do printf '%s ' "${run_name[$r]}"; done | sed 's/ $//')"
title=${title//\'/\'\'}
{
  echo "set terminal svg size 1500,960 dynamic background rgb 'white' font 'sans,13' noenhanced"
  echo "set output '$tmp/forgetting.svg'"
  echo "set datafile separator tab"
  echo "set grid lc rgb '#dddddd'; set border lc rgb '#444444'; set key opaque box lc rgb '#cccccc' below"
  echo "set multiplot layout 2,3 title '$title' font 'sans,16'"
  # The x axis (the training step) is named in the title: a label would sit under the key.
  echo "unset xlabel"
  printf '%s' "$phase_marks"
  printf '%s\n' "${panels[@]}"
  echo "unset multiplot"
} >"$tmp/plot.gp"
gnuplot "$tmp/plot.gp" 2>"$tmp/gnuplot.log" || { cat "$tmp/gnuplot.log" >&2; die "gnuplot failed"; }
svg=$out/forgetting.svg
mv -f -- "$tmp/forgetting.svg" "$svg"
# Each run's own plot (training losses, every held-out metric) beside its metrics.
for r in "${summarised[@]}"; do
  bash "$repo/launch/plot-metrics.sh" "$out/runs/${run_name[$r]}" >/dev/null
done

echo
echo "held-out figures at the end of each run (mlm: forgetting.mlm_loss, the base model's MLM loss"
echo "through the answer encoder, lower is better, a rise from step 0 is forgetting; the task metrics:"
echo "higher is better)"
echo
cat "$tmp/table.txt"
if [ -n "$verdict" ]; then
  echo
  echo "$verdict"
fi
if [ -n "$kept" ]; then
  echo
  echo "sequential: each task at the end of its own phase and at the end of the run"
  echo "$kept"
fi
echo
echo "csv:  $csv"
echo "plot: $svg (each run's own: $out/runs/<run>/metrics.svg)"
((summarise_only)) || echo "$me: finished in $(duration "$SECONDS")"
