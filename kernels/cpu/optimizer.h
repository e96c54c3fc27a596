// CPU AdamW update of master weights and the squared global gradient norm; the semantics are
// those of ops::adamw_update and ops::sum_of_squares.
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

// Σ x² over x [n], accumulated in double in index order: the same bits on every run.
template <class T>
double sum_of_squares(const T* x, int64_t n);

}  // namespace qarac::cpu
