#include "model/roberta.h"

#include <algorithm>
#include <string>

namespace qarac {

namespace {
// Dropout sites of the encoder, combined with the layer index and the model's stream into the
// RNG key's tensor id.
enum DropoutSite : uint32_t { kEmbeddings = 0, kAttentionProbs = 1, kAttentionOut = 2, kFfnOut = 3 };
constexpr uint32_t kSitesPerLayer = 4;
constexpr uint32_t kSitesPerModel = 1u << 16;  // room for 16383 layers

std::string layer_prefix(int i) { return "encoder.layer." + std::to_string(i) + "."; }
}  // namespace

// ---- batches ----------------------------------------------------------------------------------

TokenBatch TokenBatch::from_sequences(const std::vector<std::vector<int32_t>>& sequences,
                                      int32_t padding_idx, Device device) {
  TokenBatch b;
  std::vector<int32_t> lengths, positions;
  for (const std::vector<int32_t>& s : sequences) {
    lengths.push_back(static_cast<int32_t>(s.size()));
    for (size_t i = 0; i < s.size(); ++i) positions.push_back(padding_idx + 1 + static_cast<int32_t>(i));
    b.host_ids.insert(b.host_ids.end(), s.begin(), s.end());
  }
  const int64_t tokens = static_cast<int64_t>(b.host_ids.size());
  b.ids = Tensor::from_vector(b.host_ids, {tokens}, device);
  b.positions = Tensor::from_vector(positions, {tokens}, device);
  b.seqs = ops::Sequences::from_lengths(lengths, device);
  return b;
}

TokenBatch TokenBatch::from_padded(const Tensor& ids, const Tensor& mask, int32_t padding_idx,
                                   Device device) {
  QARAC_CHECK(ids.dim() == 2 && ids.dtype() == DType::i32 && mask.shape() == ids.shape() &&
                  mask.dtype() == DType::i32,
              "TokenBatch::from_padded needs i32 ids and mask of one shape [B,S], got ", ids.str(),
              " and ", mask.str());
  const std::vector<int32_t> id = ids.to(Device::cpu()).to_vector<int32_t>();
  const std::vector<int32_t> m = mask.to(Device::cpu()).to_vector<int32_t>();
  const int64_t batch = ids.size(0), seq = ids.size(1);
  std::vector<std::vector<int32_t>> sequences(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq; ++t)
      if (m[static_cast<size_t>(b * seq + t)]) sequences[static_cast<size_t>(b)].push_back(id[static_cast<size_t>(b * seq + t)]);
  return from_sequences(sequences, padding_idx, device);
}

// ---- construction -----------------------------------------------------------------------------

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

void RobertaEncoder::check_batch(const TokenBatch& batch) const {
  check_dtype(batch.ids, DType::i32, "RobertaEncoder::forward ids");
  QARAC_CHECK(batch.ids.device() == device_, "RobertaEncoder::forward: batch on ", batch.ids.device().str(),
              ", model on ", device_.str());
  for (size_t i = 0; i < batch.host_ids.size(); ++i)
    QARAC_INPUT_CHECK(batch.host_ids[i] >= 0 && batch.host_ids[i] < config_.vocab_size, "token ", i,
                      " of the batch has id ", batch.host_ids[i], ", outside the vocabulary of ",
                      config_.vocab_size);
  const int64_t last_position = config_.pad_token_id + batch.seqs.max_len;
  QARAC_INPUT_CHECK(last_position < config_.max_position_embeddings, "a sequence of ", batch.seqs.max_len,
                    " tokens needs position id ", last_position, " but the model has max_position_embeddings ",
                    config_.max_position_embeddings);
}

const Tensor& RobertaEncoder::forward(const TokenBatch& batch, const ForwardOptions& options,
                                      Activations& acts) {
  check_batch(batch);
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
  const int64_t tokens = acts.batch.tokens(), d = config_.hidden_size;
  RobertaEmbeddings::Saved& s = acts.embeddings;
  ensure_tensor(s.sum, {tokens, d}, dtype_, device_);
  ops::embedding_forward(acts.batch.ids, embeddings_.word.value, s.sum);
  ops::embedding_forward(acts.batch.positions, embeddings_.position.value, s.sum, /*accumulate=*/true);
  // Single-segment inputs: every token has type 0, so the type embedding is a bias (row 0).
  Tensor type0 = embeddings_.token_type.value.select(0);
  ops::bias_add(s.sum, type0);

  ensure_tensor(acts.embedded, {tokens, d}, dtype_, device_);
  embeddings_.norm.forward(s.sum, acts.embedded, s.norm);
  if (dropout_active(acts, config_.hidden_dropout))
    ops::dropout_forward(acts.embedded, config_.hidden_dropout, dropout_key(acts, kEmbeddings), acts.embedded);
}

void RobertaEncoder::layer_forward(int index, const Tensor& input, Activations& acts) {
  RobertaLayer& l = layers_[static_cast<size_t>(index)];
  RobertaLayer::Saved& s = acts.layers[static_cast<size_t>(index)];
  const uint32_t site0 = kSitesPerLayer * static_cast<uint32_t>(index + 1);
  const int64_t tokens = input.size(0), d = config_.hidden_size, ffn = config_.intermediate_size;
  const DType stats = ops::accumulation_dtype(dtype_);

  for (Tensor* t : {&s.q, &s.k, &s.v, &s.context, &s.attn_sum, &s.hidden, &s.ffn_sum, &s.out, &acts.branch})
    ensure_tensor(*t, {tokens, d}, dtype_, device_);
  ensure_tensor(s.lse, {config_.num_heads, tokens}, stats, device_);
  ensure_tensor(s.ffn_pre, {tokens, ffn}, dtype_, device_);
  ensure_tensor(s.ffn_act, {tokens, ffn}, dtype_, device_);

  // Self-attention block: hidden = LN(input + dropout(W_o · attention(q, k, v))).
  l.query.forward(input, s.q);
  l.key.forward(input, s.k);
  l.value.forward(input, s.v);
  const double attn_p = acts.options.training ? config_.attention_dropout : 0.0;
  ops::attention_forward(s.q, s.k, s.v, acts.batch.seqs, config_.num_heads, acts.options.causal, attn_p,
                         dropout_key(acts, site0 + kAttentionProbs), s.context, s.lse);
  l.attn_out.forward(s.context, acts.branch);
  if (dropout_active(acts, config_.hidden_dropout))
    ops::dropout_forward(acts.branch, config_.hidden_dropout, dropout_key(acts, site0 + kAttentionOut), acts.branch);
  l.attn_norm.forward_residual(acts.branch, input, s.attn_sum, s.hidden, s.attn_norm);

  // Feed-forward block: out = LN(hidden + dropout(W_2 · GELU(W_1 · hidden))), the GELU fused
  // into the first GEMM's epilogue.
  l.ffn_in.forward(s.hidden, s.ffn_act, ops::Activation::gelu, &s.ffn_pre);
  l.ffn_out.forward(s.ffn_act, acts.branch);
  if (dropout_active(acts, config_.hidden_dropout))
    ops::dropout_forward(acts.branch, config_.hidden_dropout, dropout_key(acts, site0 + kFfnOut), acts.branch);
  l.ffn_norm.forward_residual(acts.branch, s.hidden, s.ffn_sum, s.out, s.ffn_norm);
}

// ---- backward ---------------------------------------------------------------------------------

void RobertaEncoder::backward(Activations& acts, const Tensor& grad_output) {
  QARAC_CHECK(acts.layers.size() == layers_.size(), "RobertaEncoder::backward without a forward pass");
  const int64_t tokens = acts.embedded.size(0), d = config_.hidden_size;
  check_shape(grad_output, {tokens, d}, "RobertaEncoder::backward grad_output");
  for (Tensor* t : {&acts.grad_a, &acts.grad_b, &acts.grad_hidden, &acts.grad_branch, &acts.grad_q,
                    &acts.grad_k, &acts.grad_v, &acts.grad_context})
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

// Each residual block y = LN(x + dropout(f(x))) sends d(sum) = LN'ᵀ dy both straight to x and
// through the branch; the branch's input gradient is accumulated on top, so nothing is copied.
void RobertaEncoder::layer_backward(int index, const Tensor& input, const Tensor& grad_out,
                                    Tensor& grad_input, Activations& acts) {
  RobertaLayer& l = layers_[static_cast<size_t>(index)];
  RobertaLayer::Saved& s = acts.layers[static_cast<size_t>(index)];
  const uint32_t site0 = kSitesPerLayer * static_cast<uint32_t>(index + 1);
  const double p = config_.hidden_dropout;

  // Feed-forward block: grad_hidden = d(ffn_sum), then += the branch's gradient.
  l.ffn_norm.backward(s.ffn_sum, grad_out, s.ffn_norm, acts.grad_hidden);
  const Tensor* grad_branch = &acts.grad_hidden;
  if (dropout_active(acts, p)) {
    ops::dropout_backward(acts.grad_hidden, p, dropout_key(acts, site0 + kFfnOut), acts.grad_branch);
    grad_branch = &acts.grad_branch;
  }
  l.ffn_out.backward(s.ffn_act, *grad_branch, &acts.grad_ffn, false, /*input_gelu_pre=*/&s.ffn_pre);
  l.ffn_in.backward(s.hidden, acts.grad_ffn, &acts.grad_hidden, /*accumulate_dx=*/true);

  // Self-attention block: grad_input = d(attn_sum), then += the Q, K, V projections' gradients.
  l.attn_norm.backward(s.attn_sum, acts.grad_hidden, s.attn_norm, grad_input);
  grad_branch = &grad_input;
  if (dropout_active(acts, p)) {
    ops::dropout_backward(grad_input, p, dropout_key(acts, site0 + kAttentionOut), acts.grad_branch);
    grad_branch = &acts.grad_branch;
  }
  l.attn_out.backward(s.context, *grad_branch, &acts.grad_context);
  const double attn_p = acts.options.training ? config_.attention_dropout : 0.0;
  ops::attention_backward(acts.grad_context, s.q, s.k, s.v, s.context, s.lse, acts.batch.seqs,
                          config_.num_heads, acts.options.causal, attn_p,
                          dropout_key(acts, site0 + kAttentionProbs), acts.grad_q, acts.grad_k, acts.grad_v);
  l.query.backward(input, acts.grad_q, &grad_input, /*accumulate_dx=*/true);
  l.key.backward(input, acts.grad_k, &grad_input, true);
  l.value.backward(input, acts.grad_v, &grad_input, true);
}

void RobertaEncoder::embeddings_backward(Activations& acts, const Tensor& grad) {
  RobertaEmbeddings::Saved& s = acts.embeddings;
  const Tensor* grad_norm_out = &grad;
  if (dropout_active(acts, config_.hidden_dropout)) {
    ops::dropout_backward(grad, config_.hidden_dropout, dropout_key(acts, kEmbeddings), acts.grad_branch);
    grad_norm_out = &acts.grad_branch;
  }
  embeddings_.norm.backward(s.sum, *grad_norm_out, s.norm, acts.grad_hidden);
  ops::embedding_backward(acts.batch.ids, acts.grad_hidden, embeddings_.word.grad);
  ops::embedding_backward(acts.batch.positions, acts.grad_hidden, embeddings_.position.grad);
  Tensor type0_grad = embeddings_.token_type.grad.select(0);
  ops::bias_backward(acts.grad_hidden, type0_grad);
}

}  // namespace qarac
