// The RoBERTa encoder as a whole: analytic gradients of every parameter against central finite
// differences in float64 (bidirectional and causal, with dropout, ragged batches), independence
// of the sequences of a packed batch, dropout masks that follow each sequence's id (the same
// outputs and summed gradients however the sequences are split into batches and ordered), position
// ids, and clear refusal of token ids outside the vocabulary and of sequences longer than the
// position table.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <random>

#include "model/decoder.h"
#include "model/init.h"
#include "model/roberta.h"

using namespace qarac;

namespace {

RobertaConfig tiny_config() {
  RobertaConfig c;
  c.vocab_size = 13;
  c.hidden_size = 8;
  c.num_layers = 2;
  c.num_heads = 2;
  c.intermediate_size = 12;
  c.max_position_embeddings = 9;
  c.type_vocab_size = 1;
  c.hidden_dropout = 0.2;
  c.attention_dropout = 0.2;
  return c;
}

// Three sequences of lengths 6, 3 and 1.
std::vector<std::vector<int32_t>> ragged_sequences() {
  std::mt19937 gen(5);
  std::uniform_int_distribution<int32_t> token(3, 12);
  std::vector<std::vector<int32_t>> seqs;
  for (int len : {6, 3, 1}) {
    seqs.emplace_back();
    for (int t = 0; t < len; ++t) seqs.back().push_back(token(gen));
  }
  return seqs;
}

TokenBatch ragged_batch() { return TokenBatch::from_sequences(ragged_sequences(), 1, Device::cpu()); }

// Perturbs LayerNorm parameters away from (1, 0) so that their gradients are not special cases.
void randomise_all(const ParameterList& params, uint64_t seed) {
  init_normal(params, 0.5, seed);
  std::mt19937_64 gen(seed + 1);
  std::normal_distribution<double> normal(0.0, 0.3);
  for (Parameter* p : params) {
    if (p->value.dim() != 1) continue;
    double* v = p->value.data<double>();
    for (int64_t i = 0; i < p->value.numel(); ++i) v[i] += normal(gen);
  }
}

// loss = Σ h ⊙ R.
double loss_of(RobertaEncoder& enc, const TokenBatch& batch, const ForwardOptions& opts, const Tensor& r) {
  RobertaEncoder::Activations acts;
  const Tensor& h = enc.forward(batch, opts, acts);
  const double* hv = h.data<double>();
  const double* rv = r.data<double>();
  double loss = 0;
  for (int64_t i = 0; i < h.numel(); ++i) loss += hv[i] * rv[i];
  return loss;
}

void check_gradients(bool causal, bool training) {
  RobertaEncoder enc(tiny_config(), DType::f64, Device::cpu());
  ParameterList params = enc.parameters();
  randomise_all(params, 11);
  const TokenBatch batch = ragged_batch();
  const int64_t tokens = batch.tokens(), d = 8;

  std::mt19937_64 gen(3);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> r(static_cast<size_t>(tokens * d));
  for (double& x : r) x = normal(gen);
  const Tensor rt = Tensor::from_vector(r, {tokens, d});

  ForwardOptions opts;
  opts.causal = causal;
  opts.training = training;
  opts.seed = 99;
  opts.step = 4;
  RobertaEncoder::Activations acts;
  enc.forward(batch, opts, acts);
  zero_grads(params);
  enc.backward(acts, rt);

  // Central differences, h = 1e-5: truncation O(h²) ≈ 1e-10 relative to the third derivative,
  // rounding ≈ ε·|loss|/h ≈ 2e-11·|loss|. Analytic and numeric must agree to 1e-6 relative to the
  // largest numeric entry, with an absolute floor of 1e-8·|loss| (500× the rounding) for
  // gradients that are zero: the key bias adds q·b_k to every score of a query row, which the
  // softmax cancels, so d loss / d b_k = 0 exactly.
  const double h = 1e-5;
  const double floor = 1e-8 * std::max(1.0, std::fabs(loss_of(enc, batch, opts, rt)));
  std::uniform_int_distribution<int64_t> pick;
  for (Parameter* p : params) {
    double* v = p->value.data<double>();
    const double* g = p->grad.data<double>();
    const int64_t n = p->value.numel();
    const int samples = static_cast<int>(std::min<int64_t>(n, 6));
    double worst = 0, largest = 0;
    for (int s = 0; s < samples; ++s) {
      const int64_t i = n <= 6 ? s : pick(gen) % n;
      const double saved = v[i];
      v[i] = saved + h;
      const double up = loss_of(enc, batch, opts, rt);
      v[i] = saved - h;
      const double down = loss_of(enc, batch, opts, rt);
      v[i] = saved;
      const double numeric = (up - down) / (2 * h);
      worst = std::max(worst, std::fabs(numeric - g[i]));
      largest = std::max(largest, std::fabs(numeric));
    }
    // Written as the exact 0 it is, not as the rounding of a column sum that cancels.
    if (p->name.find("attention.self.key.bias") != std::string::npos) {
      for (int64_t i = 0; i < n; ++i) EXPECT_EQ(g[i], 0.0) << p->name << "[" << i << "]";
    }
    EXPECT_LE(worst, 1e-6 * largest + floor) << p->name << (causal ? " causal" : " bidirectional")
                                   << (training ? " with dropout" : "");
  }
}

}  // namespace

