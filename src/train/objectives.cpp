// The four QARAC objectives: forward, per-sample losses averaged over the batch, and backward.
//
// Gradients, with B samples, weight w = options.weight and L the task's batch mean:
// - Cross-entropy tasks. Sample b has n_b target tokens and loss (1/n_b) Σ_t CE_bt, so
//   L = Σ_b Σ_t CE_bt / (B n_b): every target token is a row of the LM head's logits with weight
//   r_t = 1/(B n_b), and softmax_cross_entropy writes w r_t (softmax − onehot) over the logits in
//   place. The decoder returns dv = w ∂L/∂v, which flows into AE (encode_decode), or into both
//   halves of AE's pass over the two premises unchanged (reasoning: v = AE(p0) + AE(p1),
//   ∂v/∂AE(p_i) = I).
// - question_answering. L = (1/B) Σ_b (1/d) Σ_j (q_bj − a_bj)², q = QE(q), a = AE(a):
//   ∂/∂q = (w/B)(2/d)(q − a) = −∂/∂a, mse_loss with dloss = w/B.
//   Contrastive: L is a function of the whole global batch of N examples, not a mean of
//   per-sample losses. Every rank of the task computes the same L from the gathered vectors and
//   back-propagates w_t ∂L/∂(its own vectors): summed over the ranks by the gradient all-reduce,
//   that is w_t ∂L/∂θ. A micro-batch of n examples reports L itself, which the trainer weighs by
//   its share n/N, so the task's logged loss sums to L.
// - consistency. c_b = cos(u_b, u'_b) of the two statements' AE vectors,
//   L = (1/B) Σ_b (c_b − y_b)²:
//   ∂/∂c_b = (w/B) 2 (c_b − y_b) (mse_loss of [B, 1] columns), then cosine_backward to u and u'.
// The batch mean itself is a [1, N] · [N, 1] GEMM of the per-row losses with the row weights
// (1/(B n_b) per token, or 1/B per sample), so the loss never leaves the device.
#include "train/objectives.h"

#include <string>
#include <vector>

#include "model/decoder.h"
#include "train/contrastive.h"

