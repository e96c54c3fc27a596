// The rehearsal task and the masked-LM loss of a task batch (train/rehearsal.h).
#include "train/rehearsal.h"

#include <vector>

#include "core/log.h"

namespace qarac {

const Tensor& MaskedLmLoss::run(MaskedLM& mlm, const data::TaskBatch& batch, double weight,
                                const ForwardOptions& forward) {
  const data::PackedField& text = batch.fields.at(0);
  QARAC_CHECK(static_cast<int64_t>(batch.ids.size()) == batch.count(), data::task_name(batch.task), ": ",
              batch.ids.size(), " example ids for ", batch.count(), " examples");
  std::vector<std::vector<int32_t>> seqs;
  for (int64_t b = 0; b < text.count(); ++b)
    seqs.emplace_back(text.tokens.begin() + text.starts[b], text.tokens.begin() + text.starts[b + 1]);
  const uint64_t step = forward.step;  // from 0; the trainer says steps from 1
  const MaskedTokens masked = mask_tokens(seqs, batch.ids, vocab_size_, masking_, step);
  const int64_t global_masked = global_masked_tokens(batch, masked, step);
  // The trainer weighs this micro-batch's loss and gradients by its share n / N of the global
  // batch's examples (weight = w_t · n / N; the logged loss is Σ share · run()). Undo that share:
  // gradients of Σ CE · w_t / M, and a returned value Σ CE / M · N / n, so the trainer's sum over
  // micro-batches and ranks is the global batch's masked mean.
  const double share = static_cast<double>(batch.count()) / static_cast<double>(batch.global_count);
  const double per_token = global_masked > 0 ? 1.0 / static_cast<double>(global_masked) : 0.0;
  // Said by the rank whose part starts the global batch, once: every rank of the task counts the
  // same M, and a run whose steps mask nothing learns nothing from this loss.
  const bool starts_global = !batch.global || (!batch.ids.empty() && batch.ids.front() == batch.global->ids.front());
  if (global_masked == 0 && starts_global && !warned_unmasked_) {
    warned_unmasked_ = true;
    log::warn(data::task_name(batch.task), ", step ", step + 1, ": no token of the global batch (", batch.global_tokens,
              " tokens) was chosen for masking (model.mask_probability ", masking_.probability,
              "): its loss and gradients are 0 there; said once a run");
  }
  return mlm.run(masked, forward, /*backward=*/true, per_token / share, weight / share * per_token);
}

// Every rank of the task gets the whole global batch's ids and tokens from the loader
// (data::TaskBatch::global), and the masks are a pure function of (step, id, position, token), so
// every rank counts the same M locally, with no collective: an all-reduce here would put a
// blocking round-trip among the task's ranks before the first forward pass of every step, where
// counting costs a Philox draw per token of N examples on the host. Counted once per step (the
// micro-batches share the global batch).
int64_t MaskedLmLoss::global_masked_tokens(const data::TaskBatch& batch, const MaskedTokens& masked, uint64_t step) {
  if (!batch.global) {
    QARAC_CHECK(batch.count() == batch.global_count, data::task_name(batch.task), ": a part of a global batch (",
                batch.count(), " of ", batch.global_count, " examples) without the global batch");
    return masked.masked;
  }
  if (batch.global != counted_batch_ || step != counted_step_) {
    const data::PackedField& text = batch.global->fields.at(0);
    QARAC_CHECK(static_cast<int64_t>(batch.global->ids.size()) == batch.global_count, data::task_name(batch.task),
                ": the global batch has ", batch.global->ids.size(), " ids for ", batch.global_count, " examples");
    counted_masked_ = count_masked(text.tokens, text.starts, batch.global->ids, masking_, step);
    counted_batch_ = batch.global;  // held, so that its address is not reused while cached
    counted_step_ = step;
  }
  return counted_masked_;
}

Rehearsal::Rehearsal(QaracModels& models, const TensorMap& base_lm_head, const std::string& source,
                     const MlmMasking& masking, bool train_head)
    : models_(models),
      mlm_(models.answer_encoder().base()),
      loss_(masking, models.config().base.vocab_size),
      head_params_(mlm_.head().parameters()),
      train_head_(train_head) {
  mlm_.head().load(base_lm_head, source);
  // Apart from the models' names in checkpoints and the optimizer: the head is a group of its own.
  for (Parameter* p : head_params_) p->name = "mlm_head." + p->name;
}

const Tensor& Rehearsal::run(const data::TaskBatch& batch, const ObjectiveOptions& options) {
  QARAC_CHECK(batch.task == data::Task::masked_lm, "rehearsal: a batch of ", data::task_name(batch.task));
  SentenceEncoder& answer = models_.answer_encoder();
  const bool report = options.gradients_ready && options.last_use[static_cast<int>(parallel::Model::answer_encoder)];
  if (report) {
    // AE's last backward pass of the step on this rank: its pooling head's gradients are final
    // already (this task does not use it), its base's follow a layer at a time.
    options.gradients_ready(answer.head_parameters());
    answer.base().set_gradients_ready(options.gradients_ready);
  }
  ForwardOptions forward = options.forward;
  forward.application = kApplication;
  const Tensor& loss = loss_.run(mlm_, batch, options.weight, forward);
  // A frozen head's gradients are never applied: cleared, they do not pile up either.
  if (!train_head_) zero_grads(head_params_);
  if (report) answer.base().set_gradients_ready({});
  if (options.backward_done) options.backward_done(parallel::Model::answer_encoder);
  return loss;
}

}  // namespace qarac