TEST(RobertaEncoder, GradientsMatchFiniteDifferencesBidirectional) { check_gradients(false, false); }
TEST(RobertaEncoder, GradientsMatchFiniteDifferencesCausal) { check_gradients(true, false); }
TEST(RobertaEncoder, GradientsMatchFiniteDifferencesWithDropout) { check_gradients(false, true); }

TEST(RobertaEncoder, ParametersCarryHuggingFaceNames) {
  RobertaEncoder enc(tiny_config(), DType::f32, Device::cpu());
  const ParameterList params = enc.parameters();
  EXPECT_EQ(params.size(), 5u + 16u * 2);
  EXPECT_EQ(params.front()->name, "embeddings.word_embeddings.weight");
  EXPECT_EQ(params.back()->name, "encoder.layer.1.output.LayerNorm.bias");
}

// pack_parameters moves parameters into one buffer per role and keeps their values, master
// weights (apart from a bf16 compute copy) and gradients; a packed list is one span, and spans
// break wherever the list leaves the packing's order.
TEST(Parameters, PackingKeepsTheValuesAndMakesOneSpan) {
  for (DType dtype : {DType::f64, DType::bf16}) {
    const Shape shapes[] = {{2, 3}, {5}, {4, 1}};
    std::vector<Parameter> params(3);
    ParameterList list;
    std::vector<std::vector<double>> masters, values, grads;
    for (size_t i = 0; i < params.size(); ++i) {
      Parameter& p = params[i];
      p.allocate("p" + std::to_string(i), shapes[i], dtype, Device::cpu());
      std::vector<double> w(static_cast<size_t>(p.value.numel())), g(w.size());
      for (size_t k = 0; k < w.size(); ++k) {
        w[k] = std::sin(1.0 + 7.0 * i + k);
        g[k] = std::cos(2.0 + 5.0 * i + k);
      }
      p.assign(Tensor::from_vector(w, shapes[i]));
      p.grad.copy_(Tensor::from_vector(g, shapes[i]).to(p.grad.dtype()));
      list.push_back(&p);
      masters.push_back(p.master.to(DType::f64).to_vector<double>());
      values.push_back(p.value.to(DType::f64).to_vector<double>());
      grads.push_back(p.grad.to(DType::f64).to_vector<double>());
    }
    EXPECT_EQ(parameter_spans(list).size(), 3u);
    pack_parameters(list);
    for (size_t i = 0; i < params.size(); ++i) {
      EXPECT_EQ(params[i].value.shape(), shapes[i]);
      EXPECT_EQ(params[i].master.to(DType::f64).to_vector<double>(), masters[i]);
      EXPECT_EQ(params[i].value.to(DType::f64).to_vector<double>(), values[i]);
      EXPECT_EQ(params[i].grad.to(DType::f64).to_vector<double>(), grads[i]);
    }
    const std::vector<ParameterSpan> spans = parameter_spans(list);
    ASSERT_EQ(spans.size(), 1u);
    EXPECT_EQ(spans[0].master.shape(), Shape{15});
    EXPECT_EQ(spans[0].grad.raw(), params[0].grad.raw());
    EXPECT_EQ(spans[0].value.raw() == spans[0].master.raw(), dtype == DType::f64);
    EXPECT_EQ(spans[0].params, list);
    EXPECT_EQ(parameter_spans({&params[0], &params[2]}).size(), 2u);
    EXPECT_EQ(parameter_spans({&params[1], &params[0]}).size(), 2u);

    zero_grads(list);
    for (const Parameter& p : params) EXPECT_EQ(p.grad.to(DType::f64).to_vector<double>(), std::vector<double>(static_cast<size_t>(p.grad.numel()), 0.0));
  }
}

