#!/usr/bin/env bash
# launch/train-local.sh's launch command for each MPI it knows (stand-ins answering --version as
# Open MPI's mpirun, MPICH's Hydra, Intel MPI's mpirun, and srun in an allocation), with the
# ranks fitting the cores and oversubscribed, and an unknown launcher refused; then, with
# MPIEXEC and BUILD given, a real run of the build's qarac-train --version under the build's own
# MPI launcher, fitting and oversubscribed, and the stand-in stopped by a signal to the script.
#   bash tests/launch/test_train_local.sh [MPIEXEC BUILD_DIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=tests/launch/checks.sh
source "$(dirname "$0")/checks.sh"

work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT
mkdir -p "$work/build/src/cli"
ln -s "$repo/tests/launch/fake/qarac-train" "$work/build/src/cli/qarac-train"
fake=$repo/tests/launch/fake
# dry FLAVOUR RANKS: the printed command of train-local.sh under that launcher, in out.txt.
dry() {
  rc=0
  env FAKE_MPI="$1" FAKE_LOG="$work/log" SLURM_JOB_ID=7 QARAC_BUILD="$work/build" PATH="$fake:$PATH" \
    MPIRUN="$( [ "$1" = srun ] && echo srun || echo mpirun )" \
    bash "$repo/launch/train-local.sh" -n "$2" --dry-run -- --x 1 >"$work/out.txt" 2>&1 || rc=$?
}
many=$(($(nproc) * 4 + 4))   # more ranks than cores whatever the machine
declare -A fits=(
  [openmpi]="mpirun -np 1 --map-by slot:PE="
  [mpich]="mpirun -n 1 -bind-to core:"
  [intel]="mpirun -n 1 -genv I_MPI_PIN_DOMAIN "
  [srun]="srun --ntasks=1 --kill-on-bad-exit=1 --cpus-per-task=")
declare -A oversubscribed=(
  [openmpi]="mpirun -np $many --oversubscribe --bind-to none"
  [mpich]="mpirun -n $many -bind-to none -genv OMP_NUM_THREADS 1 -genv OPENBLAS_NUM_THREADS 1"
  [intel]="mpirun -n $many -genv I_MPI_PIN 0 -genv OMP_NUM_THREADS 1"
  [srun]="srun --ntasks=$many --kill-on-bad-exit=1 --overcommit --cpu-bind=none")
for flavour in openmpi mpich intel srun; do
  dry "$flavour" 1
  check "$flavour, 1 rank: exit 0 (got $rc)" test "$rc" = 0
  check "$flavour, 1 rank: bound to its cores" has "$work/out.txt" "${fits[$flavour]}"
  check "$flavour, 1 rank: the program last" has "$work/out.txt" "$work/build/src/cli/qarac-train --x 1"
  dry "$flavour" "$many"
  check "$flavour, $many ranks: exit 0 (got $rc)" test "$rc" = 0
  check "$flavour, $many ranks: oversubscribed, unbound" has "$work/out.txt" "${oversubscribed[$flavour]}"
done
(unset OPENBLAS_CORETYPE; dry openmpi 1)
check "Open MPI: variables passed with -x" has "$work/out.txt" "-x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS"
check "no OpenBLAS core to set: none set" lacks "$work/out.txt" "OPENBLAS_CORETYPE"
# The OpenBLAS core qarac-train --version names is set on every rank, unless the user set one.
for flavour in openmpi mpich; do
  (unset OPENBLAS_CORETYPE; FAKE_BLAS_CORE=Haswell dry "$flavour" 1)
  check "$flavour: the OpenBLAS core named, set" has "$work/out.txt" "OPENBLAS_CORETYPE=Haswell: OpenBLAS takes this CPU"
  check "$flavour: the OpenBLAS core passed to the ranks" has_re "$work/out.txt" \
    "OPENBLAS_CORETYPE=Haswell mpirun .*(-x OPENBLAS_CORETYPE|-genv OPENBLAS_CORETYPE Haswell) "
