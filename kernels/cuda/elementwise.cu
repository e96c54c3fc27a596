// Elementwise CUDA ops: bias add and its deterministic gradient, add, accumulate, scale. All are
// memory-bound: each element is read and written once, in 16-byte packs when the addresses
// allow it, with the arithmetic in f32 whatever the storage dtype.
#include "kernels/cuda/elementwise.cuh"

#include "kernels/cuda/context.cuh"
#include "kernels/cuda/device_utils.cuh"

namespace qarac::cuda {
namespace {

// ---- Kernels ------------------------------------------------------------------------------------

// y[r, c] += bias[c]. With packs of N, cols % N == 0, so a pack never straddles two rows and its
// bias slice starts at c, a multiple of N (aligned when bias is).
template <class T>
struct BiasAddOp {
  T* y;
  const T* bias;
  int64_t cols;
  template <int N>
  __device__ void apply(int64_t i) const {
    Packed<T, N> v = load_packed<N>(y + i);
    const Packed<T, N> b = load_packed<N>(bias + i % cols);
#pragma unroll
    for (int k = 0; k < N; ++k) v.v[k] = from_float<T>(to_float(v.v[k]) + to_float(b.v[k]));
    store_packed<N>(y + i, v);
  }
};

// out = a + b (accumulate is out = a = dst, b = src).
template <class T>
struct AddOp {
  const T* a;
  const T* b;
  T* out;
  template <int N>
  __device__ void apply(int64_t i) const {
    const Packed<T, N> x = load_packed<N>(a + i), y = load_packed<N>(b + i);
    Packed<T, N> r;
#pragma unroll
    for (int k = 0; k < N; ++k) r.v[k] = from_float<T>(to_float(x.v[k]) + to_float(y.v[k]));
    store_packed<N>(out + i, r);
  }
};

template <class T>
struct ScaleOp {
  T* x;
  float factor;
  template <int N>
  __device__ void apply(int64_t i) const {
    Packed<T, N> v = load_packed<N>(x + i);
#pragma unroll
    for (int k = 0; k < N; ++k) v.v[k] = from_float<T>(to_float(v.v[k]) * factor);
    store_packed<N>(x + i, v);
  }
};

// Element (r, c) of a [rows, cols] matrix, as a column sum reads it.
template <class T>
struct MatrixElement {
  const T* m;
  int64_t cols;
  __device__ ColumnValues<1> operator()(int64_t r, int64_t c) const {
    return {{to_float(m[r * cols + c])}};
  }
};

}  // namespace

// ---- Launchers ----------------------------------------------------------------------------------

void bias_add(DType dtype, void* y, const void* bias, int64_t rows, int64_t cols) {
  dispatch_compute(dtype, "bias_add", [&](auto tag) {
    using T = decltype(tag);
    const BiasAddOp<T> op{static_cast<T*>(y), static_cast<const T*>(bias), cols};
    const bool aligned = cols % kPack16<T> == 0 && aligned16(y) && aligned16(bias);
    launch_elementwise<T>(rows * cols, aligned, stream(), op);
  });
}

void bias_backward(DType dtype, DType grad_dtype, const void* dy, void* dbias, int64_t rows,
                   int64_t cols) {
  QARAC_CHECK(grad_dtype == DType::f32, "bias_backward: dbias must be f32, got ",
              dtype_name(grad_dtype));
  dispatch_compute(dtype, "bias_backward", [&](auto tag) {
    using T = decltype(tag);
    column_sums(MatrixElement<T>{static_cast<const T*>(dy), cols}, rows, cols,
                ColumnOutputs<1>{{static_cast<float*>(dbias)}});
  });
}

void add(DType dtype, const void* a, const void* b, void* out, int64_t n) {
  dispatch_compute(dtype, "add", [&](auto tag) {
    using T = decltype(tag);
    const AddOp<T> op{static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(out)};
    launch_elementwise<T>(n, aligned16(a) && aligned16(b) && aligned16(out), stream(), op);
  });
}

void accumulate(DType dtype, void* dst, const void* src, int64_t n) {
  add(dtype, dst, src, dst, n);
}

void scale(DType dtype, void* x, double factor, int64_t n) {
  dispatch_compute(dtype, "scale", [&](auto tag) {
    using T = decltype(tag);
    const ScaleOp<T> op{static_cast<T*>(x), static_cast<float>(factor)};
    launch_elementwise<T>(n, aligned16(x), stream(), op);
  });
}

}  // namespace qarac::cuda
