// CPU LayerNorm over the last dimension, with mean and 1/std saved for the backward pass.
#pragma once

#include <cstdint>

namespace qarac::cpu {

// y[r,:] = (x[r,:] - mean[r]) * rstd[r] * gamma + beta, rstd = 1/sqrt(biased var + eps).
template <class T>
void layernorm_forward(const T* x, const T* gamma, const T* beta, T eps, int64_t rows, int64_t cols,
                       T* y, T* mean, T* rstd);
// dx overwritten; dgamma, dbeta accumulated.
template <class T>
void layernorm_backward(const T* dy, const T* x, const T* gamma, const T* mean, const T* rstd,
                        int64_t rows, int64_t cols, T* dx, T* dgamma, T* dbeta);

}  // namespace qarac::cpu
