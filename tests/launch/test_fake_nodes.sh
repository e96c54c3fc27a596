#!/usr/bin/env bash
# qarac-train with its ranks on two hosts: nodes emulated by tests/launch/fake-nodes/nodes.sh
# (network namespaces, each with its host name, /tmp and /dev/shm, the file system shared), the
# launcher's daemons started through its ssh stand-in. One case per call:
#   layout     4 ranks on 2 nodes (2+2) and 3 (2+1): each node counts its own ranks' memory (its
#              line names its host and count), and the weights equal those of the same world size
#              on one host, bit for bit
#   lock       a run on nodea holds the directory: a run on nodeb is refused, naming nodea and its
#              pid, and so it is without locks (flock failing on nodeb), by nodea's heartbeat in
#              the lock file; with nodea hung (every process stopped), the refusal says how to go on, and a
#              hard-linked copy goes on; with nodea killed, nodeb resumes, told that the run
#              before did not end cleanly
#   node_lost  nodeb killed, hung (every process stopped) or cut off the network, during a 2+2
#              run: killed, the job ends; hung or cut off, nodea's ranks say so within
#              --parallel.timeout and record it (failed.json; the launcher may wait on); --resume
#              goes on on nodea alone (2 ranks), then on both again (4)
#   sbatch_lost  slurm/train.sbatch (LAUNCHER=mpirun, Open MPI) with nodeb hung: the script ends
#              the launcher that waits on QARAC_FAILED_GRACE seconds after the record, status 3
#   hosts_lost launch/train-hosts.sh (Open MPI) the same way, then --resume on nodea alone
#   bash tests/launch/test_fake_nodes.sh CASE MPIEXEC BUILD_DIR
# Exit 77 (skipped) where nodes cannot be emulated (not root, no ip), with the reason.
set -euo pipefail
me=tests/launch/test_fake_nodes.sh
[ $# -eq 3 ] || { echo "usage: $me layout|lock|node_lost|sbatch_lost|hosts_lost MPIEXEC BUILD_DIR" >&2; exit 2; }
case=$1
mpiexec=$(command -v "$2") || { echo "$me: no launcher $2" >&2; exit 2; }
build=$(cd "$3" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
nodes=$repo/tests/launch/fake-nodes/nodes.sh
reason=$(bash "$nodes" check) || { echo "$me: skipped: $reason"; exit 77; }
flavour=hydra
case "$("$mpiexec" --version 2>&1 || true)" in *"Open MPI"*|*OpenRTE*) flavour=openmpi ;; esac
# MPICH 4.0.2 over UCX: a run across the emulated nodes hangs in MPI_Finalize now and then, as a
# program of a few allreduces alone does (fake-nodes/finalize-probe.sh): an artefact of UCX over
# the emulation, so Hydra runs only on request (docs/distributed.md section 9).
[ "$flavour" = openmpi ] || [ "${QARAC_FAKE_NODES_HYDRA:-0}" = 1 ] ||
  { echo "$me: skipped: $mpiexec is Hydra, whose runs across emulated nodes may hang in MPI_Finalize (QARAC_FAKE_NODES_HYDRA=1 runs them)"; exit 77; }
# shellcheck source=tests/launch/checks.sh
source "$(dirname "$0")/checks.sh"
train=$build/src/cli/qarac-train
prep=$build/src/cli/qarac-prep
sample=$repo/data/sample
export OPENBLAS_NUM_THREADS=1

# The build folder stands for the shared file system (under /tmp too: nodes.sh keeps the entry of
# /tmp that holds it shared, though each node has a /tmp of its own).
work=$(mktemp -d "$build/fake-nodes-XXXXXX")
state=$work/nodes
cleanup() {
  bash "$nodes" down "$state" || true
  rm -rf -- "$work"
}
trap cleanup EXIT
fail() { echo "$me: FAIL: $*" >&2; exit 1; }
bash "$nodes" up "$state" nodea nodeb

# shellcheck source=tests/fault/common.sh
source "$repo/tests/fault/common.sh"
mpi_flags_of "$mpiexec"
prepare_inputs
args=(--model.base "$work/pretrain/export/base" --data.dir "$work/data" --task.ed.batch 8 --task.qa.batch 8
      --task.rs.batch 8 --task.cs.batch 8 --optimizer.warmup 2 --optimizer.lr 1e-3 --train.log_every 1
      --checkpoint.every 2)
digest() { (cd "$1/export" && sha256sum ./*/model.safetensors); }

# on_nodes SPEC COMMAND...: the launcher started on nodea, with ranks on the nodes SPEC names
# ("nodea:2,nodeb:1"), running COMMAND; its daemons on other nodes started through the stand-in
# for ssh. Open MPI and MPICH's Hydra, told apart by the launcher's --version.
on_nodes() {
  local spec=$1 host count ranks=0 launch
  shift
  local -a entries
  IFS=, read -r -a entries <<<"$spec"
  : > "$work/hostfile"
  for entry in "${entries[@]}"; do
    host=${entry%%:*} count=${entry#*:}
    ranks=$((ranks + count))
    echo "$host slots=$count" >> "$work/hostfile"
  done
  if [ "$flavour" = openmpi ]; then
    launch=("$mpiexec" "${mpi_flags[@]}" --hostfile "$work/hostfile" -np "$ranks" --mca plm_rsh_agent "$state/ssh"
            -x OPENBLAS_NUM_THREADS)
  else
    launch=("$mpiexec" -launcher ssh -launcher-exec "$state/ssh" -hosts "$spec" -n "$ranks")
  fi
  bash "$nodes" exec "$state" nodea "${launch[@]}" "$@"
}

# The same world size on one host (nodea), for the weights to compare with.
one_host() {
  local ranks=$1
  shift
  bash "$nodes" exec "$state" nodea "$mpiexec" -np "$ranks" "${mpi_flags[@]}" "$@"
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# hang_nodeb_when_checkpointed LOG: once the job $job (logging to LOG) has written the checkpoint
# of step 4 in $run, stops every process of nodeb and waits up to 40 s for the job to end; sets
# took (ms from the hang) and rc (its status, or "hung": then nodeb is killed to end it).
hang_nodeb_when_checkpointed() {
  for _ in $(seq 100); do [ ! -d "$run/checkpoints/step-0000000004" ] || break; sleep 0.1; done
  [ -d "$run/checkpoints/step-0000000004" ] || fail "no checkpoint: $(tail -3 "$1")"
  local start
  start=$(now_ms)
  bash "$nodes" stop "$state" nodeb
  for _ in $(seq 400); do kill -0 "$job" 2>/dev/null || break; sleep 0.1; done
  took=$(($(now_ms) - start))
  rc=0
  if kill -0 "$job" 2>/dev/null; then
    rc=hung
    bash "$nodes" kill "$state" nodeb
    { wait "$job"; } 2>/dev/null || true
  else
    wait "$job" || rc=$?
  fi
}

case "$case" in
  layout)
    # Each node's /tmp is its own; the shared file system (the build folder) is every node's.
    bash "$nodes" exec "$state" nodea sh -c 'echo a > /tmp/qarac-fake-node-file'
    check "a file in nodea's /tmp is not in nodeb's" bash "$nodes" exec "$state" nodeb test ! -e /tmp/qarac-fake-node-file
    check "nor in the machine's" test ! -e /tmp/qarac-fake-node-file
    check "the shared folder is nodeb's too" bash "$nodes" exec "$state" nodeb test -x "$train"
    for layout in nodea:2,nodeb:2 nodea:2,nodeb:1; do
      ranks=$(($(sed 's/[^,]*:\([0-9]*\)/\1+/g; s/,//g; s/+$//' <<<"$layout")))
      name=${layout//[:,]/-}
      on_nodes "$layout" "$train" "${args[@]}" --train.steps 6 --output "$work/$name" > "$work/$name.log" 2>&1 ||
        fail "$ranks ranks on $layout: $(tail -3 "$work/$name.log")"
      one_host "$ranks" "$train" "${args[@]}" --train.steps 6 --output "$work/one-$ranks" > "$work/one-$ranks.log" 2>&1 ||
        fail "$ranks ranks on one host: $(tail -3 "$work/one-$ranks.log")"
      check "$layout: the weights of $ranks ranks on one host, bit for bit" \
        test "$(digest "$work/$name")" = "$(digest "$work/one-$ranks")"
      for entry in ${layout//,/ }; do
        host=${entry%%:*} count=${entry#*:}
        check "$layout: $host counts its own $count rank(s) against its memory" \
          has_re "$work/$name.log" "host tensors on $host: [0-9.]+ ([KMG]iB|bytes) held by its $count ranks? at the start"
      done
      check "$layout: one host, one line" has_re "$work/one-$ranks.log" "host tensors on nodea: .* held by its $ranks ranks"
    done ;;

  lock)
    run=$work/run
    bash "$nodes" exec "$state" nodea "$train" "${args[@]}" --train.steps 1000000 --output "$run" > "$work/a.log" 2>&1 &
    holder=$!
    for _ in $(seq 100); do [ ! -d "$run/checkpoints/step-0000000002" ] || break; sleep 0.1; done
    [ -d "$run/checkpoints/step-0000000002" ] || fail "the run on nodea made no checkpoint: $(tail -3 "$work/a.log")"
    pid=$(sed -n 's/^nodea pid \([0-9]*\)$/\1/p' "$run/.qarac.lock")
    [ -n "$pid" ] || fail "the lock names no holder on nodea: $(cat "$run/.qarac.lock")"
    rc=0
    bash "$nodes" exec "$state" nodeb "$train" "${args[@]}" --train.steps 4 --output "$run" --resume > "$work/b.log" 2>&1 || rc=$?
    check "a second run on nodeb: refused, status 2 (got $rc)" test "$rc" = 2
    check "the refusal names the holder's host and pid" has "$work/b.log" "is in use by another run (nodea pid $pid), on nodea, not this host (nodeb)"
    # A file system without locks (flock fails on nodeb): nodea's heartbeat keeps nodeb out.
    no_flock=$build/tests/unit/libqarac_no_flock.so
    [ -f "$no_flock" ] || fail "no $no_flock (built with the unit tests)"
    rc=0
    bash "$nodes" exec "$state" nodeb env LD_PRELOAD="$no_flock" "$train" "${args[@]}" --train.steps 4 --output "$run" \
      --resume > "$work/b.log" 2>&1 || rc=$?
    check "without locks: refused, status 2 (got $rc)" test "$rc" = 2
    check "without locks: nodea's heartbeat keeps nodeb out" has "$work/b.log" \
      "is in use by another run (nodea pid $pid): its heartbeat in $run/.qarac.lock advances, though this file system has no locks"
    # nodea hangs: its lock stays; the way on is a copy.
    bash "$nodes" stop "$state" nodea
    rc=0
    bash "$nodes" exec "$state" nodeb "$train" "${args[@]}" --train.steps 4 --output "$run" --resume > "$work/b.log" 2>&1 || rc=$?
    check "nodea hung: refused (got $rc)" test "$rc" = 2
    check "nodea hung: the way on is said" has "$work/b.log" "--resume a copy (cp -al $run NEW, then --output NEW)"
    cp -al "$run" "$work/copy"
    last=$(find "$work/copy/checkpoints" -maxdepth 1 -name 'step-[0-9]*[0-9]' | sort | tail -1)
    bash "$nodes" exec "$state" nodeb "$train" "${args[@]}" --train.steps "$((10#${last##*step-} + 2))" \
      --output "$work/copy" --resume > "$work/copy.log" 2>&1 ||
      fail "the copy did not go on: $(tail -3 "$work/copy.log")"
    check "the copy went on from its last checkpoint" has "$work/copy.log" "resuming from $last"
    # nodea dies: its lock goes with its processes; nodeb goes on, told of the run before.
    bash "$nodes" kill "$state" nodea
    { wait "$holder"; } 2>/dev/null || true  # bash's line on the kill
    last=$(find "$run/checkpoints" -maxdepth 1 -name 'step-[0-9]*[0-9]' | sort | tail -1)
    bash "$nodes" exec "$state" nodeb "$train" "${args[@]}" --train.steps "$((10#${last##*step-} + 2))" \
      --output "$run" --resume > "$work/b.log" 2>&1 || fail "nodeb did not resume: $(tail -3 "$work/b.log")"
    check "nodea dead: nodeb resumed from its last checkpoint" has "$work/b.log" "resuming from $last"
    check "nodea dead: the record it left is said" has "$work/b.log" "the run before this one (nodea pid $pid) did not end cleanly"
    check "an ended run leaves no record" test ! -s "$run/.qarac.lock" ;;

  node_lost)
    timeout=5
    for loss in kill stop cut; do
      run=$work/lost-$loss
      bash "$nodes" up "$state" nodeb
      on_nodes nodea:2,nodeb:2 "$train" "${args[@]}" --train.steps 1000000 --parallel.timeout "$timeout" \
        --output "$run" > "$work/$loss.log" 2>&1 &
      launcher=$!
      for _ in $(seq 100); do [ ! -d "$run/checkpoints/step-0000000004" ] || break; sleep 0.1; done
      [ -d "$run/checkpoints/step-0000000004" ] || fail "$loss: no checkpoint: $(tail -3 "$work/$loss.log")"
      start=$(now_ms)
      bash "$nodes" "$loss" "$state" nodeb
      if [ "$loss" = kill ]; then
        # Its connections reset: the launcher sees the node gone.
        for _ in $(seq 300); do kill -0 "$launcher" 2>/dev/null || break; sleep 0.1; done
        took=$(($(now_ms) - start))
        rc=0
        if kill -0 "$launcher" 2>/dev/null; then rc=hung; else wait "$launcher" || rc=$?; fi
        echo "$me: nodeb killed: the job ended after $((took / 1000)).$(printf %03d $((took % 1000))) s, status $rc"
        check "$loss: the job ended, with a failure (status $rc)" test "$rc" != hung -a "$rc" != 0
      else
        # Hung or cut off: nodea's ranks time out, say so and record it for the job script; the
        # launcher may wait on for its daemon there (Open MPI's mpirun does).
        # (Cut off, nodeb's ranks time out too, and reach the emulation's shared files: the
        # record may be theirs.)
        for _ in $(seq $(((timeout + 15) * 10))); do [ ! -s "$run/failed.json" ] || break; sleep 0.1; done
        took=$(($(now_ms) - start))
        what=$([ "$loss" = stop ] && echo hung || echo "cut off")
        echo "$me: nodeb $what: the ranks said it after $((took / 1000)).$(printf %03d $((took % 1000))) s"
        check "$loss: the failure recorded" has "$run/failed.json" "no completion within the timeout of $timeout s"
        check "$loss: the wait that timed out is named" \
          has_re "$work/$loss.log" "qarac-train: error: .* on nodea\): no completion within the timeout of $timeout s"
        sleep 5
        state_of="has ended"
        ! kill -0 "$launcher" 2>/dev/null || state_of="still waits"
        echo "$me: nodeb $what: 5 s later the launcher $state_of"
        # Gone for good, and its link back: the launcher's connections there reset.
        bash "$nodes" kill "$state" nodeb
        bash "$nodes" join "$state" nodeb
        for _ in $(seq 100); do kill -0 "$launcher" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$launcher" 2>/dev/null; then
          check "$loss: the launcher ends once nodeb's processes are gone" false
          bash "$nodes" kill "$state" nodea
          bash "$nodes" up "$state" nodea
        fi
        { wait "$launcher"; } 2>/dev/null || true
      fi
      bash "$nodes" kill "$state" nodeb
      bash "$nodes" join "$state" nodeb
      last=$(find "$run/checkpoints" -maxdepth 1 -name 'step-[0-9]*[0-9]' | sort | tail -1)
      step=$((10#${last##*step-}))
      on_nodes nodea:2 "$train" "${args[@]}" --train.steps "$((step + 2))" --output "$run" --resume > "$work/$loss-1.log" 2>&1 ||
        fail "$loss: --resume on nodea alone: $(tail -3 "$work/$loss-1.log")"
      check "$loss: resumed on one node from the last checkpoint" has "$work/$loss-1.log" "resuming from $last at step $step, written by a run of 4 ranks (this one: 2)"
      check "$loss: the start removed the failure record" test ! -e "$run/failed.json"
      bash "$nodes" up "$state" nodeb
      on_nodes nodea:2,nodeb:2 "$train" "${args[@]}" --train.steps "$((step + 4))" --output "$run" --resume > "$work/$loss-2.log" 2>&1 ||
        fail "$loss: --resume on two nodes again: $(tail -3 "$work/$loss-2.log")"
      check "$loss: back on two nodes" has "$work/$loss-2.log" "written by a run of 2 ranks (this one: 4)"
    done ;;

  sbatch_lost)
    # slurm/train.sbatch with LAUNCHER=mpirun on nodea, Open MPI told to start its daemons from a
    # hostfile through the ssh stand-in rather than through Slurm; nodeb hangs mid-run.
    [ "$flavour" = openmpi ] || { echo "$me: skipped: sbatch_lost drives Open MPI's mpirun, not $mpiexec"; exit 77; }
    printf 'nodea slots=2\nnodeb slots=2\n' > "$work/hostfile"
    : > "$work/empty.ini"
    run=$work/sbatch-run
    bash "$nodes" exec "$state" nodea env SLURM_JOB_ID=77 SLURM_NTASKS=4 SLURM_NTASKS_PER_NODE=2 \
      SLURM_JOB_NUM_NODES=2 SLURM_JOB_NODELIST=nodea,nodeb SLURM_SUBMIT_DIR="$repo" QARAC_RUN_DIR="$run" \
      LAUNCHER=mpirun MPIRUN="$mpiexec" QARAC_FAILED_GRACE=5 OMPI_MCA_plm=rsh OMPI_MCA_plm_rsh_agent="$state/ssh" \
      OMPI_MCA_ras=^slurm OMPI_MCA_orte_default_hostfile="$work/hostfile" \
      OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
      bash "$repo/slurm/train.sbatch" -- --config "$work/empty.ini" --train.device cpu --train.dtype f32 "${args[@]}" \
      --train.steps 1000000 --parallel.timeout 5 > "$work/sbatch.log" 2>&1 &
    job=$!
    hang_nodeb_when_checkpointed "$work/sbatch.log"
    echo "$me: nodeb hung under slurm/train.sbatch: the job ended after $((took / 1000)).$(printf %03d $((took % 1000))) s, status $rc"
    check "the job ended with the ranks' status 3 (got $rc)" test "$rc" = 3
    check "the script said it ended the launcher" has "$work/sbatch.log" "and the launcher still waits (on a node that hangs or is cut off?): ending it" ;;
  hosts_lost)
    # launch/train-hosts.sh started on nodea (Open MPI told to start its daemons through the ssh
    # stand-in); nodeb hangs mid-run; then --resume on nodea alone through the script.
    [ "$flavour" = openmpi ] || { echo "$me: skipped: hosts_lost drives Open MPI's mpirun, not $mpiexec"; exit 77; }
    run=$work/hosts-run
    launch=(env QARAC_BUILD="$build" MPIRUN="$mpiexec" QARAC_FAILED_GRACE=5 OMPI_MCA_plm_rsh_agent="$state/ssh"
            OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 bash "$repo/launch/train-hosts.sh")
    bash "$nodes" exec "$state" nodea "${launch[@]}" --hosts nodea:2,nodeb:2 -- "${args[@]}" --train.steps 1000000 \
      --parallel.timeout 5 --output "$run" > "$work/hosts.log" 2>&1 &
    job=$!
    hang_nodeb_when_checkpointed "$work/hosts.log"
    check "the launch command placed the ranks" has "$work/hosts.log" "-np 4 -H nodea:2\\,nodeb:2 --map-by slot:PE="
    echo "$me: nodeb hung under launch/train-hosts.sh: the script ended after $((took / 1000)).$(printf %03d $((took % 1000))) s, status $rc"
    check "the script ended with the ranks' status 3 (got $rc)" test "$rc" = 3
    check "the script said it ended the launcher" has "$work/hosts.log" \
      "launch/train-hosts.sh: error: the ranks recorded a failure 5 s ago"
    bash "$nodes" kill "$state" nodeb
    last=$(find "$run/checkpoints" -maxdepth 1 -name 'step-[0-9]*[0-9]' | sort | tail -1)
    step=$((10#${last##*step-}))
    bash "$nodes" exec "$state" nodea "${launch[@]}" --hosts nodea:2 -- "${args[@]}" --train.steps "$((step + 2))" \
      --output "$run" --resume > "$work/hosts-1.log" 2>&1 || fail "--resume on nodea alone: $(tail -3 "$work/hosts-1.log")"
    check "resumed on nodea alone from the last checkpoint" has "$work/hosts-1.log" "resuming from $last at step $step" ;;
  *) echo "$me: unknown case '$case' (layout, lock, node_lost, sbatch_lost, hosts_lost)" >&2; exit 2 ;;
esac
if ((failures)); then
  echo "$me: $case: $failures check(s) failed; the logs: $work (kept)" >&2
  trap 'bash "$nodes" down "$state" || true' EXIT
  exit 1
fi
echo "$me: $case: every check passed"
