// Row cosine similarity on CUDA, out_i = a_i·b_i / max(‖a_i‖ ‖b_i‖, eps) (the consistency
// objective compares two answer vectors with it), and its gradient
//   da_i = dout_i (alpha b_i − beta_a a_i),   db_i = dout_i (alpha a_i − beta_b b_i)
// with alpha, beta from cosine_terms (device_utils.cuh, derivation there). Storage in X (f32 or
// bf16), arithmetic and out in f32.
//
// One warp per row: lanes stride the row's columns (coalesced scalar loads), the three dot
// products a·b, ‖a‖², ‖b‖² are reduced with the fixed tree of warp_sum (same bits on every
// run), and the backward pass makes a second pass over the row for da and db. Rows number one
// per sample of the batch, so the op moves a few hundred KB: no vector accesses.
#include "kernels/cuda/cosine.cuh"

#include "kernels/cuda/context.cuh"
#include "kernels/cuda/device_utils.cuh"

namespace qarac::cuda {
namespace {

constexpr int kRowWarps = 8;  // rows per block, one per warp

// a·b, ‖a‖², ‖b‖² of one row, summed over the warp; every lane gets the result.
template <class T>
__device__ __forceinline__ CosineTerms row_cosine(const T* a, const T* b, int64_t d, float eps) {
  float dot = 0.f, sq_a = 0.f, sq_b = 0.f;
  for (int64_t c = threadIdx.x % kWarpSize; c < d; c += kWarpSize) {
    const float av = to_float(a[c]), bv = to_float(b[c]);
    dot += av * bv;
    sq_a += av * av;
    sq_b += bv * bv;
  }
  return cosine_terms(warp_sum(dot), warp_sum(sq_a), warp_sum(sq_b), eps);
}

template <class T>
__global__ void cosine_forward_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                      int64_t rows, int64_t d, float eps, float* __restrict__ out) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarpSize;
  if (r >= rows) return;  // the whole warp leaves: warp_sum has all its lanes
  const CosineTerms terms = row_cosine(a + r * d, b + r * d, d, eps);
  if (threadIdx.x % kWarpSize == 0) out[r] = terms.value;
}

template <class T>
__global__ void cosine_backward_kernel(const float* __restrict__ dout, const T* __restrict__ a,
                                       const T* __restrict__ b, int64_t rows, int64_t d, float eps,
                                       T* __restrict__ da, T* __restrict__ db) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarpSize;
  if (r >= rows) return;  // the whole warp leaves: warp_sum has all its lanes
  const T* ar = a + r * d;
  const T* br = b + r * d;
  const CosineTerms terms = row_cosine(ar, br, d, eps);
  const float g = dout[r];
  const float alpha = g * terms.alpha, beta_a = g * terms.beta_x, beta_b = g * terms.beta_y;
  for (int64_t c = threadIdx.x % kWarpSize; c < d; c += kWarpSize) {
    const float av = to_float(ar[c]), bv = to_float(br[c]);
    da[r * d + c] = from_float<T>(alpha * bv - beta_a * av);
    db[r * d + c] = from_float<T>(alpha * av - beta_b * bv);
  }
}

void check_sizes(const char* op, int64_t rows, int64_t d) {
  QARAC_CHECK(rows >= 0 && d >= 0, op, ": negative size (rows ", rows, ", d ", d, ")");
  QARAC_CHECK(ceil_div(rows, kRowWarps) <= 0x7fffffff, op, ": ", rows,
              " rows exceed the launch grid");
}

}  // namespace

void cosine_forward(DType dtype, const void* a, const void* b, int64_t rows, int64_t d, double eps,
                    float* out) {
  check_sizes("cosine_forward", rows, d);
  if (rows == 0) return;
  const unsigned blocks = static_cast<unsigned>(ceil_div(rows, kRowWarps));
  dispatch_compute(dtype, "cosine_forward", [&](auto tag) {
    using T = decltype(tag);
    cosine_forward_kernel<T><<<blocks, kRowWarps * kWarpSize, 0, stream()>>>(
        static_cast<const T*>(a), static_cast<const T*>(b), rows, d, static_cast<float>(eps), out);
    QARAC_CHECK_LAUNCH();
  });
}

void cosine_backward(DType dtype, const float* dout, const void* a, const void* b, int64_t rows,
                     int64_t d, double eps, void* da, void* db) {
  check_sizes("cosine_backward", rows, d);
  if (rows == 0 || d == 0) return;
  const unsigned blocks = static_cast<unsigned>(ceil_div(rows, kRowWarps));
  dispatch_compute(dtype, "cosine_backward", [&](auto tag) {
    using T = decltype(tag);
    cosine_backward_kernel<T><<<blocks, kRowWarps * kWarpSize, 0, stream()>>>(
        dout, static_cast<const T*>(a), static_cast<const T*>(b), rows, d,
        static_cast<float>(eps), static_cast<T*>(da), static_cast<T*>(db));
    QARAC_CHECK_LAUNCH();
  });
}

}  // namespace qarac::cuda
