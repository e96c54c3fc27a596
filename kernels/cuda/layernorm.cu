// LayerNorm over the last dimension on CUDA, with the post-LN residual add fused into the forward
// pass. Per row of C elements, x̂ = (x - μ) r, r = 1/sqrt(σ² + eps) (biased variance):
//   forward:  y = x̂ γ + β, with μ and σ² in f32 in two passes (the mean, then Σ (x - μ)²), as the
//             CPU reference, which avoids the cancellation of E[x²] - μ² when |μ| >> σ; NaN where
//             Σ (x - μ)² overflows;
//   backward: g = dy γ, dx = r (g - mean(g) - x̂ mean(g x̂)); dγ += Σ_rows dy x̂, dβ += Σ_rows dy.
//
// Row kernels: one warp per row, eight rows per 256-thread block; lane l owns the 16-byte packs
// l, l + 32, ... of its row in every pass, so each element is read and written by one thread only,
// which makes in-place use (y or sum aliasing a or b, dx aliasing dy) safe. The forward pass's
// later passes re-read the row, which the first has just brought into L1/L2 (1.5 KB for d = 768
// in bf16): DRAM sees about one read of each input and one write of each output.
// With the residual, the sum is rounded to the storage dtype before the statistics are taken,
// so the saved sum (the backward pass's x) is exactly what was normalised.
// The dropout of a post-LN block's branch rides along (dropout.cu's mask, device_utils.cuh's
// row_mask): the forward pass drops elements of a as it loads them, the backward pass writes the
// branch's gradient, dx dropped, beside dx. Each value is rounded where the separate dropout op
// rounds it, so the fused pass gives the same bits and saves that op's read, write and launch.
//
// dγ and dβ are column sums over all rows, taken in column_sums' order (device_utils.cuh; no float
// atomics, so replicas on different ranks get the same bits). The same sums can take the
// branch's gradient too, the bias gradient of the linear layer before the block's residual add,
// with bias_backward's bits: that layer's own pass over it and its launches are saved. Rows of up
// to 1024 elements in 16-byte packs (every RoBERTa size) take one kernel: a block takes a chunk of
// the column sums' rows, keeps their column sums in registers and writes dx beside them, so DRAM
// sees dy and x once (two launches with several chunks, the second adding the chunk sums).
// Other rows take dx by rows, then the sums by columns, which read dy and x again.
#include "kernels/cuda/layernorm.cuh"

#include <type_traits>

#include "core/memory.h"
#include "kernels/cuda/context.cuh"
#include "kernels/cuda/device_utils.cuh"

namespace qarac::cuda {
namespace {

// ---- Kernels ------------------------------------------------------------------------------------

constexpr int kRowsPerBlock = 8;  // one warp each

// The pack of N elements at column c of a row whose branch dropout mask is `mask`: its kept
// elements scaled, the others 0, rounded as dropout.cu rounds them.
template <int N, class T>
__device__ __forceinline__ Packed<T, N> dropped(const RowDropout& drop, const RowMask& mask, int64_t c,
                                                const Packed<T, N>& x) {
  const uint32_t kept = kept_bits<N>(drop, mask, c);
  Packed<T, N> out;
#pragma unroll
  for (int k = 0; k < N; ++k)
    out.v[k] = from_float<T>((kept >> k) & 1u ? to_float(x.v[k]) * drop.keep_scale : 0.f);
  return out;
}

// Row `blockIdx.x * 8 + warp`; b null for a plain LayerNorm of a (then sum is unused).
template <class T, int N>
__global__ void layernorm_forward_kernel(const T* a, const T* b, const T* gamma, const T* beta,
                                         float eps, int64_t rows, int64_t cols, T* sum, T* y,
                                         float* mean, float* rstd, RowDropout drop) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (row >= rows) return;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t offset = row * cols;
  const T* x = b ? sum + offset : a + offset;  // the normalised row, once formed
  const float inv_cols = 1.f / static_cast<float>(cols);

