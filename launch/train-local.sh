#!/usr/bin/env bash
# Starts qarac-train on this machine under Open MPI's mpirun with RANKS processes (the world size
# W of docs/design.md §4), bound to cores and threaded to fit, and prints the mpirun command first.
#
#   bash launch/train-local.sh -n RANKS [--threads T] [--dry-run] [--] qarac-train options...
#     -n, --ranks RANKS  MPI ranks (world size W)
#     --threads T        OpenMP/OpenBLAS threads per rank (default: max(1, cores / RANKS))
#     --dry-run          print the mpirun command and stop
# e.g.
#   bash launch/train-local.sh -n 4 -- --config launch/configs/quickstart.ini --output runs/w4 \
#       --model.base runs/quickstart/pretrain/export/base --data.dir runs/quickstart/data/train
#
# Binding: with RANKS <= cores, each rank gets its own T = cores / RANKS cores
# (--map-by slot:PE=T --bind-to core), so its BLAS threads never share a core with another
# rank's; with more ranks than cores: --oversubscribe --bind-to none and one thread per rank.
# Cores: nproc (the CPUs this process may run on), divided by the hardware threads per core
# when lscpu reports more than one (Open MPI's slots are cores; BLAS gains nothing from SMT).
# OMP_NUM_THREADS and OPENBLAS_NUM_THREADS are exported to every rank (-x); --allow-run-as-root
# is added when run as root.
# Environment: QARAC_BUILD (default: the repository's build/) holds src/cli/qarac-train;
# MPIRUN (default mpirun) must be Open MPI's.
set -euo pipefail
me=launch/train-local.sh
die() { echo "$me: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; }

repo=$(cd "$(dirname "$0")/.." && pwd)
ranks=""
threads=""
dry_run=0
train_args=()
while (($#)); do
  case "$1" in
    -n|--ranks|--threads)
      (($# >= 2)) || die "$1 needs a value (see --help)"
      case "$1" in
        --threads) threads=$2 ;;
        *) ranks=$2 ;;
      esac
      shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; train_args=("$@"); break ;;
    *) train_args=("$@"); break ;;   # the first argument not ours starts qarac-train's
  esac
done
[ -n "$ranks" ] || die "the number of ranks is missing: $me -n RANKS [--] qarac-train options (see --help)"
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || die "-n must be a positive integer, not '$ranks'"
[ -z "$threads" ] || [[ "$threads" =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer, not '$threads'"

build=${QARAC_BUILD:-$repo/build}
train=$build/src/cli/qarac-train
[ -x "$train" ] || die "no qarac-train at $train: build it (bash launch/quickstart.sh builds it into build/) or set QARAC_BUILD"
mpirun=${MPIRUN:-mpirun}
command -v "$mpirun" >/dev/null || die "$mpirun not found; install Open MPI (bash launch/install-deps.sh)"
"$mpirun" --version 2>/dev/null | grep -q "Open MPI" ||
  die "$mpirun is not Open MPI's (its options differ); set MPIRUN to Open MPI's mpirun"
# A qarac-train from before the distributed issue does not initialise MPI: every rank would run
# alone as rank 0 and write the same output directory.
if ((ranks > 1)) && ! "$train" --help 2>/dev/null | grep -q -- '--parallel.timeout'; then
  old="$train predates distributed training (no --parallel.timeout in its --help): rebuild it; only -n 1 works with it"
  ((dry_run)) || die "$old"
  echo "$me: warning: $old" >&2
fi

# nproc honours OMP_NUM_THREADS, which would count the threads of a previous setting: unset it.
cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
smt=1
if command -v lscpu >/dev/null; then
  smt=$(LC_ALL=C lscpu | awk -F: '/^Thread\(s\) per core/ { gsub(/ /, "", $2); print $2 }')
  [[ "$smt" =~ ^[1-9][0-9]*$ ]] || smt=1
fi
cores=$((cpus / smt))
((cores >= 1)) || cores=1
if [ -z "$threads" ]; then
  threads=$((cores / ranks))
  ((threads >= 1)) || threads=1
fi

cmd=("$mpirun" -np "$ranks")
if ((ranks <= cores)); then
  cmd+=(--map-by "slot:PE=$((cores / ranks))" --bind-to core)
else
  cmd+=(--oversubscribe --bind-to none)
fi
[ "$(id -u)" -ne 0 ] || cmd+=(--allow-run-as-root)
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
cmd+=(-x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS "$train" "${train_args[@]}")

echo "$me: $ranks rank(s) on $cores core(s), $threads thread(s) per rank"
printf '%s:' "$me"
printf ' %q' "OMP_NUM_THREADS=$threads" "OPENBLAS_NUM_THREADS=$threads" "${cmd[@]}"
printf '\n'
((dry_run)) && exit 0
exec "${cmd[@]}"
