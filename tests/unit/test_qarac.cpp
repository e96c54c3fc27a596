// The QARAC models and objectives on a tiny model in float64: the gradient of a whole QARAC step
// (the weighted sum of the four tasks' losses) against central finite differences for sampled
// entries of every module (QE and AE bases and pooling heads, D's base, both head layers, the LM
// head), with dropout off and on, with a shared encoder base and a tied LM head; the decoder's
// slot-0 semantics; the decoder's dropout masks following each sequence's id through its [v; H]
// sequences; the LM head's padded vocabulary; each task's loss against a direct computation;
// parameter names, base loading and the refusal of fields without <s> ... </s>; the rehearsal
// (masked language modelling through AE's base with the base's MLM head) against central finite
// differences, with its head frozen and trained, and its global batch's loss whatever the split.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <iostream>
#include <random>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "model/decoder.h"
#include "model/generate.h"
#include "model/init.h"
#include "model/lm_head.h"
#include "model/qarac.h"
#include "train/contrastive.h"
#include "train/objectives.h"
#include "train/rehearsal.h"

using namespace qarac;
using data::Task;

namespace {

constexpr int64_t kVocab = 20, kHidden = 8;

QaracConfig tiny_config(bool dropout, bool shared, bool tied) {
  QaracConfig c;
  c.base.vocab_size = kVocab;
  c.base.hidden_size = kHidden;
  c.base.num_layers = 1;
  c.base.num_heads = 2;
  c.base.intermediate_size = 12;
  c.base.max_position_embeddings = 16;
  c.base.type_vocab_size = 1;
  c.base.hidden_dropout = dropout ? 0.2 : 0.0;
  c.base.attention_dropout = dropout ? 0.2 : 0.0;
  c.share_encoder_base = shared;
  c.tie_lm_head = tied;
  c.vocab_multiple = 8;  // 20 -> 24 rows: four padded
  c.init_seed = 7;
  c.init_std = 0.5;  // gradients of order 1, well above the finite differences' noise
  return c;
}

// Moves vectors (biases, LayerNorm γ and β) away from their initial 0 and 1, so that none of
// their gradients is a special case.
void perturb_vectors(const ParameterList& params, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, 0.3);
  for (Parameter* p : params) {
    if (p->value.dim() != 1) continue;
    double* v = p->value.data<double>();
    for (int64_t i = 0; i < p->value.numel(); ++i) v[i] += normal(gen);
  }
}

// A random "pre-trained" base: encoder tensors named as io::HfRoberta::encoder.
TensorMap base_checkpoint(const RobertaConfig& config, uint64_t seed) {
  RobertaEncoder encoder(config, DType::f64, Device::cpu());
  init_normal(encoder.parameters(), 0.5, seed);
  perturb_vectors(encoder.parameters(), seed + 1);
  TensorMap out;
  for (const Parameter* p : encoder.parameters()) out[p->name] = p->value.clone();
  return out;
}

// "<s> t_1 ... t_n </s>" for each of the given n, tokens drawn from [3, V).
data::PackedField text_field(std::mt19937& gen, const std::vector<int>& inner_lengths) {
  std::uniform_int_distribution<int32_t> token(3, kVocab - 1);
  data::PackedField f;
  f.starts = {0};
  for (int n : inner_lengths) {
    f.tokens.push_back(0);
    for (int i = 0; i < n; ++i) f.tokens.push_back(token(gen));
    f.tokens.push_back(2);
    f.starts.push_back(static_cast<int32_t>(f.tokens.size()));
  }
  return f;
}

// A batch of three samples of `task` with ragged fields (an empty text included).
data::TaskBatch task_batch(Task task, std::mt19937& gen) {
  std::uniform_int_distribution<int> length(0, 5);
  data::TaskBatch batch;
  batch.task = task;
  batch.examples = {0, 1, 2};
  for (size_t f = 0; f < data::task_fields(task).size(); ++f) {
    std::vector<int> lengths = {length(gen), length(gen), length(gen)};
    if (f == 0) lengths[1] = 0;
    batch.fields.push_back(text_field(gen, lengths));
  }
  if (task == Task::consistency) batch.labels = {1.f, 0.f, -1.f};
  return batch;
}

std::vector<data::TaskBatch> all_tasks(uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<data::TaskBatch> out;
  for (Task t : {Task::encode_decode, Task::question_answering, Task::reasoning, Task::consistency})
    out.push_back(task_batch(t, gen));
  return out;
}

double scalar(const Tensor& t) { return t.to(Device::cpu()).to(DType::f64).data<double>()[0]; }

// The task weights of the QARAC step in these tests: not all 1, so that folding the weight into
// the gradient is checked too.
constexpr double kTaskWeights[data::kTaskCount] = {1.0, 0.7, 1.3, 0.9};

// One QARAC step: runs every task, accumulating gradients; returns Σ_t w_t loss_t.
double step_loss(Objectives& objectives, const std::vector<data::TaskBatch>& batches,
                 const ForwardOptions& forward) {
  double total = 0;
  for (const data::TaskBatch& batch : batches) {
    ObjectiveOptions options;
    options.weight = kTaskWeights[static_cast<int>(batch.task)];
    options.forward = forward;
    total += options.weight * scalar(objectives.run(batch, options));
  }
  return total;
}

// The module a parameter belongs to: "answer_encoder.pooling", "decoder.decoder_layers.1", ...
std::string module_of(const std::string& name) {
  const size_t first = name.find('.');
  const size_t second = name.find('.', first + 1);
  std::string module = name.substr(0, second);
  if (module == "decoder.decoder_layers") module = name.substr(0, name.find('.', second + 1));
  return module;
}

std::vector<double> row_values(const Tensor& t, int64_t row) {
  return t.select(row).clone().to_vector<double>();
}

// The gradients `grads` (one per parameter, read before any difference runs: those accumulate
// more) against central differences of `loss`, whose value at the parameters is `at`, at up to
// three elements of every parameter that `skip` does not name. h = 1e-5: truncation
// O(h²|L'''|) ≈ 1e-10, rounding ≈ ε|L|/h ≈ 1e-10. Analytic and numeric must agree to 1e-6
// relative to the largest numeric entry sampled in the tensor, with an absolute floor of
// 1e-8 max(1, |L|) for gradients that vanish (the attention key bias's is exactly 0: the softmax
// cancels it). Returns the modules of the parameters whose gradient is not all zero.
std::set<std::string> expect_gradients_match_differences(const ParameterList& params,
                                                         const std::vector<std::vector<double>>& grads, double at,
                                                         const std::function<double()>& loss,
                                                         const std::function<bool(const Parameter&)>& skip = {}) {
  const double h = 1e-5, floor = 1e-8 * std::max(1.0, std::fabs(at));
  std::mt19937_64 gen(9);
  std::set<std::string> moved;
  for (size_t k = 0; k < params.size(); ++k) {
    Parameter& p = *params[k];
    if (std::any_of(grads[k].begin(), grads[k].end(), [](double g) { return g != 0; })) moved.insert(module_of(p.name));
    if (skip && skip(p)) continue;
    double* v = p.value.data<double>();
    const int64_t n = p.value.numel();
    double worst = 0, largest = 0;
    for (int s = 0; s < static_cast<int>(std::min<int64_t>(n, 3)); ++s) {
      const int64_t i = n <= 3 ? s : static_cast<int64_t>(gen() % static_cast<uint64_t>(n));
      const double saved = v[i];
      v[i] = saved + h;
      const double up = loss();
      v[i] = saved - h;
      const double down = loss();
      v[i] = saved;
      const double numeric = (up - down) / (2 * h);
      worst = std::max(worst, std::fabs(numeric - grads[k][static_cast<size_t>(i)]));
      largest = std::max(largest, std::fabs(numeric));
    }
    EXPECT_LE(worst, 1e-6 * largest + floor) << p.name;
  }
  return moved;
}

