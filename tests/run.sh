#!/usr/bin/env bash
# The test command: installs the Debian packages the build needs (idempotent, quiet), configures,
# builds in Release with -j2 and runs the whole suite with ctest.
#   tests/run.sh [BUILD_DIR]       (default: build)
# Environment: QARAC_CUDA=AUTO|ON|OFF (default AUTO: compile CUDA when nvcc is found).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}

bash launch/install-deps.sh

# nvcc is usually not on PATH in a non-interactive shell even when the toolkit is installed.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DQARAC_CUDA="${QARAC_CUDA:-AUTO}" -DQARAC_TESTS=ON
cmake --build "$build_dir" -j2
# Tests are small; OpenBLAS threads would only oversubscribe the two cores under ctest -j2.
OPENBLAS_NUM_THREADS=1 ctest --test-dir "$build_dir" --output-on-failure -j2
