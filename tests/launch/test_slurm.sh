#!/usr/bin/env bash
# slurm/train.sbatch, slurm/scaling.sbatch and slurm/forgetting.sbatch under stand-ins for
# sbatch, srun, scontrol, the MPI launchers and qarac-train (tests/launch/fake/), in a scratch
# submission directory.
#   bash tests/launch/test_slurm.sh CASE     (CASE: see the functions test_* below)
# Exit 0 when every check of the case holds; else 1, naming each failed check.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
case_name=${1:?usage: test_slurm.sh CASE}
# shellcheck source=tests/launch/checks.sh
source "$(dirname "$0")/checks.sh"

work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT
ln -s "$repo/launch" "$repo/slurm" "$work/"
mkdir -p "$work/build/src/cli"
ln -s "$repo/tests/launch/fake/qarac-train" "$work/build/src/cli/qarac-train"
export PATH="$repo/tests/launch/fake:$PATH" FAKE_LOG=$work/log QARAC_BUILD=$work/build
unset LAUNCHER MPIRUN QARAC_CONTAINER QARAC_SRUN_MPI QARAC_GPU_BIND QARAC_GPU_CHECK QARAC_REQUEUE
touch "$FAKE_LOG"
cd "$work"
# submit [VAR=VALUE...] -- SBATCH ARGS...: runs the fake sbatch; output in out.txt, status in rc.
submit() {
  local env=()
  while [ "$1" != -- ]; do env+=("$1"); shift; done
  shift
  rc=0
  env "${env[@]}" sbatch "$@" >out.txt 2>&1 || rc=$?
}
run_dir=$work/runs/4242

# A first start: one rank per GPU over srun with labels and GPU binding, the defaults added,
# the program's --version in the log.
test_train_fresh() {
  submit -- -N 2 slurm/train.sbatch -- --train.steps 10
  check "exit 0 (got $rc)" test "$rc" = 0
  check "srun with labels, one GPU per rank, 8 ranks" has "$FAKE_LOG" \
    "srun --label --kill-on-bad-exit=1 --mpi=pmix --gpus-per-task=1 --gpu-bind=none --ntasks=8 $work/build/src/cli/qarac-train"
  check "the defaults and the run directory" has "$FAKE_LOG" \
    "--config launch/configs/qarac-roberta-base.ini --train.device cuda --train.dtype bf16 --output $run_dir --train.steps 10"
  check "no --resume on a first start" lacks "$FAKE_LOG" "--resume"
  check "no requeue" lacks "$FAKE_LOG" "scontrol"
  check "4 ranks per node named" has out.txt "8 rank(s) on 2 node(s) (node[1-2]), 4 per node"
  check "the build's --version in the log" has out.txt "slurm/train.sbatch: qarac-train 0.0.0 (stand-in)"
}

# Slurm's USR1 before the time limit: passed on to the ranks, which checkpoint and exit 75; the
# job requeues itself, and the requeued job (same id, restart 1) resumes from the checkpoint.
test_train_preempt_requeue() {
  export FAKE_READY=$work/ready
  FAKE_TRAIN=wait_usr1 sbatch slurm/train.sbatch >out.txt 2>&1 &
  local job=$!
  for _ in $(seq 300); do [ -e "$FAKE_READY" ] && break; sleep 0.1; done
  check "the training started" test -e "$FAKE_READY"
  kill -USR1 "$job"
  rc=0
  wait "$job" || rc=$?
  check "exit 0 after the stop (got $rc)" test "$rc" = 0
  check "the signal is reported" has out.txt "SIGUSR1 received: asking the ranks to stop"
  check "the ranks wrote their checkpoint" test -d "$run_dir/checkpoints/step-0000000007"
  check "the job requeued itself" has "$FAKE_LOG" "scontrol requeue 4242"
  : >"$FAKE_LOG"
  submit FAKE_RESTART=1 -- slurm/train.sbatch
  check "the requeued job exits 0 (got $rc)" test "$rc" = 0
  check "it resumes" has "$FAKE_LOG" "--output $run_dir --resume"
  check "it says so" has out.txt "holds checkpoints: resuming from the newest valid one (restart 1)"
  check "a finished run does not requeue" lacks "$FAKE_LOG" "scontrol"
}

