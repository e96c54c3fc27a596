// CPU dropout from the counter-based RNG: the mask is a pure function of (key, element index),
// so the forward and backward passes, and the CPU and CUDA backends, draw the same one.
#pragma once

#include <cstdint>

#include "core/rng.h"

namespace qarac::cpu {

// Whether element `index` of stream `key` survives dropout with probability p of dropping. The
// comparison is in float, exactly as a GPU kernel makes it, so both keep the same elements.
inline bool dropout_keep(const RngKey& key, uint64_t index, float p) {
  return uniform01(key, index) >= p;
}

// y[i] = x[i] / (1 - p) where element first_index + i is kept, else 0; p = 0 copies. This is both
// the forward pass (x = input) and the backward pass (x = dy), since the op is linear in x with
// a fixed mask. y may alias x.
template <class T>
void dropout(const T* x, T* y, int64_t n, double p, const RngKey& key, uint64_t first_index);

}  // namespace qarac::cpu
