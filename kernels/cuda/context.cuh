// The CUDA state every op of a device shares: the stream all QARAC-MT kernels run on, in order,
// and the cuBLASLt handle with its workspace. Created on first use for the current device.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace qarac::cuda {

struct Context {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;  // cuBLASLt scratch
  size_t workspace_bytes = 0;
};

// The context of the current device (cudaGetDevice). Not thread-safe: one host thread per rank.
Context& context();
inline cudaStream_t stream() { return context().stream; }
// Waits for all work queued on the context's stream and raises the first asynchronous error.
void synchronize();

}  // namespace qarac::cuda