# start_job [VAR=VALUE...]: runs the fake sbatch of slurm/train.sbatch in the background (job:
# its pid) with a training that waits for a signal; returns once the training started (rank: the
# training's pid).
start_job() {
  export FAKE_READY=$work/ready
  rm -f "$FAKE_READY"
  env "$@" sbatch slurm/train.sbatch >out.txt 2>&1 &
  job=$!
  for _ in $(seq 300); do [ -s "$FAKE_READY" ] && break; sleep 0.1; done
  check "the training started" test -s "$FAKE_READY"
  rank=$(cat "$FAKE_READY")
}
# end_job: waits for the job; its status in rc.
end_job() { rc=0; wait "$job" || rc=$?; }

# scancel (and a preemption): Slurm sends TERM to the batch script and to the ranks, which stop
# with a checkpoint. Slurm accepts `scontrol requeue` of a job it is ending, so a requeue here
# would bring a cancelled job back: none, unless QARAC_REQUEUE=always.
test_train_scancel() {
  start_job FAKE_TRAIN=wait_usr1
  kill -TERM "$job" "$rank"
  end_job
  check "exit 0 after the stop (got $rc)" test "$rc" = 0
  check "the ranks wrote their checkpoint" test -d "$run_dir/checkpoints/step-0000000007"
  check "a cancelled job is not requeued" lacks "$FAKE_LOG" "scontrol"
  check "says why and how to go on" has out.txt \
    "stopped by SIGTERM at the checkpoint $run_dir/checkpoints/step-0000000007; Slurm is ending the job"
  check "names the run directory" has out.txt "resubmit with QARAC_RUN_DIR=$run_dir to continue from"
  # A site whose preemption cancels jobs (PreemptMode=CANCEL) may want the requeue.
  : >"$FAKE_LOG"
  start_job FAKE_TRAIN=wait_usr1 QARAC_REQUEUE=always
  kill -TERM "$job" "$rank"
  end_job
  check "QARAC_REQUEUE=always: exit 0 (got $rc)" test "$rc" = 0
  check "QARAC_REQUEUE=always: requeued after TERM" has "$FAKE_LOG" "scontrol requeue 4242"
}

# A signal to the ranks alone (`scancel -s USR1 JOBID`, without --batch): they checkpoint and exit
# 75, but srun reports 137 when it ends the last of them itself (--kill-on-bad-exit). Rank 0's
# record of the stop says what happened: the job requeues. A record that the next job's run
# fails before removing (an option error) is no stop. Without a record (a full disk), a new
# checkpoint after Slurm's USR1 warning to the script is one.
test_train_ranks_signalled() {
  start_job FAKE_TRAIN=wait_usr1 FAKE_STOP_STATUS=137
  kill -USR1 "$rank"
  end_job
  check "exit 0 after the stop (got $rc)" test "$rc" = 0
  check "the job requeued itself" has "$FAKE_LOG" "scontrol requeue 4242"
  check "says what stopped it" has out.txt \
    "stopped at the checkpoint $run_dir/checkpoints/step-0000000007 (SIGUSR1 on rank 0): requeueing job 4242"
  : >"$FAKE_LOG"
  submit FAKE_RESTART=1 FAKE_TRAIN=refused -- slurm/train.sbatch
  check "the refused run's status 2 (got $rc)" test "$rc" = 2
  check "an earlier stop's record does not requeue" lacks "$FAKE_LOG" "scontrol"
  check "its error shows" has out.txt "the training exited with status 2"
  # Slurm's USR1 warning, the record not written (a full disk): the new checkpoint says it.
  : >"$FAKE_LOG"
  rm -rf "$run_dir"
  start_job FAKE_TRAIN=wait_usr1 FAKE_STOP_STATUS=137 FAKE_NO_RECORD=1
  kill -USR1 "$job"
  end_job
  check "no record, USR1 to the script: exit 0 (got $rc)" test "$rc" = 0
  check "no record, USR1 to the script: requeued" has "$FAKE_LOG" "scontrol requeue 4242"
}

