// A trainable tensor with its gradient, named as in a Hugging Face checkpoint (without the
// model prefix, e.g. "encoder.layer.0.attention.self.query.weight").
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"

namespace qarac {

struct Parameter {
  std::string name;
  Tensor value;
  Tensor grad;  // same shape, dtype and device as value; accumulated by the backward pass

  void allocate(std::string param_name, const Shape& shape, DType dtype, Device device) {
    name = std::move(param_name);
    value = Tensor::zeros(shape, dtype, device);
    grad = Tensor::zeros(shape, dtype, device);
  }
};

using ParameterList = std::vector<Parameter*>;

inline void zero_grads(const ParameterList& params) {
  for (Parameter* p : params) p->grad.zero_();
}

}  // namespace qarac
