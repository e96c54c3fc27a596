// LayerNorm over the last dimension on CUDA, with the post-LN residual add fused into the forward
// pass. Per row of C elements, x̂ = (x - μ) r, r = 1/sqrt(σ² + eps) (biased variance):
//   forward:  y = x̂ γ + β, with μ and σ² in f32 in two passes (the mean, then Σ (x - μ)²), as the
//             CPU reference, which avoids the cancellation of E[x²] - μ² when |μ| >> σ;
//   backward: g = dy γ, dx = r (g - mean(g) - x̂ mean(g x̂)); dγ += Σ_rows dy x̂, dβ += Σ_rows dy.
//
// Row kernels (forward, dx): one warp per row, eight rows per 256-thread block; lane l owns the
// 16-byte packs l, l + 32, ... of its row in every pass, so each element is read and written by
// one thread only, which makes in-place use (y or sum aliasing a or b, dx aliasing dy) safe. The
// later passes re-read the row, which the first pass has just brought into L1/L2 (1.5 KB for
// d = 768 in bf16): DRAM sees about one read of each input and one write of each output.
// With the residual, the sum is rounded to the storage dtype before the statistics are taken,
// so the saved sum (the backward pass's x) is exactly what was normalised.
// The dropout of a post-LN block's branch rides along (dropout.cu's mask, device_utils.cuh's
// row_mask): the forward pass drops elements of a as it loads them, the backward pass writes the
// branch's gradient, dx dropped, beside dx. Each value is rounded where the separate dropout op
// rounds it, so the fused pass gives the same bits and saves that op's read, write and launch.
//
// dγ and dβ are column sums over all rows; no float atomics, so that replicas on different ranks
// get the same bits: per-block partial sums over fixed chunks of rows (each in a fixed order),
// then one thread per column adds the chunks in order (as elementwise.cu's bias gradient). The
// same pass can sum the branch's gradient too, the bias gradient of the linear layer before the
// block's residual add, in bias_backward's order: that layer's own pass over it and its two
// launches are saved.
#include "kernels/cuda/layernorm.cuh"

#include "core/memory.h"
#include "kernels/cuda/context.cuh"
#include "kernels/cuda/device_utils.cuh"

namespace qarac::cuda {
namespace {

// ---- Kernels ------------------------------------------------------------------------------------

constexpr int kRowsPerBlock = 8;  // one warp each

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
      const uint32_t kept = kept_bits<N>(drop, mask, c);
#pragma unroll
      for (int k = 0; k < N; ++k)
        v.v[k] = from_float<T>((kept >> k) & 1u ? to_float(v.v[k]) * drop.keep_scale : 0.f);
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
  const float rs = 1.f / sqrtf(warp_sum(sq) * inv_cols + eps);

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
// with dbranch, dx dropped.
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
      const uint32_t kept = kept_bits<N>(drop, mask, c);
      Packed<T, N> branch;
#pragma unroll
      for (int k = 0; k < N; ++k)
        branch.v[k] = from_float<T>((kept >> k) & 1u ? to_float(out.v[k]) * drop.keep_scale : 0.f);
      store_packed<N>(dbranch + offset + c, branch);
    }
    store_packed<N>(dx + offset + c, out);
  }
}

// dγ, dβ (and the branch's bias gradient) pass 1: block (kTileCols, kRowLanes) sums kTileCols
// columns over one chunk of kChunkRows rows, thread (tx, ty) taking rows ty, ty + kRowLanes, ...
// in order, then the lanes of a column in lane order. With a single chunk the sums are final and
// are added to the gradients directly; otherwise sum s goes to partial[s][chunk, c] for pass 2.
// `branch` null: no bias gradient (and dbias unused). The layout and order are column_sums'
// (device_utils.cuh), so the bias gradient has bias_backward's bits.
constexpr int kTileCols = kColumnTile, kRowLanes = kColumnLanes;
constexpr int64_t kChunkRows = kColumnChunk;

template <class T>
__global__ void layernorm_param_grad_partial_kernel(const T* dy, const T* x, const float* mean,
                                                    const float* rstd, const T* branch,
                                                    int64_t rows, int64_t cols, float* partial,
                                                    float* dgamma, float* dbeta, float* dbias) {
  __shared__ float lanes_g[kRowLanes][kTileCols], lanes_b[kRowLanes][kTileCols],
      lanes_bias[kRowLanes][kTileCols];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kTileCols + tx;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * kChunkRows;
  const int64_t end = min(begin + kChunkRows, rows);
  float sum_g = 0.f, sum_b = 0.f, sum_bias = 0.f;
  if (c < cols) {
    for (int64_t r = begin + ty; r < end; r += kRowLanes) {
      const float d = to_float(dy[r * cols + c]);
      sum_g += d * ((to_float(x[r * cols + c]) - mean[r]) * rstd[r]);
      sum_b += d;
      if (branch) sum_bias += to_float(branch[r * cols + c]);
    }
  }
  lanes_g[ty][tx] = sum_g;
  lanes_b[ty][tx] = sum_b;
  lanes_bias[ty][tx] = sum_bias;
  __syncthreads();
  if (ty != 0 || c >= cols) return;
  float total_g = 0.f, total_b = 0.f, total_bias = 0.f;
#pragma unroll
  for (int k = 0; k < kRowLanes; ++k) {
    total_g += lanes_g[k][tx];
    total_b += lanes_b[k][tx];
    total_bias += lanes_bias[k][tx];
  }
  if (gridDim.y == 1) {
    dgamma[c] += total_g;
    dbeta[c] += total_b;
    if (branch) dbias[c] += total_bias;
  } else {
    const int64_t chunks = gridDim.y;
    partial[blockIdx.y * cols + c] = total_g;
    partial[(chunks + blockIdx.y) * cols + c] = total_b;
    if (branch) partial[(2 * chunks + blockIdx.y) * cols + c] = total_bias;
  }
}

