// Softmax cross-entropy over rows of logits with the gradient written in place (CUDA).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qarac::cuda {

// losses [rows] f32; dlogits (may equal logits, may be null) and row_weights [rows] f32 (may be
// null: weight 1) as ops::softmax_cross_entropy. Targets are trusted to lie in [0, valid_cols)
// or equal ignore_index.
void softmax_cross_entropy(DType dtype, const void* logits, const int32_t* targets, int64_t rows,
                           int64_t cols, int64_t valid_cols, int32_t ignore_index, float* losses,
                           void* dlogits, double dloss, const float* row_weights);

}  // namespace qarac::cuda
