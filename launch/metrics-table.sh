#!/usr/bin/env bash
# Prints a qarac-train run's held-out evaluation before and after: every metric of the first
# evaluation (step 0, before any update) and of the last, per task, with the direction that is
# better (↑ higher, ↓ lower; none for descriptive figures such as the chance level or a norm),
# then the forgetting monitor, the example counts behind the figures, and the consistency
# confusion matrix (rows: gold label, columns: predicted; counts).
#   launch/metrics-table.sh RUN_DIR
# Needs jq (bash launch/install-deps.sh --job).
set -euo pipefail
# Numbers are read and written with a decimal point in any locale: under de_DE.UTF-8 mawk
# (Debian's awk) read 7.3257 as 7 and wrote 7,0000, and gnuplot stopped at the data.
export LC_ALL=C
me=launch/metrics-table.sh
die() { echo "$me: $*" >&2; exit 1; }

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=launch/common.sh
source "$repo/launch/common.sh"  # print_file
tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

case "${1:-}" in
  -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0" >"$tmp/help"; print_file "$tmp/help"; exit 0 ;;
  "") die "usage: $me RUN_DIR" ;;
esac
(($# == 1)) || die "usage: $me RUN_DIR"
metrics=$1/metrics.jsonl
[ -s "$metrics" ] || die "no metrics: '$metrics' is missing or empty"
command -v jq >/dev/null || die "jq not found; install it with: bash launch/install-deps.sh --job"

# jq writes tab-separated records, awk lays them out:
#   steps FIRST LAST | metric TASK NAME BEFORE AFTER | confusion GOLD PREDICTED BEFORE AFTER
# Lines that do not parse (one being written) are skipped.
jq -Rrn '
  def task: {"ed": "encode_decode", "qa": "question_answering", "rs": "reasoning",
             "cs": "consistency", "mlm": "masked_lm", "forgetting": "forgetting_monitor"}[.] // .;
  def rank: {"ed": 0, "qa": 1, "rs": 2, "cs": 3, "mlm": 4, "forgetting": 5}[.] // 9;
  def num: if type == "number" then . else "NaN" end;
  [inputs | fromjson? | objects | select(.eval == true and (.step | type) == "number")]
  | sort_by(.step)
  | if length < 2 then error("fewer than two evaluations (one at step 0 and one later needed)")
    else .[0] as $first | .[-1] as $last
    | (["steps", $first.step, $last.step] | @tsv),
      ([$first, $last] | map(to_entries[] | select((.value | type) == "number") | .key)
       | unique - ["step"]
       | map(capture("^(?<t>[^.]+)\\.(?<m>.+)$")) | sort_by([(.t | rank), .t, .m]) | .[]
       | "\(.t).\(.m)" as $k
       | if .t == "cs" and (.m | startswith("confusion.")) then
           (.m | ltrimstr("confusion.") | split(".")) as $gp
           | ["confusion", $gp[0], $gp[1], ($first[$k] | num), ($last[$k] | num)]
         else ["metric", (.t | task), .m, ($first[$k] | num), ($last[$k] | num)] end
       | @tsv)
    end' "$metrics" >"$tmp/records" 2>"$tmp/error" ||
  die "$metrics: $(sed 's/^jq: error ([^)]*): //' "$tmp/error")"

awk -F'\t' '
  function value(x) { return x == "NaN" ? "-" : sprintf("%.4f", x) }
  function count(x) { return x == "NaN" ? "-" : sprintf("%d", x) }
  function better(m) { return m ~ /loss$/ ? "↓" : m ~ /(accuracy|mrr|map)$/ ? "↑" : " " }
  $1 == "steps" {
    before = "step " $2; after = "step " $3
    printf "%-20s %-24s %12s %12s\n", "task", "held-out metric", before, after
  }
  # Counts (examples or questions behind a figure) are listed apart: they are not results.
  $1 == "metric" && $3 ~ /(examples|questions)$/ { counts[++ncounts] = sprintf("%s %s: %s", $2, $3, count($5)); next }
  $1 == "metric" {
    printf "%-20s %-22s %s %12s %12s\n", ($2 == task ? "" : $2), $3, better($3), value($4), value($5)
    task = $2
    if ($2 == "forgetting_monitor") forgetting = 1
  }
  $1 == "confusion" {
    if (!($2 in rows)) { rows[$2] = 1; gold[++ngold] = $2 }
    if (!($3 in cols)) { cols[$3] = 1; pred[++npred] = $3 }
    cell[$2, $3] = count($4) " -> " count($5)
  }
  END {
    print "(↑: higher is better, ↓: lower is better)"
    if (ncounts) {
      printf "examples evaluated at %s:", after
      for (i = 1; i <= ncounts; i++) printf "%s %s", (i > 1 ? "," : ""), counts[i]
      printf "\n"
    }
    if (forgetting)
      print "(forgetting monitor: MLM loss of the answer encoder with the base model'"'"'s own head on" \
            "\n held-out text; lower is better, a rise from " before " is forgetting)"
    if (ngold) {
      printf "\nconsistency confusion matrix, %s -> %s (rows: gold label, columns: predicted)\n",
             before, after
      printf "%-16s", ""
      for (j = 1; j <= npred; j++) printf " %16s", pred[j]
      printf "\n"
      for (i = 1; i <= ngold; i++) {
        printf "%-16s", gold[i]
        for (j = 1; j <= npred; j++) printf " %16s", ((gold[i], pred[j]) in cell) ? cell[gold[i], pred[j]] : "-"
        printf "\n"
      }
    }
  }' "$tmp/records" >"$tmp/table"
print_file "$tmp/table"
