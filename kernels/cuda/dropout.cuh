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

// The same mask, for kernels that apply it on the way (layernorm.cu's fused branch dropout): the
// sequences of the rows, the key, the 16-bit threshold (0: nothing is dropped) and the scale of
// the kept elements, as dropout() computes them.
struct RowDropout {
  const int32_t* offsets = nullptr;
  const uint64_t* ids = nullptr;
  int64_t batch = 0;
  RngKey key{};
  uint32_t threshold = 0;
  float keep_scale = 1.f;
};
RowDropout row_dropout(const int32_t* offsets, const uint64_t* ids, int64_t batch, double p,
                       const RngKey& key);

}  // namespace qarac::cuda
