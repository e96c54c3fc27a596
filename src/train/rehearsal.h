// Rehearsal (docs/design.md §3, --task.mlm.weight): the fifth task, masked_lm, a regulariser
// against forgetting. It trains the answer encoder's base (the shared base with
// model.share_encoder_base) on the loss the forgetting monitor measures (train/evaluation.h,
// forgetting.mlm_loss): masked language modelling of the text stream with the base checkpoint's
// own MLM head, whose output matrix is tied to AE's word embeddings as in RobertaForMaskedLM. The
// head's other parameters (dense, layer_norm, bias) stay frozen, or (task.mlm.head trained) are a
// parameter group of their own, "mlm_head", held by the task's ranks; they are not exported (the
// answer encoder's export is the encoder).
//
// Dropout: AE's base runs as application 4 · masked_lm + 0 = 16 (train/objectives.h numbers the
// applications of the four QARAC tasks 0..15), so its masks are no other application's; within
// it, each sequence's masks follow its example id (task masked_lm), as do the MLM masks.
#pragma once

#include <memory>
#include <string>

#include "model/masked_lm.h"
#include "model/qarac.h"
#include "train/objectives.h"

namespace qarac {

// The masked-LM loss of a task batch of text as the trainer weighs it, shared by model.mode mlm
// (train/mlm_workload.cpp) and the rehearsal: the mean cross-entropy over ALL the masked tokens
// of the batch's global batch (as Hugging Face's MLM loss is over a batch), whatever the world
// size, plan and micro-batches. With M masked tokens in the global batch, a micro-batch's
// gradient is that of its summed cross-entropy times w_t / M. Masks are a pure function of
// (seed, step, example id, position, token), so every example is masked the same way on
// whichever rank and in whichever micro-batch it runs.
class MaskedLmLoss {
 public:
  MaskedLmLoss(const MlmMasking& masking, int64_t vocab_size) : masking_(masking), vocab_size_(vocab_size) {}
  // Forward (and backward) of `batch` through `mlm`, gradients scaled as above for the trainer's
  // options.weight = w_t · n / N; returns the device scalar whose sum over the micro-batches and
  // ranks, each times its n / N, is the global batch's masked mean.
  const Tensor& run(MaskedLM& mlm, const data::TaskBatch& batch, double weight, const ForwardOptions& forward);

 private:
  int64_t global_masked_tokens(const data::TaskBatch& batch, const MaskedTokens& masked, uint64_t step);

  MlmMasking masking_;
  int64_t vocab_size_;
  std::shared_ptr<const data::GlobalBatch> counted_batch_;  // global_masked_tokens' cache
  uint64_t counted_step_ = 0;
  int64_t counted_masked_ = 0;
  bool warned_unmasked_ = false;  // a global batch without a masked token was reported
};

class Rehearsal {
 public:
  // Over `models`' answer encoder (built), with the base checkpoint's MLM head `base_lm_head`
  // (io::HfRoberta::lm_head; `source` names it in errors). InputError when it is missing or
  // misshapen.
  Rehearsal(QaracModels& models, const TensorMap& base_lm_head, const std::string& source,
            const MlmMasking& masking, bool train_head);
  // The head's own parameters, named "mlm_head.lm_head.*": the group "mlm_head" when trained.
  ParameterList head_parameters() { return head_params_; }
  // One masked_lm task batch (train/objectives.h's contract: options.weight, the reports of AE's
  // gradients during its last backward pass of the step, backward_done).
  const Tensor& run(const data::TaskBatch& batch, const ObjectiveOptions& options);

  static constexpr uint32_t kApplication = 4 * static_cast<uint32_t>(data::Task::masked_lm);

 private:
  QaracModels& models_;
  MaskedLM mlm_;
  MaskedLmLoss loss_;
  ParameterList head_params_;
  bool train_head_;
};

}  // namespace qarac