# The time limit's TERM while the checkpoint that the USR1 warning asked for is still being
# written: the ranks end at once, without it. One line says the lead time was too short, and the
# job is not requeued (nothing new to continue from).
test_train_timelimit_in_checkpoint() {
  start_job FAKE_TRAIN=wait_slow
  kill -USR1 "$job"
  sleep 0.5
  kill -TERM "$job" "$rank"
  end_job
  check "the ranks' status (got $rc)" test "$rc" = 143
  check "not requeued" lacks "$FAKE_LOG" "scontrol"
  check "one line naming the cause" has out.txt \
    "slurm/train.sbatch: error: the time limit came before the checkpoint that SIGUSR1 asked for"
  check "and the remedy" has out.txt "make the lead time of #SBATCH --signal (600 s) longer than a step plus a checkpoint"
  check "not called a training failure" lacks out.txt "the training exited with status"
}

# Modules from QARAC_MODULES in a batch shell without the `module` function (no login shell): the
# module system's init defines it, and neither reads unset variables under set -u (as Lmod 9.2.4
# reads LD_PRELOAD). A failing load ends the job with one line.
test_train_modules() {
  mkdir -p modules/init
  cat >modules/init/bash <<'INIT'
# A module system's init, as strict as Lmod 9.2.4's about unset variables.
module() {
  : "$LD_PRELOAD"
  echo "module $*" >>"$FAKE_LOG"
  [ "$2" != missing/1 ]
}
INIT
  submit -u LD_PRELOAD MODULESHOME="$work/modules" QARAC_MODULES="gcc/12 cuda/12.4" -- slurm/train.sbatch
  check "exit 0 (got $rc)" test "$rc" = 0
  check "the modules loaded" has "$FAKE_LOG" "module load gcc/12 cuda/12.4"
  check "then the training" has "$FAKE_LOG" "srun --label"
  : >"$FAKE_LOG"
  submit -u LD_PRELOAD MODULESHOME="$work/modules" QARAC_MODULES="missing/1" -- slurm/train.sbatch
  check "a failing load: exit 1 (got $rc)" test "$rc" = 1
  check "a failing load: one line" has out.txt "slurm/train.sbatch: error: module load missing/1: status 1"
  check "a failing load: nothing started" lacks "$FAKE_LOG" "srun"
  # The function exported from the submitting shell, as Lmod's is, as strict about unset variables.
  : >"$FAKE_LOG"
  # shellcheck disable=SC2016  # the function's text, expanded when it runs
  submit -u LD_PRELOAD QARAC_MODULES="gcc/12" 'BASH_FUNC_module%%=() { : "$LD_PRELOAD"; echo "module $*" >>"$FAKE_LOG"; }' \
    -- slurm/train.sbatch
  check "an exported module function: exit 0 (got $rc)" test "$rc" = 0
  check "an exported module function: loaded" has "$FAKE_LOG" "module load gcc/12"
  submit MODULESHOME="$work/nowhere" QARAC_MODULES="gcc/12" -- slurm/train.sbatch
  check "no module system: exit 1 (got $rc)" test "$rc" = 1
  check "no module system: one line" has out.txt "slurm/train.sbatch: error: modules to load (gcc/12) but no 'module' command"
}

# An allocation without a task count (salloc -N 1 --gpus=4, then the script): one line naming it,
# not bash's "parameter null or not set".
test_no_tasks() {
  local script
  for script in train scaling forgetting; do
    rc=0
    env -u SLURM_NTASKS SLURM_JOB_ID=4242 SLURM_SUBMIT_DIR="$work" bash "slurm/$script.sbatch" >out.txt 2>&1 || rc=$?
    check "$script: exit 1 (got $rc)" test "$rc" = 1
    check "$script: one line naming SLURM_NTASKS" has out.txt "slurm/$script.sbatch: error: SLURM_NTASKS is not set"
    check "$script: only that line" test "$(wc -l <out.txt)" = 1
  done
}