// Models pack their parameters as they allocate them: an encoder is one span, in which each
// layer's Q, K and V weights, and their biases, lie back to back (one projection); the decoder
// adds its head layers and its LM head (two spans when the padded vocabulary cuts its matrix).
TEST(Parameters, ModelsArePackedIntoAFewSpans) {
  const RobertaConfig config = tiny_config();
  RobertaEncoder enc(config, DType::f32, Device::cpu());
  const ParameterList params = enc.parameters();
  EXPECT_EQ(parameter_spans(params).size(), 1u);
  auto named = [&](const std::string& name) -> Parameter& {
    for (Parameter* p : params)
      if (p->name == name) return *p;
    throw Error("no parameter " + name);
  };
  for (int layer = 0; layer < config.num_layers; ++layer) {
    const std::string self = "encoder.layer." + std::to_string(layer) + ".attention.self.";
    for (const char* kind : {"weight", "bias"}) {
      const Parameter &q = named(self + "query." + kind), &k = named(self + "key." + kind), &v = named(self + "value." + kind);
      EXPECT_EQ(Tensor::join({q.value, k.value, v.value}, "qkv").numel(), 3 * q.value.numel());
      EXPECT_EQ(Tensor::join({q.grad, k.grad, v.grad}, "qkv").raw(), q.grad.raw());
    }
  }
  Decoder untied(config, false, 8, DType::f32, Device::cpu(), 3);
  EXPECT_EQ(parameter_spans(untied.parameters()).size(), 4u);  // base, head layers, LM head in two
  Decoder tied(config, true, 1, DType::f32, Device::cpu(), 3);
  EXPECT_EQ(parameter_spans(tied.parameters()).size(), 3u);
}

// Activations keep their buffers as ragged batches change the token count: a smaller shape and a
// larger one within the 1/16 of room are views of the same buffer; beyond it, or when a view of
// the buffer is held elsewhere, or for another dtype, a new buffer is allocated.
TEST(EnsureTensor, ReusesItsBufferAsTheTokenCountChanges) {
  Tensor t;
  ensure_tensor(t, {32, 4}, DType::f32, Device::cpu());
  const void* first = t.raw();
  EXPECT_EQ(t.capacity(), 128 + 8);
  ensure_tensor(t, {20, 4}, DType::f32, Device::cpu());
  EXPECT_EQ(t.raw(), first);
  EXPECT_EQ(t.shape(), (Shape{20, 4}));
  EXPECT_TRUE(t.is_contiguous());
  ensure_tensor(t, {34, 4}, DType::f32, Device::cpu());
  EXPECT_EQ(t.raw(), first);
  ensure_tensor(t, {35, 4}, DType::f32, Device::cpu());
  EXPECT_NE(t.raw(), first);
  const void* second = t.raw();
  const Tensor held = t.slice(0, 0, 2);
  ensure_tensor(t, {3, 4}, DType::f32, Device::cpu());
  EXPECT_NE(t.raw(), second);
  EXPECT_EQ(held.raw(), second);
  const void* third = t.raw();
  ensure_tensor(t, {3, 4}, DType::f64, Device::cpu());
  EXPECT_NE(t.raw(), third);
  EXPECT_EQ(t.dtype(), DType::f64);
}

