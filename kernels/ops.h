// The op interface the model code calls. Every op takes tensors on one device and dispatches to
// that device's backend (kernels/cpu: the reference; kernels/cuda: the GPU), so model code never
// names a backend. The CPU reference computes in the tensors' dtype: f32 for training and parity,
// f64 for gradient checks.
//
// Conventions:
// - Tensors are row-major and contiguous; "[N, C]" means N rows of C elements. A token-major
//   activation of a padded batch is [B*S, d] (token t of sequence b is row b*S + t).
// - Gradients of parameters (dW, dbias, dgamma, dbeta, dtable) are ACCUMULATED (+=), so a
//   parameter used twice sums its gradients; the caller zeroes them once per step.
// - Gradients of inputs (dx, dq, ...) are OVERWRITTEN unless the op says otherwise.
// - Masks are i32 with 1 for a real token and 0 for padding; token ids and targets are i32.
// - Shapes, dtypes and devices are checked on entry; a mismatch raises qarac::Error naming the op
//   and the offending argument.
#pragma once

#include <cstdint>

#include "core/rng.h"
#include "core/tensor.h"

namespace qarac::ops {

// ---- GEMM ------------------------------------------------------------------------------------
// c = alpha * op(a) · op(b) + beta * c, op(x) = x or xᵀ. 2-D: a [M,K] (or [K,M] if trans_a),
// b [K,N] (or [N,K] if trans_b), c [M,N].
void gemm(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b,
          double alpha = 1.0, double beta = 0.0);
// The same for every index of a leading batch dimension: a [Z,M,K], b [Z,K,N], c [Z,M,N].
void gemm_batched(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b,
                  double alpha = 1.0, double beta = 0.0);

// ---- Elementwise and bias --------------------------------------------------------------------
void bias_add(Tensor& y, const Tensor& bias);             // y [N,C] += bias [C] on every row
void bias_backward(const Tensor& dy, Tensor& dbias);      // dbias [C] += Σ_rows dy [N,C]
void add(const Tensor& a, const Tensor& b, Tensor& out);  // out = a + b (out may alias a or b)
void accumulate(Tensor& dst, const Tensor& src);          // dst += src
void scale(Tensor& x, double factor);                     // x *= factor

// ---- Embeddings --------------------------------------------------------------------------------
// out [N,d] = table[ids[i]] (accumulate: out += table[ids[i]]). ids i32 [N], table [V,d].
// An id outside [0, V) raises an error naming the row and the id.
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out, bool accumulate = false);
// dtable [V,d] += scatter of dout [N,d] by ids.
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable);

// ---- LayerNorm over the last dimension ---------------------------------------------------------
// y = (x - mean) * rstd * gamma + beta, rstd = 1/sqrt(var + eps) with the biased variance.
// x, y [N,C]; gamma, beta [C]; mean, rstd [N] saved for the backward pass (same dtype as x).
void layernorm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps,
                       Tensor& y, Tensor& mean, Tensor& rstd);
// dx [N,C] overwritten; dgamma, dbeta [C] accumulated.
void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                        const Tensor& rstd, Tensor& dx, Tensor& dgamma, Tensor& dbeta);

// ---- GELU, erf form: gelu(x) = x * Φ(x) = 0.5 x (1 + erf(x/√2)) --------------------------------
void gelu_forward(const Tensor& x, Tensor& y);                        // y may alias x
void gelu_backward(const Tensor& x, const Tensor& dy, Tensor& dx);    // dx = dy * gelu'(x)

// ---- Dropout from the counter-based RNG ---------------------------------------------------------
// Element i is kept when uniform01(key, i) >= float(p) (compared in float, as on the GPU) and
// then scaled by 1/(1-p); p = 0 copies. p must lie in [0, 1).
// The backward pass regenerates the same mask from the same key: nothing is stored.
void dropout_forward(const Tensor& x, double p, const RngKey& key, Tensor& y);     // y may alias x
void dropout_backward(const Tensor& dy, double p, const RngKey& key, Tensor& dx);  // dx may alias dy

// ---- Multi-head scaled dot-product attention over a padded batch -------------------------------
// q, k, v, out: [B*S, H*Dh] token-major with the heads side by side (the layout a fused QKV
// projection produces, so no transposes are needed). key_mask: i32 [B,S]. Query i of sequence b
// attends to key j when key_mask[b,j] = 1 and, if causal, j <= i; scores are q·k / sqrt(Dh).
// probs [B,H,S,S] receives the softmax (before dropout), saved for the backward pass. A query
// with no visible key gets a zero output row. Dropout on the probabilities uses `dropout_key`
// with element index ((b*H + h)*S + i)*S + j.
struct AttentionDims {
  int64_t batch = 0, seq = 0, heads = 0, head_dim = 0;
};
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask,
                       const AttentionDims& dims, bool causal, double dropout_p,
                       const RngKey& dropout_key, Tensor& out, Tensor& probs);
// dq, dk, dv [B*S, H*Dh] overwritten. Uses the saved probs; regenerates the dropout mask.
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& probs, const AttentionDims& dims, double dropout_p,
                        const RngKey& dropout_key, Tensor& dq, Tensor& dk, Tensor& dv);

// ---- Softmax cross-entropy ------------------------------------------------------------------------
// logits [N,V], targets i32 [N]. losses [N] = -log softmax(logits)[target], 0 where
// target == ignore_index. When dlogits [N,V] is given it receives
// dloss * (softmax - onehot(target)) per row (0 rows where ignored): forward and backward in one
// pass, so the probabilities are never kept.
void softmax_cross_entropy(const Tensor& logits, const Tensor& targets, int32_t ignore_index,
                           Tensor& losses, Tensor* dlogits = nullptr, double dloss = 1.0);

}  // namespace qarac::ops
