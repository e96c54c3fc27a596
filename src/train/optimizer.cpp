#include "train/optimizer.h"

#include <cmath>

namespace qarac {

AdamWOptimizer::AdamWOptimizer(ParameterList params, const ops::AdamW& hyper)
    : params_(std::move(params)), hyper_(hyper) {
  hyper_.step = 1;
  for (const Parameter* p : params_) {
    m_.push_back(Tensor::zeros(p->master.shape(), p->master.dtype(), p->master.device()));
    v_.push_back(Tensor::zeros(p->master.shape(), p->master.dtype(), p->master.device()));
  }
}

double AdamWOptimizer::grad_norm() const {
  if (params_.empty()) return 0;
  std::vector<const Tensor*> grads;
  for (const Parameter* p : params_) grads.push_back(&p->grad);
  Tensor sum = Tensor::empty({1}, params_.front()->grad.dtype(), params_.front()->grad.device());
  ops::sum_of_squares(grads, sum);
  const Tensor host = sum.to(Device::cpu()).to(DType::f64);
  return std::sqrt(host.data<double>()[0]);
}

double AdamWOptimizer::step(double lr, double clip_norm) {
  double norm = 0;
  ops::AdamW h = hyper_;
  h.lr = lr;
  if (clip_norm > 0) {
    norm = grad_norm();
    // The 1e-6 keeps the factor finite for a zero gradient, as torch's clip_grad_norm_ does.
    if (norm > clip_norm) h.grad_scale = clip_norm / (norm + 1e-6);
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    Parameter& p = *params_[i];
    Tensor* copy = p.master.raw() == p.value.raw() ? nullptr : &p.value;
    ops::adamw_update(p.master, p.grad, m_[i], v_[i], h, copy);
  }
  ++hyper_.step;
  return norm;
}

}  // namespace qarac
