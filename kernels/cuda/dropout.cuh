// Dropout with masks drawn from Philox (core/rng.h) exactly as the CPU reference draws them.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "core/rng.h"

namespace qarac::cuda {

// y [rows, cols] = x ⊙ mask · dropout_keep_scale over `batch` sequences (device offsets
// [batch+1], device ids [batch]): row t at position i of sequence b keeps column c when
// dropout_kept(key, ids[b], hidden_element(i, c), dropout_threshold(p)). y may equal x.
void dropout(DType dtype, const void* x, void* y, int64_t rows, int64_t cols,
             const int32_t* offsets, const uint64_t* ids, int64_t batch, double p,
             const RngKey& key);

}  // namespace qarac::cuda
