// Per-sequence sums and the global attention pooling head of the QARAC encoders (docs/design.md §2)
// on CUDA, over a padding-free batch (sequence b is rows [offsets[b], offsets[b+1]) of [T, d]):
//   segment_sum       out_b = Σ_{t in b} x_t          segment_sum_backward  dx_t = dout_b
//   pooling_forward   a_t = cos(l_t, g_b), v_b = Σ_{t in b} a_t x_t
//   pooling_backward  dx_t += a_t dv_b,  da_t = dv_b·x_t,
//                     dl_t = da_t (alpha_t g_b − beta_l,t l_t),
//                     dg_b = Σ_{t in b} da_t (alpha_t l_t − beta_g,t g_b)
// (alpha, beta: the cosine's gradient terms, cosine_terms in device_utils.cuh). Storage in X (f32
// or bf16), arithmetic and the saved a in f32.
//
// Two kernel shapes:
// - per sequence: one block per (sequence, chunk of 128 columns), one thread per column summing
//   the sequence's rows in token order; consecutive threads read consecutive columns, so every
//   row read is coalesced.
// - per token: one warp per row, for the dot products along d (warp_sum), then a second pass over
//   the row for its elementwise outputs.
// Every sum therefore runs in an order fixed by the shapes alone: same bits on every run.
// Bandwidth: these ops move a few [T, d] tensors per step (MBs, next to the GEMMs' GBs), so they
// use plain coalesced scalar loads and no vector accesses.
#include "kernels/cuda/pooling.cuh"

#include "core/memory.h"
#include "kernels/cuda/context.cuh"
#include "kernels/cuda/device_utils.cuh"

namespace qarac::cuda {
namespace {

constexpr int kColumnThreads = 128;  // columns per block of the per-sequence kernels
constexpr int kRowWarps = 8;         // rows per block of the per-token kernels (one per warp)

// out_b[c] = Σ_{t in b} w_t x_t[c] (w_t = 1 when `weight` is null), in token order.
template <class T>
__global__ void segment_sum_kernel(const T* __restrict__ x, const float* __restrict__ weight,
                                   const int32_t* __restrict__ offsets, int64_t d,
                                   T* __restrict__ out) {
  const int64_t b = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= d) return;
  float sum = 0.f;
  for (int64_t t = offsets[b]; t < offsets[b + 1]; ++t) {
    const float xv = to_float(x[t * d + c]);
    sum += weight ? weight[t] * xv : xv;
  }
  out[b * d + c] = from_float<T>(sum);
}

// dx_t[c] = dout_b[c] for t in b (+= with accumulate: one rounding to T of the f32 sum).
template <class T>
__global__ void segment_broadcast_kernel(const T* __restrict__ dout,
                                         const int32_t* __restrict__ offsets, int64_t d,
                                         T* __restrict__ dx, bool accumulate) {
  const int64_t b = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= d) return;
  const T g = dout[b * d + c];
  for (int64_t t = offsets[b]; t < offsets[b + 1]; ++t) {
    T* p = dx + t * d + c;
    *p = accumulate ? from_float<T>(to_float(*p) + to_float(g)) : g;
  }
}

// a_t = cos(l_t, g_b), one warp per token.
template <class T>
__global__ void pooling_scores_kernel(const T* __restrict__ l, const T* __restrict__ g,
                                      const int32_t* __restrict__ offsets, int64_t batch,
                                      int64_t tokens, int64_t d, float eps, float* __restrict__ a) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarpSize;
  if (t >= tokens) return;  // the whole warp leaves: warp_sum below has all its lanes
  const int lane = threadIdx.x % kWarpSize;
  const T* lt = l + t * d;
  const T* gb = g + sequence_of_row(offsets, batch, t) * d;
  float dot = 0.f, sq_l = 0.f, sq_g = 0.f;
  for (int64_t c = lane; c < d; c += kWarpSize) {
    const float lv = to_float(lt[c]), gv = to_float(gb[c]);
    dot += lv * gv;
    sq_l += lv * lv;
    sq_g += gv * gv;
  }
  dot = warp_sum(dot);
  sq_l = warp_sum(sq_l);
  sq_g = warp_sum(sq_g);
  if (lane == 0) a[t] = cosine_terms(dot, sq_l, sq_g, eps).value;
}