// The forward options of the gradient checks' step: dropout on or off, a fixed seed and step.
ForwardOptions step_forward(bool dropout) {
  ForwardOptions forward;
  forward.training = dropout;
  forward.seed = 42;
  forward.step = 3;
  return forward;
}

std::vector<std::vector<double>> gradients_of(const ParameterList& params) {
  std::vector<std::vector<double>> grads;
  for (const Parameter* p : params) grads.push_back(p->grad.to_vector<double>());
  return grads;
}

void check_step_gradients(bool dropout, bool shared, bool tied) {
  SCOPED_TRACE(std::string(dropout ? "dropout" : "no dropout") + (shared ? ", shared base" : "") +
               (tied ? ", tied LM head" : ""));
  const QaracConfig config = tiny_config(dropout, shared, tied);
  QaracModels models(config, base_checkpoint(config.base, 3), DType::f64, Device::cpu());
  const ParameterList params = models.parameters();
  perturb_vectors(params, 5);
  Objectives objectives(models);
  const std::vector<data::TaskBatch> batches = all_tasks(11);
  const ForwardOptions forward = step_forward(dropout);

  zero_grads(params);
  const double loss = step_loss(objectives, batches, forward);
  const std::set<std::string> modules = expect_gradients_match_differences(
      params, gradients_of(params), loss, [&] { return step_loss(objectives, batches, forward); });
  const std::string encoder_base = shared ? "shared_encoder.roberta" : "question_encoder.roberta";
  std::set<std::string> expected = {
      encoder_base,      "question_encoder.pooling", "answer_encoder.pooling",
      "decoder.roberta", "decoder.decoder_layers.0", "decoder.decoder_layers.1",
      "decoder.lm_head"};
  if (!shared) expected.insert("answer_encoder.roberta");
  EXPECT_EQ(modules, expected);
}

// Models whose every vector is perturbed, no dropout.
struct Fixture {
  QaracConfig config;
  QaracModels models;
  explicit Fixture(const QaracConfig& c)
      : config(c), models(c, base_checkpoint(c.base, 3), DType::f64, Device::cpu()) {
    perturb_vectors(models.parameters(), 5);
  }
};

// -log softmax(logits[row, :V])[target].
double cross_entropy(const std::vector<double>& logits, int64_t cols, int64_t row, int32_t target) {
  double max = -INFINITY, sum = 0;
  for (int64_t j = 0; j < kVocab; ++j) max = std::max(max, logits[row * cols + j]);
  for (int64_t j = 0; j < kVocab; ++j) sum += std::exp(logits[row * cols + j] - max);
  return max + std::log(sum) - logits[row * cols + target];
}

// The decoder's loss by the definition: sample b's "<s> y </s>" gives input "<s> y" and targets
// "y </s>"; the per-sample mean of the cross-entropies, averaged over the samples.
double direct_decoder_loss(Decoder& decoder, const Tensor& v, const data::PackedField& y) {
  std::vector<std::vector<int32_t>> inputs;
  std::vector<int32_t> targets;
  for (int64_t b = 0; b < y.count(); ++b) {
    const auto begin = y.tokens.begin() + y.starts[static_cast<size_t>(b)];
    const auto end = y.tokens.begin() + y.starts[static_cast<size_t>(b) + 1];
    inputs.emplace_back(begin, end - 1);
    targets.insert(targets.end(), begin + 1, end);
  }
  const TokenBatch batch = TokenBatch::from_sequences(inputs, 1, Device::cpu());
  Decoder::Activations acts;
  const Tensor& logits = decoder.forward(v, batch, ForwardOptions{}, acts);
  const std::vector<double> l = logits.to_vector<double>();
  const int64_t cols = logits.size(1);
  double total = 0;
  int64_t row = 0;
  for (const std::vector<int32_t>& input : inputs) {
    double sample = 0;
    for (size_t t = 0; t < input.size(); ++t, ++row)
      sample += cross_entropy(l, cols, row, targets[static_cast<size_t>(row)]);
    total += sample / static_cast<double>(input.size());
  }
  return total / static_cast<double>(inputs.size());
}

TokenBatch field_batch(const data::PackedField& f, const std::vector<uint64_t>& ids = {}) {
  return TokenBatch::from_packed(f.tokens, f.starts, 1, Device::cpu(), ids);
}

// Consistency's loss by the definition: the mean over the samples of (cos(u_b, w_b) − y_b)².
double direct_consistency_loss(const std::vector<double>& u, const std::vector<double>& w,
                               const std::vector<float>& labels) {
  double loss = 0;
  for (size_t b = 0; b < labels.size(); ++b) {
    double dot = 0, uu = 0, ww = 0;
    for (size_t j = b * kHidden; j < (b + 1) * kHidden; ++j) {
      dot += u[j] * w[j];
      uu += u[j] * u[j];
      ww += w[j] * w[j];
    }
    const double c = dot / (std::sqrt(uu) * std::sqrt(ww));
    loss += (c - labels[b]) * (c - labels[b]);
  }
  return loss / static_cast<double>(labels.size());
}

}  // namespace

TEST(QaracStep, GradientsMatchFiniteDifferences) { check_step_gradients(false, false, false); }
TEST(QaracStep, GradientsMatchFiniteDifferencesWithDropout) {
  check_step_gradients(true, false, false);
}
TEST(QaracStep, GradientsMatchFiniteDifferencesSharedBaseTiedHead) {
  check_step_gradients(false, true, true);
}
TEST(QaracStep, GradientsMatchFiniteDifferencesSharedBaseTiedHeadWithDropout) {
  check_step_gradients(true, true, true);
}

