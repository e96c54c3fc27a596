// CPU cosine similarity of rows, cos(x, y) = x·y / max(‖x‖ ‖y‖, eps), and its gradient; the
// per-pair helpers are shared with the pooling head (kernels/cpu/pooling.cpp).
#pragma once

#include <cmath>
#include <cstdint>

namespace qarac::cpu {

// cos(x, y) and its gradient in the form
//   ∂cos/∂x = alpha y - beta_x x,   ∂cos/∂y = alpha x - beta_y y.
// Where ‖x‖ ‖y‖ > eps, with c = cos(x, y):
//   ∂(x·y)/∂x = y and ∂‖x‖/∂x = x / ‖x‖, so
//   ∂c/∂x = y / (‖x‖ ‖y‖) - (x·y) / (‖x‖ ‖y‖) · x / ‖x‖² = y / (‖x‖ ‖y‖) - c x / ‖x‖²:
//   alpha = 1 / (‖x‖ ‖y‖), beta_x = c / ‖x‖², beta_y = c / ‖y‖² (by symmetry).
// Where the denominator is clamped to eps it is a constant: alpha = 1/eps, beta_x = beta_y = 0.
// Both norms are positive on the first branch, so nothing divides by zero for eps > 0.
template <class T>
struct Cosine {
  T value, alpha, beta_x, beta_y;
};

// From x·y, ‖x‖² and ‖y‖².
template <class T>
Cosine<T> cosine(T dot, T sq_x, T sq_y, T eps) {
  const T norms = std::sqrt(sq_x) * std::sqrt(sq_y);
  if (norms > eps) {
    const T value = dot / norms;
    return {value, T(1) / norms, value / sq_x, value / sq_y};
  }
  return {dot / eps, T(1) / eps, T(0), T(0)};
}

// From two d-vectors.
template <class T>
Cosine<T> cosine(const T* x, const T* y, int64_t d, T eps) {
  T dot = 0, sq_x = 0, sq_y = 0;
  for (int64_t e = 0; e < d; ++e) {
    dot += x[e] * y[e];
    sq_x += x[e] * x[e];
    sq_y += y[e] * y[e];
  }
  return cosine(dot, sq_x, sq_y, eps);
}

// out[r] = cos(a[r,:], b[r,:]) for a, b [rows, d].
template <class T>
void cosine_forward(const T* a, const T* b, int64_t rows, int64_t d, T eps, T* out);
// da, db [rows, d] overwritten with dout[r] ∂cos/∂a[r,:] and dout[r] ∂cos/∂b[r,:]; they must not
// alias a or b.
template <class T>
void cosine_backward(const T* dout, const T* a, const T* b, int64_t rows, int64_t d, T eps, T* da,
                     T* db);

}  // namespace qarac::cpu
