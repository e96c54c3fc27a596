#include "model/layers.h"

namespace qarac {

void ensure_tensor(Tensor& t, const Shape& shape, DType dtype, Device device) {
  const int64_t numel = shape_numel(shape);
  if (t.defined() && t.dtype() == dtype && t.device() == device) {
    if (t.shape() == shape) return;
    if (t.is_contiguous() && !t.buffer_shared() && numel <= t.capacity()) {
      t = t.resized(shape);
      return;
    }
  }
  t = Tensor::empty({numel + numel / 16}, dtype, device).resized(shape);
}

void Linear::allocate(const std::string& prefix, int64_t in, int64_t out, DType dtype, Device device) {
  weight.allocate(prefix + ".weight", {out, in}, dtype, device);
  bias.allocate(prefix + ".bias", {out}, dtype, device);
}

void Linear::collect(ParameterList& out) {
  out.push_back(&weight);
  out.push_back(&bias);
}

void Linear::forward(const Tensor& x, Tensor& y, ops::Activation act, Tensor* pre) const {
  ops::linear_forward(x, weight.value, bias.value, y, act, pre);
}

void Linear::backward(const Tensor& x, const Tensor& dy, Tensor* dx, bool accumulate_dx,
                      const Tensor* input_gelu_pre, bool bias_grad_done, Tensor* input_gelu_dbias) {
  ops::linear_backward(x, weight.value, dy, dx, weight.grad, bias_grad_done ? nullptr : &bias.grad,
                       input_gelu_pre, accumulate_dx, input_gelu_dbias);
}

void LayerNorm::allocate(const std::string& prefix, int64_t features, double epsilon, DType dtype,
                         Device device) {
  weight.allocate(prefix + ".weight", {features}, dtype, device);
  bias.allocate(prefix + ".bias", {features}, dtype, device);
  eps = epsilon;
  // γ = 1, β = 0: the identity affine map, what a fresh LayerNorm starts from.
  weight.assign(Tensor::from_vector(std::vector<double>(static_cast<size_t>(features), 1.0), {features}));
}

void LayerNorm::collect(ParameterList& out) {
  out.push_back(&weight);
  out.push_back(&bias);
}

namespace {
void ensure_stats(LayerNorm::Saved& saved, const Tensor& x) {
  const DType a = ops::accumulation_dtype(x.dtype());
  ensure_tensor(saved.mean, {x.size(0)}, a, x.device());
  ensure_tensor(saved.rstd, {x.size(0)}, a, x.device());
}
}  // namespace

void LayerNorm::forward(const Tensor& x, Tensor& y, Saved& saved) const {
  ensure_stats(saved, x);
  ops::layernorm_forward(x, weight.value, bias.value, eps, y, saved.mean, saved.rstd);
}

void LayerNorm::forward_residual(const Tensor& a, const Tensor& b, Tensor& sum, Tensor& y,
                                 Saved& saved, const ops::BranchDropout* branch_dropout) const {
  ensure_stats(saved, a);
  ops::add_layernorm_forward(a, b, weight.value, bias.value, eps, sum, y, saved.mean, saved.rstd,
                             branch_dropout);
}

void LayerNorm::backward(const Tensor& x, const Tensor& dy, const Saved& saved, Tensor& dx,
                         const ops::BranchDropout* branch_dropout, Tensor* dbranch,
                         Tensor* dbias_branch) {
  ops::layernorm_backward(dy, x, weight.value, saved.mean, saved.rstd, dx, weight.grad, bias.grad,
                          branch_dropout, dbranch, dbias_branch);
}

}  // namespace qarac
