// The four QARAC objectives (docs/design.md §3) on one task batch each: forward, loss and backward
// through the models the task uses, gradients accumulated with the task's weight. Per-sample
// losses, averaged over the batch of B samples:
//   encode_decode       CE(D(AE(x), x), x </s>): per sample the mean over its target tokens
//   question_answering  MSE(QE(q) − AE(a), 0): per sample the mean over the d components
//   reasoning           CE(D(AE(p0) + AE(p1), c), c </s>), as encode_decode
//   consistency         MSE(cos(AE(s0), AE(s1)), y), y = +1 / 0 / −1
// Task-stream fields hold "<s> text </s>" (qarac-prep encodes with the special tokens; a field
// without them is refused with an InputError): the encoders read them whole, the decoder reads
// "<s> text" and predicts "text </s>".
//
// Dropout: model application k (0, 1, 2 in the order the task runs them) of task t draws its
// masks with ForwardOptions::application = 4t + k, so the up to six applications of AE in a
// QARAC step never share a mask; within an application, each sequence's masks are keyed by its
// example's global identity (TaskBatch::ids), so they do not depend on the layout. The encoders
// run bidirectional and the decoder causal whatever options.forward.causal says.
#pragma once

#include <array>
#include <functional>
#include <memory>

#include "data/loader.h"
#include "parallel/task_plan.h"
#include "model/qarac.h"

namespace qarac {

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
  explicit Objectives(QaracModels& models);
  ~Objectives();
  // Runs one task batch; gradients are accumulated into the models' parameters, scaled by
  // options.weight. Returns the task's unweighted loss as a device scalar [1] (accumulation
  // dtype), so a step need not synchronise per task. The scalar is the task's own: it stays
  // valid while the other tasks run, until the next run() of the same task.
  const Tensor& run(const data::TaskBatch& batch, const ObjectiveOptions& options);
  // The loss alone (evaluation): no gradients, no dropout. Synchronises.
  double evaluate(const data::TaskBatch& batch);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qarac
