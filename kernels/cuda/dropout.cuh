// Dropout with masks drawn from Philox (core/rng.h) exactly as the CPU reference draws them.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "core/rng.h"

namespace qarac::cuda {

// y_i = x_i * keep_i / (1-p), keep_i = uniform01(key, i) >= float(p). y may equal x.
void dropout(DType dtype, const void* x, void* y, int64_t n, double p, const RngKey& key);

}  // namespace qarac::cuda
