// Flash-style multi-head attention over padding-free (packed) batches (CUDA): the semantics of
// ops::attention_forward/backward (kernels/ops.h), FlashAttention-2's structure (Dao, 2023).
// No T×T matrix ever reaches device memory: the forward pass keeps a running row maximum m and
// row sum l per query ("online softmax") while it walks the key tiles of the query's sequence,
// and saves only O and lse = m + log l; the backward pass recomputes P = exp(s·q·k − lse) tile
// by tile from that lse.
//
// Work decomposition. Sequence b is rows [offsets[b], offsets[b+1]) of the token-major [T, H·Dh]
// tensors; head h of a row is the Dh columns at h·Dh. Rows lie a row stride apart, one for q, k,
// v, one for dq, dk, dv and one for out, dout (AttentionParams): q, k, v may be column slices of
// one fused Q|K|V projection's output, dq, dk, dv of one gradient buffer. The grid is (query or key tiles of the
// longest sequence, heads, sequences): the host knows max_len but not the lengths (the offsets
// live on the device), so every block reads its sequence's extent and blocks past its end exit
// at once. Those blocks cost a launch slot each and nothing else.
//
// Two paths, both with f32 softmax statistics and f32 accumulation:
// - tensor cores (bf16, Dh = 64): 64×64 tiles, 4 warps per block, each warp owning 16 rows of
//   the tile; mma.sync m16n8k16 with ldmatrix operand loads, scores and probabilities kept in
//   registers from S = Q·Kᵀ through the softmax to P·V (details at the kernels).
// - generic (f32 and bf16, any Dh ≤ 128): f32 CUDA-core arithmetic, one key per lane; used for
//   f32 (tight parity with the CPU reference) and for the head dims of tiny test models.
//
// Backward, deterministic (no atomics, every output element written by one thread in a fixed
// order, so two runs give the same bits): a pre-kernel computes D_i = rowsum(dO_i ⊙ O_i), one
// kernel per key tile accumulates dK and dV over the query tiles that see it, and one kernel per
// query tile accumulates dQ over the key tiles it sees; both recompute P (and the dropout mask)
// instead of exchanging partial sums. On the tensor-core path, batches whose sequences are all
// at most 128 tokens long (fine-tuning's usual case) take one kernel instead, a block per
// (sequence, head) holding the whole sequence, which computes P and dS once and keeps dS for dQ
// in shared memory. With P̃ = P ⊙ M/(1−p) the dropped-out probabilities:
//   dV = P̃ᵀ dO,  dP̃ = dO Vᵀ,  dS = P ⊙ (M/(1−p) ⊙ dP̃ − D),  dQ = s dS K,  dK = s dSᵀ Q.
//
// Dropout: element (query position i, key position j, both inside sequence b) of head h is kept
// when dropout_kept(key, ids[b], attention_element(h, i, j), threshold) (core/rng.h) and then
// scaled by dropout_keep_scale, exactly as the CPU reference; the backward kernels draw the same
// bits again. Nothing in the draw depends on where sequence b lies in the batch. One Philox call
// decides 8 consecutive keys of a query row; the kernels draw each group once per warp and hand
// its bits to the lanes that hold those scores by shuffles (the *_keep_bits helpers).
//
// Memory traffic. Forward: Q read once, K and V once per query tile of the same sequence and
// head (64 rows at a time on the tensor-core path: 8 times for a 512-token sequence, from L2,
// since one head's K and V of such a sequence are 128 KiB), O written once, lse 4 B per row and
// head. Backward: dK/dV reads Q, dO, lse, D once per key tile, dQ reads K, V once per query tile.
//
// Measured on one H100 (bf16, 16 sequences of 512 tokens, 12 heads of 64; FLOPs counted as
// FlashAttention does: 4·L²·Dh per sequence and head forward, 2.5× that backward):
//   no dropout:  forward 0.068 ms (190 TFLOP/s), backward 0.233 ms (138 TFLOP/s);
//                PyTorch SDPA (flash) on the same padded shape 0.042 ms / 0.140 ms;
//   causal:      0.050 ms / 0.166 ms;   64 × 128 tokens: 0.027 ms / 0.105 ms;
//   dropout 0.1: 0.365 ms / 0.833 ms (SDPA 0.088 / 0.162), measured when the contract drew one
//   Philox-4x32-10 call per score (three per score over forward and backward), which cost more
//   than all the tensor core math; one call now serves 8 scores (not yet measured on a GPU).
// The one-block backward of sequences up to 128 tokens is not yet measured on a GPU.
// The first version of the tensor-core path (WMMA, scores through shared memory) ran 0.191 ms /
// 0.574 ms on the same case; the f32 generic path runs 3.2 ms / 7.0 ms.
#include "kernels/cuda/attention.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>

#include "core/error.h"
#include "core/memory.h"
#include "kernels/cuda/context.cuh"
#include "kernels/cuda/device_utils.cuh"

namespace qarac::cuda {
namespace {

using bf16_t = __nv_bfloat16;

constexpr float kNegInf = -INFINITY;

// What every attention kernel needs besides its tensors.
struct AttentionParams {
  const int32_t* offsets;  // device [batch+1]
  const uint64_t* ids;     // device [batch]: each sequence's dropout identity
  int64_t tokens;          // T
  // Row strides in elements, each >= heads * head_dim: q, k, v may be column slices of one wider
  // buffer (a fused Q|K|V projection's output), dq, dk, dv of another; out and dout have ld_out.
  int64_t ld_qkv, ld_grad_qkv, ld_out;
  int head_dim;
  bool causal;
  float scale;           // 1/sqrt(Dh), rounded as the CPU reference rounds it
  uint32_t drop_threshold;  // dropout_threshold(p): 0 means no dropout draws
  float drop_scale;         // float(dropout_keep_scale), 1 without dropout
  RngKey key;
};

// The rows of the block's sequence (blockIdx.z is the sequence) and its dropout identity (read
// only when there is dropout).
struct Span {
  int64_t start;
  int len;
  uint64_t id;
};
__device__ __forceinline__ Span block_sequence(const AttentionParams& p) {
  const int32_t begin = p.offsets[blockIdx.z], end = p.offsets[blockIdx.z + 1];
  return {begin, end - begin, p.drop_threshold != 0 ? p.ids[blockIdx.z] : 0};
}

// The dropout element of key position 0 for query position i of head h: the row's draws are
// this + key position (core/rng.h, attention_element).
__device__ __forceinline__ uint64_t dropout_row_element(int h, int i) {
  return attention_element(static_cast<uint64_t>(h), static_cast<uint64_t>(i), 0);
}
// The decisions of the 8 keys key0 .. key0+7 (key0 a multiple of 8) for query position i of head
// h: bit k for key key0 + k.
__device__ __forceinline__ uint32_t dropout_keys_mask(const AttentionParams& p, const Span& seq,
                                                      int h, int i, int key0) {
  return dropout_group_mask(p.key, seq.id, dropout_row_element(h, i) + static_cast<uint64_t>(key0),
                            p.drop_threshold);
}

// =================================================================================================
// D_i = rowsum(dO_i ⊙ O_i) per (head, row), f32 [H, T]; dO and O have row stride ld. One warp
// per token row, all heads.
// =================================================================================================
template <class T>
__global__ void attention_delta_kernel(const T* __restrict__ dout, const T* __restrict__ out,
                                       int64_t tokens, int heads, int head_dim, int64_t ld,
                                       float* __restrict__ delta) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= tokens) return;
  for (int h = 0; h < heads; ++h) {
    const int64_t base = row * ld + static_cast<int64_t>(h) * head_dim;
    float sum = 0.f;
    for (int d = lane; d < head_dim; d += kWarpSize) sum += to_float(dout[base + d]) * to_float(out[base + d]);
    sum = warp_sum(sum);
    if (lane == 0) delta[h * tokens + row] = sum;
  }
}

// =================================================================================================
// Generic path: f32 arithmetic on CUDA cores, any head_dim <= 128 (NC = ceil(Dh/32) columns per
// lane), element type T = float or bf16 in memory.
//
// Forward and dQ: a block is 16 query rows of one (sequence, head); each of its 4 warps owns 4
// rows and keeps their state (m, l and the O or dQ accumulator, lane c holding columns c, c+32,
// ...) in registers. Key tiles of 32 rows go through shared memory; lane j computes the scores of
// key j against the warp's 4 rows (Q rows are read as broadcasts, K rows with a stride of Dh+1
// floats so that the 32 lanes hit 32 banks), the softmax statistics are warp reductions, and the
// product with V walks the 32 keys with each probability broadcast by a shuffle.
// dK/dV: a block is 16 keys; each warp owns 4 of them; lane i is query i of a 32-row query tile.
// Tuning: 4 rows (keys) per warp reuse every shared K (Q) element 4 times from registers and keep
// the accumulators at 4·NC ≤ 16 registers per lane; these kernels exist for correctness (f32
// parity) and small models, the bf16 Dh=64 training path is the tensor-core one below.
// __launch_bounds__(128, 4): 96..124 registers, no spills (with no minimum, ptxas chose 64 and
// spilled for NC = 4). Shared memory ≤ 41 KiB forward; the backward kernels need up to 49 KiB at
// Dh = 128 and opt in above 48 KiB.
// =================================================================================================
constexpr int kGenWarps = 4;
constexpr int kGenThreads = kGenWarps * kWarpSize;
constexpr int kGenRowsPerWarp = 4;                       // forward, dQ: query rows per warp
constexpr int kGenBr = kGenWarps * kGenRowsPerWarp;      // 16 query rows per block
constexpr int kGenBc = kWarpSize;                        // 32 keys per tile, one per lane
constexpr int kGenKeysPerWarp = 4;                       // dK/dV: keys per warp
constexpr int kGenBk = kGenWarps * kGenKeysPerWarp;      // 16 keys per block
constexpr int kGenQt = kWarpSize;                        // 32 queries per tile, one per lane

// Dropout bits of the generic forward and dQ kernels: bit t for the warp's query row i0 + t
// against this lane's key k0 + lane (k0 a multiple of 8). The 4 rows × 32 keys are 16 groups of
// 8 keys: lane L < 16 draws row L/4's keys k0 + 8·(L%4) .., and the lane of key k0 + j takes bit
// j%8 of its row's group j/8 by a shuffle. Called by the whole warp, with dropout only.
__device__ __forceinline__ uint32_t generic_keep_bits_by_query(const AttentionParams& p,
                                                               const Span& seq, int h, int i0,
                                                               int k0, int lane) {
  constexpr int kGroupsPerRow = kGenBc / kDropoutGroup;
  static_assert(kGenRowsPerWarp * kGroupsPerRow <= kWarpSize, "a group per lane at most");
  uint32_t drawn = 0;
  if (lane < kGenRowsPerWarp * kGroupsPerRow)
    drawn = dropout_keys_mask(p, seq, h, i0 + lane / kGroupsPerRow,
                              k0 + lane % kGroupsPerRow * kDropoutGroup);
  uint32_t bits = 0;
#pragma unroll
  for (int t = 0; t < kGenRowsPerWarp; ++t) {
    const uint32_t group = __shfl_sync(0xffffffffu, drawn, t * kGroupsPerRow + lane / kDropoutGroup);
    bits |= ((group >> (lane % kDropoutGroup)) & 1u) << t;
  }
  return bits;
}

