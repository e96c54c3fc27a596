// The RoBERTa encoder as a whole: analytic gradients of every parameter against central finite
// differences in float64 (bidirectional and causal, with dropout, ragged batches), independence
// of the sequences of a packed batch, position ids, and clear refusal of token ids outside the
// vocabulary and of sequences longer than the position table.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

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
    if (p->name.find("attention.self.key.bias") != std::string::npos) {
      for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(g[i], 0.0, 1e-12) << p->name << "[" << i << "]";
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
