// The optimiser step on CUDA: AdamW and NAdam on the f32 master weights and moments (writing the
// model's compute copy in the same pass), and the squared global gradient norm that clipping
// needs.
//
// adamw_update (and nadam_update, with the same traffic) is one elementwise pass: per element it
// reads param, grad, m, v (16 B) and writes param, m, v and the copy (12 B + 2 or 4 B), so it is
// bound by memory bandwidth; it moves 4 elements per access (16 B of f32) where every pointer
// allows it, scalars otherwise. A packed model is one call however its weight decay is cut: the
// runs with and without decay (biases and LayerNorm weights under decay_exempt bias_norm, about
// 8 a layer) travel in the kernel's parameters, 128 per launch, each run getting its own blocks;
// a launch per run cost about 100 launches per RoBERTa-base model, most of them on runs of 768
// elements.
//
// sum_of_squares covers every gradient tensor (about 125M elements for roberta-base) in two
// passes whose summation order depends on the span sizes alone, so the norm has the same bits on
// every run and on every rank holding the same gradients:
//   1. each span gets a fixed number of blocks ("parts"), from its size; block p of a span sums
//      the squares of a fixed strided subset of the span (per thread in f32, then block_sum's
//      fixed tree) into partials[first_part + p];
//   2. one block sums the partials in index order (per thread, then block_sum) into out[0].
// The spans travel in the kernel's parameters, 64 per launch, so no descriptor is uploaded.
#include "kernels/cuda/optimizer.cuh"

#include <algorithm>
#include <cmath>

#include "core/memory.h"
#include "kernels/cuda/context.cuh"
#include "kernels/cuda/device_utils.cuh"

namespace qarac::cuda {
namespace {

// ---- AdamW --------------------------------------------------------------------------------------

// The per-call constants of the update, formed on the host in double and rounded once to f32.
struct AdamWConstants {
  float decay;      // 1 - lr wd
  float step_size;  // lr / bc1, bc = 1 - β^step
  float sqrt_bc2;   // sqrt(bc2)
  float beta1, rest1, beta2, rest2;  // β and 1 - β
  float eps, grad_scale;

  explicit AdamWConstants(const AdamWArgs& a)
      : decay(static_cast<float>(1.0 - a.lr * a.weight_decay)),
        step_size(static_cast<float>(a.lr / a.bias_correction1)),
        sqrt_bc2(static_cast<float>(std::sqrt(a.bias_correction2))),
        beta1(static_cast<float>(a.beta1)),
        rest1(static_cast<float>(1.0 - a.beta1)),
        beta2(static_cast<float>(a.beta2)),
        rest2(static_cast<float>(1.0 - a.beta2)),
        eps(static_cast<float>(a.eps)),
        grad_scale(static_cast<float>(a.grad_scale)) {}
};

// torch.optim.AdamW for one element, in f32 and in torch's order and form (the CPU reference,
// kernels/cpu/optimizer.cpp, is the same), with g = grad_scale * grad:
//   p ← p (1 - lr wd)                         (decoupled weight decay, from the old p)
//   m ← β1 m + (1 - β1) g,   v ← β2 v + (1 - β2) g²
//   p ← p - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)
__device__ __forceinline__ void update_element(float& p, float grad, float& m, float& v,
                                               const AdamWConstants& k) {
  const float g = k.grad_scale * grad;
  m = k.beta1 * m + k.rest1 * g;
  v = k.beta2 * v + k.rest2 * g * g;
  p = p * k.decay - k.step_size * m / (sqrtf(v) / k.sqrt_bc2 + k.eps);
}

// The runs of one launch: run r covers elements [begin[r], begin[r + 1]) with the decayed
// constants or the exempt ones, and blocks [first_block[r], first_block[r + 1]). 128 runs take
// 128 * 13 + 12 bytes, with the operands and both constants well inside the 4 KB of kernel
// parameters.
constexpr int kChunkRuns = 128;
struct RunChunk {
  int64_t begin[kChunkRuns + 1];
  int32_t first_block[kChunkRuns + 1];
  bool decays[kChunkRuns];
};

constexpr int kUpdateThreads = 256;
// A block takes kUpdateThreads * kUpdatePerThread elements of its run (4 packs of 4 a thread),
// at most kUpdateMaxBlocks blocks a run, the rest by a grid-stride loop: the big runs (the
// embeddings, the FFN weights) fill the GPU, a bias of 768 elements takes one block.
constexpr int64_t kUpdatePerThread = 16;
constexpr int64_t kUpdateMaxBlocks = 4096;

// Both optimizers' update of runs of elements: `Constants` (AdamWConstants, NAdamConstants) picks
// the update_element rule, `decayed` or `exempt` the constants of a run. `copy` (C = float or
// __nv_bfloat16) may be null. Every element is read and written by the thread that owns it.
template <class C, class Constants>
struct MomentUpdate {
  float* param;
  const float* grad;
  float* m;
  float* v;
  C* copy;
  Constants decayed, exempt;

