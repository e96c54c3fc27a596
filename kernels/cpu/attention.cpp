// CPU attention over a padding-free batch, one (sequence b, head h) block at a time. Sequence b
// is rows [o_b, o_b + L_b) of the activations and head h of a token is the Dh columns starting at
// h*Dh, so Q, K, V of one block are [L_b, Dh] matrices whose leading dimension is their tensor's
// row stride (H*Dh, or more for column slices of a fused Q|K|V buffer), and the GEMMs read and
// write them where they lie, with no copies; queries never meet keys of another sequence, so
// nothing is masked but the causal upper triangle. With P the softmax, M the dropout mask,
// s = 1/sqrt(Dh) and, per query row i, ℓ_i = log Σ_j exp(S_ij) (the log-sum-exp over the keys
// row i sees):
//   forward:  S = s Q Kᵀ (causal: j <= i), P = exp(S - ℓ), P̃ = P ⊙ M / (1-p), O = P̃ V;
//             ℓ is saved instead of P, so the memory kept is H×T rather than H×L².
//   backward: P is recomputed from S and ℓ; dP̃ = dO Vᵀ, dP = dP̃ ⊙ M / (1-p),
//             dS = P ⊙ (dP - rowsum(dP ⊙ P)) (softmax Jacobian), dQ = s dS K, dK = s dSᵀ Q,
//             dV = P̃ᵀ dO.
// Since P ⊙ dP = P ⊙ M / (1-p) ⊙ dP̃ = P̃ ⊙ dP̃, and rowsum(P̃ ⊙ dP̃)_i = Σ_j P̃_ij (dO_i · V_j)
// = dO_i · O_i, the backward pass computes
//   dS = P̃ ⊙ dP̃ - P ⊙ D,   D = rowsum(dO ⊙ O)   (O, the forward's output, is an input),
// from the P̃ it needs for dV anyway, drawing the dropout mask once instead of twice. The Philox
// draws cost more than the GEMMs here when each score took a draw of its own: B=8 sequences of
// 128, H=4, Dh=64, f32, bidirectional, on 2 shared cores, the backward pass took 7.0 ms with p=0.1
// and 3.0 ms with p=0. One draw now decides 8 scores (core/rng.h).
// The dropout element of (head h, query position i, key position j) of sequence b is
// attention_element(h, i, j) of sequence ids[b] (core/rng.h), as ops.h specifies, so the CUDA
// kernels draw the same masks and a sequence draws them wherever it lies in the batch. Every
// query sees at least its own key, so every ℓ is finite; empty sequences are skipped.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/gemm.h"

namespace qarac::cpu {
namespace {

// Where one (sequence, head) block lies: rows [begin, begin + len), columns [col, col + Dh).
struct Block {
  int64_t begin, len, col;
  // The offset of its first element in a tensor of row stride ld.
  int64_t at(int64_t ld) const { return begin * ld + col; }
};

// The block of sequence b for head h; len = 0 for an empty sequence.
Block block(const int32_t* offsets, int64_t b, int64_t h, int64_t head_dim) {
  const int64_t begin = offsets[b];
  return {begin, offsets[b + 1] - begin, h * head_dim};
}

// The dropout element of key 0 for query position i of head h: the row's keys follow it.
uint64_t dropout_row_element(int64_t h, int64_t i) {
  return attention_element(static_cast<uint64_t>(h), static_cast<uint64_t>(i), 0);
}

}  // namespace

template <class T>
void attention_forward(const T* q, const T* k, const T* v, int64_t ld_qkv, const int32_t* offsets,
                       const uint64_t* ids, int64_t batch, int64_t max_len, int64_t heads,
                       int64_t head_dim, bool causal, double dropout_p, const RngKey& dropout_key,
                       T* out, int64_t ld_out, T* lse) {
  const int64_t tokens = offsets[batch];
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  std::vector<T> p(static_cast<size_t>(max_len * max_len));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const Block blk = block(offsets, b, h, head_dim);
      const int64_t len = blk.len;
      if (len == 0) continue;
      gemm(false, true, len, len, head_dim, scale, q + blk.at(ld_qkv), ld_qkv, k + blk.at(ld_qkv),
           ld_qkv, T(0), p.data(), len);
      // Row softmax over the visible keys with the maximum taken out (stable for any score
      // range); ℓ = max + log Σ exp(S - max). P̃ replaces P in place: the forward keeps neither.
      for (int64_t i = 0; i < len; ++i) {
        T* row = p.data() + i * len;
        const int64_t end = causal ? i + 1 : len;
        const T max = *std::max_element(row, row + end);
        T sum = 0;
        for (int64_t j = 0; j < end; ++j) sum += (row[j] = std::exp(row[j] - max));
        lse[h * tokens + blk.begin + i] = max + std::log(sum);
        const T inv = T(1) / sum;
        for (int64_t j = 0; j < end; ++j) row[j] *= inv;
        std::fill(row + end, row + len, T(0));
        if (dropout_p > 0)
          dropout(row, row, end, dropout_p, dropout_key, ids[b], dropout_row_element(h, i));
      }
      gemm(false, false, len, head_dim, len, T(1), p.data(), len, v + blk.at(ld_qkv), ld_qkv, T(0),
           out + blk.at(ld_out), ld_out);
    }
  }
}

