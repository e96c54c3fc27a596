// Row gather and scatter (CUDA): the decoder's slot-0 prepend and drop. Semantics of
// ops::gather_rows and ops::scatter_rows; device pointers; indices trusted to lie in range and,
// for the scatter, to be distinct.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qarac::cuda {

// out [m, dim] = src [n, dim] rows index[0..m).
void gather_rows(DType dtype, const void* src, const int32_t* index, int64_t m, int64_t dim,
                 void* out);
// out [n, dim] rows index[0..m) = src [m, dim]; the other rows are left as they are.
void scatter_rows(DType dtype, const void* src, const int32_t* index, int64_t m, int64_t dim,
                  void* out);

}  // namespace qarac::cuda
