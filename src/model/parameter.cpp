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

double grad_sum_of_squares(const ParameterList& params) {
  if (params.empty()) return 0;
  std::vector<const Tensor*> grads;
  for (const Parameter* p : params) grads.push_back(&p->grad);
  Tensor sum = Tensor::empty({1}, params.front()->grad.dtype(), params.front()->grad.device());
  ops::sum_of_squares(grads, sum);
  return sum.to(Device::cpu()).to(DType::f64).data<double>()[0];
}

}  // namespace qarac
