// CPU multi-head scaled dot-product attention over a padding-free batch: the sequences lie back
// to back in token-major [T, H*Dh] activations with the heads side by side; the semantics are
// those of ops::attention_forward/backward.
#pragma once

#include <cstdint>

#include "core/rng.h"

namespace qarac::cpu {

// Sequence b is rows [offsets[b], offsets[b+1]) (offsets [batch+1], offsets[0] = 0, T =
// offsets[batch]) and draws its dropout masks as sequence ids[b]; max_len is the longest
// sequence. out [T, H*Dh] is overwritten; lse [H, T] receives each query row's log-sum-exp of
// its scores.
template <class T>
void attention_forward(const T* q, const T* k, const T* v, const int32_t* offsets,
                       const uint64_t* ids, int64_t batch, int64_t max_len, int64_t heads,
                       int64_t head_dim, bool causal, double dropout_p, const RngKey& dropout_key,
                       T* out, T* lse);
// dq, dk, dv overwritten; the probabilities are recomputed from q, k and the saved lse.
template <class T>
void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* out,
                        const T* lse, const int32_t* offsets, const uint64_t* ids, int64_t batch,
                        int64_t max_len, int64_t heads, int64_t head_dim, bool causal,
                        double dropout_p, const RngKey& dropout_key, T* dq, T* dk, T* dv);

}  // namespace qarac::cpu
