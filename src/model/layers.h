// The two parameterised building blocks of a transformer layer: a dense (linear) layer and a
// LayerNorm, each with an explicit backward pass. Names follow Hugging Face ("<prefix>.weight").
#pragma once

#include <string>

#include "model/parameter.h"

namespace qarac {

// Reuses `t` when it already has this shape, dtype and device, so that a step after the first
// allocates nothing; otherwise allocates it.
void ensure_tensor(Tensor& t, const Shape& shape, DType dtype, Device device);

struct Linear {
  Parameter weight;  // [out, in], as torch.nn.Linear
  Parameter bias;    // [out]

  void allocate(const std::string& prefix, int64_t in, int64_t out, DType dtype, Device device);
  void collect(ParameterList& out);
  int64_t in_features() const { return weight.value.size(1); }
  int64_t out_features() const { return weight.value.size(0); }

  // y [N,out] = x [N,in] · Wᵀ + b
  void forward(const Tensor& x, Tensor& y) const;
  // dW += dyᵀ·x, db += Σ_rows dy; if dx: dx = dy·W (accumulate_dx: dx += dy·W).
  void backward(const Tensor& x, const Tensor& dy, Tensor* dx, bool accumulate_dx = false);
};

struct LayerNorm {
  Parameter weight;  // γ [C]
  Parameter bias;    // β [C]
  double eps = 1e-5;

  void allocate(const std::string& prefix, int64_t features, double epsilon, DType dtype, Device device);
  void collect(ParameterList& out);

  // Saved statistics of one forward call, needed by its backward.
  struct Saved {
    Tensor mean, rstd;  // [N]
  };
  void forward(const Tensor& x, Tensor& y, Saved& saved) const;
  // dx overwritten; dγ, dβ accumulated.
  void backward(const Tensor& x, const Tensor& dy, const Saved& saved, Tensor& dx);
};

}  // namespace qarac
