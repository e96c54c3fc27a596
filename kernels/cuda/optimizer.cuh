// AdamW on f32 master weights (writing the compute copy) and the squared global gradient norm
// (CUDA). Semantics of ops::adamw_update and ops::sum_of_squares; device pointers.
#pragma once

#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace qarac::cuda {

struct AdamWArgs {
  float lr, beta1, beta2, eps, weight_decay, grad_scale;
  float bias_correction1, bias_correction2;  // 1 - β^step, computed on the host in double
};

// param, grad, m, v f32 [n]; copy (copy_dtype, may be null) receives the updated param.
void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n,
                  const AdamWArgs& args, DType copy_dtype, void* copy);

struct Span {
  const void* data;
  int64_t n;
};
// out[0] (f32) = Σ over the spans of Σ x² (x in dtype), summed in a fixed order.
void sum_of_squares(DType dtype, const std::vector<Span>& spans, float* out);

}  // namespace qarac::cuda
