// Initialisation of fresh parameters (new task heads, models built from scratch for tests and
// benchmarks), as Hugging Face initialises RoBERTa: matrices ~ N(0, std²), vectors as allocated
// (biases 0, LayerNorm γ 1, β 0). Deterministic for a seed, whatever the device.
#pragma once

#include <cstdint>

#include "model/parameter.h"

namespace qarac {

void init_normal(const ParameterList& params, double std, uint64_t seed);

}  // namespace qarac
