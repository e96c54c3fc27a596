// CPU LayerNorm over the last dimension, with mean and 1/std saved for the backward pass, and the
// residual add of a post-LN block fused into the forward pass.
#pragma once

#include <cstdint>

namespace qarac::cpu {

// y[r,:] = (x[r,:] - mean[r]) * rstd[r] * gamma + beta, rstd = 1/sqrt(biased var + eps), where
// x = a when b is null, else x = a + b, written to `sum` (the backward pass's x). Row by row, so
// y or sum may alias a or b.
template <class T>
void layernorm_forward(const T* a, const T* b, const T* gamma, const T* beta, T eps, int64_t rows,
                       int64_t cols, T* sum, T* y, T* mean, T* rstd);
// dx overwritten; dgamma, dbeta accumulated.
template <class T>
void layernorm_backward(const T* dy, const T* x, const T* gamma, const T* mean, const T* rstd,
                        int64_t rows, int64_t cols, T* dx, T* dgamma, T* dbeta);

}  // namespace qarac::cpu