namespace qarac {
namespace {

constexpr int32_t kNoIgnoredTarget = -100;  // every target is a real token
constexpr double kCosineEps = 1e-12;        // as the pooling head's cosine (docs/design.md §2)

// A field's token sequences as the models take them, each with its example's global identity
// (data::example_id; none: the place in the batch), which keys its dropout masks: an example
// gets the same masks on whichever rank, in whichever micro-batch, it runs.
TokenBatch tokens_of(const data::PackedField& field, const std::vector<uint64_t>& ids, const RobertaConfig& config,
                     Device device) {
  return TokenBatch::from_packed(field.tokens, field.starts, config.pad_token_id, device, ids);
}

// The first two fields of each example as one batch of 2B sequences, field 0's then field 1's: the
// answer encoder reads reasoning's premises and consistency's statements in one pass, with twice
// the rows per GEMM and half the launches of two. Field 0 keeps its example's id and so the masks
// it would draw alone; field 1 takes data::second_field_id, masks of its own. Without ids the
// sequences are told apart by their place in the 2B.
TokenBatch paired_fields(const data::TaskBatch& batch, const RobertaConfig& config, Device device) {
  const data::PackedField& first = batch.fields[0];
  const data::PackedField& second = batch.fields[1];
  std::vector<int32_t> tokens = first.tokens;
  tokens.insert(tokens.end(), second.tokens.begin(), second.tokens.end());
  std::vector<int32_t> starts = first.starts;
  const int32_t offset = static_cast<int32_t>(first.tokens.size());
  for (size_t b = 1; b < second.starts.size(); ++b) starts.push_back(offset + second.starts[b]);
  std::vector<uint64_t> ids;
  if (!batch.ids.empty()) {
    ids = batch.ids;
    for (uint64_t id : batch.ids) ids.push_back(data::second_field_id(id));
  }
  return TokenBatch::from_packed(tokens, starts, config.pad_token_id, device, ids);
}

// Values as an accumulation-dtype tensor on `device`.
Tensor accumulation_tensor(const std::vector<double>& values, DType acc, Device device) {
  return Tensor::from_vector(values, {static_cast<int64_t>(values.size())}).to(acc).to(device);
}

// The decoder's view of a field "<s> y </s>": input "<s> y", targets "y </s>", and every target
// token's row weight 1/(B n_b) (n_b = |y| + 1 targets of sample b).
struct DecoderBatch {
  TokenBatch input;
  Tensor targets;  // i32 [T]
  Tensor weights;  // A [T]
};

DecoderBatch decoder_batch(const data::PackedField& field, const std::vector<uint64_t>& ids,
                           const RobertaConfig& config, DType acc, Device device, data::Task task,
                           const std::string& field_name) {
  const int64_t count = field.count();
  std::vector<int32_t> input, targets, starts{0};
  std::vector<double> weights;
  for (int64_t b = 0; b < count; ++b) {
    const int32_t begin = field.starts[static_cast<size_t>(b)];
    const int32_t end = field.starts[static_cast<size_t>(b) + 1];
    QARAC_INPUT_CHECK(end - begin >= 2 &&
                          field.tokens[static_cast<size_t>(begin)] == config.bos_token_id &&
                          field.tokens[static_cast<size_t>(end) - 1] == config.eos_token_id,
                      data::task_name(task), ": field '", field_name, "' of sample ", b,
                      " does not read <s> ... </s> (", end - begin,
                      " tokens); the decoder needs task streams prepared with the special tokens");
    input.insert(input.end(), field.tokens.begin() + begin, field.tokens.begin() + end - 1);
    targets.insert(targets.end(), field.tokens.begin() + begin + 1, field.tokens.begin() + end);
    weights.insert(weights.end(), static_cast<size_t>(end - begin - 1),
                   1.0 / (static_cast<double>(count) * (end - begin - 1)));
    starts.push_back(static_cast<int32_t>(input.size()));
  }
  DecoderBatch out;
  out.input = TokenBatch::from_packed(input, starts, config.pad_token_id, device, ids);
  out.targets = Tensor::from_vector(targets, {static_cast<int64_t>(targets.size())}, device);
  out.weights = accumulation_tensor(weights, acc, device);
  return out;
}

// Model application k of `task`: its own dropout masks (see objectives.h).
ForwardOptions application_of(const ForwardOptions& forward, data::Task task, uint32_t k) {
  ForwardOptions o = forward;
  o.application = 4 * static_cast<uint32_t>(task) + k;
  return o;
}

std::vector<double> host_f64(const Tensor& t) { return t.to(Device::cpu()).to(DType::f64).to_vector<double>(); }

// out [1] = Σ_i values_i weights_i, on the device.
void weighted_sum(const Tensor& values, const Tensor& weights, Tensor& out) {
  const int64_t n = values.size(0);
  Tensor out_view = out.reshape({1, 1});
  ops::gemm(values.reshape({1, n}), weights.reshape({n, 1}), out_view, false, false);
}

}  // namespace

struct Objectives::Impl {
  // One task batch in flight: what every task's function reads besides the models.
  struct Pass {
    const data::TaskBatch& batch;
    const ObjectiveOptions& options;
    bool backward;
    int64_t count, d;  // samples, hidden size
    Tensor& loss;      // the task's scalar [1]

    ForwardOptions application(uint32_t k) const { return application_of(options.forward, batch.task, k); }
  };
  using TaskFunction = void (Impl::*)(const Pass&);

  // Contrastive QA within a training step, from begin_task to the last micro-batch's run().
  struct Contrastive {
    double loss = 0;                     // L of the global batch
    std::vector<double> grad_q, grad_a;  // ∂L/∂ this rank's vectors [rows, d], micro-batch order
    int64_t rows = 0, next_row = 0;      // this rank's examples; the next micro-batch's first
    bool kept = false;                   // one micro-batch, its activations still in encoded[]
                                         // (until another task's run() reuses them)
  };

