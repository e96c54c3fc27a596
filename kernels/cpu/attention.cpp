// CPU attention, one (sequence b, head h) at a time. Head h of token t is the Dh columns starting
// at h*Dh of row b*S + t, so Q, K, V of one (b, h) are [S, Dh] matrices with leading dimension
// H*Dh and the GEMMs read them where they lie, with no transposes or copies. With P the softmax,
// M the dropout mask and s = 1/sqrt(Dh):
//   forward:  S = s Q Kᵀ (masked), P = softmax_rows(S), P̃ = P ⊙ M / (1-p), O = P̃ V
//   backward: dP̃ = dO Vᵀ, dP = dP̃ ⊙ M / (1-p), dS = P ⊙ (dP - rowsum(dP ⊙ P)) (softmax Jacobian),
//             dQ = s dS K, dK = s dSᵀ Q, dV = P̃ᵀ dO.
// Since P ⊙ dP = P ⊙ M / (1-p) ⊙ dP̃ = P̃ ⊙ dP̃, the backward pass computes
//   dS = P̃ ⊙ dP̃ - P ⊙ rowsum(P̃ ⊙ dP̃)
// from the P̃ it needs for dV anyway, drawing the dropout mask once instead of twice. The Philox
// draws cost more than the GEMMs here: B=8, S=128, H=4, Dh=64, f32, p=0.1 on 2 shared cores,
// backward 13 ms with two draws per score, 8.7 ms with one, 3.4 ms without dropout.
// Masked scores get probability exactly 0, so the backward pass needs no mask: their dS is 0. A
// query row with no visible key has P = 0 and so a zero output and zero gradients.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/dropout.h"
#include "kernels/cpu/gemm.h"

namespace qarac::cpu {
namespace {

// Softmax of each row of the scores p [S,S] in place over the keys query i may see:
// key_mask[j] = 1 and, if causal, j <= i. The maximum is subtracted before exp (stable for any
// score range); invisible keys, and rows with none visible, get 0.
template <class T>
void masked_softmax_rows(T* p, const int32_t* key_mask, int64_t seq, bool causal) {
  for (int64_t i = 0; i < seq; ++i) {
    T* row = p + i * seq;
    const int64_t end = causal ? i + 1 : seq;
    T max = -std::numeric_limits<T>::infinity();
    for (int64_t j = 0; j < end; ++j)
      if (key_mask[j]) max = std::max(max, row[j]);
    T sum = 0;
    for (int64_t j = 0; j < end; ++j) {
      row[j] = key_mask[j] ? std::exp(row[j] - max) : T(0);
      sum += row[j];
    }
    const T inv = sum > 0 ? T(1) / sum : T(0);
    for (int64_t j = 0; j < end; ++j) row[j] *= inv;
    std::fill(row + end, row + seq, T(0));
  }
}

}  // namespace

template <class T>
void attention_forward(const T* q, const T* k, const T* v, const int32_t* key_mask, int64_t batch,
                       int64_t seq, int64_t heads, int64_t head_dim, bool causal, double dropout_p,
                       const RngKey& dropout_key, T* out, T* probs) {
  const int64_t ld = heads * head_dim, ss = seq * seq;
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  std::vector<T> dropped(dropout_p > 0 ? static_cast<size_t>(ss) : 0);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t offset = b * seq * ld + h * head_dim;  // element (b*S, h*Dh)
      const uint64_t first = static_cast<uint64_t>((b * heads + h) * ss);
      T* p = probs + first;
      gemm(false, true, seq, seq, head_dim, scale, q + offset, ld, k + offset, ld, T(0), p, seq);
      masked_softmax_rows(p, key_mask + b * seq, seq, causal);
      const T* p_used = p;
      if (dropout_p > 0) {
        dropout(p, dropped.data(), ss, dropout_p, dropout_key, first);
        p_used = dropped.data();
      }
      gemm(false, false, seq, head_dim, seq, T(1), p_used, seq, v + offset, ld, T(0), out + offset,
           ld);
    }
  }
}

template <class T>
void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* probs,
                        int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                        double dropout_p, const RngKey& dropout_key, T* dq, T* dk, T* dv) {
  const int64_t ld = heads * head_dim, ss = seq * seq;
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  std::vector<T> ds(static_cast<size_t>(ss));
  std::vector<T> dropped(dropout_p > 0 ? static_cast<size_t>(ss) : 0);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t offset = b * seq * ld + h * head_dim;
      const uint64_t first = static_cast<uint64_t>((b * heads + h) * ss);
      const T* p = probs + first;
      const T* p_used = p;
      if (dropout_p > 0) {
        dropout(p, dropped.data(), ss, dropout_p, dropout_key, first);
        p_used = dropped.data();
      }
      // dV = P̃ᵀ dO
      gemm(true, false, seq, head_dim, seq, T(1), p_used, seq, dout + offset, ld, T(0), dv + offset,
           ld);
      // dP̃ = dO Vᵀ, then dS = P̃ ⊙ dP̃ - P ⊙ rowsum(P̃ ⊙ dP̃) in place
      gemm(false, true, seq, seq, head_dim, T(1), dout + offset, ld, v + offset, ld, T(0),
           ds.data(), seq);
      for (int64_t i = 0; i < seq; ++i) {
        T* row = ds.data() + i * seq;
        const T* prow = p + i * seq;
        const T* drow = p_used + i * seq;
        T dot = 0;
        for (int64_t j = 0; j < seq; ++j) dot += drow[j] * row[j];
        for (int64_t j = 0; j < seq; ++j) row[j] = drow[j] * row[j] - prow[j] * dot;
      }
      // dQ = s dS K, dK = s dSᵀ Q
      gemm(false, false, seq, head_dim, seq, scale, ds.data(), seq, k + offset, ld, T(0),
           dq + offset, ld);
      gemm(true, false, seq, head_dim, seq, scale, ds.data(), seq, q + offset, ld, T(0),
           dk + offset, ld);
    }
  }
}

template void attention_forward<float>(const float*, const float*, const float*, const int32_t*,
                                       int64_t, int64_t, int64_t, int64_t, bool, double,
                                       const RngKey&, float*, float*);
template void attention_forward<double>(const double*, const double*, const double*, const int32_t*,
                                        int64_t, int64_t, int64_t, int64_t, bool, double,
                                        const RngKey&, double*, double*);
template void attention_backward<float>(const float*, const float*, const float*, const float*,
                                        const float*, int64_t, int64_t, int64_t, int64_t, double,
                                        const RngKey&, float*, float*, float*);
template void attention_backward<double>(const double*, const double*, const double*, const double*,
                                         const double*, int64_t, int64_t, int64_t, int64_t, double,
                                         const RngKey&, double*, double*, double*);

}  // namespace qarac::cpu
