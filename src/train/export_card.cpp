// Gathering an export's tokenizer and model card from the run.
#include "train/export_card.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/log.h"
#include "data/shards.h"
#include "data/tokenizer.h"

namespace qarac {
namespace {

namespace fs = std::filesystem;

// The Hub id of a base in the Hugging Face cache (".../models--org--name/snapshots/<commit>"
// gives "org/name"), else "": the Hub's base_model must be an id, and a local folder's name
// need not be one.
std::string hub_id(const std::string& base) {
  for (fs::path p(base); !p.empty() && p != p.root_path(); p = p.parent_path()) {
    const std::string name = p.filename().string();
    if (name.rfind("models--", 0) != 0) continue;
    std::string id = name.substr(8);
    const size_t sep = id.find("--");
    if (sep != std::string::npos) id.replace(sep, 2, "/");
    return id;
  }
  return "";
}

// The evaluations of metrics.jsonl, in order: the last one's step and metrics, and
// forgetting.mlm_loss at the first evaluation that gave it. A metric written as null (JSON's NaN or
// infinity) is NaN, never an earlier evaluation's value; a line that is not JSON (a run killed
// while appending) is passed over.
void read_evaluations(const fs::path& path, io::ModelCard& card) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) continue;
    if (const auto eval = j.find("eval"); eval == j.end() || !eval->is_boolean() || !eval->get<bool>()) continue;
    const auto step = j.find("step");
    if (step == j.end() || !step->is_number_integer()) continue;
    card.metrics_step = step->get<int64_t>();
    card.metrics.clear();
    for (const auto& [name, value] : j.items())
      if (name != "step" && (value.is_number() || value.is_null()))
        card.metrics[name] = value.is_null() ? std::nan("") : value.get<double>();
    const auto forgetting = card.metrics.find("forgetting.mlm_loss");
    if (forgetting == card.metrics.end() || card.forgetting_first) continue;
    card.forgetting_first = forgetting->second;
    card.forgetting_first_step = card.metrics_step;
  }
}

}  // namespace

std::string export_tokenizer_dir(const TrainConfig& config) {
  if (config.pretraining()) return config.tokenizer;
  return data::Tokenizer::found_in(config.base) ? config.base : config.eval_tokenizer;
}

TrainingDataNote training_data_note(const TrainConfig& config) {
  TrainingDataNote note;
  std::set<std::string> datasets;
  for (int t = 0; t < data::kQaracTaskCount; ++t) {  // the rehearsal reads encode_decode's stream
    const fs::path stream =
        fs::path(config.data_dir) / (std::string(data::task_name(static_cast<data::Task>(t))) + ".h5");
    std::error_code ec;
    if (!fs::is_regular_file(stream, ec)) continue;
    const data::StreamInfo info = data::TaskStreamFile(stream.string()).info();
    if (note.tokenizer_hash.empty()) note.tokenizer_hash = info.tokenizer_hash;
    for (const data::SourceInfo& source : info.sources)
      datasets.insert(fs::path(source.path).filename().string());
  }
  note.datasets.assign(datasets.begin(), datasets.end());
  return note;
}

io::ExportExtras export_extras(const TrainConfig& config, const std::string& plan, const TrainingDataNote& data) {
  io::ExportExtras extras;
  extras.tokenizer_dir = export_tokenizer_dir(config);
  if (extras.tokenizer_dir.empty())
    log::warn("the exports carry no tokenizer (model.base has none and eval.tokenizer is not set):",
              " AutoTokenizer and qarac-embed need one");
  extras.tokenizer_hash = data.tokenizer_hash;

  io::ModelCard card;
  card.base_model = hub_id(config.base);
  card.base_path = config.base;
  card.config_ini = settings_ini(config);
  card.plan = plan;
  card.datasets = data.datasets;
  read_evaluations(fs::path(config.output) / "metrics.jsonl", card);
  extras.card = std::move(card);
  return extras;
}

}  // namespace qarac
