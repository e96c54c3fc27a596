// Held-out evaluation and the forgetting monitor: BERT masking rates and determinism, the MLM
// loss's gradient against finite differences, and the evaluator's metrics on cases whose answer
// is known (identical encoders retrieve every answer; identical statements are entailments; a
// candidate equal to the question outranks the answer, a collapsed model ranks every answer last).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <utility>

#include "core/memory.h"
#include "data/shards.h"
#include "model/decoder.h"
#include "model/init.h"
#include "model/masked_lm.h"
#include "support/test_support.h"
#include "train/evaluation.h"
#include "train/objectives.h"

using namespace qarac;
namespace fs = std::filesystem;
using test_support::expect_input_error;

namespace {

RobertaConfig tiny_config() {
  RobertaConfig c;
  c.vocab_size = 23;
  c.hidden_size = 8;
  c.num_layers = 1;
  c.num_heads = 2;
  c.intermediate_size = 12;
  c.max_position_embeddings = 20;
  c.hidden_dropout = 0;
  c.attention_dropout = 0;
  return c;
}

std::vector<std::vector<int32_t>> random_sequences(int count, std::mt19937& gen, bool specials) {
  std::uniform_int_distribution<int32_t> token(5, 22);
  std::uniform_int_distribution<int> length(2, 9);
  std::vector<std::vector<int32_t>> out;
  for (int i = 0; i < count; ++i) {
    std::vector<int32_t> s;
    if (specials) s.push_back(0);
    for (int t = length(gen); t > 0; --t) s.push_back(token(gen));
    if (specials) s.push_back(2);
    out.push_back(s);
  }
  return out;
}

using Sequences = std::vector<std::vector<int32_t>>;

}  // namespace

TEST(MlmMasking, RatesSpecialsAndDeterminism) {
  std::mt19937 gen(1);
  const auto seqs = random_sequences(2000, gen, /*specials=*/true);
  MlmMasking masking;
  const MaskedTokens a = mask_tokens(seqs, 23, masking, 7);
  const MaskedTokens b = mask_tokens(seqs, 23, masking, 7);
  EXPECT_EQ(a.inputs, b.inputs);
  EXPECT_EQ(a.targets, b.targets);
  EXPECT_NE(mask_tokens(seqs, 23, masking, 8).targets, a.targets);  // another step, other masks

  int64_t ordinary = 0, to_mask = 0, kept = 0, index = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (size_t t = 0; t < seqs[s].size(); ++t, ++index) {
      const int32_t target = a.targets[static_cast<size_t>(index)];
      if (seqs[s][t] < 5) {
        EXPECT_EQ(target, MaskedLM::kIgnore) << "a special token was chosen";
        continue;
      }
      ++ordinary;
      if (target == MaskedLM::kIgnore) continue;
      EXPECT_EQ(target, seqs[s][t]);
      to_mask += a.inputs[s][t] == masking.mask_id;
      kept += a.inputs[s][t] == seqs[s][t];
    }
  }
  // Binomial counts: 5 standard deviations around 15% chosen, 80% of them masked, ~10% kept
  // (plus the random replacements that happen to draw the same token, 1 in 23).
  const double p = static_cast<double>(a.masked) / static_cast<double>(ordinary);
  EXPECT_NEAR(p, 0.15, 5 * std::sqrt(0.15 * 0.85 / static_cast<double>(ordinary)));
  const double n = static_cast<double>(a.masked);
  EXPECT_NEAR(to_mask / n, 0.8, 5 * std::sqrt(0.16 / n));
  EXPECT_NEAR(kept / n, 0.1 + 0.1 / 23, 5 * std::sqrt(0.1 / n));
}

// BERT's random replacement draws a token uniformly from the whole vocabulary, independently of
// the draw that chose to replace: every other id comes up 0.1 / V of the time. (A replacement
// taken from the same uniform as the 80/10/10 choice lies in [0.8 V, 0.9 V): 2 or 3 ids of 23,
// which the rates above cannot see.)
TEST(MlmMasking, RandomReplacementsCoverTheVocabularyUniformly) {
  MlmMasking masking;
  masking.probability = 1;  // every token chosen: 10% of the draws are replacements
  constexpr int64_t kVocab = 23, kDraws = 46000;
  constexpr int32_t kToken = 7;
  std::vector<int64_t> count(kVocab, 0);
  for (int64_t i = 0; i < kDraws; ++i) {
    const MaskDraw d = mask_draw(masking, kVocab, 3, static_cast<uint64_t>(i) * 7919, 2, kToken);
    ASSERT_TRUE(d.chosen);
    if (d.input != masking.mask_id && d.input != kToken) ++count[static_cast<size_t>(d.input)];
  }
  // Binomial(kDraws, 0.1 / V): 200 expected, 5 standard deviations either way.
  const double p = 0.1 / kVocab, expected = kDraws * p, tolerance = 5 * std::sqrt(kDraws * p * (1 - p));
  for (int32_t id = 0; id < kVocab; ++id) {
    if (id == masking.mask_id || id == kToken) continue;
    EXPECT_NEAR(static_cast<double>(count[static_cast<size_t>(id)]), expected, tolerance) << "id " << id;
  }
}