// Dropout bits of the generic dK/dV kernel: bit u for the warp's key j0 + u (j0 a multiple of
// 4) against this lane's query i; the warp's 4 keys lie in one group of 8, so one draw.
__device__ __forceinline__ uint32_t generic_keep_bits_by_key(const AttentionParams& p,
                                                             const Span& seq, int h, int i, int j0) {
  static_assert(kDropoutGroup % kGenKeysPerWarp == 0, "a warp's keys lie in one group");
  const int first = j0 & ~(kDropoutGroup - 1);
  return (dropout_keys_mask(p, seq, h, i, first) >> (j0 - first)) & ((1u << kGenKeysPerWarp) - 1);
}

// Rows [first, first + rows) of head columns [col, col + Dh) of x (row stride ld) into shared s
// with row stride sld, as f32; rows at or past `valid` are zero (they belong to no sequence or to
// the next one, and a zero row keeps every product finite).
template <class T>
__device__ __forceinline__ void load_rows(float* s, int sld, const T* __restrict__ x, int64_t ld,
                                          int64_t first, int rows, int valid, int64_t col, int dh) {
  for (int e = threadIdx.x; e < rows * dh; e += blockDim.x) {
    const int r = e / dh, d = e - r * dh;
    s[r * sld + d] = r < valid ? to_float(x[(first + r) * ld + col + d]) : 0.f;
  }
}

// Shared memory of the generic kernels, in floats.
inline int64_t generic_forward_smem(int dh) { return kGenBr * dh + kGenBc * (dh + 1) + kGenBc * dh; }
inline int64_t generic_dq_smem(int dh) { return 2 * kGenBr * dh + 2 * kGenBc * (dh + 1) + 2 * kGenBr; }
inline int64_t generic_dkdv_smem(int dh) { return 2 * kGenBk * dh + 2 * kGenQt * (dh + 1) + 2 * kGenQt; }

template <class T, int NC>
__global__ void __launch_bounds__(kGenThreads, 4)
attention_forward_generic(AttentionParams p, const T* __restrict__ q, const T* __restrict__ k,
                          const T* __restrict__ v, T* __restrict__ out, float* __restrict__ lse) {
  extern __shared__ float gen_smem[];
  const int dh = p.head_dim;
  float* sQ = gen_smem;                // [Br][Dh]    read as broadcasts
  float* sK = sQ + kGenBr * dh;        // [Bc][Dh+1]  lane j reads row j: padded against conflicts
  float* sV = sK + kGenBc * (dh + 1);  // [Bc][Dh]    lane c reads column c of one row
  const int h = blockIdx.y;
  const Span seq = block_sequence(p);
  const int q0 = blockIdx.x * kGenBr;
  if (q0 >= seq.len) return;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t col = static_cast<int64_t>(h) * dh;
  load_rows(sQ, dh, q, p.ld_qkv, seq.start + q0, kGenBr, min(kGenBr, seq.len - q0), col, dh);

  float m[kGenRowsPerWarp], l[kGenRowsPerWarp], o[kGenRowsPerWarp][NC];
#pragma unroll
  for (int t = 0; t < kGenRowsPerWarp; ++t) {
    m[t] = kNegInf;
    l[t] = 0.f;
#pragma unroll
    for (int c = 0; c < NC; ++c) o[t][c] = 0.f;
  }
  // Causal: the block's last query is q0 + Br - 1, so later keys are invisible to all its rows.
  const int key_end = p.causal ? min(seq.len, q0 + kGenBr) : seq.len;
  for (int k0 = 0; k0 < key_end; k0 += kGenBc) {
    __syncthreads();  // the previous tile is consumed
    const int valid = min(kGenBc, seq.len - k0);
    load_rows(sK, dh + 1, k, p.ld_qkv, seq.start + k0, kGenBc, valid, col, dh);
    load_rows(sV, dh, v, p.ld_qkv, seq.start + k0, kGenBc, valid, col, dh);
    __syncthreads();  // (also publishes sQ on the first pass)

    const int j = k0 + lane;  // this lane's key position
    float s[kGenRowsPerWarp] = {};
    for (int d = 0; d < dh; ++d) {
      const float kd = sK[lane * (dh + 1) + d];
#pragma unroll
      for (int t = 0; t < kGenRowsPerWarp; ++t) s[t] += sQ[(warp * kGenRowsPerWarp + t) * dh + d] * kd;
    }
    // Online softmax: with m' = max(m, max_j x_j), l' = l·e^(m−m') + Σ_j e^(x_j−m') and the
    // accumulator rescaled by e^(m−m'), the final O/l equals softmax·V whatever the tile order.
    float pu[kGenRowsPerWarp];  // e^(x_j − m'), times the dropout mask
    const uint32_t keep_bits =
        p.drop_threshold != 0
            ? generic_keep_bits_by_query(p, seq, h, q0 + warp * kGenRowsPerWarp, k0, lane)
            : ~0u;
#pragma unroll
    for (int t = 0; t < kGenRowsPerWarp; ++t) {
      const int i = q0 + warp * kGenRowsPerWarp + t;
      const bool visible = j < seq.len && (!p.causal || j <= i);
      const float x = visible ? s[t] * p.scale : kNegInf;
      const float m_new = fmaxf(m[t], warp_max(x));
      const float m_use = m_new == kNegInf ? 0.f : m_new;  // no visible key yet: keep 0s, no NaN
      const float alpha = expf(m[t] - m_use);
      const float e = expf(x - m_use);  // 0 for invisible keys
      l[t] = l[t] * alpha + warp_sum(e);
      m[t] = m_new;
      const bool keep = visible && i < seq.len && (keep_bits >> t) & 1u;
      pu[t] = keep ? e : 0.f;
#pragma unroll
      for (int c = 0; c < NC; ++c) o[t][c] *= alpha;
    }
    for (int jj = 0; jj < kGenBc; ++jj) {
      float pj[kGenRowsPerWarp];
#pragma unroll
      for (int t = 0; t < kGenRowsPerWarp; ++t) pj[t] = __shfl_sync(0xffffffffu, pu[t], jj);
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        const int d = lane + c * kWarpSize;
        if (d < dh) {
          const float vd = sV[jj * dh + d];
#pragma unroll
          for (int t = 0; t < kGenRowsPerWarp; ++t) o[t][c] += pj[t] * vd;
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kGenRowsPerWarp; ++t) {
    const int i = q0 + warp * kGenRowsPerWarp + t;
    if (i >= seq.len) continue;
    const int64_t row = seq.start + i;
    const float inv = l[t] > 0.f ? p.drop_scale / l[t] : 0.f;  // l >= 1 for every real row
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int d = lane + c * kWarpSize;
      if (d < dh) out[row * p.ld_out + col + d] = from_float<T>(o[t][c] * inv);
    }
    if (lane == 0) lse[h * p.tokens + row] = m[t] + logf(l[t]);
  }
}

template <class T, int NC>
__global__ void __launch_bounds__(kGenThreads, 4)
attention_backward_dq_generic(AttentionParams p, const T* __restrict__ dout, const T* __restrict__ q,
                              const T* __restrict__ k, const T* __restrict__ v,
                              const float* __restrict__ lse, const float* __restrict__ delta,
                              T* __restrict__ dq) {
  extern __shared__ float gen_smem[];
  const int dh = p.head_dim;
  float* sQ = gen_smem;                 // [Br][Dh]
  float* sdO = sQ + kGenBr * dh;        // [Br][Dh]
  float* sK = sdO + kGenBr * dh;        // [Bc][Dh+1]
  float* sV = sK + kGenBc * (dh + 1);   // [Bc][Dh+1]
  float* sL = sV + kGenBc * (dh + 1);   // [Br] lse
  float* sD = sL + kGenBr;              // [Br] D
  const int h = blockIdx.y;
  const Span seq = block_sequence(p);
  const int q0 = blockIdx.x * kGenBr;
  if (q0 >= seq.len) return;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t col = static_cast<int64_t>(h) * dh;
  const int qvalid = min(kGenBr, seq.len - q0);
  load_rows(sQ, dh, q, p.ld_qkv, seq.start + q0, kGenBr, qvalid, col, dh);
  load_rows(sdO, dh, dout, p.ld_out, seq.start + q0, kGenBr, qvalid, col, dh);
  if (threadIdx.x < kGenBr) {
    const int r = threadIdx.x;
    sL[r] = r < qvalid ? lse[h * p.tokens + seq.start + q0 + r] : 0.f;
    sD[r] = r < qvalid ? delta[h * p.tokens + seq.start + q0 + r] : 0.f;
  }

  float acc[kGenRowsPerWarp][NC] = {};
  const int key_end = p.causal ? min(seq.len, q0 + kGenBr) : seq.len;
  for (int k0 = 0; k0 < key_end; k0 += kGenBc) {
    __syncthreads();
    const int valid = min(kGenBc, seq.len - k0);
    load_rows(sK, dh + 1, k, p.ld_qkv, seq.start + k0, kGenBc, valid, col, dh);
    load_rows(sV, dh + 1, v, p.ld_qkv, seq.start + k0, kGenBc, valid, col, dh);
    __syncthreads();

    const int j = k0 + lane;
    float s[kGenRowsPerWarp] = {}, dp[kGenRowsPerWarp] = {};
    for (int d = 0; d < dh; ++d) {
      const float kd = sK[lane * (dh + 1) + d], vd = sV[lane * (dh + 1) + d];
#pragma unroll
      for (int t = 0; t < kGenRowsPerWarp; ++t) {
        const int r = warp * kGenRowsPerWarp + t;
        s[t] += sQ[r * dh + d] * kd;
        dp[t] += sdO[r * dh + d] * vd;
      }
    }
    float ds[kGenRowsPerWarp];
    const uint32_t keep_bits =
        p.drop_threshold != 0
            ? generic_keep_bits_by_query(p, seq, h, q0 + warp * kGenRowsPerWarp, k0, lane)
            : ~0u;
#pragma unroll
    for (int t = 0; t < kGenRowsPerWarp; ++t) {
      const int r = warp * kGenRowsPerWarp + t, i = q0 + r;
      const bool visible = i < seq.len && j < seq.len && (!p.causal || j <= i);
      const float prob = visible ? expf(s[t] * p.scale - sL[r]) : 0.f;
      const bool keep = visible && (keep_bits >> t) & 1u;
      ds[t] = prob * ((keep ? p.drop_scale * dp[t] : 0.f) - sD[r]);
    }
    for (int jj = 0; jj < kGenBc; ++jj) {
      float dsj[kGenRowsPerWarp];
#pragma unroll
      for (int t = 0; t < kGenRowsPerWarp; ++t) dsj[t] = __shfl_sync(0xffffffffu, ds[t], jj);
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        const int d = lane + c * kWarpSize;
        if (d < dh) {
          const float kd = sK[jj * (dh + 1) + d];
#pragma unroll
          for (int t = 0; t < kGenRowsPerWarp; ++t) acc[t][c] += dsj[t] * kd;
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kGenRowsPerWarp; ++t) {
    const int i = q0 + warp * kGenRowsPerWarp + t;
    if (i >= seq.len) continue;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int d = lane + c * kWarpSize;
      if (d < dh)
        dq[(seq.start + i) * p.ld_grad_qkv + col + d] = from_float<T>(acc[t][c] * p.scale);
    }
  }
}

template <class T, int NC>
__global__ void __launch_bounds__(kGenThreads, 4)
attention_backward_dkdv_generic(AttentionParams p, const T* __restrict__ dout,
                                const T* __restrict__ q, const T* __restrict__ k,
                                const T* __restrict__ v, const float* __restrict__ lse,
                                const float* __restrict__ delta, T* __restrict__ dk,
                                T* __restrict__ dv) {
  extern __shared__ float gen_smem[];
  const int dh = p.head_dim;
  float* sK = gen_smem;                 // [Bk][Dh]    read as broadcasts
  float* sV = sK + kGenBk * dh;         // [Bk][Dh]
  float* sQ = sV + kGenBk * dh;         // [Qt][Dh+1]  lane i reads row i
  float* sdO = sQ + kGenQt * (dh + 1);  // [Qt][Dh+1]
  float* sL = sdO + kGenQt * (dh + 1);  // [Qt]
  float* sD = sL + kGenQt;              // [Qt]
  const int h = blockIdx.y;
  const Span seq = block_sequence(p);
  const int k0 = blockIdx.x * kGenBk;
  if (k0 >= seq.len) return;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t col = static_cast<int64_t>(h) * dh;
  const int kvalid = min(kGenBk, seq.len - k0);
  load_rows(sK, dh, k, p.ld_qkv, seq.start + k0, kGenBk, kvalid, col, dh);
  load_rows(sV, dh, v, p.ld_qkv, seq.start + k0, kGenBk, kvalid, col, dh);

  float dk_acc[kGenKeysPerWarp][NC] = {}, dv_acc[kGenKeysPerWarp][NC] = {};
  // Causal: query i sees key j only when i >= j, so the queries before k0 see none of the block.
  for (int i0 = p.causal ? k0 : 0; i0 < seq.len; i0 += kGenQt) {
    __syncthreads();
    const int qvalid = min(kGenQt, seq.len - i0);
    load_rows(sQ, dh + 1, q, p.ld_qkv, seq.start + i0, kGenQt, qvalid, col, dh);
    load_rows(sdO, dh + 1, dout, p.ld_out, seq.start + i0, kGenQt, qvalid, col, dh);
    if (threadIdx.x < kGenQt) {
      const int r = threadIdx.x;
      sL[r] = r < qvalid ? lse[h * p.tokens + seq.start + i0 + r] : 0.f;
      sD[r] = r < qvalid ? delta[h * p.tokens + seq.start + i0 + r] : 0.f;
    }
    __syncthreads();

    const int i = i0 + lane;  // this lane's query position
    float s[kGenKeysPerWarp] = {}, dp[kGenKeysPerWarp] = {};
    for (int d = 0; d < dh; ++d) {
      const float qd = sQ[lane * (dh + 1) + d], od = sdO[lane * (dh + 1) + d];
#pragma unroll
      for (int u = 0; u < kGenKeysPerWarp; ++u) {
        const int kr = warp * kGenKeysPerWarp + u;
        s[u] += qd * sK[kr * dh + d];
        dp[u] += od * sV[kr * dh + d];
      }
    }
    float pt[kGenKeysPerWarp], ds[kGenKeysPerWarp];
    const uint32_t keep_bits =
        p.drop_threshold != 0 ? generic_keep_bits_by_key(p, seq, h, i, k0 + warp * kGenKeysPerWarp)
                              : ~0u;
#pragma unroll
    for (int u = 0; u < kGenKeysPerWarp; ++u) {
      const int j = k0 + warp * kGenKeysPerWarp + u;
      const bool visible = i < seq.len && j < seq.len && (!p.causal || j <= i);
      const float prob = visible ? expf(s[u] * p.scale - sL[lane]) : 0.f;
      const bool keep = visible && (keep_bits >> u) & 1u;
      pt[u] = keep ? prob * p.drop_scale : 0.f;
      ds[u] = prob * ((keep ? p.drop_scale * dp[u] : 0.f) - sD[lane]);
    }
    for (int ii = 0; ii < kGenQt; ++ii) {
      float a[kGenKeysPerWarp], b[kGenKeysPerWarp];
#pragma unroll
      for (int u = 0; u < kGenKeysPerWarp; ++u) {
        a[u] = __shfl_sync(0xffffffffu, pt[u], ii);
        b[u] = __shfl_sync(0xffffffffu, ds[u], ii);
      }
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        const int d = lane + c * kWarpSize;
        if (d < dh) {
          const float od = sdO[ii * (dh + 1) + d], qd = sQ[ii * (dh + 1) + d];
#pragma unroll
          for (int u = 0; u < kGenKeysPerWarp; ++u) {
            dv_acc[u][c] += a[u] * od;
            dk_acc[u][c] += b[u] * qd;
          }
        }
      }
    }
  }
#pragma unroll
  for (int u = 0; u < kGenKeysPerWarp; ++u) {
    const int j = k0 + warp * kGenKeysPerWarp + u;
    if (j >= seq.len) continue;
    const int64_t base = (seq.start + j) * p.ld_grad_qkv + col;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int d = lane + c * kWarpSize;
      if (d < dh) {
        dk[base + d] = from_float<T>(dk_acc[u][c] * p.scale);
        dv[base + d] = from_float<T>(dv_acc[u][c]);
      }
    }
  }
}

