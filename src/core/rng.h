// Counter-based random numbers (Philox-4x32-10, Salmon et al., SC'11). A draw is a pure function
// of (key, counter), so the CPU reference and the CUDA kernels produce the same dropout masks for
// the same (seed, step, tensor id, sequence id, element) with no generator state to carry or sync.
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

// ---- Draws of one sequence: dropout masks that follow the example, not its place in a batch ----
// Data-parallel training splits a global batch among ranks and micro-batches; W ranks compute
// what one rank computes only if an example's dropout masks do not depend on the packing: not on
// the row where the example lands, the number of tokens T, or the longest sequence. So a dropout
// draw is addressed by the example's 64-bit sequence id (set by whoever builds the batch) and by
// an element index inside the sequence, never by a row of the packed tensor:
//   hidden activations [T, C]:  element = position · 2^24 + column
//   attention probabilities:    element = (head · 2^16 + query position) · 2^16 + key position
// with positions inside the sequence. Both are below 2^40 under the limits
//   positions < 2^16 (sequences of at most 65536 tokens), row widths C <= 2^24, heads <= 2^8,
// which the dropout ops check before they draw (kernels/ops.cpp).
// Philox-4x32-10 takes a 128-bit counter and a 64-bit key; the draw (key, id, element) uses
//   counter = (element bits 0..31,
//              element bits 32..39 | step bits 0..23 << 8,
//              id bits 0..31,
//              id bits 32..63)
//   key     = (seed bits 0..31 ^ tensor · 0x85EBCA6B,
//              seed bits 32..63 ^ step bits 24..55).
// For one seed the map (tensor, step, id, element) -> (key, counter) is injective for elements
// below 2^40 and steps below 2^56: tensor -> k0 is a bijection (the multiplier is odd), the
// step's low 24 bits sit in the counter and the next 32 in k1, the id fills two counter words.
// So two draws of one run share a Philox input only when they are the same element of sequences
// with the same id at the same step and tensor: ids need to be distinct only among the sequences
// of one batch (one step and tensor), e.g. each example's index in its stream.
constexpr int kSequencePositionBits = 16;  // positions inside a sequence < 2^16
constexpr int kRowWidthBits = 24;          // hidden rows of at most 2^24 columns
constexpr int kHeadBits = 8;               // at most 2^8 attention heads
constexpr int kSequenceElementBits = 40;   // every element index < 2^40
constexpr int kCounterStepBits = 64 - kSequenceElementBits;  // the step's bits in the counter
static_assert(kSequencePositionBits + kRowWidthBits == kSequenceElementBits &&
                  kHeadBits + 2 * kSequencePositionBits == kSequenceElementBits,
              "both element layouts fill the element bits exactly");

// The element index of column `column` at position `position` of a sequence's hidden rows.
QARAC_HD inline uint64_t hidden_element(uint64_t position, uint64_t column) {
  return position << kRowWidthBits | column;
}
// The element index of (head, query position, key position) of a sequence's attention.
QARAC_HD inline uint64_t attention_element(uint64_t head, uint64_t query, uint64_t key) {
  return (head << kSequencePositionBits | query) << kSequencePositionBits | key;
}

// The Philox output at element `element` (< 2^40) of sequence `id` in the stream `key`, with the
// counter and key laid out as above.
QARAC_HD inline Philox4x32 sequence_draw(const RngKey& key, uint64_t id, uint64_t element) {
  const Philox4x32 ctr = {{static_cast<uint32_t>(element),
                           static_cast<uint32_t>(element >> 32) |
                               (static_cast<uint32_t>(key.step) << (kSequenceElementBits - 32)),
                           static_cast<uint32_t>(id), static_cast<uint32_t>(id >> 32)}};
  const uint32_t k0 = static_cast<uint32_t>(key.seed) ^ (key.tensor * 0x85EBCA6Bu);
  const uint32_t k1 =
      static_cast<uint32_t>(key.seed >> 32) ^ static_cast<uint32_t>(key.step >> kCounterStepBits);
  return philox4x32_10(ctr, k0, k1);
}