done
OPENBLAS_CORETYPE=SkylakeX FAKE_BLAS_CORE=Haswell dry openmpi 1
check "a core the user set: kept" lacks "$work/out.txt" "OPENBLAS_CORETYPE=Haswell"
check "a core the user set: passed to the ranks" has "$work/out.txt" "OPENBLAS_CORETYPE=SkylakeX mpirun"
# Without --, this script's options are its own wherever they stand among qarac-train's.
rc=0
env FAKE_MPI=openmpi FAKE_LOG="$work/log" QARAC_BUILD="$work/build" PATH="$fake:$PATH" MPIRUN=mpirun \
  bash "$repo/launch/train-local.sh" --x 1 -n 2 --y 2 --dry-run >"$work/out.txt" 2>&1 || rc=$?
check "options mixed, no --: exit 0 (got $rc)" test "$rc" = 0
check "options mixed, no --: 2 ranks, qarac-train's options in their order" has_re "$work/out.txt" \
  "mpirun -np 2 .*/qarac-train --x 1 --y 2\$"
check "options mixed, no --: only printed (--dry-run)" test ! -s "$work/log"
# The launcher of another MPI than the program's library: refused, naming both.
for flavour in mpich intel; do
  FAKE_MPI_LIBRARY="Open MPI v4.1.4" dry "$flavour" 2
  check "$flavour's launcher for an Open MPI program, a dry run: exit 0 (got $rc)" test "$rc" = 0
  check "$flavour's launcher for an Open MPI program, a dry run: warned" has "$work/out.txt" \
    "warning: mpirun is the launcher of another MPI ($flavour) than $work/build/src/cli/qarac-train's, Open MPI v4.1.4"
done
rc=0
env FAKE_MPI=openmpi FAKE_MPI_LIBRARY="MPICH Version: 4.0.2" QARAC_BUILD="$work/build" PATH="$fake:$PATH" MPIRUN=mpirun \
  bash "$repo/launch/train-local.sh" -n 2 -- --x 1 >"$work/out.txt" 2>&1 || rc=$?
check "Open MPI's launcher for an MPICH program: exit 1 (got $rc)" test "$rc" = 1
check "Open MPI's launcher for an MPICH program: says so" has "$work/out.txt" \
  "error: mpirun is the launcher of another MPI (openmpi) than $work/build/src/cli/qarac-train's, MPICH Version: 4.0.2"
FAKE_MPI_LIBRARY="MPICH Version: 4.0.2" dry intel 2
check "Intel MPI's launcher for an MPICH program (one ABI): no warning" lacks "$work/out.txt" "warning"
dry other 2
check "an unknown launcher is refused (got $rc)" test "$rc" = 1
check "naming it" has "$work/out.txt" "cannot tell which MPI mpirun belongs to"

# launch/train-hosts.sh: the ranks placed by --hosts, for each MPI; what it refuses.
hosts_dry() {
  rc=0
  env FAKE_MPI="$1" FAKE_LOG="$work/log" QARAC_BUILD="$work/build" PATH="$fake:$PATH" MPIRUN=mpirun \
    bash "$repo/launch/train-hosts.sh" "${@:2}" >"$work/out.txt" 2>&1 || rc=$?
}
# (printf %q, which prints the command, quotes the commas.)
declare -A placed=(
  [openmpi]="mpirun -np 5 -H node1:4\\,node2:1 --map-by slot:PE=1 --bind-to core"
  [mpich]="mpirun -n 5 -hosts node1:4\\,node2:1 -bind-to core:1 -genv OMP_NUM_THREADS 1"
  [intel]="mpirun -n 5 -hosts node1:4\\,node2:1 -genv I_MPI_PIN_DOMAIN 1:compact")
