// The optimizer class: AdamW or NAdam updates of every parameter, with global-norm clipping.
#include "train/optimizer.h"

#include <cmath>

#include "core/error.h"

namespace qarac {

const char* optimizer_name(OptimizerKind kind) {
  return kind == OptimizerKind::nadam ? "nadam" : "adamw";
}

OptimizerKind optimizer_from_name(const std::string& name) {
  if (name == "adamw") return OptimizerKind::adamw;
  if (name == "nadam") return OptimizerKind::nadam;
  throw InputError("unknown optimizer '" + name + "' (expected adamw or nadam)");
}

DecayExempt decay_exempt_from_name(const std::string& name) {
  if (name == "none") return DecayExempt::none;
  if (name == "bias_norm") return DecayExempt::bias_norm;
  throw InputError("unknown weight-decay exemption '" + name + "' (expected none or bias_norm)");
}

bool exempt_from_decay(DecayExempt exempt, const std::string& name) {
  if (exempt == DecayExempt::none) return false;
  const auto ends_with = [&](const std::string& tail) {
    return name.size() >= tail.size() && name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
  };
  return ends_with("bias") || ends_with("LayerNorm.weight") || ends_with("layer_norm.weight");
}

Optimizer::Optimizer(ParameterList params, const OptimizerConfig& config)
    : params_(std::move(params)), config_(config) {
  spans_ = parameter_spans(params_);
  for (const ParameterSpan& span : spans_) {
    const Tensor& master = span.master;
    span_m_.push_back(Tensor::zeros(master.shape(), master.dtype(), master.device()));
    span_v_.push_back(Tensor::zeros(master.shape(), master.dtype(), master.device()));
    std::vector<ops::ElementRange>& no_decay = span_no_decay_.emplace_back();
    int64_t offset = 0;
    for (const Parameter* p : span.params) {
      const int64_t end = offset + p->master.numel();
      m_.push_back(span_m_.back().slice(0, offset, end).reshape(p->master.shape()));
      v_.push_back(span_v_.back().slice(0, offset, end).reshape(p->master.shape()));
      // Neighbouring exempt parameters make one range.
      if (end > offset && exempt_from_decay(config_.decay_exempt, p->name)) {
        if (!no_decay.empty() && no_decay.back().end == offset)
          no_decay.back().end = end;
        else
          no_decay.push_back({offset, end});
      }
      offset = end;
    }
  }
}

namespace {
OptimizerConfig adamw_config(const ops::AdamW& hyper) {
  OptimizerConfig c;
  c.beta1 = hyper.beta1;
  c.beta2 = hyper.beta2;
  c.eps = hyper.eps;
  c.weight_decay = hyper.weight_decay;
  return c;
}
}  // namespace

Optimizer::Optimizer(ParameterList params, const ops::AdamW& hyper)
    : Optimizer(std::move(params), adamw_config(hyper)) {
  QARAC_CHECK(hyper.no_decay.empty(), "Optimizer: no_decay is formed per span from OptimizerConfig::decay_exempt");
}

void Optimizer::set_steps(int64_t steps) {
  QARAC_CHECK(steps >= 0, "Optimizer::set_steps: negative step count ", steps);
  steps_ = steps;
  ops::NAdam h = nadam_hyper();
  h.step = steps;
  mu_product_ = steps == 0 ? 1.0 : ops::nadam_mu_product(h);
}

ops::NAdam Optimizer::nadam_hyper() const {
  ops::NAdam h;
  h.beta1 = config_.beta1;
  h.beta2 = config_.beta2;
  h.eps = config_.eps;
  h.weight_decay = config_.weight_decay;
  h.momentum_decay = config_.momentum_decay;
  h.decoupled_weight_decay = config_.decoupled_weight_decay;
  h.step = steps_ + 1;
  return h;
}

double Optimizer::grad_norm() const { return std::sqrt(grad_sum_of_squares(params_)); }

double Optimizer::clip_factor(double norm, double clip_norm) {
  // The 1e-6 keeps the factor finite for a zero gradient, as torch's clip_grad_norm_ does.
  return clip_norm > 0 && norm > clip_norm ? clip_norm / (norm + 1e-6) : 1.0;
}

double Optimizer::step(double lr, double clip_norm) {
  const double norm = clip_norm > 0 ? grad_norm() : 0;
  update(lr, clip_factor(norm, clip_norm));
  return norm;
}

void Optimizer::update(double lr, double grad_scale) {
  if (config_.kind == OptimizerKind::adamw) {
    ops::AdamW h;
    h.lr = lr;
    h.beta1 = config_.beta1;
    h.beta2 = config_.beta2;
    h.eps = config_.eps;
    h.step = steps_ + 1;
    h.weight_decay = config_.weight_decay;
    h.grad_scale = grad_scale;
    for (size_t i = 0; i < spans_.size(); ++i) {
      ParameterSpan& span = spans_[i];
      Tensor* copy = span.master.raw() == span.value.raw() ? nullptr : &span.value;
      h.no_decay = span_no_decay_[i];
      ops::adamw_update(span.master, span.grad, span_m_[i], span_v_[i], h, copy);
    }
  } else {
    ops::NAdam h = nadam_hyper();
    h.lr = lr;
    h.grad_scale = grad_scale;
    // The running product in step order: the bits nadam_mu_product gives after a restore.
    h.mu_product = mu_product_ * ops::nadam_mu(h, h.step);
    for (size_t i = 0; i < spans_.size(); ++i) {
      ParameterSpan& span = spans_[i];
      Tensor* copy = span.master.raw() == span.value.raw() ? nullptr : &span.value;
      h.no_decay = span_no_decay_[i];
      ops::nadam_update(span.master, span.grad, span_m_[i], span_v_[i], h, copy);
    }
    mu_product_ = h.mu_product;
  }
  ++steps_;
}

}  // namespace qarac
