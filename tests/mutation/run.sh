#!/usr/bin/env bash
# Mutation testing of the test suite: does it notice a realistic bug?
#
# Each mutation of tests/mutation/mutations.txt (one small change of the source: a check deleted,
# a formula altered, an index shifted) is applied to a private copy of the source tree, which is
# rebuilt incrementally and run through ctest, then reverted. A mutation is
#   killed       a test failed (or timed out): the suite sees the bug;
#   survived     every test passed: the suite cannot see it, or the change alters no behaviour
#                (then the list says why: `equivalent:`, reported apart and not scored);
#   stillborn    the mutated tree does not build: the compiler, not the suite, caught it;
#   missing      its text is no longer in the file: the list needs updating to the code.
# The score is killed / (killed + survived), over the mutations that build and are not
# equivalent; the aim is that every mutation that changes results is killed.
#
# The shared source tree is never touched: the copy lives in --work (default /tmp/qarac-mut:
# src-tree/ and build/), synced from --source (default this checkout) at the start of every run,
# so anyone can rerun it while others build. Only files whose content differs are copied, so the
# build stays incremental across runs; a run that was interrupted leaves nothing behind that the
# next one does not replace. GPU tests are never run (label gpu).
#
# Tests run in two stages per mutation: everything but the distributed tests first (a minute or
# two), then, only for a mutation nothing has killed yet, the distributed ones (label mpi, several
# minutes); each stage stops at its first failure. Before the mutations, the unmutated tree must
# build and pass the same tests (skip with --no-baseline).
#
# Usage: tests/mutation/run.sh [options] [ID...]      (no ID: every mutation of the list)
#   --list FILE      the mutations (default tests/mutation/mutations.txt)
#   --source DIR     the tree to copy (default the checkout this script is in)
#   --work DIR       scratch space (default /tmp/qarac-mut)
#   --jobs N         build and ctest parallelism (default 2)
#   --tests REGEX    only the ctest tests matching REGEX (ctest -R), in both stages
#   --no-mpi         skip the distributed stage (survivors of the first stage are then "survived")
#   --no-baseline    do not check the unmutated tree first
#   --resume         skip the mutations that already have a result in --work/results.tsv
#   --check          only check that every mutation's text occurs once in the source, and exit
#   --report         only print the table of --work/results.tsv, and exit
# Output: a line per mutation as it finishes, then the table and the score; the results in
# --work/results.tsv (id, status, killed by, build s, test s, stage), each mutation's build and
# test logs in --work/logs/.
set -euo pipefail