  // Pass 1: form the residual sum (rounded to T) and the mean.
  const RowMask mask = drop.threshold ? row_mask(drop, row) : RowMask{};
  float total = 0.f;
  for (int64_t c = static_cast<int64_t>(lane) * N; c < cols; c += kWarpSize * N) {
    Packed<T, N> v = load_packed<N>(a + offset + c);
    if (drop.threshold) {
      v = dropped<N>(drop, mask, c, v);
    }
    if (b) {
      const Packed<T, N> w = load_packed<N>(b + offset + c);
#pragma unroll
      for (int k = 0; k < N; ++k) v.v[k] = from_float<T>(to_float(v.v[k]) + to_float(w.v[k]));
      store_packed<N>(sum + offset + c, v);
    }
#pragma unroll
    for (int k = 0; k < N; ++k) total += to_float(v.v[k]);
  }
  const float mu = warp_sum(total) * inv_cols;

  // Pass 2: the variance about the mean.
  float sq = 0.f;
  for (int64_t c = static_cast<int64_t>(lane) * N; c < cols; c += kWarpSize * N) {
    const Packed<T, N> v = load_packed<N>(x + c);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float centred = to_float(v.v[k]) - mu;
      sq += centred * centred;
    }
  }
  // NaN where the squares overflow, as the CPU reference (r = 0 would make the row β, finite).
  const float squares = warp_sum(sq);
  const float rs = squares < INFINITY ? 1.f / sqrtf(squares * inv_cols + eps) : NAN;

  // Pass 3: normalise, scale and shift.
  for (int64_t c = static_cast<int64_t>(lane) * N; c < cols; c += kWarpSize * N) {
    const Packed<T, N> v = load_packed<N>(x + c);
    const Packed<T, N> g = load_packed<N>(gamma + c), s = load_packed<N>(beta + c);
    Packed<T, N> out;
#pragma unroll
    for (int k = 0; k < N; ++k)
      out.v[k] = from_float<T>((to_float(v.v[k]) - mu) * rs * to_float(g.v[k]) + to_float(s.v[k]));
    store_packed<N>(y + offset + c, out);
  }
  if (lane == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
}

// dx for row `blockIdx.x * 8 + warp`: pass 1 takes mean(g) and mean(g x̂), pass 2 writes dx and,
// with dbranch, dx dropped. The path for rows too wide for layernorm_backward_kernel's registers or
// not in 16-byte packs.
template <class T, int N>
__global__ void layernorm_dx_kernel(const T* dy, const T* x, const T* gamma, const float* mean,
                                    const float* rstd, int64_t rows, int64_t cols, T* dx,
                                    RowDropout drop, T* dbranch) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (row >= rows) return;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t offset = row * cols;
  const float mu = mean[row], rs = rstd[row];
  const float inv_cols = 1.f / static_cast<float>(cols);

  float sum_g = 0.f, sum_gx = 0.f;
  for (int64_t c = static_cast<int64_t>(lane) * N; c < cols; c += kWarpSize * N) {
    const Packed<T, N> d = load_packed<N>(dy + offset + c), v = load_packed<N>(x + offset + c);
    const Packed<T, N> g = load_packed<N>(gamma + c);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float grad = to_float(d.v[k]) * to_float(g.v[k]);
      sum_g += grad;
      sum_gx += grad * ((to_float(v.v[k]) - mu) * rs);
    }
  }
  const float mean_g = warp_sum(sum_g) * inv_cols, mean_gx = warp_sum(sum_gx) * inv_cols;

  const RowMask mask = dbranch ? row_mask(drop, row) : RowMask{};
  for (int64_t c = static_cast<int64_t>(lane) * N; c < cols; c += kWarpSize * N) {
    const Packed<T, N> d = load_packed<N>(dy + offset + c), v = load_packed<N>(x + offset + c);
    const Packed<T, N> g = load_packed<N>(gamma + c);
    Packed<T, N> out;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float xhat = (to_float(v.v[k]) - mu) * rs;
      out.v[k] = from_float<T>(rs * (to_float(d.v[k]) * to_float(g.v[k]) - mean_g - xhat * mean_gx));
    }
    if (dbranch) {
      store_packed<N>(dbranch + offset + c, dropped<N>(drop, mask, c, out));
    }
    store_packed<N>(dx + offset + c, out);
  }
}

