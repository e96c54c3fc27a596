#!/usr/bin/env bash
# Packs a build made here for a GPU machine that lacks its libraries (Boost, OpenBLAS, HDF5):
# the programs, the GPU test binaries, the non-system shared libraries they load (CUDA's own
# libraries excepted: the GPU machine has them), and the golden dumps, as OUT_DIR/bundle.tgz
# (compressed to fit the device tool's 64 MiB transfer). tests/device/run.sh runs the bundle.
# Build with -DBUILD_SHARED_LIBS=ON so the CUDA kernels are stored once, not in every binary.
#   tests/device/bundle.sh [BUILD_DIR] [OUT_DIR]      (defaults: build, .device)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
out=${2:-.device}
golden=tests/golden/data

programs=(src/cli/qarac-parity src/cli/qarac-bench src/cli/qarac-prep src/cli/qarac-train src/cli/qarac-embed src/cli/qarac-generate
          src/cli/qarac-eval)
tests=(tests/unit/test_backend_ops tests/unit/test_cuda_runtime tests/unit/test_cuda_training tests/unit/test_cuda_qarac tests/mpi/test_nccl
       tests/bench/bench_kernels)
rm -rf "$out"
stage=$(mktemp -d)/bundle
mkdir -p "$stage/bin" "$stage/lib" "$stage/golden" "$out"
for f in "${programs[@]}" "${tests[@]}"; do
  [ -x "$build/$f" ] || { echo "bundle.sh: $build/$f is missing: build first" >&2; exit 1; }
  cp "$build/$f" "$stage/bin/"
done
# Shared libraries resolved here, less the C/C++ runtime (glibc's own parts too: they call its
# internals, which differ between releases) and CUDA's (taken from the GPU machine).
for f in "$stage"/bin/*; do ldd "$f"; done | awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -Ev '/(libc|libm|libdl|libpthread|librt|libresolv|libnsl|libanl|libutil|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so|/libcuda|/libcublas|/libcudart|/libnccl|/libcudnn' |
  while read -r lib; do cp -L "$lib" "$stage/lib/"; done
cp -r "$golden/tiny_dev" "$stage/golden/"
tar czf "$out/bundle.tgz" -C "$(dirname "$stage")" bundle
rm -rf "$(dirname "$stage")"
du -sh "$out/bundle.tgz"
# The device tool carries 64 MiB in all, the working tree with it: a static build's bundle passes.
size=$(stat -c %s "$out/bundle.tgz")
if ((size > 56 * 1024 * 1024)); then
  echo "bundle.sh: $out/bundle.tgz is $((size >> 20)) MiB, too large to carry with the tree (64 MiB in all):" \
    "build with -DBUILD_SHARED_LIBS=ON -DQARAC_CUDA_ARCHS=90" >&2
  exit 1
fi
