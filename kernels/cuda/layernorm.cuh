// LayerNorm over the last dimension, with the residual add of a post-LN block fused into the
// forward pass (CUDA). Statistics and parameter gradients in f32. Pointers are device pointers.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "kernels/cuda/dropout.cuh"

namespace qarac::cuda {

// If b is not null: sum = a' + b is written and normalised, a' = a with `drop` applied (the
// dropout of a post-LN block's branch; drop.threshold 0: a' = a, and drop needs b); else a is
// normalised (sum unused). y = (s - mean) * rstd * gamma + beta; mean, rstd [rows] f32.
void layernorm_forward(DType dtype, const void* a, const void* b, const void* gamma,
                       const void* beta, double eps, int64_t rows, int64_t cols, void* sum,
                       void* y, float* mean, float* rstd, const RowDropout& drop = {});
// How layernorm_backward goes: `automatic` takes one kernel for rows it can hold (up to 1024
// elements in 16-byte packs); `rows_then_columns` always takes dx by rows, then the column sums
// (for benchmarks and tests that compare the two; the sums have the same order either way).
enum class LayerNormBackwardPath { automatic, rows_then_columns };

// dx overwritten; dgamma, dbeta (f32) accumulated, deterministically. With dbranch (not dx), also
// dbranch = dx with `drop` applied: the gradient of the branch the forward pass dropped. With
// dbias_branch (f32), also dbias_branch += Σ_rows dbranch (dx without dbranch), summed as
// bias_backward sums (the same bits); dx must not be dy then.
void layernorm_backward(DType dtype, const void* dy, const void* x, const void* gamma,
                        const float* mean, const float* rstd, int64_t rows, int64_t cols,
                        void* dx, float* dgamma, float* dbeta, const RowDropout& drop = {},
                        void* dbranch = nullptr, float* dbias_branch = nullptr,
                        LayerNormBackwardPath path = LayerNormBackwardPath::automatic);

}  // namespace qarac::cuda