# The experiments are not resumable: a requeue (Slurm's default JobRequeue=1, after a node failure
# or a preemption) would fail on their own output directory and truncate their log.
test_experiments_not_requeued() {
  local script
  for script in scaling forgetting; do
    check "$script.sbatch: --no-requeue" has "slurm/$script.sbatch" "#SBATCH --no-requeue"
  done
}

# Preemption: Slurm's TERM reaches the ranks, which checkpoint and exit 75: requeue, unless
# QARAC_REQUEUE=0.
test_train_preempted() {
  submit FAKE_TRAIN=stopped -- slurm/train.sbatch
  check "exit 0 (got $rc)" test "$rc" = 0
  check "requeued" has "$FAKE_LOG" "scontrol requeue 4242"
  rm -rf "$run_dir"
  : >"$FAKE_LOG"
  submit FAKE_TRAIN=stopped QARAC_REQUEUE=0 -- slurm/train.sbatch
  check "QARAC_REQUEUE=0: exit 0 (got $rc)" test "$rc" = 0
  check "QARAC_REQUEUE=0: not requeued" lacks "$FAKE_LOG" "scontrol"
  check "QARAC_REQUEUE=0: says how to go on" has out.txt "QARAC_REQUEUE=0: not requeueing"
}

# A failed run keeps its status and is not requeued; a run directory without a checkpoint is
# moved aside before the next start.
test_train_failure() {
  submit FAKE_TRAIN=fail -- slurm/train.sbatch
  check "the training's status 3 (got $rc)" test "$rc" = 3
  check "not requeued" lacks "$FAKE_LOG" "scontrol"
  check "the rank's error shows" has out.txt "qarac-train: error: all-reduce at step 3"
  submit -- slurm/train.sbatch
  check "the next start exits 0 (got $rc)" test "$rc" = 0
  check "the empty run directory was moved aside" compgen -G "$run_dir.failed-*"
  # A folder that is no run's is neither moved nor trained into.
  mkdir -p runs/other/checkpoints/step-0000000100
  : >"$FAKE_LOG"
  submit QARAC_RUN_DIR=runs -- slurm/train.sbatch
  check "QARAC_RUN_DIR naming no run's directory: exit 1 (got $rc)" test "$rc" = 1
  check "one line saying why" has out.txt "slurm/train.sbatch: error: QARAC_RUN_DIR=$work/runs is not empty and not a qarac-train run directory"
  check "the folder stays" test -d runs/other/checkpoints/step-0000000100
  check "nothing started" lacks "$FAKE_LOG" "srun"
}

# Ranks that recorded a lost peer (failed.json) while the launcher waits on, as Open MPI's mpirun
# does for a daemon on a hung node: ended QARAC_FAILED_GRACE seconds later, status 3 (before: the
# job waited to its time limit). A failure without a hang is left to the launcher.
test_train_launcher_waits() {
  SECONDS=0
  submit QARAC_FAILED_GRACE=2 FAKE_TRAIN=fail_hang -- slurm/train.sbatch
  check "status 3 (got $rc)" test "$rc" = 3
  check "ended within seconds of the grace (took $SECONDS s)" test "$SECONDS" -lt 15
  check "said why" has out.txt "the ranks recorded a failure 2 s ago ({\"step\":2,\"rank\":0,\"host\":\"node1\""
  check "not requeued" lacks "$FAKE_LOG" "scontrol"
  # A run that failed in its first step leaves the record alone: a run's directory, moved aside.
  find "$run_dir" -mindepth 1 ! -name failed.json -delete
  submit -- slurm/train.sbatch
  check "a directory holding the record alone: moved aside, the run started (got $rc)" test "$rc" = 0
  check "a directory holding the record alone: moved aside" compgen -G "$run_dir.failed-*"
  rm -rf "$run_dir"
  submit QARAC_FAILED_GRACE=1 FAKE_TRAIN=fail -- slurm/train.sbatch
  check "a launcher that ends: its status (got $rc)" test "$rc" = 3
  check "a launcher that ends: not ended" lacks out.txt "ending it"
  submit QARAC_FAILED_GRACE=x -- slurm/train.sbatch
  check "a grace that is no number: refused (got $rc)" test "$rc" = 1
}

