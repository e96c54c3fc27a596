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

void pack_parameters(const ParameterList& params) {
  if (params.empty()) return;
  const Parameter& first = *params.front();
  int64_t total = 0;
  for (const Parameter* p : params) {
    QARAC_CHECK(p->value.dtype() == first.value.dtype() && p->value.device() == first.value.device() &&
                    p->grad.dtype() == first.grad.dtype() && p->value.is_contiguous(),
                "pack_parameters: ", p->name, " ", p->value.str(), " does not pack with ", first.name,
                " ", first.value.str());
    total += p->value.numel();
  }
  const bool shared_master = first.master.raw() == first.value.raw();
  // One role at a time, so the tensors a role leaves are freed before the next buffer is
  // allocated: packing needs the model's memory plus one role's, not twice the model's.
  auto move_role = [&](Tensor Parameter::*role) {
    const Tensor arena = Tensor::empty({total}, (first.*role).dtype(), first.value.device());
    int64_t offset = 0;
    for (Parameter* p : params) {
      Tensor& t = p->*role;
      const int64_t end = offset + t.numel();
      Tensor view = arena.slice(0, offset, end).reshape(t.shape());
      view.copy_(t);
      t = std::move(view);
      offset = end;
    }
  };
  move_role(&Parameter::value);
  if (shared_master)
    for (Parameter* p : params) p->master = p->value;
  else
    move_role(&Parameter::master);
  move_role(&Parameter::grad);
}

std::vector<ParameterSpan> parameter_spans(const ParameterList& params) {
  std::vector<ParameterSpan> spans;
  std::vector<std::vector<Tensor>> values, grads, masters;
  for (Parameter* p : params) {
    const bool joins = !spans.empty() && p->value.follows(values.back().back()) &&
                       p->grad.follows(grads.back().back()) && p->master.follows(masters.back().back());
    if (!joins) {
      spans.emplace_back();
      values.emplace_back();
      grads.emplace_back();
      masters.emplace_back();
    }
    spans.back().params.push_back(p);
    values.back().push_back(p->value);
    grads.back().push_back(p->grad);
    masters.back().push_back(p->master);
  }
  for (size_t i = 0; i < spans.size(); ++i) {
    spans[i].value = Tensor::join(values[i], "parameter_spans");
    spans[i].grad = Tensor::join(grads[i], "parameter_spans");
    spans[i].master = Tensor::join(masters[i], "parameter_spans");
  }
  return spans;
}

void zero_grads(const ParameterList& params) {
  for (ParameterSpan& span : parameter_spans(params)) span.grad.zero_();
}

double grad_sum_of_squares(const ParameterList& params) {
  if (params.empty()) return 0;
  const std::vector<ParameterSpan> spans = parameter_spans(params);
  std::vector<const Tensor*> grads;
  for (const ParameterSpan& span : spans) grads.push_back(&span.grad);
  Tensor sum = Tensor::empty({1}, params.front()->grad.dtype(), params.front()->grad.device());
  ops::sum_of_squares(grads, sum);
  return sum.to(Device::cpu()).to(DType::f64).data<double>()[0];
}

}  // namespace qarac
