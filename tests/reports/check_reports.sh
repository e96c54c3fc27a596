#!/usr/bin/env bash
# launch/metrics-table.sh, launch/plot-metrics.sh and launch/compare-runs.sh on made-up runs:
# the table marks which direction is better and lists the example counts apart; the plot gives
# every series its own look (the two QA accuracies share a colour, not a marker), draws the
# chance level, names the run without the machine's path, and keeps a change of 0.03% flat; the
# comparison shows what differs, sorts by a metric, notes runs evaluated on different data and
# says in one line when its standard output cannot be written.
#   tests/reports/check_reports.sh SOURCE_DIR
# Exits 77 (skipped) when jq or gnuplot is missing (bash launch/install-deps.sh --job).
set -euo pipefail
me=tests/reports/check_reports.sh
src=$(cd "${1:?usage: $me SOURCE_DIR}" && pwd)
for tool in jq gnuplot; do
  command -v "$tool" >/dev/null || { echo "$me: skipped: $tool is not installed (launch/install-deps.sh --job)"; exit 77; }
done
work=$(mktemp -d "${TMPDIR:-/tmp}/qarac-reports-XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "$me: FAIL: $*" >&2; exit 1; }

run=$work/experiments/finetune
mkdir -p "$run"
cat > "$run/metrics.jsonl" <<'JSON'
{"step":0,"eval":true,"ed.loss":7.1,"ed.token_accuracy":0.1,"qa.selection_accuracy":0.38,"qa.selection_map":0.5,"qa.retrieval_accuracy":0.01,"qa.retrieval_chance":0.01,"qa.selection_chance":0.3,"qa.selection_questions":100,"qa.answer_norm":3.0,"forgetting.mlm_loss":1.63,"cs.accuracy":0.3,"cs.confusion.entailment.neutral":3}
{"step":1,"loss":{"encode_decode":7.0,"question_answering":0.5},"lr":0.001}
{"step":2,"loss":{"encode_decode":6.0,"question_answering":0.4},"lr":0.001}
{"step":2,"eval":true,"ed.loss":6.1,"ed.token_accuracy":0.3,"qa.selection_accuracy":0.9,"qa.selection_map":0.95,"qa.retrieval_accuracy":0.02,"qa.retrieval_chance":0.01,"qa.selection_chance":0.3,"qa.selection_questions":100,"qa.answer_norm":0.3,"forgetting.mlm_loss":1.6305,"cs.accuracy":0.5,"cs.confusion.entailment.neutral":1}
JSON

table=$(bash "$src/launch/metrics-table.sh" "$run")
grep -qE '^encode_decode +loss +↓ +7\.1000 +6\.1000$' <<<"$table" || fail "table: no ↓ on ed loss: $table"
grep -qE '^ +selection_accuracy +↑ ' <<<"$table" || fail "table: no ↑ on selection_accuracy"
grep -qE '^ +selection_map +↑ ' <<<"$table" || fail "table: no ↑ on selection_map"
grep -qE '^question_answering +answer_norm +3\.0000' <<<"$table" || fail "table: answer_norm marked with a direction"
grep -qE '^ +selection_questions' <<<"$table" && fail "table: a count among the metrics"
grep -q 'examples evaluated at step 2: question_answering selection_questions: 100' <<<"$table" ||
  fail "table: the counts are not listed apart"

QARAC_PLOT_SCRIPT=$work/plot.gp bash "$src/launch/plot-metrics.sh" "$run" "$work/out.svg" >/dev/null
gp=$work/plot.gp
retrieval=$(grep -o "pt [0-9]* dt [0-9]* lc rgb '#[0-9a-f]*' title 'qa.retrieval_accuracy'" "$gp")
selection=$(grep -o "pt [0-9]* dt [0-9]* lc rgb '#[0-9a-f]*' title 'qa.selection_accuracy'" "$gp")
[ "${retrieval% title*}" != "${selection% title*}" ] || fail "plot: the QA accuracies look alike ($retrieval)"
grep -q "title 'qa.selection chance'" "$gp" || fail "plot: no chance line of the answer selection"
grep -q "title 'qa.retrieval chance'" "$gp" || fail "plot: no chance line of the retrieval"
grep -q "title 'QARAC-MT: experiments/finetune (step 2)'" "$gp" || fail "plot: the title is not the run's name"
grep -q "$work" <(grep multiplot "$gp") && fail "plot: the title holds the machine's path"
# The forgetting axis around 1.63 -> 1.6305 spans at least a factor of 2.25.
range=$(grep -A2 "forgetting monitor" "$gp" | grep -o 'set yrange \[[0-9.e+-]*:[0-9.e+-]*\]' | head -1)
awk -v r="$range" 'BEGIN { sub(/.*\[/, "", r); split(r, a, ":"); exit !(a[2] / a[1] >= 2.25) }' ||
  fail "plot: the forgetting axis is zoomed in ($range)"
# Within one decade gnuplot labels no tick of a log axis: the script gives it labelled ones.
tics=$(grep -A2 "forgetting monitor" "$gp" | grep -o 'set ytics ([^)]*)' | head -1 || true)
[ "$(tr -cd ',' <<<"$tics" | wc -c)" -ge 2 ] || fail "plot: the forgetting axis has fewer than three labelled ticks ($tics)"
python3 -c 'import sys, xml.dom.minidom as m; m.parse(sys.argv[1])' "$work/out.svg" || fail "plot: not an SVG"
# Names are metrics.jsonl's keys, which whoever wrote the file chose: a quote in one ended its
# gnuplot string, and gnuplot ran the rest (system() runs a shell command). Before, this file
# made the plot touch $work/ran.
hostile=$work/hostile
mkdir -p "$hostile"
key="x' . system('touch $work/ran') . '"
jq -nc --arg k "$key" '{step: 1, loss: {($k): 1, ed: 2}}, {step: 2, loss: {($k): 0.5, ed: 1}},
  {step: 2, eval: true, ($k + "accuracy"): 0.5, ($k + "_chance"): 0.1, ("q" + $k + ".loss"): 1}' >"$hostile/metrics.jsonl"
QARAC_PLOT_SCRIPT=$work/hostile.gp bash "$src/launch/plot-metrics.sh" "$hostile" >/dev/null ||
  fail "plot: a quote in a metric's name breaks the plot"
[ ! -e "$work/ran" ] || fail "plot: a metric's name ran as gnuplot (system() made $work/ran)"
grep -qF "title 'x'' . system(''touch $work/ran'') . ''accuracy'" "$work/hostile.gp" ||
  fail "plot: the name with quotes is not the series' title"

# launch/compare-runs.sh on three made-up runs of a sweep: the settings that differ (not the
# output), the last evaluation of each (a line being written skipped), the best on record, runs
# sorted by --metric, lower first for a loss and a run without it last.
sweep=$work/sweep
for r in a b c; do
  mkdir -p "$sweep/$r"
  printf 'output = %s\n\n[train]\nseed = 0\n\n[optimizer]\nlr = %s\n' "$sweep/$r" \
    "$(case $r in a) echo 1e-05 ;; b) echo 3e-05 ;; c) echo 5e-05 ;; esac)" >"$sweep/$r/config.ini"
done
cat >"$sweep/a/metrics.jsonl" <<'JSON'
{"step":0,"eval":true,"evaluation":"0123456789abcdef","cs.accuracy":0.3,"cs.loss":2.0}
{"step":4,"eval":true,"evaluation":"0123456789abcdef","cs.accuracy":0.7,"cs.loss":0.9,"qa.selection_mrr":0.61}
JSON
cat >"$sweep/b/metrics.jsonl" <<'JSON'
{"step":0,"eval":true,"evaluation":"fedcba9876543210","cs.accuracy":0.3,"cs.loss":2.0}
{"step":4,"eval":true,"evaluation":"0123456789abcdef","cs.accuracy":0.8,"cs.loss":0.5,"qa.selection_mrr":0.55}
{"step":6,"eval":tr
JSON
printf '{"step":0,"eval":true,"cs.accuracy":0.3}\n' >"$sweep/c/metrics.jsonl"
mkdir -p "$sweep/b/best"
printf '{"metric": "cs.accuracy", "value": 0.85, "step": 3}\n' >"$sweep/b/best/best.json"
compared=$(bash "$src/launch/compare-runs.sh" --metric cs.loss "$sweep/a" "$sweep/c/" "$sweep/b")
rows=$(tail -n +2 <<<"$compared" | awk '{ print $1 }' | tr '\n' ' ')
[ "$rows" = "$sweep/b $sweep/a $sweep/c " ] || fail "compare: not sorted by cs.loss, lower first, c last: $compared"
head -1 <<<"$compared" | grep -qE '^run +optimizer\.lr +step +qa\.selection_mrr +cs\.accuracy +cs\.loss +best \(eval\.best\)$' ||
  fail "compare: columns: $compared"
grep -qE "^$sweep/b +3e-05 +4 +0\.5500 +0\.8000 +0\.5000 +cs\.accuracy 0\.8500 @ 3$" <<<"$compared" || fail "compare: row b: $compared"
grep -qE "^$sweep/c +5e-05 +0 +- +0\.3000 +- +-$" <<<"$compared" || fail "compare: row c: $compared"
grep -q 'output\|seed' <<<"$compared" && fail "compare: a setting that does not differ is shown: $compared"
# The step is a column already: --metric step sorts by it without showing it twice.
by_step=$(bash "$src/launch/compare-runs.sh" --metric step "$sweep/c" "$sweep/a")
head -1 <<<"$by_step" | grep -qE '^run +optimizer\.lr +step +qa\.selection_mrr +cs\.accuracy$' ||
  fail "compare: columns by step: $by_step"
[ "$(tail -n +2 <<<"$by_step" | awk '{ print $1 }' | tr '\n' ' ')" = "$sweep/a $sweep/c " ] || fail "compare: not sorted by step: $by_step"
# Last evaluations of other held-out data (their "evaluation" fingerprints differ) are noted under
# the table with the runs of each; a run whose lines record none (c: an older qarac-train) is not
# compared. Runs of one evaluation (a and b above) have no note.
grep -q '^note:' <<<"$compared" && fail "compare: a note on runs of one evaluation: $compared"
cp -r "$sweep/a" "$sweep/d"
sed -i 's/0123456789abcdef/00000000000000ff/' "$sweep/d/metrics.jsonl"
compared=$(bash "$src/launch/compare-runs.sh" "$sweep/a" "$sweep/c" "$sweep/d" "$sweep/b")
[ "$(grep -c '^note:' <<<"$compared")" = 1 ] || fail "compare: not one note: $compared"
[ "$(tail -1 <<<"$compared")" = "note: these runs' last evaluations measured different held-out data or \
settings (metrics.jsonl's \"evaluation\"); compare figures only within a group: 0123456789abcdef: $sweep/a, \
$sweep/b; 00000000000000ff: $sweep/d" ] || fail "compare: runs of other evaluations: $compared"
# A standard output that cannot be written is one line, the script's, with the cause (it was awk's
# "close failed on file /dev/stdout", exit 2); --help's too.
if [ -w /dev/full ]; then
  for args in "$sweep/a $sweep/b" --help; do
    # shellcheck disable=SC2086  # two runs, or the option
    if out=$(bash "$src/launch/compare-runs.sh" $args 2>&1 >/dev/full); then fail "compare $args: a full standard output passed"; fi
    [ "$out" = "launch/compare-runs.sh: standard output: write failed: No space left on device: what was printed is incomplete" ] ||
      fail "compare $args: a full standard output: $out"
  done
  # So with metrics-table.sh (launch/common.sh's print_file).
  for args in "$sweep/a" --help; do
    if out=$(bash "$src/launch/metrics-table.sh" "$args" 2>&1 >/dev/full); then fail "table $args: a full standard output passed"; fi
    [ "$out" = "launch/metrics-table.sh: standard output: write failed: No space left on device: what was printed is incomplete" ] ||
      fail "table $args: a full standard output: $out"
  done
fi
if out=$(bash "$src/launch/compare-runs.sh" "$sweep/a" "$work" 2>&1); then fail "compare: a folder without metrics.jsonl passed"; fi
[ "$out" = "launch/compare-runs.sh: $work: no metrics.jsonl (not a qarac-train run directory, or a run not started)" ] ||
  fail "compare: a folder without metrics: $out"
# Settings one run lacks are "-" in every run without them (awk made an empty setting of each
# one it read, shown as an empty cell), an empty value is "" (not an empty cell that shifts the
# row's columns), a metric that was not finite (null in metrics.jsonl) is nan and sorts with the
# unmeasured, after the rest, and a name of characters beyond ASCII keeps the columns aligned
# (they were padded by bytes).
odd=$work/odd
for r in one two "drei-ä€"; do
  mkdir -p "$odd/$r"
  printf '{"step":3,"eval":true,"cs.accuracy":%s}\n' "$(case $r in one) echo null ;; two) echo 0.5 ;; *) echo 0.25 ;; esac)" \
    >"$odd/$r/metrics.jsonl"
done
printf '[eval]\nbest =\n' >"$odd/one/config.ini"
printf '[eval]\nbest =\n' >"$odd/two/config.ini"
printf '[eval]\nbest = cs.accuracy\n[task]\nmlm.weight = 1\n' >"$odd/drei-ä€/config.ini"
compared=$(cd "$odd" && bash "$src/launch/compare-runs.sh" --metric cs.accuracy one two "drei-ä€")
expected='run      eval.best    task.mlm.weight  step  cs.accuracy
two      ""           -                3     0.5000
drei-ä€  cs.accuracy  1                3     0.2500
one      ""           -                3     nan'
[ "$compared" = "$expected" ] || fail "compare: odd runs: $compared"
# A metrics.jsonl that is a folder is named as such (jq 1.6 said nothing of it).
mkdir -p "$odd/folder/metrics.jsonl"
cp "$odd/one/config.ini" "$odd/folder/"
if out=$(bash "$src/launch/compare-runs.sh" "$odd/one" "$odd/folder" 2>&1); then fail "compare: a folder for metrics.jsonl passed"; fi
[ "$out" = "launch/compare-runs.sh: $odd/folder/metrics.jsonl: not a regular file" ] || fail "compare: a folder for metrics.jsonl: $out"
echo "$me: the table, the plot and the comparison read as intended"
