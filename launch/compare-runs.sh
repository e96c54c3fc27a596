#!/usr/bin/env bash
# Compares qarac-train runs side by side, a sweep over learning rates or seeds say: one row per
# run with the settings in which the runs differ (their config.ini), the step of its last
# held-out evaluation and that evaluation's headline metrics, and the best evaluation on record
# where eval.best kept one (best/best.json). A run still going shows its latest evaluation.
# A cell "-": a setting the run lacks or a metric it did not measure; nan: a metric that was not
# finite (sorted after the measured); "": a setting of an empty value. Runs whose last evaluations
# measured other held-out data or settings (the "evaluation" of their metrics.jsonl lines differs)
# are named in a note under the table: their figures compare only within each group.
#   launch/compare-runs.sh [--metric NAME] RUN_DIR RUN_DIR...
#   --metric NAME   show the metric NAME too (any key of an evaluation line, e.g. qa.selection_map;
#                   step is the step column) and sort the runs by it, best first: lower first for a
#                   loss, higher otherwise
# Needs jq (bash launch/install-deps.sh --job).
set -euo pipefail
# Numbers are read and written with a decimal point in any locale (launch/README.md).
export LC_ALL=C
me=launch/compare-runs.sh
die() { echo "$me: $*" >&2; exit 1; }
# jq's error in $tmp/error without its prefix; jq 1.6 says nothing of a folder it cannot read.
jq_error() { local text; text=$(sed 's/^jq: error ([^)]*): //' "$tmp/error"); echo "${text:-cannot be read}"; }
usage="usage: $me [--metric NAME] RUN_DIR RUN_DIR..."

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=launch/common.sh
source "$repo/launch/common.sh"  # print_file

metric=""
runs=()
while (($#)); do
  case $1 in
    -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0" >"$tmp/help"; print_file "$tmp/help"; exit 0 ;;
    --metric) (($# >= 2)) || die "--metric needs a NAME; $usage"; metric=$2; shift 2 ;;
    --metric=*) metric=${1#--metric=}; shift ;;
    --) shift; runs+=("$@"); break ;;
    -*) die "unknown option '$1'; $usage" ;;
    *) runs+=("$1"); shift ;;
  esac