  QaracModels& models;
  QaObjective qa;
  Contrastive contrastive;
  DType dtype, acc;
  Device device;
  SentenceEncoder::Activations encoded[2];  // a task's (up to) two encoder applications
  Decoder::Activations decoded;
  Tensor pair_sum;                       // reasoning: v = AE(p0) + AE(p1) [B, d]
  Tensor grad_first, grad_second;        // d loss / d the two encoder outputs [B, d]
  Tensor grad_paired;                    // d loss / d AE's output on paired fields [2B, d]
  Tensor losses;                         // per row (A)
  Tensor cosines, grad_cosines, labels;  // consistency [B] (A)
  Tensor mean_weights;                   // 1/B [B] (A)
  Tensor task_loss[data::kTaskCount];    // each task's scalar [1] (A)

  Impl(QaracModels& m, QaObjective q)
      : models(m), qa(q), dtype(m.dtype()), acc(ops::accumulation_dtype(m.dtype())), device(m.device()) {}

  const RobertaConfig& config() const { return models.config().base; }
  void check(const data::TaskBatch& batch) const;
  const Tensor& run(const data::TaskBatch& batch, const ObjectiveOptions& options, bool backward);

  // One function per task, data::Task order (run's table).
  void encode_decode(const Pass& p);
  void question_answering(const Pass& p);
  void contrastive_question_answering(const Pass& p);
  void begin_contrastive(const std::vector<data::TaskBatch>& micro, const ForwardOptions& forward,
                         const GatherRows& gather);
  void reasoning(const Pass& p);
  void consistency(const Pass& p);

