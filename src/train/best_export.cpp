// eval.best's export of the best models and the count eval.patience stops on (best_export.h).
#include "train/best_export.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/log.h"
#include "io/hf_export.h"

namespace qarac {

namespace fs = std::filesystem;

const std::vector<std::string>& best_metric_names(bool pretraining) {
  static const std::vector<std::string> mlm = {"mlm.loss"};
  static const std::vector<std::string> qarac = {
      "ed.loss",           "qa.loss",           "rs.loss",           "cs.loss",
      "ed.token_accuracy", "rs.token_accuracy", "qa.retrieval_accuracy", "qa.selection_accuracy",
      "qa.selection_mrr",  "qa.selection_map",  "cs.accuracy",       "forgetting.mlm_loss"};
  return pretraining ? mlm : qarac;
}

BestExport::BestExport(const std::string& output, std::string metric, const std::map<int64_t, double>& record,
                       int64_t start_step, int64_t comparable_from, uint64_t evaluation)
    : folder_((fs::path(output) / "best").string()),
      metric_(std::move(metric)),
      start_step_(start_step),
      evaluation_(evaluation) {
  const std::string suffix = "loss";
  larger_is_better_ = metric_.size() < suffix.size() ||
                      metric_.compare(metric_.size() - suffix.size(), suffix.size(), suffix) != 0;
  for (const auto& [step, value] : record) {
    if (step < comparable_from) continue;
    if (beats(value)) {
      best_ = value;
      best_step_ = step;
      since_best_ = 0;
    } else {
      ++since_best_;
    }
  }
  // What best/ holds: best.json names it.
  const fs::path note = fs::path(folder_) / "best.json";
  std::error_code ec;
  // The record's best is of the step the run starts at, whose models are at hand: where best/ has
  // none or older ones (a run stopped while it exported them), export_again puts them there.
  const bool at_start = best_ && best_step_ == start_step_;
  if (!fs::exists(note, ec)) {
    export_due_ = at_start;
    if (best_ && !export_due_)
      log::warn(folder_, ": none, or no best.json; the next evaluation that beats ", describe_best(), " is kept");
    return;
  }
  std::string held_metric;
  double held_value = 0;
  int64_t held_step = -1;
  uint64_t held_evaluation = 0;  // 0: a best.json from before the fingerprint
  try {
    check_input_file(note.string());  // a FIFO would hold the start in its open for good
    std::ifstream in(note);
    const nlohmann::json j = nlohmann::json::parse(in);
    held_metric = j.at("metric").get<std::string>();
    held_value = j.at("value").get<double>();
    held_step = j.at("step").get<int64_t>();
    held_evaluation = std::stoull(j.value("evaluation", std::string("0")), nullptr, 16);
  } catch (const std::exception& e) {  // JSON's, and a fingerprint that is not hexadecimal
    log::warn(note.string(), ": unreadable (", e.what(), "); the next evaluation that beats the best replaces ",
              folder_);
    return;
  }
  if (held_step < comparable_from || (held_evaluation != 0 && evaluation_ != 0 && held_evaluation != evaluation_)) {
    export_due_ = at_start;
    if (!export_due_)
      log::warn("eval.best: ", folder_, " holds ", held_metric, " ", held_value, " at step ", held_step,
                ", of another held-out evaluation than the run's: the next evaluation",
                best_ ? " that beats " + describe_best() : std::string(), " replaces it");
    return;
  }
  if (record.empty() && held_metric == metric_) {
    // The record of the earlier part is lost (metrics.jsonl removed): best.json is all there is.
    best_ = held_value;
    best_step_ = held_step;
    log::warn("eval.best: no evaluation of ", metric_, " on record; ", describe_best(),
              " from best.json, eval.patience counts from here");
  } else if (!best_ || held_metric != metric_ || held_step != best_step_) {
    // A later best (one after the checkpoint) or another metric's is kept until beaten.
    export_due_ = at_start && held_metric == metric_ && held_step < start_step_;
    if (!export_due_)
      log::warn(folder_, ": holds ", held_metric, " ", held_value, " at step ", held_step, ", not the best on record (",
                best_ ? describe_best() : "none", "); the next evaluation that beats that replaces it");
  }
  if (best_) log::info("eval.best: ", describe_best(), " so far; ", since_best_, " evaluation", since_best_ == 1 ? "" : "s",
                       " since");
}

bool BestExport::beats(double value) const {
  // NaN is never the best; a tie keeps the earlier models.
  return std::isfinite(value) && (!best_ || (larger_is_better_ ? value > *best_ : value < *best_));
}

std::string BestExport::describe_best() const {
  return best_ ? detail::concat(metric_, " ", *best_, " at step ", best_step_) : "";
}

std::string BestExport::describe_wait() const {
  const std::string evaluations = detail::concat(since_best_, since_best_ == 1 ? " evaluation" : " evaluations");
  if (!best_) return detail::concat(evaluations, " gave no finite ", metric_);
  return detail::concat(evaluations, since_best_ == 1 ? " has" : " have", " not beaten ", describe_best());
}

void BestExport::consider(int64_t step, const std::map<std::string, double>& metrics,
                          const std::function<void(const std::string& folder)>& write) {
  const auto it = metrics.find(metric_);
  if (it == metrics.end()) {
    std::vector<std::string> given;
    for (const auto& [name, value] : metrics)
      if (name.find(".confusion.") == std::string::npos) given.push_back(name);
    throw InputError(detail::concat("eval.best: the evaluation at step ", step, " gave no ", metric_,
                                     " (it gave ", joined(given), ")"));
  }
  const double value = it->second;
  if (!beats(value)) {
    ++since_best_;
    return;
  }
  write_best(step, value, write);
  since_best_ = 0;
  log::info("eval.best: ", metric_, " ", value, " at step ", step, ", the best so far: models exported to ", folder_);
}

void BestExport::export_again(const std::function<void(const std::string& folder)>& write) {
  write_best(best_step_, *best_, write);
  log::info("eval.best: ", describe_best(), ", the best on record, which best/ did not hold (a run stopped while it ",
            "exported them): models exported again to ", folder_);
}

void BestExport::write_best(int64_t step, double value, const std::function<void(const std::string& folder)>& write) {
  io::write_folder(folder_, [&](const fs::path& temp) {
    write(temp.string());
    nlohmann::json note = {{"metric", metric_}, {"value", value}, {"step", step}};
    if (evaluation_ != 0) {
      char hex[24];
      std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(evaluation_));
      note["evaluation"] = hex;  // what the value was measured on (Evaluator::fingerprint)
    }
    const std::string text = note.dump(2) + "\n";
    AtomicFile file((temp / "best.json").string());
    file.write(text.data(), text.size());
    file.commit();
  });
  best_ = value;
  best_step_ = step;
  export_due_ = false;
}

}  // namespace qarac
