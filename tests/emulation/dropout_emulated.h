// The entry point of kernels/cuda/dropout.cu as port_kernel.py ports it: the same function in
// namespace qarac::cuda_emulated, running on the CUDA emulator (cuda_emulator.h); the "device"
// pointers are emu::DeviceMemory.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "core/rng.h"

namespace qarac::cuda_emulated {

void dropout(DType dtype, const void* x, void* y, int64_t rows, int64_t cols,
             const int32_t* offsets, const uint64_t* ids, int64_t batch, double p,
             const RngKey& key);

}  // namespace qarac::cuda_emulated
