// The op dispatcher of the optimisers and the gradient norm (ops.h): as ops.cpp for the layers'
// ops, every argument checked against the contract, then the entry of the tensors' backend.
#include <cmath>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/op_args.h"
#include "kernels/ops.h"

namespace qarac::ops {

using checks::Args;
using checks::Role;

// ---- Optimiser and gradient norm ----------------------------------------------------------------
namespace {

// The checks adamw_update and nadam_update share: param, grad, m, v and the compute copy, the
// 1-based step, betas and the non-negative rates. Returns the checked arguments.
template <class Config>
Args check_optimizer(const char* op, const Tensor& param, const Tensor& grad, const Tensor& m,
                     const Tensor& v, const Config& config, const Tensor* param_copy) {
  Args args(op, "param", param, Role::accumulation);
  args.accumulation("grad", grad, param.shape());
  args.accumulation("m", m, param.shape());
  args.accumulation("v", v, param.shape());
  if (param_copy) {
    // The compute copy: an X of the backend whose A is param's dtype (param's own dtype on the
    // CPU, f32 or bf16 for f32 master weights on CUDA).
    const Tensor& c = *param_copy;
    QARAC_CHECK(c.defined() && c.is_contiguous(), op,
                ": param_copy is undefined or not contiguous");
    QARAC_CHECK(c.device() == param.device() && c.shape() == param.shape(), op, ": param_copy ",
                c.str(), " does not match param ", param.str(), " in device or shape");
    QARAC_CHECK(args.backend().is_pair(c.dtype(), param.dtype()), op, ": param_copy ", c.str(),
                " is not a compute dtype for param ", param.str());
  }
  QARAC_CHECK(config.step >= 1, op, ": step ", config.step, " must be >= 1 (it is 1-based)");
  QARAC_CHECK(config.beta1 >= 0 && config.beta1 < 1 && config.beta2 >= 0 && config.beta2 < 1, op,
              ": betas (", config.beta1, ", ", config.beta2, ") must lie in [0, 1)");
  QARAC_CHECK(config.lr >= 0 && config.eps >= 0 && config.weight_decay >= 0, op, ": lr ", config.lr,
              ", eps ", config.eps, " and weight_decay ", config.weight_decay, " must be >= 0");
  int64_t after = 0;  // where the last range ended
  for (size_t i = 0; i < config.no_decay.size(); ++i) {
    const ElementRange& r = config.no_decay[i];
    QARAC_CHECK(r.begin >= after && r.end > r.begin && r.end <= param.numel(), op, ": no_decay[", i,
                "] = [", r.begin, ", ", r.end, ") is empty, out of order or outside param's ",
                param.numel(), " elements");
    after = r.end;
  }
  return args;
}

}  // namespace

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamW& config,
                  Tensor* param_copy) {
  check_optimizer("adamw_update", param, grad, m, v, config, param_copy)
      .backend()
      .adamw_update(param, grad, m, v, config, param_copy);
}

double nadam_mu(const NAdam& config, int64_t t) {
  return config.beta1 *
         (1.0 - 0.5 * std::pow(0.96, static_cast<double>(t) * config.momentum_decay));
}

double nadam_mu_product(const NAdam& config) {
  double product = 1.0;
  for (int64_t t = 1; t <= config.step; ++t) product *= nadam_mu(config, t);
  return product;
}

void nadam_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const NAdam& config,
                  Tensor* param_copy) {
  const char* op = "nadam_update";
  const Args args = check_optimizer(op, param, grad, m, v, config, param_copy);
  QARAC_CHECK(config.momentum_decay >= 0, op, ": momentum_decay ", config.momentum_decay,
              " must be >= 0");
  // Π_t < 1 since β1 < 1, so 1 - Π_t is a valid denominator; Π_t > 0 unless β1 = 0 (μ_t >= β1 / 2),
  // so an unset product (0) is an error rather than a silently different optimiser.
  QARAC_CHECK(config.mu_product >= 0 && config.mu_product < 1 &&
                  (config.mu_product > 0 || config.beta1 == 0),
              op, ": mu_product ", config.mu_product,
              " is not a product of the momentum schedule (set it with nadam_mu_product)");
  args.backend().nadam_update(param, grad, m, v, config, param_copy);
}

void sum_of_squares(const std::vector<const Tensor*>& tensors, Tensor& out) {
  const char* op = "sum_of_squares";
  const Args args(op, "out", out, Role::accumulation);
  args.accumulation("out", out, {1});
  // One dtype for all inputs: an X of the backend whose A is out's.
  const DType dtype = tensors.empty() || !tensors[0] ? out.dtype() : tensors[0]->dtype();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::string name = "tensors[" + std::to_string(i) + "]";
    QARAC_CHECK(tensors[i], op, ": ", name, " is null");
    const Tensor& t = *tensors[i];
    QARAC_CHECK(t.defined() && t.is_contiguous(), op, ": ", name,
                " is undefined or not contiguous");
    QARAC_CHECK(t.device() == out.device(), op, ": ", name, " ", t.str(),
                " is not on the device of out ", out.str());
    QARAC_CHECK(t.dtype() == dtype && args.backend().is_pair(dtype, out.dtype()), op, ": ", name,
                " ", t.str(), " does not go with tensors[0] and out ", out.str(),
                " (one dtype for all, whose accumulation dtype is out's)");
  }
  args.backend().sum_of_squares(tensors, out);
}

}  // namespace qarac::ops
