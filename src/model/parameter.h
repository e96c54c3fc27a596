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

// Told, during a backward pass, which parameters' gradients that pass has just finished (a
// layer at a time, the last layer first): the distributed trainer starts their all-reduce then.
using GradientsReady = std::function<void(const ParameterList&)>;

void zero_grads(const ParameterList& params);
// Σ ‖g‖² over the gradients of `params` (one host synchronisation); 0 for none.
double grad_sum_of_squares(const ParameterList& params);

}  // namespace qarac