// The column values of dγ, dβ and (K = 3) the branch's bias gradient at (r, c), for column_sums
// on the wide-row path: dy x̂, dy and the stored branch gradient.
template <class T, int K>
struct ParamGradValues {
  const T *dy, *x;
  const float *mean, *rstd;
  const T* branch;
  int64_t cols;
  __device__ ColumnValues<K> operator()(int64_t r, int64_t c) const {
    const int64_t i = r * cols + c;
    const float d = to_float(dy[i]);
    ColumnValues<K> v;
    v.v[0] = d * ((to_float(x[i]) - mean[r]) * rstd[r]);
    v.v[1] = d;
    if constexpr (K == 3) v.v[2] = to_float(branch[i]);
    return v;
  }
};

// The whole backward pass over one chunk of column_sums' rows (kColumnChunk = 32) per block, the
// column sums held in registers: warp w takes the chunk's rows w, w + 8, w + 16, w + 24 in order,
// lane l the packs l, l + 32, ... (P of them) of each. A row is read twice, as by
// layernorm_dx_kernel (the second read from L1): for mean(g), mean(g x̂), then to write dx (and
// dbranch) and add each element's dy x̂, dy (and bias gradient: dbranch, or dx without dropout,
// as stored) to the lane's column sums, which are column_sums' lane sums (lane = warp); the block
// then adds them in warp order into the chunk sums. So the sums have column_sums' bits (the bias
// gradient bias_backward's), and the row-then-column path's read of dy and x from DRAM for the
// sums (and of the branch) is saved. K = 3 with the bias gradient. dx may be dy: each element is
// read and written by one thread, read first.
// Per lane and sum, P N elements in registers: up to 32. Up to 24 (d = 768 in bf16), registers are
// capped for two blocks per SM (16 warps to keep loads in flight), at the cost of a few spills
// to L1 with the bias sum.
constexpr int kMaxLaneElements = 32;
constexpr int min_blocks_per_sm(int lane_elements) { return lane_elements <= 24 ? 2 : 1; }

template <class T, int N, int P, int K>
__global__ void __launch_bounds__(kRowsPerBlock * kWarpSize, min_blocks_per_sm(N * P))
    layernorm_backward_kernel(const T* dy, const T* x, const T* gamma, const float* mean,
                              const float* rstd, int64_t rows, int64_t cols, T* dx,
                              RowDropout drop, T* dbranch, float* partial, ColumnOutputs<K> out) {
  static_assert(kRowsPerBlock == kColumnLanes && kColumnChunk % kRowsPerBlock == 0,
                "a warp is one lane of column_sums");
  constexpr int kWidth = kWarpSize * N * P;
  constexpr int kF = kPack16<float>;  // the lane sums go to shared memory 16 bytes at a time
  static_assert(N % kF == 0, "whole packs of floats per pack of T");
  __shared__ __align__(16) float lanes[kColumnLanes][kWidth];
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t chunks = gridDim.x, chunk = blockIdx.x;
  const int64_t begin = chunk * kColumnChunk, end = min(begin + kColumnChunk, rows);
  const float inv_cols = 1.f / static_cast<float>(cols);
  const auto column = [&](int p) { return static_cast<int64_t>(lane + p * kWarpSize) * N; };

  Packed<T, N> g[P] = {};  // zeros: the compiler cannot see that columns past cols go unread
#pragma unroll
  for (int p = 0; p < P; ++p)
    if (column(p) < cols) g[p] = load_packed<N>(gamma + column(p));
  float sums[K][P][N] = {};

  for (int64_t row = begin + warp; row < end; row += kRowsPerBlock) {
    const int64_t offset = row * cols;
    const float mu = mean[row], rs = rstd[row];
    float sum_g = 0.f, sum_gx = 0.f;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      if (column(p) >= cols) continue;
      const Packed<T, N> d = load_packed<N>(dy + offset + column(p)),
                         v = load_packed<N>(x + offset + column(p));
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const float grad = to_float(d.v[k]) * to_float(g[p].v[k]);
        sum_g += grad;
        sum_gx += grad * ((to_float(v.v[k]) - mu) * rs);
      }
    }
    const float mean_g = warp_sum(sum_g) * inv_cols, mean_gx = warp_sum(sum_gx) * inv_cols;

    const RowMask mask = dbranch ? row_mask(drop, row) : RowMask{};
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int64_t c = column(p);
      if (c >= cols) continue;
      const Packed<T, N> d = load_packed<N>(dy + offset + c), v = load_packed<N>(x + offset + c);
      Packed<T, N> grad;
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const float dyk = to_float(d.v[k]), xhat = (to_float(v.v[k]) - mu) * rs;
        grad.v[k] = from_float<T>(rs * (dyk * to_float(g[p].v[k]) - mean_g - xhat * mean_gx));
        sums[0][p][k] += dyk * xhat;
        sums[1][p][k] += dyk;
      }
      if (dbranch) {
        const Packed<T, N> branch = dropped<N>(drop, mask, c, grad);
        store_packed<N>(dbranch + offset + c, branch);
        if constexpr (K == 3) {
#pragma unroll
          for (int k = 0; k < N; ++k) sums[2][p][k] += to_float(branch.v[k]);
        }
      } else if constexpr (K == 3) {
#pragma unroll
        for (int k = 0; k < N; ++k) sums[2][p][k] += to_float(grad.v[k]);
      }
      store_packed<N>(dx + offset + c, grad);
    }
  }

  // The chunk sums: lanes (warps) added in order, as column_sums_partial_kernel. A row holds
  // whole packs on this path, so a lane's sums are stored 16 bytes at a time (an element at a
  // time, lane l's words were l·N apart: 4-way bank conflicts in f32, 8-way in bf16).