namespace {

// Contrastive QA through the models (task.qa.objective contrastive), as the trainer drives it on
// one rank: begin_task encodes the micro-batches and computes L over the whole batch, then run()
// back-propagates each micro-batch's part, weighted as the trainer weights it (its share n/N).
// Returns w L.
double contrastive_step(Objectives& objectives, const std::vector<data::TaskBatch>& micro, const ForwardOptions& forward,
                        double weight) {
  const GatherRows one_rank = [](const std::vector<double>& mine, int64_t, int64_t* first_row) {
    *first_row = 0;
    return mine;
  };
  objectives.begin_task(Task::question_answering, micro, forward, one_rank);
  double loss = 0;
  for (const data::TaskBatch& m : micro) {
    const double share = static_cast<double>(m.count()) / static_cast<double>(m.global_count);
    ObjectiveOptions options;
    options.weight = weight * share;
    options.forward = forward;
    loss += scalar(objectives.run(m, options)) * share;
  }
  return weight * loss;
}

// The gradients of the contrastive loss against central differences (h and bounds as
// check_step_gradients'), the batch whole or in micro-batches of one example each: those are
// encoded again in run(), with the same dropout masks, so the gradients are the same.
void check_contrastive_gradients(bool dropout, int64_t micro_tokens) {
  SCOPED_TRACE(std::string(dropout ? "dropout" : "no dropout") + ", micro_tokens " + std::to_string(micro_tokens));
  const QaracConfig config = tiny_config(dropout, false, false);
  QaracModels models(config, base_checkpoint(config.base, 3), DType::f64, Device::cpu());
  const ParameterList params = models.parameters();
  perturb_vectors(params, 5);
  Objectives objectives(models, QaObjective{true, 0.5});
  std::mt19937 gen(13);
  data::TaskBatch batch = task_batch(Task::question_answering, gen);
  batch.ids = {100, 101, 102};  // dropout masks per example, wherever it runs
  batch.global_count = batch.count();
  const std::vector<data::TaskBatch> micro = batch.split(micro_tokens);
  ASSERT_EQ(micro.size(), micro_tokens == 0 ? 1u : 3u);
  const ForwardOptions forward = step_forward(dropout);
  const double weight = 0.7;

  zero_grads(params);
  const double loss = contrastive_step(objectives, micro, forward, weight);
  ASSERT_GT(loss, 0);
  const std::set<std::string> modules = expect_gradients_match_differences(
      params, gradients_of(params), loss, [&] { return contrastive_step(objectives, micro, forward, weight); });
  // The task reaches both encoders, and nothing else.
  EXPECT_EQ(modules, (std::set<std::string>{"question_encoder.roberta", "question_encoder.pooling",
                                            "answer_encoder.roberta", "answer_encoder.pooling"}));
}

}  // namespace

TEST(ContrastiveQa, GradientsMatchFiniteDifferences) { check_contrastive_gradients(false, 0); }
TEST(ContrastiveQa, GradientsMatchFiniteDifferencesWithDropoutInMicroBatches) {
  check_contrastive_gradients(true, 1);
}

// The loss run() and evaluate() report is L of the batch, by its definition from the encoders'
// vectors.
TEST(ContrastiveQa, LossIsInfoNceOfTheVectors) {
  const QaracConfig config = tiny_config(false, false, false);
  QaracModels models(config, base_checkpoint(config.base, 3), DType::f64, Device::cpu());
  perturb_vectors(models.parameters(), 5);
  Objectives objectives(models, QaObjective{true, 0.5});
  std::mt19937 gen(13);
  data::TaskBatch batch = task_batch(Task::question_answering, gen);
  batch.global_count = batch.count();
  SentenceEncoder::Activations acts;
  const std::vector<double> q =
      models.question_encoder().forward(field_batch(batch.fields[0]), ForwardOptions{}, acts).clone().to_vector<double>();
  const std::vector<double> a =
      models.answer_encoder().forward(field_batch(batch.fields[1]), ForwardOptions{}, acts).clone().to_vector<double>();
  const double expected = contrastive_loss(q, a, batch.count(), config.base.hidden_size, 0.5);
  EXPECT_NEAR(objectives.evaluate(batch), expected, 1e-14);
  zero_grads(models.parameters());
  EXPECT_NEAR(contrastive_step(objectives, {batch}, ForwardOptions{}, 1.0), expected, 1e-14);
}

// Each task's loss against its definition, computed from the models' forward passes: the
// objectives pick the right fields, shift the decoder's input and targets, weight the tokens per
// sample and take the right means. run() without dropout returns the same loss as evaluate(),
// and evaluate() leaves the gradients alone.
TEST(Objectives, TaskLossesMatchTheirDefinitions) {
  Fixture fx(tiny_config(false, false, false));
  QaracModels& models = fx.models;
  Objectives objectives(models);
  SentenceEncoder& qe = models.question_encoder();
  SentenceEncoder& ae = models.answer_encoder();
  for (const data::TaskBatch& batch : all_tasks(21)) {
    SCOPED_TRACE(data::task_name(batch.task));
    SentenceEncoder::Activations a0, a1;
    double want = 0;
    switch (batch.task) {
      case Task::encode_decode: {
        const Tensor v = ae.forward(field_batch(batch.fields[0]), {}, a0).clone();
        want = direct_decoder_loss(models.decoder(), v, batch.fields[0]);
        break;
      }
      case Task::question_answering: {
        const std::vector<double> q =
            qe.forward(field_batch(batch.fields[0]), {}, a0).to_vector<double>();
        const std::vector<double> a =
            ae.forward(field_batch(batch.fields[1]), {}, a1).to_vector<double>();
        for (size_t i = 0; i < q.size(); ++i) want += (q[i] - a[i]) * (q[i] - a[i]);
        want /= 3.0 * kHidden;
        break;
      }
      case Task::reasoning: {
        std::vector<double> v =
            ae.forward(field_batch(batch.fields[0]), {}, a0).to_vector<double>();
        const std::vector<double> v1 =
            ae.forward(field_batch(batch.fields[1]), {}, a1).to_vector<double>();
        for (size_t i = 0; i < v.size(); ++i) v[i] += v1[i];
        want = direct_decoder_loss(models.decoder(), Tensor::from_vector(v, {3, kHidden}),
                                   batch.fields[2]);
        break;
      }
      case Task::consistency: {
        const std::vector<double> u =
            ae.forward(field_batch(batch.fields[0]), {}, a0).to_vector<double>();
        const std::vector<double> w =
            ae.forward(field_batch(batch.fields[1]), {}, a1).to_vector<double>();
        want = direct_consistency_loss(u, w, batch.labels);
        break;
      }
      case Task::masked_lm: FAIL() << "not a QARAC objective (test_rehearsal.cpp)";
    }
    zero_grads(models.parameters());
    const double evaluated = objectives.evaluate(batch);
    EXPECT_NEAR(evaluated, want, 1e-12 * std::max(1.0, std::fabs(want)));
    for (const Parameter* p : models.parameters())
      for (double g : p->grad.to_vector<double>())
        ASSERT_EQ(g, 0.0) << p->name << " after evaluate()";
    ObjectiveOptions options;
    options.weight = 0.5;  // scales the gradients, not the returned loss
    EXPECT_NEAR(scalar(objectives.run(batch, options)), want,
                1e-12 * std::max(1.0, std::fabs(want)));
  }
}

// Consistency's two statements run through AE as one pass with dropout: the first statements draw
// the masks of application 4t under their examples' ids, as they would alone, and the second ones
// the same application's masks under data::second_field_id, not the first ones' (the loss
// differs when they take the first ones' ids).
TEST(Objectives, PairedFieldsDrawTheirOwnDropoutMasks) {
  Fixture fx(tiny_config(true, false, false));
  Objectives objectives(fx.models);
  SentenceEncoder& ae = fx.models.answer_encoder();
  std::mt19937 gen(5);
  data::TaskBatch batch = task_batch(Task::consistency, gen);
  batch.fields[1] = batch.fields[0];  // identical statements: only the masks tell them apart
  std::vector<uint64_t> second;
  for (int64_t b = 0; b < batch.count(); ++b) {
    batch.ids.push_back(data::example_id(Task::consistency, 2, 10 + b));
    second.push_back(data::second_field_id(batch.ids.back()));
  }
  ForwardOptions forward = step_forward(true);
  forward.application = 4 * static_cast<uint32_t>(Task::consistency);
  SentenceEncoder::Activations a0, a1;
  const std::vector<double> u = ae.forward(field_batch(batch.fields[0], batch.ids), forward, a0).to_vector<double>();
  const std::vector<double> w = ae.forward(field_batch(batch.fields[1], second), forward, a1).to_vector<double>();
  const std::vector<double> same = ae.forward(field_batch(batch.fields[1], batch.ids), forward, a1).to_vector<double>();
  EXPECT_EQ(same, u);
  const double want = direct_consistency_loss(u, w, batch.labels);
  ObjectiveOptions options;
  options.forward = step_forward(true);
  EXPECT_NEAR(scalar(objectives.run(batch, options)), want, 1e-12 * std::max(1.0, std::fabs(want)));
  EXPECT_GT(std::fabs(want - direct_consistency_loss(u, u, batch.labels)), 1e-3);
}