TEST(TokenBatch, PackingKeepsRealTokensWithRobertaPositions) {
  // A hole in the mask (a pad in the middle) is dropped like trailing padding: RoBERTa's position
  // ids count real tokens only.
  const Tensor ids = Tensor::from_vector(std::vector<int32_t>{5, 6, 7, 1, 8, 1, 9, 1}, {2, 4});
  const Tensor mask = Tensor::from_vector(std::vector<int32_t>{1, 1, 1, 0, 1, 0, 1, 0}, {2, 4});
  const TokenBatch b = TokenBatch::from_padded(ids, mask, 1, Device::cpu());
  EXPECT_EQ(b.host_ids, (std::vector<int32_t>{5, 6, 7, 8, 9}));
  EXPECT_EQ(b.positions.to_vector<int32_t>(), (std::vector<int32_t>{2, 3, 4, 2, 3}));
  EXPECT_EQ(b.seqs.host, (std::vector<int32_t>{0, 3, 5}));
  EXPECT_EQ(b.seqs.max_len, 3);
}

// A sequence computed inside a batch gets the same hidden states as computed alone: sequences
// of a padding-free batch do not see each other.
TEST(RobertaEncoder, SequencesOfABatchAreIndependent) {
  for (const bool causal : {false, true}) {
    RobertaEncoder enc(tiny_config(), DType::f64, Device::cpu());
    randomise_all(enc.parameters(), 21);
    const std::vector<std::vector<int32_t>> seqs = ragged_sequences();
    ForwardOptions opts;
    opts.causal = causal;
    RobertaEncoder::Activations acts;
    const std::vector<double> together =
        enc.forward(TokenBatch::from_sequences(seqs, 1, Device::cpu()), opts, acts).to_vector<double>();
    const std::vector<double> alone =
        enc.forward(TokenBatch::from_sequences({seqs[1]}, 1, Device::cpu()), opts, acts).to_vector<double>();
    ASSERT_EQ(alone.size(), 3u * 8);
    for (size_t i = 0; i < alone.size(); ++i)
      EXPECT_NEAR(alone[i], together[6 * 8 + i], 1e-12) << "element " << i << (causal ? " causal" : "");
  }
}

// ---- Dropout masks follow the sequence ids ------------------------------------------------------

namespace {

// Five ragged sequences (lengths 7, 1, 4, 6, 3), their ids (any 64-bit values) and, per sequence,
// the rows R_b of the loss L = Σ_b Σ_t h_bt · R_bt: a sequence's loss terms move with it.
struct IdBatch {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<uint64_t> ids = {0x9E3779B97F4A7C15u, 17, 42, uint64_t{1} << 40, 5};
  std::vector<std::vector<double>> weights;  // [len_b · d] per sequence

