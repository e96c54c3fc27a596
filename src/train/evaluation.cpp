// The held-out evaluation of the QARAC models and its metrics (evaluation.h).
#include "train/evaluation.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <numeric>

#include "core/log.h"
#include "core/progress.h"
#include "data/shards.h"
#include "model/decoder.h"
#include "model/generate.h"
#include "train/contrastive.h"
#include "train/objectives.h"

namespace qarac {

namespace {

int64_t longest(const data::Ragged& sentences) {
  int64_t n = 0;
  for (int64_t i = 0; i < sentences.count(); ++i) n = std::max(n, sentences.length(i));
  return n;
}

using data::PackedField;
using data::Task;
using data::TaskBatch;

PackedField packed(const data::Ragged& ragged) {
  PackedField f;
  f.tokens = ragged.tokens;
  f.starts.assign(ragged.offsets.begin(), ragged.offsets.end());
  return f;
}

std::vector<std::vector<int32_t>> sequences_of(const PackedField& field, int64_t count) {
  std::vector<std::vector<int32_t>> out;
  for (int64_t b = 0; b < count; ++b)
    out.emplace_back(field.tokens.begin() + field.starts[b], field.tokens.begin() + field.starts[b + 1]);
  return out;
}

std::vector<float> host_rows(const Tensor& t) { return t.to(Device::cpu()).to(DType::f32).to_vector<float>(); }

double squared_distance(const float* x, const float* y, size_t d) {
  double sum = 0;
  for (size_t k = 0; k < d; ++k) {
    const double diff = double(x[k]) - double(y[k]);
    sum += diff * diff;
  }
  return sum;
}

const char* class_name(int c) { return c > 0 ? "entailment" : c < 0 ? "contradiction" : "neutral"; }

// What a ranking or class metric is when a distance or cosine it compared was not finite (models
// whose vectors overflow): NaN, not the figure a comparison with NaN, false whatever the vectors,
// would give (every answer ranked first).
constexpr double kUndefined = std::numeric_limits<double>::quiet_NaN();

// Greedy decoding of the targets "y </s>" of `field` from the vectors v [B, d], as qarac-generate
// decodes: every sequence starts as "<s>" and grows by its argmax token until it predicts </s> or
// has as many tokens as its target (before, each ran as many steps as the pass's longest target:
// most of the evaluation's time). The prediction is the generated text g and the </s> that ended
// it, "g </s>", and target position t is right when the prediction holds the target's token at t:
// a text that ends early leaves the target's later positions wrong, and nothing the decoder would
// produce after its </s> counts. Adds the positions right to `right`, and the target's positions
// to `total`; false, counting nothing, when the decoder's scores are not finite.
bool count_decoded_right(Decoder& decoder, const Tensor& v, const PackedField& field, int64_t count, int64_t& right,
                         int64_t& total) {
  const int32_t eos = decoder.base().config().eos_token_id;
  const std::vector<std::vector<int32_t>> full = sequences_of(field, count);
  std::vector<std::vector<int32_t>> prefixes;
  std::vector<int64_t> lengths;
  for (const auto& s : full) {
    prefixes.push_back({s.front()});  // <s>
    lengths.push_back(static_cast<int64_t>(s.size()) - 1);
  }
  bool finite = true;
  std::vector<std::vector<int32_t>> predicted = greedy_decode(decoder, v, prefixes, lengths, eos, &finite);
  if (!finite) return false;
  for (size_t b = 0; b < full.size(); ++b) {
    // Fewer tokens than steps: the decoding stopped at the </s> greedy_decode leaves out.
    if (static_cast<int64_t>(predicted[b].size()) < lengths[b]) predicted[b].push_back(eos);
    for (size_t t = 1; t < full[b].size(); ++t, ++total)
      right += t - 1 < predicted[b].size() && predicted[b][t - 1] == full[b][t];
  }
  return true;
}

// Whether examples i and j are answers of one question: the same question text and the same
// candidates (qarac-prep writes a WikiQA question's answers one after the other, each with the
// question's Label 0 sentences; two questions of one text have other sentences).
bool same_question(const std::vector<std::vector<int32_t>>& questions, const data::Candidates& candidates, int64_t i,
                   int64_t j) {
  if (questions[i] != questions[j] || candidates.size(i) != candidates.size(j)) return false;
  const data::Ragged& s = candidates.sentences;
  for (int64_t k = 0; k < candidates.size(i); ++k) {
    const int64_t x = candidates.offsets[i] + k, y = candidates.offsets[j] + k;
    if (!std::equal(s.begin(x), s.begin(x) + s.length(x), s.begin(y), s.begin(y) + s.length(y))) return false;
  }
  return true;
}

// The bounds of the passes (data::part_bounds) over sequences [b] of `ragged`.
std::vector<int64_t> pass_bounds(const data::Ragged& ragged, const PassSize& pass) {
  std::vector<int64_t> lengths;
  for (int64_t i = 0; i < ragged.count(); ++i) lengths.push_back(ragged.length(i));
  return data::part_bounds(lengths, pass.tokens, pass.examples);
}

// Which of the n answers are right for each question: its own, and every answer of the same text
// as an answer of the same question (WikiQA: one example per Label 1 row, so a question with two
// answers is two examples; a sentence may answer two questions). right[i] lists them for i.
std::vector<std::vector<int64_t>> right_answers(const PackedField& questions, const PackedField& answers, int64_t n) {
  std::map<std::vector<int32_t>, int64_t> question_ids, answer_ids;
  std::vector<int64_t> qid, aid;
  for (const std::vector<int32_t>& s : sequences_of(questions, n))
    qid.push_back(question_ids.emplace(s, static_cast<int64_t>(question_ids.size())).first->second);
  for (const std::vector<int32_t>& s : sequences_of(answers, n))
    aid.push_back(answer_ids.emplace(s, static_cast<int64_t>(answer_ids.size())).first->second);
  std::vector<std::vector<bool>> texts_of(question_ids.size(), std::vector<bool>(answer_ids.size(), false));
  for (int64_t i = 0; i < n; ++i) texts_of[qid[i]][aid[i]] = true;
  std::vector<std::vector<int64_t>> right(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      if (texts_of[qid[i]][aid[j]]) right[i].push_back(j);
  return right;
}

// qa.answer_norm and qa.answer_spread, the scale retrieval works at (how long the answer vectors
// are, how far apart two different answers lie: the MSE objective can shrink both, and retrieval
// needs the second well above the question-answer distance), and qa.retrieval_accuracy: how
// often a question's nearest answer of the n is a right one (right_answers). As in selection, a
// wrong answer as near as the nearest right one counts against it: identical sentences, which
// f32 encodes to vectors that differ in their last bits or not at all, no longer count right or
// wrong by their order in the file. q and a hold n rows each.
void add_retrieval_metrics(const std::vector<float>& q, const std::vector<float>& a, int64_t n,
                           const std::vector<std::vector<int64_t>>& right_of, EvalResult& result) {
  const size_t d = q.size() / static_cast<size_t>(n);
  double norm = 0, spread = 0;
  for (int64_t i = 0; i < n; ++i) {
    double n2 = 0;
    for (size_t k = 0; k < d; ++k) n2 += double(a[i * d + k]) * a[i * d + k];
    norm += std::sqrt(n2);
    // Over every pair, not a sample: WikiQA lists a question's answers together, so neighbours in
    // the file are not two answers drawn at random.
    for (int64_t j = i + 1; j < n; ++j) spread += std::sqrt(squared_distance(&a[i * d], &a[j * d], d));
  }
  result.metrics["qa.answer_norm"] = norm / static_cast<double>(n);
  result.metrics["qa.answer_spread"] = n > 1 ? spread / (static_cast<double>(n) * static_cast<double>(n - 1) / 2) : 0;
  int64_t right = 0;
  double chance = 0;
  bool finite = true;
  std::vector<bool> is_right(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    std::fill(is_right.begin(), is_right.end(), false);
    for (int64_t j : right_of[i]) is_right[j] = true;
    double nearest_right = std::numeric_limits<double>::infinity(), nearest_wrong = nearest_right;
    for (int64_t j = 0; j < n; ++j) {
      const double dist = squared_distance(&q[i * d], &a[j * d], d);
      finite = finite && std::isfinite(dist);
      double& nearest = is_right[j] ? nearest_right : nearest_wrong;
      nearest = std::min(nearest, dist);
    }
    right += nearest_right < nearest_wrong;
    chance += static_cast<double>(right_of[i].size()) / static_cast<double>(n);
  }
  result.metrics["qa.retrieval_accuracy"] = finite ? static_cast<double>(right) / static_cast<double>(n) : kUndefined;
  result.metrics["qa.retrieval_chance"] = chance / static_cast<double>(n);
}

// cs.accuracy and cs.confusion.<gold>.<predicted>: the class of each pair's cosine
// (consistency_class) against its label. s0 and s1 hold a row per label.
void add_consistency_metrics(const std::vector<float>& s0, const std::vector<float>& s1,
                             const std::vector<float>& labels, EvalResult& result) {
  const size_t n = labels.size(), d = s0.size() / n;
  std::map<std::string, double> confusion;
  const auto cell = [](int gold, int predicted) {
    return std::string("cs.confusion.") + class_name(gold) + "." + class_name(predicted);
  };
  for (int gold : {1, 0, -1})
    for (int predicted : {1, 0, -1}) confusion[cell(gold, predicted)] = 0;
  int64_t right = 0;
  bool finite = true;
  for (size_t i = 0; i < n; ++i) {
    double dot = 0, n0 = 0, n1 = 0;
    for (size_t k = 0; k < d; ++k) {
      dot += double(s0[i * d + k]) * s1[i * d + k];
      n0 += double(s0[i * d + k]) * s0[i * d + k];
      n1 += double(s1[i * d + k]) * s1[i * d + k];
    }
    const double cosine = dot / std::max(std::sqrt(n0 * n1), 1e-12);
    finite = finite && std::isfinite(cosine);
    const int predicted = consistency_class(cosine);
    const int gold = static_cast<int>(labels[i]);
    right += predicted == gold;
    confusion[cell(gold, predicted)] += 1;
  }
  result.metrics["cs.accuracy"] = finite ? static_cast<double>(right) / static_cast<double>(n) : kUndefined;
  for (auto& [name, count] : confusion) result.metrics[name] = finite ? count : kUndefined;
}

}  // namespace

std::string metric_lines(const EvalResult& result) {
  std::string text;
  char value[64];
  for (const auto& [name, x] : result.metrics) {
    // Told by name, as launch/metrics-table.sh tells them: by value, an accuracy of 0 or 1 was
    // printed as a count ("rs.token_accuracy 0").
    const bool count = name.find(".confusion.") != std::string::npos ||
                       (name.size() > 10 && name.compare(name.size() - 10, 10, "_questions") == 0);
    std::snprintf(value, sizeof value, count ? "%.0f" : "%.6f", x);
    text += name + " " + value + "\n";
  }
  return text;
}

int consistency_class(double cosine) { return cosine > 1.0 / 3 ? 1 : cosine < -1.0 / 3 ? -1 : 0; }

void add_selection_metrics(SentenceEncoder& answer_encoder, const data::Candidates& candidates,
                           const std::vector<std::vector<int32_t>>& questions, const std::vector<float>& q,
                           const std::vector<float>& a, int64_t n, size_t d, const RobertaConfig& config,
                           Device device, const PassSize& pass, EvalResult& result) {
  QARAC_CHECK(static_cast<int64_t>(questions.size()) >= n && candidates.count() >= n, "add_selection_metrics: ", n,
              " examples, ", questions.size(), " questions, candidates of ", candidates.count());
  const data::Ragged& sentences = candidates.sentences;
  std::vector<float> c;  // AE of every candidate sentence [sentences, d]
  SentenceEncoder::Activations acts;
  const std::vector<int64_t> bounds = pass_bounds(sentences, pass);
  for (size_t i = 0; i + 1 < bounds.size(); ++i) {
    std::vector<std::vector<int32_t>> seqs;
    for (int64_t s = bounds[i]; s < bounds[i + 1]; ++s)
      seqs.emplace_back(sentences.begin(s), sentences.begin(s) + sentences.length(s));
    const std::vector<float> v = host_rows(answer_encoder.forward(  // no dropout, as the answers
        TokenBatch::from_sequences(seqs, config.pad_token_id, device), ForwardOptions{}, acts));
    c.insert(c.end(), v.begin(), v.end());
  }
  // Per question, as WikiQA's MRR and MAP are published: its k-th nearest answer ranks k + the
  // candidates at most as far from QE(q) as it is. A tie counts against the answer, so a model that
  // maps every sentence to one point ranks each question's answers last, not first. The question's
  // reciprocal rank is its nearest answer's; its average precision the mean over its answers of
  // k / rank.
  int64_t ranked = 0, first = 0;
  double reciprocal = 0, precision = 0, chance = 0;
  bool finite = true;
  std::vector<double> to_answers, to_candidates;
  for (int64_t begin = 0, end = 0; begin < n; begin = end) {
    for (end = begin + 1; end < n && same_question(questions, candidates, begin, end);) ++end;
    if (candidates.size(begin) == 0) continue;  // its answers alone are first whatever the model
    ++ranked;
    chance += static_cast<double>(end - begin) / static_cast<double>(end - begin + candidates.size(begin));
    // QE(q) of the question's first example: the others' are the same text's.
    const float* question = &q[begin * d];
    to_answers.clear();
    to_candidates.clear();
    for (int64_t i = begin; i < end; ++i) to_answers.push_back(squared_distance(question, &a[i * d], d));
    for (int64_t j = candidates.offsets[begin]; j < candidates.offsets[begin + 1]; ++j)
      to_candidates.push_back(squared_distance(question, &c[j * d], d));
    for (const std::vector<double>* v : {&to_answers, &to_candidates})
      finite = finite && std::all_of(v->begin(), v->end(), [](double x) { return std::isfinite(x); });
    if (!finite) continue;  // the ranking metrics are undefined (a NaN sorts nowhere); chance is not
    std::sort(to_answers.begin(), to_answers.end());
    std::sort(to_candidates.begin(), to_candidates.end());
    double question_precision = 0;
    for (size_t k = 0; k < to_answers.size(); ++k) {
      const auto before = std::upper_bound(to_candidates.begin(), to_candidates.end(), to_answers[k]);
      const double rank = static_cast<double>(k + 1 + (before - to_candidates.begin()));
      if (k == 0) {
        first += rank == 1;
        reciprocal += 1 / rank;
      }
      question_precision += static_cast<double>(k + 1) / rank;
    }
    precision += question_precision / static_cast<double>(to_answers.size());
  }
  result.metrics["qa.selection_accuracy"] = finite ? static_cast<double>(first) / static_cast<double>(ranked) : kUndefined;
  result.metrics["qa.selection_mrr"] = finite ? reciprocal / static_cast<double>(ranked) : kUndefined;
  result.metrics["qa.selection_map"] = finite ? precision / static_cast<double>(ranked) : kUndefined;
  result.metrics["qa.selection_chance"] = chance / static_cast<double>(ranked);
  result.metrics["qa.selection_questions"] = static_cast<double>(ranked);
}

MlmMasking mlm_masking(const data::Tokenizer& tokenizer, uint64_t seed, double probability) {
  MlmMasking m;
  m.probability = probability;
  m.mask_id = tokenizer.mask_id();
  m.special_ids = {tokenizer.bos_id(), tokenizer.pad_id(), tokenizer.eos_id(), tokenizer.unk_id(),
                   tokenizer.mask_id()};
  m.seed = seed;
  return m;
}

QaracEvaluator::QaracEvaluator(const EvalOptions& options) : options_(options) {
  std::error_code ec;
  QARAC_INPUT_CHECK(std::filesystem::is_directory(options.data_dir, ec), options.data_dir,
                    std::filesystem::exists(options.data_dir, ec) ? ": is not a directory" : ": does not exist",
                    " (expected a folder of held-out task streams from qarac-prep: <task>.h5)");
  data::check_publishing_finished(options.data_dir);
  // The rehearsal's held-out measure is forgetting.mlm_loss, on encode_decode's text.
  std::string missing;
  for (int t = 0; t < data::kQaracTaskCount; ++t) {
    const Task task = static_cast<Task>(t);
    const std::filesystem::path path = std::filesystem::path(options.data_dir) / (std::string(data::task_name(task)) + ".h5");
    // A task without a held-out stream is not evaluated, which is said; a link to one that is
    // gone, or a path that cannot be looked at, is left to the reader, which says why (the
    // task's evaluation must not vanish unsaid).
    if (std::filesystem::symlink_status(path, ec).type() == std::filesystem::file_type::not_found) {
      missing += (missing.empty() ? "" : ", ") + path.filename().string();
      continue;
    }
    const data::TaskStreamFile file(path.string());
    file.check_holds(task, std::string("remove it to leave task ") + data::task_name(task) + " unevaluated");
    QARAC_INPUT_CHECK(options.tokenizer_hash.empty() || file.info().tokenizer_hash == options.tokenizer_hash,
                      path.string(), ": made with tokenizer ", file.info().tokenizer_hash, ", but ",
                      options.tokenizer_source, " with ", options.tokenizer_hash,
                      " (rerun qarac-prep with one tokenizer)");
    // The whole stream checked against its checksum, a block at a time: the examples below are
    // read in part, which checks none (a damaged held-out file was evaluated as it read).
    file.verify();
    const int64_t n = std::min(options.max_examples, file.examples());
    TaskBatch batch;
    batch.task = task;
    for (int64_t i = 0; i < n; ++i) batch.examples.push_back(i);
    for (size_t f = 0; f < data::task_fields(task).size(); ++f) {
      // Counted from the offsets before the tokens are read: the packed offsets are int32, as the
      // loader's (which checks its global batches the same way).
      const std::vector<int64_t> lengths = file.field_lengths(static_cast<int>(f), 0, n);
      const int64_t tokens = std::accumulate(lengths.begin(), lengths.end(), int64_t{0});
      QARAC_INPUT_CHECK(tokens <= std::numeric_limits<int32_t>::max(), path.string(), ": the first ", n,
                        " examples' '", data::task_fields(task)[f], "' hold ", tokens, " tokens, more than the ",
                        std::numeric_limits<int32_t>::max(), " the evaluation's int32 offsets address: lower eval.examples");
      batch.fields.push_back(packed(file.read_field(static_cast<int>(f), 0, n)));
    }
    if (data::task_has_label(task))
      for (int8_t label : file.read_labels(0, n)) batch.labels.push_back(label);
    if (task == Task::question_answering) {
      if (file.has_candidates()) candidates_ = file.read_candidates(0, n);
      if (candidates_.sentences.count() == 0)
        log::info("evaluation: ", path.string(), ": no candidate sentences in its first ", n,
                  " examples (WikiQA's Label 0 rows; files of older qarac-preps have none), so no qa.selection_*");
    }
    batches_.push_back(std::move(batch));
    paths_.push_back(path.string());
  }
  QARAC_INPUT_CHECK(!batches_.empty(), options.data_dir, ": no held-out task stream (",
                    "encode_decode.h5, question_answering.h5, reasoning.h5, consistency.h5)");
  // Before the warning below: a stream the models cannot read is the one thing to say.
  if (options.max_tokens > 0) check_lengths(options.max_tokens);
  if (!missing.empty())
    log::warn_shared("evaluation: ", options.data_dir, " holds no ", missing, ": those tasks are not evaluated");
  Hash64 hash;
  for (const TaskBatch& batch : batches_) {
    const int32_t task = static_cast<int32_t>(batch.task);
    hash.bytes(&task, sizeof task);
    for (const data::PackedField& field : batch.fields) {
      fingerprint_values(hash, field.tokens);
      fingerprint_values(hash, field.starts);
    }
    fingerprint_values(hash, batch.labels);
  }
  fingerprint_values(hash, candidates_.sentences.tokens);
  fingerprint_values(hash, candidates_.sentences.offsets);
  fingerprint_values(hash, candidates_.offsets);
  // The temperature acts on qa.loss only under the contrastive objective.
  const double numbers[] = {static_cast<double>(options.max_decoded), options.qa_objective.contrastive ? 1.0 : 0.0,
                            options.qa_objective.contrastive ? options.qa_objective.temperature : 0.0};
  hash.bytes(numbers, sizeof numbers);
  fingerprint_masking(hash, options.masking);
  fingerprint_ = hash.value();
}

void fingerprint_masking(Hash64& hash, const std::optional<MlmMasking>& masking) {
  const double settings[] = {masking ? 1.0 : 0.0, masking ? masking->probability : 0.0,
                             masking ? static_cast<double>(masking->mask_id) : 0.0,
                             masking ? static_cast<double>(masking->seed) : 0.0};
  hash.bytes(settings, sizeof settings);
  if (masking) fingerprint_values(hash, masking->special_ids);
}

void QaracEvaluator::check_lengths(int64_t max_tokens) const {
  for (size_t i = 0; i < batches_.size(); ++i) {
    for (size_t f = 0; f < batches_[i].fields.size(); ++f)
      QARAC_INPUT_CHECK(batches_[i].fields[f].max_length() <= max_tokens, paths_[i], ": its ",
                        data::task_fields(batches_[i].task)[f], " field holds a sequence of ",
                        batches_[i].fields[f].max_length(), " tokens, more than the ", max_tokens,
                        " the models read (rerun qarac-prep with --max-length ", max_tokens, ")");
    if (batches_[i].task == Task::question_answering)
      QARAC_INPUT_CHECK(longest(candidates_.sentences) <= max_tokens, paths_[i],
                        ": a candidate sentence holds ", longest(candidates_.sentences), " tokens, more than the ",
                        max_tokens, " the models read (rerun qarac-prep with --max-length ", max_tokens, ")");
  }
}

// Every model runs a pass at a time (options_.pass): a loss that is a mean over examples is the
// passes' means weighted by their examples; contrastive QA's, a function of every vector, is
// computed once they are all known. The vectors the metrics compare, and those decoded, are the
// ones the objectives computed their losses from (Objectives::encoded): nothing is encoded twice.
EvalResult QaracEvaluator::evaluate(const EvalContext& context) {
  QaracModels& models = context.models;
  const RobertaConfig& config = models.config().base;
  const int64_t d = config.hidden_size;
  check_lengths(config.max_tokens());
  EvalResult result;
  Objectives objectives(models, options_.qa_objective);
  // A long evaluation (a test split under qarac-eval, a large eval.examples, which the other
  // ranks of a run wait for) says how far it has got; each task's examples count once.
  int64_t examples = 0;
  for (const TaskBatch& batch : batches_) examples += batch.count();
  Progress progress("evaluation", "examples evaluated", examples);
  for (const TaskBatch& batch : batches_) {
    const std::string task = data::task_short_name(batch.task);
    const int64_t n = batch.count();
    const bool qa = batch.task == Task::question_answering, consistency = batch.task == Task::consistency;
    const bool reasoning = batch.task == Task::reasoning;
    // The decoder tasks' token accuracy is of their first eval.decoded examples.
    const int64_t to_decode = qa || consistency ? 0 : std::min(n, options_.max_decoded);
    double loss = 0;
    std::vector<float> first, second;  // QA: QE(q), AE(a); consistency: AE(s0), AE(s1); [n, d]
    int64_t decoded = 0, right = 0, total = 0;  // total -1: vectors or scores that are not finite
    for (const TaskBatch& pass : batch.split(options_.pass.tokens, options_.pass.examples)) {
      const int64_t count = pass.count();
      loss += objectives.evaluate(pass) * static_cast<double>(count) / static_cast<double>(n);
      // Reasoning and consistency encode both fields in one pass of AE: field 0's rows first.
      const Tensor& u = objectives.encoded(0);
      if (qa || consistency) {
        const std::vector<float> rows = host_rows(u);
        const auto half = rows.begin() + count * d;
        first.insert(first.end(), rows.begin(), half);
        const std::vector<float> answers = qa ? host_rows(objectives.encoded(1)) : std::vector<float>(half, rows.end());
        second.insert(second.end(), answers.begin(), answers.end());
      } else if (decoded < to_decode && total >= 0) {
        // The vector of x (encode_decode) or of p0 + p1 (reasoning).
        const int64_t k = std::min(count, to_decode - decoded);
        Tensor v = u.slice(0, 0, k).clone();
        if (reasoning) ops::add(v, u.slice(0, count, count + k), v);
        decoded += k;
        const std::vector<float> host = host_rows(v);
        if (!std::all_of(host.begin(), host.end(), [](float x) { return std::isfinite(x); }) ||
            !count_decoded_right(models.decoder(), v, pass.fields[reasoning ? 2 : 0], k, right, total))
          total = -1;
      }
      progress.add(count);
    }
    if (qa && options_.qa_objective.contrastive)  // each pass's InfoNCE had its own answers alone
      loss = contrastive_loss(std::vector<double>(first.begin(), first.end()),
                              std::vector<double>(second.begin(), second.end()), n, d,
                              options_.qa_objective.temperature);
    result.metrics[task + ".loss"] = loss;
    if (qa) {
      add_retrieval_metrics(first, second, n, right_answers(batch.fields[0], batch.fields[1], n), result);
      if (candidates_.sentences.count() > 0)
        add_selection_metrics(models.answer_encoder(), candidates_, sequences_of(batch.fields[0], n), first, second, n,
                              static_cast<size_t>(d), config, models.device(), options_.pass, result);
    } else if (consistency) {
      add_consistency_metrics(first, second, batch.labels, result);
    } else if (to_decode > 0) {  // none decoded (eval.decoded 0): no token accuracy, rather than 0
      result.metrics[task + ".token_accuracy"] =
          total > 0 ? static_cast<double>(right) / static_cast<double>(total) : total < 0 ? kUndefined : 0.0;
    }
  }
  add_forgetting(context, result);
  return result;
}

// The forgetting monitor on the held-out text: fixed masks (step 0), so evaluations compare.
void QaracEvaluator::add_forgetting(const EvalContext& context, EvalResult& result) {
  const auto text = std::find_if(batches_.begin(), batches_.end(),
                                 [](const TaskBatch& b) { return b.task == Task::encode_decode; });
  if (!options_.masking || text == batches_.end()) return;
  if (context.base_lm_head.empty()) {
    if (!warned_no_lm_head_)
      log::warn("evaluation: model.base has no MLM head (lm_head.*), so no forgetting monitor (forgetting.mlm_loss); "
                "give a base saved with its head (RobertaForMaskedLM) to measure forgetting");
    warned_no_lm_head_ = true;
    return;
  }
  SentenceEncoder& encoder = context.models.answer_encoder();
  MaskedLM monitor(encoder.base());
  monitor.head().load(context.base_lm_head, "the base model's lm_head");
  const MaskedTokens masked = mask_tokens(sequences_of(text->fields[0], text->count()),
                                          context.models.config().base.vocab_size, *options_.masking, /*step=*/0);
  std::vector<int64_t> lengths;
  for (const std::vector<int32_t>& sequence : masked.inputs) lengths.push_back(static_cast<int64_t>(sequence.size()));
  result.metrics["forgetting.mlm_loss"] = monitor.loss_in_parts(
      masked, data::part_bounds(lengths, options_.pass.tokens, options_.pass.examples), ForwardOptions{});
}

}  // namespace qarac