// D(v, y): the logits at position t depend on v and on y_in[0..t] only. Changing a token leaves
// the earlier positions (and the other sequences) exactly as they were and changes the later
// ones; changing v_b changes every position of sequence b, the first included (head layer 0
// lets every position see the slot), and nothing else.
TEST(Decoder, PositionTSeesTheSlotAndTheTokensUpToT) {
  Fixture fx(tiny_config(false, false, false));
  Decoder& decoder = fx.models.decoder();
  std::vector<std::vector<int32_t>> y = {{0, 5, 6, 7, 8}, {0, 9, 10}, {0, 4}};
  std::mt19937 gen(4);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> v(3 * kHidden);
  for (double& x : v) x = normal(gen);
  auto logits = [&](const std::vector<std::vector<int32_t>>& tokens,
                    const std::vector<double>& slot) {
    Decoder::Activations acts;
    return decoder
        .forward(Tensor::from_vector(slot, {3, kHidden}),
                 TokenBatch::from_sequences(tokens, 1, Device::cpu()), {}, acts)
        .clone();
  };
  // max |a - b| over the valid columns of each row.
  auto row_changes = [](const Tensor& a, const Tensor& b) {
    std::vector<double> out;
    for (int64_t r = 0; r < a.size(0); ++r) {
      const std::vector<double> x = row_values(a, r), z = row_values(b, r);
      double m = 0;
      for (int64_t j = 0; j < kVocab; ++j) m = std::max(m, std::fabs(x[j] - z[j]));
      out.push_back(m);
    }
    return out;
  };
  const Tensor reference = logits(y, v);

  std::vector<std::vector<int32_t>> changed_token = y;
  changed_token[0][3] = 12;
  const std::vector<double> by_token = row_changes(reference, logits(changed_token, v));
  for (int r = 0; r < 10; ++r) {
    if (r == 3 || r == 4)
      EXPECT_GT(by_token[r], 1e-6) << "row " << r << " sees token 3";
    else
      EXPECT_LE(by_token[r], 1e-13) << "row " << r << " must not see token 3 of sequence 0";
  }

  std::vector<double> changed_v = v;
  for (int j = 0; j < kHidden; ++j) changed_v[kHidden + j] += 0.5;  // v_1
  const std::vector<double> by_slot = row_changes(reference, logits(y, changed_v));
  for (int r = 0; r < 10; ++r) {
    if (r >= 5 && r < 8)
      EXPECT_GT(by_slot[r], 1e-6) << "row " << r << " sees v_1";
    else
      EXPECT_LE(by_slot[r], 1e-13) << "row " << r << " must not see v_1";
  }
}

// Decoding over the key/value cache gives forward()'s logits at the positions it runs (f64, two
// base layers): prefixes of several lengths, then steps that extend some of the sequences, in
// another order than the cache's, and leave the others; the K | V of a sequence never mix with
// another's. A step past a sequence's capacity, a sequence given twice, and positions beyond the
// position table are refused.
TEST(Decoder, CachedDecodingGivesTheLogitsOfTheWholeForward) {
  QaracConfig config = tiny_config(false, false, false);
  config.base.num_layers = 2;
  Fixture fx(config);
  Decoder& decoder = fx.models.decoder();
  std::mt19937 gen(11);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> v(3 * kHidden);
  for (double& x : v) x = normal(gen);
  const Tensor vectors = Tensor::from_vector(v, {3, kHidden});
  // The whole forward's logits of the last position of each sequence.
  auto last_logits = [&](const std::vector<std::vector<int32_t>>& y, const std::vector<int32_t>& which) {
    std::vector<double> rows;
    for (int32_t b : which) rows.insert(rows.end(), v.begin() + b * kHidden, v.begin() + (b + 1) * kHidden);
    std::vector<std::vector<int32_t>> seqs;
    for (int32_t b : which) seqs.push_back(y[static_cast<size_t>(b)]);
    Decoder::Activations acts;
    const Tensor all = decoder.forward(Tensor::from_vector(rows, {static_cast<int64_t>(which.size()), kHidden}),
                                       TokenBatch::from_sequences(seqs, 1, Device::cpu()), {}, acts);
    std::vector<std::vector<double>> out;
    int64_t row = -1;
    for (const auto& s : seqs) out.push_back(row_values(all, row += static_cast<int64_t>(s.size())));
    return out;
  };
  auto expect_rows = [&](const Tensor& got, const std::vector<std::vector<double>>& want, const char* when) {
    ASSERT_EQ(got.size(0), static_cast<int64_t>(want.size())) << when;
    for (size_t i = 0; i < want.size(); ++i) {
      const std::vector<double> g = row_values(got, static_cast<int64_t>(i));
      for (int64_t j = 0; j < kVocab; ++j) EXPECT_NEAR(g[j], want[i][j], 1e-12) << when << ", row " << i << ", word " << j;
    }
  };
  std::vector<std::vector<int32_t>> y = {{0, 5, 6}, {0}, {0, 9}};
  Decoder::Cache cache;
  expect_rows(decoder.start_decoding(vectors, TokenBatch::from_sequences(y, 1, Device::cpu()), {6, 3, 5}, cache),
              last_logits(y, {0, 1, 2}), "start");
  const std::vector<std::vector<int32_t>> steps = {{2, 1}, {4, 3}, {0, 1, 2}, {8, 11, 3}};
  const std::vector<std::vector<int32_t>> which = {{2, 0}, {2, 0}, {1, 0, 2}, {0, 2, 1}};
  for (size_t k = 0; k < 3; ++k) {
    for (size_t i = 0; i < which[k].size(); ++i) y[static_cast<size_t>(which[k][i])].push_back(steps[k][i]);
    expect_rows(decoder.decode(which[k], steps[k], cache), last_logits(y, which[k]),
                ("step " + std::to_string(k + 1)).c_str());
  }
  // Sequences 0 and 2 are full (6 positions of 6, 5 of 5).
  EXPECT_THROW(decoder.decode(which[3], steps[3], cache), Error);
  EXPECT_THROW(decoder.decode({1, 1}, {3, 4}, cache), Error);
  Decoder::Cache beyond;
  EXPECT_THROW(decoder.start_decoding(vectors, TokenBatch::from_sequences(y, 1, Device::cpu()), {6, 3, 15}, beyond),
               InputError);
}

