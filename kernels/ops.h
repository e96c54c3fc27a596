// The op interface the model code calls. Every op takes tensors on one device and dispatches to
// that device's backend (kernels/backend.h; kernels/cpu: the reference; kernels/cuda: the GPU),
// so model code never names a backend.
//
// Conventions:
// - Tensors are row-major and contiguous (attention's q, k, v and dq, dk, dv may also be
//   row-strided views, see there); "[N, C]" means N rows of C elements. Activations are
//   token-major: [T, d] for the T tokens of a batch.
// - Batches are padding-free: the B sequences of a batch lie back to back in the rows of the
//   activations (see Sequences); no op ever computes a padded position.
// - dtypes. X, the compute dtype of activations and parameter values: f32 or f64 on the CPU (f64
//   for gradient checks), f32 or bf16 on CUDA. A, the accumulation dtype, f64 when X is f64 and
//   f32 otherwise: parameter gradients, LayerNorm statistics, attention log-sum-exp, losses and
//   similarities are in A. ids, targets and sequence offsets are i32.
// - Gradients of parameters (dw, dbias, dgamma, dbeta, dtable) are ACCUMULATED (+=), so a
//   parameter used twice sums its gradients; the caller zeroes them once per step.
// - Gradients of inputs (dx, dq, ...) are OVERWRITTEN unless the op says otherwise.
// - Elementwise ops allow their output to alias their input.
// - Shapes, dtypes and devices are checked on entry; a mismatch raises qarac::Error naming the op
//   and the offending argument.
// - gemm_batched, accumulate, scale and gelu_forward have no caller in the models (the layers use
//   the fused forms): they are the unfused references the tests build theirs from, checked on
//   every backend like the rest.
#pragma once

#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace qarac::ops {

// The accumulation dtype A that goes with compute dtype X.
inline DType accumulation_dtype(DType x) { return x == DType::f64 ? DType::f64 : DType::f32; }

// The sequences of a padding-free batch: sequence b is rows [offsets[b], offsets[b+1]) of the
// token-major activations, and has the 64-bit identity ids[b]. Kept on the device (for kernels)
// and on the host (for launch sizes and the CPU backend).
// The identity is what dropout draws from (core/rng.h, dropout_kept): an element's mask is
// a function of (key, ids[b], its position inside sequence b, its column or head and key
// position) only, so a sequence gets the same masks in any batch, at any row, next to any other
// sequences, as long as it keeps its id. Whoever builds a batch sets the ids (e.g. each
// example's index in its task stream); two sequences of one batch with the same id draw the same
// masks. Without ids, ids[b] = b: masks then follow the place in the batch, which is enough for
// evaluation (no dropout), tests and benchmarks.
struct Sequences {
  Tensor offsets;             // i32 [B+1] on the device of the activations
  std::vector<int32_t> host;  // the same offsets on the host
  int64_t max_len = 0;        // the longest sequence
  Tensor ids;                 // i64 [B] on the device: host_ids, bit for bit
  std::vector<uint64_t> host_ids;

  // `ids` empty: ids[b] = b; otherwise one per sequence.
  static Sequences from_lengths(const std::vector<int32_t>& lengths, Device device,
                                const std::vector<uint64_t>& ids = {});
  int64_t count() const { return static_cast<int64_t>(host.size()) - 1; }
  int64_t tokens() const { return host.empty() ? 0 : host.back(); }
};

// ---- GEMM ------------------------------------------------------------------------------------
// c = alpha * op(a) · op(b) + beta * c, op(x) = x or xᵀ. 2-D: a [M,K] (or [K,M] if trans_a),
// b [K,N] (or [N,K] if trans_b), c [M,N]. a, b in X; c in X or A (bf16 inputs, f32 output).
void gemm(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b,
          double alpha = 1.0, double beta = 0.0);
// The same for every index of a leading batch dimension: a [Z,M,K], b [Z,K,N], c [Z,M,N].
void gemm_batched(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b,
                  double alpha = 1.0, double beta = 0.0);

// ---- Dense layers: GEMM with bias and GELU epilogues -------------------------------------------
enum class Activation { none, gelu };
// y [N,out] = act(x [N,in] · wᵀ + bias), w [out,in], bias [out]. With Activation::gelu, `pre`
// [N,out] receives x · wᵀ + bias (what the backward pass needs).
void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
                    Activation act = Activation::none, Tensor* pre = nullptr);
