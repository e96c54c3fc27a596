// Flash-style multi-head attention over padding-free (packed) batches, head dim 64, with causal
// and per-sequence masks and dropout, and attention over ranges of cached keys for decoding
// (CUDA). Semantics of ops::attention_*; device pointers.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "core/rng.h"

namespace qarac::cuda {

struct AttentionShape {
  const int32_t* offsets = nullptr;  // device, [batch+1]: sequence b is rows [offsets[b], offsets[b+1])
  const uint64_t* ids = nullptr;     // device, [batch]: sequence b draws its dropout masks as ids[b]
  int64_t batch = 0, tokens = 0, max_len = 0, heads = 0, head_dim = 0;
  // Row strides in elements, each >= heads*head_dim: q, k, v may be column slices of one wider
  // buffer and dq, dk, dv of another (ld_grad_qkv, read by the backward pass only); out and dout
  // have ld_out.
  int64_t ld_qkv = 0, ld_grad_qkv = 0, ld_out = 0;
};

// q, k, v, out [tokens, heads*head_dim] with the row strides of `shape`; lse [heads, tokens] f32.
void attention_forward(DType dtype, const AttentionShape& shape, const void* q, const void* k,
                       const void* v, bool causal, double dropout_p, const RngKey& key, void* out,
                       float* lse);
// How attention_backward goes on the tensor-core path: `automatic` takes one kernel when every
// sequence has at most 128 tokens; `tiled` always takes the tiled kernels (for benchmarks and
// tests that compare the two).
enum class AttentionBackwardPath { automatic, tiled };

// dq, dk, dv overwritten (row stride shape.ld_grad_qkv); dout has out's row stride.
void attention_backward(DType dtype, const AttentionShape& shape, const void* dout, const void* q,
                        const void* k, const void* v, const void* out, const float* lse,
                        bool causal, double dropout_p, const RngKey& key, void* dq, void* dk,
                        void* dv, AttentionBackwardPath path = AttentionBackwardPath::automatic);

// ops::attention_over_ranges: query row i of q [n, heads*head_dim] (row stride ld_q) attends to
// rows [ranges[2i], ranges[2i+1]) of k and v (row stride ld_kv); out [n, heads*head_dim]
// contiguous.
void attention_over_ranges(DType dtype, int64_t n, int64_t heads, int64_t head_dim, const void* q,
                           int64_t ld_q, const void* k, const void* v, int64_t ld_kv,
                           const int32_t* ranges, void* out);

}  // namespace qarac::cuda
