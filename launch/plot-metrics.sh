#!/usr/bin/env bash
# Plots a qarac-train run's metrics.jsonl as one SVG: the training loss of each task per step
# (thin: every step; bold: moving average), the held-out evaluation (accuracies, losses) and the
# forgetting monitor (MLM loss of the answer encoder with the base model's own head on held-out
# text; the dashed line is its value before fine-tuning). Each series has its own colour (by task)
# and marker and dash (within a task); the chance levels of answer selection and retrieval are
# dotted lines. The loss and forgetting axes span at least a factor of 2.25 around their data,
# so that a change of a few hundredths of a percent reads as flat. Panels without data are left out, so an MLM
# pre-training run gets its loss panels only. Safe to run while the job is still writing.
#   launch/plot-metrics.sh RUN_DIR [OUT.svg]      (default: RUN_DIR/metrics.svg; a folder: OUT/metrics.svg)
# Needs jq and gnuplot (bash launch/install-deps.sh --job).
set -euo pipefail
# Numbers are read and written with a decimal point in any locale: under de_DE.UTF-8 mawk
# (Debian's awk) read 7.3257 as 7 and wrote 7,0000, and gnuplot stopped at the data.
export LC_ALL=C
me=launch/plot-metrics.sh
die() { echo "$me: $*" >&2; exit 1; }

case "${1:-}" in
  -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;;
  "") die "usage: $me RUN_DIR [OUT.svg]" ;;
