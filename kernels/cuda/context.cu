// The per-device CUDA context: the one stream every QARAC-MT kernel and cuBLASLt call of a device
// runs on, in order, and the cuBLASLt handle with its workspace. Created on first use for the
// current device and kept until the process ends.
//
// The stream is core/memory's device_stream, on which copies and fills of device memory are
// queued too, so an upload lands before the next kernel reads it, a fill zeroing a gradient
// before the kernels accumulating into it, and a download after the kernels that wrote it,
// without the host waiting for the device in between. Streams for communication (NCCL) overlap
// with this one, ordered by events (parallel/nccl_communicator.cpp).
#include "kernels/cuda/context.cuh"

#include <memory>
#include <vector>

#include "core/check_cuda.h"
#include "core/memory.h"

namespace qarac::cuda {
namespace {

// cuBLASLt's scratch (split-K partial sums and the like). 32 MiB is what cuBLAS itself reserves
// per handle on Hopper; the heuristics are asked for algorithms that fit in it.
constexpr size_t kWorkspaceBytes = size_t{32} << 20;

std::unique_ptr<Context> create(int device) {
  auto ctx = std::make_unique<Context>();
  ctx->device = device;
  ctx->stream = static_cast<cudaStream_t>(device_stream(device));
  QARAC_CHECK_CUBLAS(cublasLtCreate(&ctx->lt));
  QARAC_CHECK_CUDA(cudaMalloc(&ctx->workspace, kWorkspaceBytes));
  ctx->workspace_bytes = kWorkspaceBytes;
  return ctx;
}

}  // namespace

Context& context() {
  // One slot per device ordinal. The contexts are never destroyed: their stream, handle and
  // workspace would be released at static destruction, after the CUDA runtime may already
  // have shut down, and the driver reclaims them at exit anyway.
  static std::vector<std::unique_ptr<Context>>* contexts =
      new std::vector<std::unique_ptr<Context>>();
  int device = 0;
  QARAC_CHECK_CUDA(cudaGetDevice(&device));
  if (static_cast<size_t>(device) >= contexts->size()) contexts->resize(device + 1);
  std::unique_ptr<Context>& slot = (*contexts)[device];
  if (!slot) slot = create(device);
  return *slot;
}

void synchronize() { QARAC_CHECK_CUDA(cudaStreamSynchronize(context().stream)); }

}  // namespace qarac::cuda
