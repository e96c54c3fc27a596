// CPU dropout from the counter-based RNG: the mask is a pure function of (key, sequence id,
// element index inside the sequence) (core/rng.h, sequence_uniform01), so the forward and
// backward passes, the CPU and CUDA backends, and every packing of a sequence into a batch draw
// the same one.
#pragma once

#include <cstdint>

#include "core/rng.h"

namespace qarac::cpu {

// Whether element `element` of sequence `id` in stream `key` survives dropout with probability p
// of dropping. The comparison is in float, exactly as a GPU kernel makes it, so both keep the
// same elements.
inline bool dropout_keep(const RngKey& key, uint64_t id, uint64_t element, float p) {
  return sequence_uniform01(key, id, element) >= p;
}

// y[i] = x[i] / (1 - p) where element first_element + i of sequence `id` is kept, else 0, for
// i < n; p = 0 copies. This is both the forward pass (x = input) and the backward pass (x = dy),
// since the op is linear in x with a fixed mask. y may alias x. One run of consecutive element
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
