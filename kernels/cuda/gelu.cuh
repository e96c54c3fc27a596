// GELU (erf form) forward and backward (CUDA). Device pointers.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qarac::cuda {

void gelu_forward(DType dtype, const void* x, void* y, int64_t n);
void gelu_backward(DType dtype, const void* x, const void* dy, void* dx, int64_t n);
// The same over a [rows, cols] matrix, which also adds its column sums (f32) to dbias: the bias
// gradient of the layer whose pre-activation x is, in bias_backward's order (the same bits), in
// the same pass. dx may be dy.
void gelu_backward_bias(DType dtype, const void* x, const void* dy, void* dx, int64_t rows,
                        int64_t cols, float* dbias);

}  // namespace qarac::cuda
