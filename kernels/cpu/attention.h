// CPU multi-head scaled dot-product attention over a padded batch, token-major [B*S, H*Dh] with
// the heads side by side; the semantics are those of ops::attention_forward/backward.
#pragma once

#include <cstdint>

#include "core/rng.h"

namespace qarac::cpu {

// probs [B,H,S,S] receives the softmax before dropout; out is overwritten.
template <class T>
void attention_forward(const T* q, const T* k, const T* v, const int32_t* key_mask, int64_t batch,
                       int64_t seq, int64_t heads, int64_t head_dim, bool causal, double dropout_p,
                       const RngKey& dropout_key, T* out, T* probs);
// dq, dk, dv overwritten; the mask is read from the zeros of the saved probs.
template <class T>
void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* probs,
                        int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                        double dropout_p, const RngKey& dropout_key, T* dq, T* dk, T* dv);

}  // namespace qarac::cpu
