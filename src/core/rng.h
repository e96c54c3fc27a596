// Counter-based random numbers (Philox-4x32-10, Salmon et al., SC'11). A draw is a pure function
// of (key, counter), so the CPU reference and the CUDA kernels produce the same dropout masks for
// the same (seed, step, tensor id, element index) with no generator state to carry or sync.
#pragma once

#include <cstdint>

#include "core/dtype.h"  // QARAC_HD

namespace qarac {

struct Philox4x32 {
  uint32_t c[4];
};

QARAC_HD inline Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * ctr.c[0];
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * ctr.c[2];
    const Philox4x32 next = {{static_cast<uint32_t>(p1 >> 32) ^ ctr.c[1] ^ k0,
                              static_cast<uint32_t>(p1),
                              static_cast<uint32_t>(p0 >> 32) ^ ctr.c[3] ^ k1,
                              static_cast<uint32_t>(p0)}};
    ctr = next;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return ctr;
}

// Identifies one random stream: e.g. one dropout site (tensor) at one training step.
struct RngKey {
  uint64_t seed = 0;
  uint64_t step = 0;
  uint32_t tensor = 0;
};

// Uniform float in [0, 1) for element `index` of the stream `key`. Key = (seed, tensor),
// counter = (index, step): each element of each step draws from its own counter.
QARAC_HD inline float uniform01(const RngKey& key, uint64_t index) {
  const Philox4x32 ctr = {{static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
                           static_cast<uint32_t>(key.step), static_cast<uint32_t>(key.step >> 32)}};
  const uint32_t k0 = static_cast<uint32_t>(key.seed) ^ (key.tensor * 0x85EBCA6Bu);
  const uint32_t k1 = static_cast<uint32_t>(key.seed >> 32);
  const Philox4x32 r = philox4x32_10(ctr, k0, k1);
  return static_cast<float>(r.c[0] >> 8) * (1.0f / 16777216.0f);  // 24 random bits
}

}  // namespace qarac