// The per-token part of the backward pass, one warp per token: dx_t += a_t dv_b and
// dl_t = da_t (alpha g_b − beta_l l_t) with da_t = dv_b·x_t. Token t's share of dg_b,
// da_t (alpha l_t − beta_g g_b), needs a sum over the sequence's tokens: its two scalar factors
// go to l_factor[t] = da_t alpha and g_factor[t] = da_t beta_g for pooling_dg_kernel.
template <class T>
__global__ void pooling_backward_tokens_kernel(
    const T* __restrict__ dv, const T* __restrict__ x, const T* __restrict__ l,
    const T* __restrict__ g, const float* __restrict__ a, const int32_t* __restrict__ offsets,
    int64_t batch, int64_t tokens, int64_t d, float eps, T* __restrict__ dx, T* __restrict__ dl,
    float* __restrict__ l_factor, float* __restrict__ g_factor) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarpSize;
  if (t >= tokens) return;  // the whole warp leaves: warp_sum below has all its lanes
  const int lane = threadIdx.x % kWarpSize;
  const int64_t b = sequence_of_row(offsets, batch, t);
  const T* xt = x + t * d;
  const T* lt = l + t * d;
  const T* gb = g + b * d;
  const T* dvb = dv + b * d;
  float da = 0.f, dot = 0.f, sq_l = 0.f, sq_g = 0.f;
  for (int64_t c = lane; c < d; c += kWarpSize) {
    const float lv = to_float(lt[c]), gv = to_float(gb[c]);
    da += to_float(dvb[c]) * to_float(xt[c]);
    dot += lv * gv;
    sq_l += lv * lv;
    sq_g += gv * gv;
  }
  da = warp_sum(da);
  const CosineTerms terms = cosine_terms(warp_sum(dot), warp_sum(sq_l), warp_sum(sq_g), eps);
  const float at = a[t];
  const float dl_g = da * terms.alpha, dl_l = da * terms.beta_x;
  T* dxt = dx + t * d;
  T* dlt = dl + t * d;
  for (int64_t c = lane; c < d; c += kWarpSize) {
    dxt[c] = from_float<T>(to_float(dxt[c]) + at * to_float(dvb[c]));
    dlt[c] = from_float<T>(dl_g * to_float(gb[c]) - dl_l * to_float(lt[c]));
  }
  if (lane == 0) {
    l_factor[t] = dl_g;
    g_factor[t] = da * terms.beta_y;
  }
}

// dg_b[c] = Σ_{t in b} l_factor[t] l_t[c] − (Σ_{t in b} g_factor[t]) g_b[c], in token order.
template <class T>
__global__ void pooling_dg_kernel(const T* __restrict__ l, const T* __restrict__ g,
                                  const float* __restrict__ l_factor,
                                  const float* __restrict__ g_factor,
                                  const int32_t* __restrict__ offsets, int64_t d,
                                  T* __restrict__ dg) {
  const int64_t b = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= d) return;
  float sum_l = 0.f, sum_g = 0.f;
  for (int64_t t = offsets[b]; t < offsets[b + 1]; ++t) {
    sum_l += l_factor[t] * to_float(l[t * d + c]);
    sum_g += g_factor[t];
  }
  dg[b * d + c] = from_float<T>(sum_l - sum_g * to_float(g[b * d + c]));
}

// Grid of the per-sequence kernels: sequences on x (up to 2^31 - 1), column chunks on y.
dim3 sequence_grid(const char* op, int64_t batch, int64_t d) {
  const int64_t chunks = ceil_div(d, kColumnThreads);
  QARAC_CHECK(batch <= 0x7fffffff && chunks <= 65535, op, ": ", batch, " sequences of width ",
              d, " exceed the launch grid");
  return dim3(static_cast<unsigned>(batch), static_cast<unsigned>(chunks));
}

// Grid of the per-token kernels: one warp per token.
unsigned token_grid(int64_t tokens) { return static_cast<unsigned>(ceil_div(tokens, kRowWarps)); }

void check_sizes(const char* op, int64_t batch, int64_t tokens, int64_t d) {
  QARAC_CHECK(batch >= 0 && tokens >= 0 && d >= 0, op, ": negative size (batch ", batch,
              ", tokens ", tokens, ", d ", d, ")");
}

}  // namespace