// dw [out,in] += dyᵀ · x and, if dbias, dbias [out] += Σ_rows dy (both in A; null: whoever
// produced dy summed it already, as layernorm_backward's dbias_branch does). If dx: dx = dy · w,
// or dx += dy · w with accumulate_dx. If `input_gelu_pre` is given, x was
// GELU(input_gelu_pre) and dx receives d loss / d input_gelu_pre = (dy · w) ⊙
// GELU'(input_gelu_pre) instead (not with accumulate_dx); then input_gelu_dbias [in] (A), if
// given, += Σ_rows dx: the bias gradient of the layer whose output input_gelu_pre is, summed in
// the pass that applies GELU' rather than in that layer's linear_backward (dbias null there).
void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor& dw,
                     Tensor* dbias, const Tensor* input_gelu_pre = nullptr,
                     bool accumulate_dx = false, Tensor* input_gelu_dbias = nullptr);

// ---- Elementwise and bias --------------------------------------------------------------------
void bias_add(Tensor& y, const Tensor& bias);             // y [N,C] += bias [C] on every row
void bias_backward(const Tensor& dy, Tensor& dbias);      // dbias [C] (A) += Σ_rows dy [N,C]
void add(const Tensor& a, const Tensor& b, Tensor& out);  // out = a + b
void accumulate(Tensor& dst, const Tensor& src);          // dst += src (same dtype)
void scale(Tensor& x, double factor);                     // x *= factor

// ---- Embeddings --------------------------------------------------------------------------------
// out [N,d] = table[ids[i]] (accumulate: out += table[ids[i]]). ids i32 [N], table [V,d].
// An id outside [0, V) raises an error naming the row and the id for CPU tensors; CUDA kernels
// trust their ids, which the model checks on the host when it uploads a batch.
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out, bool accumulate = false);
// dtable [V,d] (A) += scatter of dout [N,d] by ids; deterministic (same bits every run).
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable);

// ---- LayerNorm over the last dimension ---------------------------------------------------------
// y = (x - mean) * rstd * gamma + beta, rstd = 1/sqrt(var + eps) with the biased variance.
// x, y [N,C]; gamma, beta [C]; mean, rstd [N] in A, saved for the backward pass.
void layernorm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps,
                       Tensor& y, Tensor& mean, Tensor& rstd);
// The dropout of a post-LN residual block's branch, y = LN(dropout(branch) + x), done by the
// block's LayerNorm ops on the way: the mask of dropout_forward with this p, key and seqs (over
// the rows), so the fused ops give what dropout_forward / dropout_backward and the plain ops give,
// without that op's pass over the branch.
struct BranchDropout {
  double p = 0;
  RngKey key;
  const Sequences* seqs = nullptr;
};
// The post-LN residual block in one pass: sum = a + b (saved: the backward pass's x), y = LN(sum).
// With branch_dropout, a is the branch: sum = dropout(a) + b (a itself unchanged).
void add_layernorm_forward(const Tensor& a, const Tensor& b, const Tensor& gamma,
                           const Tensor& beta, double eps, Tensor& sum, Tensor& y, Tensor& mean,
                           Tensor& rstd, const BranchDropout* branch_dropout = nullptr);
// dx [N,C] overwritten; dgamma, dbeta [C] (A) accumulated. With branch_dropout also dbranch
// [N,C] = dropout_backward(dx), the gradient of the dropped branch (a tensor other than dx).
// With dbias_branch [C] (A), also dbias_branch += Σ_rows of the branch's gradient (dbranch, or dx
// without dropout): the bias gradient of the linear layer whose output is the branch, summed
// here in the pass over the rows that sums dgamma and dbeta rather than in a pass of that layer's
// linear_backward (dbias null). dx must not be dy then.
void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                        const Tensor& rstd, Tensor& dx, Tensor& dgamma, Tensor& dbeta,
                        const BranchDropout* branch_dropout = nullptr, Tensor* dbranch = nullptr,
                        Tensor* dbias_branch = nullptr);

// ---- GELU, erf form: gelu(x) = x * Φ(x) = 0.5 x (1 + erf(x/√2)) --------------------------------
void gelu_forward(const Tensor& x, Tensor& y);
void gelu_backward(const Tensor& x, const Tensor& dy, Tensor& dx);  // dx = dy * gelu'(x)

// ---- Dropout from the counter-based RNG ---------------------------------------------------------
// x, y [T, C] over the sequences `seqs`. Element (t, c), with t at position i of sequence b, is
// kept when dropout_kept(key, seqs.host_ids[b], hidden_element(i, c), dropout_threshold(p)) and
// then scaled by dropout_keep_scale (core/rng.h: 16-bit draws, eight per Philox call, so p acts
// as round(p·2^16)/2^16); p = 0 copies. p must lie in [0, 1 - 2^-17); with p > 0, C <= 2^24 and
// sequences of at most 2^16 tokens (core/rng.h).
// The backward pass regenerates the same mask from the same key and seqs: nothing is stored.
void dropout_forward(const Tensor& x, double p, const RngKey& key, const Sequences& seqs,
                     Tensor& y);
