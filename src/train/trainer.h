// The training run of qarac-train (docs/design.md §1, §4, §6): from a pre-trained RoBERTa to the
// three fine-tuned QARAC models. The trainer loads the base (setting its MLM head aside for the
// forgetting monitor), builds the models, this rank's loaders from the task plan and the
// optimizer, then runs the steps: this rank's part of every task's global batch forward and
// backward (in micro-batches of at most train.micro_tokens tokens) with the gradient scale
// (its examples) / N_t · w_t, the gradient reduction, clipping, the optimizer update at the scheduled rate;
// metrics every step, checkpoints and evaluations every N steps and at the end, and the Hugging
// Face export of every model at the end. With model.mode mlm the same loop pre-trains a RoBERTa
// base by masked language modelling on the text stream instead (the quickstart's tiny base).
#pragma once

#include <memory>
#include <string>

#include "parallel/runtime.h"
#include "train/config.h"

namespace qarac {

class Evaluator;  // train/evaluation.h

// ---- Trainer ----------------------------------------------------------------------------------
class Trainer {
 public:
  // Checks the values, reads the base model and this rank's data, builds the models, loaders and
  // optimizer. Writes nothing: the input errors of the configuration, the base and the data (one
  // line naming the key or file) come before the output directory exists; run() finds the
  // checkpoint to resume from.
  // `runtime` null: one process without MPI. Otherwise this rank of runtime's world, which every
  // rank constructs collectively (the communicators are created here).
  explicit Trainer(const TrainConfig& config, const parallel::Runtime* runtime = nullptr);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  void set_evaluator(std::unique_ptr<Evaluator> evaluator);

  // Creates the output directory, restores the checkpoint when resuming, and trains to
  // config.steps: metrics, checkpoints, evaluations, then the export (finished). A stop signal
  // on any rank (train/stop_signals.h) stops every rank after the same step, with a checkpoint
  // of it and without evaluation or export (stopped).
  enum class RunEnd { finished, stopped };
  RunEnd run();
  // Abandons the gradient reductions in flight: before the job is aborted after an error.
  void abort() noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qarac
