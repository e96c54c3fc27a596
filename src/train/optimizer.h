// AdamW over a model's parameters (DESIGN.md §5): master weights and moments in the accumulation
// dtype (f32), the compute copy (bf16 or f32) rewritten by the same kernel, global-norm clipping.
#pragma once

#include <vector>

#include "kernels/ops.h"
#include "model/parameter.h"

namespace qarac {

class AdamWOptimizer {
 public:
  // `hyper.lr` is the peak rate; step() takes the scheduled one.
  AdamWOptimizer(ParameterList params, const ops::AdamW& hyper);

  // The global L2 norm of the gradients (one host synchronisation).
  double grad_norm() const;
  // One update at learning rate `lr`. With clip_norm > 0, gradients whose global norm exceeds it
  // are scaled down to it. Returns the gradient norm before clipping (0 when not measured).
  double step(double lr, double clip_norm = 0);
  int64_t steps() const { return hyper_.step - 1; }

 private:
  ParameterList params_;
  std::vector<Tensor> m_, v_;
  ops::AdamW hyper_;
};

}  // namespace qarac