# The whole script is one function, read before it runs: editing the file during a run (an hour
# or more) does not change the run.
main() {
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  list=$here/mutations.txt
  source_dir=$(cd "$here/../.." && pwd)
  work=/tmp/qarac-mut
  jobs=2
  tests=""
  mpi=1
  baseline=1
  resume=0
  mode=run
  ids=()
  while [[ $# -gt 0 ]]; do
    case $1 in
      --list) list=$(realpath "$2"); shift 2 ;;
      --source) source_dir=$(realpath "$2"); shift 2 ;;
      --work) work=$2; shift 2 ;;
      --jobs) jobs=$2; shift 2 ;;
      --tests) tests=$2; shift 2 ;;
      --no-mpi) mpi=0; shift ;;
      --no-baseline) baseline=0; shift ;;
      --resume) resume=1; shift ;;
      --check) mode=check; shift ;;
      --report) mode=report; shift ;;
      -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
      -*) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
      *) ids+=("$1"); shift ;;
    esac
  done
  mutate() { python3 "$here/mutate.py" "$@"; }

  if [[ $mode == check ]]; then mutate check "$list" "$source_dir"; exit; fi
  if [[ $mode == report ]]; then mutate report "$list" "$work/results.tsv"; exit; fi

  tree=$work/src-tree
  build=$work/build
  logs=$work/logs
  results=$work/results.tsv
  mkdir -p "$tree" "$logs"
  touch "$results"
  run_ids=$(mutate ids "$list" "${ids[@]}")

  # Content, not times: a file that differs gets a new mtime and is rebuilt, one that does not is
  # left alone (a reverted mutation's file matches the source again, and its object is rebuilt by
  # the next build since its mtime moved on).
  echo "syncing $source_dir into $tree"
  mutate sync "$source_dir" "$tree"
  if [[ ! -f $build/CMakeCache.txt ]]; then
    cmake -S "$tree" -B "$build" -DCMAKE_BUILD_TYPE=Release -DQARAC_CUDA=OFF > "$logs/configure.log" 2>&1 ||
      { echo "configure failed: $logs/configure.log" >&2; exit 1; }
  fi

  build_tree() { nice cmake --build "$build" -j "$jobs" > "$1" 2>&1; }

  # ctest of one stage ("fast": all but mpi; "mpi"), stopping at the first failure. Prints the
  # failed tests (at most three) and returns non-zero when a test failed.
  stage() {
    local which=$1 log=$2 args=(--test-dir "$build" --stop-on-failure -j "$jobs" --no-tests=ignore --timeout 300)
    if [[ $which == fast ]]; then args+=(-LE 'mpi|gpu'); else args+=(-L mpi -LE gpu); fi
    [[ -n $tests ]] && args+=(-R "$tests")
    if nice ctest "${args[@]}" > "$log" 2>&1; then return 0; fi
    local failed
    failed=$(sed -n '/The following tests FAILED:/,$p' "$log" | grep -E '^\s+[0-9]+ - ' |
      sed -E 's/^\s+[0-9]+ - //; s/ \(.*//; s/ +# .*//' | head -3 | paste -sd, -)
    echo "${failed:-ctest failed without naming a test (see $log)}"
    return 1
  }

  if [[ $baseline == 1 ]]; then
    echo "baseline: building and testing the unmutated tree"
    if ! build_tree "$logs/baseline-build.log"; then
      echo "the unmutated tree does not build: $logs/baseline-build.log" >&2
      exit 1
    fi
    for which in fast mpi; do
      [[ $which == mpi && $mpi == 0 ]] && continue
      if ! failed=$(stage $which "$logs/baseline-$which.log"); then
        echo "the unmutated tree fails its tests ($failed): $logs/baseline-$which.log" >&2
        exit 1
      fi
    done
  fi

  started=$SECONDS
  for id in $run_ids; do
    if [[ $resume == 1 ]] && grep -q "^$id	" "$results"; then continue; fi
    file=$(mutate file "$list" "$id")
    original=$work/original
    cp "$tree/$file" "$original"
    status=killed killed_by="" build_s=0 test_s=0 where=""
    t0=$SECONDS
    if ! mutate apply "$list" "$tree" "$id" > "$logs/$id-apply.log"; then
      status=missing
    elif ! build_tree "$logs/$id-build.log"; then
      status=stillborn
    else
      build_s=$((SECONDS - t0))
      t1=$SECONDS
      if ! killed_by=$(stage fast "$logs/$id-fast.log"); then
        where=fast
      elif [[ $mpi == 1 ]] && ! killed_by=$(stage mpi "$logs/$id-mpi.log"); then
        where=mpi
      else
        status=survived killed_by=""
      fi
      test_s=$((SECONDS - t1))
    fi
    [[ $status == stillborn ]] && build_s=$((SECONDS - t0))
    cp "$original" "$tree/$file"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$status" "$killed_by" "$build_s" "$test_s" "$where" >> "$results"
    printf '%-4s %-9s build %4ss tests %4ss %s\n' "$id" "$status" "$build_s" "$test_s" "$killed_by"
  done
  # Leaves the copy built as the source is, for the next run.
  build_tree "$logs/final-build.log" || true
  echo "mutations run in $(((SECONDS - started) / 60)) min"
  echo
  mutate report "$list" "$results"
}
main "$@"
exit
