// CPU mean squared error of rows, the loss of the question-answering and consistency objectives,
// with its gradient in the same pass.
#pragma once

#include <cstdint>

namespace qarac::cpu {

// losses[r] = (1/k) Σ_j (a[r,j] - b[r,j])² for a, b [rows, k], k >= 1. When not null,
// da = dloss · 2/k · (a - b) and db = -da, [rows, k] overwritten; neither may alias a or b.
template <class T>
void mse_loss(const T* a, const T* b, int64_t rows, int64_t k, T* losses, T* da, T* db, T dloss);

}  // namespace qarac::cpu
