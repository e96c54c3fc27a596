// The QARAC decoder's forward and backward passes over packed batches; the data flow and the
// slot-0 bookkeeping are described in decoder.h.
#include "model/decoder.h"

#include <algorithm>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/memory.h"

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

// ---- greedy decoding with a key/value cache ----------------------------------------------------

Tensor& Decoder::start_decoding(const Tensor& v, const TokenBatch& y_in, const std::vector<int32_t>& capacity,
                                Cache& cache) {
  const int64_t batch = y_in.count(), d = config_.hidden_size;
  check_shape(v, {batch, d}, "Decoder::start_decoding v");
  check_dtype(v, base_.dtype(), "Decoder::start_decoding v");
  QARAC_CHECK(static_cast<int64_t>(capacity.size()) == batch, "Decoder::start_decoding: ", capacity.size(),
              " capacities for ", batch, " sequences");
  // A cache that failed to start holds no sequence: decode() refuses it rather than read rows
  // that were never written.
  cache = Cache{};
  std::vector<int32_t> first(capacity.size());
  int64_t rows = 0;
  for (size_t b = 0; b < capacity.size(); ++b) {
    const int32_t begun = y_in.seqs.host[b + 1] - y_in.seqs.host[b];
    QARAC_CHECK(begun >= 1 && capacity[b] >= begun, "Decoder::start_decoding: sequence ", b, " begins with ",
                begun, " tokens and has room for ", capacity[b]);
    const int64_t last_position = int64_t{config_.pad_token_id} + capacity[b];
    QARAC_INPUT_CHECK(last_position < config_.max_position_embeddings, "decoding a sequence to ", capacity[b],
                      " tokens needs position id ", last_position, " but the model has max_position_embeddings ",
                      config_.max_position_embeddings);
    first[b] = static_cast<int32_t>(rows);
    // Head layer 0 keeps the slot row too; the other layers leave that row unused, so that one
    // layout serves every cache.
    rows += int64_t{capacity[b]} + 1;
    QARAC_CHECK(rows <= INT32_MAX, "Decoder::start_decoding: ", rows, " cache rows exceed i32 row indices");
  }
  auto cache_tensor = [&] { return Tensor::empty({rows, 2 * d}, base_.dtype(), base_.device()); };
  try {
    for (int64_t l = 0; l < config_.num_layers; ++l) cache.base.push_back(cache_tensor());
    cache.head0 = cache_tensor();
    cache.head1 = cache_tensor();
  } catch (const OutOfMemory& e) {
    // The tensor that failed is one layer's: the message names what the whole cache needs.
    cache = Cache{};
    const uint64_t bytes = static_cast<uint64_t>(config_.num_layers + 2) * static_cast<uint64_t>(rows) *
                           static_cast<uint64_t>(2 * d) * dtype_size(base_.dtype());
    throw OutOfMemory(detail::concat(e.what(), " (the key/value cache of ", batch, " sequences of up to ",
                                     *std::max_element(capacity.begin(), capacity.end()), " positions needs ",
                                     size_text(bytes), " in all)"));
  }
  cache.first = std::move(first);
  cache.capacity = capacity;
  cache.length.assign(capacity.size(), 0);
  std::vector<int32_t> all(capacity.size());
  for (size_t b = 0; b < all.size(); ++b) all[b] = static_cast<int32_t>(b);
  try {
    return extend(&v, all, y_in, cache);
  } catch (...) {
    cache = Cache{};
    throw;
  }
}

Tensor& Decoder::decode(const std::vector<int32_t>& which, const std::vector<int32_t>& tokens, Cache& cache) {
  QARAC_CHECK(which.size() == tokens.size(), "Decoder::decode: ", tokens.size(), " tokens for ", which.size(),
              " sequences");
  std::vector<bool> seen(cache.length.size());
  std::vector<std::vector<int32_t>> appended;
  std::vector<int32_t> begun;  // the positions each sequence has run
  for (size_t i = 0; i < which.size(); ++i) {
    const int32_t b = which[i];
    QARAC_CHECK(b >= 0 && static_cast<size_t>(b) < seen.size() && !seen[static_cast<size_t>(b)],
                "Decoder::decode: sequence ", b, " is not one of the ", seen.size(), " begun, or is given twice");
    seen[static_cast<size_t>(b)] = true;
    appended.push_back({tokens[i]});
    begun.push_back(cache.length[static_cast<size_t>(b)]);
  }
  return extend(nullptr, which, TokenBatch::continuing(appended, begun, config_.pad_token_id, base_.device()),
                cache);
}

