// CPU dropout from the counter-based RNG: the mask is a pure function of (key, sequence id,
// element index inside the sequence) (core/rng.h, dropout_group_mask), so the forward and
// backward passes, the CPU and CUDA backends, and every packing of a sequence into a batch draw
// the same one.
#pragma once

#include <cstdint>

#include "core/rng.h"

namespace qarac::cpu {

// y[i] = x[i] · dropout_keep_scale where element first_element + i of sequence `id` is kept, else
// 0, for i < n, with p's 16-bit threshold (core/rng.h); p = 0 copies. This is both the forward
// pass (x = input) and the backward pass (x = dy), since the op is linear in x with a fixed mask. y may alias x. One run of consecutive element
// indices: a hidden row (hidden_element(position, 0) on) or an attention row
// (attention_element(h, query, 0) on).
template <class T>
void dropout(const T* x, T* y, int64_t n, double p, const RngKey& key, uint64_t id,
             uint64_t first_element);

// ops::dropout_forward/backward on [T, cols] rows over `batch` sequences: sequence b is rows
// [offsets[b], offsets[b+1]) with id ids[b]; row t at position i of b is dropped as the
// elements hidden_element(i, 0 .. cols-1) of ids[b]. y may alias x.
template <class T>
void dropout_rows(const T* x, T* y, const int32_t* offsets, const uint64_t* ids, int64_t batch,
                  int64_t cols, double p, const RngKey& key);

}  // namespace qarac::cpu
