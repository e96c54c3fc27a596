// The RoBERTa encoder (embeddings + N post-LN transformer layers) with an explicit backward pass
// over saved activations, in bidirectional or causal mode, on padding-free batches. It computes
// what Hugging Face's RobertaModel computes at the real tokens (checked by qarac-parity against
// dumps made with transformers).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/rng.h"
#include "kernels/ops.h"
#include "model/layers.h"
#include "model/roberta_config.h"

namespace qarac {

// A padding-free batch: the tokens of B sequences back to back, with RoBERTa position ids
// (padding_idx + 1 + index in the sequence). The host copy of the ids lets the model check them
// before any kernel trusts them.
// Each sequence has a 64-bit identity (seqs.host_ids, ops::Sequences): every dropout mask of a
// model applied to the batch, in every layer and in the decoder's head layers, is drawn from the
// sequence's identity and positions inside it, so an example keeps its masks in any batch, at any
// place, on any rank, as long as it keeps its id. `sequence_ids` (one per sequence, e.g. each
// example's index in its task stream) sets them; left empty, sequence b has id b.
struct TokenBatch {
  Tensor ids;        // i32 [T] on the model's device: the token ids
  Tensor positions;  // i32 [T]
  ops::Sequences seqs;
  std::vector<int32_t> host_ids;  // the token ids on the host
  // One past the largest index of a token inside its sequence: the position ids reach
  // padding_idx + extent. seqs.max_len, or more when the batch continues sequences.
  int64_t extent = 0;

  int64_t tokens() const { return seqs.tokens(); }
  int64_t count() const { return seqs.count(); }

  static TokenBatch from_sequences(const std::vector<std::vector<int32_t>>& sequences,
                                   int32_t padding_idx, Device device,
                                   const std::vector<uint64_t>& sequence_ids = {});
  // The sequences already packed: sequence b is tokens[starts[b], starts[b+1]) (the layout of the
  // loader's fields); starts has B+1 entries from 0 to tokens.size(), non-decreasing.
  static TokenBatch from_packed(const std::vector<int32_t>& tokens,
                                const std::vector<int32_t>& starts, int32_t padding_idx,
                                Device device, const std::vector<uint64_t>& sequence_ids = {});
  // Keeps the tokens whose mask is 1 (ids, mask: i32 [B,S] on the host), as Hugging Face's
  // attention mask and position ids treat the others.
  static TokenBatch from_padded(const Tensor& ids, const Tensor& mask, int32_t padding_idx,
                                Device device);
  // Tokens that continue sequences begun earlier, for decoding with a key/value cache: the tokens
  // of sequence b sit at indices begun[b], begun[b] + 1, ... inside it.
  static TokenBatch continuing(const std::vector<std::vector<int32_t>>& sequences,
                               const std::vector<int32_t>& begun, int32_t padding_idx, Device device);
};

// Per-call settings of a forward pass. Dropout is active when `training` is set; its masks are
// a function of (seed, step, model stream, application, site) and, within that, of each
// sequence's id and the positions inside it (TokenBatch), so the backward pass regenerates them.
struct ForwardOptions {
  bool causal = false;
  bool training = false;
  uint64_t seed = 0;
  uint64_t step = 0;
  // Tells apart the applications of one model within one step (the QARAC step runs the answer
  // encoder up to five times), so that each draws its own dropout masks. Below kApplications.
  uint32_t application = 0;
  static constexpr uint32_t kApplications = 256;
};

// The dropout RNG key of `site` of the model whose dropout stream is `stream` (< 256): tensor id
// application · 2^24 + stream · 2^16 + site, distinct for every (application, stream, site).
RngKey dropout_key(const ForwardOptions& options, uint32_t stream, uint32_t site);

struct RobertaEmbeddings {
  Parameter word;        // word_embeddings.weight [V, d]
  Parameter position;    // position_embeddings.weight [P, d]
  Parameter token_type;  // token_type_embeddings.weight [T, d]
  LayerNorm norm;

