// The four QARAC objectives (docs/design.md §3) on one task batch each: forward, loss and backward
// through the models the task uses, gradients accumulated with the task's weight. Per-sample
// losses, averaged over the batch of B samples:
//   encode_decode       CE(D(AE(x), x), x </s>): per sample the mean over its target tokens
//   question_answering  MSE(QE(q) − AE(a), 0): per sample the mean over the d components; or
//                       (task.qa.objective contrastive) symmetric InfoNCE over the task's global
//                       batch (train/contrastive.h), computed once all its vectors are known
//   reasoning           CE(D(AE(p0) + AE(p1), c), c </s>), as encode_decode
//   consistency         MSE(cos(AE(s0), AE(s1)), y), y = +1 / 0 / −1
// Task-stream fields hold "<s> text </s>" (qarac-prep encodes with the special tokens; a field
// without them is refused with an InputError): the encoders read them whole, the decoder reads
// "<s> text" and predicts "text </s>".
//
// Dropout: model application k of task t (a fixed number per role: 0, 1 in the order the task
// runs its encoders, and reasoning's decoder 2, which keeps its number from before its AE pass
// took both fields: the masks, and so resumed runs, stay the same) draws its masks with
// ForwardOptions::application = 4t + k, so the applications of AE in a QARAC step
// never share a mask; within an application, each sequence's masks are keyed by its example's
// global identity (TaskBatch::ids), so they do not depend on the layout. Reasoning and
// consistency encode their two fields in one pass of AE (application 0, 2B sequences: twice the
// rows per GEMM, half the launches), the second field's sequences under data::second_field_id.
// The encoders run bidirectional and the decoder causal whatever options.forward.causal says.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "data/loader.h"
#include "parallel/task_plan.h"
#include "model/qarac.h"

namespace qarac {

// The question_answering objective (task.qa.objective, task.qa.temperature).
struct QaObjective {
  bool contrastive = false;
  double temperature = 1.0;
};

// Contrastive QA's exchange between the ranks of the task: each gives its rows (whole rows of
// `width` values) and gets every rank's in rank order, and the index of its own first row.
using GatherRows =
    std::function<std::vector<double>(const std::vector<double>& mine, int64_t width, int64_t* first_row)>;

struct ObjectiveOptions {
  double weight = 1.0;  // w_t · (examples of the batch) / N_t: this batch's share of the task's loss
  ForwardOptions forward;
  // Called once per model the task uses, as soon as that model's last backward pass of the
  // task has been queued (the decoder before the answer encoder): the distributed trainer starts
  // the model's gradient reduction there, overlapping the rest of the backward pass.
  std::function<void(parallel::Model)> backward_done;
  // For the models whose last backward pass of the step this task runs (last_use), that pass
  // reports each layer's parameters to gradients_ready as it finishes their gradients, so
  // their reduction can start a layer at a time.
  GradientsReady gradients_ready;
  std::array<bool, parallel::kModelCount> last_use{};
};

class Objectives {
 public:
  explicit Objectives(QaracModels& models, QaObjective qa = {});
  ~Objectives();
  // Called for each of a rank's tasks at the start of a training step, before any run(), also
  // for a task of which the rank has no example. Contrastive QA needs every vector of the global
  // batch before any loss: here it encodes this rank's micro-batches, gathers every rank's
  // vectors, and computes the loss and its gradients with respect to this rank's vectors, which
  // run() then back-propagates micro-batch by micro-batch. run() encodes each again, with the same
  // dropout masks, unless the rank's part is one micro-batch and no other task ran in between.
  // Every other objective needs nothing here.
  void begin_task(data::Task task, const std::vector<data::TaskBatch>& micro, const ForwardOptions& forward,
                  const GatherRows& gather);
  // Runs one task batch; gradients are accumulated into the models' parameters, scaled by
  // options.weight. Returns the task's unweighted loss as a device scalar [1] (accumulation
  // dtype), so a step need not synchronise per task. The scalar is the task's own: it stays
  // valid while the other tasks run, until the next run() of the same task.
  const Tensor& run(const data::TaskBatch& batch, const ObjectiveOptions& options);
  // The loss alone (evaluation): no gradients, no dropout. Synchronises.
  double evaluate(const data::TaskBatch& batch);
  // The vectors of encoder application k (0, 1) of the last run() or evaluate(), on the device:
  // [B, d], or [2B, d] for a task that encodes both its fields in one pass (reasoning,
  // consistency: the first field's rows first). Valid until the next run() or evaluate().
  const Tensor& encoded(int k) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qarac
