#!/usr/bin/env bash
# Starts qarac-train on this machine with RANKS MPI processes (the world size W of
# docs/design.md §4), under whichever MPI launcher MPIRUN names, bound to cores and threaded to
# fit, and prints the launch command first.
#
#   bash launch/train-local.sh -n RANKS [--threads T] [--dry-run] [--] qarac-train options...
#   (before --, the options below are this script's wherever they stand; the rest, and all after
#   --, go to qarac-train)
#     -n, --ranks RANKS  MPI ranks (world size W)
#     --threads T        OpenMP/OpenBLAS threads per rank (default: max(1, cores / RANKS))
#     --dry-run          print the launch command and stop
# e.g.
#   bash launch/train-local.sh -n 4 -- --config launch/configs/quickstart.ini --output runs/w4 \
#       --model.base runs/quickstart/pretrain/export/base --data.dir runs/quickstart/data/train \
#       --eval.dir runs/quickstart/data/heldout
#   MPIRUN=mpiexec.mpich bash launch/train-local.sh -n 2 -- ...   (a qarac-train built with MPICH)
#
# The launcher: MPIRUN (default mpirun), told apart by its --version (srun by its name); each
# gets its own flags for the same layout. With RANKS <= cores every rank is bound to its own
# T = cores / RANKS cores, so that its BLAS threads never share a core with another rank's; with
# more ranks than cores nothing is bound and every rank runs one thread.
#   Open MPI        --map-by slot:PE=T --bind-to core; else --oversubscribe --bind-to none;
#                   -x for the variables, --allow-run-as-root when run as root
#   MPICH (Hydra)   -bind-to core:T; else -bind-to none; -genv for the variables
#   Intel MPI       -genv I_MPI_PIN_DOMAIN T:compact; else -genv I_MPI_PIN 0; -genv
#   srun            inside a Slurm allocation: --cpus-per-task T --cpu-bind=cores; else
#                   --overcommit --cpu-bind=none; srun passes the environment on
# The MPI must be the one qarac-train was built with (qarac-train --version names it).
# Ctrl-C, SIGTERM or SIGHUP to this script stops the ranks after the step in flight with a
# checkpoint (exit status 75; --resume goes on), as they stop qarac-train run alone.
# Cores: nproc (the CPUs this process may run on), divided by the hardware threads per core
# when lscpu reports more than one (BLAS gains nothing from SMT). OMP_NUM_THREADS and
# OPENBLAS_NUM_THREADS = T reach every rank.
# Environment: QARAC_BUILD holds src/cli/qarac-train (default: the repository's build/, else
# the qarac-train installed beside these scripts or on PATH); MPIRUN, the launcher;
# QARAC_FAILED_GRACE (default 120), the seconds the launcher may go on after a rank recorded a
# lost peer in the run directory's failed.json before this script ends it (0: never; see
# launch/train-hosts.sh, where a hung host would otherwise hold the launcher for ever).
set -euo pipefail
# Text is matched in the C locale: under tr_TR.UTF-8 [A-Za-z] leaves out I and i, and an
# OpenBLAS core named Sandybridge would have been set as Sandybr.
export LC_ALL=C
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
    --) shift; train_args+=("$@"); break ;;
    # Not ours: qarac-train's (which has none of the options above), wherever it stands before --.
    *) train_args+=("$1"); shift ;;
  esac
done
[ -n "$ranks" ] || die "the number of ranks is missing: $me -n RANKS [--] qarac-train options (see --help)"
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || die "-n must be a positive integer, not '$ranks'"
[ -z "$threads" ] || [[ "$threads" =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer, not '$threads'"

# shellcheck source=launch/common.sh
source "$repo/launch/common.sh"
setup_launcher "$ranks" "$dry_run"
[ "$flavour" != srun ] || [ -n "${SLURM_JOB_ID:-}" ] ||
  die "MPIRUN=srun runs inside a Slurm allocation (salloc, sbatch); none here (no SLURM_JOB_ID)"

cores=$(cores_here)
if [ -z "$threads" ]; then
  threads=$((cores / ranks))
  ((threads >= 1)) || threads=1
fi
per_rank=$((cores / ranks))   # cores bound to each rank when they fit
rank_environment "$threads" "$version"
case "$flavour" in
  openmpi)
    cmd=("$mpirun" -np "$ranks")
    if ((per_rank >= 1)); then cmd+=(--map-by "slot:PE=$per_rank" --bind-to core)
    else cmd+=(--oversubscribe --bind-to none); fi
    pass_environment ;;
  mpich)
    cmd=("$mpirun" -n "$ranks")
    if ((per_rank >= 1)); then cmd+=(-bind-to "core:$per_rank"); else cmd+=(-bind-to none); fi
    pass_environment ;;
  intel)
    cmd=("$mpirun" -n "$ranks")
    if ((per_rank >= 1)); then cmd+=(-genv I_MPI_PIN_DOMAIN "$per_rank:compact"); else cmd+=(-genv I_MPI_PIN 0); fi
    pass_environment ;;
  srun)
    cmd=("$mpirun" --ntasks="$ranks" --kill-on-bad-exit=1)
    if ((per_rank >= 1)); then cmd+=(--cpus-per-task="$per_rank" --cpu-bind=cores)
    else cmd+=(--overcommit --cpu-bind=none); fi ;;
esac
cmd+=("$train" "${train_args[@]}")

echo "$me: $ranks rank(s) on $cores core(s), $threads thread(s) per rank, launcher $mpirun ($flavour)"
print_launch
((dry_run)) && exit 0

launch_watched "$(run_dir_of "${train_args[@]}")"
