# shellcheck shell=bash
# Shared by slurm/train.sbatch, scaling.sbatch and forgetting.sbatch, which source it from the
# submission directory (Slurm runs a copy of a batch script from its spool, so a script cannot
# find the files beside it). Nothing here runs by itself; the scripts define die() first.

# load_site_modules MODULE...: module load MODULE... (nothing without one), or the job ends with
# one line saying why. A batch job's shell is no login shell, so the `module` function may be
# undefined there: the module system's own init (MODULESHOME, LMOD_PKG, /etc/profile.d) defines
# it. Both run with unset variables allowed: module systems read some that may be unset (Lmod
# 9.2.4: LD_PRELOAD, Environment Modules 4.1's init), which `set -u` would make fatal.
load_site_modules() {
  local init rc=0
  (($#)) || return 0
  if ! declare -F module >/dev/null && ! command -v module >/dev/null; then
    for init in "${MODULESHOME:-/nonexistent}/init/bash" "${LMOD_PKG:-/nonexistent}/init/bash" \
                /etc/profile.d/lmod.sh /etc/profile.d/modules.sh; do
      [ -f "$init" ] || continue
      set +u
      # shellcheck disable=SC1090  # the site's
      source "$init" || rc=$?
      set -u
      ((rc == 0)) || die "$init (the module system's init) failed with status $rc"
      break
    done
  fi
  declare -F module >/dev/null || command -v module >/dev/null ||
    die "modules to load ($*) but no 'module' command, and no init of one (MODULESHOME, LMOD_PKG, /etc/profile.d/lmod.sh or modules.sh)"
  set +u
  module load "$@" || rc=$?
  set -u
  ((rc == 0)) || die "module load $*: status $rc (its messages are above): fix the list (QARAC_MODULES or site_modules)"
}

# check_tasks: the job ends with one line unless SLURM_NTASKS, its task count, is set: an
# allocation made without one (salloc -N 1 --gpus=4) has none, and `set -u` would end the script
# with bash's words instead.
check_tasks() {
  [[ "${SLURM_NTASKS:-}" =~ ^[1-9][0-9]*$ ]] ||
    die "SLURM_NTASKS is not set: the job asked for no task count; one rank a GPU: --ntasks-per-node=<GPUs per node> (or -n)"
}

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

# ranks_on_this_node: the tasks the job runs on this node, the allocation's first (where the batch
# script runs): SLURM_NTASKS_PER_NODE, else the first count of SLURM_TASKS_PER_NODE ("2,4(x2)"
# gives 2), else SLURM_NTASKS / SLURM_JOB_NUM_NODES. Nodes may run different counts (-n 10 on
# nodes of 4 GPUs): this one is what this node's GPUs are compared with.
ranks_on_this_node() {
  if [[ "${SLURM_NTASKS_PER_NODE:-}" =~ ^[0-9]+$ ]]; then echo "$SLURM_NTASKS_PER_NODE"; return; fi
  if [ -n "${SLURM_TASKS_PER_NODE:-}" ]; then
    local first=${SLURM_TASKS_PER_NODE%%,*}
    echo "${first%%"("*}"
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

# check_one_rank_per_gpu ME: ends the job (status 1, one line naming both counts) unless this
# node runs as many ranks as it has GPUs (the other nodes' counts are not in its environment;
# qarac-train refuses more ranks than GPUs on any node as it starts); QARAC_GPU_CHECK=0 skips
# it (ranks sharing GPUs on purpose).
check_one_rank_per_gpu() {
  local ranks gpus
  [ "${QARAC_GPU_CHECK:-1}" != 0 ] || return 0
  ranks=$(ranks_on_this_node)
  gpus=$(gpus_per_node)
  if [ -z "$gpus" ]; then
    echo "$1: warning: Slurm names no GPUs of this job (SLURM_GPUS_ON_NODE, SLURM_JOB_GPUS, SLURM_GPUS_PER_NODE): one rank per GPU is not checked" >&2
  elif ((ranks != gpus)); then
    echo "$1: error: $ranks ranks on this node but $gpus GPUs: run one rank per GPU (--ntasks-per-node=$gpus --gpus-per-task=1), or QARAC_GPU_CHECK=0 to share GPUs on purpose" >&2
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