void dropout_backward(const Tensor& dy, double p, const RngKey& key, const Sequences& seqs,
                      Tensor& dx);

// ---- Multi-head scaled dot-product attention over a padding-free batch --------------------------
// q, k, v, out: [T, H*Dh] token-major with the heads side by side (the layout the Q, K, V
// projections produce, so no transposes are needed). q, k and v may be row-strided views (2-D,
// column stride 1, row stride >= H*Dh) sharing one row stride, so the column slices [0, d),
// [d, 2d), [2d, 3d) of one fused Q|K|V projection's [T, 3d] output are read where they lie; out,
// dout and lse are contiguous. A query of sequence b attends to the keys of sequence b only, and
// with `causal` to those at or before its own position; scores are q·k / sqrt(Dh). lse [H, T]
// (A) receives each query row's log-sum-exp of its scores: the backward pass recomputes the
// probabilities from it instead of keeping T×T of them.
// Dropout on the probabilities of sequence b keeps what dropout_kept(dropout_key,
// seqs.host_ids[b], attention_element(h, query position, key position), threshold) keeps,
// positions inside the sequence, scaled as dropout_forward scales (core/rng.h); with
// dropout_p > 0, at most 2^8 heads and 2^16 tokens per sequence.
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Sequences& seqs,
                       int64_t heads, bool causal, double dropout_p, const RngKey& dropout_key,
                       Tensor& out, Tensor& lse);
// dq, dk, dv [T, H*Dh] overwritten; like q, k, v they may be row-strided views sharing one row
// stride (which may differ from q's), e.g. the column slices of one [T, 3d] gradient that the
// fused projection's backward then reads whole. Needs the forward's out and lse; regenerates
// dropout masks.
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const Sequences& seqs, int64_t heads,
                        bool causal, double dropout_p, const RngKey& dropout_key, Tensor& dq,
                        Tensor& dk, Tensor& dv);
// Attention of query rows over ranges of key rows, for decoding with a key/value cache: query
// row i attends to rows [ranges[i][0], ranges[i][1]) of k and v, every one of them (the caller's
// ranges say what each query sees; a new position of a causal sequence sees its cache up to
// itself), with scores q·k / sqrt(Dh) and no dropout. q, out [N, H*Dh]; k, v [R, H*Dh], rows
// that N queries of any sequences share; ranges i32 [N, 2] with 0 <= begin < end <= R (CPU
// tensors are checked; CUDA trusts them). q may be a row-strided view, and k and v row-strided
// views sharing one row stride (the K and V column slices of one cache). Forward only: decoding
// computes no gradients.
void attention_over_ranges(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& ranges,
                           int64_t heads, Tensor& out);

// ---- Softmax cross-entropy ------------------------------------------------------------------------
// logits [N,V] (X), targets i32 [N]. Only the first `valid_cols` columns are classes (-1: all V);
// the rest (a vocabulary padded to a GEMM-friendly size) take no part. losses [N] (A) =
// -log softmax(logits)[target], 0 where target == ignore_index. When dlogits [N,V] is given it
// receives dloss * w_r * (softmax - onehot(target)) per row r, 0 in ignored rows and padded
// columns, with w_r = row_weights[r] (A [N]; e.g. the decoder's 1/(B·len_b) per target token) or
// 1 without row_weights; the losses are not weighted. dlogits may alias logits, so the LM head's
// logits are turned into their gradient in place and no probabilities are ever kept.
void softmax_cross_entropy(const Tensor& logits, const Tensor& targets, int32_t ignore_index,
                           Tensor& losses, Tensor* dlogits = nullptr, double dloss = 1.0,
                           int64_t valid_cols = -1, const Tensor* row_weights = nullptr);

// ---- Mean squared error of rows -------------------------------------------------------------
// losses [N] (A) = (1/k) Σ_j (a_ij - b_ij)² for a, b [N,k], k >= 1. When given,
// da = dloss·2/k·(a - b) and db = -da, [N,k] overwritten (neither may alias a or b). For one
// scalar per row (k = 1) held in A, such as a cosine against its label, pass A tensors as a and
// b: A is a compute dtype too.
void mse_loss(const Tensor& a, const Tensor& b, Tensor& losses, Tensor* da = nullptr,
              Tensor* db = nullptr, double dloss = 1.0);

// ---- Row gather and scatter: the decoder prepends a slot-0 row to each sequence and drops it --
// out [M,d] = src[index[i]] for i < M; src [N,d], index i32 [M] with entries in [0, N).
void gather_rows(const Tensor& src, const Tensor& index, Tensor& out);
// out[index[i]] = src[i] for i < M; src [M,d], out [N,d]; the other rows of out are left as they
// are. The entries of index lie in [0, N) and are distinct: scatter_rows is the adjoint of
// gather_rows with the same index (into a zeroed out). CPU tensors are checked; CUDA trusts them.
void scatter_rows(const Tensor& src, const Tensor& index, Tensor& out);