// =================================================================================================
// Attention over key ranges (ops::attention_over_ranges): decoding with a key/value cache, a few
// query rows a step, each over up to a few hundred cached keys. A block of 4 warps per (query
// row, head): warp w takes keys begin + w, begin + w + 4, ..., lane c holds columns c, c + 32, ...
// of the head (NC = ceil(Dh/32) of them), a score is a warp sum, and each warp keeps its own
// online softmax (running max m, sum l, weighted values); the 4 partial results merge through
// shared memory. Every key's Dh elements are read once, coalesced: the cache read is the cost.
// =================================================================================================
constexpr int kRangeWarps = 4;

template <class T, int NC>
__global__ void __launch_bounds__(kRangeWarps * kWarpSize)
attention_over_ranges_kernel(const T* __restrict__ q, int64_t ld_q, const T* __restrict__ k,
                             const T* __restrict__ v, int64_t ld_kv, const int32_t* __restrict__ ranges,
                             int head_dim, float scale, T* __restrict__ out) {
  __shared__ float part_m[kRangeWarps], part_l[kRangeWarps], part_o[kRangeWarps][NC * kWarpSize];
  const int64_t row = blockIdx.x;
  const int heads = static_cast<int>(gridDim.y), h = static_cast<int>(blockIdx.y);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t col = static_cast<int64_t>(h) * head_dim;
  const int64_t begin = ranges[2 * row], end = ranges[2 * row + 1];

  float qs[NC], o[NC];
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    const int d = lane + c * kWarpSize;
    qs[c] = d < head_dim ? to_float(q[row * ld_q + col + d]) * scale : 0.f;
    o[c] = 0.f;
  }
  float m = kNegInf, l = 0.f;
  for (int64_t j = begin + warp; j < end; j += kRangeWarps) {
    float score = 0.f;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int d = lane + c * kWarpSize;
      if (d < head_dim) score += qs[c] * to_float(k[j * ld_kv + col + d]);
    }
    score = warp_sum(score);
    const float m_new = fmaxf(m, score);
    // While every score so far is -inf (an overflowing q·k), keep the zeros rather than NaN, as
    // the CPU reference weighs such keys 0; rescale is 0 at the first finite key.
    const float m_use = m_new == kNegInf ? 0.f : m_new;
    const float rescale = expf(m - m_use), weight = expf(score - m_use);
    l = l * rescale + weight;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int d = lane + c * kWarpSize;
      o[c] = o[c] * rescale + (d < head_dim ? weight * to_float(v[j * ld_kv + col + d]) : 0.f);
    }
    m = m_new;
  }
  if (lane == 0) {
    part_m[warp] = m;
    part_l[warp] = l;
  }
#pragma unroll
  for (int c = 0; c < NC; ++c) part_o[warp][lane + c * kWarpSize] = o[c];
  __syncthreads();

  // A warp that saw no key (a range shorter than 4) has m = -inf and weighs exp(-inf) = 0; the
  // range is not empty, so some warp saw one and the maximum is finite unless every score is -inf.
  float max = kNegInf;
  for (int w = 0; w < kRangeWarps; ++w) max = fmaxf(max, part_m[w]);
  if (max == kNegInf) max = 0.f;
  float sum = 0.f;
  for (int w = 0; w < kRangeWarps; ++w) sum += part_l[w] * expf(part_m[w] - max);
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float value = 0.f;
    for (int w = 0; w < kRangeWarps; ++w) value += part_o[w][d] * expf(part_m[w] - max);
    out[row * heads * head_dim + col + d] = from_float<T>(value / sum);
  }
}