template <class T>
void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* out,
                        const T* lse, int64_t ld_qkv, int64_t ld_out, const int32_t* offsets,
                        const uint64_t* ids, int64_t batch, int64_t max_len, int64_t heads,
                        int64_t head_dim, bool causal, double dropout_p, const RngKey& dropout_key,
                        T* dq, T* dk, T* dv, int64_t ld_grad) {
  const int64_t tokens = offsets[batch];
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  const size_t square = static_cast<size_t>(max_len * max_len);
  std::vector<T> p(square), ds(square), dropped(dropout_p > 0 ? square : 0);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const Block blk = block(offsets, b, h, head_dim);
      const int64_t len = blk.len;
      if (len == 0) continue;
      // P = exp(s Q Kᵀ - ℓ) on the visible keys, 0 elsewhere; P̃ with the forward's mask.
      gemm(false, true, len, len, head_dim, scale, q + blk.at(ld_qkv), ld_qkv, k + blk.at(ld_qkv),
           ld_qkv, T(0), p.data(), len);
      for (int64_t i = 0; i < len; ++i) {
        T* row = p.data() + i * len;
        const int64_t end = causal ? i + 1 : len;
        const T l = lse[h * tokens + blk.begin + i];
        for (int64_t j = 0; j < end; ++j) row[j] = std::exp(row[j] - l);
        std::fill(row + end, row + len, T(0));
        if (dropout_p > 0) {
          T* drow = dropped.data() + i * len;
          dropout(row, drow, end, dropout_p, dropout_key, ids[b], dropout_row_element(h, i));
          std::fill(drow + end, drow + len, T(0));
        }
      }
      const T* p_used = dropout_p > 0 ? dropped.data() : p.data();
      // dV = P̃ᵀ dO
      gemm(true, false, len, head_dim, len, T(1), p_used, len, dout + blk.at(ld_out), ld_out, T(0),
           dv + blk.at(ld_grad), ld_grad);
      // dP̃ = dO Vᵀ, then dS = P̃ ⊙ dP̃ - P ⊙ D in place, D_i = dO_i · O_i
      gemm(false, true, len, len, head_dim, T(1), dout + blk.at(ld_out), ld_out, v + blk.at(ld_qkv),
           ld_qkv, T(0), ds.data(), len);
      for (int64_t i = 0; i < len; ++i) {
        const T* do_row = dout + blk.at(ld_out) + i * ld_out;
        const T* o_row = out + blk.at(ld_out) + i * ld_out;
        T d = 0;
        for (int64_t e = 0; e < head_dim; ++e) d += do_row[e] * o_row[e];
        T* row = ds.data() + i * len;
        const T* prow = p.data() + i * len;
        const T* drow = p_used + i * len;
        const int64_t end = causal ? i + 1 : len;
        for (int64_t j = 0; j < end; ++j) row[j] = drow[j] * row[j] - prow[j] * d;
        std::fill(row + end, row + len, T(0));
      }
      // dQ = s dS K, dK = s dSᵀ Q
      gemm(false, false, len, head_dim, len, scale, ds.data(), len, k + blk.at(ld_qkv), ld_qkv,
           T(0), dq + blk.at(ld_grad), ld_grad);
      gemm(true, false, len, head_dim, len, scale, ds.data(), len, q + blk.at(ld_qkv), ld_qkv,
           T(0), dk + blk.at(ld_grad), ld_grad);
    }
  }
}

