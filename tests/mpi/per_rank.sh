#!/usr/bin/env bash
# Runs in each rank of an MPI launch the shell command given for that rank, the first for rank 0:
# the ranks of MPMD's `mpirun -np 1 A : -np 1 B` from one program, for the launchers that cannot
# start that (Open MPI 5.0.7's mpirun, Debian 13's, ends with a segmentation fault on any ':').
#   MPIRUN -np N tests/mpi/per_rank.sh COMMAND0 ... COMMAND(N-1)
# The rank comes from the launcher: OMPI_COMM_WORLD_RANK (Open MPI), PMI_RANK (Hydra: MPICH,
# Intel MPI), SLURM_PROCID (srun).
set -euo pipefail
me=tests/mpi/per_rank.sh
rank=${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-${SLURM_PROCID:-}}}
[[ "$rank" =~ ^[0-9]+$ ]] ||
  { echo "$me: no rank in the environment (OMPI_COMM_WORLD_RANK, PMI_RANK, SLURM_PROCID): run it under an MPI launcher" >&2; exit 2; }
((rank < $#)) || { echo "$me: rank $rank has no command (only $# given)" >&2; exit 2; }
shift "$rank"
exec bash -c "$1"