// greedy_decode gives the tokens of the plain definition: every step, forward() over the whole
// prefix and the argmax of its last position (f64; the first of equal scores, the true
// vocabulary only), each sequence for its own steps, stopped by its stop token (not appended),
// a prompt after <s>, and a sequence of no steps. A decoding beyond the positions is refused
// before anything runs, and a cache whose start failed is empty: nothing decodes into it.
TEST(Decoder, GreedyDecodingIsTheArgmaxOfTheWholeForwardStepByStep) {
  QaracConfig config = tiny_config(false, false, false);
  config.base.num_layers = 2;
  Fixture fx(config);
  Decoder& decoder = fx.models.decoder();
  // Weights under which the tokens decoded change along a sequence and between sequences (a
  // random decoder mostly repeats one word: at the fixture's weights, every position's argmax is
  // the same; these were picked for 3 words and 18 changes over 4 sequences of 10 tokens).
  init_normal(decoder.parameters(), 0.4, 21);
  perturb_vectors(decoder.parameters(), 121);
  std::mt19937 gen(21);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> v(4 * kHidden);
  for (double& x : v) x = normal(gen);
  const Tensor vectors = Tensor::from_vector(v, {4, kHidden});
  const std::vector<std::vector<int32_t>> prefixes = {{0}, {0, 7, 3}, {0}, {0, 5}};
  const std::vector<int64_t> steps = {9, 6, 0, 11};
  // The stop token: the first that the first sequence's plain decoding produces later than at its
  // start, so that it stops early there (and wherever else the token comes up).
  auto plain = [&](int32_t stop) {
    std::vector<std::vector<int32_t>> out(prefixes.size());
    for (size_t b = 0; b < prefixes.size(); ++b) {
      std::vector<int32_t> seq = prefixes[b];
      const Tensor row = Tensor::from_vector(std::vector<double>(v.begin() + b * kHidden, v.begin() + (b + 1) * kHidden),
                                             {1, kHidden});
      for (int64_t t = 0; t < steps[b]; ++t) {
        Decoder::Activations acts;
        const Tensor logits = decoder.forward(row, TokenBatch::from_sequences({seq}, 1, Device::cpu()), {}, acts);
        const std::vector<double> last = row_values(logits, static_cast<int64_t>(seq.size()) - 1);
        const auto token = static_cast<int32_t>(std::max_element(last.begin(), last.begin() + kVocab) - last.begin());
        if (token == stop) break;
        seq.push_back(token);
        out[b].push_back(token);
      }
    }
    return out;
  };
  const std::vector<std::vector<int32_t>> unstopped = plain(-1);
  EXPECT_EQ(greedy_decode(decoder, vectors, prefixes, steps), unstopped);
  const std::vector<int32_t>& first = unstopped[0];
  size_t at = 1;
  while (at < first.size() && std::find(first.begin(), first.begin() + static_cast<long>(at), first[at]) !=
                                  first.begin() + static_cast<long>(at))
    ++at;
  ASSERT_LT(at, first.size()) << "the first decoding repeats one token: no stop token to test with";
  ASSERT_NE(unstopped[3], std::vector<int32_t>(unstopped[3].size(), unstopped[3][0])) << "sequence 3 varies too";
  const int32_t stop = first[at];
  const std::vector<std::vector<int32_t>> stopped = plain(stop);
  EXPECT_EQ(stopped[0].size(), at);
  EXPECT_EQ(greedy_decode(decoder, vectors, prefixes, steps, stop), stopped);
  // max_position_embeddings 16: "<s> 5" and 14 steps need 15 positions, one beyond the 14.
  EXPECT_THROW(greedy_decode(decoder, vectors, prefixes, std::vector<int64_t>{1, 1, 1, 14}), InputError);
  Decoder::Cache cache;
  const std::vector<std::vector<int32_t>> unknown = {{0, 3}, {0, kVocab}};  // a token beyond the vocabulary
  EXPECT_THROW(decoder.start_decoding(vectors.slice(0, 0, 2), TokenBatch::from_sequences(unknown, 1, Device::cpu()),
                                      {4, 4}, cache),
               InputError);
  EXPECT_THROW(decoder.decode({0}, {5}, cache), Error);
}

// With dropout (0.1, training, f64) the decoder's masks (base, head layer 0 over the [v_b; H_b]
// sequences, head layer 1) follow each sequence's id: one batch of four against the same
// sequences in two batches of two in another order, with the same ids, gives the same logits and
// dv per sequence and the same summed parameter gradients, to rounding; another id for one
// sequence changes that sequence's logits only.
TEST(Decoder, DropoutFollowsSequenceIdsAcrossBatchSplits) {
  QaracConfig config = tiny_config(true, false, false);
  config.base.hidden_dropout = config.base.attention_dropout = 0.1;
  Fixture fx(config);
  Decoder& decoder = fx.models.decoder();
  const ParameterList params = decoder.parameters();
  const std::vector<std::vector<int32_t>> y = {{0, 5, 6, 7, 8}, {0}, {0, 9, 10}, {0, 4, 11, 3}};
  const std::vector<uint64_t> ids = {901, 3, 0xFEEDFACECAFEBEEFu, 64};
  std::mt19937 gen(8);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<std::vector<double>> v(y.size()), r(y.size());  // v_b; R_b over the valid columns
  for (size_t b = 0; b < y.size(); ++b) {
    v[b].resize(kHidden);
    for (double& x : v[b]) x = normal(gen);
    r[b].resize(y[b].size() * kVocab);
    for (double& x : r[b]) x = normal(gen);
  }
  ForwardOptions opts;
  opts.training = true;
  opts.seed = 5;
  opts.step = 9;

  struct Result {
    std::vector<std::vector<double>> logits, dv;  // per sequence: valid columns; dv_b
    std::vector<std::vector<double>> grads;       // per parameter, summed over the passes
  };
  // L = Σ_b Σ_t logits_bt[:V] · R_bt over the groups, each a packed batch with its ids.
  auto run = [&](const std::vector<std::vector<size_t>>& groups, const std::vector<uint64_t>& with) {
    zero_grads(params);
    Result out;
    out.logits.resize(y.size());
    out.dv.resize(y.size());
    for (const std::vector<size_t>& group : groups) {
      std::vector<std::vector<int32_t>> tokens;
      std::vector<uint64_t> group_ids;
      std::vector<double> vv;
      for (size_t b : group) {
        tokens.push_back(y[b]);
        group_ids.push_back(with[b]);
        vv.insert(vv.end(), v[b].begin(), v[b].end());
      }
      const TokenBatch batch = TokenBatch::from_sequences(tokens, 1, Device::cpu(), group_ids);
      const int64_t count = static_cast<int64_t>(group.size());
      Decoder::Activations acts;
      const Tensor& logits =
          decoder.forward(Tensor::from_vector(vv, {count, kHidden}), batch, opts, acts);
      const int64_t cols = logits.size(1);
      const std::vector<double> l = logits.to_vector<double>();
      std::vector<double> grad(l.size(), 0.0);
      for (size_t i = 0; i < group.size(); ++i) {
        const size_t b = group[i];
        for (int64_t t = batch.seqs.host[i]; t < batch.seqs.host[i + 1]; ++t)
          for (int64_t j = 0; j < kVocab; ++j) {
            const int64_t local = t - batch.seqs.host[i];
            out.logits[b].push_back(l[static_cast<size_t>(t * cols + j)]);
            grad[static_cast<size_t>(t * cols + j)] = r[b][static_cast<size_t>(local * kVocab + j)];
          }
      }
      const std::vector<double> dv =
          decoder.backward(acts, Tensor::from_vector(grad, logits.shape())).to_vector<double>();
      for (size_t i = 0; i < group.size(); ++i)
        out.dv[group[i]].assign(dv.begin() + static_cast<int64_t>(i) * kHidden,
                                dv.begin() + static_cast<int64_t>(i + 1) * kHidden);
    }
    for (const Parameter* p : params) out.grads.push_back(p->grad.to_vector<double>());
    return out;
  };
  // max |a - b| over max |b|: the difference relative to the tensor's scale.
  auto relative = [](const std::vector<double>& a, const std::vector<double>& b) {
    double diff = 0, scale = 1e-300;
    for (size_t i = 0; i < b.size(); ++i) {
      diff = std::max(diff, std::fabs(a[i] - b[i]));
      scale = std::max(scale, std::fabs(b[i]));
    }
    return diff / scale;
  };

  const Result whole = run({{0, 1, 2, 3}}, ids), split = run({{2, 0}, {3, 1}}, ids);
  double worst_out = 0, worst_grad = 0;
  for (size_t b = 0; b < y.size(); ++b) {
    ASSERT_EQ(split.logits[b].size(), whole.logits[b].size());
    worst_out = std::max({worst_out, relative(split.logits[b], whole.logits[b]),
                          relative(split.dv[b], whole.dv[b])});
    EXPECT_LE(relative(split.logits[b], whole.logits[b]), 1e-13) << "logits of sequence " << b;
    EXPECT_LE(relative(split.dv[b], whole.dv[b]), 1e-13) << "dv of sequence " << b;
  }
  for (size_t k = 0; k < params.size(); ++k) {
    if (params[k]->name.find("attention.self.key.bias") != std::string::npos) {
      // Exactly 0 on both sides (the softmax cancels it; the backward pass writes the 0).
      for (size_t i = 0; i < whole.grads[k].size(); ++i) {
        EXPECT_EQ(split.grads[k][i], 0.0) << params[k]->name;
        EXPECT_EQ(whole.grads[k][i], 0.0) << params[k]->name;
      }
      continue;
    }
    const double diff = relative(split.grads[k], whole.grads[k]);
    EXPECT_LE(diff, 1e-13) << params[k]->name;
    worst_grad = std::max(worst_grad, diff);
  }
  std::cout << "  decoder split vs whole batch, largest relative difference: logits and dv "
            << worst_out << ", parameter gradients " << worst_grad << "\n";

  std::vector<uint64_t> renamed = ids;
  renamed[2] ^= uint64_t{1} << 50;
  const Result other = run({{0, 1, 2, 3}}, renamed);
  for (size_t b = 0; b < y.size(); ++b) {
    if (b == 2)
      EXPECT_GT(relative(other.logits[b], whole.logits[b]), 1e-3) << "sequence 2";
    else
      EXPECT_EQ(other.logits[b], whole.logits[b]) << "sequence " << b;
  }
}

