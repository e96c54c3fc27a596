// CPU softmax cross-entropy over rows of logits, its gradient computed in the same pass.
#pragma once

#include <cstdint>

namespace qarac::cpu {

// logits [rows, cols] whose first valid_cols columns are the classes (the rest, a vocabulary
// padded to a GEMM-friendly width, take no part). losses[r] = -log softmax(logits[r, :valid])
// [targets[r]], 0 where targets[r] == ignore_index. When dlogits is not null it receives
// dloss * w[r] * (softmax - onehot(target)) per row (w[r] = row_weights[r], or 1 when
// row_weights is null), 0 in ignored rows and padded columns; dlogits may alias logits. A target
// outside [0, valid_cols) other than ignore_index raises qarac::Error naming the row, before any
// write.
template <class T>
void softmax_cross_entropy(const T* logits, const int32_t* targets, int64_t rows, int64_t cols,
                           int64_t valid_cols, int32_t ignore_index, T* losses, T* dlogits,
                           T dloss, const T* row_weights);

}  // namespace qarac::cpu