  struct Saved {
    Tensor sum;       // word + position + type, before the LayerNorm [T, d]
    LayerNorm::Saved norm;
  };
};

// One post-LN transformer layer (self-attention block, then GELU feed-forward block, each
// closed by a residual add and a LayerNorm) with its backward pass. Usable on its own: the
// encoder stacks them, the decoder adds two head layers over its own inputs.
struct RobertaLayer {
  Linear query, key, value;  // attention.self.*
  Linear attn_out;           // attention.output.dense
  LayerNorm attn_norm;       // attention.output.LayerNorm
  Linear ffn_in;             // intermediate.dense
  Linear ffn_out;            // output.dense
  LayerNorm ffn_norm;        // output.LayerNorm

  // Parameters named "<prefix>attention.self.query.weight", ... as in Hugging Face.
  void allocate(const std::string& prefix, const RobertaConfig& config, DType dtype, Device device);
  // Lists the Q, K and V weights, then their biases, before the rest: packed in this order
  // (pack_parameters, which the models call), each triple lies back to back, and qkv() is one
  // projection.
  void collect(ParameterList& out);
  // Q, K and V as one projection [3d] of the input: views of the three Linears' weights [3d, d]
  // and biases [3d], so one GEMM computes all three and one GEMM each gives the gradients.
  Linear qkv() const;

  // How one call runs: the attention heads and mask, and the dropout of the layer's three sites
  // (probability 0: off). The same settings must be given to forward and backward.
  struct Settings {
    int64_t heads = 1;
    bool causal = false;
    double hidden_dropout = 0;     // after the attention output and the FFN output
    double attention_dropout = 0;  // on the attention probabilities
    RngKey attention_probs_key, attention_out_key, ffn_out_key;
  };
  // Layer `index` of the model whose dropout stream is `stream`, under `options` (dropout only
  // when training; causal as options.causal).
  static Settings settings(const RobertaConfig& config, const ForwardOptions& options,
                           uint32_t stream, int index);

  // Activations of one forward call, kept for the backward pass. The layer's input is not
  // copied: the caller keeps it alive until the backward pass.
  struct Saved {
    Tensor qkv;  // [T, 3d]: Q | K | V, which the attention reads as column slices
    Tensor context, lse;
    Tensor attn_sum;  // input + dropout(attn_out(context)), before attn_norm
    LayerNorm::Saved attn_norm;
    Tensor hidden;    // attn_norm output
    Tensor ffn_pre;   // ffn_in(hidden), before GELU
    Tensor ffn_act;   // GELU(ffn_pre)
    Tensor ffn_sum;   // hidden + dropout(ffn_out(ffn_act)), before ffn_norm
    LayerNorm::Saved ffn_norm;
    Tensor out;       // the layer's output [T, d]
  };
  // Buffers that live only within one forward or backward call; layers of one shape share them.
  struct Scratch {
    Tensor branch;  // a residual branch's output before the add
    Tensor grad_hidden, grad_branch, grad_ffn, grad_context;
    Tensor grad_qkv;  // [T, 3d]: dQ | dK | dV
    Tensor query, key_value;  // forward_cached's Q [N, d] and K | V [N, 2d]
  };

  // saved.out [T, d] = layer(input [T, d]) over the sequences `seqs`.
  void forward(const Tensor& input, const ops::Sequences& seqs, const Settings& settings,
               Saved& saved, Scratch& scratch) const;
  // grad_input [T, d] is overwritten with d loss / d input, given grad_out = d loss / d saved.out
  // (which it may not alias); the parameters' gradients are accumulated.
  void backward(const Tensor& input, const ops::Sequences& seqs, const Settings& settings,
                Saved& saved, const Tensor& grad_out, Tensor& grad_input, Scratch& scratch);

  // Decoding with a key/value cache: `input` [N, d] holds new positions. Row i's K | V goes to
  // row slots[i] of `cache` [R, 2d], then its query attends to the cache rows [ranges[i][0],
  // ranges[i][1]), which hold the keys and values of what it sees, itself included
  // (ops::attention_over_ranges; slots i32 [N], ranges i32 [N, 2]). saved.out [N, d] is the
  // output, as forward() gives it for those positions. No dropout, no backward.
  void forward_cached(const Tensor& input, const Tensor& slots, const Tensor& ranges, int64_t heads,
                      Tensor& cache, Saved& saved, Scratch& scratch) const;

