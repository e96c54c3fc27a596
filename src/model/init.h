// Initialisation of fresh parameters (new task heads, models built from scratch for tests and
// benchmarks), as Hugging Face initialises RoBERTa: matrices ~ N(0, std²), vectors as allocated
// (biases 0, LayerNorm γ 1, β 0). Deterministic for a seed, whatever the device.
#pragma once

#include <cstdint>
#include <random>

#include "model/parameter.h"

namespace qarac {

void init_normal(const ParameterList& params, double std, uint64_t seed);

// The stream init_normal draws from, for initialising parameters a few lists at a time: skip()
// consumes the draws of parameters this process does not build, so the others get the values
// they would get if it did.
class NormalInit {
 public:
  NormalInit(double std, uint64_t seed) : gen_(seed), normal_(0.0, std) {}
  void init(const ParameterList& params);  // matrices from the stream; vectors left as they are
  void skip(int64_t draws);

 private:
  std::mt19937_64 gen_;
  std::normal_distribution<double> normal_;
};

}  // namespace qarac
