// Row cosine similarity, forward and backward (CUDA). Semantics of ops::cosine_*; device pointers.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qarac::cuda {

// out [rows] f32.
void cosine_forward(DType dtype, const void* a, const void* b, int64_t rows, int64_t d, double eps,
                    float* out);
// da, db [rows,d] overwritten, given dout [rows] f32.
void cosine_backward(DType dtype, const float* dout, const void* a, const void* b, int64_t rows,
                     int64_t d, double eps, void* da, void* db);

}  // namespace qarac::cuda