  // Packs of 4 from element i need every f32 operand 16-byte aligned there and the copy aligned
  // to 4 of its elements (8 bytes for bf16).
  __device__ __forceinline__ bool packs_from(int64_t i) const {
    const auto at = [&](const void* p, size_t bytes) {
      return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0;
    };
    return at(param + i, 16) && at(grad + i, 16) && at(m + i, 16) && at(v + i, 16) &&
           at(copy ? copy + i : nullptr, kPack16<float> * sizeof(C));
  }

  template <int N>
  __device__ __forceinline__ void apply(int64_t i, const Constants& k) const {
    Packed<float, N> p = load_packed<N>(param + i), mm = load_packed<N>(m + i),
                     vv = load_packed<N>(v + i);
    const Packed<float, N> g = load_packed<N>(grad + i);
    Packed<C, N> c;
#pragma unroll
    for (int e = 0; e < N; ++e) {
      update_element(p.v[e], g.v[e], mm.v[e], vv.v[e], k);
      c.v[e] = from_float<C>(p.v[e]);
    }
    store_packed<N>(param + i, p);
    store_packed<N>(m + i, mm);
    store_packed<N>(v + i, vv);
    if (copy) store_packed<N>(copy + i, c);
  }
};

template <class Update>
__global__ void moment_update_kernel(const RunChunk chunk, const Update update) {
  // The block's run: the last r with first_block[r] <= block (uniform across the block).
  const int32_t block = static_cast<int32_t>(blockIdx.x);
  int lo = 0, hi = kChunkRuns;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (chunk.first_block[mid] <= block) lo = mid; else hi = mid;
  }
  // Runs past the chunk's last have first_block = the launch's block count, so lo is a real run.
  const int64_t from = chunk.begin[lo], n = chunk.begin[lo + 1] - from;
  const auto k = chunk.decays[lo] ? update.decayed : update.exempt;  // in registers
  const int64_t blocks = chunk.first_block[lo + 1] - chunk.first_block[lo];
  const int64_t first = (block - chunk.first_block[lo]) * int64_t{kUpdateThreads} + threadIdx.x;
  const int64_t stride = blocks * kUpdateThreads;
  constexpr int N = kPack16<float>;
  int64_t scalar_from = 0;  // elements of the run before it were updated in packs
  if (update.packs_from(from)) {
    const int64_t packs = n / N;
    for (int64_t p = first; p < packs; p += stride) update.template apply<N>(from + p * N, k);
    scalar_from = packs * N;
  }
  for (int64_t i = scalar_from + first; i < n; i += stride) update.template apply<1>(from + i, k);
}

// The update of every run, kChunkRuns runs a launch; `decayed` and `exempt` are the constants
// with and without weight decay.
template <class C, class Constants>
void launch_moment_update(float* param, const float* grad, float* m, float* v,
                          const std::vector<UpdateRun>& runs, const Constants& decayed,
                          const Constants& exempt, C* copy) {
  const MomentUpdate<C, Constants> update{param, grad, m, v, copy, decayed, exempt};
  for (size_t first = 0; first < runs.size(); first += kChunkRuns) {
    const size_t count = std::min(runs.size() - first, static_cast<size_t>(kChunkRuns));
    RunChunk chunk{};
    for (size_t r = 0; r < count; ++r) {
      const UpdateRun& run = runs[first + r];
      const int64_t blocks =
          std::min(ceil_div(run.end - run.begin, kUpdateThreads * kUpdatePerThread), kUpdateMaxBlocks);
      chunk.begin[r] = run.begin;
      chunk.decays[r] = run.decays;
      chunk.first_block[r + 1] = chunk.first_block[r] + static_cast<int32_t>(blocks);
    }
    chunk.begin[count] = runs[first + count - 1].end;
    for (size_t r = count + 1; r <= kChunkRuns; ++r) {
      chunk.begin[r] = chunk.begin[count];
      chunk.first_block[r] = chunk.first_block[count];
    }
    const int32_t blocks = chunk.first_block[count];
    if (blocks == 0) continue;
    moment_update_kernel<<<static_cast<unsigned>(blocks), kUpdateThreads, 0, stream()>>>(chunk, update);
    QARAC_CHECK_LAUNCH();
  }
}

// The update with the compute copy written in copy_dtype (no copy when it is null).
template <class Constants>
void moment_update(const char* what, float* param, const float* grad, float* m, float* v,
                   const std::vector<UpdateRun>& runs, const Constants& decayed,
                   const Constants& exempt, DType copy_dtype, void* copy) {
  int64_t at = 0;
  for (size_t r = 0; r < runs.size(); ++r) {
    QARAC_CHECK(runs[r].begin == at && runs[r].end > runs[r].begin, what, ": run ", r, " [",
                runs[r].begin, ", ", runs[r].end, ") does not follow the one before or is empty");
    at = runs[r].end;
  }
  if (copy == nullptr) {
    launch_moment_update<float>(param, grad, m, v, runs, decayed, exempt, nullptr);
    return;
  }
  dispatch_compute(copy_dtype, what, [&](auto tag) {
    using C = decltype(tag);
    launch_moment_update(param, grad, m, v, runs, decayed, exempt, static_cast<C*>(copy));
  });
}

// ---- Sum of squares -------------------------------------------------------------------------------

constexpr int kSumThreads = 256;
// A span gets one block per kSumThreads * kSumPerThread elements, at most kSumMaxParts blocks:
// enough blocks for the large spans (embeddings, FFN weights) to fill the GPU, few enough that
// the partials stay a small buffer that one block sums quickly.
constexpr int64_t kSumPerThread = 16;
constexpr int64_t kSumMaxParts = 1024;
constexpr int kSumFinalThreads = 1024;
// Spans per launch: the chunk is 64 * 24 + 8 bytes, well inside the 4 KB of kernel parameters.
constexpr int kChunkSpans = 64;

struct SpanChunk {
  const void* data[kChunkSpans];
  int64_t n[kChunkSpans];
  // Blocks [first_part[s], first_part[s + 1]) of the launch cover span s.
  int64_t first_part[kChunkSpans + 1];
};

// partials[block] = the block's part of Σ x² of its span.
template <class T>
__global__ void sum_of_squares_parts_kernel(const SpanChunk chunk, float* __restrict__ partials) {
  __shared__ float scratch[kWarpSize];
  const int64_t block = blockIdx.x;
  int s = 0;
  while (chunk.first_part[s + 1] <= block) ++s;  // the same s for the whole block
  const T* x = static_cast<const T*>(chunk.data[s]);
  const int64_t n = chunk.n[s];
  const int64_t parts = chunk.first_part[s + 1] - chunk.first_part[s];
  const int64_t first = (block - chunk.first_part[s]) * blockDim.x + threadIdx.x;
  const int64_t stride = parts * blockDim.x;
  float sum = 0.f;
  int64_t scalar_from = 0;  // elements before it were read in 16-byte packs
  constexpr int N = kPack16<T>;
  if (reinterpret_cast<uintptr_t>(x) % 16 == 0) {
    const int64_t packs = n / N;
    for (int64_t p = first; p < packs; p += stride) {
      const Packed<T, N> xv = load_packed<N>(x + p * N);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const float f = to_float(xv.v[k]);
        sum += f * f;
      }
    }
    scalar_from = packs * N;
  }
  for (int64_t i = scalar_from + first; i < n; i += stride) {
    const float f = to_float(x[i]);
    sum += f * f;
  }
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) partials[block] = sum;
}

