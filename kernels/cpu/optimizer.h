// CPU AdamW and NAdam updates of master weights and the squared global gradient norm; the
// semantics are those of ops::adamw_update, ops::nadam_update and ops::sum_of_squares.
#pragma once

#include <cstdint>

namespace qarac::cpu {

// Hyper-parameters of one AdamW step, with the bias corrections 1 - β^step already formed (in
// double, on the host, as for the CUDA kernel).
struct AdamWStep {
  double lr, beta1, beta2, eps, weight_decay, grad_scale;
  double bias_correction1, bias_correction2;
};

// param, m, v updated in place from grad (all [n]); copy, when not null, receives the new param.
template <class T>
void adamw_update(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWStep& step, T* copy);

// Hyper-parameters of one NAdam step with its step-dependent coefficients formed on the host in
// double: bias_correction2 = 1 - β2^t, grad_coef = lr (1 - μ_t) / (1 - Π_t) and
// momentum_coef = lr μ_{t+1} / (1 - Π_{t+1}) (ops.h gives μ and Π).
struct NAdamStep {
  double lr, beta1, beta2, eps, weight_decay, grad_scale;
  bool decoupled_weight_decay;
  double bias_correction2, grad_coef, momentum_coef;
};

// As adamw_update, for NAdam.
template <class T>
void nadam_update(T* param, const T* grad, T* m, T* v, int64_t n, const NAdamStep& step, T* copy);

// total + Σ x² over x [n], accumulated in double in index order onto `total`: the same bits on
// every run.
template <class T>
double sum_of_squares(double total, const T* x, int64_t n);

}  // namespace qarac::cpu
