// CPU softmax cross-entropy. Per row x with target t, over the valid columns j < V', through the
// log-sum-exp with the row maximum m taken out (so exp never overflows and the largest term is
// exactly 1):
//   s = log Σ_j exp(x_j - m),   loss = (m - x_t) + s,
//   ∂loss/∂x_j = exp(x_j - m) / Σ - [j = t]   (softmax minus the one-hot target),
// scaled by the upstream dloss and the row's weight (the decoder's 1/(B·len_b) per token). One exp
// per logit: the sum's terms are kept in the gradient's row and scaled by g / Σ.
// Working with x - m throughout, never with m + s, keeps f32 accurate when the logits are large:
// at |x| ≈ 1000 one f32 ulp is 6e-5, larger than the loss's own rounding.
// In place (dlogits == logits): the target's logit is read before the row is overwritten, and
// each element is written after the one read of its logit, so the LM head's logits become their
// gradient without a second [N, V] buffer.
#include "kernels/cpu/cross_entropy.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace qarac::cpu {

template <class T>
void softmax_cross_entropy(const T* logits, const int32_t* targets, int64_t rows, int64_t cols,
                           int64_t valid_cols, int32_t ignore_index, T* losses, T* dlogits,
                           T dloss, const T* row_weights) {
  for (int64_t r = 0; r < rows; ++r)
    QARAC_CHECK(targets[r] == ignore_index || (targets[r] >= 0 && targets[r] < valid_cols),
                "softmax_cross_entropy: row ", r, " has target ", targets[r], " outside [0, ",
                valid_cols, ") and it is not the ignore index ", ignore_index);
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = logits + r * cols;
    T* dx = dlogits ? dlogits + r * cols : nullptr;
    const int32_t t = targets[r];
    if (t == ignore_index) {
      losses[r] = 0;
      if (dx) std::fill(dx, dx + cols, T(0));
      continue;
    }
    const T m = *std::max_element(x, x + valid_cols);
    const T x_t = x[t];
    T sum = 0;
    if (dx) {  // exp(x_j - m) kept in dx, so that the gradient takes no second exp
      for (int64_t j = 0; j < valid_cols; ++j) sum += dx[j] = std::exp(x[j] - m);
    } else {
      for (int64_t j = 0; j < valid_cols; ++j) sum += std::exp(x[j] - m);
    }
    losses[r] = (m - x_t) + std::log(sum);
    if (dx) {
      const T g = row_weights ? dloss * row_weights[r] : dloss;
      const T scale = g / sum;
      for (int64_t j = 0; j < valid_cols; ++j) dx[j] *= scale;
      std::fill(dx + valid_cols, dx + cols, T(0));
      dx[t] -= g;
    }
  }
}

template void softmax_cross_entropy<float>(const float*, const int32_t*, int64_t, int64_t, int64_t,
                                           int32_t, float*, float*, float, const float*);
template void softmax_cross_entropy<double>(const double*, const int32_t*, int64_t, int64_t,
                                            int64_t, int32_t, double*, double*, double,
                                            const double*);

}  // namespace qarac::cpu