// ---- Sequence sums and the global attention pooling head (docs/design.md §2)
// -------------------------- out [B,d] = Σ_{t in b} x_t for every sequence b of x [T,d].
void segment_sum(const Tensor& x, const Sequences& seqs, Tensor& out);
// dx [T,d]: dx_t = dout_b for t in b (accumulate: +=).
void segment_sum_backward(const Tensor& dout, const Sequences& seqs, Tensor& dx, bool accumulate = false);
// a_t = cos(l_t, g_b) for t in b, v_b = Σ_t a_t x_t. x, l [T,d]; g, v [B,d]; a [T] (A) saved.
void pooling_forward(const Tensor& x, const Tensor& l, const Tensor& g, const Sequences& seqs,
                     double eps, Tensor& v, Tensor& a);
// Given dv [B,d]: dx [T,d] += a_t dv_b (accumulated: x also feeds the pooling matrices), dl [T,d]
// and dg [B,d] overwritten.
void pooling_backward(const Tensor& dv, const Tensor& x, const Tensor& l, const Tensor& g,
                      const Tensor& a, const Sequences& seqs, double eps, Tensor& dx, Tensor& dl,
                      Tensor& dg);

// ---- Cosine similarity of rows: out_i = a_i·b_i / max(‖a_i‖ ‖b_i‖, eps) -----------------------------
void cosine_forward(const Tensor& a, const Tensor& b, double eps, Tensor& out);  // a, b [N,d]; out [N] (A)
// da, db [N,d] overwritten, given dout [N] (A).
void cosine_backward(const Tensor& dout, const Tensor& a, const Tensor& b, double eps, Tensor& da,
                     Tensor& db);

// ---- Optimiser and gradient norm ----------------------------------------------------------------
// Elements [begin, end) of a flat tensor.
struct ElementRange {
  int64_t begin = 0, end = 0;
};
// AdamW (Loshchilov & Hutter), as torch.optim.AdamW: with g = grad_scale * grad,
//   p -= lr * weight_decay * p;  m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²;
//   p -= lr * (m / (1-β1^step)) / (sqrt(v / (1-β2^step)) + eps).
struct AdamW {
  double lr = 1e-5, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
  int64_t step = 1;         // 1-based, for the bias corrections
  double grad_scale = 1.0;  // e.g. the clipping factor
  // The elements weight_decay leaves out (a packed model's biases and LayerNorm weights under
  // decay_exempt bias_norm): sorted, disjoint, non-empty, within param. One update covers a whole
  // packed model either way: on CUDA one launch per 128 runs of one decay (a RoBERTa-base encoder
  // has 98), not one per run.
  std::vector<ElementRange> no_decay;
};
// param, m, v: master weights and moments in A; grad in A. When `param_copy` is given (the
// model's compute copy, X) it receives the updated param in its dtype.
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamW& config,
                  Tensor* param_copy = nullptr);
// NAdam (Dozat, 2016), as torch.optim.NAdam (the optimiser of the original QARAC reference):
// with g = grad_scale * grad at 1-based step t, momentum schedule μ_t = β1 (1 - ½ 0.96^(t ψ)),
// ψ = momentum_decay, and Π_t = μ_1 μ_2 ⋯ μ_t,
//   decoupled_weight_decay: p -= lr * weight_decay * p;  otherwise: g += weight_decay * p
//   m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²;  d = sqrt(v / (1-β2^t)) + eps
//   p -= lr (1-μ_t) / (1-Π_t) · g / d + lr μ_{t+1} / (1-Π_{t+1}) · m / d.
// Π_t is a running product over the whole run, which the caller carries (as torch keeps
// `mu_product` in the optimizer state): nadam_mu_product forms it from scratch.
struct NAdam {
  double lr = 2e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  double momentum_decay = 4e-3;
  bool decoupled_weight_decay = false;
  int64_t step = 1;         // 1-based
  double mu_product = 0;    // Π_step; must be set (nadam_mu_product, or a running product)
  double grad_scale = 1.0;  // e.g. the clipping factor
  std::vector<ElementRange> no_decay;  // as AdamW's: neither decoupled decay nor L2 there
};
double nadam_mu(const NAdam& config, int64_t t);  // μ_t
double nadam_mu_product(const NAdam& config);     // Π_step, multiplied up in step order
// Same arguments and dtype rules as adamw_update.
void nadam_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const NAdam& config,
                  Tensor* param_copy = nullptr);
// out [1] (A) = Σ over every tensor of Σ x²: the squared global gradient norm. Deterministic.
void sum_of_squares(const std::vector<const Tensor*>& tensors, Tensor& out);

}  // namespace qarac::ops