  TokenBatch field(const Pass& p, int f) const {
    return tokens_of(p.batch.fields[static_cast<size_t>(f)], p.batch.ids, config(), device);
  }
  // AE's vectors of fields 0 and 1 in one pass ([2B, d], paired_fields), as application 0.
  const Tensor& encode_pair(const Pass& p) {
    return models.answer_encoder().forward(paired_fields(p.batch, config(), device), p.application(0), encoded[0]);
  }
  // Around a model's last backward pass of the step: report its layers as they finish (arm),
  // then the model as a whole (done).
  void arm(const Pass& p, parallel::Model model, bool on);
  void done(const Pass& p, parallel::Model model);
  // The cross-entropy tasks' common part: D(v, y) against "y </s>"; loss = the batch mean.
  // Returns d loss / d v (times weight) when backward, else null.
  const Tensor* decode(const Tensor& v, const Pass& p, int field, const ForwardOptions& options);
  // loss = the mean of `losses` [B].
  void batch_mean(int64_t count, Tensor& loss);
};

void Objectives::Impl::check(const data::TaskBatch& batch) const {
  const std::vector<std::string>& names = data::task_fields(batch.task);
  const int64_t count = batch.count();
  QARAC_INPUT_CHECK(count > 0, data::task_name(batch.task), ": empty batch");
  QARAC_INPUT_CHECK(batch.ids.empty() || static_cast<int64_t>(batch.ids.size()) == count,
                    data::task_name(batch.task), ": ", batch.ids.size(), " example ids for ", count, " samples");
  QARAC_INPUT_CHECK(batch.fields.size() == names.size(), data::task_name(batch.task), ": ",
                    batch.fields.size(), " fields, expected ", names.size());
  for (size_t f = 0; f < names.size(); ++f)
    QARAC_INPUT_CHECK(batch.fields[f].count() == count, data::task_name(batch.task), ": field '",
                      names[f], "' holds ", batch.fields[f].count(), " sequences for ", count,
                      " samples");
  if (batch.task == data::Task::consistency)
    QARAC_INPUT_CHECK(static_cast<int64_t>(batch.labels.size()) == count,
                      "consistency: ", batch.labels.size(), " labels for ", count, " samples");
}

void Objectives::Impl::batch_mean(int64_t count, Tensor& loss) {
  if (!mean_weights.defined() || mean_weights.size(0) != count)
    mean_weights = accumulation_tensor(
        std::vector<double>(static_cast<size_t>(count), 1.0 / static_cast<double>(count)), acc,
        device);
  weighted_sum(losses, mean_weights, loss);
}

const Tensor* Objectives::Impl::decode(const Tensor& v, const Pass& p, int field,
                                       const ForwardOptions& options) {
  Decoder& decoder = models.decoder();
  const DecoderBatch y =
      decoder_batch(p.batch.fields[static_cast<size_t>(field)], p.batch.ids, config(), acc, device, p.batch.task,
                    data::task_fields(p.batch.task)[static_cast<size_t>(field)]);
  Tensor& logits = decoder.forward(v, y.input, options, decoded);
  ensure_tensor(losses, {y.input.tokens()}, acc, device);
  // In place: the logits become w r_t (softmax − onehot), the LM head's incoming gradient.
  ops::softmax_cross_entropy(logits, y.targets, kNoIgnoredTarget, losses,
                             p.backward ? &logits : nullptr, p.options.weight, decoder.vocab_size(),
                             &y.weights);
  weighted_sum(losses, y.weights, p.loss);
  return p.backward ? &decoder.backward(decoded, logits) : nullptr;
}

void Objectives::Impl::arm(const Pass& p, parallel::Model model, bool on) {
  if (!p.backward || !p.options.gradients_ready || !p.options.last_use[static_cast<int>(model)]) return;
  GradientsReady ready = on ? p.options.gradients_ready : GradientsReady{};
  if (model == parallel::Model::question_encoder) models.question_encoder().set_gradients_ready(std::move(ready));
  else if (model == parallel::Model::answer_encoder) models.answer_encoder().set_gradients_ready(std::move(ready));
  else if (model == parallel::Model::decoder) models.decoder().set_gradients_ready(std::move(ready));
}

void Objectives::Impl::done(const Pass& p, parallel::Model model) {
  arm(p, model, false);
  if (p.backward && p.options.backward_done) p.options.backward_done(model);
}

const Tensor& Objectives::Impl::run(const data::TaskBatch& batch, const ObjectiveOptions& options,
                                    bool backward) {
  static constexpr TaskFunction kTasks[data::kQaracTaskCount] = {
      &Impl::encode_decode, &Impl::question_answering, &Impl::reasoning, &Impl::consistency};
  QARAC_CHECK(static_cast<int>(batch.task) < data::kQaracTaskCount, "objectives: a batch of ",
              data::task_name(batch.task), " (train/rehearsal.h runs it)");
  check(batch);
  if (batch.task != data::Task::question_answering) contrastive.kept = false;
  const int task = static_cast<int>(batch.task);
  Tensor& loss = task_loss[task];
  ensure_tensor(loss, {1}, acc, device);
  (this->*kTasks[task])({batch, options, backward, batch.count(), config().hidden_size, loss});
  return loss;
}

// CE(D(AE(x), x), x </s>).
void Objectives::Impl::encode_decode(const Pass& p) {
  SentenceEncoder& answer = models.answer_encoder();
  const Tensor& v = answer.forward(field(p, 0), p.application(0), encoded[0]);
  arm(p, parallel::Model::decoder, true);
  const Tensor* dv = decode(v, p, 0, p.application(1));
  done(p, parallel::Model::decoder);
  arm(p, parallel::Model::answer_encoder, true);
  if (p.backward) answer.backward(encoded[0], *dv);
  done(p, parallel::Model::answer_encoder);
}

// MSE(QE(q) − AE(a), 0).
void Objectives::Impl::question_answering(const Pass& p) {
  if (qa.contrastive) return contrastive_question_answering(p);
  SentenceEncoder& question = models.question_encoder();
  SentenceEncoder& answer = models.answer_encoder();
  const Tensor& q = question.forward(field(p, 0), p.application(0), encoded[0]);
  const Tensor& a = answer.forward(field(p, 1), p.application(1), encoded[1]);
  ensure_tensor(losses, {p.count}, acc, device);
  ensure_tensor(grad_first, {p.count, p.d}, dtype, device);
  ensure_tensor(grad_second, {p.count, p.d}, dtype, device);
  ops::mse_loss(q, a, losses, p.backward ? &grad_first : nullptr, p.backward ? &grad_second : nullptr,
                p.options.weight / static_cast<double>(p.count));
  batch_mean(p.count, p.loss);
  arm(p, parallel::Model::question_encoder, true);
  if (p.backward) question.backward(encoded[0], grad_first);
  done(p, parallel::Model::question_encoder);
  arm(p, parallel::Model::answer_encoder, true);
  if (p.backward) answer.backward(encoded[1], grad_second);
  done(p, parallel::Model::answer_encoder);
}

void Objectives::Impl::begin_contrastive(const std::vector<data::TaskBatch>& micro, const ForwardOptions& forward,
                                         const GatherRows& gather) {
  const int64_t d = config().hidden_size;
  // This rank's rows, each q_i then a_i, so that one exchange moves both.
  std::vector<double> mine;
  for (const data::TaskBatch& m : micro) {
    check(m);
    const std::vector<double> q = host_f64(models.question_encoder().forward(
        tokens_of(m.fields[0], m.ids, config(), device), application_of(forward, m.task, 0), encoded[0]));
    const std::vector<double> a = host_f64(models.answer_encoder().forward(
        tokens_of(m.fields[1], m.ids, config(), device), application_of(forward, m.task, 1), encoded[1]));
    for (int64_t b = 0; b < m.count(); ++b) {
      mine.insert(mine.end(), q.begin() + b * d, q.begin() + (b + 1) * d);
      mine.insert(mine.end(), a.begin() + b * d, a.begin() + (b + 1) * d);
    }
  }
  int64_t first = 0;
  const std::vector<double> all = gather(mine, 2 * d, &first);
  const int64_t n = static_cast<int64_t>(all.size()) / (2 * d);
  std::vector<double> q, a;
  q.reserve(static_cast<size_t>(n * d));
  a.reserve(static_cast<size_t>(n * d));
  for (int64_t i = 0; i < n; ++i) {
    q.insert(q.end(), all.begin() + 2 * i * d, all.begin() + (2 * i + 1) * d);
    a.insert(a.end(), all.begin() + (2 * i + 1) * d, all.begin() + (2 * i + 2) * d);
  }
  std::vector<double> grad_q, grad_a;
  Contrastive& c = contrastive;
  c.loss = contrastive_loss(q, a, n, d, qa.temperature, &grad_q, &grad_a);
  c.rows = static_cast<int64_t>(mine.size()) / (2 * d);
  c.next_row = 0;
  c.grad_q.assign(grad_q.begin() + first * d, grad_q.begin() + (first + c.rows) * d);
  c.grad_a.assign(grad_a.begin() + first * d, grad_a.begin() + (first + c.rows) * d);
  c.kept = micro.size() == 1;
}

// Symmetric InfoNCE over the global batch (train/contrastive.h). Training: the loss and its
// gradients are begin_contrastive's; evaluation: those of this batch alone.
void Objectives::Impl::contrastive_question_answering(const Pass& p) {
  SentenceEncoder& question = models.question_encoder();
  SentenceEncoder& answer = models.answer_encoder();
  Contrastive& c = contrastive;
  if (!p.backward) {
    c.kept = false;
    const std::vector<double> q = host_f64(question.forward(field(p, 0), p.application(0), encoded[0]));
    const std::vector<double> a = host_f64(answer.forward(field(p, 1), p.application(1), encoded[1]));
    p.loss.copy_(accumulation_tensor({contrastive_loss(q, a, p.count, p.d, qa.temperature)}, acc, device));
    return;
  }
  QARAC_CHECK(c.next_row + p.count <= c.rows && p.batch.global_count >= p.count,
              "question_answering: a micro-batch of ", p.count, " examples beyond the ", c.rows,
              " that begin_task encoded");
  if (!c.kept) {
    question.forward(field(p, 0), p.application(0), encoded[0]);
    answer.forward(field(p, 1), p.application(1), encoded[1]);
  }
  c.kept = false;
  // options.weight is w_t times the micro-batch's share n/N of the global batch; L, a function of
  // the whole batch, takes w_t alone.
  const double w = p.options.weight * static_cast<double>(p.batch.global_count) / static_cast<double>(p.count);
  const auto rows = [&](const std::vector<double>& grad) {
    std::vector<double> out(grad.begin() + c.next_row * p.d, grad.begin() + (c.next_row + p.count) * p.d);
    for (double& x : out) x *= w;
    return Tensor::from_vector(out, {p.count, p.d}).to(dtype).to(device);
  };
  grad_first = rows(c.grad_q);
  grad_second = rows(c.grad_a);
  c.next_row += p.count;
  p.loss.copy_(accumulation_tensor({c.loss}, acc, device));
  arm(p, parallel::Model::question_encoder, true);
  question.backward(encoded[0], grad_first);
  done(p, parallel::Model::question_encoder);
  arm(p, parallel::Model::answer_encoder, true);
  answer.backward(encoded[1], grad_second);
  done(p, parallel::Model::answer_encoder);
}

// CE(D(AE(p0) + AE(p1), c), c </s>).
void Objectives::Impl::reasoning(const Pass& p) {
  const Tensor& v = encode_pair(p);
  ensure_tensor(pair_sum, {p.count, p.d}, dtype, device);
  ops::add(v.slice(0, 0, p.count), v.slice(0, p.count, 2 * p.count), pair_sum);
  arm(p, parallel::Model::decoder, true);
  const Tensor* dv = decode(pair_sum, p, 2, p.application(2));
  done(p, parallel::Model::decoder);
  arm(p, parallel::Model::answer_encoder, true);
  if (p.backward) {
    // ∂v/∂AE(p_i) = I: both halves take dv.
    ensure_tensor(grad_paired, {2 * p.count, p.d}, dtype, device);
    grad_paired.slice(0, 0, p.count).copy_(*dv);
    grad_paired.slice(0, p.count, 2 * p.count).copy_(*dv);
    models.answer_encoder().backward(encoded[0], grad_paired);
  }
  done(p, parallel::Model::answer_encoder);
}

// MSE(cos(AE(s0), AE(s1)), y).
void Objectives::Impl::consistency(const Pass& p) {
  const Tensor& u = encode_pair(p);
  const Tensor u0 = u.slice(0, 0, p.count), u1 = u.slice(0, p.count, 2 * p.count);
  ensure_tensor(cosines, {p.count}, acc, device);
  ensure_tensor(grad_cosines, {p.count}, acc, device);
  ensure_tensor(losses, {p.count}, acc, device);
  ops::cosine_forward(u0, u1, kCosineEps, cosines);
  labels = accumulation_tensor(std::vector<double>(p.batch.labels.begin(), p.batch.labels.end()), acc, device);
  Tensor grad_column = grad_cosines.reshape({p.count, 1});
  ops::mse_loss(cosines.reshape({p.count, 1}), labels.reshape({p.count, 1}), losses,
                p.backward ? &grad_column : nullptr, nullptr, p.options.weight / static_cast<double>(p.count));
  batch_mean(p.count, p.loss);
  arm(p, parallel::Model::answer_encoder, true);
  if (p.backward) {
    ensure_tensor(grad_paired, {2 * p.count, p.d}, dtype, device);
    Tensor grad_u0 = grad_paired.slice(0, 0, p.count), grad_u1 = grad_paired.slice(0, p.count, 2 * p.count);
    ops::cosine_backward(grad_cosines, u0, u1, kCosineEps, grad_u0, grad_u1);
    models.answer_encoder().backward(encoded[0], grad_paired);
  }
  done(p, parallel::Model::answer_encoder);
}

Objectives::Objectives(QaracModels& models, QaObjective qa) : impl_(std::make_unique<Impl>(models, qa)) {}
Objectives::~Objectives() = default;

void Objectives::begin_task(data::Task task, const std::vector<data::TaskBatch>& micro,
                            const ForwardOptions& forward, const GatherRows& gather) {
  if (task == data::Task::question_answering && impl_->qa.contrastive) impl_->begin_contrastive(micro, forward, gather);
}

const Tensor& Objectives::run(const data::TaskBatch& batch, const ObjectiveOptions& options) {
  return impl_->run(batch, options, /*backward=*/true);
}

const Tensor& Objectives::encoded(int k) const {
  QARAC_CHECK(k == 0 || k == 1, "objectives: encoder application ", k, " (0 or 1)");
  return impl_->encoded[k].pooling.pooled;
}

double Objectives::evaluate(const data::TaskBatch& batch) {
  const Tensor& loss = impl_->run(batch, ObjectiveOptions{}, /*backward=*/false);
  return loss.to(Device::cpu()).to(DType::f64).data<double>()[0];
}

}  // namespace qarac
