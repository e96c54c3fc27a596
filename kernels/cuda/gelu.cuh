// GELU (erf form) forward and backward (CUDA). Device pointers.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qarac::cuda {

void gelu_forward(DType dtype, const void* x, void* y, int64_t n);
void gelu_backward(DType dtype, const void* x, const void* dy, void* dx, int64_t n);

}  // namespace qarac::cuda
