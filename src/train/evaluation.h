// Held-out evaluation of the QARAC models (docs/design.md §6), run by the trainer every eval.every
// steps and at the end:
//   <task>.loss              each objective's loss on held-out examples (contrastive QA: over them all)
//   qa.retrieval_accuracy    QE(q)'s nearest answer vector (Euclidean, as the MSE objective
//                            measures) among all held-out AE(a) is a right one: its own answer, or
//                            an answer of the same text as one of the same question's (WikiQA's
//                            questions with several answers). A wrong answer as near counts against
//   qa.retrieval_chance      the accuracy of a random pick among them, mean right answers/n
//   qa.selection_accuracy, qa.selection_mrr, qa.selection_map
//                            WikiQA's answer-sentence selection, per question as the literature
//                            reports it: a question's sentences (its answers, WikiQA's Label 1
//                            rows, and its candidates, the Label 0 rows) ranked by the same
//                            distance; the share of questions whose first sentence is an answer,
//                            the mean over questions of 1/rank of the first answer (MRR), and of
//                            the mean over its answers of k/rank of the k-th (MAP). A candidate as
//                            near as an answer ranks before it
//   qa.selection_chance      the accuracy of a random pick, mean answers/sentences over questions
//   qa.selection_questions   the questions ranked: those with at least one candidate (answers
//                            alone are trivially first; WikiQA's questions without an answer are
//                            no examples). A question's examples are its answers, one after the
//                            other in the file (same question text, same candidates). No
//                            qa.selection_* when none has candidates, e.g. streams of a qarac-prep
//                            that kept no candidates
//   qa.answer_norm, qa.answer_spread
//                            mean ‖AE(a)‖ and mean distance between two different answers' vectors
//                            (over every pair; 0 with one answer)
//   cs.accuracy, cs.confusion.<gold>.<predicted>
//                            cos(AE(s0), AE(s1)) read as entailment above 1/3, contradiction
//                            below -1/3, neutral between
//   ed.token_accuracy, rs.token_accuracy
//                            greedy decoding from the vector, position by position against
//                            the target "y </s>"
//   forgetting.mlm_loss      the answer encoder's base scored with the base checkpoint's own MLM
//                            head on held-out text, masks fixed across evaluations
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/hash.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "model/masked_lm.h"
#include "model/qarac.h"
#include "train/objectives.h"

namespace qarac {

// ---- The trainer's evaluation hook -----------------------------------------------------------
// Evaluations (QA retrieval accuracy, consistency accuracy and confusion, token accuracy, the
// forgetting monitor) implement Evaluator; the trainer calls it every eval.every steps and at the
// end, and logs its metrics to metrics.jsonl as one line with "eval": true.
struct EvalResult {
  std::map<std::string, double> metrics;  // e.g. "qa.retrieval_accuracy", "forgetting.mlm_loss"
};

// "name value" lines in name order, as qarac-embed --rank and qarac-eval print them: a count
// (cs.confusion.*, qa.selection_questions) as a whole number, the rest with six decimals (an
// accuracy of 1 as 1.000000); nan where not finite.
std::string metric_lines(const EvalResult& result);

struct EvalContext {
  QaracModels& models;
  const TensorMap& base_lm_head;  // the base checkpoint's MLM head ("dense.weight", ...)
};

class Evaluator {
 public:
  virtual ~Evaluator() = default;
  // Runs without gradients; must leave the models' parameters as they were.
  virtual EvalResult evaluate(const EvalContext& context) = 0;
  // hash64 of what the evaluations measure on (the held-out examples and the settings that change
  // a metric), so that a resume can tell whether its evaluations compare with the earlier part's:
  // checkpoints record it. 0: not known.
  virtual uint64_t fingerprint() const { return 0; }
};

// Add to an evaluation's fingerprint: a vector (its size, then its values), and the masking of a
// masked-LM measure (none included).
template <class T>
void fingerprint_values(Hash64& hash, const std::vector<T>& values) {
  const uint64_t n = values.size();
  hash.bytes(&n, sizeof n);
  hash.bytes(values.data(), n * sizeof(T));
}
void fingerprint_masking(Hash64& hash, const std::optional<MlmMasking>& masking);

// What one forward pass of an evaluation holds: at most `examples` sequences (examples of a task)
// and, when tokens > 0, at most that many tokens (a longer example makes a pass alone). However
// many examples an evaluation has, its memory is that of one pass.
struct PassSize {
  int64_t examples = 64;  // eval.batch (qarac-embed's --batch)
  int64_t tokens = 0;     // train.micro_tokens: no pass larger than a training micro-batch
};

struct EvalOptions {
  std::string data_dir;         // held-out task streams (<task>.h5, as qarac-prep writes them)
  int64_t max_examples = 256;   // per task, the first ones of each file
  PassSize pass;
  int64_t max_decoded = 64;     // examples decoded greedily per decoder task
  std::optional<MlmMasking> masking;  // the forgetting monitor; off without the tokenizer's ids
  QaObjective qa_objective;           // what qa.loss measures: the training's objective
  std::string tokenizer_hash;         // non-empty: every held-out stream must come from it,
  std::string tokenizer_source;       // what has it, named in errors: "the training data (FILE)"
  int64_t max_tokens = 0;  // > 0: the models' (RobertaConfig::max_tokens), streams checked as read
};

// The consistency label cos(AE(s0), AE(s1)) stands for, as the consistency objective reads it:
// > 1/3 entailment (+1), < -1/3 contradiction (-1), neutral (0) between.
int consistency_class(double cosine);

// BERT masking with the tokenizer's <mask> and special tokens.
MlmMasking mlm_masking(const data::Tokenizer& tokenizer, uint64_t seed, double probability = 0.15);

// WikiQA's answer-sentence selection (qa.selection_* above) for the QE(q) `q` and AE(a) `a` of
// the first n examples [n, d] (host, f32), with their question texts, at least one of which has
// candidates: each question's answers and candidates ranked by distance to QE(q), the candidates
// encoded by `answer_encoder` in passes of `pass`. Shared by the evaluator and qarac-embed --rank.
void add_selection_metrics(SentenceEncoder& answer_encoder, const data::Candidates& candidates,
                           const std::vector<std::vector<int32_t>>& questions, const std::vector<float>& q,
                           const std::vector<float>& a, int64_t n, size_t d, const RobertaConfig& config,
                           Device device, const PassSize& pass, EvalResult& result);

class QaracEvaluator : public Evaluator {
 public:
  // Reads the held-out examples once: InputError when data_dir has none of the task files, or
  // one holds another task or comes from another tokenizer than options.tokenizer_hash. A
  // sequence longer than the models read is an InputError naming its file, here when
  // options.max_tokens is set, else at evaluate().
  explicit QaracEvaluator(const EvalOptions& options);
  EvalResult evaluate(const EvalContext& context) override;
  uint64_t fingerprint() const override { return fingerprint_; }

 private:
  void check_lengths(int64_t max_tokens) const;
  // forgetting.mlm_loss: the base's MLM head over the answer encoder's base, on the held-out text.
  void add_forgetting(const EvalContext& context, EvalResult& result);

  EvalOptions options_;
  std::vector<data::TaskBatch> batches_;  // one per task found, all its examples
  std::vector<std::string> paths_;        // the file of each batch
  data::Candidates candidates_;           // question_answering's examples', when its file has them
  bool warned_no_lm_head_ = false;        // the forgetting monitor cannot run: said once
  uint64_t fingerprint_ = 0;
};

}  // namespace qarac