done
((${#runs[@]} >= 1)) || die "$usage"
[[ -z $metric || $metric =~ ^[A-Za-z0-9_.]+$ ]] || die "--metric '$metric': not a metric name (letters, digits, '_' and '.')"
command -v jq >/dev/null || die "jq not found; install it with: bash launch/install-deps.sh --job"

# One record per fact, tab-separated: RUN KIND KEY VALUE, KIND being name, setting, eval, measured
# (the fingerprint of what the last evaluation measured on) or best.
records=$tmp/records
: >"$records"
for i in "${!runs[@]}"; do
  run=${runs[$i]%/}
  [ -n "$run" ] || run=/
  [ -d "$run" ] || die "$run: not a run directory"
  [ ! -e "$run/metrics.jsonl" ] || [ -f "$run/metrics.jsonl" ] || die "$run/metrics.jsonl: not a regular file"
  [ -s "$run/metrics.jsonl" ] || die "$run: no metrics.jsonl (not a qarac-train run directory, or a run not started)"
  [ -f "$run/config.ini" ] || die "$run: no config.ini (not a qarac-train run directory)"
  # A name of no tab or line break keeps the records whole.
  [[ $run != *$'\t'* && $run != *$'\n'* ]] || die "'$run': a run directory named with a tab or line break"
  printf '%s\tname\t\t%s\n' "$i" "$run" >>"$records"
  # "key = value" under "[section]" headers; output names the run directory, which the name shows.
  awk -v run="$i" '
    /^[ \t]*(#|;|$)/ { next }
    /^[ \t]*\[/ { section = $0; gsub(/^[ \t]*\[|\][ \t]*$/, "", section); next }
    {
      eq = index($0, "="); if (!eq) next
      key = substr($0, 1, eq - 1); value = substr($0, eq + 1)
      gsub(/^[ \t]+|[ \t]+$/, "", key); gsub(/^[ \t]+|[ \t]+$/, "", value)
      if (section != "") key = section "." key
      if (key != "output") printf "%s\tsetting\t%s\t%s\n", run, key, value
    }' "$run/config.ini" >>"$records"
  # The last evaluation; lines that do not parse (one being written) are skipped. A metric that
  # was not finite is null there (JSON has no NaN): nan here, not "-", which is one not measured.
  # Its "evaluation" (src/train/metrics.cpp) is absent in lines of a qarac-train before it.
  jq -Rrn --arg run "$i" '
    [inputs | fromjson? | objects | select(.eval == true and (.step | type) == "number")]
    | last // empty
    | (select(.evaluation | type == "string") | [$run, "measured", "", .evaluation] | @tsv),
      (to_entries[] | select((.value | type) == "number" or .value == null) | [$run, "eval", .key, .value // "nan"] | @tsv)' \
    "$run/metrics.jsonl" >>"$records" 2>"$tmp/error" || die "$run/metrics.jsonl: $(jq_error)"
  if [ -f "$run/best/best.json" ]; then
    jq -r --arg run "$i" 'select((.metric | type) == "string" and (.value | type) == "number" and (.step | type) == "number")
      | [$run, "best", .metric, "\(.value)@\(.step)"] | @tsv' "$run/best/best.json" >>"$records" 2>"$tmp/error" ||
      die "$run/best/best.json: $(jq_error)"
  fi
done

awk -F'\t' -v runs="${#runs[@]}" -v sort_by="$metric" '
  function lower_is_better(m) { return m ~ /loss$/ }
  function number(x) { return x == "nan" ? x : sprintf("%.4f", x) }
  # Characters, not bytes (the C locale counts bytes): UTF-8 continuation bytes do not count.
  function chars(s,   n) { n = length(s); return n - gsub(/[\200-\277]/, "", s) }
  # A value to sort by: a number, not nan.
  function measured(r) { return (r, sort_by) in value && value[r, sort_by] != "nan" }
  $2 == "name" { name[$1] = $4 }
  $2 == "setting" { setting[$1, $3] = $4; if (!($3 in known)) { known[$3] = 1; keys[++nkeys] = $3 } }
  $2 == "eval" { value[$1, $3] = $4; has[$3] = 1 }
  $2 == "measured" { measured_on[$1] = $4 }
  $2 == "best" { split($4, vs, "@"); best[$1] = $3 " " number(vs[1]) " @ " vs[2]; any_best = 1 }
  END {
    # Columns: the run, the settings that differ, the step, the headline metrics any run has.
    ncols = 0
    col[++ncols] = "run"
    for (k = 1; k <= nkeys; k++) {
      # Looked up with "in" alone: awk adds an element that an expression reads, which was then a
      # setting of an empty value, shown as an empty cell where "-" belonged.
      differs = 0
      first = ((0, keys[k]) in setting) ? "=" setting[0, keys[k]] : "-"
      for (r = 1; r < runs; r++)
        if ((((r, keys[k]) in setting) ? "=" setting[r, keys[k]] : "-") != first) differs = 1
      if (differs) { col[++ncols] = keys[k]; kind[ncols] = "setting" }
    }
    col[++ncols] = "step"; kind[ncols] = "eval"
    split("ed.token_accuracy rs.token_accuracy qa.selection_mrr qa.retrieval_accuracy cs.accuracy forgetting.mlm_loss mlm.loss", headline, " ")
    for (h = 1; h in headline; h++)
      if (headline[h] in has && headline[h] != sort_by) { col[++ncols] = headline[h]; kind[ncols] = "eval" }
    if (sort_by != "" && sort_by != "step") { col[++ncols] = sort_by; kind[ncols] = "eval" }
    if (any_best) { col[++ncols] = "best (eval.best)"; kind[ncols] = "best" }

    for (r = 0; r < runs; r++) {
      for (c = 1; c <= ncols; c++) {
        if (c == 1) cell = name[r]
        else if (kind[c] == "setting") cell = !((r, col[c]) in setting) ? "-" : setting[r, col[c]] == "" ? "\"\"" : setting[r, col[c]]
        else if (kind[c] == "best") cell = (r in best) ? best[r] : "-"
        else if (!((r, col[c]) in value)) cell = "-"
        else cell = col[c] == "step" ? value[r, col[c]] : number(value[r, col[c]])
        text[r, c] = cell
        if (chars(cell) > width[c]) width[c] = chars(cell)
      }
      order[r + 1] = r
    }
    for (c = 1; c <= ncols; c++) if (chars(col[c]) > width[c]) width[c] = chars(col[c])
    # Best first by --metric (a run without it last), else in the order given; insertion sort.
    if (sort_by != "") {
      if (!(sort_by in has)) printf "%s: no run'"'"'s last evaluation has %s\n", "'"$me"'", sort_by > "/dev/stderr"
      for (i = 2; i <= runs; i++)
        for (j = i; j > 1 && before(order[j], order[j - 1]); j--) { t = order[j]; order[j] = order[j - 1]; order[j - 1] = t }
    }
    # Padded by hand: the widths of printf count bytes.
    for (i = 0; i <= runs; i++)
      for (c = 1; c <= ncols; c++) {
        cell = i == 0 ? col[c] : text[order[i], c]
        printf "%s%s", (c > 1 ? "  " : ""), cell
        if (c == ncols) printf "\n"
        else for (pad = chars(cell); pad < width[c]; pad++) printf " "
      }
    # Runs grouped by what their last evaluation measured on, in the order shown.
    for (i = 1; i <= runs; i++) {
      r = order[i]
      if (!(r in measured_on)) continue
      f = measured_on[r]
      if (f in group) group[f] = group[f] ", " name[r]
      else { fingerprints[++nfingerprints] = f; group[f] = name[r] }
    }
    if (nfingerprints > 1) {
      printf "note: these runs'"'"' last evaluations measured different held-out data or settings (metrics.jsonl'"'"'s \"evaluation\"); compare figures only within a group:"
      for (g = 1; g <= nfingerprints; g++) printf "%s %s: %s", (g > 1 ? ";" : ""), fingerprints[g], group[fingerprints[g]]
      printf "\n"
    }
  }
  function before(a, b,   x, y) {
    if (!measured(b)) return measured(a)
    if (!measured(a)) return 0
    x = value[a, sort_by] + 0; y = value[b, sort_by] + 0
    return lower_is_better(sort_by) ? x < y : x > y
  }' "$records" >"$tmp/table"
print_file "$tmp/table"
