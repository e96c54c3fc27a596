// LayerNorm over the last dimension, with the residual add of a post-LN block fused into the
// forward pass (CUDA). Statistics and parameter gradients in f32. Pointers are device pointers.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qarac::cuda {

// If b is not null: sum = a + b is written and normalised; else a is normalised (sum unused).
// y = (s - mean) * rstd * gamma + beta; mean, rstd [rows] f32.
void layernorm_forward(DType dtype, const void* a, const void* b, const void* gamma,
                       const void* beta, double eps, int64_t rows, int64_t cols, void* sum,
                       void* y, float* mean, float* rstd);
// dx overwritten; dgamma, dbeta (f32) accumulated, deterministically.
void layernorm_backward(DType dtype, const void* dy, const void* x, const void* gamma,
                        const float* mean, const float* rstd, int64_t rows, int64_t cols,
                        void* dx, float* dgamma, float* dbeta);

}  // namespace qarac::cuda
