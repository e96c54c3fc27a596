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
# the qarac-train installed beside these scripts or on PATH); MPIRUN, the launcher.
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

# The program: QARAC_BUILD's, the repository's build, an installation's (these scripts in
# PREFIX/share/qarac-mt/launch, the programs in PREFIX/bin), or the one on PATH.
installed=$(dirname "$(dirname "$repo")")/bin/qarac-train
if [ -n "${QARAC_BUILD:-}" ]; then
  train=$QARAC_BUILD/src/cli/qarac-train
elif [ -x "$repo/build/src/cli/qarac-train" ]; then
  train=$repo/build/src/cli/qarac-train
elif [ "$(basename "$(dirname "$repo")")" = share ] && [ -x "$installed" ]; then
  train=$installed
else
  train=$(command -v qarac-train 2>/dev/null || echo "$repo/build/src/cli/qarac-train")
fi
[ -x "$train" ] || die "no qarac-train at $train: build it (bash launch/quickstart.sh builds it into build/) or set QARAC_BUILD"

mpirun=${MPIRUN:-mpirun}
command -v "$mpirun" >/dev/null || die "$mpirun not found; install an MPI (bash launch/install-deps.sh) or set MPIRUN"
if [ "$(basename "$mpirun")" = srun ]; then
  flavour=srun
  [ -n "${SLURM_JOB_ID:-}" ] || die "MPIRUN=srun runs inside a Slurm allocation (salloc, sbatch); none here (no SLURM_JOB_ID)"
else
  case "$("$mpirun" --version 2>&1 || true)" in
    *"Open MPI"*|*OpenRTE*) flavour=openmpi ;;
    *"Intel(R) MPI"*) flavour=intel ;;
    *HYDRA*) flavour=mpich ;;
    *) die "cannot tell which MPI $mpirun belongs to (its --version names neither Open MPI, MPICH/Hydra nor Intel MPI): set MPIRUN to one of those, or to srun" ;;
  esac
fi
# The launcher must start ranks that the program's MPI library can join: Open MPI's mpirun for
# Open MPI, Hydra (MPICH's or Intel MPI's, one ABI) for the MPICH family. Started by the other,
# every rank would run alone as rank 0. (qarac-train --version names the library it loads; srun
# serves both.)
version=$("$train" --version 2>/dev/null || true)
library=$(sed -n 's/^MPI  *//p' <<<"$version")
mismatch=""
case "$flavour:$library" in
  openmpi:?*) [[ "$library" == *"Open MPI"* ]] || mismatch=1 ;;
  mpich:?*|intel:?*) [[ "$library" != *"Open MPI"* ]] || mismatch=1 ;;
esac
if [ -n "$mismatch" ]; then
  wrong="$mpirun is the launcher of another MPI ($flavour) than $train's, $library: set MPIRUN to its own (qarac-train --version names it)"
  ((dry_run)) || die "$wrong"
  echo "$me: warning: $wrong" >&2
fi
# A qarac-train from before the distributed issue does not initialise MPI: every rank would run
# alone as rank 0 and write the same output directory.
# The help captured first: grep -q leaving a pipe early would fail the writer under pipefail.
if ((ranks > 1)) && ! grep -q -- '--parallel.timeout' <<<"$("$train" --help 2>/dev/null || true)"; then
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
per_rank=$((cores / ranks))   # cores bound to each rank when they fit
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
# OpenBLAS takes a CPU model it does not know (a cloud VM's) for an old one and runs SSE3
# kernels, several times slower: qarac-train --version names the core to set. Every rank of a
# local launch runs on this CPU. A core the user set is kept, and passed on.
blas_core=$(sed -n "s/^OpenBLAS .*this CPU's own: OPENBLAS_CORETYPE=\([A-Za-z0-9_]*\).*/\1/p" <<<"$version")
env_vars=(OMP_NUM_THREADS OPENBLAS_NUM_THREADS)
if [ -z "${OPENBLAS_CORETYPE+x}" ] && [ -n "$blas_core" ]; then
  export OPENBLAS_CORETYPE=$blas_core
  echo "$me: OPENBLAS_CORETYPE=$blas_core: OpenBLAS takes this CPU for an older one (qarac-train --version)"