// =================================================================================================
// Tensor-core path: bf16, head_dim 64, mma.sync m16n8k16 (bf16 in, f32 accumulators) with
// ldmatrix operand loads; FlashAttention-2's register-resident structure.
//
// Tiles are 64×64 (Br = Bc = 64), 4 warps per block, warp w owning rows 16w..16w+15 of its tile
// (queries in the forward and dQ kernels, keys in dK/dV). Register layout of m16n8k16, with
// g = lane/4 and t = lane%4 (PTX ISA, "Matrix fragments for mma.m16n8k16"):
//   A 16×16: a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B 16×8:  b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C 16×8:  c0, c1 = C[g][2t], C[g][2t+1];  c2, c3 = C[g+8][2t], C[g+8][2t+1]
// so each thread owns 2 rows (g, g+8) of every accumulator tile, a row's 4 owners are 4
// consecutive lanes (row reductions: 2 xor-shuffles), and the C tiles of a 16×16 block of scores
// are, packed to bf16 pairs, exactly the A fragment of the next product (P·V, P̃ᵀ·dO, dS·K,
// dSᵀ·Q): scores never leave registers. The warp's own operand strip (Q, or K and V, or Q and dO)
// is loaded once into A fragments; the other side's tiles go through shared memory with rows of
// 72 bf16 (144 B), so the 8 row addresses of an ldmatrix phase fall in 8 different 16-byte bank
// groups (no conflicts). ldmatrix.x4 gives the B fragments of two 8-column tiles at once: plain
// for Kᵀ, Qᵀ, Vᵀ, dOᵀ (B[k][n] = X[n][k], rows of X contiguous) and .trans for V, dO, K, Q
// (B[k][n] = X[k][n]).
//
// Occupancy (ptxas, sm_90, CUDA 13.0). Forward: 128 registers under __launch_bounds__(128, 4),
// no spills (149 uncapped), 45 KiB static shared memory with K and V double-buffered by cp.async
// (the next tile streams in while the current one is multiplied): 4 blocks, 16 warps per SM.
// Backward: 168 registers under (128, 3) (spill stores outside the products: dQ 4 bytes, dK/dV 40
// bytes, its K, V, dK and dV strips alone take 96 registers); 18 KiB of shared memory, one
// buffer: 3 blocks, 12 warps per SM hide each other's tile loads. Both backward kernels take a
// 64-row tile 32 rows at a time so that the recomputed score tiles take 16 registers, not 32.
// Whether dK/dV runs faster at 2 blocks per SM without the spill is not measured yet.
//
// Softmax in base 2: x = s·scale·log2(e), P = 2^(x − m) (one ex2.approx per score; relative
// error ~2^-22), lse = (m + log2 l)·ln 2; the backward kernels recompute P = 2^(x − lse·log2 e).
// =================================================================================================
constexpr int kTcD = 64;                  // head dim
constexpr int kTcTile = 64;               // Br = Bc
constexpr int kTcWarps = 4;
constexpr int kTcThreads = kTcWarps * kWarpSize;
constexpr int kLdH = kTcD + 8;            // bf16 row stride of shared tiles
constexpr int kTileH = kTcTile * kLdH;    // elements of a shared tile
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
static_assert(kTcD == kTcTile, "the tile loaders assume square 64×64 tiles");
static_assert(kTileH * sizeof(bf16_t) % 128 == 0, "shared tiles stay 128-byte aligned");

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(smem)), "l"(gmem)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const bf16_t* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p))
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16_t* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p))
               : "memory");
}
// d += a · b, m16n8k16, bf16 inputs, f32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ float exp2_approx(float x) {  // 2^x; 2^-inf = 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 t = __floats2bfloat162_rn(lo, hi);  // lo in the low half: first in memory
  uint32_t u;
  memcpy(&u, &t, sizeof u);
  return u;
}

// Lane addresses of the ldmatrix.x4 loads (r = lane % 8 picks the row within an 8×8 matrix):
// A fragment of the 16×16 block at (row0, col0) of a row-major tile.
__device__ __forceinline__ const bf16_t* a_address(const bf16_t* s, int row0, int col0, int lane) {
  return s + (row0 + (lane & 7) + ((lane >> 3) & 1) * 8) * kLdH + col0 + (lane >> 4) * 8;
}
// B fragments of the two 8-column tiles n0, n0+8 at k0 when B[k][n] = X[n][k] (X row-major).
__device__ __forceinline__ const bf16_t* bt_address(const bf16_t* s, int n0, int k0, int lane) {
  return s + (n0 + (lane & 7) + (lane >> 4) * 8) * kLdH + k0 + ((lane >> 3) & 1) * 8;
}
// The same when B[k][n] = X[k][n] (X row-major), for ldmatrix .trans.
__device__ __forceinline__ const bf16_t* b_address(const bf16_t* s, int k0, int n0, int lane) {
  return s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * kLdH + n0 + (lane >> 4) * 8;
}

// The A fragment of a 16×16 block held as two C tiles (columns 0..7 and 8..15), rounded to bf16.
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack_bf16x2(c0[0], c0[1]);
  a[1] = pack_bf16x2(c0[2], c0[3]);
  a[2] = pack_bf16x2(c1[0], c1[1]);
  a[3] = pack_bf16x2(c1[2], c1[3]);
}

// Rows [first, first + 64) of head columns [col, col + 64) into a shared tile, 16 bytes per
// cp.async, 4 per thread; rows at or past `valid` are zero-filled with ordinary stores (they
// belong to no sequence or to the next one, and zeros keep every product finite).
__device__ __forceinline__ void load_tile_async(bf16_t* s, const bf16_t* __restrict__ x, int64_t ld,
                                                int64_t first, int64_t col, int valid) {
#pragma unroll
  for (int t = 0; t < kTcTile * kTcD / 8 / kTcThreads; ++t) {
    const int e = threadIdx.x + t * kTcThreads, r = e / (kTcD / 8), c = (e % (kTcD / 8)) * 8;
    bf16_t* dst = s + r * kLdH + c;
    if (r < valid) cp_async16(dst, x + (first + r) * ld + col + c);
    else *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
  }
}

// Writes a warp's 16×64 accumulator strip (acc[n] = C tile of columns 8n..8n+7), its rows g times
// `mul_lo` and its rows g + 8 times `mul_hi`, as bf16 to rows [first, first + 16) of x, skipping
// rows at or past `valid`: through the warp's own 16 rows of a shared tile (`stage`, 4-byte
// stores that hit 32 different banks), then as 16-byte stores, each row's 128 bytes by 8
// consecutive lanes.
__device__ __forceinline__ void store_rows(const float (&acc)[kTcD / 8][4], float mul_lo, float mul_hi,
                                           bf16_t* stage, bf16_t* __restrict__ x, int64_t ld,
                                           int64_t first, int64_t col, int valid, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int n = 0; n < kTcD / 8; ++n) {
    *reinterpret_cast<uint32_t*>(stage + g * kLdH + n * 8 + 2 * t) =
        pack_bf16x2(acc[n][0] * mul_lo, acc[n][1] * mul_lo);
    *reinterpret_cast<uint32_t*>(stage + (g + 8) * kLdH + n * 8 + 2 * t) =
        pack_bf16x2(acc[n][2] * mul_hi, acc[n][3] * mul_hi);
  }
  __syncwarp();
#pragma unroll
  for (int t4 = 0; t4 < 16 * kTcD / 8 / kWarpSize; ++t4) {
    const int e = lane + t4 * kWarpSize, r = e / (kTcD / 8), c = (e % (kTcD / 8)) * 8;
    if (r < valid)
      *reinterpret_cast<uint4*>(x + (first + r) * ld + col + c) =
          *reinterpret_cast<const uint4*>(stage + r * kLdH + c);
  }
}

// The dropout decisions of the C tiles n = 0..NT-1 of a warp's 16-row strip: bit 4n + e for
// element e of tile n (row g + 8·(e/2), column 8n + 2t + e%2). They do not look at visibility:
// the callers' probabilities are already 0 where a key is invisible. Both helpers draw each group
// of 8 keys once per warp, NT/2 draws per lane (NT even), in a loop that is not unrolled so the
// Philox rounds are emitted once, and hand the bits out by shuffles. Called by the whole warp.
//
// Rows are queries (forward, dQ): row0 is the position of the thread's row g, key0 that of
// column 0 of tile 0 (a multiple of 8). A group (tile n, row r) is the 8 columns of one row,
// held 2 each by the 4 lanes of a quad (same g): the quad's 2·NT groups G = 2n + r are drawn by
// lane t for G = 4u + t into byte u of a word, and each lane reads the quad's 4 words.
template <int NT>
__device__ __forceinline__ uint32_t keep_bits_by_query(const AttentionParams& p, int h,
                                                       const Span& seq, int row0, int key0,
                                                       int lane) {
  static_assert(NT % 2 == 0 && NT <= 8, "NT/2 bytes of draws per lane");
  const int t = lane & 3;
  uint32_t drawn = 0;
#pragma unroll 1
  for (int u = 0; u < NT / 2; ++u) {
    const int G = 4 * u + t;
    drawn |= dropout_keys_mask(p, seq, h, row0 + 8 * (G & 1), key0 + 8 * (G >> 1)) << (8 * u);
  }
  uint32_t bits = 0;
#pragma unroll
  for (int o = 0; o < 4; ++o) {
    const uint32_t word = __shfl_sync(0xffffffffu, drawn, (lane & ~3) | o);
#pragma unroll
    for (int u = 0; u < NT / 2; ++u) {
      const int G = 4 * u + o;
      bits |= ((word >> (8 * u + 2 * t)) & 3u) << (4 * (G >> 1) + 2 * (G & 1));
    }
  }
  return bits;
}

// Rows are keys (dK/dV): key_row0 is the position of the warp's key row 0 (a multiple of 16),
// query0 that of column 0 of tile 0. A group (query column q, row half r) is the keys
// key_row0 + 8r + 0..7, one per lane g (bit g) among the 8 lanes with t = (q%8)/2. For a fixed t
// these lanes need the 4·NT groups k = (n, c, r) = 4n + 2c + r; lane g draws k = g + 8u into
// byte u, and each lane reads the 8 words of its t.
template <int NT>
__device__ __forceinline__ uint32_t keep_bits_by_key(const AttentionParams& p, int h,
                                                     const Span& seq, int key_row0, int query0,
                                                     int lane) {
  static_assert(NT % 2 == 0 && NT <= 8, "NT/2 bytes of draws per lane");
  const int g = lane >> 2, t = lane & 3;
  uint32_t drawn = 0;
#pragma unroll 1
  for (int u = 0; u < NT / 2; ++u) {
    const int k = g + 8 * u, n = k >> 2, c = (k >> 1) & 1, r = k & 1;
    drawn |= dropout_keys_mask(p, seq, h, query0 + 8 * n + 2 * t + c, key_row0 + 8 * r) << (8 * u);
  }
  uint32_t bits = 0;
#pragma unroll
  for (int o = 0; o < 8; ++o) {
    const uint32_t word = __shfl_sync(0xffffffffu, drawn, 4 * o + t);
#pragma unroll
    for (int u = 0; u < NT / 2; ++u) {
      const int k = o + 8 * u, n = k >> 2, c = (k >> 1) & 1, r = k & 1;
      bits |= ((word >> (8 * u + g)) & 1u) << (4 * n + 2 * r + c);
    }
  }
  return bits;
}

