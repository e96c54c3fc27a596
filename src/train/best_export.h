// eval.best: the models as they were at the best evaluation of a held-out metric, what Hugging
// Face's Trainer keeps with metric_for_best_model. Whenever the metric the run follows beats its
// best so far (a larger accuracy or MRR, a smaller loss), the models are exported to a new
// folder that replaces <output>/best/ whole, with best.json naming the metric, its value and the
// step. It also counts the evaluations since that best, which eval.patience (Hugging Face's
// early_stopping_patience) stops the run after. Only rank 0 evaluates, so only rank 0 holds one.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace qarac {

// The held-out metrics eval.best may follow, in model.mode mlm (pretraining) or qarac.
const std::vector<std::string>& best_metric_names(bool pretraining);

class BestExport {
 public:
  // Follows `metric` (one of best_metric_names). After a --resume the best so far and the
  // evaluations since it come from the record of the earlier part (`record`: the metric's value
  // at each evaluation metrics.jsonl keeps, by step, as the uninterrupted run saw them); best.json
  // stands in for a record without the metric, and what best/ holds is said when it is not the
  // record's best (a best from after the checkpoint, of another metric, or none), unless that
  // best is of `start_step`, the step the run starts at: then the models at hand are that best's,
  // and export_again puts them there. Evaluations before `comparable_from` (of another held-out
  // evaluation than the run's: a resume changed it) count for nothing, nor does a best/ of another
  // evaluation than `evaluation` (the run's fingerprint, which best.json records; 0: unknown).
  BestExport(const std::string& output, std::string metric, const std::map<int64_t, double>& record = {},
             int64_t start_step = -1, int64_t comparable_from = 0, uint64_t evaluation = 0);

  // After the evaluation at `step`: when `metrics` beat the best so far, `write(folder)` exports
  // the models into `folder`, which then replaces <output>/best. An InputError when the
  // evaluation gave no value of the metric (its data has no candidates, nothing is decoded...).
  void consider(int64_t step, const std::map<std::string, double>& metrics,
                const std::function<void(const std::string& folder)>& write);

  // Whether best/ lacks the models of the best on record (it holds none, or an earlier best of the
  // metric) while they are those the run starts with: a run stopped while it exported them,
  // resumed from that step (a checkpoint there, or step 0 without one). export_again exports
  // them, `write` as consider's.
  bool lacks_best() const { return export_due_; }
  void export_again(const std::function<void(const std::string& folder)>& write);

  // The evaluations since the best so far (ties and NaN do not beat it), or since the first.
  int64_t evaluations_since_best() const { return since_best_; }
  // "3 evaluations have not beaten qa.selection_mrr 0.5 at step 300", for eval.patience.
  std::string describe_wait() const;

 private:
  bool beats(double value) const;
  std::string describe_best() const;  // "qa.selection_mrr 0.5 at step 300"
  // Replaces best/ with the models `write` exports and best.json of `value` at `step`.
  void write_best(int64_t step, double value, const std::function<void(const std::string& folder)>& write);

  std::string folder_, metric_;
  bool larger_is_better_;
  std::optional<double> best_;
  int64_t best_step_ = -1;
  int64_t since_best_ = 0;
  int64_t start_step_;
  uint64_t evaluation_;
  bool export_due_ = false;  // lacks_best()
};

}  // namespace qarac
