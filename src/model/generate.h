// Greedy decoding with the QARAC decoder: what the evaluation's token accuracy measures and what
// qarac-generate (and the exported modeling_qarac.py) produce from a vector.
#pragma once

#include <cstdint>
#include <vector>

#include "model/decoder.h"

namespace qarac {

// Grows each prefix (usually "<s>", then any prompt) by its argmax token over the true
// vocabulary (the first of equal scores), given its vector v [B, d] (one row per prefix), by
// steps[b] tokens at most, or until it has produced `stop` (not appended; stop < 0: never
// stops). The prefixes run once, then every step runs one position per unfinished sequence over
// the decoder's key/value cache (the prefix plus steps[b] - 1 positions of K | V per layer,
// allocated at the start: a prefix and steps beyond the decoder's positions are an InputError
// there, even where `stop` would end the sequence sooner).
// Padding-free: a sequence's tokens do not depend on the others of the batch, nor on when they
// stop. Returns the new tokens. Scores that are not finite are an InputError naming the
// vector (first_row + its row of v: the caller's numbering) and the token; with `finite` given,
// they end the decoding instead, *finite false (true when none were met).
std::vector<std::vector<int32_t>> greedy_decode(Decoder& decoder, const Tensor& v,
                                                std::vector<std::vector<int32_t>> prefixes,
                                                const std::vector<int64_t>& steps, int32_t stop = -1,
                                                bool* finite = nullptr, int64_t first_row = 0);
// The same number of steps for every prefix.
std::vector<std::vector<int32_t>> greedy_decode(Decoder& decoder, const Tensor& v,
                                                std::vector<std::vector<int32_t>> prefixes,
                                                int64_t steps, int32_t stop = -1, bool* finite = nullptr,
                                                int64_t first_row = 0);

}  // namespace qarac
