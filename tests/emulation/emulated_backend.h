// The CUDA backend's op table (kernels/cuda/backend.cpp, ported by port_kernel.py) over the ported
// kernels on the CUDA emulator: its "device pointers" are host pointers, so it computes host
// tensors. Tests run the ops on it under ops::HostBackendOverride (kernels/backend.h). A plain
// header: what includes it may include CUDA's own headers too (cuda_emulator.h may not be).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "kernels/backend.h"

namespace qarac::ops {

const Backend& cuda_emulated_backend();

}  // namespace qarac::ops

namespace emu {

// What the emulated device was asked to do since the last reset, by name: each kernel (its name
// up to the template arguments), cublasLtMatmul, cudaMemcpyAsync and cudaMemsetAsync calls. What
// a GPU step pays in launches, countable without one.
std::map<std::string, uint64_t> launch_counts();
void reset_launch_counts();

}  // namespace emu