__global__ void __launch_bounds__(kTcThreads, 4)
attention_forward_tc(AttentionParams p, const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                     const bf16_t* __restrict__ v, bf16_t* __restrict__ out, float* __restrict__ lse) {
  __shared__ __align__(128) bf16_t sQ[kTileH];
  __shared__ __align__(128) bf16_t sK[2][kTileH];
  __shared__ __align__(128) bf16_t sV[2][kTileH];
  const int h = blockIdx.y;
  const Span seq = block_sequence(p);
  const int q0 = blockIdx.x * kTcTile;
  if (q0 >= seq.len) return;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int g = lane >> 2, t = lane & 3;
  const int64_t col = static_cast<int64_t>(h) * kTcD;

  // Causal: the tile's last query is q0 + 63, so later keys are invisible to all its rows.
  const int key_end = p.causal ? min(seq.len, q0 + kTcTile) : seq.len;
  const int tiles = (key_end + kTcTile - 1) / kTcTile;
  load_tile_async(sQ, q, p.ld_qkv, seq.start + q0, col, min(kTcTile, seq.len - q0));
  load_tile_async(sK[0], k, p.ld_qkv, seq.start, col, min(kTcTile, seq.len));
  load_tile_async(sV[0], v, p.ld_qkv, seq.start, col, min(kTcTile, seq.len));
  cp_async_commit();

  // Thread state for rows g (index 0) and g+8 (index 1) of the warp's strip.
  const int i_row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
  float m[2] = {kNegInf, kNegInf};  // running max of x (base-2 scaled scores)
  float l[2] = {0.f, 0.f};          // running sum of 2^(x − m) over this thread's columns
  float o[kTcD / 8][4] = {};
  uint32_t qa[kTcD / 16][4];
  const float sl2 = p.scale * kLog2e;

  for (int it = 0; it < tiles; ++it) {
    const int k0 = it * kTcTile, buf = it & 1;
    if (it + 1 < tiles) {  // prefetch the next tile into the other buffer (consumed in it − 1)
      const int next = k0 + kTcTile;
      const int valid = min(kTcTile, seq.len - next);
      load_tile_async(sK[buf ^ 1], k, p.ld_qkv, seq.start + next, col, valid);
      load_tile_async(sV[buf ^ 1], v, p.ld_qkv, seq.start + next, col, valid);
    }
    cp_async_commit();
    cp_async_wait<1>();  // everything but the prefetch has landed: Q and this tile
    __syncthreads();
    if (it == 0) {
#pragma unroll
      for (int kk = 0; kk < kTcD / 16; ++kk) ldmatrix_x4(qa[kk], a_address(sQ, warp * 16, kk * 16, lane));
    }

    // S = Q_w · Kᵀ: 16 rows × 64 keys, 8 C tiles
    float s[kTcTile / 8][4] = {};
#pragma unroll
    for (int kk = 0; kk < kTcD / 16; ++kk)
#pragma unroll
      for (int np = 0; np < kTcTile / 16; ++np) {
        uint32_t b[4];
        ldmatrix_x4(b, bt_address(sK[buf], np * 16, kk * 16, lane));
        mma_bf16(s[2 * np], qa[kk], b[0], b[1]);
        mma_bf16(s[2 * np + 1], qa[kk], b[2], b[3]);
      }

    // Online softmax: with m' = max(m, max_j x_j), l' = l·2^(m−m') + Σ_j 2^(x_j−m') and O
    // rescaled by 2^(m−m'), the final O/l is softmax·V whatever the number of tiles.
    float mx[2] = {kNegInf, kNegInf};
#pragma unroll
    for (int n = 0; n < kTcTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = k0 + n * 8 + 2 * t + (e & 1), r = e >> 1;
        const bool visible = j < seq.len && (!p.causal || j <= i_row[r]);
        s[n][e] = visible ? s[n][e] * sl2 : kNegInf;
        mx[r] = fmaxf(mx[r], s[n][e]);
      }
    float alpha[2], m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(m[r], mx[r]);
      m_use[r] = m_new == kNegInf ? 0.f : m_new;  // no visible key yet: keep 0s, no NaN
      alpha[r] = exp2_approx(m[r] - m_use[r]);
      m[r] = m_new;
      l[r] *= alpha[r];
    }
    const uint32_t keep = p.drop_threshold != 0
                              ? keep_bits_by_query<kTcTile / 8>(p, h, seq, i_row[0], k0, lane)
                              : 0xffffffffu;
#pragma unroll
    for (int n = 0; n < kTcTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const float pe = exp2_approx(s[n][e] - m_use[r]);  // 0 for invisible keys
        l[r] += pe;  // l sums the f32 P; P·V uses it rounded to bf16
        s[n][e] = (keep >> (n * 4 + e)) & 1u ? pe : 0.f;
      }
#pragma unroll
    for (int n = 0; n < kTcD / 8; ++n) {
      o[n][0] *= alpha[0];
      o[n][1] *= alpha[0];
      o[n][2] *= alpha[1];
      o[n][3] *= alpha[1];
    }

    // O += (P ⊙ M) · V
#pragma unroll
    for (int kk = 0; kk < kTcTile / 16; ++kk) {
      uint32_t pa[4];
      c_to_a(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < kTcD / 16; ++dp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, b_address(sV[buf], kk * 16, dp * 16, lane));
        mma_bf16(o[2 * dp], pa, b[0], b[1]);
        mma_bf16(o[2 * dp + 1], pa, b[2], b[3]);
      }
    }
    __syncthreads();  // this buffer is consumed before iteration it + 1 prefetches into it
  }

  // O = (1/(1−p)) · O / l; l is summed over the row's 4 lanes first.
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    inv[r] = l[r] > 0.f ? p.drop_scale / l[r] : 0.f;
  }
  // sQ's rows 16w.. were read only by this warp (its A fragments): reuse them as staging.
  store_rows(o, inv[0], inv[1], sQ + warp * 16 * kLdH, out, p.ld_out, seq.start + q0 + warp * 16,
             col, seq.len - q0 - warp * 16, lane);
  if (t == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
      if (i_row[r] < seq.len) lse[h * p.tokens + seq.start + i_row[r]] = (m[r] + log2f(l[r])) * kLn2;
  }
}

// One step of a warp's 16-key strip (keys key0.., K and V as A fragments ka, va) over 32 queries:
// rows c0.. of the shared tiles sQ and sdO, query positions i0 + c0.., their lse·log2 e and D at
// sL[c0..] and sD[c0..]. Sᵀ = K_w · Qᵀ and dP̃ᵀ = V_w · dOᵀ (16 keys × 32 queries, 4 C tiles each);
// P = 2^(x − lse·log2 e), P̃ = P ⊙ M/(1−p), dS = P ⊙ (M/(1−p) ⊙ dP̃ − D); then dV_w += P̃ᵀ · dO and
// dK_w += dSᵀ · Q (2 k-steps of 16). dSᵀ is left in ds (f32, unscaled).
__device__ __forceinline__ void key_strip_step(const AttentionParams& p, const Span& seq, int h,
                                               int key0, int i0, int c0,
                                               const uint32_t (&ka)[kTcD / 16][4],
                                               const uint32_t (&va)[kTcD / 16][4],
                                               const bf16_t* sQ, const bf16_t* sdO, const float* sL,
                                               const float* sD, float (&dk_acc)[kTcD / 8][4],
                                               float (&dv_acc)[kTcD / 8][4], float (&ds)[4][4],
                                               int lane) {
  const int g = lane >> 2, t = lane & 3;
  float st[4][4] = {};
#pragma unroll
  for (int n = 0; n < 4; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) ds[n][e] = 0.f;
#pragma unroll
  for (int kk = 0; kk < kTcD / 16; ++kk)
#pragma unroll
    for (int np = 0; np < 2; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, bt_address(sQ, c0 + np * 16, kk * 16, lane));
      mma_bf16(st[2 * np], ka[kk], b[0], b[1]);
      mma_bf16(st[2 * np + 1], ka[kk], b[2], b[3]);
      ldmatrix_x4(b, bt_address(sdO, c0 + np * 16, kk * 16, lane));
      mma_bf16(ds[2 * np], va[kk], b[0], b[1]);
      mma_bf16(ds[2 * np + 1], va[kk], b[2], b[3]);
    }
  const uint32_t keep = p.drop_threshold != 0 ? keep_bits_by_key<4>(p, h, seq, key0, i0 + c0, lane)
                                              : 0xffffffffu;
  const float sl2 = p.scale * kLog2e;
  const int j_row[2] = {key0 + g, key0 + g + 8};  // this thread's keys
#pragma unroll
  for (int n = 0; n < 4; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int cq = c0 + n * 8 + 2 * t + (e & 1), i = i0 + cq, j = j_row[e >> 1];
      const bool visible = i < seq.len && j < seq.len && (!p.causal || j <= i);
      const float prob = visible ? exp2_approx(st[n][e] * sl2 - sL[cq]) : 0.f;
      const bool kept = (keep >> (n * 4 + e)) & 1u;
      st[n][e] = kept ? prob * p.drop_scale : 0.f;
      ds[n][e] = prob * ((kept ? ds[n][e] * p.drop_scale : 0.f) - sD[cq]);
    }
#pragma unroll
  for (int kq = 0; kq < 2; ++kq) {
    uint32_t pa[4], dsa[4];
    c_to_a(pa, st[2 * kq], st[2 * kq + 1]);
    c_to_a(dsa, ds[2 * kq], ds[2 * kq + 1]);
#pragma unroll
    for (int dp = 0; dp < kTcD / 16; ++dp) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, b_address(sdO, c0 + kq * 16, dp * 16, lane));
      mma_bf16(dv_acc[2 * dp], pa, b[0], b[1]);
      mma_bf16(dv_acc[2 * dp + 1], pa, b[2], b[3]);
      ldmatrix_x4_trans(b, b_address(sQ, c0 + kq * 16, dp * 16, lane));
      mma_bf16(dk_acc[2 * dp], dsa, b[0], b[1]);
      mma_bf16(dk_acc[2 * dp + 1], dsa, b[2], b[3]);
    }
  }
}