  IdBatch() {
    std::mt19937 gen(31);
    std::uniform_int_distribution<int32_t> token(3, 12);
    std::normal_distribution<double> normal(0.0, 1.0);
    for (int len : {7, 1, 4, 6, 3}) {
      tokens.emplace_back();
      for (int t = 0; t < len; ++t) tokens.back().push_back(token(gen));
      weights.emplace_back(static_cast<size_t>(len * 8));
      for (double& w : weights.back()) w = normal(gen);
    }
  }
};

// What one or more forward+backward passes over subsets of an IdBatch give: each sequence's
// last hidden states and the parameter gradients summed over the passes.
struct PassResult {
  std::vector<std::vector<double>> hidden;  // per sequence of the IdBatch
  std::vector<std::vector<double>> grads;   // per parameter
};

// Runs the sequences `groups[g]` (indices into the IdBatch, in that order) as one packed batch
// each, with the given ids (none: TokenBatch's default), accumulating the gradients of L.
PassResult run_groups(RobertaEncoder& enc, const IdBatch& data,
                      const std::vector<std::vector<size_t>>& groups, const ForwardOptions& opts,
                      const std::vector<uint64_t>& ids) {
  const int64_t d = enc.config().hidden_size;
  const ParameterList params = enc.parameters();
  zero_grads(params);
  PassResult out;
  out.hidden.resize(data.tokens.size());
  for (const std::vector<size_t>& group : groups) {
    std::vector<std::vector<int32_t>> seqs;
    std::vector<uint64_t> group_ids;
    std::vector<double> r;
    for (size_t s : group) {
      seqs.push_back(data.tokens[s]);
      if (!ids.empty()) group_ids.push_back(ids[s]);
      r.insert(r.end(), data.weights[s].begin(), data.weights[s].end());
    }
    const TokenBatch batch = TokenBatch::from_sequences(seqs, 1, Device::cpu(), group_ids);
    RobertaEncoder::Activations acts;
    const std::vector<double> h = enc.forward(batch, opts, acts).to_vector<double>();
    for (size_t i = 0; i < group.size(); ++i)
      out.hidden[group[i]].assign(h.begin() + batch.seqs.host[i] * d,
                                  h.begin() + batch.seqs.host[i + 1] * d);
    enc.backward(acts, Tensor::from_vector(r, {batch.tokens(), d}));
  }
  for (const Parameter* p : params) out.grads.push_back(p->grad.to_vector<double>());
  return out;
}

// max_i |a_i - b_i| / max(max_i |b_i|, tiny): the difference relative to the tensor's scale.
double relative_difference(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, scale = 1e-300;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    diff = std::max(diff, std::fabs(a[i] - b[i]));
    scale = std::max(scale, std::fabs(b[i]));
  }
  return diff / scale;
}

RobertaConfig dropout_config() {
  RobertaConfig c = tiny_config();
  c.hidden_dropout = 0.1;
  c.attention_dropout = 0.1;
  return c;
}

}  // namespace

// The property data-parallel training needs: with dropout (0.1 on the hidden states and the
// attention probabilities, training on, f64), a sequence's outputs and its contribution to every
// parameter gradient depend on its id and tokens only, not on the batch it is packed into, its
// place there or its neighbours. One batch of five against the same sequences in three smaller
// batches in another order, gradients summed: equal to rounding (the sums run in another order);
// the largest differences measured are printed.
TEST(RobertaEncoder, DropoutFollowsSequenceIdsAcrossBatchSplits) {
  for (const bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "bidirectional");
    RobertaEncoder enc(dropout_config(), DType::f64, Device::cpu());
    randomise_all(enc.parameters(), 23);
    const IdBatch data;
    ForwardOptions opts;
    opts.causal = causal;
    opts.training = true;
    opts.seed = 77;
    opts.step = 12;
    const PassResult whole = run_groups(enc, data, {{0, 1, 2, 3, 4}}, opts, data.ids);
    const PassResult split = run_groups(enc, data, {{3, 0}, {4}, {2, 1}}, opts, data.ids);
    double worst_hidden = 0, worst_grad = 0;
    for (size_t s = 0; s < data.tokens.size(); ++s) {
      const double diff = relative_difference(split.hidden[s], whole.hidden[s]);
      EXPECT_LE(diff, 1e-13) << "hidden states of sequence " << s;
      worst_hidden = std::max(worst_hidden, diff);
    }
    const ParameterList params = enc.parameters();
    for (size_t k = 0; k < params.size(); ++k) {
      if (params[k]->name.find("attention.self.key.bias") != std::string::npos) {
        // Exactly 0 on both sides (the softmax cancels it; the backward pass writes the 0).
        for (size_t i = 0; i < whole.grads[k].size(); ++i)
          EXPECT_NEAR(split.grads[k][i], whole.grads[k][i], 1e-14) << params[k]->name;
        continue;
      }
      const double diff = relative_difference(split.grads[k], whole.grads[k]);
      EXPECT_LE(diff, 1e-13) << params[k]->name;
      worst_grad = std::max(worst_grad, diff);
    }
    std::cout << "  " << (causal ? "causal" : "bidirectional")
              << ": split vs whole batch, largest relative difference: hidden states "
              << worst_hidden << ", parameter gradients " << worst_grad << "\n";

    // Dropout is on and matters: the same batch with training off differs.
    ForwardOptions eval = opts;
    eval.training = false;
    const PassResult no_dropout = run_groups(enc, data, {{0, 1, 2, 3, 4}}, eval, data.ids);
    EXPECT_GT(relative_difference(no_dropout.hidden[0], whole.hidden[0]), 1e-3);
  }
}

