#include "model/roberta.h"

#include <algorithm>
#include <string>

#include "kernels/ops.h"

namespace qarac {

namespace {
// Dropout sites of the encoder, combined with the layer index and the model's stream into the
// RNG key's tensor id.
enum DropoutSite : uint32_t { kEmbeddings = 0, kAttentionProbs = 1, kAttentionOut = 2, kFfnOut = 3 };
constexpr uint32_t kSitesPerLayer = 4;
constexpr uint32_t kSitesPerModel = 1u << 16;  // room for 16384 layers

std::string layer_prefix(int i) { return "encoder.layer." + std::to_string(i) + "."; }
}  // namespace

Tensor roberta_position_ids(const Tensor& mask, int32_t padding_idx) {
  QARAC_CHECK(mask.dim() == 2 && mask.dtype() == DType::i32, "position ids need an i32 [B,S] mask, got ",
              mask.str());
  const std::vector<int32_t> m = mask.to(Device::cpu()).to_vector<int32_t>();
  const int64_t batch = mask.size(0), seq = mask.size(1);
  std::vector<int32_t> pos(m.size());
  for (int64_t b = 0; b < batch; ++b) {
    int32_t seen = 0;
    for (int64_t t = 0; t < seq; ++t) {
      const size_t i = static_cast<size_t>(b * seq + t);
      seen += m[i] != 0;
      pos[i] = m[i] != 0 ? padding_idx + seen : padding_idx;
    }
  }
  return Tensor::from_vector(pos, {batch * seq});
}

RobertaEncoder::RobertaEncoder(const RobertaConfig& config, DType dtype, Device device,
                               uint32_t dropout_stream)
    : config_(config), dtype_(dtype), device_(device), dropout_stream_(dropout_stream) {
  QARAC_CHECK(config.hidden_size % config.num_heads == 0, "hidden_size ", config.hidden_size,
              " is not divisible by num_heads ", config.num_heads);
  const int64_t d = config.hidden_size;
  embeddings_.word.allocate("embeddings.word_embeddings.weight", {config.vocab_size, d}, dtype, device);
  embeddings_.position.allocate("embeddings.position_embeddings.weight",
                                {config.max_position_embeddings, d}, dtype, device);
  embeddings_.token_type.allocate("embeddings.token_type_embeddings.weight", {config.type_vocab_size, d},
                                  dtype, device);
  embeddings_.norm.allocate("embeddings.LayerNorm", d, config.layer_norm_eps, dtype, device);

  layers_.resize(static_cast<size_t>(config.num_layers));
  for (int i = 0; i < static_cast<int>(layers_.size()); ++i) {
    RobertaLayer& l = layers_[static_cast<size_t>(i)];
    const std::string p = layer_prefix(i);
    l.query.allocate(p + "attention.self.query", d, d, dtype, device);
    l.key.allocate(p + "attention.self.key", d, d, dtype, device);
    l.value.allocate(p + "attention.self.value", d, d, dtype, device);
    l.attn_out.allocate(p + "attention.output.dense", d, d, dtype, device);
    l.attn_norm.allocate(p + "attention.output.LayerNorm", d, config.layer_norm_eps, dtype, device);
    l.ffn_in.allocate(p + "intermediate.dense", d, config.intermediate_size, dtype, device);
    l.ffn_out.allocate(p + "output.dense", config.intermediate_size, d, dtype, device);
    l.ffn_norm.allocate(p + "output.LayerNorm", d, config.layer_norm_eps, dtype, device);
  }
}

ParameterList RobertaEncoder::parameters() {
  ParameterList out{&embeddings_.word, &embeddings_.position, &embeddings_.token_type};
  embeddings_.norm.collect(out);
  for (RobertaLayer& l : layers_) {
    l.query.collect(out);
    l.key.collect(out);
    l.value.collect(out);
    l.attn_out.collect(out);
    l.attn_norm.collect(out);
    l.ffn_in.collect(out);
    l.ffn_out.collect(out);
    l.ffn_norm.collect(out);
  }
  return out;
}

RngKey RobertaEncoder::dropout_key(const Activations& acts, uint32_t site) const {
  return RngKey{acts.options.seed, acts.options.step, dropout_stream_ * kSitesPerModel + site};
}

// ---- forward ----------------------------------------------------------------------------------

const Tensor& RobertaEncoder::forward(const TokenBatch& batch, const ForwardOptions& options,
                                      Activations& acts) {
  check_dtype(batch.ids, DType::i32, "RobertaEncoder::forward ids");
  check_shape(batch.mask, batch.ids.shape(), "RobertaEncoder::forward mask");
  acts.options = options;
  acts.batch = batch;
  acts.layers.resize(layers_.size());
  embeddings_forward(acts);
  const Tensor* input = &acts.embedded;
  for (int i = 0; i < static_cast<int>(layers_.size()); ++i) {
    layer_forward(i, *input, acts);
    input = &acts.layers[static_cast<size_t>(i)].out;
  }
  return *input;
}

void RobertaEncoder::embeddings_forward(Activations& acts) {
  const int64_t batch = acts.batch.batch(), seq = acts.batch.seq(), tokens = batch * seq;
  const int64_t d = config_.hidden_size;
  RobertaEmbeddings::Saved& s = acts.embeddings;

  const Tensor pos_cpu = roberta_position_ids(acts.batch.mask, config_.pad_token_id);
  const std::vector<int32_t> pos = pos_cpu.to_vector<int32_t>();
  const int32_t max_pos = pos.empty() ? 0 : *std::max_element(pos.begin(), pos.end());
  QARAC_INPUT_CHECK(max_pos < config_.max_position_embeddings, "a sequence of ",
                    max_pos - config_.pad_token_id, " tokens needs position id ", max_pos,
                    " but the model has max_position_embeddings ", config_.max_position_embeddings);
  s.position_ids = pos_cpu.to(device_);
  ensure_tensor(s.type_ids, {tokens}, DType::i32, device_);
  s.type_ids.zero_();  // single-segment inputs: every token has type 0

  const Tensor ids = acts.batch.ids.reshape({tokens});
  ensure_tensor(s.sum, {tokens, d}, dtype_, device_);
  ops::embedding_forward(ids, embeddings_.word.value, s.sum);
  ops::embedding_forward(s.position_ids, embeddings_.position.value, s.sum, /*accumulate=*/true);
  ops::embedding_forward(s.type_ids, embeddings_.token_type.value, s.sum, /*accumulate=*/true);

  ensure_tensor(acts.embedded, {tokens, d}, dtype_, device_);
  embeddings_.norm.forward(s.sum, acts.embedded, s.norm);
  if (acts.options.training)
    ops::dropout_forward(acts.embedded, config_.hidden_dropout, dropout_key(acts, kEmbeddings), acts.embedded);
}

void RobertaEncoder::layer_forward(int index, const Tensor& input, Activations& acts) {
  RobertaLayer& l = layers_[static_cast<size_t>(index)];
  RobertaLayer::Saved& s = acts.layers[static_cast<size_t>(index)];
  const bool training = acts.options.training;
  const uint32_t site0 = kSitesPerLayer * static_cast<uint32_t>(index + 1);
  const int64_t tokens = input.size(0), d = config_.hidden_size, ffn = config_.intermediate_size;
  const ops::AttentionDims dims{acts.batch.batch(), acts.batch.seq(), config_.num_heads, config_.head_dim()};

  for (Tensor* t : {&s.q, &s.k, &s.v, &s.context, &s.attn_sum, &s.hidden, &s.ffn_sum, &s.out})
    ensure_tensor(*t, {tokens, d}, dtype_, device_);
  ensure_tensor(s.probs, {dims.batch, dims.heads, dims.seq, dims.seq}, dtype_, device_);
  ensure_tensor(s.ffn_pre, {tokens, ffn}, dtype_, device_);
  ensure_tensor(s.ffn_act, {tokens, ffn}, dtype_, device_);

  // Self-attention block: LN(input + dropout(W_o · attention(q, k, v))).
  l.query.forward(input, s.q);
  l.key.forward(input, s.k);
  l.value.forward(input, s.v);
  ops::attention_forward(s.q, s.k, s.v, acts.batch.mask, dims, acts.options.causal,
                         training ? config_.attention_dropout : 0.0,
                         dropout_key(acts, site0 + kAttentionProbs), s.context, s.probs);
  l.attn_out.forward(s.context, s.attn_sum);
  if (training)
    ops::dropout_forward(s.attn_sum, config_.hidden_dropout, dropout_key(acts, site0 + kAttentionOut), s.attn_sum);
  ops::add(s.attn_sum, input, s.attn_sum);
  l.attn_norm.forward(s.attn_sum, s.hidden, s.attn_norm);

  // Feed-forward block: LN(hidden + dropout(W_2 · GELU(W_1 · hidden))).
  l.ffn_in.forward(s.hidden, s.ffn_pre);
  ops::gelu_forward(s.ffn_pre, s.ffn_act);
  l.ffn_out.forward(s.ffn_act, s.ffn_sum);
  if (training)
    ops::dropout_forward(s.ffn_sum, config_.hidden_dropout, dropout_key(acts, site0 + kFfnOut), s.ffn_sum);
  ops::add(s.ffn_sum, s.hidden, s.ffn_sum);
  l.ffn_norm.forward(s.ffn_sum, s.out, s.ffn_norm);
}

// ---- backward ---------------------------------------------------------------------------------

void RobertaEncoder::backward(Activations& acts, const Tensor& grad_output) {
  QARAC_CHECK(acts.layers.size() == layers_.size(), "RobertaEncoder::backward without a forward pass");
  const int64_t tokens = acts.embedded.size(0), d = config_.hidden_size;
  check_shape(grad_output, {tokens, d}, "RobertaEncoder::backward grad_output");
  for (Tensor* t : {&acts.grad_a, &acts.grad_b, &acts.grad_hidden, &acts.grad_q, &acts.grad_k,
                    &acts.grad_v, &acts.grad_context})
    ensure_tensor(*t, {tokens, d}, dtype_, device_);
  ensure_tensor(acts.grad_ffn, {tokens, config_.intermediate_size}, dtype_, device_);

  // Ping-pong between two gradient buffers: layer i reads d/d(its output), writes d/d(its input).
  const Tensor* grad = &grad_output;
  Tensor* next = &acts.grad_a;
  for (int i = static_cast<int>(layers_.size()) - 1; i >= 0; --i) {
    const Tensor& input = i == 0 ? acts.embedded : acts.layers[static_cast<size_t>(i - 1)].out;
    layer_backward(i, input, *grad, *next, acts);
    grad = next;
    next = next == &acts.grad_a ? &acts.grad_b : &acts.grad_a;
  }
  embeddings_backward(acts, *grad);
}

void RobertaEncoder::layer_backward(int index, const Tensor& input, const Tensor& grad_out,
                                    Tensor& grad_input, Activations& acts) {
  RobertaLayer& l = layers_[static_cast<size_t>(index)];
  RobertaLayer::Saved& s = acts.layers[static_cast<size_t>(index)];
  const bool training = acts.options.training;
  const uint32_t site0 = kSitesPerLayer * static_cast<uint32_t>(index + 1);
  const ops::AttentionDims dims{acts.batch.batch(), acts.batch.seq(), config_.num_heads, config_.head_dim()};

  // Feed-forward block. d(ffn_sum) reaches both the residual (hidden) and the FFN branch.
  Tensor& grad_sum = grad_input;  // grad_input is free until the very end: use it as scratch
  l.ffn_norm.backward(s.ffn_sum, grad_out, s.ffn_norm, grad_sum);
  acts.grad_hidden.copy_(grad_sum);
  if (training)
    ops::dropout_backward(grad_sum, config_.hidden_dropout, dropout_key(acts, site0 + kFfnOut), grad_sum);
  l.ffn_out.backward(s.ffn_act, grad_sum, &acts.grad_ffn);
  ops::gelu_backward(s.ffn_pre, acts.grad_ffn, acts.grad_ffn);
  l.ffn_in.backward(s.hidden, acts.grad_ffn, &acts.grad_hidden, /*accumulate_dx=*/true);

  // Self-attention block, same pattern: the residual carries d(attn_sum) straight to the input.
  l.attn_norm.backward(s.attn_sum, acts.grad_hidden, s.attn_norm, grad_sum);
  acts.grad_hidden.copy_(grad_sum);  // the residual part of d(input)
  if (training)
    ops::dropout_backward(grad_sum, config_.hidden_dropout, dropout_key(acts, site0 + kAttentionOut), grad_sum);
  l.attn_out.backward(s.context, grad_sum, &acts.grad_context);
  ops::attention_backward(acts.grad_context, s.q, s.k, s.v, s.probs, dims,
                          training ? config_.attention_dropout : 0.0,
                          dropout_key(acts, site0 + kAttentionProbs), acts.grad_q, acts.grad_k, acts.grad_v);
  grad_input.copy_(acts.grad_hidden);
  l.query.backward(input, acts.grad_q, &grad_input, /*accumulate_dx=*/true);
  l.key.backward(input, acts.grad_k, &grad_input, true);
  l.value.backward(input, acts.grad_v, &grad_input, true);
}

void RobertaEncoder::embeddings_backward(Activations& acts, const Tensor& grad) {
  RobertaEmbeddings::Saved& s = acts.embeddings;
  const Tensor* grad_norm_out = &grad;
  if (acts.options.training) {
    ops::dropout_backward(grad, config_.hidden_dropout, dropout_key(acts, kEmbeddings), acts.grad_context);
    grad_norm_out = &acts.grad_context;
  }
  Tensor& grad_sum = acts.grad_hidden;
  embeddings_.norm.backward(s.sum, *grad_norm_out, s.norm, grad_sum);
  const Tensor ids = acts.batch.ids.reshape({s.sum.size(0)});
  ops::embedding_backward(ids, grad_sum, embeddings_.word.grad);
  ops::embedding_backward(s.position_ids, grad_sum, embeddings_.position.grad);
  ops::embedding_backward(s.type_ids, grad_sum, embeddings_.token_type.grad);
}

}  // namespace qarac
