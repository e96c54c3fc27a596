// Elementwise CUDA ops: bias add and its gradient, add, accumulate, scale. Vectorised 16-byte
// loads where the sizes allow. Pointers are device pointers.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qarac::cuda {

void bias_add(DType dtype, void* y, const void* bias, int64_t rows, int64_t cols);
// dbias [cols] (grad_dtype) += Σ_rows dy; deterministic (fixed reduction order).
void bias_backward(DType dtype, DType grad_dtype, const void* dy, void* dbias, int64_t rows, int64_t cols);
void add(DType dtype, const void* a, const void* b, void* out, int64_t n);
void accumulate(DType dtype, void* dst, const void* src, int64_t n);
void scale(DType dtype, void* x, double factor, int64_t n);

}  // namespace qarac::cuda