for flavour in openmpi mpich intel; do
  hosts_dry "$flavour" --hosts node1:4,node2 --threads 1 --dry-run -- --output "$work/run" --x 1
  check "train-hosts.sh, $flavour: exit 0 (got $rc)" test "$rc" = 0
  check "train-hosts.sh, $flavour: the ranks placed" has "$work/out.txt" "${placed[$flavour]}"
  check "train-hosts.sh, $flavour: the program last" has "$work/out.txt" "$work/build/src/cli/qarac-train --output $work/run --x 1"
done
hosts_dry openmpi --hosts node1:2 --dry-run -- --x 1
check "train-hosts.sh: threads = this host's cores / the most ranks of a host" has "$work/out.txt" \
  "2 rank(s) on 1 host(s) (node1:2), $(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 )) thread(s) per rank"
for bad in "node1:2,node1:1|node1 is named twice" "node1:0|'node1:0' is not HOST or HOST:N" \
           "node1,,node2|'' is not HOST or HOST:N" "-node|'-node' is not HOST"; do
  hosts_dry openmpi --hosts "${bad%%|*}" -- --output "$work/run"
  check "train-hosts.sh --hosts ${bad%%|*}: refused (got $rc)" test "$rc" = 1
  check "train-hosts.sh --hosts ${bad%%|*}: says why" has "$work/out.txt" "${bad#*|}"
done
hosts_dry openmpi --hosts node1 -- --x 1
check "train-hosts.sh without a run directory: refused (got $rc)" test "$rc" = 1
check "train-hosts.sh without a run directory: says so" has "$work/out.txt" "no run directory among the options"
printf 'output = %s # a comment\n[train]\noutput = elsewhere\n' "$work/from-config" > "$work/run.ini"
# shellcheck source=launch/common.sh
source "$repo/launch/common.sh"
check "run_dir_of: the config file's top-level output" test "$(run_dir_of --config "$work/run.ini")" = "$work/from-config"
check "run_dir_of: the last --output wins" test "$(run_dir_of --output a --config "$work/run.ini" --output=b)" = b
rc=0
env FAKE_LOG="$work/log" QARAC_BUILD="$work/build" PATH="$fake:$PATH" MPIRUN=srun \
  bash "$repo/launch/train-hosts.sh" --hosts node1 -- --output "$work/run" >"$work/out.txt" 2>&1 || rc=$?
check "train-hosts.sh under srun: refused (got $rc)" test "$rc" = 1
check "train-hosts.sh under srun: says why" has "$work/out.txt" "inside a Slurm allocation Slurm places the ranks"

