// The entry points of kernels/cuda/attention.cu as port_kernel.py ports them: the same functions
// in namespace qarac::cuda_emulated, running on the CUDA emulator (cuda_emulator.h); the
// "device" pointers are emu::DeviceMemory.
#pragma once

#include "core/dtype.h"
#include "core/rng.h"
#include "kernels/cuda/attention.cuh"

namespace qarac::cuda_emulated {

using cuda::AttentionShape;

void attention_forward(DType dtype, const AttentionShape& shape, const void* q, const void* k,
                       const void* v, bool causal, double dropout_p, const RngKey& key, void* out,
                       float* lse);
void attention_backward(DType dtype, const AttentionShape& shape, const void* dout, const void* q,
                        const void* k, const void* v, const void* out, const float* lse,
                        bool causal, double dropout_p, const RngKey& key, void* dq, void* dk,
                        void* dv);

}  // namespace qarac::cuda_emulated
