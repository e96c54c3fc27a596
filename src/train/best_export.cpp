#include "train/best_export.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
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
      "qa.selection_mrr",  "cs.accuracy",       "forgetting.mlm_loss"};
  return pretraining ? mlm : qarac;
}

BestExport::BestExport(const std::string& output, std::string metric, const std::set<int64_t>& evaluated)
    : folder_((fs::path(output) / "best").string()), metric_(std::move(metric)) {
  const std::string suffix = "loss";
  larger_is_better_ = metric_.size() < suffix.size() ||
                      metric_.compare(metric_.size() - suffix.size(), suffix.size(), suffix) != 0;
  const fs::path note = fs::path(folder_) / "best.json";
  std::error_code ec;
  if (!fs::exists(note, ec)) return;
  try {
    std::ifstream in(note);
    const nlohmann::json j = nlohmann::json::parse(in);
    if (j.at("metric").get<std::string>() == metric_) {
      const double value = j.at("value").get<double>();
      best_step_ = j.at("step").get<int64_t>();
      best_ = value;
    }
  } catch (const nlohmann::json::exception& e) {
    // The next evaluation replaces the folder: said, since a worse model may then take its place.
    log::warn(note.string(), ": unreadable (", e.what(), "); the next evaluation's models replace ", folder_);
  }
  if (!best_) return;
  // A best from beyond the record (the evaluation came after the checkpoint the run resumes
  // from) has no evaluation after it yet.
  since_best_ = static_cast<int64_t>(std::distance(evaluated.upper_bound(best_step_), evaluated.end()));
  log::info("eval.best: ", describe_best(), " so far, in ", folder_, "; ", since_best_, " evaluation",
            since_best_ == 1 ? "" : "s", " since");
}

std::string BestExport::describe_best() const {
  return best_ ? detail::concat(metric_, " ", *best_, " at step ", best_step_) : "";
}

void BestExport::consider(int64_t step, const std::map<std::string, double>& metrics,
                          const std::function<void(const std::string& folder)>& write) {
  const auto it = metrics.find(metric_);
  if (it == metrics.end()) {
    std::string given;
    for (const auto& [name, value] : metrics)
      if (name.find(".confusion.") == std::string::npos) given += (given.empty() ? "" : ", ") + name;
    throw InputError(detail::concat("eval.best: the evaluation at step ", step, " gave no ", metric_,
                                     " (it gave ", given, ")"));
  }
  const double value = it->second;
  // NaN is never the best; a tie keeps the earlier models.
  if (!std::isfinite(value) || (best_ && !(larger_is_better_ ? value > *best_ : value < *best_))) {
    ++since_best_;
    return;
  }
  const std::string temp = folder_ + ".tmp";
  std::error_code ec;
  fs::remove_all(temp, ec);  // an export that died midway
  try {
    write(temp);
    const nlohmann::json note = {{"metric", metric_}, {"value", value}, {"step", step}};
    const std::string text = note.dump(2) + "\n";
    AtomicFile file((fs::path(temp) / "best.json").string());
    file.write(text.data(), text.size());
    file.commit();
    io::replace_folder(temp, folder_);
  } catch (const InputError&) {
    fs::remove_all(temp, ec);  // a failed export (a full disk) leaves the previous best, and nothing else
    throw;
  }
  sync_folder(fs::path(folder_).parent_path().string());
  best_ = value;
  best_step_ = step;
  since_best_ = 0;
  log::info("eval.best: ", metric_, " ", value, " at step ", step, ", the best so far: models exported to ", folder_);
}

}  // namespace qarac