if (($# == 2)); then
  mpiexec=$1 build=$2
  for ranks in 2 "$many"; do
    rc=0
    MPIRUN=$mpiexec QARAC_BUILD=$build bash "$repo/launch/train-local.sh" -n "$ranks" -- --version >"$work/out.txt" 2>&1 || rc=$?
    check "$mpiexec, $ranks ranks: qarac-train --version exits 0 (got $rc)" test "$rc" = 0
    check "$mpiexec, $ranks ranks: every rank answered" test "$(grep -c '^qarac-train ' "$work/out.txt")" = "$ranks"
  done
  # The status the script passes on from the launcher after a stop: the stand-in's 75. Hydra
  # (MPICH 4.0.2) reports 0 instead for a rank that, as the stand-in, ends at once after the
  # signal it forwarded (qarac-train, which first ends its step and writes a checkpoint, gets 75
  # through it: docs/distributed.md section 8); the record of the stop still shows the USR1.
  stop_status() {
    case "$("$mpiexec" --version 2>&1 || true)" in
      *HYDRA*) echo "($1: not checked under Hydra, which loses the stand-in's status)" ;;
      *) check "$1: the ranks' status 75 (got $2)" test "$2" = 75 ;;
    esac
  }
  # TERM or HUP to the script (Ctrl-C too, at a terminal): the ranks get USR1 through the
  # launcher, which never sees the signal (Open MPI's mpirun would kill them a second later), and
  # stop with a checkpoint (the stand-in's record names what reached it); the script exits 75.
  for signal in TERM HUP; do
    rm -rf "$work/run" "$work/ready"
    FAKE_TRAIN=wait_usr1 FAKE_READY=$work/ready FAKE_LOG=$work/log MPIRUN=$mpiexec QARAC_BUILD=$work/build \
      bash "$repo/launch/train-local.sh" -n 1 -- --output "$work/run" >"$work/out.txt" 2>&1 &
    script=$!
    for _ in $(seq 300); do [ -s "$work/ready" ] && break; sleep 0.1; done
    kill -s "$signal" "$script"
    rc=0
    wait "$script" || rc=$?
    stop_status "SIG$signal to the script" "$rc"
    check "SIG$signal to the script: said" has "$work/out.txt" \
      "launch/train-local.sh: SIG$signal received: asking the ranks to stop after this step and write a checkpoint (USR1 to $mpiexec)"
    check "SIG$signal to the script: USR1 reached the ranks" has "$work/run/stopped.json" '"signal":"SIGUSR1"'
  done
  # Ctrl-C at a terminal: the terminal's SIGINT reaches its foreground process group, which must
  # hold the script but not the launcher. With `stty tostop` the launcher, a background group,
  # would stop at its first write to the terminal (SIGTTOU) and never pass on the USR1.
  for tostop in -tostop tostop; do
    rm -rf "$work/run" "$work/ready"
    rc=0
    FAKE_TRAIN=wait_usr1 FAKE_SAY="step 1 of 10" FAKE_READY=$work/ready FAKE_LOG=$work/log MPIRUN=$mpiexec \
      QARAC_BUILD=$work/build python3 - "$repo/launch/train-local.sh" "$work" "$tostop" >"$work/out.txt" 2>&1 <<'PY' || rc=$?
import os, pty, select, signal, subprocess, sys, time
script, work, tostop = sys.argv[1:]
pid, terminal = pty.fork()
if pid == 0:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a suite started in the background ignores it
    subprocess.run(["stty", tostop], check=True)
    os.execvp("bash", ["bash", script, "-n", "1", "--", "--output", work + "/run"])
def show(seconds):  # the terminal's output, as it comes
    end = time.time() + seconds
    while time.time() < end:
        if select.select([terminal], [], [], 0.1)[0]:
            try:
                sys.stdout.write(os.read(terminal, 4096).decode(errors="replace"))
            except OSError:
                return
for _ in range(300):
    if os.path.exists(work + "/ready") and os.path.getsize(work + "/ready"):
        break
    show(0.1)
show(0.5)  # the launcher's line reaches the terminal
os.write(terminal, b"\x03")  # Ctrl-C
end = time.time() + 30
while time.time() < end:
    show(0.5)  # returns at once when the terminal is closed
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.waitstatus_to_exitcode(status))
    time.sleep(0.1)
print("the script still runs 30 s after Ctrl-C")
os.killpg(os.getpgid(pid), 9)
sys.exit(124)
PY
    pkill -KILL -f "$work/build/src/cli/qarac-train" || true  # a stand-in a hung launcher left
    stop_status "Ctrl-C ($tostop)" "$rc"
    check "Ctrl-C ($tostop): the launcher wrote to the terminal" has "$work/out.txt" "step 1 of 10"
    check "Ctrl-C ($tostop): said" has "$work/out.txt" "launch/train-local.sh: SIGINT received: asking the ranks to stop"
    check "Ctrl-C ($tostop): USR1 reached the ranks" has "$work/run/stopped.json" '"signal":"SIGUSR1"'
  done
fi

if ((failures)); then
  echo "--- last output:" >&2
  cat "$work/out.txt" >&2
  exit 1
fi
echo "test_train_local.sh: every check holds"