# More ranks than GPUs on a node: one line naming both counts, and nothing started. A CPU run
# and QARAC_GPU_CHECK=0 are not checked.
test_train_gpu_check() {
  submit -- --ntasks-per-node=8 --gres=gpu:4 slurm/train.sbatch
  check "exit 1 (got $rc)" test "$rc" = 1
  check "one line naming both counts" has out.txt "slurm/train.sbatch: error: 8 ranks on this node but 4 GPUs"
  check "one line" test "$(wc -l <out.txt)" = 1
  check "nothing started" lacks "$FAKE_LOG" "srun"
  : >"$FAKE_LOG"
  submit -- --ntasks-per-node=8 --gres=gpu:4 slurm/train.sbatch -- --train.device cpu
  check "a CPU run is not checked (got $rc)" test "$rc" = 0
  check "a CPU run computes in f32 (no bf16 default)" lacks "$FAKE_LOG" "--train.dtype bf16"
  # The default config's bf16 is CUDA's (before: qarac-train refused it on the CPU).
  check "the config's bf16 becomes f32 on the CPU" has "$FAKE_LOG" "--train.dtype f32"
  : >"$FAKE_LOG"
  submit -- --ntasks-per-node=8 --gres=gpu:4 slurm/train.sbatch -- --train.device cpu --train.dtype f64
  check "a dtype of the user's is kept" has "$FAKE_LOG" "--train.dtype f64"
  check "and is the only one" lacks "$FAKE_LOG" "--train.dtype f32"
  submit QARAC_GPU_CHECK=0 -- --ntasks-per-node=8 --gres=gpu:4 slurm/train.sbatch
  check "QARAC_GPU_CHECK=0 is not checked (got $rc)" test "$rc" = 0
  submit -- --ntasks-per-node=2 --gres=gpu:4 slurm/train.sbatch
  check "fewer ranks than GPUs fails too (got $rc)" test "$rc" = 1
  check "naming both counts" has out.txt "2 ranks on this node but 4 GPUs"
  # Nodes with other task counts (-n 10 on nodes of 4 GPUs, this node the one of 2): this node's
  # ranks against its GPUs (before: the most ranks of any node, 4, against this node's 2).
  : >"$FAKE_LOG"
  submit FAKE_TASKS_PER_NODE="2,4(x2)" -- -N 3 --gpus-per-task=1 slurm/train.sbatch
  check "uneven nodes, one GPU a rank: runs (got $rc)" test "$rc" = 0
  check "and starts" has "$FAKE_LOG" "srun"
  submit FAKE_TASKS_PER_NODE="2,4(x2)" -- -N 3 --gres=gpu:4 slurm/train.sbatch
  check "uneven nodes, this node's 2 ranks on its 4 GPUs: refused (got $rc)" test "$rc" = 1
  check "naming this node's counts" has out.txt "2 ranks on this node but 4 GPUs"
}