// dK, dV of one 64-key tile: walks the query tiles that see it (all, or from its own position on
// with the causal mask), 32 queries at a time, recomputing Sᵀ and dP̃ᵀ (keys × queries) in
// registers; P̃ᵀ and dSᵀ are then the A operands of dV += P̃ᵀ dO and dK += dSᵀ Q.
__global__ void __launch_bounds__(kTcThreads, 3)
attention_backward_dkdv_tc(AttentionParams p, const bf16_t* __restrict__ dout,
                           const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                           const bf16_t* __restrict__ v, const float* __restrict__ lse,
                           const float* __restrict__ delta, bf16_t* __restrict__ dk,
                           bf16_t* __restrict__ dv) {
  __shared__ __align__(128) bf16_t sQ[kTileH];
  __shared__ __align__(128) bf16_t sdO[kTileH];
  __shared__ float sL[kTcTile];  // lse·log2(e) of the query tile
  __shared__ float sD[kTcTile];  // D of the query tile
  const int h = blockIdx.y;
  const Span seq = block_sequence(p);
  const int k0 = blockIdx.x * kTcTile;
  if (k0 >= seq.len) return;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t col = static_cast<int64_t>(h) * kTcD;

  // The warp's 16 keys of K and V as A fragments, staged through sQ and sdO.
  load_tile_async(sQ, k, p.ld_qkv, seq.start + k0, col, min(kTcTile, seq.len - k0));
  load_tile_async(sdO, v, p.ld_qkv, seq.start + k0, col, min(kTcTile, seq.len - k0));
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  uint32_t ka[kTcD / 16][4], va[kTcD / 16][4];
#pragma unroll
  for (int kk = 0; kk < kTcD / 16; ++kk) {
    ldmatrix_x4(ka[kk], a_address(sQ, warp * 16, kk * 16, lane));
    ldmatrix_x4(va[kk], a_address(sdO, warp * 16, kk * 16, lane));
  }
  float dk_acc[kTcD / 8][4] = {}, dv_acc[kTcD / 8][4] = {};

  // Causal: query i sees key j only when i >= j, so the queries before k0 see none of the tile.
  for (int i0 = p.causal ? k0 : 0; i0 < seq.len; i0 += kTcTile) {
    __syncthreads();  // sQ, sdO, sL, sD are consumed (the K/V staging on the first pass)
    const int valid = min(kTcTile, seq.len - i0);
    load_tile_async(sQ, q, p.ld_qkv, seq.start + i0, col, valid);
    load_tile_async(sdO, dout, p.ld_out, seq.start + i0, col, valid);
    cp_async_commit();
    if (threadIdx.x < kTcTile) {
      const int r = threadIdx.x;
      sL[r] = r < valid ? lse[h * p.tokens + seq.start + i0 + r] * kLog2e : 0.f;
      sD[r] = r < valid ? delta[h * p.tokens + seq.start + i0 + r] : 0.f;
    }
    cp_async_wait<0>();
    __syncthreads();

#pragma unroll
    for (int half = 0; half < 2; ++half) {  // the tile's queries 32 at a time
      float ds[4][4];
      key_strip_step(p, seq, h, k0 + warp * 16, i0, half * 32, ka, va, sQ, sdO, sL, sD, dk_acc, dv_acc,
                     ds, lane);
    }
  }

  __syncthreads();  // every warp is done with sQ and sdO: their rows become staging
  const int first = k0 + warp * 16;
  store_rows(dk_acc, p.scale, p.scale, sQ + warp * 16 * kLdH, dk, p.ld_grad_qkv, seq.start + first,
             col, seq.len - first, lane);
  store_rows(dv_acc, 1.f, 1.f, sdO + warp * 16 * kLdH, dv, p.ld_grad_qkv, seq.start + first, col,
             seq.len - first, lane);
}

// dQ of one 64-query tile: walks the key tiles it sees, 32 keys at a time, recomputing S and dP̃
// in registers; dS is then the A operand of dQ += dS K.
__global__ void __launch_bounds__(kTcThreads, 3)
attention_backward_dq_tc(AttentionParams p, const bf16_t* __restrict__ dout,
                         const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                         const bf16_t* __restrict__ v, const float* __restrict__ lse,
                         const float* __restrict__ delta, bf16_t* __restrict__ dq) {
  __shared__ __align__(128) bf16_t sK[kTileH];
  __shared__ __align__(128) bf16_t sV[kTileH];
  const int h = blockIdx.y;
  const Span seq = block_sequence(p);
  const int q0 = blockIdx.x * kTcTile;
  if (q0 >= seq.len) return;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int g = lane >> 2, t = lane & 3;
  const int64_t col = static_cast<int64_t>(h) * kTcD;

  // The warp's 16 rows of Q and dO as A fragments, staged through sK and sV.
  load_tile_async(sK, q, p.ld_qkv, seq.start + q0, col, min(kTcTile, seq.len - q0));
  load_tile_async(sV, dout, p.ld_out, seq.start + q0, col, min(kTcTile, seq.len - q0));
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  uint32_t qa[kTcD / 16][4], oa[kTcD / 16][4];
#pragma unroll
  for (int kk = 0; kk < kTcD / 16; ++kk) {
    ldmatrix_x4(qa[kk], a_address(sK, warp * 16, kk * 16, lane));
    ldmatrix_x4(oa[kk], a_address(sV, warp * 16, kk * 16, lane));
  }
  float dq_acc[kTcD / 8][4] = {};
  const int i_row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
  float lse2[2], d_row[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool ok = i_row[r] < seq.len;
    lse2[r] = ok ? lse[h * p.tokens + seq.start + i_row[r]] * kLog2e : 0.f;
    d_row[r] = ok ? delta[h * p.tokens + seq.start + i_row[r]] : 0.f;
  }
  const float sl2 = p.scale * kLog2e;

  const int key_end = p.causal ? min(seq.len, q0 + kTcTile) : seq.len;
  for (int k0 = 0; k0 < key_end; k0 += kTcTile) {
    __syncthreads();  // sK and sV are consumed (the Q/dO staging on the first pass)
    const int valid = min(kTcTile, seq.len - k0);
    load_tile_async(sK, k, p.ld_qkv, seq.start + k0, col, valid);
    load_tile_async(sV, v, p.ld_qkv, seq.start + k0, col, valid);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int c0 = half * 32;  // first key column of this half within the tile
      // S = Q_w · Kᵀ and dP̃ = dO_w · Vᵀ: 16 queries × 32 keys
      float s[4][4] = {}, dp[4][4] = {};
#pragma unroll
      for (int kk = 0; kk < kTcD / 16; ++kk)
#pragma unroll
        for (int np = 0; np < 2; ++np) {
          uint32_t b[4];
          ldmatrix_x4(b, bt_address(sK, c0 + np * 16, kk * 16, lane));
          mma_bf16(s[2 * np], qa[kk], b[0], b[1]);
          mma_bf16(s[2 * np + 1], qa[kk], b[2], b[3]);
          ldmatrix_x4(b, bt_address(sV, c0 + np * 16, kk * 16, lane));
          mma_bf16(dp[2 * np], oa[kk], b[0], b[1]);
          mma_bf16(dp[2 * np + 1], oa[kk], b[2], b[3]);
        }
      const uint32_t keep = p.drop_threshold != 0
                                ? keep_bits_by_query<4>(p, h, seq, i_row[0], k0 + c0, lane)
                                : 0xffffffffu;
#pragma unroll
      for (int n = 0; n < 4; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e >> 1, j = k0 + c0 + n * 8 + 2 * t + (e & 1), i = i_row[r];
          const bool visible = i < seq.len && j < seq.len && (!p.causal || j <= i);
          const float prob = visible ? exp2_approx(s[n][e] * sl2 - lse2[r]) : 0.f;
          const bool kept = (keep >> (n * 4 + e)) & 1u;
          s[n][e] = prob * ((kept ? dp[n][e] * p.drop_scale : 0.f) - d_row[r]);
        }
      // dQ_w += dS · K over these 32 keys (2 k-steps of 16)
#pragma unroll
      for (int kq = 0; kq < 2; ++kq) {
        uint32_t dsa[4];
        c_to_a(dsa, s[2 * kq], s[2 * kq + 1]);
#pragma unroll
        for (int dpi = 0; dpi < kTcD / 16; ++dpi) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, b_address(sK, c0 + kq * 16, dpi * 16, lane));
          mma_bf16(dq_acc[2 * dpi], dsa, b[0], b[1]);
          mma_bf16(dq_acc[2 * dpi + 1], dsa, b[2], b[3]);
        }
      }
    }
  }

  __syncthreads();  // every warp is done with sK: its rows become staging
  store_rows(dq_acc, p.scale, p.scale, sK + warp * 16 * kLdH, dq, p.ld_grad_qkv,
             seq.start + q0 + warp * 16, col, seq.len - q0 - warp * 16, lane);
}

// =================================================================================================
// Backward of sequences of up to 128 tokens (bf16, Dh = 64): one block per (sequence, head) does
// the work of the three kernels above, and computes each score, probability and dP̃ once where
// they compute them twice (once for dK/dV, once for dQ): 5 products of 128×128×64 instead of 7,
// Q, K, V and dO read once, D taken in the block, one launch instead of three.
//   1. Q, dO, K and V of the whole sequence land in shared memory; D = rowsum(dO ⊙ O) as
//      attention_delta_kernel sums it (same bits), lse·log2 e beside it.
//   2. Warp w takes keys w·16.. and 64 + w·16.. (two strips), as attention_backward_dkdv_tc takes
//      its 16 keys: Sᵀ and dP̃ᵀ over the queries 32 at a time, dV += P̃ᵀ dO, dK += dSᵀ Q, and
//      dSᵀ, rounded to bf16 as the A operand of dK rounds it, is kept in shared memory.
//   3. dQ = dS K, warp w taking queries w·32.., with dS loaded from dSᵀ by ldmatrix .trans.
// Shared memory (74.75 KiB: 3 blocks, 12 warps per SM): Q and dO, 128 rows of 72 each; K and V as
// [K rows 0..63][V rows 0..63][K rows 64..127][V rows 64..127]. Once every warp holds a half's K
// and V strips in registers, that half is free and dSᵀ (keys × queries, rows of 136) of those
// keys is written over it; step 3 reloads K over Q. Then lse·log2 e and D (f32).
// dK and dV go to memory straight from the accumulators (4-byte stores; L2 merges the sectors).
// =================================================================================================
constexpr int kShortLen = 2 * kTcTile;  // the longest sequence this path takes
constexpr int kShortChunk = 32;         // queries per step of a key strip
constexpr int kLdS = kShortLen + 8;     // bf16 row stride of dSᵀ: conflict-free 4-byte stores
constexpr int kShortHalf = 2 * kTileH;  // one half: 64 rows of K, then 64 of V
static_assert(kTcTile * kLdS <= kShortHalf, "dSᵀ of a half's keys fits over its K and V");
static_assert(kTcWarps * 16 == kTcTile, "a warp's key strip is 16 rows of a half");
constexpr size_t kShortSmem = 8 * kTileH * sizeof(bf16_t) + 2 * kShortLen * sizeof(float);

// The A fragment of the 16×16 block at (row0, col0) of A = Xᵀ, X row-major with row stride ld,
// for ldmatrix .trans: row0 indexes X's columns, col0 its rows.
__device__ __forceinline__ const bf16_t* at_address(const bf16_t* s, int row0, int col0, int ld,
                                                    int lane) {
  return s + (col0 + (lane >> 4) * 8 + (lane & 7)) * ld + row0 + ((lane >> 3) & 1) * 8;
}

// A warp's 16×64 accumulator strip (acc[n] = C tile of columns 8n..8n+7), times `mul`, as bf16
// to rows [first, first + 16) of x, rows at or past `valid` skipped: 4-byte stores.
__device__ __forceinline__ void store_rows_direct(const float (&acc)[kTcD / 8][4], float mul,
                                                  bf16_t* __restrict__ x, int64_t ld, int64_t first,
                                                  int64_t col, int valid, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (g + 8 * r >= valid) continue;
    bf16_t* row = x + (first + g + 8 * r) * ld + col + 2 * t;
#pragma unroll
    for (int n = 0; n < kTcD / 8; ++n)
      *reinterpret_cast<uint32_t*>(row + n * 8) = pack_bf16x2(acc[n][2 * r] * mul, acc[n][2 * r + 1] * mul);
  }
}