TEST(MaskedLM, GradientMatchesFiniteDifferences) {
  RobertaEncoder encoder(tiny_config(), DType::f64, Device::cpu());
  MaskedLM mlm(encoder);
  ParameterList params = mlm.parameters();
  init_normal(params, 0.3, 5);
  std::mt19937 gen(2);
  MlmMasking masking;
  masking.probability = 0.4;
  const MaskedTokens batch = mask_tokens(random_sequences(5, gen, true), 23, masking, 0);
  ASSERT_GT(batch.masked, 0);
  zero_grads(params);
  mlm.loss(batch, ForwardOptions{}, /*backward=*/true);
  // Central differences in float64 (h = 1e-5): agreement to 1e-6 relative, 1e-9 absolute.
  for (Parameter* p : params) {
    double* v = p->value.data<double>();
    const double* g = p->grad.data<double>();
    for (int64_t i = 0; i < std::min<int64_t>(p->value.numel(), 4); ++i) {
      const double saved = v[i];
      v[i] = saved + 1e-5;
      const double up = mlm.loss(batch, ForwardOptions{}, false);
      v[i] = saved - 1e-5;
      const double down = mlm.loss(batch, ForwardOptions{}, false);
      v[i] = saved;
      const double numeric = (up - down) / 2e-5;
      EXPECT_NEAR(g[i], numeric, 1e-6 * std::fabs(numeric) + 1e-9) << p->name << "[" << i << "]";
    }
  }
}

namespace {

// Sequence ids like data::example_id's: large, sparse 64-bit values.
std::vector<uint64_t> sparse_ids(size_t count) {
  std::vector<uint64_t> ids;
  for (size_t i = 0; i < count; ++i) ids.push_back((uint64_t{2} << 62) | (uint64_t{3} << 40) | (977 * i + 12345));
  return ids;
}

// The sequences (and their ids) at `order`.
std::pair<Sequences, std::vector<uint64_t>> pick(const Sequences& seqs, const std::vector<uint64_t>& ids,
                                                 const std::vector<size_t>& order) {
  std::pair<Sequences, std::vector<uint64_t>> out;
  for (size_t i : order) {
    out.first.push_back(seqs[i]);
    out.second.push_back(ids[i]);
  }
  return out;
}

// The targets of each sequence of a masked batch.
std::vector<std::vector<int32_t>> targets_by_sequence(const MaskedTokens& m) {
  std::vector<std::vector<int32_t>> out;
  size_t at = 0;
  for (const auto& seq : m.inputs) {
    out.emplace_back(m.targets.begin() + static_cast<std::ptrdiff_t>(at),
                     m.targets.begin() + static_cast<std::ptrdiff_t>(at + seq.size()));
    at += seq.size();
  }
  return out;
}

}  // namespace

// Whether and how a token is masked depends on (id, position in its sequence, token) only: a
// batch split into parts and reordered masks every sequence as the whole batch does, and
// count_masked counts what mask_tokens chooses. Another id or step draws other masks.
TEST(MlmMasking, KeyedBySequenceIdAndPositionNotByPlaceInTheBatch) {
  std::mt19937 gen(3);
  const Sequences seqs = random_sequences(60, gen, /*specials=*/true);
  const std::vector<uint64_t> ids = sparse_ids(seqs.size());
  MlmMasking masking;
  masking.seed = 11;
  const MaskedTokens whole = mask_tokens(seqs, ids, 23, masking, 5);
  ASSERT_GT(whole.masked, 20);
  EXPECT_EQ(whole.ids, ids);
  const auto whole_targets = targets_by_sequence(whole);

  // Two parts, each in reverse order of the batch, the second starting with the longest.
  std::vector<size_t> first, second;
  for (size_t i = seqs.size(); i-- > 0;) (i % 3 == 0 ? first : second).push_back(i);
  std::stable_sort(second.begin(), second.end(), [&](size_t a, size_t b) { return seqs[a].size() > seqs[b].size(); });
  int64_t masked = 0;
  for (const auto& order : {first, second}) {
    const auto [part, part_ids] = pick(seqs, ids, order);
    const MaskedTokens m = mask_tokens(part, part_ids, 23, masking, 5);
    const auto part_targets = targets_by_sequence(m);
    for (size_t k = 0; k < order.size(); ++k) {
      EXPECT_EQ(m.inputs[k], whole.inputs[order[k]]) << "sequence " << order[k];
      EXPECT_EQ(part_targets[k], whole_targets[order[k]]) << "sequence " << order[k];
    }
    masked += m.masked;
  }
  EXPECT_EQ(masked, whole.masked);

  // mask_draw of (id, position, token) alone reproduces every token's masking: nothing else of
  // the batch enters.
  for (size_t b = 0; b < seqs.size(); ++b) {
    for (size_t t = 0; t < seqs[b].size(); ++t) {
      const MaskDraw d = mask_draw(masking, 23, 5, ids[b], t, seqs[b][t]);
      EXPECT_EQ(d.chosen, whole_targets[b][t] != MaskedLM::kIgnore);
      EXPECT_EQ(d.input, whole.inputs[b][t]);
    }
  }

  // count_masked over the packed batch counts the same positions.
  std::vector<int32_t> tokens, starts{0};
  for (const auto& seq : seqs) {
    tokens.insert(tokens.end(), seq.begin(), seq.end());
    starts.push_back(static_cast<int32_t>(tokens.size()));
  }
  EXPECT_EQ(count_masked(tokens, starts, ids, masking, 5), whole.masked);

  // The key matters: other ids, another step or seed, other masks.
  std::vector<uint64_t> shifted = ids;
  for (uint64_t& id : shifted) ++id;
  EXPECT_NE(mask_tokens(seqs, shifted, 23, masking, 5).targets, whole.targets);
  EXPECT_NE(mask_tokens(seqs, ids, 23, masking, 6).targets, whole.targets);
  MlmMasking reseeded = masking;
  reseeded.seed = 12;
  EXPECT_NE(mask_tokens(seqs, ids, 23, reseeded, 5).targets, whole.targets);
  // The index-keyed form is the id-keyed one with ids 0..B-1.
  std::vector<uint64_t> index_ids(seqs.size());
  for (size_t i = 0; i < index_ids.size(); ++i) index_ids[i] = i;
  EXPECT_EQ(mask_tokens(seqs, 23, masking, 5).targets, mask_tokens(seqs, index_ids, 23, masking, 5).targets);
}