# LAUNCHER=mpirun: each MPI's flags for ranks per node, no binding and labelled output; the
# container runs the program through apptainer exec --nv.
test_train_mpirun_flavours() {
  local flavour
  declare -A expected=(
    [openmpi]="mpirun -np 8 --map-by ppr:4:node --bind-to none --tag-output -x NCCL_DEBUG -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS $work/build"
    [mpich]="mpirun -n 8 -ppn 4 -prepend-rank -bind-to none $work/build"
    [intel]="mpirun -n 8 -ppn 4 -prepend-rank -genv I_MPI_PIN 0 $work/build")
  for flavour in openmpi mpich intel; do
    : >"$FAKE_LOG"
    rm -rf "$run_dir"
    submit LAUNCHER=mpirun FAKE_MPI=$flavour -- -N 2 slurm/train.sbatch
    check "$flavour: exit 0 (got $rc)" test "$rc" = 0
    check "$flavour: its flags" has "$FAKE_LOG" "${expected[$flavour]}"
    # Its daemons' srun would take them: one GPU and one task's cores for a node's ranks.
    check "$flavour: no per-task requests for the launcher's daemons" lacks "$FAKE_LOG" "mpirun environment:"
  done
  submit LAUNCHER=mpirun FAKE_MPI=other -- slurm/train.sbatch
  check "an unknown mpirun is refused (got $rc)" test "$rc" = 1
  check "naming it" has out.txt "cannot tell which MPI mpirun belongs to"
  # A container: a stand-in apptainer that runs the program from PATH.
  cat >"$work/apptainer" <<'FAKE'
#!/usr/bin/env bash
echo "apptainer $*" >>"$FAKE_LOG"
shift 3
exec "$@"
FAKE
  chmod +x "$work/apptainer"
  touch "$work/qarac.sif"
  rm -rf "$run_dir"
  : >"$FAKE_LOG"
  submit PATH="$work:$PATH" QARAC_CONTAINER="$work/qarac.sif" -- slurm/train.sbatch
  check "container: exit 0 (got $rc)" test "$rc" = 0
  check "container: srun apptainer exec --nv" has "$FAKE_LOG" "--ntasks=4 $work/apptainer exec --nv $work/qarac.sif qarac-train --config"
}

# The scaling test over the fake ranks: strong at 1, 2, 4, 8, weak from W0 = 4, the model's
# efficiencies, the given --base without the note about a tiny random one, and both ideals.
test_scaling_run() {
  if ! command -v jq >/dev/null || ! command -v gnuplot >/dev/null; then echo "jq or gnuplot missing: skipped"; exit 77; fi
  mkdir -p base data
  touch base/config.json base/model.safetensors data/{encode_decode,question_answering,reasoning,consistency}.h5
  submit FAKE_TRAIN=scaling -- -N 2 slurm/scaling.sbatch --base base --data data
  check "exit 0 (got $rc)" test "$rc" = 0
  local csv=runs/scaling-4242/scaling.csv
  check "no note about a tiny random base when --base is given" lacks out.txt "no base model"
  check "no note about the sample data when --data is given" lacks out.txt "no task streams"
  check "no warning for 40 timed steps" lacks out.txt "warning"
  check "rows: strong 1 2 4 8, weak 4 8" test "$(cut -d, -f1,2 "$csv" | tail -n +2 | tr '\n' ' ')" = \
    "weak,4 weak,8 strong,1 strong,2 strong,4 strong,8 "
  # Efficiency is the fifth field from the end (the plan holds commas). The fake's model
  # (tests/launch/fake/qarac-train), --batch 256: weak W = 4 and 8 both 256
  # examples a rank, 1 ms each, plus 2 ms · log2 W; strong W = 1 1024 examples, W = 8 128.
  check "weak efficiency at W = 8: 0.260 / 0.262" test "$(awk -F, '$1 == "weak" && $2 == 8 { print $(NF - 4) }' "$csv")" = 0.9924
  check "strong efficiency at W = 8: 1.024 / (8 · 0.134)" test "$(awk -F, '$1 == "strong" && $2 == 8 { print $(NF - 4) }' "$csv")" = 0.9552
  check "weak at W = 8 doubles each task's global batch" has runs/scaling-4242/logs/weak-w8.cmd "--task.ed.batch 512"
  check "strong at W = 8 keeps it" has runs/scaling-4242/logs/strong-w8.cmd "--task.ed.batch 256"
  check "srun with labels and a GPU per rank" has runs/scaling-4242/logs/strong-w8.cmd "srun --label --kill-on-bad-exit=1 --mpi=pmix --gpus-per-task=1 --gpu-bind=none -n 8 -N 2"
  check "the weak ideal from W0 = 4" has runs/scaling-4242/scaling.svg "weak, ideal (from W0 = 4)"
  check "the strong ideal from W0 = 1" has runs/scaling-4242/scaling.svg "strong, ideal (from W0 = 1)"
  # Summarised again without the job's options: the plot still says how the runs were made.
  local title
  title=$(cat runs/scaling-4242/logs/plot-title.txt)
  check "the title names the job's settings" test "${title#*: }" = \
    "cuda, srun, 256 examples per task (strong) or per rank (weak), 50 steps (10 warm-up)"
  rm runs/scaling-4242/scaling.svg
  rc=0
  bash launch/scaling.sh --summarise-only --out runs/scaling-4242 --warmup-steps 10 >out.txt 2>&1 || rc=$?
  check "--summarise-only: exit 0 (got $rc)" test "$rc" = 0
  check "--summarise-only: the runs' title, not the defaults'" has runs/scaling-4242/scaling.svg "$title"
}