// out[0] = Σ partials, thread i summing partials i, i + 1024, ... in order, then block_sum.
__global__ void sum_partials_kernel(const float* __restrict__ partials, int64_t count,
                                    float* __restrict__ out) {
  __shared__ float scratch[kWarpSize];
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) sum += partials[i];
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) out[0] = sum;
}

}  // namespace

void adamw_update(float* param, const float* grad, float* m, float* v,
                  const std::vector<UpdateRun>& runs, const AdamWArgs& args, DType copy_dtype,
                  void* copy) {
  AdamWArgs without_decay = args;
  without_decay.weight_decay = 0;
  moment_update("adamw_update", param, grad, m, v, runs, AdamWConstants(args),
                AdamWConstants(without_decay), copy_dtype, copy);
}

void sum_of_squares(DType dtype, const std::vector<Span>& spans, float* out) {
  std::vector<int64_t> parts(spans.size());
  int64_t total_parts = 0;
  for (size_t s = 0; s < spans.size(); ++s) {
    QARAC_CHECK(spans[s].n >= 0, "sum_of_squares: span ", s, " has negative size ", spans[s].n);
    parts[s] = std::min(ceil_div(spans[s].n, kSumThreads * kSumPerThread), kSumMaxParts);
    total_parts += parts[s];
  }
  // Released when this function returns, with the kernels still queued: safe, the caching
  // allocator hands the block only to work queued after them.
  Buffer partials(static_cast<size_t>(total_parts) * sizeof(float),
                  Device::cuda(context().device));
  float* partial = static_cast<float*>(partials.data());
  dispatch_compute(dtype, "sum_of_squares", [&](auto tag) {
    using T = decltype(tag);
    for (size_t first = 0; first < spans.size(); first += kChunkSpans) {
      const size_t count = std::min(spans.size() - first, static_cast<size_t>(kChunkSpans));
      SpanChunk chunk{};
      for (size_t s = 0; s < count; ++s) {
        chunk.data[s] = spans[first + s].data;
        chunk.n[s] = spans[first + s].n;
        chunk.first_part[s + 1] = chunk.first_part[s] + parts[first + s];
      }
      const int64_t blocks = chunk.first_part[count];
      if (blocks == 0) continue;  // only empty spans
      sum_of_squares_parts_kernel<T>
          <<<static_cast<unsigned>(blocks), kSumThreads, 0, stream()>>>(chunk, partial);
      QARAC_CHECK_LAUNCH();
      partial += blocks;
    }
  });
  sum_partials_kernel<<<1, kSumFinalThreads, 0, stream()>>>(
      static_cast<const float*>(partials.data()), total_parts, out);
  QARAC_CHECK_LAUNCH();
}

}  // namespace qarac::cuda

