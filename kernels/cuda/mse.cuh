// Mean squared error of rows with its gradient (CUDA). Semantics of ops::mse_loss; device
// pointers.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qarac::cuda {

// losses [rows] f32; da, db [rows, k] (either may be null) overwritten with ±dloss·2/k·(a − b).
void mse_loss(DType dtype, const void* a, const void* b, int64_t rows, int64_t k, float* losses,
              void* da, void* db, double dloss);

}  // namespace qarac::cuda
