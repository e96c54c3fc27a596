// The RoBERTa encoder and its layers: forward and explicit backward passes over packed batches,
// dropout keys, batch packing, and loading named tensors into parameters.
#include "model/roberta.h"

#include <algorithm>
#include <string>

namespace qarac {

namespace {
// Dropout sites of the encoder: site 0 is the embeddings' output, layer i owns sites
// 4(i+1) + {attention probabilities, attention output, FFN output}.
enum DropoutSite : uint32_t { kEmbeddings = 0, kAttentionProbs = 1, kAttentionOut = 2, kFfnOut = 3 };
constexpr uint32_t kSitesPerLayer = 4;
constexpr uint32_t kSitesPerModel = 1u << 16;  // room for 16383 layers
constexpr uint32_t kStreams = 1u << 8;         // models per run

std::string layer_prefix(int i) { return "encoder.layer." + std::to_string(i) + "."; }

// Q, K or V (part 0, 1, 2): columns [part d, (part + 1) d) of a [T, 3d] tensor Q | K | V.
Tensor third(const Tensor& qkv, int64_t part) {
  const int64_t d = qkv.size(1) / 3;
  return qkv.slice(1, part * d, (part + 1) * d);
}
}  // namespace

RngKey dropout_key(const ForwardOptions& options, uint32_t stream, uint32_t site) {
  QARAC_CHECK(stream < kStreams && site < kSitesPerModel &&
                  options.application < ForwardOptions::kApplications,
              "dropout_key: stream ", stream, ", site ", site, " or application ",
              options.application, " out of range");
  return RngKey{options.seed, options.step,
                (options.application * kStreams + stream) * kSitesPerModel + site};
}

// ---- batches ----------------------------------------------------------------------------------

TokenBatch TokenBatch::from_packed(const std::vector<int32_t>& tokens,
                                   const std::vector<int32_t>& starts, int32_t padding_idx,
                                   Device device, const std::vector<uint64_t>& sequence_ids) {
  QARAC_CHECK(!starts.empty() && starts.front() == 0 &&
                  starts.back() == static_cast<int64_t>(tokens.size()),
              "TokenBatch::from_packed: starts must run from 0 to the ", tokens.size(), " tokens");
  TokenBatch b;
  std::vector<int32_t> lengths, positions;
  lengths.reserve(starts.size() - 1);
  positions.reserve(tokens.size());
  for (size_t s = 0; s + 1 < starts.size(); ++s) {
    QARAC_CHECK(starts[s + 1] >= starts[s], "TokenBatch::from_packed: starts decrease at ", s);
    lengths.push_back(starts[s + 1] - starts[s]);
    for (int32_t i = 0; i < lengths.back(); ++i) positions.push_back(padding_idx + 1 + i);
  }
  b.host_ids = tokens;
  const int64_t count = static_cast<int64_t>(tokens.size());
  b.ids = Tensor::from_vector(b.host_ids, {count}, device);
  b.positions = Tensor::from_vector(positions, {count}, device);
  QARAC_CHECK(sequence_ids.empty() || sequence_ids.size() == lengths.size(),
              "TokenBatch::from_packed: ", sequence_ids.size(), " sequence ids for ",
              lengths.size(), " sequences");
  b.seqs = ops::Sequences::from_lengths(lengths, device, sequence_ids);
  b.extent = b.seqs.max_len;
  return b;
}

TokenBatch TokenBatch::from_sequences(const std::vector<std::vector<int32_t>>& sequences,
                                      int32_t padding_idx, Device device,
                                      const std::vector<uint64_t>& sequence_ids) {
  std::vector<int32_t> tokens, starts{0};
  for (const std::vector<int32_t>& s : sequences) {
    tokens.insert(tokens.end(), s.begin(), s.end());
    starts.push_back(static_cast<int32_t>(tokens.size()));
  }
  return from_packed(tokens, starts, padding_idx, device, sequence_ids);
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

TokenBatch TokenBatch::continuing(const std::vector<std::vector<int32_t>>& sequences,
                                  const std::vector<int32_t>& begun, int32_t padding_idx, Device device) {
  QARAC_CHECK(begun.size() == sequences.size(), "TokenBatch::continuing: ", begun.size(),
              " begun lengths for ", sequences.size(), " sequences");
  TokenBatch b = from_sequences(sequences, padding_idx, device);
  std::vector<int32_t> positions;
  positions.reserve(b.host_ids.size());
  for (size_t s = 0; s < sequences.size(); ++s) {
    const int32_t length = static_cast<int32_t>(sequences[s].size());
    for (int32_t i = 0; i < length; ++i) positions.push_back(padding_idx + 1 + begun[s] + i);
    b.extent = std::max<int64_t>(b.extent, int64_t{begun[s]} + length);
  }
  b.positions = Tensor::from_vector(positions, {b.tokens()}, device);
  return b;
}

// ---- one layer --------------------------------------------------------------------------------

void RobertaLayer::allocate(const std::string& prefix, const RobertaConfig& config, DType dtype,
                            Device device) {
  const int64_t d = config.hidden_size;
  query.allocate(prefix + "attention.self.query", d, d, dtype, device);
  key.allocate(prefix + "attention.self.key", d, d, dtype, device);
  value.allocate(prefix + "attention.self.value", d, d, dtype, device);
  attn_out.allocate(prefix + "attention.output.dense", d, d, dtype, device);
  attn_norm.allocate(prefix + "attention.output.LayerNorm", d, config.layer_norm_eps, dtype, device);
  ffn_in.allocate(prefix + "intermediate.dense", d, config.intermediate_size, dtype, device);
  ffn_out.allocate(prefix + "output.dense", config.intermediate_size, d, dtype, device);
  ffn_norm.allocate(prefix + "output.LayerNorm", d, config.layer_norm_eps, dtype, device);
}

void RobertaLayer::collect(ParameterList& out) {
  for (Linear* l : {&query, &key, &value}) out.push_back(&l->weight);
  for (Linear* l : {&query, &key, &value}) out.push_back(&l->bias);
  attn_out.collect(out);
  attn_norm.collect(out);
  ffn_in.collect(out);
  ffn_out.collect(out);
  ffn_norm.collect(out);
}

Linear RobertaLayer::qkv() const {
  const char* what = "RobertaLayer::qkv (Q, K, V packed back to back)";
  const int64_t d = query.in_features();
  auto join = [&](Tensor Parameter::*role, Parameter Linear::*which) {
    return Tensor::join({query.*which.*role, key.*which.*role, value.*which.*role}, what);
  };
  Linear fused;
  fused.weight.value = join(&Parameter::value, &Linear::weight).reshape({3 * d, d});
  fused.weight.grad = join(&Parameter::grad, &Linear::weight).reshape({3 * d, d});
  fused.bias.value = join(&Parameter::value, &Linear::bias);
  fused.bias.grad = join(&Parameter::grad, &Linear::bias);
  return fused;
}

RobertaLayer::Settings RobertaLayer::settings(const RobertaConfig& config,
                                              const ForwardOptions& options, uint32_t stream,
                                              int index) {
  const uint32_t site0 = kSitesPerLayer * static_cast<uint32_t>(index + 1);
  Settings s;
  s.heads = config.num_heads;
  s.causal = options.causal;
  s.hidden_dropout = options.training ? config.hidden_dropout : 0.0;
  s.attention_dropout = options.training ? config.attention_dropout : 0.0;
  s.attention_probs_key = dropout_key(options, stream, site0 + kAttentionProbs);
  s.attention_out_key = dropout_key(options, stream, site0 + kAttentionOut);
  s.ffn_out_key = dropout_key(options, stream, site0 + kFfnOut);
  return s;
}

void RobertaLayer::forward(const Tensor& input, const ops::Sequences& seqs,
                           const Settings& settings, Saved& s, Scratch& scratch) const {
  const int64_t tokens = input.size(0), d = input.size(1), ffn = ffn_in.out_features();
  const DType dtype = input.dtype();
  const Device device = input.device();
  for (Tensor* t : {&s.context, &s.attn_sum, &s.hidden, &s.ffn_sum, &s.out, &scratch.branch})
    ensure_tensor(*t, {tokens, d}, dtype, device);
  ensure_tensor(s.qkv, {tokens, 3 * d}, dtype, device);
  ensure_tensor(s.lse, {settings.heads, tokens}, ops::accumulation_dtype(dtype), device);
  ensure_tensor(s.ffn_pre, {tokens, ffn}, dtype, device);
  ensure_tensor(s.ffn_act, {tokens, ffn}, dtype, device);
  const double p = settings.hidden_dropout;

  // Self-attention block: hidden = LN(input + dropout(W_o · attention(q, k, v))).
  qkv().forward(input, s.qkv);
  ops::attention_forward(third(s.qkv, 0), third(s.qkv, 1), third(s.qkv, 2), seqs, settings.heads,
                         settings.causal, settings.attention_dropout, settings.attention_probs_key,
                         s.context, s.lse);
  // The branches' dropout is done by the LayerNorms (ops::BranchDropout).
  const ops::BranchDropout attn_drop{p, settings.attention_out_key, &seqs};
  const ops::BranchDropout ffn_drop{p, settings.ffn_out_key, &seqs};
  output_blocks(input, s, scratch, p > 0 ? &attn_drop : nullptr, p > 0 ? &ffn_drop : nullptr);
}

void RobertaLayer::output_blocks(const Tensor& input, Saved& s, Scratch& scratch,
                                 const ops::BranchDropout* attn_drop,
                                 const ops::BranchDropout* ffn_drop) const {
  attn_out.forward(s.context, scratch.branch);
  attn_norm.forward_residual(scratch.branch, input, s.attn_sum, s.hidden, s.attn_norm, attn_drop);
  // Feed-forward block: out = LN(hidden + dropout(W_2 · GELU(W_1 · hidden))), the GELU fused
  // into the first GEMM's epilogue.
  ffn_in.forward(s.hidden, s.ffn_act, ops::Activation::gelu, &s.ffn_pre);
  ffn_out.forward(s.ffn_act, scratch.branch);
  ffn_norm.forward_residual(scratch.branch, s.hidden, s.ffn_sum, s.out, s.ffn_norm, ffn_drop);
}

Linear RobertaLayer::kv() const {
  const char* what = "RobertaLayer::kv (K, V packed back to back)";
  const int64_t d = key.in_features();
  Linear fused;
  fused.weight.value = Tensor::join({key.weight.value, value.weight.value}, what).reshape({2 * d, d});
  fused.bias.value = Tensor::join({key.bias.value, value.bias.value}, what);
  return fused;
}

// The new rows' K | V join the cache before the attention reads it: a position sees itself.
void RobertaLayer::forward_cached(const Tensor& input, const Tensor& slots, const Tensor& ranges,
                                  int64_t heads, Tensor& cache, Saved& s, Scratch& scratch) const {
  const int64_t rows = input.size(0), d = input.size(1), ffn = ffn_in.out_features();
  const DType dtype = input.dtype();
  const Device device = input.device();
  for (Tensor* t : {&s.context, &s.attn_sum, &s.hidden, &s.ffn_sum, &s.out, &scratch.branch, &scratch.query})
    ensure_tensor(*t, {rows, d}, dtype, device);
  ensure_tensor(scratch.key_value, {rows, 2 * d}, dtype, device);
  ensure_tensor(s.ffn_pre, {rows, ffn}, dtype, device);
  ensure_tensor(s.ffn_act, {rows, ffn}, dtype, device);
  query.forward(input, scratch.query);
  kv().forward(input, scratch.key_value);
  ops::scatter_rows(scratch.key_value, slots, cache);
  ops::attention_over_ranges(scratch.query, cache.slice(1, 0, d), cache.slice(1, d, 2 * d), ranges, heads,
                             s.context);
  output_blocks(input, s, scratch, nullptr, nullptr);
}

// Each residual block y = LN(x + dropout(f(x))) sends d(sum) = LN'ᵀ dy both straight to x and
// through the branch; the branch's input gradient is accumulated on top, so nothing is copied.
void RobertaLayer::backward(const Tensor& input, const ops::Sequences& seqs,
                            const Settings& settings, Saved& s, const Tensor& grad_out,
                            Tensor& grad_input, Scratch& scratch) {
  const int64_t tokens = input.size(0), d = input.size(1);
  const DType dtype = input.dtype();
  const Device device = input.device();
  check_shape(grad_out, {tokens, d}, "RobertaLayer::backward grad_out");
  check_shape(grad_input, {tokens, d}, "RobertaLayer::backward grad_input");
  for (Tensor* t : {&scratch.grad_hidden, &scratch.grad_branch, &scratch.grad_context})
    ensure_tensor(*t, {tokens, d}, dtype, device);
  ensure_tensor(scratch.grad_qkv, {tokens, 3 * d}, dtype, device);
  ensure_tensor(scratch.grad_ffn, {tokens, ffn_in.out_features()}, dtype, device);
  const double p = settings.hidden_dropout;

  // With dropout the LayerNorm's backward pass also writes the dropped branch's gradient, and in
  // every case it sums the gradient of the branch's bias (the output projection's).
  const ops::BranchDropout attn_drop{p, settings.attention_out_key, &seqs};
  const ops::BranchDropout ffn_drop{p, settings.ffn_out_key, &seqs};

  // Feed-forward block: grad_hidden = d(ffn_sum), then += the branch's gradient.
  ffn_norm.backward(s.ffn_sum, grad_out, s.ffn_norm, scratch.grad_hidden, p > 0 ? &ffn_drop : nullptr,
                    p > 0 ? &scratch.grad_branch : nullptr, &ffn_out.bias.grad);
  const Tensor* grad_branch = p > 0 ? &scratch.grad_branch : &scratch.grad_hidden;
  // The first FFN layer's bias gradient is summed where GELU' is applied.
  ffn_out.backward(s.ffn_act, *grad_branch, &scratch.grad_ffn, false,
                   /*input_gelu_pre=*/&s.ffn_pre, /*bias_grad_done=*/true,
                   /*input_gelu_dbias=*/&ffn_in.bias.grad);
  ffn_in.backward(s.hidden, scratch.grad_ffn, &scratch.grad_hidden, /*accumulate_dx=*/true,
                  nullptr, /*bias_grad_done=*/true);

  // Self-attention block: grad_input = d(attn_sum), then += the Q, K, V projection's gradient.
  attn_norm.backward(s.attn_sum, scratch.grad_hidden, s.attn_norm, grad_input,
                     p > 0 ? &attn_drop : nullptr, p > 0 ? &scratch.grad_branch : nullptr,
                     &attn_out.bias.grad);
  grad_branch = p > 0 ? &scratch.grad_branch : &grad_input;
  attn_out.backward(s.context, *grad_branch, &scratch.grad_context, false, nullptr,
                    /*bias_grad_done=*/true);
  Tensor dq = third(scratch.grad_qkv, 0), dk = third(scratch.grad_qkv, 1), dv = third(scratch.grad_qkv, 2);
  ops::attention_backward(scratch.grad_context, third(s.qkv, 0), third(s.qkv, 1), third(s.qkv, 2),
                          s.context, s.lse, seqs, settings.heads, settings.causal,
                          settings.attention_dropout, settings.attention_probs_key, dq, dk, dv);
  qkv().backward(input, scratch.grad_qkv, &grad_input, /*accumulate_dx=*/true);
  // The key bias adds q_i·b_k to every score of query i, which the softmax takes away again: its
  // gradient is exactly 0. The column sum above gives the rounding of terms that cancel, whose
  // bits depend on the summation order and so on the layout; under L2 decay with NAdam, that
  // noise moves a bias that starts at 0 by ~lr·wd/eps a step. Write the 0 it is (the gradient
  // was 0 before this call, and every call leaves it 0).
  key.bias.grad.zero_();
}

// ---- construction -----------------------------------------------------------------------------

RobertaEncoder::RobertaEncoder(const RobertaConfig& config, DType dtype, Device device,
                               uint32_t dropout_stream)
    : config_(config), dtype_(dtype), device_(device), dropout_stream_(dropout_stream) {
  QARAC_CHECK(config.hidden_size % config.num_heads == 0, "hidden_size ", config.hidden_size,
              " is not divisible by num_heads ", config.num_heads);
  QARAC_CHECK(dropout_stream < kStreams, "RobertaEncoder: dropout stream ", dropout_stream,
              " is not below ", kStreams);
  const int64_t d = config.hidden_size;
  embeddings_.word.allocate("embeddings.word_embeddings.weight", {config.vocab_size, d}, dtype, device);
  embeddings_.position.allocate("embeddings.position_embeddings.weight",
                                {config.max_position_embeddings, d}, dtype, device);
  embeddings_.token_type.allocate("embeddings.token_type_embeddings.weight", {config.type_vocab_size, d},
                                  dtype, device);
  embeddings_.norm.allocate("embeddings.LayerNorm", d, config.layer_norm_eps, dtype, device);

  layers_.resize(static_cast<size_t>(config.num_layers));
  for (int i = 0; i < static_cast<int>(layers_.size()); ++i)
    layers_[static_cast<size_t>(i)].allocate(layer_prefix(i), config, dtype, device);
  pack_parameters(parameters());
}

ParameterList RobertaEncoder::parameters() {
  ParameterList out{&embeddings_.word, &embeddings_.position, &embeddings_.token_type};
  embeddings_.norm.collect(out);
  for (RobertaLayer& l : layers_) l.collect(out);
  return out;
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
  const int64_t last_position = config_.pad_token_id + batch.extent;
  QARAC_INPUT_CHECK(last_position < config_.max_position_embeddings, "a sequence of ", batch.extent,
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
    const size_t l = static_cast<size_t>(i);
    layers_[l].forward(*input, acts.batch.seqs,
                       RobertaLayer::settings(config_, options, dropout_stream_, i), acts.layers[l],
                       acts.scratch);
    input = &acts.layers[l].out;
  }
  return *input;
}

const Tensor& RobertaEncoder::forward_cached(const TokenBatch& batch, const Tensor& slots,
                                             const Tensor& ranges, std::vector<Tensor>& cache,
                                             Activations& acts) {
  check_batch(batch);
  QARAC_CHECK(cache.size() == layers_.size(), "RobertaEncoder::forward_cached: ", cache.size(),
              " caches for ", layers_.size(), " layers");
  acts.options = ForwardOptions{};
  acts.batch = batch;
  acts.layers.resize(layers_.size());
  embeddings_forward(acts);
  const Tensor* input = &acts.embedded;
  for (size_t l = 0; l < layers_.size(); ++l) {
    layers_[l].forward_cached(*input, slots, ranges, config_.num_heads, cache[l], acts.layers[l], acts.scratch);
    input = &acts.layers[l].out;
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
    ops::dropout_forward(acts.embedded, config_.hidden_dropout,
                         dropout_key(acts.options, dropout_stream_, kEmbeddings), acts.batch.seqs,
                         acts.embedded);
}

// ---- backward ---------------------------------------------------------------------------------

void RobertaEncoder::backward(Activations& acts, const Tensor& grad_output) {
  QARAC_CHECK(acts.layers.size() == layers_.size(), "RobertaEncoder::backward without a forward pass");
  const int64_t tokens = acts.embedded.size(0), d = config_.hidden_size;
  check_shape(grad_output, {tokens, d}, "RobertaEncoder::backward grad_output");
  ensure_tensor(acts.grad_a, {tokens, d}, dtype_, device_);
  ensure_tensor(acts.grad_b, {tokens, d}, dtype_, device_);

  // Ping-pong between two gradient buffers: layer i reads d/d(its output), writes d/d(its input).
  const Tensor* grad = &grad_output;
  Tensor* next = &acts.grad_a;
  for (int i = static_cast<int>(layers_.size()) - 1; i >= 0; --i) {
    const size_t l = static_cast<size_t>(i);
    const Tensor& input = i == 0 ? acts.embedded : acts.layers[l - 1].out;
    layers_[l].backward(input, acts.batch.seqs,
                        RobertaLayer::settings(config_, acts.options, dropout_stream_, i),
                        acts.layers[l], *grad, *next, acts.scratch);
    if (gradients_ready_) {
      ParameterList done;
      layers_[l].collect(done);
      gradients_ready_(done);
    }
    grad = next;
    next = next == &acts.grad_a ? &acts.grad_b : &acts.grad_a;
  }
  embeddings_backward(acts, *grad);
  if (gradients_ready_) {
    ParameterList done{&embeddings_.word, &embeddings_.position, &embeddings_.token_type};
    embeddings_.norm.collect(done);
    gradients_ready_(done);
  }
}

void RobertaEncoder::embeddings_backward(Activations& acts, const Tensor& grad) {
  RobertaEmbeddings::Saved& s = acts.embeddings;
  RobertaLayer::Scratch& scratch = acts.scratch;
  const int64_t tokens = acts.embedded.size(0), d = config_.hidden_size;
  ensure_tensor(scratch.grad_hidden, {tokens, d}, dtype_, device_);
  const Tensor* grad_norm_out = &grad;
  if (dropout_active(acts, config_.hidden_dropout)) {
    ensure_tensor(scratch.grad_branch, {tokens, d}, dtype_, device_);
    ops::dropout_backward(grad, config_.hidden_dropout,
                          dropout_key(acts.options, dropout_stream_, kEmbeddings), acts.batch.seqs,
                          scratch.grad_branch);
    grad_norm_out = &scratch.grad_branch;
  }
  embeddings_.norm.backward(s.sum, *grad_norm_out, s.norm, scratch.grad_hidden);
  ops::embedding_backward(acts.batch.ids, scratch.grad_hidden, embeddings_.word.grad);
  ops::embedding_backward(acts.batch.positions, scratch.grad_hidden, embeddings_.position.grad);
  Tensor type0_grad = embeddings_.token_type.grad.select(0);
  ops::bias_backward(scratch.grad_hidden, type0_grad);
}

// ---- loading ----------------------------------------------------------------------------------

void load_parameters(const ParameterList& params, const std::map<std::string, Tensor>& tensors,
                     const std::string& source, const std::string& strip_prefix) {
  auto stored_name = [&](const Parameter& p) {
    const bool prefixed = p.name.compare(0, strip_prefix.size(), strip_prefix) == 0;
    return prefixed ? p.name.substr(strip_prefix.size()) : p.name;
  };
  for (const Parameter* p : params) {
    const std::string name = stored_name(*p);
    const auto it = tensors.find(name);
    QARAC_INPUT_CHECK(it != tensors.end(), source, ": tensor '", name,
                      "' is missing (expected shape ", shape_str(p->value.shape()), ")");
    QARAC_INPUT_CHECK(it->second.shape() == p->value.shape(), source, ": tensor '", name,
                      "' has shape ", shape_str(it->second.shape()), ", expected ",
                      shape_str(p->value.shape()));
    QARAC_INPUT_CHECK(is_floating(it->second.dtype()), source, ": tensor '", name, "' has dtype ",
                      dtype_name(it->second.dtype()), ", expected a floating type");
  }
  for (Parameter* p : params) p->assign(tensors.at(stored_name(*p)));
}

}  // namespace qarac
