// The optimiser over a model's parameters (docs/design.md §5, §6): AdamW, or NAdam for parity with
// the original QARAC reference (torch.optim.NAdam). Master weights and moments in the accumulation
// dtype (f32; f64 for f64 compute), the compute copy (bf16 or f32) rewritten by the same kernel, global-norm clipping.
#pragma once

#include <string>
#include <vector>

#include "kernels/ops.h"
#include "model/parameter.h"

namespace qarac {

enum class OptimizerKind { adamw, nadam };
const char* optimizer_name(OptimizerKind kind);               // "adamw", "nadam"
OptimizerKind optimizer_from_name(const std::string& name);  // InputError naming the valid ones

// The parameters the weight decay leaves out: none (every parameter, as torch.optim decays all of
// a model's parameters given to it), or bias_norm: biases and LayerNorm weights, as Hugging Face's
// Trainer groups them.
enum class DecayExempt { none, bias_norm };
DecayExempt decay_exempt_from_name(const std::string& name);  // InputError naming the valid ones
// Whether `exempt` leaves the parameter named `name` (a Hugging Face name) out of the decay: under
// bias_norm, a bias ("….bias") or a LayerNorm's weight ("….LayerNorm.weight",
// "lm_head.layer_norm.weight").
bool exempt_from_decay(DecayExempt exempt, const std::string& name);

// The update rule and its settings; the rate comes with each step (train/schedule.h).
struct OptimizerConfig {
  OptimizerKind kind = OptimizerKind::adamw;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
  double momentum_decay = 4e-3;        // NAdam's ψ (torch's default)
  bool decoupled_weight_decay = true;  // NAdam only: AdamW always decouples its weight decay
  DecayExempt decay_exempt = DecayExempt::none;
};

class Optimizer {
 public:
  Optimizer(ParameterList params, const OptimizerConfig& config);
  // AdamW with these hyper-parameters (qarac-bench and the tests build it this way); the rate,
  // step and gradient scale come with each step() or update(), not from `hyper`, whose no_decay
  // must be empty (exemptions are OptimizerConfig::decay_exempt's).
  Optimizer(ParameterList params, const ops::AdamW& hyper);

  // The global L2 norm of the gradients (one host synchronisation).
  double grad_norm() const;
  // One update at learning rate `lr`. With clip_norm > 0, gradients whose global norm exceeds it
  // are scaled down to it. Returns the gradient norm before clipping (0 when not measured).
  double step(double lr, double clip_norm = 0);
  // One update with every gradient multiplied by `grad_scale`: for a caller that measured the
  // global norm itself (the distributed trainer, whose models span several optimizers).
  void update(double lr, double grad_scale);
  // The factor global-norm clipping scales gradients of norm `norm` by: 1 up to clip_norm.
  static double clip_factor(double norm, double clip_norm);
  int64_t steps() const { return steps_; }
  const OptimizerConfig& config() const { return config_; }

  // The state a checkpoint saves and restores (train/checkpoint.h): the parameters in update
  // order, their first and second moment estimates in the same order, and the step count.
  const ParameterList& parameters() const { return params_; }
  std::vector<Tensor>& first_moments() { return m_; }
  const std::vector<Tensor>& first_moments() const { return m_; }
  std::vector<Tensor>& second_moments() { return v_; }
  const std::vector<Tensor>& second_moments() const { return v_; }
  // Also rebuilds NAdam's running product of the momentum schedule, a pure function of the steps.
  void set_steps(int64_t steps);

 private:
  ops::NAdam nadam_hyper() const;  // the NAdam fields of config_ at step steps_ + 1

  ParameterList params_;
  // The parameters' spans (pack_parameters), each updated by one call, and their moments: one
  // flat tensor per span, of which m_ and v_ hold the per-parameter views. span_no_decay_ holds
  // each span's elements that the weight decay leaves out (config_.decay_exempt).
  std::vector<ParameterSpan> spans_;
  std::vector<std::vector<ops::ElementRange>> span_no_decay_;
  std::vector<Tensor> span_m_, span_v_;
  std::vector<Tensor> m_, v_;
  OptimizerConfig config_;
  int64_t steps_ = 0;        // updates done
  double mu_product_ = 1.0;  // NAdam: Π_{steps_} of the momentum schedule (1 before any step)
};

}  // namespace qarac
