// The RoBERTa LM head (Hugging Face's RobertaLMHead): logits = W · LN(GELU(dense(x))) + b, the
// decoder's output layer and, loaded from a base checkpoint's lm_head, the MLM head of the
// forgetting monitor.
//
// The output matrix W is either the head's own (untied, the QARAC default) or a given parameter
// [V, d] such as a base's word embeddings (tied). An own matrix is stored with its vocabulary
// padded to a multiple of `vocab_multiple` rows (50265 -> 50304 with 64: the logits GEMM runs
// at full speed only when N is a multiple of 8/64, docs/design.md §5): padded rows of W and entries
// of b are zero, the logits' padded columns are excluded from the softmax (valid_cols = V), so
// their gradients are exactly zero and the rows stay zero under AdamW (zero gradient, zero
// decay). The padding never leaves the head: parameters() lists W and b as views of their first
// V rows, so the optimizer, checkpoints and Hugging Face export/import all see [V, d] and [V].
#pragma once

#include <map>
#include <string>

#include "model/layers.h"
#include "model/roberta_config.h"

namespace qarac {

class LMHead {
 public:
  // Untied: an own output matrix [V_padded, d] and bias [V_padded] (zeros; init_normal on
  // parameters() fills the first V rows only).
  LMHead(const RobertaConfig& config, int64_t vocab_multiple, DType dtype, Device device);
  // Tied: the output matrix is `output` [V, d], owned by the caller, outliving the head; its
  // gradient is accumulated there. No padding.
  LMHead(const RobertaConfig& config, Parameter& output, DType dtype, Device device);
  LMHead(const LMHead&) = delete;  // holds a pointer to its own (or a tied) matrix
  LMHead& operator=(const LMHead&) = delete;

  int64_t vocab_size() const { return vocab_; }                 // V: the classes
  int64_t padded_vocab() const { return bias_.value.size(0); }  // the logits' width
  bool tied() const { return weight_ != &own_weight_; }

  // "lm_head.dense.weight", "lm_head.dense.bias", "lm_head.layer_norm.weight",
  // "lm_head.layer_norm.bias", "lm_head.decoder.weight" (untied only; [V, d]), "lm_head.bias"
  // ([V]): the Hugging Face names. W and b are views of the padded storage (they share it: write
  // through them with assign/copy_, never rebind their tensors).
  ParameterList parameters();
  // The whole output matrix and bias, padded rows included (the tied matrix when tied).
  Parameter& output_weight() { return *weight_; }
  Parameter& output_bias() { return bias_; }

  // Loads a Hugging Face lm_head given without its "lm_head." prefix (io::HfRoberta::lm_head):
  // dense.*, layer_norm.*, bias, and decoder.weight when untied. InputError naming `source` when
  // one is missing or misshapen; nothing is written then.
  void load(const std::map<std::string, Tensor>& tensors, const std::string& source);

  struct Activations {
    Tensor pre;  // dense(x), before GELU [T, d]
    Tensor act;  // GELU(pre)
    LayerNorm::Saved norm;
    Tensor normed;                 // LN(act)
    Tensor logits;                 // [T, padded_vocab]
    Tensor grad_normed, grad_act;  // backward scratch [T, d]
  };
  // logits [T, padded_vocab] of x [T, d] (a reference into acts; columns >= V carry no meaning).
  Tensor& forward(const Tensor& x, Activations& acts) const;
  // dx [T, d] overwritten given grad_logits [T, padded_vocab] (which may be acts.logits, turned
  // into its gradient in place); parameter gradients accumulated.
  void backward(const Tensor& x, Activations& acts, const Tensor& grad_logits, Tensor& dx);

 private:
  void allocate_common(const RobertaConfig& config, DType dtype, Device device);
  // Packs the head's own parameters (pack_parameters; the padded matrix and bias whole), then
  // takes the views of their first V rows.
  void pack();

  Linear dense_;
  LayerNorm norm_;
  Parameter own_weight_;               // untied: [V_padded, d]
  Parameter* weight_;                  // &own_weight_, or the tied matrix
  Parameter bias_;                     // [V_padded]
  Parameter weight_view_, bias_view_;  // their first V rows
  int64_t vocab_;
};

}  // namespace qarac