// One query row and head at a time: the scores over its range, their softmax with the maximum
// taken out, then the weighted sum of the value rows. The range names the keys, so there is no
// mask; decoding's query rows are few, so plain loops rather than GEMMs.
template <class T>
void attention_over_ranges(const T* q, int64_t ld_q, const T* k, const T* v, int64_t ld_kv,
                           int64_t rows, const int32_t* ranges, int64_t n, int64_t heads,
                           int64_t head_dim, T* out) {
  int64_t longest = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t begin = ranges[2 * i], end = ranges[2 * i + 1];
    QARAC_CHECK(0 <= begin && begin < end && end <= rows, "attention_over_ranges: query row ", i,
                " attends to key rows [", begin, ", ", end, "), not a non-empty range of [0, ", rows, ")");
    longest = std::max<int64_t>(longest, end - begin);
  }
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  const int64_t width = heads * head_dim;
  std::vector<T> p(static_cast<size_t>(longest));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t begin = ranges[2 * i], len = ranges[2 * i + 1] - begin;
    for (int64_t h = 0; h < heads; ++h) {
      const T* qi = q + i * ld_q + h * head_dim;
      for (int64_t j = 0; j < len; ++j) {
        const T* kj = k + (begin + j) * ld_kv + h * head_dim;
        T dot = 0;
        for (int64_t c = 0; c < head_dim; ++c) dot += qi[c] * kj[c];
        p[static_cast<size_t>(j)] = scale * dot;
      }
      const T max = *std::max_element(p.begin(), p.begin() + len);
      T sum = 0;
      for (int64_t j = 0; j < len; ++j) sum += (p[static_cast<size_t>(j)] = std::exp(p[static_cast<size_t>(j)] - max));
      T* o = out + i * width + h * head_dim;
      std::fill(o, o + head_dim, T(0));
      for (int64_t j = 0; j < len; ++j) {
        const T weight = p[static_cast<size_t>(j)] / sum;
        const T* vj = v + (begin + j) * ld_kv + h * head_dim;
        for (int64_t c = 0; c < head_dim; ++c) o[c] += weight * vj[c];
      }
    }
  }
}

template void attention_forward<float>(const float*, const float*, const float*, int64_t,
                                       const int32_t*, const uint64_t*, int64_t, int64_t, int64_t,
                                       int64_t, bool, double, const RngKey&, float*, int64_t,
                                       float*);
template void attention_forward<double>(const double*, const double*, const double*, int64_t,
                                        const int32_t*, const uint64_t*, int64_t, int64_t, int64_t,
                                        int64_t, bool, double, const RngKey&, double*, int64_t,
                                        double*);
template void attention_backward<float>(const float*, const float*, const float*, const float*,
                                        const float*, const float*, int64_t, int64_t,
                                        const int32_t*, const uint64_t*, int64_t, int64_t, int64_t,
                                        int64_t, bool, double, const RngKey&, float*, float*,
                                        float*, int64_t);
template void attention_backward<double>(const double*, const double*, const double*,
                                         const double*, const double*, const double*, int64_t,
                                         int64_t, const int32_t*, const uint64_t*, int64_t,
                                         int64_t, int64_t, int64_t, bool, double, const RngKey&,
                                         double*, double*, double*, int64_t);
template void attention_over_ranges<float>(const float*, int64_t, const float*, const float*, int64_t,
                                           int64_t, const int32_t*, int64_t, int64_t, int64_t, float*);
template void attention_over_ranges<double>(const double*, int64_t, const double*, const double*,
                                            int64_t, int64_t, const int32_t*, int64_t, int64_t, int64_t,
                                            double*);

}  // namespace qarac::cpu
