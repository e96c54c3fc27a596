// The QARAC decoder's forward and backward passes over packed batches; the data flow and the
// slot-0 bookkeeping are described in decoder.h.
#include "model/decoder.h"

#include <string>
#include <vector>

namespace qarac {

Decoder::Decoder(const RobertaConfig& config, bool tie_lm_head, int64_t vocab_multiple, DType dtype,
                 Device device, uint32_t dropout_stream)
    : config_(config),
      base_(config, dtype, device, dropout_stream),
      lm_head_(tie_lm_head ? LMHead(config, base_.word_embeddings(), dtype, device)
                           : LMHead(config, vocab_multiple, dtype, device)) {
  ParameterList layers;
  for (int i = 0; i < 2; ++i) {
    head_layers_[i].allocate("decoder_layers." + std::to_string(i) + ".", config, dtype, device);
    head_layers_[i].collect(layers);
  }
  pack_parameters(layers);
}

ParameterList Decoder::parameters() {
  ParameterList out = base_.parameters();
  for (Parameter* p : head_parameters()) out.push_back(p);
  return out;
}

ParameterList Decoder::head_parameters() {
  ParameterList out;
  for (RobertaLayer& l : head_layers_) l.collect(out);
  for (Parameter* p : lm_head_.parameters()) out.push_back(p);
  return out;
}

RobertaLayer::Settings Decoder::head_settings(const ForwardOptions& options, int i) const {
  return RobertaLayer::settings(config_, options, base_.dropout_stream(),
                                static_cast<int>(config_.num_layers) + i);
}

Tensor& Decoder::forward(const Tensor& v, const TokenBatch& y_in, const ForwardOptions& options,
                         Activations& acts) {
  return lm_head_.forward(hidden(v, y_in, options, acts), acts.lm);
}

Tensor& Decoder::forward_last(const Tensor& v, const TokenBatch& y_in, const ForwardOptions& options,
                              Activations& acts) {
  const Tensor& h = hidden(v, y_in, options, acts);
  const int64_t batch = y_in.count();
  std::vector<int32_t> last(static_cast<size_t>(batch));
  for (size_t b = 0; b < last.size(); ++b) last[b] = y_in.seqs.host[b + 1] - 1;
  acts.last_rows = Tensor::from_vector(last, {batch}, base_.device());
  ensure_tensor(acts.last_hidden, {batch, config_.hidden_size}, base_.dtype(), base_.device());
  ops::gather_rows(h, acts.last_rows, acts.last_hidden);
  return lm_head_.forward(acts.last_hidden, acts.lm);
}

const Tensor& Decoder::hidden(const Tensor& v, const TokenBatch& y_in, const ForwardOptions& options,
                              Activations& acts) {
  const int64_t batch = y_in.count(), tokens = y_in.tokens(), d = config_.hidden_size;
  const DType dtype = base_.dtype();
  const Device device = base_.device();
  check_shape(v, {batch, d}, "Decoder::forward v");
  check_dtype(v, dtype, "Decoder::forward v");
  acts.options = options;
  acts.options.causal = true;

  // Where each row of E comes from (see decoder.h).
  const std::vector<int32_t>& offsets = y_in.seqs.host;
  std::vector<int32_t> slot_rows(static_cast<size_t>(batch)),
      token_rows(static_cast<size_t>(tokens));
  std::vector<int32_t> lengths(static_cast<size_t>(batch));
  for (int32_t b = 0; b < static_cast<int32_t>(batch); ++b) {
    slot_rows[static_cast<size_t>(b)] = offsets[static_cast<size_t>(b)] + b;
    lengths[static_cast<size_t>(b)] =
        offsets[static_cast<size_t>(b) + 1] - offsets[static_cast<size_t>(b)] + 1;
    for (int32_t t = offsets[static_cast<size_t>(b)]; t < offsets[static_cast<size_t>(b) + 1]; ++t)
      token_rows[static_cast<size_t>(t)] = t + b + 1;
  }
  acts.slot_rows = Tensor::from_vector(slot_rows, {batch}, device);
  acts.token_rows = Tensor::from_vector(token_rows, {tokens}, device);
  // The same identities as y_in's: an example's head-layer masks follow the example.
  acts.extended = ops::Sequences::from_lengths(lengths, device, y_in.seqs.host_ids);

  const Tensor& hidden = base_.forward(y_in, acts.options, acts.base);
  ensure_tensor(acts.extended_input, {tokens + batch, d}, dtype, device);
  ops::scatter_rows(v, acts.slot_rows, acts.extended_input);
  ops::scatter_rows(hidden, acts.token_rows, acts.extended_input);

  head_layers_[0].forward(acts.extended_input, acts.extended, head_settings(acts.options, 0),
                          acts.head0, acts.extended_scratch);
  ensure_tensor(acts.head1_input, {tokens, d}, dtype, device);
  ops::gather_rows(acts.head0.out, acts.token_rows, acts.head1_input);
  head_layers_[1].forward(acts.head1_input, y_in.seqs, head_settings(acts.options, 1), acts.head1,
                          acts.base.scratch);
  return acts.head1.out;
}

const Tensor& Decoder::backward(Activations& acts, const Tensor& grad_logits) {
  const int64_t tokens = acts.head1_input.size(0), batch = acts.slot_rows.size(0);
  const int64_t d = config_.hidden_size;
  const DType dtype = base_.dtype();
  const Device device = base_.device();
  for (Tensor* t : {&acts.grad_a, &acts.grad_b}) ensure_tensor(*t, {tokens, d}, dtype, device);
  for (Tensor* t : {&acts.grad_ext_a, &acts.grad_ext_b})
    ensure_tensor(*t, {tokens + batch, d}, dtype, device);
  ensure_tensor(acts.grad_v, {batch, d}, dtype, device);
  const ops::Sequences& seqs = acts.base.batch.seqs;

  // A tied output matrix is the base's word embeddings, which the base's backward pass adds to
  // last: LMHead::parameters() leaves it out, so it is reported with the embeddings.
  auto report = [&](ParameterList done) {
    if (gradients_ready_) gradients_ready_(done);
  };
  lm_head_.backward(acts.head1.out, acts.lm, grad_logits, acts.grad_a);  // d H2
  report(lm_head_.parameters());
  head_layers_[1].backward(acts.head1_input, seqs, head_settings(acts.options, 1), acts.head1,
                           acts.grad_a, acts.grad_b, acts.base.scratch);  // d H1
  ParameterList layer;
  head_layers_[1].collect(layer);
  report(layer);
  acts.grad_ext_a.zero_();                                                // slot rows: 0
  ops::scatter_rows(acts.grad_b, acts.token_rows, acts.grad_ext_a);       // d E'
  head_layers_[0].backward(acts.extended_input, acts.extended, head_settings(acts.options, 0),
                           acts.head0, acts.grad_ext_a, acts.grad_ext_b, acts.extended_scratch);
  layer.clear();
  head_layers_[0].collect(layer);
  report(layer);
  ops::gather_rows(acts.grad_ext_b, acts.slot_rows, acts.grad_v);   // d v
  ops::gather_rows(acts.grad_ext_b, acts.token_rows, acts.grad_a);  // d H
  base_.backward(acts.base, acts.grad_a);
  return acts.grad_v;
}

void Decoder::set_gradients_ready(GradientsReady ready) {
  base_.set_gradients_ready(ready);
  gradients_ready_ = std::move(ready);
}

}  // namespace qarac
