// A trainable tensor, named as in a Hugging Face checkpoint (without the model prefix, e.g.
// "encoder.layer.0.attention.self.query.weight"), with its gradient and master copy.
//
// Mixed precision (docs/design.md §5): the model computes with `value` in the compute dtype X; the
// optimizer updates `master` in the accumulation dtype A (f32, or f64 for gradient checks) and
// writes the result back into `value`. When X == A the two are one tensor.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace qarac {

struct Parameter {
  std::string name;
  Tensor value;   // X: what the forward and backward passes read
  Tensor grad;    // A: accumulated by the backward pass
  Tensor master;  // A: the weights the optimizer updates (shares value's buffer when X == A)

  // Zero-initialised parameter computing in `compute` (f32, f64 or bf16) on `device`.
  void allocate(std::string param_name, const Shape& shape, DType compute, Device device);
  // Sets the weights from `source` (any floating dtype, any device, the same shape): master at
  // full precision, value rounded to the compute dtype.
  void assign(const Tensor& source);
};

using ParameterList = std::vector<Parameter*>;

// Moves `params` (one compute dtype, one device) into one buffer per role: their values, their
// gradients and their master weights each become views of one flat tensor, back to back in the
// order given, keeping their contents. A model packed this way is a few spans (parameter_spans)
// rather than hundreds of tensors, so the passes over every parameter each step — the update,
// zeroing, the gradient norm, the all-reduce — take a call per span instead of a kernel launch
// per tensor, and a layer can view neighbouring parameters as one tensor (Tensor::join: Q, K and
// V as one projection). Models pack their parameters when they allocate them.
void pack_parameters(const ParameterList& params);

// Consecutive parameters lying back to back in every role: flat views [n] of their values,
// gradients and master weights.
struct ParameterSpan {
  Tensor value, grad, master;
  ParameterList params;
};
// `params` cut into maximal spans, in order: a parameter joins the span before it when its
// value, gradient and master weights each follow that span's last one's (Tensor::follows).
std::vector<ParameterSpan> parameter_spans(const ParameterList& params);

// Told, during a backward pass, which parameters' gradients that pass has just finished (a
// layer at a time, the last layer first): the distributed trainer starts their all-reduce then.
using GradientsReady = std::function<void(const ParameterList&)>;

void zero_grads(const ParameterList& params);
// Σ ‖g‖² over the gradients of `params` (one host synchronisation); 0 for none.
double grad_sum_of_squares(const ParameterList& params);

}  // namespace qarac