#pragma unroll
  for (int s = 0; s < K; ++s) {
#pragma unroll
    for (int p = 0; p < P; ++p) {
      if (column(p) >= cols) continue;
#pragma unroll
      for (int k = 0; k < N; k += kF) {
        Packed<float, kF> four;
#pragma unroll
        for (int j = 0; j < kF; ++j) four.v[j] = sums[s][p][k + j];
        store_packed<kF>(&lanes[warp][column(p) + k], four);
      }
    }
    __syncthreads();
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float total = 0.f;
#pragma unroll
      for (int l = 0; l < kColumnLanes; ++l) total += lanes[l][c];
      if (chunks == 1)
        out.out[s][c] += total;
      else
        partial[(s * chunks + chunk) * cols + c] = total;
    }
    __syncthreads();  // the lanes are written again for the next sum
  }
}

// Launches layernorm_backward_kernel with the fewest packs per lane (from Ps) that hold a row of
// `packs` packs per lane, within kMaxLaneElements; false when none does.
template <int N, int P, int... Ps, class Launch>
bool launch_with_packs(int64_t packs, const Launch& launch) {
  if constexpr (P * N <= kMaxLaneElements) {
    if (packs <= P) {
      launch(std::integral_constant<int, P>{});
      return true;
    }
    if constexpr (sizeof...(Ps) > 0) return launch_with_packs<N, Ps...>(packs, launch);
  }
  return false;
}

}  // namespace

// ---- Launchers ----------------------------------------------------------------------------------

void layernorm_forward(DType dtype, const void* a, const void* b, const void* gamma,
                       const void* beta, double eps, int64_t rows, int64_t cols, void* sum,
                       void* y, float* mean, float* rstd, const RowDropout& drop) {
  QARAC_CHECK(!b || sum, "layernorm_forward: a residual b needs a sum output");
  QARAC_CHECK(b || drop.threshold == 0, "layernorm_forward: a branch dropout needs the residual b");
  if (rows == 0) return;
  QARAC_CHECK(cols > 0, "layernorm_forward: rows of zero columns have no mean");
  dispatch_compute(dtype, "layernorm_forward", [&](auto tag) {
    using T = decltype(tag);
    constexpr int kN = kPack16<T>;
    const T *ta = static_cast<const T*>(a), *tb = static_cast<const T*>(b);
    const T *tg = static_cast<const T*>(gamma), *tbeta = static_cast<const T*>(beta);
    T *ts = static_cast<T*>(sum), *ty = static_cast<T*>(y);
    const bool vector = cols % kN == 0 && aligned16(a) && aligned16(b) && aligned16(sum) &&
                        aligned16(y) && aligned16(gamma) && aligned16(beta);
    const unsigned blocks = static_cast<unsigned>(ceil_div(rows, kRowsPerBlock));
    const int threads = kRowsPerBlock * kWarpSize;
    const float e = static_cast<float>(eps);
    if (vector)
      layernorm_forward_kernel<T, kN><<<blocks, threads, 0, stream()>>>(
          ta, tb, tg, tbeta, e, rows, cols, ts, ty, mean, rstd, drop);
    else
      layernorm_forward_kernel<T, 1><<<blocks, threads, 0, stream()>>>(
          ta, tb, tg, tbeta, e, rows, cols, ts, ty, mean, rstd, drop);
    QARAC_CHECK_LAUNCH();
  });
}