# A run too short for its figures, and one scaling more than linearly, are named in warnings.
test_scaling_short() {
  if ! command -v jq >/dev/null || ! command -v gnuplot >/dev/null; then echo "jq or gnuplot missing: skipped"; exit 77; fi
  mkdir -p base data
  touch base/config.json base/model.safetensors data/{encode_decode,question_answering,reasoning,consistency}.h5
  submit FAKE_TRAIN=scaling FAKE_SUPERLINEAR=1 -- -N 2 slurm/scaling.sbatch --base base --data data --steps 12 --warmup-steps 2
  check "exit 0 (got $rc)" test "$rc" = 0
  check "too few timed steps" has out.txt "strong W=8: as few as 10 timed steps; the means need 20 at least"
  check "more than linear" has out.txt "launch/scaling.sh: warning: weak W=8: efficiency 1.94 is above 1"
  # Bash's arithmetic would read 08 as octal (an error) and 010 as 8.
  submit -- slurm/scaling.sbatch --base base --data data --steps 12 --warmup-steps 08
  check "a warmup with a leading zero: exit 1 (got $rc)" test "$rc" = 1
  check "a warmup with a leading zero: says so" has out.txt "--warmup-steps must be a non-negative integer (no leading zero), not '08'"
}

# The allocation's ranks per node against its GPUs per node, before anything runs.
test_scaling_gpu_check() {
  submit -- --ntasks-per-node=8 --gres=gpu:4 slurm/scaling.sbatch
  check "exit 1 (got $rc)" test "$rc" = 1
  check "one line naming both counts" has out.txt "slurm/scaling.sbatch: error: 8 ranks on this node but 4 GPUs"
  check "nothing started" lacks "$FAKE_LOG" "srun"
  # The CPU run needs the experiment's jq and gnuplot: without them only the check above ran.
  if ! command -v jq >/dev/null || ! command -v gnuplot >/dev/null; then
    echo "jq or gnuplot missing: the CPU run skipped"
    ((failures)) || exit 77
    return
  fi
  # On the CPU: neither checked nor given bf16, which only CUDA computes in.
  mkdir -p base data
  touch base/config.json base/model.safetensors data/{encode_decode,question_answering,reasoning,consistency}.h5
  submit FAKE_TRAIN=scaling -- --ntasks-per-node=8 --gres=gpu:4 slurm/scaling.sbatch --device cpu --base base --data data \
    --ranks 1 --mode strong --steps 3 --warmup-steps 1
  check "a CPU run: exit 0 (got $rc)" test "$rc" = 0
  check "a CPU run trains" has "$FAKE_LOG" "--train.device cpu"
  check "a CPU run computes in f32 (no bf16 default)" lacks "$FAKE_LOG" "--train.dtype bf16"
}