// Uniform float in [0, 1) for element `element` of sequence `id` in the stream `key`, from 24
// random bits of its draw (exact in a float): one Philox call per value (MLM masking).
QARAC_HD inline float sequence_uniform01(const RngKey& key, uint64_t id, uint64_t element) {
  return static_cast<float>(sequence_draw(key, id, element).c[0] >> 8) * (1.0f / 16777216.0f);
}
// The step of sequence_uniform01's values, 2^-24: u < p holds with probability ceil(p · 2^24) / 2^24,
// which is 2^-24 for every p in (0, 2^-24], so a probability that u is compared with is at least this.
constexpr double kUniformStep = 1.0 / 16777216.0;

// ---- Dropout decisions: eight per Philox call ----
// Dropout needs one yes/no per element, and a Philox-4x32-10 call (20 multiplies) costs more than
// the math around an attention score, so one call serves a group of 8 consecutive elements: the
// elements 8g .. 8g+7 take the 16-bit halves of the draw at element 8g, in order (element 8g + k
// takes bits 16·(k%2) .. of word k/2). An element is kept when its 16 bits are >= the threshold
// round(p · 2^16). 16 bits rather than 8 (which would serve 16 elements) keep the rate what was
// asked: p = 0.1 drops 6554/65536 = 0.100006 of the elements, where 8 bits would drop 26/256 =
// 0.1016. The kept ones are scaled by 1/(1 - threshold/2^16), so the expected output is the input
// exactly. Groups never straddle a row: hidden rows start at multiples of 2^24 and attention rows
// at multiples of 2^16 (the layouts above), so a group is 8 consecutive columns or keys.
constexpr int kDropoutGroup = 8;              // elements decided by one draw
constexpr uint32_t kDropoutDraws = 1u << 16;  // values of one 16-bit draw; this threshold drops all

// Drop probabilities must lie below this: from 1 - 2^-17 on, round(p · 2^16) is 2^16, which drops
// everything and has no finite keep scale (the ops and the configs refuse it).
constexpr double kDropoutBelow = 1.0 - 1.0 / (2.0 * kDropoutDraws);
// A positive drop probability below 2^-17 rounds to the threshold 0 and drops nothing: the
// configs refuse it rather than train without the dropout asked for.
constexpr double kDropoutSmallest = 1.0 / (2.0 * kDropoutDraws);

// The threshold of drop probability p in [0, kDropoutBelow): round(p · 2^16).
inline uint32_t dropout_threshold(double p) {
  return static_cast<uint32_t>(p * kDropoutDraws + 0.5);
}
// What a kept element is multiplied by: 1 / (1 - threshold / 2^16), in double.
inline double dropout_keep_scale(uint32_t threshold) {
  return static_cast<double>(kDropoutDraws) / static_cast<double>(kDropoutDraws - threshold);
}

// Bit k (k < 8) is set when element first + k of sequence `id` is kept; first must be a multiple
// of 8 (the group's first element).
QARAC_HD inline uint32_t dropout_group_mask(const RngKey& key, uint64_t id, uint64_t first,
                                            uint32_t threshold) {
  const Philox4x32 r = sequence_draw(key, id, first);
  uint32_t mask = 0;
  for (int w = 0; w < 4; ++w) {
    mask |= static_cast<uint32_t>((r.c[w] & 0xFFFFu) >= threshold) << (2 * w);
    mask |= static_cast<uint32_t>((r.c[w] >> 16) >= threshold) << (2 * w + 1);
  }
  return mask;
}

// Whether element `element` of sequence `id` is kept: one bit of its group's mask.
QARAC_HD inline bool dropout_kept(const RngKey& key, uint64_t id, uint64_t element,
                                  uint32_t threshold) {
  constexpr uint64_t kLow = kDropoutGroup - 1;
  return (dropout_group_mask(key, id, element & ~kLow, threshold) >> (element & kLow)) & 1u;
}

}  // namespace qarac