// The loss over a global batch's masked tokens, run as micro-batches in another order with
// dropout: each micro-batch's summed cross-entropy scaled by 1/M (M: the masked tokens of the
// whole batch) adds up to the whole batch's mean, loss and gradients, to f64 rounding. Fails if
// masks or dropout followed a sequence's place in the batch rather than its id.
TEST(MaskedLM, MicroBatchesAddUpToTheMeanOverTheWholeBatch) {
  RobertaConfig config = tiny_config();
  config.hidden_dropout = config.attention_dropout = 0.1;
  RobertaEncoder encoder(config, DType::f64, Device::cpu());
  MaskedLM mlm(encoder);
  ParameterList params = mlm.parameters();
  init_normal(params, 0.3, 5);
  std::mt19937 gen(4);
  const Sequences seqs = random_sequences(12, gen, true);
  const std::vector<uint64_t> ids = sparse_ids(seqs.size());
  MlmMasking masking;
  masking.probability = 0.4;
  ForwardOptions options;
  options.training = true;
  options.seed = 9;
  options.step = 3;
  const MaskedTokens whole = mask_tokens(seqs, ids, 23, masking, options.step);
  ASSERT_GT(whole.masked, 0);
  const double m = static_cast<double>(whole.masked);

  zero_grads(params);
  const double mean = mlm.run(whole, options, true, 1.0 / m, 0.5 / m).to_vector<double>()[0];
  EXPECT_NEAR(mean, mlm.loss(whole, options, false), 1e-14);
  std::vector<std::vector<double>> expected;
  for (Parameter* p : params) expected.push_back(p->grad.to_vector<double>());

  zero_grads(params);
  double sum = 0;
  for (const std::vector<size_t>& order : {std::vector<size_t>{11, 7, 3, 0}, std::vector<size_t>{10, 9, 8, 6, 5, 4, 2, 1}}) {
    const auto [part, part_ids] = pick(seqs, ids, order);
    sum += mlm.run(mask_tokens(part, part_ids, 23, masking, options.step), options, true, 1.0 / m, 0.5 / m)
               .to_vector<double>()[0];
  }
  EXPECT_NEAR(sum, mean, 1e-13 * std::fabs(mean));
  // Relative to the model's largest gradient (the key bias's is 0: the softmax cancels it).
  double largest = 0;
  for (const std::vector<double>& g : expected)
    for (double v : g) largest = std::max(largest, std::fabs(v));
  ASSERT_GT(largest, 0);
  for (size_t i = 0; i < params.size(); ++i) {
    const std::vector<double> got = params[i]->grad.to_vector<double>();
    double diff = 0;
    for (size_t k = 0; k < got.size(); ++k) diff = std::max(diff, std::fabs(got[k] - expected[i][k]));
    EXPECT_LE(diff, 1e-13 * largest) << params[i]->name;
  }
}

class EvaluatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qarac-eval-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A task file whose examples are produced by `fields_of(i)` (and their candidates by
  // `candidates_of(i)`).
  template <class F>
  void write(data::Task task, int count, F fields_of, int8_t label = 0,
             const std::function<Sequences(int)>& candidates_of = nullptr) {
    data::TaskStreamWriter writer((dir_ / (std::string(data::task_name(task)) + ".h5")).string(), task);
    for (int i = 0; i < count; ++i) writer.append(fields_of(i), label, candidates_of ? candidates_of(i) : Sequences{});
    data::StreamInfo info;
    info.max_length = 16;
    writer.finish(info);
    writer.publish();
  }

  // Models on a random tiny base (base_).
  std::unique_ptr<QaracModels> random_models() {
    config_.base = tiny_config();
    base_ = std::make_unique<RobertaEncoder>(config_.base, DType::f32, Device::cpu());
    init_normal(base_->parameters(), 0.2, 9);
    TensorMap weights;
    for (const Parameter* p : base_->parameters()) weights[p->name] = p->value;
    return std::make_unique<QaracModels>(config_, weights, DType::f32, Device::cpu());
  }

  // A random MLM head over base_ for the forgetting monitor, as a base checkpoint would carry it.
  TensorMap random_lm_head() {
    MaskedLM donor(*base_);
    init_normal(donor.head().parameters(), 0.2, 4);
    TensorMap head;
    for (const Parameter* p : donor.head().parameters())
      head[p->name.substr(std::string("lm_head.").size())] = p->value.clone();
    return head;
  }

  // Models on a random tiny base whose question encoder is made identical to the answer encoder,
  // so that QE(x) = AE(x) for every x.
  std::unique_ptr<QaracModels> identical_encoders() {
    std::unique_ptr<QaracModels> models = random_models();
    const ParameterList qe = models->question_encoder().head_parameters();
    const ParameterList ae = models->answer_encoder().head_parameters();
    EXPECT_EQ(qe.size(), ae.size());
    for (size_t i = 0; i < qe.size(); ++i) qe[i]->assign(ae[i]->value);
    return models;
  }

  EvalResult evaluate(QaracModels& models) {
    EvalOptions options;
    options.data_dir = dir_.string();
    return QaracEvaluator(options).evaluate({models, {}});
  }

  fs::path dir_;
  QaracConfig config_;
  std::unique_ptr<RobertaEncoder> base_;
};

