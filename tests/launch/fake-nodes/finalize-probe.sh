#!/usr/bin/env bash
# Whether an MPI's runs across the emulated nodes (nodes.sh) hang in MPI_Finalize without
# qarac-train: a C program of 200 MPI_Allreduce calls and MPI_Finalize, built with MPICC, run RUNS
# times on two nodes (2+2 ranks), on one node through the ssh stand-in (2 ranks) and on this host
# (4 ranks); prints how many runs of each did not end within 30 s. A diagnosis, not a test
# (docs/distributed.md section 9). Root and iproute2, as nodes.sh.
#   bash tests/launch/fake-nodes/finalize-probe.sh MPICC MPIEXEC [RUNS]   (default 10 runs)
#   e.g. bash tests/launch/fake-nodes/finalize-probe.sh mpicc.mpich mpiexec.mpich
set -euo pipefail
me=tests/launch/fake-nodes/finalize-probe.sh
(($# == 2 || $# == 3)) || { echo "usage: $me MPICC MPIEXEC [RUNS]" >&2; exit 2; }
mpicc=$1 mpiexec=$(command -v "$2") || { echo "$me: no launcher $2" >&2; exit 2; }
runs=${3:-10}
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "$me: RUNS must be a positive integer, not '$runs'" >&2; exit 2; }
nodes=$(cd "$(dirname "$0")" && pwd)/nodes.sh
reason=$(bash "$nodes" check) || { echo "$me: cannot emulate nodes here: $reason" >&2; exit 77; }

# Under /tmp, which nodes.sh keeps shared for a STATE there: every node runs the same program.
work=$(mktemp -d /tmp/qarac-finalize-probe-XXXXXX)
trap 'bash "$nodes" down "$work/nodes" || true; rm -rf -- "$work"' EXIT
cat > "$work/probe.c" <<'EOF'
#include <mpi.h>
int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  double x = rank, sum = 0;
  for (int i = 0; i < 200; ++i) MPI_Allreduce(&x, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  MPI_Finalize();
  return 0;
}
EOF
"$mpicc" -O1 -o "$work/probe" "$work/probe.c"
bash "$nodes" up "$work/nodes" nodea nodeb

openmpi=0
case "$("$mpiexec" --version 2>&1 || true)" in *"Open MPI"*|*OpenRTE*) openmpi=1 ;; esac
# launch SPEC: the launcher's command for ranks on the nodes SPEC names ("nodea:2,nodeb:2"), or
# on this host ("local:4").
launch() {
  local spec=$1 entry ranks=0
  : > "$work/hostfile.$spec"
  for entry in ${spec//,/ }; do
    ranks=$((ranks + ${entry#*:}))
    echo "${entry%%:*} slots=${entry#*:}" >> "$work/hostfile.$spec"
  done
  if ((openmpi)) && [[ "$spec" == local:* ]]; then
    echo "$mpiexec" --allow-run-as-root --oversubscribe -np "$ranks"
  elif ((openmpi)); then
    echo "$mpiexec" --allow-run-as-root --hostfile "$work/hostfile.$spec" -np "$ranks" --mca plm_rsh_agent "$work/nodes/ssh"
  elif [[ "$spec" == local:* ]]; then
    echo "$mpiexec" -n "$ranks"
  else
    echo "$mpiexec" -launcher ssh -launcher-exec "$work/nodes/ssh" -hosts "$spec" -n "$ranks"
  fi
}

# hangs WHAT COMMAND...: COMMAND RUNS times, each given 30 s; prints how many did not end in time.
hangs() {
  local what=$1 count=0 rc
  shift
  for _ in $(seq "$runs"); do
    rc=0
    timeout 30 "$@" > "$work/last.log" 2>&1 || rc=$?
    ((rc != 124)) || count=$((count + 1))
    ((rc == 0 || rc == 124)) || { echo "$me: $what failed (status $rc):" >&2; tail -5 "$work/last.log" >&2; exit 1; }
  done
  echo "$what: $count of $runs runs hung"
}
read -ra two <<<"$(launch nodea:2,nodeb:2)"
read -ra one <<<"$(launch nodea:2)"
read -ra here <<<"$(launch local:4)"
hangs "two nodes (2+2 ranks)" bash "$nodes" exec "$work/nodes" nodea "${two[@]}" "$work/probe"
hangs "one node through the ssh stand-in (2 ranks)" bash "$nodes" exec "$work/nodes" nodea "${one[@]}" "$work/probe"
hangs "this host (4 ranks)" "${here[@]}" "$work/probe"
