// CPU AdamW (Loshchilov & Hutter, decoupled weight decay) in the order torch.optim.AdamW applies
// it, per element with g = grad_scale * grad:
//   p ← p (1 - lr wd)                           (decay first, on the old weights)
//   m ← β1 m + (1 - β1) g,   v ← β2 v + (1 - β2) g²
//   p ← p - (lr / c1) m / (sqrt(v) / sqrt(c2) + eps),   c_i = 1 - β_i^step.
// lr / c1 and sqrt(c2) are formed once per call, so an element costs one sqrt and one division.
//
// NAdam (torch.optim.NAdam) per element, with the same g, c2 = 1 - β2^step and the coefficients
// of cpu::NAdamStep:
//   p ← p (1 - lr wd)  with decoupled weight decay,  otherwise  g ← g + wd p
//   m ← β1 m + (1 - β1) g,   v ← β2 v + (1 - β2) g²,   d = sqrt(v) / sqrt(c2) + eps
//   p ← p - grad_coef g / d - momentum_coef m / d   (torch's two addcdiv, in its order).
// torch forms d as sqrt(v / c2); sqrt(v) / sqrt(c2) is AdamW's form and the same to a rounding.
#include "kernels/cpu/optimizer.h"

#include <cmath>

namespace qarac::cpu {

template <class T>
void adamw_update(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWStep& step, T* copy) {
  const T decay = static_cast<T>(1.0 - step.lr * step.weight_decay);
  const T step_size = static_cast<T>(step.lr / step.bias_correction1);
  const T sqrt_c2 = static_cast<T>(std::sqrt(step.bias_correction2));
  const T b1 = static_cast<T>(step.beta1), b2 = static_cast<T>(step.beta2);
  const T rest1 = static_cast<T>(1.0 - step.beta1), rest2 = static_cast<T>(1.0 - step.beta2);
  const T eps = static_cast<T>(step.eps), scale = static_cast<T>(step.grad_scale);
  for (int64_t i = 0; i < n; ++i) {
    const T g = scale * grad[i];
    m[i] = b1 * m[i] + rest1 * g;
    v[i] = b2 * v[i] + rest2 * g * g;
    const T p = param[i] * decay - step_size * m[i] / (std::sqrt(v[i]) / sqrt_c2 + eps);
    param[i] = p;
    if (copy) copy[i] = p;
  }
}

template <class T>
void nadam_update(T* param, const T* grad, T* m, T* v, int64_t n, const NAdamStep& step, T* copy) {
  const bool decoupled = step.decoupled_weight_decay;
  const T decay = static_cast<T>(decoupled ? 1.0 - step.lr * step.weight_decay : 1.0);
  const T l2 = static_cast<T>(decoupled ? 0.0 : step.weight_decay);
  const T sqrt_c2 = static_cast<T>(std::sqrt(step.bias_correction2));
  const T b1 = static_cast<T>(step.beta1), b2 = static_cast<T>(step.beta2);
  const T rest1 = static_cast<T>(1.0 - step.beta1), rest2 = static_cast<T>(1.0 - step.beta2);
  const T eps = static_cast<T>(step.eps), scale = static_cast<T>(step.grad_scale);
  const T grad_coef = static_cast<T>(step.grad_coef);
  const T momentum_coef = static_cast<T>(step.momentum_coef);
  for (int64_t i = 0; i < n; ++i) {
    const T g = scale * grad[i] + l2 * param[i];
    m[i] = b1 * m[i] + rest1 * g;
    v[i] = b2 * v[i] + rest2 * g * g;
    const T d = std::sqrt(v[i]) / sqrt_c2 + eps;
    const T p = param[i] * decay - grad_coef * g / d - momentum_coef * m[i] / d;
    param[i] = p;
    if (copy) copy[i] = p;
  }
}

template <class T>
double sum_of_squares(double s, const T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  return s;
}

template void adamw_update<float>(float*, const float*, float*, float*, int64_t, const AdamWStep&,
                                  float*);
template void adamw_update<double>(double*, const double*, double*, double*, int64_t,
                                   const AdamWStep&, double*);
template void nadam_update<float>(float*, const float*, float*, float*, int64_t, const NAdamStep&,
                                  float*);
template void nadam_update<double>(double*, const double*, double*, double*, int64_t,
                                   const NAdamStep&, double*);
template double sum_of_squares<float>(double, const float*, int64_t);
template double sum_of_squares<double>(double, const double*, int64_t);

}  // namespace qarac::cpu