TEST_F(EvaluatorTest, KnownAnswersAndEveryMetric) {
  std::mt19937 gen(3);
  const auto texts = random_sequences(12, gen, true);
  // Distinct texts (they are the retrieval candidates); questions equal to their answers.
  write(data::Task::question_answering, 12, [&](int i) { return std::vector<std::vector<int32_t>>{texts[i], texts[i]}; });
  write(data::Task::consistency, 6, [&](int i) { return std::vector<std::vector<int32_t>>{texts[i], texts[i]}; }, 1);
  write(data::Task::encode_decode, 5, [&](int i) { return std::vector<std::vector<int32_t>>{texts[i]}; });
  write(data::Task::reasoning, 4, [&](int i) {
    return std::vector<std::vector<int32_t>>{texts[i], texts[i + 1], texts[i + 2]};
  });

  // The question encoder identical to the answer encoder: every question retrieves itself.
  const std::unique_ptr<QaracModels> identical = identical_encoders();
  QaracModels& models = *identical;
  const TensorMap lm_head = random_lm_head();

  EvalOptions options;
  options.data_dir = dir_.string();
  options.masking = MlmMasking{};
  QaracEvaluator evaluator(options);
  const EvalResult r = evaluator.evaluate({models, lm_head});
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.retrieval_accuracy"), 1.0);
  EXPECT_EQ(r.metrics.count("qa.selection_accuracy"), 0u);  // a stream without candidates
  EXPECT_DOUBLE_EQ(r.metrics.at("cs.accuracy"), 1.0);  // cos = 1: entailment, the gold label
  EXPECT_DOUBLE_EQ(r.metrics.at("cs.confusion.entailment.entailment"), 6.0);
  EXPECT_DOUBLE_EQ(r.metrics.at("cs.confusion.neutral.neutral"), 0.0);
  for (const char* key : {"ed.loss", "qa.loss", "rs.loss", "cs.loss", "ed.token_accuracy", "rs.token_accuracy",
                          "forgetting.mlm_loss"})
    ASSERT_TRUE(r.metrics.count(key)) << key;
  for (const char* key : {"ed.token_accuracy", "rs.token_accuracy"}) {
    EXPECT_GE(r.metrics.at(key), 0.0);
    EXPECT_LE(r.metrics.at(key), 1.0);
  }
  EXPECT_NEAR(r.metrics.at("qa.loss"), 0.0, 1e-12);  // QE(q) = AE(a): zero distance
  // The answer vectors' scale, from the answer encoder's vectors of the 12 answers.
  {
    SentenceEncoder::Activations acts;
    const std::vector<std::vector<int32_t>> answers(texts.begin(), texts.begin() + 12);
    const std::vector<float> a =
        models.answer_encoder()
            .forward(TokenBatch::from_sequences(answers, config_.base.pad_token_id, Device::cpu()), ForwardOptions{}, acts)
            .to_vector<float>();
    const size_t d = a.size() / 12;
    double norm = 0, spread = 0;  // spread: the mean over the 66 pairs of different answers
    for (size_t i = 0; i < 12; ++i) {
      double n2 = 0;
      for (size_t k = 0; k < d; ++k) n2 += double(a[i * d + k]) * a[i * d + k];
      norm += std::sqrt(n2) / 12;
      for (size_t j = 0; j < 12; ++j) {
        double gap = 0;
        for (size_t k = 0; k < d; ++k) gap += std::pow(double(a[i * d + k]) - a[j * d + k], 2);
        if (j != i) spread += std::sqrt(gap) / (12 * 11);
      }
    }
    EXPECT_NEAR(r.metrics.at("qa.answer_norm"), norm, 1e-12 * norm);
    EXPECT_NEAR(r.metrics.at("qa.answer_spread"), spread, 1e-12 * spread);
    EXPECT_GT(spread, 0.0);
  }
  EXPECT_GT(r.metrics.at("forgetting.mlm_loss"), 0.0);
  // Evaluation leaves the parameters as they were: a second run gives the same figures.
  EXPECT_EQ(evaluator.evaluate({models, lm_head}).metrics, r.metrics);
  // Nothing decoded (eval.decoded 0): no token accuracy, where an accuracy of 0 would be a claim.
  options.max_decoded = 0;
  const EvalResult undecoded = QaracEvaluator(options).evaluate({models, lm_head});
  for (const char* key : {"ed.token_accuracy", "rs.token_accuracy"}) EXPECT_EQ(undecoded.metrics.count(key), 0u) << key;
  EXPECT_EQ(undecoded.metrics.at("ed.loss"), r.metrics.at("ed.loss"));
}

