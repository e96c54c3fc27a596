// The RoBERTa encoder (embeddings + N post-LN transformer layers) with an explicit backward pass
// over saved activations, in bidirectional or causal mode, on padding-free batches. It computes
// what Hugging Face's RobertaModel computes at the real tokens (checked by qarac-parity against
// dumps made with transformers).
#pragma once

#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "kernels/ops.h"
#include "model/layers.h"
#include "model/roberta_config.h"

namespace qarac {

// A padding-free batch: the tokens of B sequences back to back, with RoBERTa position ids
// (padding_idx + 1 + index in the sequence). The host copy of the ids lets the model check them
// before any kernel trusts them.
struct TokenBatch {
  Tensor ids;        // i32 [T] on the model's device
  Tensor positions;  // i32 [T]
  ops::Sequences seqs;
  std::vector<int32_t> host_ids;

  int64_t tokens() const { return seqs.tokens(); }
  int64_t count() const { return seqs.count(); }

  static TokenBatch from_sequences(const std::vector<std::vector<int32_t>>& sequences,
                                   int32_t padding_idx, Device device);
  // Keeps the tokens whose mask is 1 (ids, mask: i32 [B,S] on the host), as Hugging Face's
  // attention mask and position ids treat the others.
  static TokenBatch from_padded(const Tensor& ids, const Tensor& mask, int32_t padding_idx,
                                Device device);
};

// Per-call settings of a forward pass. Dropout is active when `training` is set; its masks are
// a function of (seed, step, site), so the backward pass regenerates them.
struct ForwardOptions {
  bool causal = false;
  bool training = false;
  uint64_t seed = 0;
  uint64_t step = 0;
};

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

struct RobertaLayer {
  Linear query, key, value;  // attention.self.*
  Linear attn_out;           // attention.output.dense
  LayerNorm attn_norm;       // attention.output.LayerNorm
  Linear ffn_in;             // intermediate.dense
  Linear ffn_out;            // output.dense
  LayerNorm ffn_norm;        // output.LayerNorm

  // Activations of one forward call, kept for the backward pass. The layer's input is the
  // previous layer's `out` (or the embeddings' output) and is not copied.
  struct Saved {
    Tensor q, k, v, context, lse;
    Tensor attn_sum;  // input + dropout(attn_out(context)), before attn_norm
    LayerNorm::Saved attn_norm;
    Tensor hidden;    // attn_norm output
    Tensor ffn_pre;   // ffn_in(hidden), before GELU
    Tensor ffn_act;   // GELU(ffn_pre)
    Tensor ffn_sum;   // hidden + dropout(ffn_out(ffn_act)), before ffn_norm
    LayerNorm::Saved ffn_norm;
    Tensor out;       // the layer's output [T, d]
  };
};

class RobertaEncoder {
 public:
  // Allocates the parameters (zeros; LayerNorm γ = 1) computing in `dtype` on `device`.
  // `dropout_stream` separates the dropout masks of different models in one run.
  RobertaEncoder(const RobertaConfig& config, DType dtype, Device device, uint32_t dropout_stream = 0);

  const RobertaConfig& config() const { return config_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  // Every parameter, named as in a Hugging Face checkpoint without the "roberta." prefix.
  ParameterList parameters();

  // Everything the backward pass needs from one forward call. Reused across calls of the same
  // shape, so a training loop allocates its activations once.
  struct Activations {
    ForwardOptions options;
    TokenBatch batch;
    RobertaEmbeddings::Saved embeddings;
    Tensor embedded;  // embeddings output [T, d]
    std::vector<RobertaLayer::Saved> layers;
    Tensor branch;    // scratch: a residual branch's output before the add
    // Scratch for the backward pass, also reused.
    Tensor grad_a, grad_b, grad_hidden, grad_branch, grad_ffn, grad_q, grad_k, grad_v, grad_context;
  };

  // Runs the encoder; returns the last hidden state [T, d] (a reference into `acts`). Refuses
  // (qarac::InputError) ids outside the vocabulary and sequences longer than the position table.
  const Tensor& forward(const TokenBatch& batch, const ForwardOptions& options, Activations& acts);
  // Accumulates into every parameter's gradient, given d loss / d last hidden state [T, d].
  void backward(Activations& acts, const Tensor& grad_output);

 private:
  void check_batch(const TokenBatch& batch) const;
  void embeddings_forward(Activations& acts);
  void embeddings_backward(Activations& acts, const Tensor& grad);
  void layer_forward(int index, const Tensor& input, Activations& acts);
  // Overwrites grad_input with d loss / d input of layer `index`, given d loss / d its output.
  void layer_backward(int index, const Tensor& input, const Tensor& grad_out, Tensor& grad_input,
                      Activations& acts);
  bool dropout_active(const Activations& acts, double p) const { return acts.options.training && p > 0; }
  RngKey dropout_key(const Activations& acts, uint32_t site) const;

  RobertaConfig config_;
  DType dtype_;
  Device device_;
  uint32_t dropout_stream_;
  RobertaEmbeddings embeddings_;
  std::vector<RobertaLayer> layers_;
};

}  // namespace qarac