# The forgetting experiment over the fake ranks: srun over the allocation's 8 ranks, the
# defaults (CUDA, bf16, the roberta-base config), the sequential phases resuming one another,
# and the CSV of every evaluation.
test_forgetting_run() {
  if ! command -v jq >/dev/null || ! command -v gnuplot >/dev/null; then echo "jq or gnuplot missing: skipped"; exit 77; fi
  mkdir -p base data data-dev
  touch base/config.json base/model.safetensors base/tokenizer.json
  touch data/{encode_decode,question_answering,reasoning,consistency}.h5 data-dev/{encode_decode,question_answering,reasoning,consistency}.h5
  submit FAKE_TRAIN=forgetting -- -N 2 slurm/forgetting.sbatch --base base --data data --eval-data data-dev \
    --steps 40 --runs a,b
  check "exit 0 (got $rc)" test "$rc" = 0
  local out=runs/forgetting-4242
  check "srun with labels and a GPU per rank, 8 ranks on 2 nodes" has "$out/logs/parallel.cmd" \
    "srun --label --kill-on-bad-exit=1 --mpi=pmix --gpus-per-task=1 --gpu-bind=none -n 8 -N 2"
  check "the roberta-base config" has_re "$out/logs/parallel.cmd" "--config [^ ]*/launch/configs/qarac-roberta-base.ini "
  check "CUDA in bf16" has_re "$out/logs/parallel.cmd" "--train.device cuda .*--train.dtype bf16"
  check "the last phase resumes" has "$out/logs/sequential-4-cs.cmd" "--resume --train.steps 40"
  check "the CSV: sequential every 5 steps, parallel too" test "$(cut -d, -f1,2 "$out/forgetting.csv" | tail -n +2 | wc -l)" = 18
  check "the fake's forgetting: sequential and parallel forget as much" has out.txt \
    "sequential and parallel forget as much, as measured: forgetting.mlm_loss rises by +0.0400"
}

# The allocation's ranks per node against its GPUs per node, before anything runs.
test_forgetting_gpu_check() {
  submit -- --ntasks-per-node=8 --gres=gpu:4 slurm/forgetting.sbatch
  check "exit 1 (got $rc)" test "$rc" = 1
  check "one line naming both counts" has out.txt "slurm/forgetting.sbatch: error: 8 ranks on this node but 4 GPUs"
  check "nothing started" lacks "$FAKE_LOG" "srun"
  # The CPU run needs the experiment's jq and gnuplot: without them only the check above ran.
  if ! command -v jq >/dev/null || ! command -v gnuplot >/dev/null; then
    echo "jq or gnuplot missing: the CPU run skipped"
    ((failures)) || exit 77
    return
  fi
  mkdir -p base data data-dev
  touch base/config.json base/model.safetensors base/tokenizer.json
  touch data/{encode_decode,question_answering,reasoning,consistency}.h5 data-dev/{encode_decode,question_answering,reasoning,consistency}.h5
  submit FAKE_TRAIN=forgetting -- --ntasks-per-node=8 --gres=gpu:4 slurm/forgetting.sbatch --device cpu --base base \
    --data data --eval-data data-dev --steps 10 --runs b
  check "a CPU run: exit 0 (got $rc)" test "$rc" = 0
  check "a CPU run trains" has "$FAKE_LOG" "--train.device cpu"
  check "a CPU run computes in f32 (no bf16 default)" lacks "$FAKE_LOG" "--train.dtype bf16"
  check "the default config's bf16 becomes f32 on the CPU" has "$FAKE_LOG" "--train.dtype f32"
}

declare -F "test_$case_name" >/dev/null || { echo "test_slurm.sh: no case '$case_name'" >&2; exit 2; }
"test_$case_name"
if ((failures)); then
  echo "--- output of the last job:" >&2
  cat out.txt >&2
  echo "--- commands run (FAKE_LOG):" >&2
  cat "$FAKE_LOG" >&2
  exit 1
fi
echo "test_slurm.sh $case_name: every check holds"
