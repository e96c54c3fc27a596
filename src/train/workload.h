// What a run trains. The step loop, optimizer, schedule, checkpoints and metrics
// (train/trainer.cpp) are the same for every workload; only the models, the loss of a task
// batch, the evaluation and the export differ:
//   model.mode qarac  QE, AE and D from a pre-trained base, on the four objectives
//                     (train/qarac_workload.cpp)
//   model.mode mlm    a RoBERTa base with its tied MLM head, masked language modelling on the
//                     text stream, from scratch or from model.base (train/mlm_workload.cpp)
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/memory.h"
#include "data/loader.h"
#include "io/export_files.h"
#include "parallel/gradient_sync.h"
#include "train/config.h"
#include "train/evaluation.h"
#include "train/objectives.h"

namespace qarac {

class Workload {
 public:
  virtual ~Workload() = default;
  // Its parameters by model, each held by the ranks of `plan` whose tasks use the model.
  virtual std::vector<parallel::ParameterGroup> parameter_groups(const parallel::TaskPlan& plan) = 0;
  // The models' vocabulary: every token id of the data must lie below it.
  virtual int64_t vocab_size() const = 0;
  // The configuration the models are built from (model.base's config.json with model.dropout, or
  // the model.* sizes): checkpoints record it, so that a resume that would build other models
  // from the same weights (another base's layer_norm_eps or dropout) is refused.
  virtual const RobertaConfig& model_config() const = 0;
  // The longest sequence the models read (their position table's).
  virtual int64_t max_tokens() const = 0;
  // Before this rank's micro-batches of `task` in a training step, also when it has none
  // (Objectives::begin_task): an objective over the whole global batch gathers it here.
  virtual void begin_task(data::Task /*task*/, const std::vector<data::TaskBatch>& /*micro*/,
                          const ForwardOptions& /*forward*/, const GatherRows& /*gather*/) {}
  // Forward and backward of one task batch, gradients scaled by options.weight; the loss as a
  // device scalar [1].
  virtual const Tensor& run(const data::TaskBatch& batch, const ObjectiveOptions& options) = 0;
  // Held-out metrics (no gradients); `evaluator` is qarac-train's [eval] hook, may be null.
  virtual EvalResult evaluate(Evaluator* evaluator) = 0;
  // The models as Hugging Face directories in `folder` (a temporary folder that replaces
  // <output>/export/ or best/ once complete), with `extras` (train/export_card.h); their names.
  virtual std::vector<std::string> export_models(const std::string& folder, const io::ExportExtras& extras) = 0;
  // hash64 of what the run reads from model.base at every start and never trains (the MLM head of
  // the rehearsal and the forgetting monitor), or 0 when it reads none: checkpoints record it, so
  // that a resume from a base that differs there says so.
  virtual uint64_t frozen_base_hash() const { return 0; }
  // Evaluator::fingerprint of an evaluation the workload runs itself (pre-training's held-out
  // masked-LM loss); 0 for none, or one that comes from an Evaluator.
  virtual uint64_t evaluation_fingerprint() const { return 0; }
};

// task.qa.objective and task.qa.temperature, for the objectives of training and evaluation.
QaObjective qa_objective_of(const TrainConfig& config);

// Builds the models `build` marks (parallel::Model order).
std::unique_ptr<Workload> make_qarac_workload(const TrainConfig& config, Device device,
                                              const std::array<bool, parallel::kModelCount>& build);
// One model, exported as export/base: a Hugging Face RobertaForMaskedLM directory that
// model.base of a qarac run can name. Only a workload that `evaluates` (the run's rank 0) reads
// the held-out text.
std::unique_ptr<Workload> make_mlm_workload(const TrainConfig& config, Device device, bool evaluates);

}  // namespace qarac