esac
(($# <= 2)) || die "usage: $me RUN_DIR [OUT.svg]"
run_dir=$1
out=${2:-$run_dir/metrics.svg}
[ ! -d "$out" ] || out=$out/metrics.svg   # named by the file it writes, not by the folder
metrics=$run_dir/metrics.jsonl
[ -s "$metrics" ] || die "no metrics to plot: '$metrics' is missing or empty"
for tool in jq gnuplot; do
  command -v "$tool" >/dev/null || die "$tool not found; install it with: bash launch/install-deps.sh --job"
done

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

# table PART [REGEX] > TSV: a header line (step, then one series name per column), then one row
# per step. PART train: the per-task training losses of the step lines; PART eval: the numeric
# keys of the evaluation lines that match REGEX. Lines that do not parse (the line
# being written) are skipped; a step recorded twice (a resumed run) keeps its last record.
# Series are ordered ed, qa, rs, cs, mlm (rehearsal), then the rest; a missing value is NaN (a gap in the line).
table() {
  jq -Rrn --arg part "$1" --arg regex "${2:-}" '
    def rank: {"ed": 0, "encode_decode": 0, "qa": 1, "question_answering": 1, "rs": 2,
               "reasoning": 2, "cs": 3, "consistency": 3, "mlm": 4, "masked_lm": 4}[split(".")[0]] // 9;
    [inputs | fromjson? | objects | select(.step | type == "number")] as $all
    | if $part == "train" then
        $all | map(select(.eval != true and (.loss | type) == "object"))
             | group_by(.step) | map(.[-1] + .[-1].loss)
      else
        $all | map(select(.eval == true)) | group_by(.step) | map(.[-1])
      end
    | . as $rows
    | if $part == "train" then map(.loss | keys) | add // []
      else map(to_entries[] | select((.value | type) == "number") | .key | select(test($regex)))
      end
    | unique | sort_by([rank, .]) as $keys
    | if ($keys | length) == 0 then empty else
        (["step"] + $keys | @tsv),
        ($rows[] | [.step] + [$keys[] as $k | .[$k] // "NaN"] | @tsv)
      end' "$metrics"
}

table train >"$tmp/train.tsv"
table eval 'accuracy$' >"$tmp/accuracy.tsv"
table eval '_chance$' >"$tmp/chance.tsv"
table eval '\.loss$' >"$tmp/loss.tsv"
table eval '^forgetting\.' >"$tmp/forgetting.tsv"
rows() { if [ -s "$1" ]; then echo $(($(wc -l <"$1") - 1)); else echo 0; fi; }

# Moving average of each training series (an exponential one with the span of a 1/40 of the
# run), so that the trend reads through the per-step noise of small batches.
span=$(( $(rows "$tmp/train.tsv") / 40 ))
((span >= 1)) || span=1
awk -F'\t' -v OFS='\t' -v alpha="$(awk -v s="$span" 'BEGIN { print 2 / (s + 1) }')" '
  NR == 1 { print; next }
  { for (i = 2; i <= NF; i++)
      if ($i != "NaN") { m[i] = seen[i]++ ? m[i] + alpha * ($i - m[i]) : $i; $i = m[i] }
    print }' "$tmp/train.tsv" >"$tmp/train-smooth.tsv"

# log_axis FILE: the gnuplot settings of a log y axis over the data of FILE: a range at least a
# factor of 2.25 wide around its geometric middle, so that small changes are not blown up by
# autoscaling, and ticks at 1, 2 and 5 times the powers of ten within it (1, 1.5, 2, 2.5, 3 to 9
# times them when that gives fewer than three), since gnuplot labels only the powers of ten
# themselves and a range inside one decade would have no label at all.
log_axis() {
  awk -F'\t' 'NR > 1 { for (i = 2; i <= NF; i++) if ($i != "NaN" && $i > 0) {
                 lo = (n && lo < $i) ? lo : $i; hi = (n && hi > $i) ? hi : $i; n++ } }
    END { if (!n) { print "set logscale y; set yrange [*:*]"; exit }
          mid = sqrt(lo * hi); if (lo > mid / 1.5) lo = mid / 1.5; if (hi < mid * 1.5) hi = mid * 1.5
          lo /= 1.1; hi *= 1.1
          for (pass = 1; pass <= 2; pass++) {
            split(pass == 1 ? "1 2 5" : "1 1.5 2 2.5 3 4 5 6 7 8 9", m, " "); tics = ""; count = 0
            for (k = int(log(lo) / log(10)) - 1; k <= int(log(hi) / log(10)) + 1; k++)
              for (j = 1; j in m; j++) { v = m[j] * 10 ^ k
                if (v >= lo && v <= hi) { tics = tics (count++ ? ", " : "") sprintf("%g", v) } }
            if (count >= 3) break
          }
          printf "set logscale y; set yrange [%g:%g]; set ytics (%s)\n", lo, hi, tics }' "$1"
}

# One colour per task in every panel.
colour() {
  case "$1" in
    ed.*|encode_decode) echo "1f77b4" ;;
    qa.*|question_answering) echo "ff7f0e" ;;
    rs.*|reasoning) echo "2ca02c" ;;
    cs.*|consistency) echo "d62728" ;;
    mlm.*|masked_lm) echo "9467bd" ;;
    *) echo "8c564b" ;;
  esac
}
# gnuplot_string TEXT: TEXT as a gnuplot string. Names come from metrics.jsonl's keys, which
# whoever wrote the file chose: a quote in one ended the string, and what followed ran as gnuplot
# (system("...") runs a shell command). In single quotes gnuplot substitutes nothing ('' is a quote).
gnuplot_string() {
  printf "'%s'" "${1//\'/\'\'}"
}
# series FILE STYLE [notitle]: the plot clauses of every column of FILE, titled by its header
# (none with notitle); the series of one task share its colour and differ in marker and dash.
series() {
  local file=$1 style=$2 i=2 name names clauses=() task markers=(7 5 9 11 13) dashes=(1 2 4 5 3) title
  local -A seen=()
  IFS=$'\t' read -r -a names <"$file"
  for name in "${names[@]:1}"; do
    task=${name%%.*}
    local k=${seen[$task]:-0}
    seen[$task]=$((k + 1))
    title="title $(gnuplot_string "$name")"
    [ "${3:-}" != notitle ] || title=notitle
    clauses+=("'$file' skip 1 using 1:$i $style pt ${markers[k % 5]} dt ${dashes[k % 5]} lc rgb '#$(colour "$name")' $title")
    i=$((i + 1))
  done
  local IFS=,
  echo "${clauses[*]}"
}

