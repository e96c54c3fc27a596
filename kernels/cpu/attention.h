// CPU multi-head scaled dot-product attention over a padding-free batch: the sequences lie back
// to back in token-major [T, H*Dh] activations with the heads side by side; the semantics are
// those of ops::attention_forward/backward, and of ops::attention_over_ranges (query rows over
// ranges of cached key rows, for decoding).
#pragma once

#include <cstdint>

#include "core/rng.h"

namespace qarac::cpu {

// Sequence b is rows [offsets[b], offsets[b+1]) (offsets [batch+1], offsets[0] = 0, T =
// offsets[batch]) and draws its dropout masks as sequence ids[b]; max_len is the longest
// sequence. Row t of q, k, v starts at element t * ld_qkv, of out at t * ld_out (>= H*Dh each:
// q, k, v may be column slices of a wider buffer). out [T, H*Dh] is overwritten; lse [H, T]
// (contiguous) receives each query row's log-sum-exp of its scores.
template <class T>
void attention_forward(const T* q, const T* k, const T* v, int64_t ld_qkv, const int32_t* offsets,
                       const uint64_t* ids, int64_t batch, int64_t max_len, int64_t heads,
                       int64_t head_dim, bool causal, double dropout_p, const RngKey& dropout_key,
                       T* out, int64_t ld_out, T* lse);
// dq, dk, dv overwritten, row t at element t * ld_grad; dout and out have row stride ld_out. The
// probabilities are recomputed from q, k and the saved lse.
template <class T>
void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* out,
                        const T* lse, int64_t ld_qkv, int64_t ld_out, const int32_t* offsets,
                        const uint64_t* ids, int64_t batch, int64_t max_len, int64_t heads,
                        int64_t head_dim, bool causal, double dropout_p, const RngKey& dropout_key,
                        T* dq, T* dk, T* dv, int64_t ld_grad);

// Query row i (of n; row stride ld_q) attends to rows [ranges[2i], ranges[2i+1]) of k and v (row
// stride ld_kv, `rows` rows): out [n, H*Dh] (contiguous) is overwritten. A range outside [0,
// rows) or empty raises qarac::Error naming the query row, before any write.
template <class T>
void attention_over_ranges(const T* q, int64_t ld_q, const T* k, const T* v, int64_t ld_kv,
                           int64_t rows, const int32_t* ranges, int64_t n, int64_t heads,
                           int64_t head_dim, T* out);

}  // namespace qarac::cpu
