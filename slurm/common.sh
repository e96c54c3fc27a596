# shellcheck shell=bash
# Shared by slurm/train.sbatch, scaling.sbatch and forgetting.sbatch, which source it from the
# submission directory (Slurm runs a copy of a batch script from its spool, so a script cannot
# find the files beside it). Nothing here runs by itself.

# ranks_per_node: the most tasks the job runs on one node: SLURM_NTASKS_PER_NODE, else the largest
# count of SLURM_TASKS_PER_NODE (e.g. "4(x2),3"), else SLURM_NTASKS / SLURM_JOB_NUM_NODES.
ranks_per_node() {
  local entry entries most=0 n
  if [[ "${SLURM_NTASKS_PER_NODE:-}" =~ ^[0-9]+$ ]]; then echo "$SLURM_NTASKS_PER_NODE"; return; fi
  if [ -n "${SLURM_TASKS_PER_NODE:-}" ]; then
    IFS=, read -r -a entries <<<"$SLURM_TASKS_PER_NODE"
    for entry in "${entries[@]}"; do
      n=${entry%%(*}
      ((n <= most)) || most=$n
    done
    echo "$most"
    return
  fi
  echo $(((SLURM_NTASKS + ${SLURM_JOB_NUM_NODES:-1} - 1) / ${SLURM_JOB_NUM_NODES:-1}))
}

# gpus_per_node: the GPUs the job has on this node: SLURM_GPUS_ON_NODE, else the count of
# SLURM_JOB_GPUS (e.g. "0,1,2,3"), else SLURM_GPUS_PER_NODE ("4" or "h100:4"); empty when
# Slurm says none of them (no GPU requested).
gpus_per_node() {
  if [[ "${SLURM_GPUS_ON_NODE:-}" =~ ^[0-9]+$ ]]; then
    echo "$SLURM_GPUS_ON_NODE"
  elif [ -n "${SLURM_JOB_GPUS:-}" ]; then
    local ids
    IFS=, read -r -a ids <<<"$SLURM_JOB_GPUS"
    echo "${#ids[@]}"
  elif [[ "${SLURM_GPUS_PER_NODE:-}" =~ ([0-9]+)$ ]]; then
    echo "${BASH_REMATCH[1]}"
  fi
}

# check_one_rank_per_gpu ME: ends the job (status 1, one line naming both counts) unless every
# node runs as many ranks as it has GPUs; QARAC_GPU_CHECK=0 skips it (ranks sharing GPUs on
# purpose).
check_one_rank_per_gpu() {
  local ranks gpus
  [ "${QARAC_GPU_CHECK:-1}" != 0 ] || return 0
  ranks=$(ranks_per_node)
  gpus=$(gpus_per_node)
  if [ -z "$gpus" ]; then
    echo "$1: warning: Slurm names no GPUs of this job (SLURM_GPUS_ON_NODE, SLURM_JOB_GPUS, SLURM_GPUS_PER_NODE): one rank per GPU is not checked" >&2
  elif ((ranks != gpus)); then
    echo "$1: error: $ranks ranks per node but $gpus GPUs per node: run one rank per GPU (--ntasks-per-node=$gpus --gpus-per-task=1), or QARAC_GPU_CHECK=0 to share GPUs on purpose" >&2
    exit 1
  fi
}

# srun_options: srun's options for QARAC-MT ranks, one a line: each rank's lines labelled with
# its rank (--label), one failing rank ends the step, the MPI plugin (QARAC_SRUN_MPI, default
# pmix; empty: the site's default) and, for GPU runs, one GPU per rank bound as QARAC_GPU_BIND
# says (default none: every rank sees its node's GPUs and takes the one of its local rank, which
# keeps NCCL's direct GPU-to-GPU paths; single:1 or closest: each rank sees only its own).
# srun_options DEVICE
srun_options() {
  echo --label
  echo --kill-on-bad-exit=1
  [ -z "${QARAC_SRUN_MPI-pmix}" ] || echo "--mpi=${QARAC_SRUN_MPI-pmix}"
  if [ "$1" = cuda ]; then
    echo --gpus-per-task=1
    echo "--gpu-bind=${QARAC_GPU_BIND:-none}"
  fi
}