// The evaluation runs a pass at a time (eval.batch, train.micro_tokens): every metric is the
// one batch's, the losses to the rounding of their sums in another order, and its tensors' peak
// is a pass's instead of the whole evaluation's.
TEST_F(EvaluatorTest, PassesGiveTheFiguresOfOneBatchInTheMemoryOfOne) {
  std::mt19937 gen(5);
  const Sequences texts = random_sequences(40, gen, true);
  const auto text = [&](int i) { return texts[static_cast<size_t>(i) % texts.size()]; };
  write(data::Task::question_answering, 30, [&](int i) { return Sequences{text(i), text(i + 7)}; }, 0,
        [&](int i) { return i % 3 ? Sequences{text(i + 1), text(i + 2), text(i + 3)} : Sequences{}; });
  write(data::Task::consistency, 25, [&](int i) { return Sequences{text(i), text(2 * i)}; }, -1);
  write(data::Task::encode_decode, 30, [&](int i) { return Sequences{text(i)}; });
  write(data::Task::reasoning, 20, [&](int i) { return Sequences{text(i), text(i + 1), text(i + 5)}; });
  const std::unique_ptr<QaracModels> random = random_models();
  QaracModels& models = *random;
  const TensorMap lm_head = random_lm_head();

  for (const bool contrastive : {false, true}) {
    SCOPED_TRACE(contrastive ? "contrastive QA" : "MSE QA");
    EvalOptions options;
    options.data_dir = dir_.string();
    options.masking = MlmMasking{};
    options.max_decoded = 12;
    options.qa_objective = {contrastive, 0.5};
    const auto evaluate = [&](PassSize pass, uint64_t* peak) {
      options.pass = pass;
      QaracEvaluator evaluator(options);
      reset_memory_peaks();
      EvalResult r = evaluator.evaluate({models, lm_head});
      *peak = memory_peaks(Device::cpu()).host;
      return r;
    };
    uint64_t whole_peak = 0, peak = 0;
    const EvalResult whole = evaluate({1000, 0}, &whole_peak);
    // The QA loss is the objective's on the whole batch, however the evaluator computes it.
    {
      const data::TaskStreamFile file((dir_ / "question_answering.h5").string());
      data::TaskBatch qa;
      qa.task = data::Task::question_answering;
      for (int64_t i = 0; i < file.examples(); ++i) qa.examples.push_back(i);
      for (int f = 0; f < 2; ++f) {
        const data::Ragged field = file.read_field(f, 0, file.examples());
        data::PackedField& packed = qa.fields.emplace_back();
        packed.tokens = field.tokens;
        packed.starts.assign(field.offsets.begin(), field.offsets.end());
      }
      const double expected = Objectives(models, options.qa_objective).evaluate(qa);
      EXPECT_NEAR(whole.metrics.at("qa.loss"), expected, 1e-6 * std::fabs(expected));
    }
    for (const char* key : {"qa.selection_mrr", "forgetting.mlm_loss", "rs.token_accuracy", "cs.loss"})
      ASSERT_TRUE(whole.metrics.count(key)) << key;
    for (const PassSize pass : {PassSize{3, 0}, PassSize{64, 25}, PassSize{1, 0}}) {
      SCOPED_TRACE(std::to_string(pass.examples) + " examples, " + std::to_string(pass.tokens) + " tokens a pass");
      const EvalResult r = evaluate(pass, &peak);
      ASSERT_EQ(r.metrics.size(), whole.metrics.size());
      for (const auto& [name, value] : whole.metrics)
        EXPECT_NEAR(r.metrics.at(name), value, 1e-6 * std::fabs(value)) << name;
      if (pass.examples == 3) {
        EXPECT_LT(peak, whole_peak / 2);
      }
    }
  }
}

// Four questions with identical encoders (QE = AE): 0 and 3 are answered by their own text, so
// the answer is nearest (distance 0) among their candidates; 1's only candidate is the question's
// own text, which outranks its answer; 2 has no candidate and is not ranked.
class SelectionTest : public EvaluatorTest {
 protected:
  void SetUp() override {
    EvaluatorTest::SetUp();
    std::mt19937 gen(5);
    t_ = random_sequences(10, gen, true);
    ASSERT_EQ(std::set<std::vector<int32_t>>(t_.begin(), t_.end()).size(), t_.size()) << "texts must differ";
    const Sequences questions = {t_[0], t_[3], t_[5], t_[6]}, answers = {t_[0], t_[4], t_[5], t_[6]};
    const std::vector<Sequences> candidates = {{t_[1], t_[2]}, {t_[3]}, {}, {t_[7], t_[8], t_[9]}};
    write(data::Task::question_answering, 4, [&](int i) { return Sequences{questions[i], answers[i]}; }, 0,
          [&](int i) { return candidates[i]; });
  }

  static constexpr double kChance = (1.0 / 3 + 1.0 / 2 + 1.0 / 4) / 3;  // 2, 1 and 3 candidates
  Sequences t_;
};

TEST_F(SelectionTest, RanksEachAnswerAmongItsOwnQuestionsSentences) {
  const std::unique_ptr<QaracModels> models = identical_encoders();
  const EvalResult r = evaluate(*models);
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_questions"), 3.0);
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_accuracy"), 2.0 / 3);
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_mrr"), (1 + 1.0 / 2 + 1) / 3);  // ranks 1, 2, 1
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_chance"), kChance);
}

// Every vector zero: each candidate is as near as the answer, and ties count against it.
TEST_F(SelectionTest, ACollapsedModelRanksEveryAnswerLast) {
  const std::unique_ptr<QaracModels> models = identical_encoders();
  for (SentenceEncoder* encoder : {&models->question_encoder(), &models->answer_encoder()})
    for (Parameter* p : encoder->head_parameters()) p->assign(Tensor::zeros(p->value.shape(), DType::f32));
  const EvalResult r = evaluate(*models);
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_accuracy"), 0.0);
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_mrr"), kChance);  // rank 1 + candidates: the last
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_map"), kChance);  // one answer: its precision 1/rank
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_chance"), kChance);
  // Retrieval too: every answer as near as the right one (before: question 0 won the tie, 0.25).
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.retrieval_accuracy"), 0.0);
}