 private:
  // From the attention's context (saved.context) on: the attention output's residual block, then
  // the feed-forward block, each with its branch dropout when given.
  void output_blocks(const Tensor& input, Saved& saved, Scratch& scratch,
                     const ops::BranchDropout* attn_drop, const ops::BranchDropout* ffn_drop) const;
  // K and V as one projection [2d]: views of the K and V Linears, back to back as qkv()'s.
  Linear kv() const;
};

class RobertaEncoder {
 public:
  // Allocates the parameters (zeros; LayerNorm γ = 1) computing in `dtype` on `device`.
  // `dropout_stream` (< 256) separates the dropout masks of different models in one run.
  RobertaEncoder(const RobertaConfig& config, DType dtype, Device device, uint32_t dropout_stream = 0);

  const RobertaConfig& config() const { return config_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  uint32_t dropout_stream() const { return dropout_stream_; }
  // Every parameter, named as in a Hugging Face checkpoint without the "roberta." prefix.
  ParameterList parameters();
  // The word embeddings [V, d]: a tied LM head's output matrix.
  Parameter& word_embeddings() { return embeddings_.word; }

  // Everything the backward pass needs from one forward call. Reused across calls of the same
  // shape, so a training loop allocates its activations once.
  struct Activations {
    ForwardOptions options;
    TokenBatch batch;
    RobertaEmbeddings::Saved embeddings;
    Tensor embedded;  // embeddings output [T, d]
    std::vector<RobertaLayer::Saved> layers;
    RobertaLayer::Scratch scratch;  // shared by the layers, [T, ...]
    Tensor grad_a, grad_b;          // backward: the gradient between layers, ping-ponged

    // The last hidden state of the forward call.
    const Tensor& output() const { return layers.empty() ? embedded : layers.back().out; }
  };

  // Runs the encoder; returns the last hidden state [T, d] (a reference into `acts`). Refuses
  // (qarac::InputError) ids outside the vocabulary and sequences longer than the position table.
  const Tensor& forward(const TokenBatch& batch, const ForwardOptions& options, Activations& acts);
  // Accumulates into every parameter's gradient, given d loss / d last hidden state [T, d].
  void backward(Activations& acts, const Tensor& grad_output);
  // Decoding with a key/value cache (RobertaLayer::forward_cached): `batch` holds new positions
  // of sequences begun earlier (TokenBatch::continuing); each row's slot and key range are the
  // same in every layer, and `cache` holds one K | V tensor [R, 2d] per layer. Returns the last
  // hidden state of the new rows [N, d] (a reference into `acts`). Refuses what forward()
  // refuses; no dropout, no backward.
  const Tensor& forward_cached(const TokenBatch& batch, const Tensor& slots, const Tensor& ranges,
                               std::vector<Tensor>& cache, Activations& acts);
  // While set (non-empty), backward() reports each layer's parameters when it has finished their
  // gradients, the last layer first and the embeddings last.
  void set_gradients_ready(GradientsReady ready) { gradients_ready_ = std::move(ready); }

 private:
  void check_batch(const TokenBatch& batch) const;
  void embeddings_forward(Activations& acts);
  void embeddings_backward(Activations& acts, const Tensor& grad);
  bool dropout_active(const Activations& acts, double p) const { return acts.options.training && p > 0; }

  RobertaConfig config_;
  DType dtype_;
  Device device_;
  uint32_t dropout_stream_;
  RobertaEmbeddings embeddings_;
  std::vector<RobertaLayer> layers_;
  GradientsReady gradients_ready_;
};

// Copies named tensors into parameters: parameter p takes tensors[name], where name is p's name
// with `strip_prefix` removed from its front (e.g. "lm_head." for the LM head's parameters and a
// Hugging Face lm_head map without the prefix), converted to p's dtypes. Every parameter is
// checked first (present, same shape, floating dtype): a mismatch raises qarac::InputError naming
// the tensor and `source`, and leaves every parameter as it was. Extra tensors are ignored.
void load_parameters(const ParameterList& params, const std::map<std::string, Tensor>& tensors,
                     const std::string& source, const std::string& strip_prefix = "");

}  // namespace qarac
