// The three QARAC models built from one pre-trained RoBERTa base (docs/design.md §2): the question
// encoder QE and answer encoder AE (base + global attention pooling head each, optionally
// sharing one base), and the decoder D (causal base, two head layers that see the slot-0
// vector, LM head; model/decoder.h). Each model's forward pass keeps its activations in a
// caller-owned object, so one model can be applied several times in a step (AE is, once per task
// and by the rehearsal) and each application is back-propagated on its own.
//
// Parameter names. Each model exports as a Hugging Face directory whose RoBERTa part loads in
// transformers; model_parameters() names its tensors so:
//   encoders: "roberta.<encoder name>" (as "roberta.encoder.layer.0.attention.self.query.weight"),
//             "pooling.global_projection.weight", "pooling.local_projection.weight" (Wg, Wl);
//   decoder:  "roberta.<encoder name>", "decoder_layers.{0,1}.<layer name>" (the two head layers,
//             e.g. "decoder_layers.0.attention.self.query.weight"), and the LM head's
//             "lm_head.dense.*", "lm_head.layer_norm.*", "lm_head.decoder.weight" (untied only;
//             [V, d]: the padding stays inside the head, model/lm_head.h), "lm_head.bias" ([V]).
// parameters() lists every parameter once under "<model>.<export name>", a shared base once as
// "shared_encoder.roberta.*". Both lists hold views that share the models' storage: write
// through assign()/copy_() and zero_(), never rebind a view's tensors.
#pragma once

#include <memory>
#include <string>

#include "model/pooling.h"
#include "model/roberta.h"

namespace qarac {

struct QaracConfig {
  RobertaConfig base;
  bool share_encoder_base = false;  // QE and AE share one RoBERTa base (separate pooling heads)
  bool tie_lm_head = false;         // the LM head's output matrix is D's word embeddings
  int64_t vocab_multiple = 64;      // untied LM head: rows padded to a multiple (GEMM-friendly)
  uint64_t init_seed = 1;           // the new heads' initialisation
  double init_std = 0.02;
  // Which models to build: a rank of a distributed run builds those its tasks use (and rank 0,
  // which evaluates and exports, all three). A model's heads are initialised the same whichever
  // others are built.
  bool build_question_encoder = true, build_answer_encoder = true, build_decoder = true;
  std::string base_source = "the base checkpoint";  // what messages about the base weights name
};

// An encoder: RoBERTa base + pooling head, v [B, d] per batch of sequences.
class SentenceEncoder {
 public:
  struct Activations {
    RobertaEncoder::Activations base;
    PoolingHead::Activations pooling;
    Tensor grad_hidden;
  };
  // `name` ("question_encoder", ...) names the model in messages; the pooling head's parameters
  // are "pooling.global_projection.weight" and "pooling.local_projection.weight".
  SentenceEncoder(std::shared_ptr<RobertaEncoder> base, const std::string& name);
  // v [B, d] (a reference into acts). Runs bidirectional whatever options.causal says.
  const Tensor& forward(const TokenBatch& batch, const ForwardOptions& options, Activations& acts);
  // Accumulates parameter gradients given d loss / d v.
  void backward(Activations& acts, const Tensor& grad_pooled);
  // While set, backward() reports the pooling head's and then the base's parameters as it
  // finishes their gradients (RobertaEncoder::set_gradients_ready; a shared base reports too).
  void set_gradients_ready(GradientsReady ready);
  ParameterList parameters();  // the base's (RobertaEncoder names) and the head's
  ParameterList head_parameters();
  RobertaEncoder& base() { return *base_; }
  const std::string& name() const { return name_; }

 private:
  std::shared_ptr<RobertaEncoder> base_;
  std::string name_;
  PoolingHead pooling_;
  GradientsReady gradients_ready_;
};

// The decoder D(v, y): defined in model/decoder.h.
class Decoder;

class QaracModels {
 public:
  // New models from a base checkpoint's encoder tensors (names without "roberta.", as
  // io::HfRoberta::encoder): the bases are copies of it, the heads are initialised from
  // config.init_seed (matrices ~ N(0, init_std²), biases 0, LayerNorms γ 1, β 0), the same
  // whichever models are built. Dropout streams: QE's base 1, AE's base 2 (1 when shared), D 3.
  QaracModels(const QaracConfig& config, const TensorMap& base_weights, DType dtype,
              Device device);
  ~QaracModels();

  // The models; asking for one the config did not build is an internal error.
  SentenceEncoder& question_encoder();
  SentenceEncoder& answer_encoder();
  Decoder& decoder();

  // Every parameter of the built models once (a shared base appears once), in a fixed order:
  // the optimizer's and the checkpoint's list. Names are prefixed "question_encoder.",
  // "answer_encoder.", "decoder." (a shared base: "shared_encoder."), then the export name.
  ParameterList parameters();
  // The parameters of one model, with the names of its Hugging Face export (no prefix).
  // model: "question_encoder", "answer_encoder" or "decoder".
  ParameterList model_parameters(const std::string& model);
  const QaracConfig& config() const;
  DType dtype() const;
  Device device() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qarac
