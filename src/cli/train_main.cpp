// qarac-train: fine-tunes the three QARAC models from a pre-trained RoBERTa on the four
// objectives at once (DESIGN.md §1, §4, §6), or (model.mode mlm) pre-trains a RoBERTa base. Options come from an INI file (--config) and the
// command line; every input error is one line and exit status 2, reported before the output
// directory is created.
#include <iostream>
#include <memory>

#include "cli/run_main.h"
#include "data/tokenizer.h"
#include "train/config.h"
#include "train/evaluation.h"
#include "train/trainer.h"

namespace {

// The held-out evaluation of [eval]; built before the run starts, so its input errors too come
// before the output directory exists.
std::unique_ptr<qarac::Evaluator> make_evaluator(const qarac::TrainConfig& config) {
  qarac::EvalOptions options;
  options.data_dir = config.eval_dir;
  options.max_examples = config.eval_examples;
  options.max_decoded = config.eval_decoded;
  if (!config.eval_tokenizer.empty())
    options.masking = qarac::mlm_masking(qarac::data::Tokenizer::from_dir(config.eval_tokenizer),
                                         static_cast<uint64_t>(config.seed));
  return std::make_unique<qarac::QaracEvaluator>(options);
}

}  // namespace

int main(int argc, char** argv) {
  return qarac::cli::run_main("qarac-train", [&] {
    const std::optional<qarac::TrainConfig> config = qarac::parse_train_config(argc, argv, std::cout);
    if (!config) return 0;  // --help
    qarac::Trainer trainer(*config);
    // Pre-training evaluates itself (the held-out MLM loss); the QARAC models need the evaluator.
    if (!config->eval_dir.empty() && !config->pretraining()) trainer.set_evaluator(make_evaluator(*config));
    trainer.run();
    return 0;
  });
}
