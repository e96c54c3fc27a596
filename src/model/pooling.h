// The QARAC global attention pooling head (docs/design.md §2): turns the hidden states of a
// sequence into one vector. With X_t the sequence's hidden states, g = Wg · Σ_t X_t is a global
// summary, l_t = Wl · X_t a local view of each token, a_t = cos(l_t, g) its weight (no softmax),
// and the pooled vector is v = Σ_t a_t X_t. Wg and Wl are d×d without bias.
#pragma once

#include <string>

#include "model/layers.h"

namespace qarac {

class PoolingHead {
 public:
  static constexpr double kCosineEps = 1e-12;

  PoolingHead(const std::string& prefix, int64_t hidden, DType dtype, Device device);
  ParameterList parameters();

  struct Activations {
    Tensor sums;   // Σ_t X_t per sequence [B, d]
    Tensor global; // g [B, d]
    Tensor local;  // l [T, d]
    Tensor weights;  // a [T] (accumulation dtype)
    Tensor pooled;   // v [B, d]
    Tensor grad_local, grad_global, grad_sums;  // backward scratch
  };

  // Returns v [B, d] (a reference into `acts`) for the hidden states x [T, d] of `seqs`.
  const Tensor& forward(const Tensor& x, const ops::Sequences& seqs, Activations& acts) const;
  // dx [T, d] is overwritten with d loss / d x; the weights' gradients are accumulated.
  void backward(const Tensor& x, const ops::Sequences& seqs, const Tensor& grad_pooled,
                Activations& acts, Tensor& dx);

 private:
  Parameter global_;  // Wg
  Parameter local_;   // Wl
};

}  // namespace qarac
