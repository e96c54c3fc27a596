// Softmax cross-entropy over rows of logits on CUDA, its gradient written in the same kernel and
// possibly in place over the logits (the LM head's [tokens, vocab] logits become their gradient,
// and no probabilities are ever stored). Per row x with target t, over the valid columns only:
//   m = max_j x_j,  S = Σ_j exp(x_j - m),  loss = (m - x_t) + log S,
//   dloss/dx_j = dloss · w_row · (exp(x_j - m - log S) - [j = t]),
// with w_row the row's weight (1 without weights), the same expressions as the CPU reference;
// columns at or past valid_cols (a vocabulary padded to a GEMM-friendly width) get gradient 0,
// as do the rows whose target is ignore_index.
//
// One block of 256 threads per row. Pass 1 reads the row once, each thread keeping an online
// (running max, sum of exp relative to it) pair over its 16-byte packs, rescaling the sum when
// the max grows; the pairs are then merged across the block. Pass 2 re-reads the row (largely
// from L2: a 50304-column bf16 row is 100 KB) and writes the gradient. Each element is read and
// written by the same thread, and the target's logit is read before the first barrier, so the
// gradient may overwrite the logits.
#include "kernels/cuda/cross_entropy.cuh"

#include <cmath>

#include "kernels/cuda/context.cuh"
#include "kernels/cuda/device_utils.cuh"

namespace qarac::cuda {
namespace {

constexpr int kThreads = 256;

// The log-sum-exp state of a set of values: their max m and Σ exp(x - m). An empty set is
// (-inf, 0), which merges as the identity.
struct MaxSum {
  float max, sum;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return a;  // both empty
  return {m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

// Merges every thread's pair; every thread gets the block's. `scratch` holds one pair per warp.
__device__ MaxSum block_merge(MaxSum x, MaxSum* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    x = merge(x, {__shfl_xor_sync(0xffffffffu, x.max, offset),
                  __shfl_xor_sync(0xffffffffu, x.sum, offset)});
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  const int warps = blockDim.x / kWarpSize;
  x = lane < warps ? scratch[lane] : MaxSum{-INFINITY, 0.f};
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    x = merge(x, {__shfl_xor_sync(0xffffffffu, x.max, offset),
                  __shfl_xor_sync(0xffffffffu, x.sum, offset)});
  return x;
}

template <class T, int N>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_kernel(const T* logits, const int32_t* targets, int64_t cols, int64_t valid,
                         int32_t ignore_index, float* losses, T* dlogits, float dloss,
                         const float* row_weights) {
  __shared__ MaxSum scratch[kThreads / kWarpSize];
  const int64_t row = blockIdx.x;
  const T* x = logits + row * cols;
  const int32_t target = targets[row];

  if (target == ignore_index) {
    if (threadIdx.x == 0) losses[row] = 0.f;
    if (dlogits) {
      Packed<T, N> zero;
#pragma unroll
      for (int k = 0; k < N; ++k) zero.v[k] = from_float<T>(0.f);
      for (int64_t c = static_cast<int64_t>(threadIdx.x) * N; c < cols; c += kThreads * N)
        store_packed<N>(dlogits + row * cols + c, zero);
    }
    return;
  }

  // The target's logit, read before any thread can overwrite it (the first barrier is in
  // block_merge); only thread 0 uses it.
  const float x_target = threadIdx.x == 0 ? to_float(x[target]) : 0.f;

  // Pass 1: online max and sum of exponentials over this thread's valid elements.
  MaxSum state = {-INFINITY, 0.f};
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * N; c < valid; c += kThreads * N) {
    const Packed<T, N> v = load_packed<N>(x + c);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      if (c + k >= valid) break;
      const float xj = to_float(v.v[k]);
      if (xj == -INFINITY) continue;  // exp(-inf) = 0; exp(-inf - (-inf)) would be NaN
      if (xj > state.max) {
        state.sum = state.sum * expf(state.max - xj) + 1.f;  // exp(-inf) = 0 on the first
        state.max = xj;
      } else {
        state.sum += expf(xj - state.max);
      }
    }
  }
  const MaxSum total = block_merge(state, scratch);
  const float log_sum = logf(total.sum);
  if (threadIdx.x == 0) losses[row] = (total.max - x_target) + log_sum;
  if (!dlogits) return;

  // Pass 2: dloss · w_row · (softmax - onehot), 0 past the valid columns.
  const float scale = row_weights ? dloss * row_weights[row] : dloss;
  T* dx = dlogits + row * cols;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * N; c < cols; c += kThreads * N) {
    const Packed<T, N> v = load_packed<N>(x + c);
    Packed<T, N> out;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const int64_t j = c + k;
      float g = 0.f;
      if (j < valid) {
        g = scale * expf((to_float(v.v[k]) - total.max) - log_sum);
        if (j == target) g -= scale;
      }
      out.v[k] = from_float<T>(g);
    }
    store_packed<N>(dx + c, out);
  }
}

}  // namespace

void softmax_cross_entropy(DType dtype, const void* logits, const int32_t* targets, int64_t rows,
                           int64_t cols, int64_t valid_cols, int32_t ignore_index, float* losses,
                           void* dlogits, double dloss, const float* row_weights) {
  const int64_t valid = valid_cols < 0 ? cols : valid_cols;
  QARAC_CHECK(valid > 0 && valid <= cols, "softmax_cross_entropy: valid_cols ", valid_cols,
              " outside [1, ", cols, "]");
  QARAC_CHECK(rows <= INT32_MAX, "softmax_cross_entropy: ", rows, " rows exceed the grid");
  if (rows == 0) return;
  dispatch_compute(dtype, "softmax_cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    constexpr int kN = kPack16<T>;
    const T* in = static_cast<const T*>(logits);
    T* grad = static_cast<T*>(dlogits);
    const float scale = static_cast<float>(dloss);
    const unsigned blocks = static_cast<unsigned>(rows);
    if (cols % kN == 0 && aligned16(logits) && aligned16(dlogits))
      cross_entropy_kernel<T, kN><<<blocks, kThreads, 0, stream()>>>(
          in, targets, cols, valid, ignore_index, losses, grad, scale, row_weights);
    else
      cross_entropy_kernel<T, 1><<<blocks, kThreads, 0, stream()>>>(
          in, targets, cols, valid, ignore_index, losses, grad, scale, row_weights);
    QARAC_CHECK_LAUNCH();
  });
}

}  // namespace qarac::cuda
