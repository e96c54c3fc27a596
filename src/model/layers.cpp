#include "model/layers.h"

#include "kernels/ops.h"

namespace qarac {

void ensure_tensor(Tensor& t, const Shape& shape, DType dtype, Device device) {
  if (t.defined() && t.shape() == shape && t.dtype() == dtype && t.device() == device) return;
  t = Tensor::empty(shape, dtype, device);
}

void Linear::allocate(const std::string& prefix, int64_t in, int64_t out, DType dtype, Device device) {
  weight.allocate(prefix + ".weight", {out, in}, dtype, device);
  bias.allocate(prefix + ".bias", {out}, dtype, device);
}

void Linear::collect(ParameterList& out) {
  out.push_back(&weight);
  out.push_back(&bias);
}

void Linear::forward(const Tensor& x, Tensor& y) const {
  ops::gemm(x, weight.value, y, /*trans_a=*/false, /*trans_b=*/true);
  ops::bias_add(y, bias.value);
}

void Linear::backward(const Tensor& x, const Tensor& dy, Tensor* dx, bool accumulate_dx) {
  ops::gemm(dy, x, weight.grad, /*trans_a=*/true, /*trans_b=*/false, 1.0, /*beta=*/1.0);
  ops::bias_backward(dy, bias.grad);
  if (dx) ops::gemm(dy, weight.value, *dx, false, false, 1.0, accumulate_dx ? 1.0 : 0.0);
}

void LayerNorm::allocate(const std::string& prefix, int64_t features, double epsilon, DType dtype,
                         Device device) {
  weight.allocate(prefix + ".weight", {features}, dtype, device);
  bias.allocate(prefix + ".bias", {features}, dtype, device);
  eps = epsilon;
  // γ = 1, β = 0: the identity affine map, what a fresh LayerNorm starts from.
  const Tensor ones = Tensor::from_vector(std::vector<double>(static_cast<size_t>(features), 1.0), {features});
  weight.value.copy_(ones.to(dtype).to(device));
}

void LayerNorm::collect(ParameterList& out) {
  out.push_back(&weight);
  out.push_back(&bias);
}

void LayerNorm::forward(const Tensor& x, Tensor& y, Saved& saved) const {
  const int64_t rows = x.size(0);
  ensure_tensor(saved.mean, {rows}, x.dtype(), x.device());
  ensure_tensor(saved.rstd, {rows}, x.dtype(), x.device());
  ops::layernorm_forward(x, weight.value, bias.value, eps, y, saved.mean, saved.rstd);
}

void LayerNorm::backward(const Tensor& x, const Tensor& dy, const Saved& saved, Tensor& dx) {
  ops::layernorm_backward(dy, x, weight.value, saved.mean, saved.rstd, dx, weight.grad, bias.grad);
}

}  // namespace qarac