// MRR and accuracy are per question, as WikiQA's are published: a question's two answers are two
// examples, ranked together with its candidates, and the question counts once. Every vector
// zero: each candidate ties with the answers and ranks before them. Question 0 (two answers, one
// candidate) ranks its first answer 2nd, question 1 (one answer, three candidates) 4th (before:
// per answer, ranks 2, 2 and 4, MRR 0.4167 and chance 0.4167).
TEST_F(EvaluatorTest, SelectionRanksEachQuestionOnce) {
  std::mt19937 gen(8);
  const Sequences t = random_sequences(8, gen, true);
  const Sequences questions = {t[0], t[0], t[1]}, answers = {t[2], t[3], t[4]};
  const std::vector<Sequences> candidates = {{t[5]}, {t[5]}, {t[5], t[6], t[7]}};
  write(data::Task::question_answering, 3, [&](int i) { return Sequences{questions[i], answers[i]}; }, 0,
        [&](int i) { return candidates[i]; });
  const std::unique_ptr<QaracModels> models = identical_encoders();
  for (SentenceEncoder* encoder : {&models->question_encoder(), &models->answer_encoder()})
    for (Parameter* p : encoder->head_parameters()) p->assign(Tensor::zeros(p->value.shape(), DType::f32));
  const EvalResult r = evaluate(*models);
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_questions"), 2.0);
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_accuracy"), 0.0);
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_mrr"), (1.0 / 2 + 1.0 / 4) / 2);
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_chance"), (2.0 / 3 + 1.0 / 4) / 2);  // answers/sentences
}

// The rank is of the question's nearest answer, with vectors set by hand: QE(q) = e0 for every
// question, candidates AE(c) = 0 (a collapsed answer encoder), so a candidate lies at squared
// distance 1 and an answer x·e0 at (1 - x)². Question 0's answers lie at 0 and 4 (its first
// answer ranks 1st, its second would rank 2nd), question 1's answer at 4 among two candidates
// (3rd), question 2's at 0.25 (1st), and question 3 (no candidate) is not ranked (before: the
// answers ranked 1, 2, 3 and 1, MRR 0.7083, accuracy 0.5).
TEST_F(EvaluatorTest, SelectionRanksTheNearestAnswerOfEachQuestion) {
  const std::unique_ptr<QaracModels> models = random_models();
  SentenceEncoder& answer_encoder = models->answer_encoder();
  for (Parameter* p : answer_encoder.head_parameters()) p->assign(Tensor::zeros(p->value.shape(), DType::f32));
  const Sequences questions = {{0, 5, 2}, {0, 5, 2}, {0, 6, 2}, {0, 7, 2}, {0, 8, 2}};
  const std::vector<Sequences> sentences = {{{0, 9, 2}}, {{0, 9, 2}}, {{0, 10, 2}, {0, 11, 2}}, {{0, 12, 2}}, {}};
  const std::vector<float> along = {1, 3, 3, 0.5f, 1};  // answer i is along·e0
  data::Candidates candidates;
  candidates.offsets = {0};
  candidates.sentences.offsets = {0};
  for (const Sequences& of : sentences) {
    for (const std::vector<int32_t>& c : of) {
      candidates.sentences.tokens.insert(candidates.sentences.tokens.end(), c.begin(), c.end());
      candidates.sentences.offsets.push_back(static_cast<int64_t>(candidates.sentences.tokens.size()));
    }
    candidates.offsets.push_back(candidates.sentences.count());
  }
  const size_t d = static_cast<size_t>(config_.base.hidden_size);
  std::vector<float> q(5 * d, 0.0f), a(5 * d, 0.0f);
  for (size_t i = 0; i < 5; ++i) {
    q[i * d] = 1;
    a[i * d] = along[i];
  }
  EvalResult r;
  add_selection_metrics(answer_encoder, candidates, questions, q, a, 5, d, config_.base, Device::cpu(), PassSize{},
                        r);
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_questions"), 3.0);
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_accuracy"), 2.0 / 3);
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_mrr"), (1 + 1.0 / 3 + 1) / 3);
  // The first question's answers rank 1 and 3 (its candidate at distance 1 between them): AP
  // (1/1 + 2/3) / 2; the others' one answer: their reciprocal rank.
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_map"), ((1 + 2.0 / 3) / 2 + 1.0 / 3 + 1) / 3);
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_chance"), (2.0 / 3 + 1.0 / 3 + 1.0 / 2) / 3);
}

// Retrieval counts every right answer of the question: WikiQA's question with two answers is two
// examples, and a held-out file may hold an example twice. QE = AE, so each question lies at
// distance 0 from an answer of its own text (before: 2 and 3 counted wrong, their nearest being
// 1's and 0's answer, and the chance 1/4).
TEST_F(EvaluatorTest, RetrievalCountsEveryRightAnswerOfTheQuestion) {
  std::mt19937 gen(7);
  const auto t = random_sequences(3, gen, true);
  const Sequences questions = {t[0], t[1], t[1], t[0]}, answers = {t[0], t[1], t[2], t[0]};
  write(data::Task::question_answering, 4, [&](int i) { return Sequences{questions[i], answers[i]}; });
  const std::unique_ptr<QaracModels> models = identical_encoders();
  const EvalResult r = evaluate(*models);
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.retrieval_accuracy"), 1.0);
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.retrieval_chance"), 0.5);  // two right answers of four each
}