void layernorm_backward(DType dtype, const void* dy, const void* x, const void* gamma,
                        const float* mean, const float* rstd, int64_t rows, int64_t cols,
                        void* dx, float* dgamma, float* dbeta, const RowDropout& drop,
                        void* dbranch, float* dbias_branch, LayerNormBackwardPath path) {
  QARAC_CHECK(dbranch != dx, "layernorm_backward: dbranch must not be dx");
  QARAC_CHECK(!dbias_branch || dx != dy, "layernorm_backward: with dbias_branch, dx must not be dy");
  if (rows == 0 || cols == 0) return;
  dispatch_compute(dtype, "layernorm_backward", [&](auto tag) {
    using T = decltype(tag);
    constexpr int kN = kPack16<T>;
    const T *tdy = static_cast<const T*>(dy), *tx = static_cast<const T*>(x);
    const T* tg = static_cast<const T*>(gamma);
    T *tdx = static_cast<T*>(dx), *tbranch = static_cast<T*>(dbranch);
    const bool vector = cols % kN == 0 && aligned16(dy) && aligned16(x) && aligned16(gamma) &&
                        aligned16(dx) && aligned16(dbranch);
    const auto one_pass = [&](auto packs) {
      constexpr int P = decltype(packs)::value;
      const int64_t chunks = ceil_div(rows, kColumnChunk);
      const Buffer partial = column_partials(dbias_branch ? 3 : 2, chunks, cols);
      float* partial_data = static_cast<float*>(partial.data());
      const unsigned blocks = static_cast<unsigned>(chunks);
      const int threads = kRowsPerBlock * kWarpSize;
      if (dbias_branch) {
        const ColumnOutputs<3> out{{dgamma, dbeta, dbias_branch}};
        layernorm_backward_kernel<T, kN, P, 3><<<blocks, threads, 0, stream()>>>(
            tdy, tx, tg, mean, rstd, rows, cols, tdx, drop, tbranch, partial_data, out);
        QARAC_CHECK_LAUNCH();
        column_sums_final(partial_data, chunks, cols, out);
      } else {
        const ColumnOutputs<2> out{{dgamma, dbeta}};
        layernorm_backward_kernel<T, kN, P, 2><<<blocks, threads, 0, stream()>>>(
            tdy, tx, tg, mean, rstd, rows, cols, tdx, drop, tbranch, partial_data, out);
        QARAC_CHECK_LAUNCH();
        column_sums_final(partial_data, chunks, cols, out);
      }
    };
    if (path == LayerNormBackwardPath::automatic && vector &&
        launch_with_packs<kN, 1, 2, 3, 4, 6, 8>(ceil_div(cols, kWarpSize * kN), one_pass))
      return;

    // Rows too wide to hold, or not in packs: dx by rows, then the sums by columns. Without the
    // bias gradient the sums first: they read dy, which dx may overwrite in place. With it, after
    // dx, whose values they sum (dx is not dy then).
    const auto dx_pass = [&] {
      const unsigned blocks = static_cast<unsigned>(ceil_div(rows, kRowsPerBlock));
      const int threads = kRowsPerBlock * kWarpSize;
      if (vector)
        layernorm_dx_kernel<T, kN><<<blocks, threads, 0, stream()>>>(tdy, tx, tg, mean, rstd, rows,
                                                                     cols, tdx, drop, tbranch);
      else
        layernorm_dx_kernel<T, 1><<<blocks, threads, 0, stream()>>>(tdy, tx, tg, mean, rstd, rows,
                                                                    cols, tdx, drop, tbranch);
      QARAC_CHECK_LAUNCH();
    };
    if (dbias_branch) {
      dx_pass();
      column_sums(ParamGradValues<T, 3>{tdy, tx, mean, rstd, tbranch ? tbranch : tdx, cols}, rows,
                  cols, ColumnOutputs<3>{{dgamma, dbeta, dbias_branch}});
    } else {
      column_sums(ParamGradValues<T, 2>{tdy, tx, mean, rstd, nullptr, cols}, rows, cols,
                  ColumnOutputs<2>{{dgamma, dbeta}});
      dx_pass();
    }
  });
}

}  // namespace qarac::cuda