// Another id for one sequence redraws that sequence's masks and no other's: its hidden states
// change, every other sequence's stay exactly as they were.
TEST(RobertaEncoder, ChangingASequenceIdChangesOnlyThatSequence) {
  RobertaEncoder enc(dropout_config(), DType::f64, Device::cpu());
  randomise_all(enc.parameters(), 24);
  const IdBatch data;
  ForwardOptions opts;
  opts.training = true;
  opts.seed = 78;
  opts.step = 3;
  const std::vector<std::vector<size_t>> all = {{0, 1, 2, 3, 4}};
  const PassResult base = run_groups(enc, data, all, opts, data.ids);
  std::vector<uint64_t> renamed = data.ids;
  renamed[2] += 1;
  const PassResult other = run_groups(enc, data, all, opts, renamed);
  for (size_t s = 0; s < data.tokens.size(); ++s) {
    if (s == 2)
      EXPECT_GT(relative_difference(other.hidden[s], base.hidden[s]), 1e-3) << "sequence 2";
    else
      EXPECT_EQ(other.hidden[s], base.hidden[s]) << "sequence " << s;
  }
}

// Without ids a batch's sequence b has id b: the same masks as ids {0, 1, ...}. Without dropout
// (training off: evaluation) ids take no part at all, so results are those of any ids.
TEST(RobertaEncoder, WithoutIdsSequenceBHasIdB) {
  RobertaEncoder enc(dropout_config(), DType::f64, Device::cpu());
  randomise_all(enc.parameters(), 25);
  const IdBatch data;
  ForwardOptions opts;
  opts.training = true;
  opts.seed = 79;
  const std::vector<std::vector<size_t>> all = {{0, 1, 2, 3, 4}};
  const PassResult by_default = run_groups(enc, data, all, opts, {});
  const PassResult by_index = run_groups(enc, data, all, opts, {0, 1, 2, 3, 4});
  EXPECT_EQ(by_default.hidden, by_index.hidden);
  EXPECT_EQ(by_default.grads, by_index.grads);

  opts.training = false;
  const PassResult eval_default = run_groups(enc, data, all, opts, {});
  const PassResult eval_ids = run_groups(enc, data, all, opts, data.ids);
  EXPECT_EQ(eval_default.hidden, eval_ids.hidden);
  EXPECT_EQ(eval_default.grads, eval_ids.grads);

  EXPECT_EQ(TokenBatch::from_sequences(data.tokens, 1, Device::cpu()).seqs.host_ids,
            (std::vector<uint64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(TokenBatch::from_sequences(data.tokens, 1, Device::cpu(), data.ids).seqs.host_ids,
            data.ids);
  try {
    TokenBatch::from_packed({5, 6, 7}, {0, 1, 3}, 1, Device::cpu(), {9});
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("1 sequence ids for 2 sequences"), std::string::npos)
        << e.what();
  }
}

TEST(RobertaEncoder, RefusesSequencesLongerThanThePositionTable) {
  RobertaEncoder enc(tiny_config(), DType::f32, Device::cpu());  // 9 positions: at most 7 tokens
  RobertaEncoder::Activations acts;
  try {
    enc.forward(TokenBatch::from_sequences({std::vector<int32_t>(8, 5)}, 1, Device::cpu()), ForwardOptions{}, acts);
    FAIL() << "no exception";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("max_position_embeddings 9"), std::string::npos) << e.what();
  }
}

TEST(RobertaEncoder, RefusesIdsOutsideTheVocabulary) {
  RobertaEncoder enc(tiny_config(), DType::f32, Device::cpu());  // 13 tokens
  RobertaEncoder::Activations acts;
  try {
    enc.forward(TokenBatch::from_sequences({{3, 4}, {5, 13}}, 1, Device::cpu()), ForwardOptions{}, acts);
    FAIL() << "no exception";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("token 3 of the batch has id 13"), std::string::npos) << e.what();
  }
}