// The untied LM head's vocabulary is padded 20 -> 24 rows inside the head only: the parameter
// lists show [20, d] and [20]; the padded rows' gradients stay exactly 0, and their values,
// however large, change neither the loss nor any gradient.
TEST(LMHead, PaddedVocabularyTakesNoPart) {
  Fixture fx(tiny_config(false, false, false));
  QaracModels& models = fx.models;
  LMHead& head = models.decoder().lm_head();
  ASSERT_EQ(head.padded_vocab(), 24);
  ASSERT_EQ(head.vocab_size(), kVocab);
  EXPECT_EQ(head.output_weight().value.shape(), Shape({24, kHidden}));
  bool saw_weight = false, saw_bias = false;
  for (const Parameter* p : models.model_parameters("decoder")) {
    if (p->name == "lm_head.decoder.weight") {
      saw_weight = true;
      EXPECT_EQ(p->value.shape(), Shape({kVocab, kHidden}));
    }
    if (p->name == "lm_head.bias") {
      saw_bias = true;
      EXPECT_EQ(p->value.shape(), Shape({kVocab}));
    }
  }
  EXPECT_TRUE(saw_weight && saw_bias);

  Objectives objectives(models);
  std::mt19937 gen(31);
  const data::TaskBatch batch = task_batch(Task::encode_decode, gen);
  const ParameterList params = models.parameters();
  auto run = [&](std::vector<std::vector<double>>& grads) {
    zero_grads(params);
    const double loss = scalar(objectives.run(batch, ObjectiveOptions{}));
    grads.clear();
    for (const Parameter* p : params) grads.push_back(p->grad.to_vector<double>());
    return loss;
  };
  auto expect_padding_gradient_zero = [&] {
    for (int64_t r = kVocab; r < 24; ++r) {
      for (double g : row_values(head.output_weight().grad, r)) EXPECT_EQ(g, 0.0) << "row " << r;
      EXPECT_EQ(head.output_bias().grad.to_vector<double>()[static_cast<size_t>(r)], 0.0)
          << "bias " << r;
    }
  };
  std::vector<std::vector<double>> before, after;
  const double loss_before = run(before);
  expect_padding_gradient_zero();

  double* w = head.output_weight().value.data<double>();
  double* b = head.output_bias().value.data<double>();
  for (int64_t r = kVocab; r < 24; ++r) {
    b[r] = 50.0 + static_cast<double>(r);
    for (int64_t j = 0; j < kHidden; ++j)
      w[r * kHidden + j] = 30.0 * std::sin(static_cast<double>(r * kHidden + j));
  }
  const double loss_after = run(after);
  EXPECT_NEAR(loss_after, loss_before, 1e-13 * loss_before);
  expect_padding_gradient_zero();
  for (size_t k = 0; k < params.size(); ++k)
    for (size_t i = 0; i < before[k].size(); ++i)
      ASSERT_NEAR(after[k][i], before[k][i], 1e-12 * (1 + std::fabs(before[k][i])))
          << params[k]->name;
}

// The MLM head of the forgetting monitor: a head tied to an encoder's word embeddings, loaded
// from a Hugging Face lm_head given without its prefix; a missing tensor is refused by name.
TEST(LMHead, TiedHeadLoadsAHuggingFaceLmHead) {
  const RobertaConfig config = tiny_config(false, false, true).base;
  RobertaEncoder encoder(config, DType::f64, Device::cpu());
  LMHead head(config, encoder.word_embeddings(), DType::f64, Device::cpu());
  EXPECT_TRUE(head.tied());
  EXPECT_EQ(head.padded_vocab(), kVocab);
  EXPECT_EQ(&head.output_weight(), &encoder.word_embeddings());
  TensorMap tensors;
  std::mt19937 gen(2);
  std::normal_distribution<double> normal(0.0, 1.0);
  auto random = [&](const Shape& shape) {
    std::vector<double> v(static_cast<size_t>(shape_numel(shape)));
    for (double& x : v) x = normal(gen);
    return Tensor::from_vector(v, shape);
  };
  tensors["dense.weight"] = random({kHidden, kHidden});
  tensors["dense.bias"] = random({kHidden});
  tensors["layer_norm.weight"] = random({kHidden});
  tensors["layer_norm.bias"] = random({kHidden});
  tensors["decoder.bias"] = random({kVocab});  // transformers may store it: ignored
  TensorMap incomplete = tensors;
  try {
    head.load(incomplete, "ckpt/model.safetensors");
    FAIL() << "no exception";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("ckpt/model.safetensors: tensor 'bias' is missing"),
              std::string::npos)
        << e.what();
  }
  tensors["bias"] = random({kVocab}).to(DType::f32);  // converted to the model's dtype
  head.load(tensors, "ckpt/model.safetensors");
  std::vector<std::string> names;
  for (const Parameter* p : head.parameters()) {
    names.push_back(p->name);
    const std::string stored = p->name.substr(8);
    EXPECT_EQ(p->value.to_vector<double>(), tensors.at(stored).to(DType::f64).to_vector<double>())
        << p->name;
  }
  EXPECT_EQ(names, (std::vector<std::string>{"lm_head.dense.weight", "lm_head.dense.bias",
                                             "lm_head.layer_norm.weight", "lm_head.layer_norm.bias",
                                             "lm_head.bias"}));

  // Untied, the head needs decoder.weight [V, d] and keeps its padded rows zero.
  LMHead untied(config, 8, DType::f64, Device::cpu());
  tensors["decoder.weight"] = random({kVocab, kHidden});
  untied.load(tensors, "ckpt");
  for (int64_t r = kVocab; r < 24; ++r)
    for (double x : row_values(untied.output_weight().value, r)) EXPECT_EQ(x, 0.0);
  EXPECT_EQ(row_values(untied.output_weight().value, 3),
            row_values(tensors.at("decoder.weight"), 3));
}

