#!/usr/bin/env bash
# The test command: installs the Debian packages the build needs (idempotent, quiet), configures,
# builds in Release with -j2 and runs the whole suite with ctest.
#   tests/run.sh [BUILD_DIR]       (default: build; build-mpich with QARAC_MPI=mpich)
# Environment: QARAC_CUDA=AUTO|ON|OFF (default AUTO: compile CUDA when nvcc is found);
# QARAC_CUDA_ARCHS (default for a new build directory: the compute capabilities of this machine's
# GPUs that nvcc and the kernels (sm_80 and later) support, or 90 without one: the test build
# compiles the kernels for what will run them, or once to prove they compile; an existing build
# directory keeps its own);
# QARAC_MPI=openmpi|mpich (default openmpi): the MPI to build and test with. mpich installs
# Debian's MPICH beside Open MPI and names it to CMake (mpicc.mpich, mpiexec.mpich), leaving the
# system's default MPI (update-alternatives) as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
mpi_args=()
case "${QARAC_MPI:-openmpi}" in
  openmpi) build_dir=${1:-build}; bash launch/install-deps.sh --tests ;;
  mpich)
    # Its own build directory: CMake's cached MPI of an Open MPI build would otherwise stay.
    build_dir=${1:-build-mpich}
    bash launch/install-deps.sh --tests --mpich
    mpi_args=(-DMPI_C_COMPILER=mpicc.mpich -DMPIEXEC_EXECUTABLE="$(command -v mpiexec.mpich)") ;;
  *) echo "tests/run.sh: QARAC_MPI must be openmpi or mpich, not '$QARAC_MPI'" >&2; exit 2 ;;
esac

# nvcc is usually not on PATH in a non-interactive shell even when the toolkit is installed.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

arch_args=()
if [ -n "${QARAC_CUDA_ARCHS:-}" ]; then
  arch_args=(-DQARAC_CUDA_ARCHS="$QARAC_CUDA_ARCHS")
elif ! grep -qs '^QARAC_CUDA_ARCHS:' "$build_dir/CMakeCache.txt"; then
  archs=()
  if command -v nvidia-smi >/dev/null && command -v nvcc >/dev/null; then
    for cap in $(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d . | sort -u); do
      [[ $cap =~ ^[0-9]+$ ]] && [ "$cap" -ge 80 ] && nvcc --list-gpu-arch 2>/dev/null | grep -qx "compute_$cap" &&
        archs+=("$cap")
    done
  fi
  arch_list=$(IFS=';'; echo "${archs[*]:-90}")
  arch_args=(-DQARAC_CUDA_ARCHS="$arch_list")
fi
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DQARAC_CUDA="${QARAC_CUDA:-AUTO}" "${arch_args[@]}" \
  -DQARAC_TESTS=ON "${mpi_args[@]}"
cmake --build "$build_dir" -j2
# Tests are small; OpenBLAS threads would only oversubscribe the two cores under ctest -j2.
OPENBLAS_NUM_THREADS=1 ctest --test-dir "$build_dir" --output-on-failure -j2

# The fuzz targets (tests/fuzz), briefly, under ASan and UBSan: their own clang build beside this
# one, then QARAC_FUZZ_SECONDS (default 5) seconds each; 0 skips them. They need clang and its
# runtime libraries (Debian: clang, libclang-rt-dev).
fuzz_seconds=${QARAC_FUZZ_SECONDS:-5}
if [ "$fuzz_seconds" -gt 0 ]; then
  if command -v clang++ >/dev/null; then
    tests/fuzz/run.sh "$fuzz_seconds" "${build_dir}-fuzz"
  else
    echo "tests/run.sh: fuzz targets skipped: clang++ is not installed"
  fi
fi