// Pass 2: dγ[c] += Σ_chunks partial[0][chunk, c], dβ[c] and (when given) dbias[c] likewise, in
// chunk order.
__global__ void layernorm_param_grad_final_kernel(const float* partial, int64_t chunks,
                                                  int64_t cols, float* dgamma, float* dbeta,
                                                  float* dbias) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
       c += stride) {
    float total_g = 0.f, total_b = 0.f, total_bias = 0.f;
    for (int64_t k = 0; k < chunks; ++k) {
      total_g += partial[k * cols + c];
      total_b += partial[(chunks + k) * cols + c];
      if (dbias) total_bias += partial[(2 * chunks + k) * cols + c];
    }
    dgamma[c] += total_g;
    dbeta[c] += total_b;
    if (dbias) dbias[c] += total_bias;
  }
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
                        void* dbranch, float* dbias_branch) {
  QARAC_CHECK(dbranch != dx, "layernorm_backward: dbranch must not be dx");
  QARAC_CHECK(!dbias_branch || dx != dy, "layernorm_backward: with dbias_branch, dx must not be dy");
  if (rows == 0 || cols == 0) return;
  const int64_t chunks = ceil_div(rows, kChunkRows);
  QARAC_CHECK(chunks <= 65535, "layernorm_backward: ", rows, " rows exceed the grid's ",
              65535 * kChunkRows);
  // Partial sums for dγ, dβ (and the bias) from the project's allocator, released when this function
  // returns; a later allocation that reuses the block is ordered after these kernels by the
  // stream.
  int device = 0;
  QARAC_CHECK_CUDA(cudaGetDevice(&device));
  const int64_t sums = dbias_branch ? 3 : 2;
  const Buffer partial(chunks > 1 ? static_cast<size_t>(sums * chunks * cols) * sizeof(float) : 0,
                       Device::cuda(device));
  float* partial_data = static_cast<float*>(partial.data());
  dispatch_compute(dtype, "layernorm_backward", [&](auto tag) {
    using T = decltype(tag);
    constexpr int kN = kPack16<T>;
    const T *tdy = static_cast<const T*>(dy), *tx = static_cast<const T*>(x);
    const T* tg = static_cast<const T*>(gamma);
    T *tdx = static_cast<T*>(dx), *tbranch = static_cast<T*>(dbranch);
    const bool vector = cols % kN == 0 && aligned16(dy) && aligned16(x) && aligned16(gamma) &&
                        aligned16(dx) && aligned16(dbranch);
    const dim3 grid(static_cast<unsigned>(ceil_div(cols, kTileCols)), static_cast<unsigned>(chunks));
    const auto param_grads = [&](const T* branch) {
      layernorm_param_grad_partial_kernel<T><<<grid, dim3(kTileCols, kRowLanes), 0, stream()>>>(
          tdy, tx, mean, rstd, branch, rows, cols, partial_data, dgamma, dbeta, dbias_branch);
      QARAC_CHECK_LAUNCH();
    };
    // Without the bias gradient, the parameter gradients first: they read dy, which dx may
    // overwrite in place. With it, after dx, whose sums they take (dx is not dy then).
    if (!dbias_branch) param_grads(nullptr);
    const unsigned blocks = static_cast<unsigned>(ceil_div(rows, kRowsPerBlock));
    const int threads = kRowsPerBlock * kWarpSize;
    if (vector)
      layernorm_dx_kernel<T, kN><<<blocks, threads, 0, stream()>>>(tdy, tx, tg, mean, rstd, rows,
                                                                   cols, tdx, drop, tbranch);
    else
      layernorm_dx_kernel<T, 1><<<blocks, threads, 0, stream()>>>(tdy, tx, tg, mean, rstd, rows,
                                                                  cols, tdx, drop, tbranch);
    QARAC_CHECK_LAUNCH();
    if (dbias_branch) param_grads(tbranch ? tbranch : tdx);
  });
  if (chunks > 1) {  // reads only the partials: free to follow the dx kernel
    constexpr int kThreads = 256;
    layernorm_param_grad_final_kernel<<<grid_for(cols, kThreads), kThreads, 0, stream()>>>(
        partial_data, chunks, cols, dgamma, dbeta, dbias_branch);
    QARAC_CHECK_LAUNCH();
  }
}

}  // namespace qarac::cuda
