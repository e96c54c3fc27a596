#include "model/init.h"

#include <random>

namespace qarac {

void init_normal(const ParameterList& params, double std, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, std);
  for (Parameter* p : params) {
    if (p->value.dim() != 2) continue;
    std::vector<double> values(static_cast<size_t>(p->value.numel()));
    for (double& v : values) v = normal(gen);
    p->assign(Tensor::from_vector(values, p->value.shape()));
  }
}

}  // namespace qarac