// Names: the optimizer's list holds every parameter once under a model prefix, each model's
// export list the Hugging Face names; the bases are copies of the checkpoint, a shared base is
// listed once, a tied head has no output matrix of its own.
TEST(QaracModels, ParameterNamesAndBaseWeights) {
  for (const bool shared : {false, true}) {
    SCOPED_TRACE(shared ? "shared" : "separate");
    const QaracConfig config = tiny_config(false, shared, shared);
    const TensorMap base = base_checkpoint(config.base, 3);
    QaracModels models(config, base, DType::f64, Device::cpu());
    const size_t base_count = base.size(), pooling = 2, head_layer = 16;
    const size_t lm_head = shared ? 5 : 6;
    const size_t encoders = shared ? base_count + 2 * pooling : 2 * (base_count + pooling);
    ParameterList all = models.parameters();
    EXPECT_EQ(all.size(), encoders + base_count + 2 * head_layer + lm_head);
    std::set<std::string> names;
    std::set<const void*> storage;
    for (const Parameter* p : all) {
      names.insert(p->name);
      storage.insert(p->value.raw());
    }
    EXPECT_EQ(names.size(), all.size());
    EXPECT_EQ(storage.size(), all.size()) << "a parameter listed twice";
    const std::string encoder_base =
        shared ? "shared_encoder.roberta." : "question_encoder.roberta.";
    EXPECT_TRUE(names.count(encoder_base + "embeddings.word_embeddings.weight"));
    EXPECT_EQ(names.count("answer_encoder.roberta.embeddings.word_embeddings.weight"),
              shared ? 0u : 1u);
    EXPECT_TRUE(names.count("answer_encoder.pooling.local_projection.weight"));
    EXPECT_TRUE(names.count("decoder.decoder_layers.1.output.LayerNorm.bias"));
    EXPECT_EQ(names.count("decoder.lm_head.decoder.weight"), shared ? 0u : 1u);

    for (const char* model : {"question_encoder", "answer_encoder", "decoder"}) {
      SCOPED_TRACE(model);
      const ParameterList exported = models.model_parameters(model);
      EXPECT_EQ(exported.front()->name, "roberta.embeddings.word_embeddings.weight");
      for (const Parameter* p : exported) {
        if (p->name.compare(0, 8, "roberta.") != 0) continue;
        EXPECT_EQ(p->value.to_vector<double>(), base.at(p->name.substr(8)).to_vector<double>())
            << p->name;
      }
    }
    const ParameterList qe = models.model_parameters("question_encoder");
    EXPECT_EQ(qe.back()->name, "pooling.local_projection.weight");
    const ParameterList d = models.model_parameters("decoder");
    EXPECT_EQ(d.back()->name, "lm_head.bias");
    EXPECT_THROW(models.model_parameters("encoder"), Error);
  }
}

// A rank of a distributed run builds only the models its tasks use; every model it builds must
// start exactly as on the ranks that build all three, or the replicas differ from step 0.
TEST(QaracModels, ModelsBuiltAloneStartAsWhenBuiltTogether) {
  for (const bool shared : {false, true}) {
    SCOPED_TRACE(shared ? "shared" : "separate");
    const QaracConfig all_config = tiny_config(false, shared, false);
    const TensorMap base = base_checkpoint(all_config.base, 3);
    QaracModels all(all_config, base, DType::f64, Device::cpu());
    std::map<std::string, std::vector<double>> expected;
    for (const Parameter* p : all.parameters()) expected[p->name] = p->master.to_vector<double>();
    for (int missing = 0; missing < 3; ++missing) {
      QaracConfig config = all_config;
      config.build_question_encoder = missing != 0;
      config.build_answer_encoder = missing != 1;
      config.build_decoder = missing != 2;
      QaracModels some(config, base, DType::f64, Device::cpu());
      const ParameterList params = some.parameters();
      EXPECT_LT(params.size(), expected.size()) << "model " << missing << " was built anyway";
      for (const Parameter* p : params) EXPECT_EQ(p->master.to_vector<double>(), expected.at(p->name)) << p->name;
    }
    QaracConfig none = all_config;
    none.build_question_encoder = false;
    QaracModels without(none, base, DType::f64, Device::cpu());
    EXPECT_THROW(without.question_encoder(), Error);
  }
}

// The decoder reads "<s> y" and predicts "y </s>": a field without the special tokens (qarac-prep
// --no-special) cannot train it and is refused, naming the task, field and sample.
TEST(Objectives, RefusesFieldsWithoutSpecialTokens) {
  Fixture fx(tiny_config(false, false, false));
  Objectives objectives(fx.models);
  std::mt19937 gen(41);
  data::TaskBatch batch = task_batch(Task::reasoning, gen);
  data::PackedField& conclusion = batch.fields[2];
  conclusion.tokens[static_cast<size_t>(conclusion.starts[2] - 1)] = 7;  // sample 1 loses its </s>
  try {
    objectives.evaluate(batch);
    FAIL() << "no exception";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("reasoning: field 'conclusion' of sample 1"),
              std::string::npos)
        << e.what();
  }
}

// ---- Rehearsal ------------------------------------------------------------------------------------

namespace {

// A random base MLM head (io::HfRoberta::lm_head names; decoder.weight left out: it is tied).
TensorMap base_lm_head(uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, 0.5);
  auto random = [&](const Shape& shape) {
    Tensor t = Tensor::empty(shape, DType::f64);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = normal(gen);
    return t;
  };
  return {{"dense.weight", random({kHidden, kHidden})}, {"dense.bias", random({kHidden})},
          {"layer_norm.weight", random({kHidden})},     {"layer_norm.bias", random({kHidden})},
          {"bias", random({kVocab})}};
}

// A global batch of four texts of the rehearsal stream, whole, with its ids.
data::TaskBatch rehearsal_batch(uint32_t seed) {
  std::mt19937 gen(seed);
  data::TaskBatch batch;
  batch.task = Task::masked_lm;
  batch.fields = {text_field(gen, {5, 2, 6, 4})};
  auto global = std::make_shared<data::GlobalBatch>();
  for (int64_t i = 0; i < 4; ++i) {
    batch.examples.push_back(i);
    batch.ids.push_back(data::example_id(Task::masked_lm, 1, 10 + i));
  }
  global->ids = batch.ids;
  global->fields = batch.fields;
  batch.global = std::move(global);
  batch.global_count = 4;
  return batch;
}

MlmMasking rehearsal_masking() {
  MlmMasking m;
  m.probability = 0.4;  // several masked tokens per text
  m.seed = 17;
  return m;
}

