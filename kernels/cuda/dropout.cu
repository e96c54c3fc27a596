// Dropout on CUDA with the mask drawn from Philox (core/rng.h) exactly as the CPU reference draws
// it: element i is kept when uniform01(key, i) >= float(p), then scaled by 1/(1-p) (computed in
// double and rounded to float, as the CPU's f32 path does), so both backends keep the same
// elements and, in f32, produce the same bits. The mask is a pure function of (key, i): nothing is
// stored, and the backward pass (the same op applied to dy) regenerates it.
// Each element costs one Philox-4x32-10 evaluation (10 rounds of two 32x32->64 multiplies), a
// few tens of integer instructions against 2-4 bytes of traffic, so the kernel is close to
// balanced between ALU and memory on an H100; it keeps the 16-byte packs for the memory side.
#include "kernels/cuda/dropout.cuh"

#include "kernels/cuda/context.cuh"
#include "kernels/cuda/device_utils.cuh"

namespace qarac::cuda {
namespace {

template <class T>
struct DropoutOp {
  const T* x;
  T* y;
  RngKey key;
  float threshold;   // float(p)
  float keep_scale;  // float(1 / (1 - p))
  template <int N>
  __device__ void apply(int64_t i) const {
    const Packed<T, N> in = load_packed<N>(x + i);
    Packed<T, N> out;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const bool keep = uniform01(key, static_cast<uint64_t>(i + k)) >= threshold;
      out.v[k] = from_float<T>(keep ? to_float(in.v[k]) * keep_scale : 0.f);
    }
    store_packed<N>(y + i, out);
  }
};

}  // namespace

void dropout(DType dtype, const void* x, void* y, int64_t n, double p, const RngKey& key) {
  QARAC_CHECK(p >= 0 && p < 1, "dropout: probability ", p, " is outside [0, 1)");
  if (n <= 0) return;
  dispatch_compute(dtype, "dropout", [&](auto tag) {
    using T = decltype(tag);
    if (p == 0) {  // identity: a copy, or nothing in place
      if (x != y)
        QARAC_CHECK_CUDA(cudaMemcpyAsync(y, x, static_cast<size_t>(n) * sizeof(T),
                                         cudaMemcpyDeviceToDevice, stream()));
      return;
    }
    const DropoutOp<T> op{static_cast<const T*>(x), static_cast<T*>(y), key,
                          static_cast<float>(p), static_cast<float>(1.0 / (1.0 - p))};
    launch_elementwise<T>(n, aligned16(x) && aligned16(y), stream(), op);
  });
}

}  // namespace qarac::cuda
