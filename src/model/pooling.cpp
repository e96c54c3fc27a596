#include "model/pooling.h"

namespace qarac {

PoolingHead::PoolingHead(const std::string& prefix, int64_t hidden, DType dtype, Device device) {
  global_.allocate(prefix + ".global_projection.weight", {hidden, hidden}, dtype, device);
  local_.allocate(prefix + ".local_projection.weight", {hidden, hidden}, dtype, device);
  pack_parameters(parameters());
}

ParameterList PoolingHead::parameters() { return {&global_, &local_}; }

const Tensor& PoolingHead::forward(const Tensor& x, const ops::Sequences& seqs, Activations& acts) const {
  const int64_t tokens = x.size(0), d = x.size(1), batch = seqs.count();
  const DType dtype = x.dtype();
  const Device device = x.device();
  ensure_tensor(acts.sums, {batch, d}, dtype, device);
  ensure_tensor(acts.global, {batch, d}, dtype, device);
  ensure_tensor(acts.local, {tokens, d}, dtype, device);
  ensure_tensor(acts.weights, {tokens}, ops::accumulation_dtype(dtype), device);
  ensure_tensor(acts.pooled, {batch, d}, dtype, device);

  ops::segment_sum(x, seqs, acts.sums);
  ops::gemm(acts.sums, global_.value, acts.global, false, /*trans_b=*/true);  // g = Wg · Σ X
  ops::gemm(x, local_.value, acts.local, false, true);                        // l_t = Wl · X_t
  ops::pooling_forward(x, acts.local, acts.global, seqs, kCosineEps, acts.pooled, acts.weights);
  return acts.pooled;
}

void PoolingHead::backward(const Tensor& x, const ops::Sequences& seqs, const Tensor& grad_pooled,
                           Activations& acts, Tensor& dx) {
  ensure_tensor(acts.grad_local, acts.local.shape(), x.dtype(), x.device());
  ensure_tensor(acts.grad_global, acts.global.shape(), x.dtype(), x.device());
  ensure_tensor(acts.grad_sums, acts.sums.shape(), x.dtype(), x.device());
  // x reaches v three ways: directly (v = Σ a_t X_t), through l and through g = Wg · Σ X.
  dx.zero_();
  ops::pooling_backward(grad_pooled, x, acts.local, acts.global, acts.weights, seqs, kCosineEps, dx,
                        acts.grad_local, acts.grad_global);
  ops::gemm(acts.grad_local, x, local_.grad, /*trans_a=*/true, false, 1.0, /*beta=*/1.0);  // dWl += dlᵀ X
  ops::gemm(acts.grad_local, local_.value, dx, false, false, 1.0, 1.0);                    // dX += dl Wl
  ops::gemm(acts.grad_global, acts.sums, global_.grad, true, false, 1.0, 1.0);             // dWg += dgᵀ ΣX
  ops::gemm(acts.grad_global, global_.value, acts.grad_sums, false, false);                // d(ΣX) = dg Wg
  ops::segment_sum_backward(acts.grad_sums, seqs, dx, /*accumulate=*/true);
}

}  // namespace qarac