// Vectors that are not finite give metrics that are not (NaN), which eval.best never takes and
// the trainer stops at (before: every comparison with NaN false, each answer ranked first,
// qa.selection_accuracy 1, and every consistency pair neutral).
TEST_F(SelectionTest, VectorsThatAreNotFiniteRankNothing) {
  write(data::Task::consistency, 3, [&](int i) { return Sequences{t_[i], t_[i + 1]}; }, 0);
  write(data::Task::encode_decode, 3, [&](int i) { return Sequences{t_[i]}; });
  const std::unique_ptr<QaracModels> models = identical_encoders();
  for (SentenceEncoder* encoder : {&models->question_encoder(), &models->answer_encoder()})
    for (Parameter* p : encoder->head_parameters())
      p->assign(Tensor::from_vector(std::vector<float>(static_cast<size_t>(p->value.numel()), std::nanf("")),
                                    p->value.shape()));
  const EvalResult r = evaluate(*models);
  for (const char* key : {"qa.selection_accuracy", "qa.selection_mrr", "qa.retrieval_accuracy", "cs.accuracy",
                          "cs.confusion.neutral.neutral", "ed.token_accuracy", "qa.loss", "cs.loss"})
    EXPECT_TRUE(std::isnan(r.metrics.at(key))) << key << " " << r.metrics.at(key);
  EXPECT_DOUBLE_EQ(r.metrics.at("qa.selection_chance"), kChance);  // the data's, not the model's
}

// A decoder whose finite weights overflow gives NaN scores from finite vectors: its token accuracy
// is NaN, as its loss, for the trainer to stop at (before: the evaluation ended with an error of
// greedy decoding, its figures unrecorded).
TEST_F(EvaluatorTest, ADecoderThatOverflowsHasNoTokenAccuracy) {
  std::mt19937 gen(4);
  const Sequences texts = random_sequences(3, gen, true);
  write(data::Task::encode_decode, 3, [&](int i) { return Sequences{texts[static_cast<size_t>(i)]}; });
  const std::unique_ptr<QaracModels> models = identical_encoders();
  int scaled = 0;
  for (Parameter* p : models->decoder().base().parameters())
    if (p->name.find("embeddings.LayerNorm.weight") != std::string::npos) {
      p->assign(Tensor::from_vector(std::vector<float>(static_cast<size_t>(p->value.numel()), 1e30f), p->value.shape()));
      ++scaled;
    }
  ASSERT_EQ(scaled, 1);
  const EvalResult r = evaluate(*models);
  EXPECT_TRUE(std::isnan(r.metrics.at("ed.token_accuracy"))) << r.metrics.at("ed.token_accuracy");
  EXPECT_FALSE(std::isfinite(r.metrics.at("ed.loss"))) << r.metrics.at("ed.loss");
}

// Token accuracy compares the text the decoder generates, up to its </s>, with the target "y </s>"
// position by position, with decoders whose LM head scores one token highest at every position
// (its output matrix zero, its bias 1 there). One that says </s> first generates the empty text:
// it is right on the target "</s>" of the empty text and wrong on the 4 positions of "7 9 7 </s>"
// (before: 0.4, its decoding went on past </s> and its next </s> met the target's). One that says
// 7 throughout never stops: 7 and 7 of "7 9 7 </s>" are right, "</s>" is not, 2/5 as before.
TEST_F(EvaluatorTest, TokenAccuracyEndsAtTheGeneratedEndOfText) {
  write(data::Task::encode_decode, 2, [&](int i) { return i ? Sequences{{0, 2}} : Sequences{{0, 7, 9, 7, 2}}; });
  const std::unique_ptr<QaracModels> models = random_models();
  LMHead& head = models->decoder().lm_head();
  head.output_weight().assign(Tensor::zeros(head.output_weight().value.shape(), DType::f32));
  for (const auto& [said, accuracy] : std::vector<std::pair<int32_t, double>>{{2, 1.0 / 5}, {7, 2.0 / 5}}) {
    std::vector<float> bias(static_cast<size_t>(head.padded_vocab()), 0.0f);
    bias[static_cast<size_t>(said)] = 1;
    head.output_bias().assign(Tensor::from_vector(bias, {head.padded_vocab()}));
    EXPECT_DOUBLE_EQ(evaluate(*models).metrics.at("ed.token_accuracy"), accuracy) << "decoder saying " << said;
  }
}

// A held-out stream is checked against its checksum, though only its first examples are read
// (before: the part read was checked for nothing but its offsets, and a damaged token of an
// uncompressed stream was evaluated as it read). A sealed stream's damage is refused when it is
// opened; one of a qarac-prep before seals has its checksum alone to tell.
TEST_F(EvaluatorTest, DamagedHeldOutStreamsAreRefused) {
  const std::string path = (dir_ / "encode_decode.h5").string(), sealed = (dir_ / "pristine.h5").string();
  {
    data::WriterOptions uncompressed;
    uncompressed.compression = 0;
    data::TaskStreamWriter writer(sealed, data::Task::encode_decode, uncompressed);
    for (int i = 0; i < 3; ++i) writer.append({{0, 0x5A5A5A5A, 2}}, 0);
    writer.finish({});
    writer.publish();
  }
  EvalOptions options;
  options.data_dir = dir_.string();
  options.max_examples = 1;
  for (const bool seal : {true, false}) {
    SCOPED_TRACE(seal ? "sealed" : "unsealed");
    if (seal)
      fs::copy_file(sealed, path, fs::copy_options::overwrite_existing);
    else
      test_support::copy_without_seal(sealed, path);
    EXPECT_NO_THROW(QaracEvaluator{options});
    const size_t token = test_support::read_text(path).find(std::string(4, '\x5A'));  // the first example's middle token
    ASSERT_NE(token, std::string::npos);
    test_support::flip_byte(path, token);
    expect_input_error([&] { QaracEvaluator{options}; }, {path, "checksum mismatch"});
  }
}

