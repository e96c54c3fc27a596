#!/usr/bin/env bash
# Starts qarac-train on several machines without a batch system: the ranks that --hosts places,
# started by the MPI launcher over ssh, bound to cores and threaded to fit; prints the launch
# command first. The hosts reach each other, reach the run directory and qarac-train at the same
# paths as this one (a shared file system), and this host reaches them by ssh without a password.
#
#   bash launch/train-hosts.sh --hosts HOST[:N][,HOST[:N]...] [--threads T] [--dry-run] [--]
#       qarac-train options...
#   (before --, the options below are this script's wherever they stand; the rest, and all after
#   --, go to qarac-train)
#     --hosts LIST   the hosts and the ranks each runs (N, default 1); the world size W is the sum
#     --threads T    OpenMP/OpenBLAS threads per rank (default: this host's cores divided by the
#                    most ranks a host runs: the hosts alike, as a cluster's nodes are)
#     --dry-run      print the launch command and stop
# e.g.
#   bash launch/train-hosts.sh --hosts node1:4,node2:4 -- --config launch/configs/quickstart.ini \
#       --output runs/two-nodes --model.base runs/quickstart/pretrain/export/base \
#       --data.dir runs/quickstart/data/train
#
# The launcher: MPIRUN (default mpirun), told apart by its --version, as for train-local.sh:
#   Open MPI        -H LIST --map-by slot:PE=T --bind-to core; -x for the variables,
#                   --allow-run-as-root when run as root
#   MPICH (Hydra)   -hosts LIST -bind-to core:T; -genv for the variables
#   Intel MPI       -hosts LIST -genv I_MPI_PIN_DOMAIN T:compact; -genv
# Inside a Slurm allocation, Slurm places the ranks: use slurm/train.sbatch, or train-local.sh
# with MPIRUN=srun on one node.
# Ctrl-C, SIGTERM or SIGHUP to this script stops the ranks after the step in flight with a
# checkpoint (exit status 75; --resume goes on), as train-local.sh does.
# A host that dies ends the job. One that hangs or falls off the network: the other ranks wait
# --parallel.timeout seconds, say which wait failed, record it in <run dir>/failed.json and end
# the job, but Open MPI's mpirun then waits for ever on its daemon there. QARAC_FAILED_GRACE
# seconds after the record (default 120; 0: never), this script ends the launcher and exits 3, the
# ranks' status for a lost peer; --resume goes on from the newest checkpoint, on the hosts left
# (any world size).
# Environment: QARAC_BUILD, MPIRUN, OPENBLAS_CORETYPE as for train-local.sh; QARAC_FAILED_GRACE.
set -euo pipefail
export LC_ALL=C  # text matched in the C locale (train-local.sh says why)
me=launch/train-hosts.sh
die() { echo "$me: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; }

repo=$(cd "$(dirname "$0")/.." && pwd)
hosts=""
threads=""
dry_run=0
train_args=()
while (($#)); do
  case "$1" in
    --hosts|--threads)
      (($# >= 2)) || die "$1 needs a value (see --help)"
      if [ "$1" = --hosts ]; then hosts=$2; else threads=$2; fi
      shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; train_args+=("$@"); break ;;
    *) train_args+=("$1"); shift ;;
  esac
done
[ -n "$hosts" ] || die "the hosts are missing: $me --hosts HOST[:N][,HOST[:N]...] [--] qarac-train options (see --help)"
[ -z "$threads" ] || [[ "$threads" =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer, not '$threads'"
# HOST[:N] entries: every host once (a repeated one would be placed twice over), N >= 1.
ranks=0
most=0
declare -A seen=()
host_list=()
IFS=, read -ra entries <<<"$hosts"
for entry in "${entries[@]}"; do
  [[ "$entry" =~ ^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:([1-9][0-9]*))?$ ]] ||
    die "--hosts: '$entry' is not HOST or HOST:N (a host name, N >= 1 ranks on it)"
  host=${BASH_REMATCH[1]}
  n=${BASH_REMATCH[4]:-1}
  [ -z "${seen[$host]:-}" ] || die "--hosts: $host is named twice: give it once, with all its ranks ($host:N)"
  seen[$host]=1
  host_list+=("$host:$n")
  ranks=$((ranks + n))
  ((n <= most)) || most=$n
done
((${#host_list[@]} > 0)) || die "--hosts names no host"
hosts=$(IFS=,; echo "${host_list[*]}")

# shellcheck source=launch/common.sh
source "$repo/launch/common.sh"
setup_launcher "$ranks" "$dry_run"
[ "$flavour" != srun ] || die "MPIRUN=srun: inside a Slurm allocation Slurm places the ranks (slurm/train.sbatch), not --hosts"
# The run directory, where the ranks record a lost peer (failed.json) for this script to read.
run_dir=$(run_dir_of "${train_args[@]}")
[ -n "$run_dir" ] || ((dry_run)) ||
  die "no run directory among the options (--output DIR, or output = DIR in the --config file)"

cores=$(cores_here)
if [ -z "$threads" ]; then
  threads=$((cores / most))
  ((threads >= 1)) || threads=1
fi
rank_environment "$threads" "$version"
case "$flavour" in
  openmpi) cmd=("$mpirun" -np "$ranks" -H "$hosts" --map-by "slot:PE=$threads" --bind-to core) ;;
  mpich) cmd=("$mpirun" -n "$ranks" -hosts "$hosts" -bind-to "core:$threads") ;;
  intel) cmd=("$mpirun" -n "$ranks" -hosts "$hosts" -genv I_MPI_PIN_DOMAIN "$threads:compact") ;;
esac
pass_environment
cmd+=("$train" "${train_args[@]}")

echo "$me: $ranks rank(s) on ${#host_list[@]} host(s) ($hosts), $threads thread(s) per rank, launcher $mpirun ($flavour)"
print_launch
((dry_run)) && exit 0

launch_watched "$run_dir"