double rehearse(Rehearsal& rehearsal, const data::TaskBatch& batch, double weight, const ForwardOptions& forward) {
  ObjectiveOptions options;
  options.weight = weight;
  options.forward = forward;
  return scalar(rehearsal.run(batch, options));
}

void check_rehearsal_gradients(bool train_head, bool shared) {
  SCOPED_TRACE(std::string(train_head ? "trained head" : "frozen head") + (shared ? ", shared base" : ""));
  const QaracConfig config = tiny_config(/*dropout=*/true, shared, false);
  QaracModels models(config, base_checkpoint(config.base, 3), DType::f64, Device::cpu());
  perturb_vectors(models.parameters(), 5);
  Rehearsal rehearsal(models, base_lm_head(8), "the test's head", rehearsal_masking(), train_head);
  ParameterList params = models.parameters();
  const ParameterList head = rehearsal.head_parameters();
  params.insert(params.end(), head.begin(), head.end());
  const data::TaskBatch batch = rehearsal_batch(4);
  const ForwardOptions forward = step_forward(true);  // dropout, keyed by (step, application 16, example id)
  const double w = 0.6;

  zero_grads(params);
  const double loss = rehearse(rehearsal, batch, w, forward);
  ASSERT_GT(loss, 0);
  const std::vector<std::vector<double>> grads = gradients_of(params);
  // A frozen head keeps no gradient, and has none to compare.
  const auto frozen_head = [&](const Parameter& p) {
    return !train_head && std::find(head.begin(), head.end(), &p) != head.end();
  };
  for (size_t k = 0; k < params.size(); ++k) {
    if (!frozen_head(*params[k])) continue;
    for (double g : grads[k]) EXPECT_EQ(g, 0) << params[k]->name << ": a frozen head keeps no gradient";
  }
  const std::set<std::string> moved = expect_gradients_match_differences(
      params, grads, w * loss, [&] { return w * rehearse(rehearsal, batch, w, forward); }, frozen_head);
  // Only AE's base (the shared one) and, trained, the head: not the pooling heads, QE or D.
  std::set<std::string> expected = {shared ? "shared_encoder.roberta" : "answer_encoder.roberta"};
  if (train_head) expected.insert("mlm_head.lm_head");
  EXPECT_EQ(moved, expected);
}

}  // namespace

TEST(Rehearsal, GradientsMatchFiniteDifferencesFrozenHead) { check_rehearsal_gradients(false, false); }
TEST(Rehearsal, GradientsMatchFiniteDifferencesTrainedHead) { check_rehearsal_gradients(true, false); }
TEST(Rehearsal, GradientsMatchFiniteDifferencesTrainedHeadSharedBase) { check_rehearsal_gradients(true, true); }

// The loss is the mean over the masked tokens of the whole global batch: run in micro-batches,
// each weighted by its share n / N as the trainer does, it sums to the whole batch's loss and
// gradients, although the micro-batches hold different numbers of masked tokens.
TEST(Rehearsal, MicroBatchesSumToTheGlobalBatch) {
  const QaracConfig config = tiny_config(/*dropout=*/true, false, false);
  QaracModels models(config, base_checkpoint(config.base, 3), DType::f64, Device::cpu());
  Rehearsal rehearsal(models, base_lm_head(8), "the test's head", rehearsal_masking(), true);
  ParameterList params = models.parameters();
  for (Parameter* p : rehearsal.head_parameters()) params.push_back(p);
  const data::TaskBatch batch = rehearsal_batch(4);
  ForwardOptions forward;
  forward.training = true;
  forward.seed = 42;
  forward.step = 5;
  zero_grads(params);
  const double whole = rehearse(rehearsal, batch, 0.6, forward);
  std::vector<std::vector<double>> want;
  for (const Parameter* p : params) want.push_back(p->grad.to_vector<double>());

  const std::vector<data::TaskBatch> micro = batch.split(10);
  ASSERT_GT(micro.size(), 2u);
  zero_grads(params);
  double summed = 0;
  for (const data::TaskBatch& m : micro) {
    const double share = static_cast<double>(m.count()) / static_cast<double>(m.global_count);
    summed += share * rehearse(rehearsal, m, 0.6 * share, forward);
  }
  EXPECT_NEAR(summed, whole, 1e-12 * whole);
  for (size_t k = 0; k < params.size(); ++k) {
    const std::vector<double> got = params[k]->grad.to_vector<double>();
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[k][i], 1e-12) << params[k]->name << " " << i;
  }
}

// A head the base checkpoint lacks or that does not fit the model is refused naming its source.
TEST(Rehearsal, RefusesAMisshapenHead) {
  const QaracConfig config = tiny_config(false, false, false);
  QaracModels models(config, base_checkpoint(config.base, 3), DType::f64, Device::cpu());
  TensorMap head = base_lm_head(8);
  head.erase("dense.bias");
  EXPECT_THROW(Rehearsal(models, head, "the test's head", rehearsal_masking(), false), InputError);
}

// The decoder's logits have the head's padded columns too (an untied head of 20 tokens holds 24
// rows, the padded ones 0: logits of 0). Greedy decoding chooses among the vocabulary only, even
// where every real token scores below 0 and a padded column would win.
TEST(GreedyDecode, ChoosesAmongTheVocabularyOnly) {
  const QaracConfig config = tiny_config(false, false, false);
  Decoder decoder(config.base, /*tie_lm_head=*/false, config.vocab_multiple, DType::f64, Device::cpu(), 0);
  ASSERT_EQ(decoder.lm_head().padded_vocab(), 24);
  init_normal(decoder.parameters(), 0.5, 5);
  for (Parameter* p : decoder.parameters())
    if (p->name == "lm_head.bias") p->assign(Tensor::from_vector(std::vector<double>(kVocab, -1e3), {kVocab}));
  std::mt19937 gen(6);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> v(2 * kHidden);
  for (double& x : v) x = normal(gen);
  const auto out = greedy_decode(decoder, Tensor::from_vector(v, {2, kHidden}), {{0}, {0, 5, 6}}, 3);
  ASSERT_EQ(out.size(), 2u);
  for (const std::vector<int32_t>& tokens : out) {
    EXPECT_EQ(tokens.size(), 3u);
    for (int32_t token : tokens) EXPECT_LT(token, kVocab);
  }
}

// max_tokens() is the longest sequence the encoder reads: RoBERTa numbers positions from
// pad_token_id + 1, so 16 positions with pad 1 hold 14 tokens; one more is refused.
TEST(RobertaConfig, MaxTokensIsTheLongestSequenceTheEncoderReads) {
  const RobertaConfig config = tiny_config(false, false, false).base;
  ASSERT_EQ(config.pad_token_id, 1);
  EXPECT_EQ(config.max_tokens(), 14);
  RobertaEncoder encoder(config, DType::f64, Device::cpu());
  init_normal(encoder.parameters(), 0.5, 2);
  RobertaEncoder::Activations acts;
  const std::vector<int32_t> longest(static_cast<size_t>(config.max_tokens()), 5);
  EXPECT_NO_THROW(encoder.forward(TokenBatch::from_sequences({longest}, 1, Device::cpu()), ForwardOptions{}, acts));
  std::vector<int32_t> longer = longest;
  longer.push_back(5);
  EXPECT_THROW(encoder.forward(TokenBatch::from_sequences({longer}, 1, Device::cpu()), ForwardOptions{}, acts),
               InputError);
}
