// AdamW and NAdam on f32 master weights (writing the compute copy) and the squared global
// gradient norm (CUDA). Semantics of ops::adamw_update, ops::nadam_update and
// ops::sum_of_squares; device pointers.
#pragma once

#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace qarac::cuda {

// One step's hyper-parameters, in double: the launcher forms the kernel's f32 constants
// (1 - lr wd, lr / bc1, sqrt(bc2), 1 - β) from them in double, as the CPU reference does; formed
// from a float β2 = 0.999, 1 - β2 would already be 1.3e-5 off (relative).
struct AdamWArgs {
  double lr, beta1, beta2, eps, weight_decay, grad_scale;
  double bias_correction1, bias_correction2;  // 1 - β^step
};

// Elements [begin, end) of the parameters, updated with the step's weight decay or without.
struct UpdateRun {
  int64_t begin, end;
  bool decays;
};

// param, grad, m, v f32 [n], updated run by run: `runs` cover [0, n) in order, none empty. copy
// (copy_dtype, may be null) receives the updated param.
void adamw_update(float* param, const float* grad, float* m, float* v,
                  const std::vector<UpdateRun>& runs, const AdamWArgs& args, DType copy_dtype,
                  void* copy);

// One NAdam step's hyper-parameters and step coefficients, in double (cpu::NAdamStep's meaning);
// the launcher rounds the kernel's constants to f32 once, as for AdamW.
struct NAdamArgs {
  double lr, beta1, beta2, eps, weight_decay, grad_scale;
  bool decoupled_weight_decay;
  double bias_correction2, grad_coef, momentum_coef;
};

// As adamw_update, for NAdam.
void nadam_update(float* param, const float* grad, float* m, float* v,
                  const std::vector<UpdateRun>& runs, const NAdamArgs& args, DType copy_dtype,
                  void* copy);

struct Span {
  const void* data;
  int64_t n;
};
// out[0] (f32) = Σ over the spans of Σ x² (x in dtype), summed in a fixed order.
void sum_of_squares(DType dtype, const std::vector<Span>& spans, float* out);

}  // namespace qarac::cuda