__global__ void __launch_bounds__(kTcThreads, 3)
attention_backward_short_tc(AttentionParams p, const bf16_t* __restrict__ dout,
                            const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                            const bf16_t* __restrict__ v, const bf16_t* __restrict__ out,
                            const float* __restrict__ lse, bf16_t* __restrict__ dq,
                            bf16_t* __restrict__ dk, bf16_t* __restrict__ dv) {
  extern __shared__ float short_smem[];
  bf16_t* const sQ = reinterpret_cast<bf16_t*>(short_smem);
  bf16_t* const sdO = sQ + 2 * kTileH;
  bf16_t* const sKV = sQ + 4 * kTileH;  // half i at sKV + i * kShortHalf, its V kTileH further
  float* const sL = reinterpret_cast<float*>(sQ + 8 * kTileH);
  float* const sD = sL + kShortLen;
  const int h = blockIdx.y;
  const Span seq = block_sequence(p);
  if (seq.len == 0) return;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int g = lane >> 2, t = lane & 3;
  const int64_t col = static_cast<int64_t>(h) * kTcD;
  const int halves = seq.len > kTcTile ? 2 : 1;

  // 1. The sequence's rows; tiles past its end are never read.
  for (int i = 0; i < halves; ++i) {
    const int64_t first = seq.start + i * kTcTile;
    const int valid = min(kTcTile, seq.len - i * kTcTile);
    load_tile_async(sQ + i * kTileH, q, p.ld_qkv, first, col, valid);
    load_tile_async(sdO + i * kTileH, dout, p.ld_out, first, col, valid);
    load_tile_async(sKV + i * kShortHalf, k, p.ld_qkv, first, col, valid);
    load_tile_async(sKV + i * kShortHalf + kTileH, v, p.ld_qkv, first, col, valid);
  }
  cp_async_commit();
  for (int r = threadIdx.x; r < kShortLen; r += kTcThreads)
    sL[r] = r < seq.len ? lse[h * p.tokens + seq.start + r] * kLog2e : 0.f;
  cp_async_wait<0>();
  __syncthreads();
  // D = rowsum(dO ∘ O), a row per warp at a time. O is the forward's output, read from DRAM (long
  // out of L2), so a warp loads its two elements per lane of kDeltaRows rows at once before
  // summing them: one row's latency after another stalled it before the products (an estimated
  // 10-16 µs a block). Per row the sum is attention_delta_kernel's, lane by lane, in its order.
  constexpr int kDeltaRows = 8;
  static_assert(kTcD == 2 * kWarpSize, "two elements of a row per lane");
  for (int r0 = warp; r0 < halves * kTcTile; r0 += kTcWarps * kDeltaRows) {
    float o[kDeltaRows][2];
#pragma unroll
    for (int j = 0; j < kDeltaRows; ++j) {
      const int r = r0 + j * kTcWarps;
      const bf16_t* row = out + (seq.start + r) * p.ld_out + col;
      o[j][0] = r < seq.len ? to_float(row[lane]) : 0.f;
      o[j][1] = r < seq.len ? to_float(row[lane + kWarpSize]) : 0.f;
    }
#pragma unroll
    for (int j = 0; j < kDeltaRows; ++j) {
      const int r = r0 + j * kTcWarps;  // the same for the whole warp
      if (r >= halves * kTcTile) break;
      float sum = 0.f;
      if (r < seq.len) {
        sum += to_float(sdO[r * kLdH + lane]) * o[j][0];
        sum += to_float(sdO[r * kLdH + lane + kWarpSize]) * o[j][1];
      }
      sum = warp_sum(sum);
      if (lane == 0) sD[r] = sum;
    }
  }
  __syncthreads();

  // 2. dK, dV and dSᵀ by key strips.
  for (int half = 0; half < halves; ++half) {
    bf16_t* const sK = sKV + half * kShortHalf;
    const int k0 = half * kTcTile + warp * 16;  // the warp's first key
    const bool active = k0 < seq.len;
    uint32_t ka[kTcD / 16][4], va[kTcD / 16][4];
    if (active) {
#pragma unroll
      for (int kk = 0; kk < kTcD / 16; ++kk) {
        ldmatrix_x4(ka[kk], a_address(sK, warp * 16, kk * 16, lane));
        ldmatrix_x4(va[kk], a_address(sK + kTileH, warp * 16, kk * 16, lane));
      }
    }
    __syncthreads();  // every warp holds its strips: the half takes dSᵀ
    if (!active) continue;
    bf16_t* const ds = sK + warp * 16 * kLdS;  // dSᵀ rows of the warp's keys
    float dk_acc[kTcD / 8][4] = {}, dv_acc[kTcD / 8][4] = {};
    // Causal: the queries before the chunk holding k0 see none of the strip (step 3 reads no dSᵀ
    // there).
    for (int c0 = p.causal ? k0 / kShortChunk * kShortChunk : 0; c0 < seq.len; c0 += kShortChunk) {
      float dst[4][4];
      key_strip_step(p, seq, h, k0, 0, c0, ka, va, sQ, sdO, sL, sD, dk_acc, dv_acc, dst, lane);
#pragma unroll
      for (int n = 0; n < 4; ++n) {  // rounded as the A operand of dK rounds it
        *reinterpret_cast<uint32_t*>(ds + g * kLdS + c0 + n * 8 + 2 * t) = pack_bf16x2(dst[n][0], dst[n][1]);
        *reinterpret_cast<uint32_t*>(ds + (g + 8) * kLdS + c0 + n * 8 + 2 * t) =
            pack_bf16x2(dst[n][2], dst[n][3]);
      }
    }
    store_rows_direct(dk_acc, p.scale, dk, p.ld_grad_qkv, seq.start + k0, col, seq.len - k0, lane);
    store_rows_direct(dv_acc, 1.f, dv, p.ld_grad_qkv, seq.start + k0, col, seq.len - k0, lane);
  }

  // 3. dQ = dS · K, K reloaded over Q.
  __syncthreads();  // dSᵀ is whole; Q and dO are read no more
  for (int i = 0; i < halves; ++i)
    load_tile_async(sQ + i * kTileH, k, p.ld_qkv, seq.start + i * kTcTile, col,
                    min(kTcTile, seq.len - i * kTcTile));
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  for (int strip = 0; strip < 2; ++strip) {
    const int q0 = warp * 32 + strip * 16;  // the strip's first query
    if (q0 >= seq.len) break;
    float dq_acc[kTcD / 8][4] = {};
    // Causal: the keys past the strip's last query, whose dSᵀ has no chunk of these queries.
    const int key_end = p.causal ? min(seq.len, q0 + 16) : seq.len;
    for (int j0 = 0; j0 < key_end; j0 += 16) {
      uint32_t dsa[4];
      ldmatrix_x4_trans(dsa, at_address(sKV + (j0 / kTcTile) * kShortHalf, q0, j0 % kTcTile, kLdS, lane));
#pragma unroll
      for (int dp = 0; dp < kTcD / 16; ++dp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, b_address(sQ, j0, dp * 16, lane));
        mma_bf16(dq_acc[2 * dp], dsa, b[0], b[1]);
        mma_bf16(dq_acc[2 * dp + 1], dsa, b[2], b[3]);
      }
    }
    store_rows_direct(dq_acc, p.scale, dq, p.ld_grad_qkv, seq.start + q0, col, seq.len - q0, lane);
  }
}

// =================================================================================================
// Host side
// =================================================================================================

constexpr size_t kDefaultSmemLimit = 48 * 1024;

// Raises a kernel's dynamic shared-memory limit when it needs more than the default 48 KiB.
template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  if (bytes > kDefaultSmemLimit)
    QARAC_CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(bytes)));
}

// The gradients' row stride is checked in the backward pass only: the forward has none.
const char* shape_problem(const AttentionShape& s, bool backward) {
  if (s.batch < 0 || s.tokens < 0 || s.max_len < 0) return "negative sizes";
  if (s.heads <= 0 || s.head_dim <= 0) return "heads and head_dim must be positive";
  if (s.head_dim > 128) return "head_dim above 128 is not supported";
  if (s.batch > 65535 || s.heads > 65535) return "batch and heads must be at most 65535 (grid limit)";
  if (s.tokens > INT32_MAX || s.max_len > s.tokens) return "tokens beyond i32 offsets, or max_len > tokens";
  const int64_t row = s.heads * s.head_dim;
  if (s.ld_qkv < row || s.ld_out < row || (backward && s.ld_grad_qkv < row))
    return "a row stride below heads * head_dim";
  return nullptr;
}

void check_call(const char* op, DType dtype, const AttentionShape& s, bool backward) {
  QARAC_CHECK(dtype == DType::f32 || dtype == DType::bf16, op, ": dtype must be f32 or bf16, got ",
              dtype_name(dtype));
  const char* problem = shape_problem(s, backward);
  QARAC_CHECK(problem == nullptr, op, ": ", problem ? problem : "", " (batch ", s.batch, ", tokens ",
              s.tokens, ", max_len ", s.max_len, ", heads ", s.heads, ", head_dim ", s.head_dim,
              ", row strides: q, k, v ", s.ld_qkv, ", dq, dk, dv ", s.ld_grad_qkv, ", out ", s.ld_out,
              ")");
  QARAC_CHECK(s.batch == 0 || s.offsets != nullptr, op, ": offsets missing");
  QARAC_CHECK(s.batch == 0 || s.ids != nullptr, op, ": sequence ids missing");
}

AttentionParams make_params(const AttentionShape& s, bool causal, double dropout_p, const RngKey& key) {
  QARAC_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "attention: dropout_p must lie in [0, 1), got ", dropout_p);
  const uint32_t threshold = dropout_threshold(dropout_p);
  QARAC_CHECK(threshold < kDropoutDraws, "attention: dropout_p ", dropout_p,
              " rounds to 1 in the 16-bit draws (core/rng.h)");
  AttentionParams p{};
  p.offsets = s.offsets;
  p.tokens = s.tokens;
  p.ids = s.ids;
  p.ld_qkv = s.ld_qkv;
  p.ld_grad_qkv = s.ld_grad_qkv;
  p.ld_out = s.ld_out;
  p.head_dim = static_cast<int>(s.head_dim);
  p.causal = causal;
  p.scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));  // as the CPU reference rounds it
  p.drop_threshold = threshold;
  p.drop_scale = static_cast<float>(dropout_keep_scale(threshold));  // 1 when threshold is 0
  p.key = key;
  return p;
}