// ---- NAdam --------------------------------------------------------------------------------------
namespace qarac::cuda {
namespace {

// The per-call constants of the NAdam update, formed on the host in double and rounded once to
// f32. Coupled weight decay is decay = 1, l2 = wd; decoupled is decay = 1 - lr wd, l2 = 0.
struct NAdamConstants {
  float decay, l2;
  float sqrt_bc2;  // sqrt(1 - β2^step)
  float beta1, rest1, beta2, rest2;
  float eps, grad_scale;
  float grad_coef, momentum_coef;  // lr (1 - μ_t) / (1 - Π_t),  lr μ_{t+1} / (1 - Π_{t+1})

  explicit NAdamConstants(const NAdamArgs& a)
      : decay(static_cast<float>(a.decoupled_weight_decay ? 1.0 - a.lr * a.weight_decay : 1.0)),
        l2(static_cast<float>(a.decoupled_weight_decay ? 0.0 : a.weight_decay)),
        sqrt_bc2(static_cast<float>(std::sqrt(a.bias_correction2))),
        beta1(static_cast<float>(a.beta1)),
        rest1(static_cast<float>(1.0 - a.beta1)),
        beta2(static_cast<float>(a.beta2)),
        rest2(static_cast<float>(1.0 - a.beta2)),
        eps(static_cast<float>(a.eps)),
        grad_scale(static_cast<float>(a.grad_scale)),
        grad_coef(static_cast<float>(a.grad_coef)),
        momentum_coef(static_cast<float>(a.momentum_coef)) {}
};

// torch.optim.NAdam for one element in f32, the formula of the CPU reference
// (kernels/cpu/optimizer.cpp), with g = grad_scale * grad:
//   g ← g + l2 p,   p ← p decay
//   m ← β1 m + (1 - β1) g,   v ← β2 v + (1 - β2) g²,   d = sqrt(v) / sqrt(bc2) + eps
//   p ← p - grad_coef g / d - momentum_coef m / d
__device__ __forceinline__ void update_element(float& p, float grad, float& m, float& v,
                                               const NAdamConstants& k) {
  const float g = k.grad_scale * grad + k.l2 * p;
  m = k.beta1 * m + k.rest1 * g;
  v = k.beta2 * v + k.rest2 * g * g;
  const float d = sqrtf(v) / k.sqrt_bc2 + k.eps;
  p = p * k.decay - k.grad_coef * g / d - k.momentum_coef * m / d;
}

}  // namespace

void nadam_update(float* param, const float* grad, float* m, float* v,
                  const std::vector<UpdateRun>& runs, const NAdamArgs& args, DType copy_dtype,
                  void* copy) {
  NAdamArgs without_decay = args;
  without_decay.weight_decay = 0;
  moment_update("nadam_update", param, grad, m, v, runs, NAdamConstants(args),
                NAdamConstants(without_decay), copy_dtype, copy);
}

}  // namespace qarac::cuda
