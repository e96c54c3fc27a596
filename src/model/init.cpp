#include "model/init.h"

#include <random>

namespace qarac {

void NormalInit::init(const ParameterList& params) {
  for (Parameter* p : params) {
    if (p->value.dim() != 2) continue;
    std::vector<double> values(static_cast<size_t>(p->value.numel()));
    for (double& v : values) v = normal_(gen_);
    p->assign(Tensor::from_vector(values, p->value.shape()));
  }
}

void NormalInit::skip(int64_t draws) {
  for (int64_t i = 0; i < draws; ++i) normal_(gen_);
}

void init_normal(const ParameterList& params, double std, uint64_t seed) { NormalInit(std, seed).init(params); }

}  // namespace qarac
