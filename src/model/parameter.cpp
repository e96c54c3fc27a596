#include "model/parameter.h"

#include "kernels/ops.h"

namespace qarac {

void Parameter::allocate(std::string param_name, const Shape& shape, DType compute, Device device) {
  name = std::move(param_name);
  const DType accumulation = ops::accumulation_dtype(compute);
  value = Tensor::zeros(shape, compute, device);
  grad = Tensor::zeros(shape, accumulation, device);
  master = compute == accumulation ? value : Tensor::zeros(shape, accumulation, device);
}

void Parameter::assign(const Tensor& source) {
  QARAC_CHECK(source.shape() == value.shape(), "parameter ", name, ": cannot assign ", source.str(),
              " to ", value.str());
  const Tensor full = source.to(Device::cpu()).to(master.dtype());
  master.copy_(full);
  if (master.raw() != value.raw()) value.copy_(full.to(value.dtype()));
}

void zero_grads(const ParameterList& params) {
  for (Parameter* p : params) p->grad.zero_();
}

}  // namespace qarac