// The rows of a step: the base and head layer 1 run the new positions t of each sequence b
// (cache row first_b + t, attending to rows [first_b, first_b + t]); head layer 0 runs them
// behind the slot row when starting, as E does in hidden() (cache row first_b + 1 + t,
// attending to [first_b, first_b + t + 1], the slot included).
Tensor& Decoder::extend(const Tensor* v, const std::vector<int32_t>& which, const TokenBatch& batch,
                        Cache& cache) {
  const int64_t d = config_.hidden_size, count = static_cast<int64_t>(which.size());
  const DType dtype = base_.dtype();
  const Device device = base_.device();
  std::vector<int32_t> slots, ranges, head0_slots, head0_ranges, slot_rows, token_rows, last;
  int32_t row = 0;  // the next row of E
  for (size_t i = 0; i < which.size(); ++i) {
    const auto b = static_cast<size_t>(which[i]);
    const int32_t first = cache.first[b], begun = cache.length[b];
    const int32_t added = batch.seqs.host[i + 1] - batch.seqs.host[i];
    QARAC_CHECK(added >= 1 && begun + added <= cache.capacity[b], "Decoder: decoded sequence ", b, " of ",
                begun, " positions cannot take ", added, " more within its capacity of ", cache.capacity[b]);
    if (v) {
      slot_rows.push_back(row++);
      head0_slots.push_back(first);
      head0_ranges.insert(head0_ranges.end(), {first, first + 1});
    }
    for (int32_t t = begun; t < begun + added; ++t) {
      slots.push_back(first + t);
      ranges.insert(ranges.end(), {first, first + t + 1});
      token_rows.push_back(row++);
      head0_slots.push_back(first + 1 + t);
      head0_ranges.insert(head0_ranges.end(), {first, first + t + 2});
    }
    last.push_back(batch.seqs.host[i + 1] - 1);
  }
  const int64_t tokens = batch.tokens();
  auto upload = [&](const std::vector<int32_t>& x, const Shape& shape) {
    return Tensor::from_vector(x, shape, device);
  };
  const Tensor slots_t = upload(slots, {tokens}), ranges_t = upload(ranges, {tokens, 2});
  const Tensor token_rows_t = upload(token_rows, {tokens});

  const Tensor& hidden = base_.forward_cached(batch, slots_t, ranges_t, cache.base, cache.base_acts);
  ensure_tensor(cache.extended_input, {row, d}, dtype, device);
  if (v) ops::scatter_rows(*v, upload(slot_rows, {count}), cache.extended_input);
  ops::scatter_rows(hidden, token_rows_t, cache.extended_input);
  head_layers_[0].forward_cached(cache.extended_input, upload(head0_slots, {row}), upload(head0_ranges, {row, 2}),
                                 config_.num_heads, cache.head0, cache.head0_acts, cache.scratch);
  ensure_tensor(cache.head1_input, {tokens, d}, dtype, device);
  ops::gather_rows(cache.head0_acts.out, token_rows_t, cache.head1_input);
  head_layers_[1].forward_cached(cache.head1_input, slots_t, ranges_t, config_.num_heads, cache.head1,
                                 cache.head1_acts, cache.scratch);
  ensure_tensor(cache.last_hidden, {count, d}, dtype, device);
  ops::gather_rows(cache.head1_acts.out, upload(last, {count}), cache.last_hidden);
  for (size_t i = 0; i < which.size(); ++i)
    cache.length[static_cast<size_t>(which[i])] += batch.seqs.host[i + 1] - batch.seqs.host[i];
  return lm_head_.forward(cache.last_hidden, cache.lm);
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