void segment_sum(DType dtype, const void* x, const int32_t* offsets, int64_t batch, int64_t d,
                 void* out) {
  check_sizes("segment_sum", batch, 0, d);
  if (batch == 0 || d == 0) return;
  const dim3 grid = sequence_grid("segment_sum", batch, d);
  dispatch_compute(dtype, "segment_sum", [&](auto tag) {
    using T = decltype(tag);
    segment_sum_kernel<T><<<grid, kColumnThreads, 0, stream()>>>(
        static_cast<const T*>(x), nullptr, offsets, d, static_cast<T*>(out));
    QARAC_CHECK_LAUNCH();
  });
}

void segment_sum_backward(DType dtype, const void* dout, const int32_t* offsets, int64_t batch,
                          int64_t tokens, int64_t d, void* dx, bool accumulate) {
  check_sizes("segment_sum_backward", batch, tokens, d);
  if (batch == 0 || tokens == 0 || d == 0) return;
  const dim3 grid = sequence_grid("segment_sum_backward", batch, d);
  dispatch_compute(dtype, "segment_sum_backward", [&](auto tag) {
    using T = decltype(tag);
    segment_broadcast_kernel<T><<<grid, kColumnThreads, 0, stream()>>>(
        static_cast<const T*>(dout), offsets, d, static_cast<T*>(dx), accumulate);
    QARAC_CHECK_LAUNCH();
  });
}

void pooling_forward(DType dtype, const void* x, const void* l, const void* g,
                     const int32_t* offsets, int64_t batch, int64_t tokens, int64_t d, double eps,
                     void* v, float* a) {
  check_sizes("pooling_forward", batch, tokens, d);
  if (batch == 0) return;
  dispatch_compute(dtype, "pooling_forward", [&](auto tag) {
    using T = decltype(tag);
    if (tokens > 0) {
      pooling_scores_kernel<T><<<token_grid(tokens), kRowWarps * kWarpSize, 0, stream()>>>(
          static_cast<const T*>(l), static_cast<const T*>(g), offsets, batch, tokens, d,
          static_cast<float>(eps), a);
      QARAC_CHECK_LAUNCH();
    }
    if (d > 0) {
      segment_sum_kernel<T><<<sequence_grid("pooling_forward", batch, d), kColumnThreads, 0,
                              stream()>>>(static_cast<const T*>(x), a, offsets, d,
                                          static_cast<T*>(v));
      QARAC_CHECK_LAUNCH();
    }
  });
}

void pooling_backward(DType dtype, const void* dv, const void* x, const void* l, const void* g,
                      const float* a, const int32_t* offsets, int64_t batch, int64_t tokens,
                      int64_t d, double eps, void* dx, void* dl, void* dg) {
  check_sizes("pooling_backward", batch, tokens, d);
  if (batch == 0 || d == 0) return;
  const dim3 grid = sequence_grid("pooling_backward", batch, d);
  // l_factor [T] then g_factor [T]. Released when this function returns, with the kernels still
  // queued: safe, the caching allocator hands the block only to work queued after them.
  Buffer factors(static_cast<size_t>(2 * tokens) * sizeof(float), Device::cuda(context().device));
  float* l_factor = static_cast<float*>(factors.data());
  float* g_factor = l_factor + tokens;
  dispatch_compute(dtype, "pooling_backward", [&](auto tag) {
    using T = decltype(tag);
    if (tokens > 0) {
      pooling_backward_tokens_kernel<T><<<token_grid(tokens), kRowWarps * kWarpSize, 0,
                                          stream()>>>(
          static_cast<const T*>(dv), static_cast<const T*>(x), static_cast<const T*>(l),
          static_cast<const T*>(g), a, offsets, batch, tokens, d, static_cast<float>(eps),
          static_cast<T*>(dx), static_cast<T*>(dl), l_factor, g_factor);
      QARAC_CHECK_LAUNCH();
    }
    pooling_dg_kernel<T><<<grid, kColumnThreads, 0, stream()>>>(
        static_cast<const T*>(l), static_cast<const T*>(g), l_factor, g_factor, offsets, d,
        static_cast<T*>(dg));
    QARAC_CHECK_LAUNCH();
  });
}

}  // namespace qarac::cuda
