// Per-sequence sums and the global attention pooling head (CUDA).
// Semantics of the ops:: functions of the same names; device pointers; offsets [batch+1].
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qarac::cuda {

void segment_sum(DType dtype, const void* x, const int32_t* offsets, int64_t batch, int64_t d, void* out);
void segment_sum_backward(DType dtype, const void* dout, const int32_t* offsets, int64_t batch,
                          int64_t tokens, int64_t d, void* dx, bool accumulate);
void pooling_forward(DType dtype, const void* x, const void* l, const void* g, const int32_t* offsets,
                     int64_t batch, int64_t tokens, int64_t d, double eps, void* v, float* a);
void pooling_backward(DType dtype, const void* dv, const void* x, const void* l, const void* g,
                      const float* a, const int32_t* offsets, int64_t batch, int64_t tokens,
                      int64_t d, double eps, void* dx, void* dl, void* dg);

}  // namespace qarac::cuda
