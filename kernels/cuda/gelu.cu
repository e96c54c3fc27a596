// GELU in its exact erf form (the one RoBERTa uses, not the tanh approximation) and its
// derivative, on CUDA, in f32 whatever the storage dtype:
//   gelu(x)  = x Φ(x),          Φ(x) = ½ (1 + erf(x / √2))   (standard normal CDF)
//   gelu'(x) = Φ(x) + x φ(x),   φ(x) = exp(-x² / 2) / √(2π)  (standard normal density)
// The same expressions as the CPU reference and PyTorch, so the tails (where 1 + erf cancels)
// round the same way. Memory-bound: one 16-byte pack per operand per iteration where aligned;
// the backward pass fused with the bias gradient's column sums goes element by element.
#include "kernels/cuda/gelu.cuh"

#include "kernels/cuda/context.cuh"
#include "kernels/cuda/device_utils.cuh"

namespace qarac::cuda {
namespace {

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

template <class T>
struct GeluForwardOp {
  const T* x;
  T* y;
  template <int N>
  __device__ void apply(int64_t i) const {
    const Packed<T, N> in = load_packed<N>(x + i);
    Packed<T, N> out;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float v = to_float(in.v[k]);
      out.v[k] = from_float<T>(0.5f * v * (1.f + erff(v * kInvSqrt2)));
    }
    store_packed<N>(y + i, out);
  }
};

// gelu'(v) = Φ(v) + v φ(v).
__device__ __forceinline__ float gelu_grad(float v) {
  const float cdf = 0.5f * (1.f + erff(v * kInvSqrt2));
  const float pdf = kInvSqrt2Pi * expf(-0.5f * v * v);
  return cdf + v * pdf;
}

template <class T>
struct GeluBackwardOp {
  const T* x;
  const T* dy;
  T* dx;
  template <int N>
  __device__ void apply(int64_t i) const {
    const Packed<T, N> in = load_packed<N>(x + i), grad = load_packed<N>(dy + i);
    Packed<T, N> out;
#pragma unroll
    for (int k = 0; k < N; ++k)
      out.v[k] = from_float<T>(to_float(grad.v[k]) * gelu_grad(to_float(in.v[k])));
    store_packed<N>(dx + i, out);
  }
};

// GeluBackwardOp's element (r, c) of a [rows, cols] matrix, stored to dx and handed to a column
// sum (the bias gradient of the layer whose output x is).
template <class T>
struct GeluBackwardElement {
  const T* x;
  const T* dy;
  T* dx;
  int64_t cols;
  __device__ ColumnValues<1> operator()(int64_t r, int64_t c) const {
    const int64_t i = r * cols + c;
    const T out = from_float<T>(to_float(dy[i]) * gelu_grad(to_float(x[i])));
    dx[i] = out;
    return {{to_float(out)}};
  }
};

}  // namespace

void gelu_forward(DType dtype, const void* x, void* y, int64_t n) {
  dispatch_compute(dtype, "gelu_forward", [&](auto tag) {
    using T = decltype(tag);
    const GeluForwardOp<T> op{static_cast<const T*>(x), static_cast<T*>(y)};
    launch_elementwise<T>(n, aligned16(x) && aligned16(y), stream(), op);
  });
}

void gelu_backward(DType dtype, const void* x, const void* dy, void* dx, int64_t n) {
  dispatch_compute(dtype, "gelu_backward", [&](auto tag) {
    using T = decltype(tag);
    const GeluBackwardOp<T> op{static_cast<const T*>(x), static_cast<const T*>(dy),
                               static_cast<T*>(dx)};
    launch_elementwise<T>(n, aligned16(x) && aligned16(dy) && aligned16(dx), stream(), op);
  });
}

void gelu_backward_bias(DType dtype, const void* x, const void* dy, void* dx, int64_t rows,
                        int64_t cols, float* dbias) {
  dispatch_compute(dtype, "gelu_backward", [&](auto tag) {
    using T = decltype(tag);
    const GeluBackwardElement<T> element{static_cast<const T*>(x), static_cast<const T*>(dy),
                                         static_cast<T*>(dx), cols};
    column_sums(element, rows, cols, ColumnOutputs<1>{{dbias}});
  });
}

}  // namespace qarac::cuda