// The tensor-core path: bf16, Dh = 64, and every head's row segment 16-byte aligned for the
// cp.async and uint4 accesses: aligned base pointers and row strides of whole 16 bytes (a head
// starts 128 bytes into its row). Column slices of a wider buffer need not have either (a slice
// at column 1, a buffer of 3d + 1 columns): they take the generic path.
bool use_tensor_cores(DType dtype, const AttentionShape& s, std::initializer_list<const void*> ptrs,
                      std::initializer_list<int64_t> row_strides) {
  if (dtype != DType::bf16 || s.head_dim != kTcD) return false;
  for (const void* ptr : ptrs)
    if (!aligned16(ptr)) return false;
  for (const int64_t ld : row_strides)
    if (ld * static_cast<int64_t>(sizeof(bf16_t)) % 16 != 0) return false;
  return true;
}

dim3 grid(const AttentionShape& s, int rows_per_block) {
  const int64_t tiles = ceil_div(s.max_len, rows_per_block);
  QARAC_CHECK(tiles <= INT32_MAX, "attention: max_len ", s.max_len, " too large for the grid");
  return dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(s.heads), static_cast<unsigned>(s.batch));
}

template <class T, int NC>
void forward_generic(const AttentionParams& p, const AttentionShape& s, const void* q, const void* k,
                     const void* v, void* out, float* lse) {
  const auto kernel = attention_forward_generic<T, NC>;
  const size_t smem = static_cast<size_t>(generic_forward_smem(p.head_dim)) * sizeof(float);
  allow_smem(kernel, smem);
  kernel<<<grid(s, kGenBr), kGenThreads, smem, stream()>>>(
      p, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
      static_cast<T*>(out), lse);
  QARAC_CHECK_LAUNCH();
}

template <class T, int NC>
void backward_generic(const AttentionParams& p, const AttentionShape& s, const void* dout,
                      const void* q, const void* k, const void* v, const float* lse,
                      const float* delta, void* dq, void* dk, void* dv) {
  const auto dkdv = attention_backward_dkdv_generic<T, NC>;
  const size_t dkdv_smem = static_cast<size_t>(generic_dkdv_smem(p.head_dim)) * sizeof(float);
  allow_smem(dkdv, dkdv_smem);
  dkdv<<<grid(s, kGenBk), kGenThreads, dkdv_smem, stream()>>>(
      p, static_cast<const T*>(dout), static_cast<const T*>(q), static_cast<const T*>(k),
      static_cast<const T*>(v), lse, delta, static_cast<T*>(dk), static_cast<T*>(dv));
  QARAC_CHECK_LAUNCH();
  const auto dqk = attention_backward_dq_generic<T, NC>;
  const size_t dq_smem = static_cast<size_t>(generic_dq_smem(p.head_dim)) * sizeof(float);
  allow_smem(dqk, dq_smem);
  dqk<<<grid(s, kGenBr), kGenThreads, dq_smem, stream()>>>(
      p, static_cast<const T*>(dout), static_cast<const T*>(q), static_cast<const T*>(k),
      static_cast<const T*>(v), lse, delta, static_cast<T*>(dq));
  QARAC_CHECK_LAUNCH();
}

// The generic launches as callables for dispatch_generic.
struct ForwardGeneric {
  const AttentionParams& p;
  const AttentionShape& s;
  const void *q, *k, *v;
  void* out;
  float* lse;
  template <class T, int NC>
  void operator()() const { forward_generic<T, NC>(p, s, q, k, v, out, lse); }
};
struct OverRanges {
  int64_t n, heads, head_dim, ld_q, ld_kv;
  const void *q, *k, *v;
  const int32_t* ranges;
  void* out;
  template <class T, int NC>
  void operator()() const {
    const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(heads));
    attention_over_ranges_kernel<T, NC><<<grid, kRangeWarps * kWarpSize, 0, stream()>>>(
        static_cast<const T*>(q), ld_q, static_cast<const T*>(k), static_cast<const T*>(v), ld_kv,
        ranges, static_cast<int>(head_dim), 1.0f / std::sqrt(static_cast<float>(head_dim)),
        static_cast<T*>(out));
    QARAC_CHECK_LAUNCH();
  }
};
struct BackwardGeneric {
  const AttentionParams& p;
  const AttentionShape& s;
  const void *dout, *q, *k, *v;
  const float *lse, *delta;
  void *dq, *dk, *dv;
  template <class T, int NC>
  void operator()() const { backward_generic<T, NC>(p, s, dout, q, k, v, lse, delta, dq, dk, dv); }
};

// Calls f.template operator()<T, NC>() for the element type and ceil(head_dim / 32).
template <class F>
void dispatch_generic(DType dtype, int64_t head_dim, F&& f) {
  const int nc = static_cast<int>(ceil_div(head_dim, kWarpSize));
  auto with_type = [&](auto tag) {
    using T = decltype(tag);
    switch (nc) {
      case 1: f.template operator()<T, 1>(); break;
      case 2: f.template operator()<T, 2>(); break;
      case 3: f.template operator()<T, 3>(); break;
      default: f.template operator()<T, 4>(); break;
    }
  };
  if (dtype == DType::f32) with_type(float{});
  else with_type(bf16_t{});
}

}  // namespace

void attention_forward(DType dtype, const AttentionShape& shape, const void* q, const void* k,
                       const void* v, bool causal, double dropout_p, const RngKey& key, void* out,
                       float* lse) {
  check_call("attention_forward", dtype, shape, false);
  const AttentionParams p = make_params(shape, causal, dropout_p, key);
  if (shape.batch == 0 || shape.tokens == 0 || shape.max_len == 0) return;
  if (use_tensor_cores(dtype, shape, {q, k, v, out}, {shape.ld_qkv, shape.ld_out})) {
    attention_forward_tc<<<grid(shape, kTcTile), kTcThreads, 0, stream()>>>(
        p, static_cast<const bf16_t*>(q), static_cast<const bf16_t*>(k),
        static_cast<const bf16_t*>(v), static_cast<bf16_t*>(out), lse);
    QARAC_CHECK_LAUNCH();
    return;
  }
  dispatch_generic(dtype, shape.head_dim, ForwardGeneric{p, shape, q, k, v, out, lse});
}

void attention_backward(DType dtype, const AttentionShape& shape, const void* dout, const void* q,
                        const void* k, const void* v, const void* out, const float* lse,
                        bool causal, double dropout_p, const RngKey& key, void* dq, void* dk,
                        void* dv, AttentionBackwardPath path) {
  check_call("attention_backward", dtype, shape, true);
  const AttentionParams p = make_params(shape, causal, dropout_p, key);
  if (shape.batch == 0 || shape.tokens == 0 || shape.max_len == 0) return;

  const bool tensor_cores = use_tensor_cores(dtype, shape, {dout, q, k, v, dq, dk, dv},
                                             {shape.ld_qkv, shape.ld_grad_qkv, shape.ld_out});
  if (tensor_cores && path == AttentionBackwardPath::automatic && shape.max_len <= kShortLen) {
    allow_smem(attention_backward_short_tc, kShortSmem);
    attention_backward_short_tc<<<dim3(1, static_cast<unsigned>(shape.heads), static_cast<unsigned>(shape.batch)),
                                  kTcThreads, kShortSmem, stream()>>>(
        p, static_cast<const bf16_t*>(dout), static_cast<const bf16_t*>(q),
        static_cast<const bf16_t*>(k), static_cast<const bf16_t*>(v), static_cast<const bf16_t*>(out),
        lse, static_cast<bf16_t*>(dq), static_cast<bf16_t*>(dk), static_cast<bf16_t*>(dv));
    QARAC_CHECK_LAUNCH();
    return;
  }

  // D = rowsum(dO ⊙ O) [H, T] f32, in a block of the caching allocator: freed when this function
  // returns, it can only be reused by work queued after these kernels on the same stream.
  int device = 0;
  QARAC_CHECK_CUDA(cudaGetDevice(&device));
  const Buffer delta_buffer(static_cast<size_t>(shape.heads * shape.tokens) * sizeof(float), Device::cuda(device));
  float* delta = static_cast<float*>(delta_buffer.data());
  {
    constexpr int kRowsPerBlock = 8;  // one warp per token row
    const unsigned blocks = static_cast<unsigned>(ceil_div(shape.tokens, kRowsPerBlock));
    const int heads = static_cast<int>(shape.heads), dh = static_cast<int>(shape.head_dim);
    if (dtype == DType::f32)
      attention_delta_kernel<float><<<blocks, kRowsPerBlock * kWarpSize, 0, stream()>>>(
          static_cast<const float*>(dout), static_cast<const float*>(out), shape.tokens, heads, dh,
          shape.ld_out, delta);
    else
      attention_delta_kernel<bf16_t><<<blocks, kRowsPerBlock * kWarpSize, 0, stream()>>>(
          static_cast<const bf16_t*>(dout), static_cast<const bf16_t*>(out), shape.tokens, heads, dh,
          shape.ld_out, delta);
    QARAC_CHECK_LAUNCH();
  }

  if (tensor_cores) {
    attention_backward_dkdv_tc<<<grid(shape, kTcTile), kTcThreads, 0, stream()>>>(
        p, static_cast<const bf16_t*>(dout), static_cast<const bf16_t*>(q),
        static_cast<const bf16_t*>(k), static_cast<const bf16_t*>(v), lse, delta,
        static_cast<bf16_t*>(dk), static_cast<bf16_t*>(dv));
    QARAC_CHECK_LAUNCH();
    attention_backward_dq_tc<<<grid(shape, kTcTile), kTcThreads, 0, stream()>>>(
        p, static_cast<const bf16_t*>(dout), static_cast<const bf16_t*>(q),
        static_cast<const bf16_t*>(k), static_cast<const bf16_t*>(v), lse, delta,
        static_cast<bf16_t*>(dq));
    QARAC_CHECK_LAUNCH();
    return;
  }
  dispatch_generic(dtype, shape.head_dim,
                   BackwardGeneric{p, shape, dout, q, k, v, lse, delta, dq, dk, dv});
}

void attention_over_ranges(DType dtype, int64_t n, int64_t heads, int64_t head_dim, const void* q,
                           int64_t ld_q, const void* k, const void* v, int64_t ld_kv,
                           const int32_t* ranges, void* out) {
  QARAC_CHECK(dtype == DType::f32 || dtype == DType::bf16,
              "attention_over_ranges: dtype must be f32 or bf16, got ", dtype_name(dtype));
  QARAC_CHECK(heads > 0 && heads <= 65535 && head_dim > 0 && head_dim <= 128 && n <= INT32_MAX,
              "attention_over_ranges: ", n, " query rows of ", heads, " heads of ", head_dim,
              " (at most 2^31 - 1 rows, 65535 heads of at most 128)");
  if (n == 0) return;
  dispatch_generic(dtype, head_dim, OverRanges{n, heads, head_dim, ld_q, ld_kv, q, k, v, ranges, out});
}

}  // namespace qarac::cuda
