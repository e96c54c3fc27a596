// The two parameterised building blocks of a transformer layer: a dense (linear) layer and a
// LayerNorm, each with an explicit backward pass. Names follow Hugging Face ("<prefix>.weight").
#pragma once

#include <string>

#include "kernels/ops.h"
#include "model/parameter.h"

namespace qarac {

// Makes `t` a tensor of this shape, dtype and device, reusing its buffer when it is large enough,
// so that steps after the first allocate nothing even as ragged batches change the token count.
// A new buffer gets 1/16 more room than asked: the largest batch of a run is soon reached. A
// buffer that another tensor holds too (a view of it) is never reused for another shape.
void ensure_tensor(Tensor& t, const Shape& shape, DType dtype, Device device);

struct Linear {
  Parameter weight;  // [out, in], as torch.nn.Linear
  Parameter bias;    // [out]

  void allocate(const std::string& prefix, int64_t in, int64_t out, DType dtype, Device device);
  void collect(ParameterList& out);
  int64_t in_features() const { return weight.value.size(1); }
  int64_t out_features() const { return weight.value.size(0); }

  // y [N,out] = act(x [N,in] · Wᵀ + b); with GELU, `pre` keeps x · Wᵀ + b for the backward pass.
  void forward(const Tensor& x, Tensor& y, ops::Activation act = ops::Activation::none,
               Tensor* pre = nullptr) const;
  // dW += dyᵀ·x, db += Σ_rows dy; if dx: dx = dy·W (accumulate_dx: dx += dy·W). When x was
  // GELU(input_gelu_pre), dx receives the gradient with respect to input_gelu_pre instead, and
  // input_gelu_dbias (the bias gradient of the layer that produced input_gelu_pre), if given,
  // += Σ_rows dx. With bias_grad_done, db is left alone: whoever produced dy added Σ_rows dy to
  // it already (LayerNorm::backward's dbias_branch, or the next layer's input_gelu_dbias).
  void backward(const Tensor& x, const Tensor& dy, Tensor* dx, bool accumulate_dx = false,
                const Tensor* input_gelu_pre = nullptr, bool bias_grad_done = false,
                Tensor* input_gelu_dbias = nullptr);
};

struct LayerNorm {
  Parameter weight;  // γ [C]
  Parameter bias;    // β [C]
  double eps = 1e-5;

  void allocate(const std::string& prefix, int64_t features, double epsilon, DType dtype, Device device);
  void collect(ParameterList& out);

  // Statistics of one forward call (in the accumulation dtype), needed by its backward.
  struct Saved {
    Tensor mean, rstd;  // [N]
  };
  void forward(const Tensor& x, Tensor& y, Saved& saved) const;
  // The post-LN residual: sum = a + b (kept for the backward pass), y = LN(sum); with
  // branch_dropout, sum = dropout(a) + b (ops::BranchDropout).
  void forward_residual(const Tensor& a, const Tensor& b, Tensor& sum, Tensor& y, Saved& saved,
                        const ops::BranchDropout* branch_dropout = nullptr) const;
  // dx overwritten; dγ, dβ accumulated. x is the normalised input (`sum` for forward_residual).
  // With the forward pass's branch_dropout, also dbranch = dropout(dx), the branch's gradient;
  // with dbias_branch, also dbias_branch += Σ_rows of the branch's gradient (dy must not be dx).
  void backward(const Tensor& x, const Tensor& dy, const Saved& saved, Tensor& dx,
                const ops::BranchDropout* branch_dropout = nullptr, Tensor* dbranch = nullptr,
                Tensor* dbias_branch = nullptr);
};

}  // namespace qarac