panels=()
if (($(rows "$tmp/train.tsv"))); then
  raw=$(series "$tmp/train.tsv" "with lines lw 0.6" notitle)
  # The same colours, 75% transparent and without a legend entry, under the moving average.
  raw=${raw//"lc rgb '#"/"lc rgb '#C0"}
  panels+=("set title 'training loss per task (thin: each step, bold: moving average of $span)'
set xlabel 'step'; set ylabel 'loss (lower is better)'; $(log_axis "$tmp/train.tsv")
set key outside right top vertical
plot $raw, $(series "$tmp/train-smooth.tsv" "with lines lw 2")
unset logscale y; set yrange [*:*]; set ytics auto")
fi
if (($(rows "$tmp/accuracy.tsv"))); then
  # Each chance level (qa.retrieval_chance, qa.selection_chance) a dotted line of its task's colour.
  chance=
  if (($(rows "$tmp/chance.tsv"))); then
    IFS=$'\t' read -r -a levels <"$tmp/chance.tsv"
    for i in "${!levels[@]}"; do
      ((i > 0)) || continue
      chance+=", '$tmp/chance.tsv' skip 1 using 1:$((i + 1)) with lines dt 3 lw 1.5 lc rgb '#$(colour "${levels[i]}")' title $(gnuplot_string "${levels[i]%_chance} chance")"
    done
  fi
  panels+=("set title 'held-out accuracies (higher is better)'
set xlabel 'step'; set ylabel 'accuracy'; set yrange [0:1.05]; set key outside right top vertical
plot $(series "$tmp/accuracy.tsv" "with linespoints lw 2 ps 0.6")$chance
set yrange [*:*]")
fi
if (($(rows "$tmp/loss.tsv"))); then
  panels+=("set title 'held-out loss per task'
set xlabel 'step'; set ylabel 'loss (lower is better)'; $(log_axis "$tmp/loss.tsv")
set key outside right top vertical
plot $(series "$tmp/loss.tsv" "with linespoints lw 2 ps 0.6")
unset logscale y; set yrange [*:*]; set ytics auto")
fi
if (($(rows "$tmp/forgetting.tsv"))); then
  before=$(awk -F'\t' 'NR == 2 { print $2 }' "$tmp/forgetting.tsv")
  panels+=("set title 'forgetting monitor: MLM loss of the answer encoder with the base model''s head'
set xlabel 'step'; set ylabel 'held-out MLM loss (lower is better)'; $(log_axis "$tmp/forgetting.tsv")
set key outside right top vertical
plot $(series "$tmp/forgetting.tsv" "with linespoints lw 2 ps 0.6"), \
  $before with lines dt 2 lw 1.5 lc rgb '#555555' title 'before fine-tuning'")
fi
((${#panels[@]})) || die "'$metrics' holds no step or evaluation lines to plot"

case ${#panels[@]} in
  1) layout="1,1"; size="900,560" ;;
  2) layout="1,2"; size="1500,560" ;;
  *) layout="2,2"; size="1500,1040" ;;
esac
# The run's name, not the path of the machine it ran on: its folder and the folder above.
name=$(cd -- "$run_dir" && pwd)
name=$(basename -- "$(dirname -- "$name")")/$(basename -- "$name")
name=${name//\'/\'\'}   # a quote inside a gnuplot string is doubled
steps=$(awk -F'\t' 'END { print $1 }' "$tmp/train.tsv")
{
  echo "set terminal svg size $size dynamic background rgb 'white' font 'sans,13' noenhanced"
  echo "set output '$tmp/out.svg'"
  echo "set datafile separator tab"
  echo "set grid lc rgb '#dddddd'; set border lc rgb '#444444'; set key opaque box lc rgb '#cccccc'"
  echo "set multiplot layout $layout title 'QARAC-MT: $name${steps:+ (step $steps)}' font 'sans,16'"
  printf '%s\n' "${panels[@]}"
  echo "unset multiplot"
} >"$tmp/plot.gp"
[ -z "${QARAC_PLOT_SCRIPT:-}" ] || cp -- "$tmp/plot.gp" "$QARAC_PLOT_SCRIPT"  # for the tests
gnuplot "$tmp/plot.gp" 2>"$tmp/gnuplot.log" || { cat "$tmp/gnuplot.log" >&2; die "gnuplot failed"; }
mkdir -p -- "$(dirname -- "$out")"
mv -f -- "$tmp/out.svg" "$out"
echo "$out"
