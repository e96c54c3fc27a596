// What a run's exports carry beside the weights (io/export_files.h): the tokenizer of its data
// and the model card, gathered from the configuration, the task streams and metrics.jsonl.
#pragma once

#include <string>
#include <vector>

#include "io/export_files.h"
#include "train/config.h"

namespace qarac {

// The folder of the tokenizer the exports carry: model.tokenizer in mlm mode; in qarac mode
// model.base when it holds tokenizer files, else eval.tokenizer; "" when neither is given. Its
// hash must be the task streams' (checked when the run starts and again by the export).
std::string export_tokenizer_dir(const TrainConfig& config);

// What the exports say of the training data: the task streams' tokenizer hash and the input
// files qarac-prep read for them. Read when the run starts, from the streams it trains on: by the
// export, data.dir may have been prepared again, damaged or removed.
struct TrainingDataNote {
  std::string tokenizer_hash;
  std::vector<std::string> datasets;  // file names, sorted
};
TrainingDataNote training_data_note(const TrainConfig& config);

// The tokenizer (export_tokenizer_dir) with the task streams' hash, and the card: model.base
// (and its Hub id when it lies in the Hugging Face cache), the streams' source files, the
// configuration, `plan` (the start banner's plan), the last evaluation of
// <output>/metrics.jsonl (its step: for best/, the best evaluation's) and forgetting.mlm_loss at
// its first evaluation.
io::ExportExtras export_extras(const TrainConfig& config, const std::string& plan, const TrainingDataNote& data);

}  // namespace qarac
