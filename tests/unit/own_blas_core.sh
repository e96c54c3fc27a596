#!/usr/bin/env bash
# Runs a test program under OpenBLAS's kernels for this CPU, as launch/train-local.sh and
# quickstart.sh run the programs: where OpenBLAS takes the CPU for an older one (Debian 12's 0.3.21
# ran its Prescott kernels on this AVX-512 machine, so the suite never met the AVX-512 ones that
# Debian 13's picks), with the OPENBLAS_CORETYPE that qarac-train --version names; else as it is.
#   tests/unit/own_blas_core.sh QARAC_TRAIN PROGRAM ARGS...
set -euo pipefail
version=$("$1" --version)
core=$(sed -n "s/^OpenBLAS .*this CPU's own: OPENBLAS_CORETYPE=\([A-Za-z0-9_]*\).*/\1/p" <<<"$version")
shift
if [ -n "$core" ]; then
  export OPENBLAS_CORETYPE=$core
  echo "tests/unit/own_blas_core.sh: OPENBLAS_CORETYPE=$core"
fi
exec "$@"