TEST_F(EvaluatorTest, NoHeldOutDataIsAnInputError) {
  EvalOptions options;
  options.data_dir = dir_.string();
  EXPECT_THROW(QaracEvaluator{options}, InputError);
}

// Held-out streams that would give metrics meaning nothing are named: another task's file under a
// task's name, another tokenizer's data than the training's, a sequence longer than the models
// read (found at the first evaluation, before any forward pass).
TEST_F(EvaluatorTest, HeldOutStreamsOfAnotherKindAreNamed) {
  EvalOptions options;
  options.data_dir = dir_.string();
  const std::string reasoning = (dir_ / "reasoning.h5").string();
  {
    data::TaskStreamWriter writer(reasoning, data::Task::consistency);
    writer.append({{0, 5, 2}, {0, 6, 2}}, 1);
    writer.finish({});
    writer.publish();
  }
  expect_input_error([&] { QaracEvaluator{options}; }, {reasoning, "holds task consistency, expected reasoning"});
  fs::remove(reasoning);
  // A link to a stream that is gone (before: skipped, and the task was not evaluated, unsaid).
  fs::create_symlink(dir_ / "moved" / "reasoning.h5", reasoning);
  expect_input_error([&] { QaracEvaluator{options}; }, {reasoning, "cannot open"});
  fs::remove(reasoning);
  // An empty stream (before: "reasoning: empty batch" at the first evaluation, naming no file).
  {
    data::TaskStreamWriter writer(reasoning, data::Task::reasoning);
    writer.finish({});
    writer.publish();
  }
  expect_input_error([&] { QaracEvaluator{options}; }, {reasoning, ": holds no example"});
  fs::remove(reasoning);

  config_.base = tiny_config();
  const int64_t longest = config_.base.max_tokens();
  write(data::Task::encode_decode, 2, [&](int i) { return Sequences{std::vector<int32_t>(longest + i, 5)}; });
  const std::string text = (dir_ / "encode_decode.h5").string();
  options.tokenizer_hash = "fnv1a64:0123456789abcdef";
  options.tokenizer_source = "the training data (train/encode_decode.h5)";
  expect_input_error([&] { QaracEvaluator{options}; },
                     {text, "made with tokenizer , but the training data (train/encode_decode.h5) with "
                            "fnv1a64:0123456789abcdef"});
  options.tokenizer_hash.clear();
  QaracEvaluator evaluator(options);
  TensorMap weights;
  RobertaEncoder base(config_.base, DType::f32, Device::cpu());
  for (const Parameter* p : base.parameters()) weights[p->name] = p->value;
  QaracModels models(config_, weights, DType::f32, Device::cpu());
  expect_input_error([&] { evaluator.evaluate({models, {}}); },
                     {text, ": its text field holds a sequence of " + std::to_string(longest + 1) + " tokens, more than the " +
                                std::to_string(longest) + " the models read"});

  // A candidate sentence too long for the answer encoder (before: the model's message, naming no file).
  fs::remove(text);
  write(
      data::Task::question_answering, 2, [&](int) { return Sequences{{0, 5, 2}, {0, 6, 2}}; }, 0,
      [&](int i) { return Sequences{std::vector<int32_t>(longest + i, 7)}; });
  QaracEvaluator with_candidates(options);
  expect_input_error([&] { with_candidates.evaluate({models, {}}); },
                     {(dir_ / "question_answering.h5").string(), ": a candidate sentence holds " +
                                                                    std::to_string(longest + 1) + " tokens, more than the "});
}

// The consistency evaluation's classes at their boundaries: ±1/3 itself is neutral (the
// objective's targets are cos = 1, 0, -1; the thresholds halve the gaps between them).
TEST(ConsistencyClass, ThresholdsAreAThirdEachSide) {
  EXPECT_EQ(consistency_class(0.34), 1);
  EXPECT_EQ(consistency_class(1.0 / 3), 0);
  EXPECT_EQ(consistency_class(0.0), 0);
  EXPECT_EQ(consistency_class(0.5), 1);
  EXPECT_EQ(consistency_class(-1.0 / 3), 0);
  EXPECT_EQ(consistency_class(-0.34), -1);
  EXPECT_EQ(consistency_class(-1.0), -1);
}

// qarac-eval's and qarac-embed --rank's lines: counts as whole numbers, told by their names; every
// other figure with six decimals, an accuracy of 0 or 1 too (they were printed as counts, "0").
TEST(MetricLines, CountsAreWholeNumbersAndEveryOtherFigureHasItsDecimals) {
  EvalResult result;
  result.metrics = {{"cs.accuracy", 1.0},
                    {"cs.confusion.entailment.neutral", 3.0},
                    {"ed.loss", std::nan("")},
                    {"qa.selection_mrr", 0.25},
                    {"qa.selection_questions", 24.0},
                    {"rs.token_accuracy", 0.0}};
  EXPECT_EQ(metric_lines(result),
            "cs.accuracy 1.000000\ncs.confusion.entailment.neutral 3\ned.loss nan\nqa.selection_mrr 0.250000\n"
            "qa.selection_questions 24\nrs.token_accuracy 0.000000\n");
}
