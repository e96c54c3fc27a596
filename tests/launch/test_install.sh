#!/usr/bin/env bash
# cmake --install of a build into a scratch prefix P: the four programs in P/bin answer
# --version (the version, a git commit line, the CUDA, NCCL and MPI lines); launch/, its
# configs, slurm/ and the sample data lie in P/share/qarac-mt in the repository's layout, the
# docs in P/share/doc/qarac-mt; the installed train-local.sh and train-hosts.sh find P/bin/qarac-train by
# themselves.
#   bash tests/launch/test_install.sh CMAKE BUILD_DIR VERSION MPIEXEC
set -euo pipefail
cmake=$1 build=$2 version=$3 mpiexec=$4
# shellcheck source=tests/launch/checks.sh
source "$(dirname "$0")/checks.sh"

prefix=$(mktemp -d)
trap 'rm -rf -- "$prefix"' EXIT
"$cmake" --install "$build" --prefix "$prefix" >"$prefix.log" 2>&1 ||
  { cat "$prefix.log" >&2; rm -f -- "$prefix.log"; echo "FAILED: cmake --install $build --prefix $prefix" >&2; exit 1; }
rm -f -- "$prefix.log"

for program in qarac-train qarac-prep qarac-parity qarac-bench qarac-embed qarac-generate qarac-eval; do
  rc=0
  # No launcher: --version must not need MPI start-up, a GPU or other options.
  "$prefix/bin/$program" --version >"$prefix/version.txt" 2>&1 || rc=$?
  check "$program --version exits 0 (got $rc)" test "$rc" = 0
  check "$program --version: first line '$program $version'" test "$(head -n 1 "$prefix/version.txt")" = "$program $version"
  for line in "^git commit +([0-9a-f]{7,}|unknown)" "^build +[A-Za-z]+, " "^CUDA backend +(on|off)" \
              "^CUDA runtime +." "^CUDA driver +." "^NCCL +." "^MPI +.*\(MPI [0-9]+\.[0-9]+\)$"; do
    check "$program --version: a line '$line'" has_re "$prefix/version.txt" "$line"
  done
done
echo "--- $prefix/bin/qarac-train --version:"
"$prefix/bin/qarac-train" --version

share=$prefix/share/qarac-mt
for f in launch/train-local.sh launch/train-hosts.sh launch/scaling.sh launch/quickstart.sh slurm/train.sbatch slurm/scaling.sbatch; do
  check "installed and executable: $f" test -x "$share/$f"
done
for f in slurm/common.sh launch/configs/qarac-roberta-base.ini launch/configs/quickstart.ini \
         data/sample/WikiQA-train.tsv data/sample/tokenizer; do
  check "installed: $f" test -e "$share/$f"
done
for f in README.md architecture.md distributed.md packaging/README.md packaging/spack/package.py \
         packaging/apptainer/qarac.def; do
  check "installed: share/doc/qarac-mt/$f" test -f "$prefix/share/doc/qarac-mt/$f"
done

rc=0
env -u QARAC_BUILD MPIRUN="$mpiexec" bash "$share/launch/train-local.sh" -n 1 --dry-run -- --x >"$prefix/out.txt" 2>&1 || rc=$?
check "the installed train-local.sh runs (got $rc)" test "$rc" = 0
check "it finds $prefix/bin/qarac-train" has_re "$prefix/out.txt" " $prefix/bin/qarac-train --x"
rc=0
env -u QARAC_BUILD MPIRUN="$mpiexec" bash "$share/launch/train-hosts.sh" --hosts node1:2 --dry-run -- --x >"$prefix/out.txt" 2>&1 || rc=$?
check "the installed train-hosts.sh runs (got $rc)" test "$rc" = 0
check "it finds $prefix/bin/qarac-train too" has_re "$prefix/out.txt" " $prefix/bin/qarac-train --x"

if ((failures)); then exit 1; fi
echo "test_install.sh: every check holds"
