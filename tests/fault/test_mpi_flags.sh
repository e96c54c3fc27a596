#!/usr/bin/env bash
# The fault scripts' launcher flags (mpi_flags_of in common.sh), under the stand-in launchers of
# tests/launch/fake: Open MPI's mpirun gets --oversubscribe (and --allow-run-as-root as root);
# Hydra (MPICH, Intel MPI), which refuses them, none; QARAC_MPI_FLAGS wins, empty too.
set -euo pipefail
me=tests/fault/test_mpi_flags.sh
here=$(cd "$(dirname "$0")" && pwd)
fake=$here/../launch/fake/mpirun
fail() { echo "$me: FAIL: $*" >&2; exit 1; }
# shellcheck source=tests/fault/common.sh
source "$here/common.sh"

# expect FLAVOUR FLAGS...: what mpi_flags_of chooses for the stand-in of FLAVOUR.
expect() {
  local flavour=$1
  shift
  FAKE_MPI=$flavour mpi_flags_of "$fake"
  [ "${mpi_flags[*]}" = "$*" ] || fail "$flavour: flags '${mpi_flags[*]}', expected '$*'"
}
root=()
[ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
unset QARAC_MPI_FLAGS
expect openmpi --oversubscribe "${root[@]}"
expect mpich
expect intel
expect other
QARAC_MPI_FLAGS="--host a,b -v" expect mpich --host a,b -v
QARAC_MPI_FLAGS="" expect openmpi
echo "$me: every launcher gets its own flags"