fi
[ -z "${OPENBLAS_CORETYPE+x}" ] || env_vars+=(OPENBLAS_CORETYPE)
case "$flavour" in
  openmpi)
    cmd=("$mpirun" -np "$ranks")
    if ((per_rank >= 1)); then cmd+=(--map-by "slot:PE=$per_rank" --bind-to core)
    else cmd+=(--oversubscribe --bind-to none); fi
    [ "$(id -u)" -ne 0 ] || cmd+=(--allow-run-as-root)
    for var in "${env_vars[@]}"; do cmd+=(-x "$var"); done ;;
  mpich)
    cmd=("$mpirun" -n "$ranks")
    if ((per_rank >= 1)); then cmd+=(-bind-to "core:$per_rank"); else cmd+=(-bind-to none); fi
    for var in "${env_vars[@]}"; do cmd+=(-genv "$var" "${!var}"); done ;;
  intel)
    cmd=("$mpirun" -n "$ranks")
    if ((per_rank >= 1)); then cmd+=(-genv I_MPI_PIN_DOMAIN "$per_rank:compact"); else cmd+=(-genv I_MPI_PIN 0); fi
    for var in "${env_vars[@]}"; do cmd+=(-genv "$var" "${!var}"); done ;;
  srun)
    cmd=("$mpirun" --ntasks="$ranks" --kill-on-bad-exit=1)
    if ((per_rank >= 1)); then cmd+=(--cpus-per-task="$per_rank" --cpu-bind=cores)
    else cmd+=(--overcommit --cpu-bind=none); fi ;;
esac
cmd+=("$train" "${train_args[@]}")

echo "$me: $ranks rank(s) on $cores core(s), $threads thread(s) per rank, launcher $mpirun ($flavour)"
printf '%s:' "$me"
for var in "${env_vars[@]}"; do printf ' %q' "$var=${!var}"; done
printf ' %q' "${cmd[@]}"
printf '\n'
((dry_run)) && exit 0

# Ctrl-C, a closed terminal (HUP) or a TERM to this script asks the ranks to stop after the step
# in flight with a checkpoint, as it asks qarac-train itself: USR1 to the launcher, which Open
# MPI's mpirun, MPICH's Hydra and srun forward to the ranks. Only this script may get those
# signals: Open MPI's mpirun answers them by killing the ranks a second later, before their
# checkpoint. So the launcher runs in a process group of its own (set -m), which the terminal's
# Ctrl-C and hang-up miss, and reads no terminal (stdin: a background group reading it would
# stop). A second signal is the ranks' second too, which ends them at once (2 s or more after the
# first). The launcher ignores SIGTTOU: a terminal set to `stty tostop` would otherwise stop it, a
# background group, at its first write, and with it the ranks' output and the USR1. A SIGKILL to
# this script, which it cannot pass on, leaves the launcher running: send that to the launcher.
# shellcheck disable=SC2317  # called by the traps
forward() {
  # $!: the launcher, also when the signal came between its start and pid=$!.
  if [ -z "${!:-}" ]; then
    echo "$me: $1 received before the launch: nothing started" >&2
    exit 1
  fi
  echo "$me: $1 received: asking the ranks to stop after this step and write a checkpoint (USR1 to $mpirun)" >&2 || true
  kill -s USR1 "$!" 2>/dev/null || true
}
trap 'forward SIGINT' INT
trap 'forward SIGTERM' TERM
trap 'forward SIGHUP' HUP
trap '' TTOU  # ignored in this script and, inherited, in the launcher
set -m
"${cmd[@]}" </dev/null &
pid=$!
set +m
# A trap ends a wait early: wait again while the launcher runs, then once more for its status
# (bash keeps it), which a launcher that ended during a trap would otherwise lose.
while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done
rc=0
wait "$pid" || rc=$?
exit "$rc"
