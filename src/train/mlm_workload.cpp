// model.mode mlm (train/workload.h): a RoBERTa base with its tied MLM head, pre-trained by masked
// language modelling on the text stream (encode_decode), from scratch or from model.base; the
// quickstart's tiny base. Evaluation: the MLM loss on held-out text, with the same masks every
// time.
#include <algorithm>
#include <memory>
#include <string>

#include "data/shards.h"
#include "data/tokenizer.h"
#include "io/hf_checkpoint.h"
#include "io/hf_export.h"
#include "model/init.h"
#include "model/masked_lm.h"
#include "train/workload.h"

namespace qarac {
namespace {

class MlmWorkload : public Workload {
 public:
  MlmWorkload(const TrainConfig& c, Device device) {
    const data::Tokenizer tokenizer = data::Tokenizer::from_dir(c.tokenizer);
    masking_ = mlm_masking(tokenizer, static_cast<uint64_t>(c.seed), c.mask_probability);
    io::HfRoberta base;
    if (!c.base.empty()) {
      base = io::read_hf_roberta(c.base);
      config_ = base.config;
    } else {
      config_.vocab_size = static_cast<int64_t>(tokenizer.vocab_size());
      config_.hidden_size = c.hidden;
      config_.num_layers = c.layers;
      config_.num_heads = c.heads;
      config_.intermediate_size = c.ffn > 0 ? c.ffn : 4 * c.hidden;
      config_.max_position_embeddings = c.max_positions;
      config_.pad_token_id = tokenizer.pad_id();
      config_.bos_token_id = tokenizer.bos_id();
      config_.eos_token_id = tokenizer.eos_id();
    }
    QARAC_INPUT_CHECK(static_cast<int64_t>(tokenizer.vocab_size()) == config_.vocab_size, "model.tokenizer: ",
                      tokenizer.vocab_size(), " tokens, but the model has ", config_.vocab_size);
    if (c.dropout >= 0) config_.hidden_dropout = config_.attention_dropout = c.dropout;
    encoder_ = std::make_unique<RobertaEncoder>(config_, c.dtype_value(), device);
    mlm_ = std::make_unique<MaskedLM>(*encoder_);
    if (c.base.empty()) {
      init_normal(mlm_->parameters(), c.init_std, static_cast<uint64_t>(c.seed));
    } else {
      io::assign_parameters(encoder_->parameters(), base.encoder, c.base + "/model.safetensors");
      if (!base.lm_head.empty()) mlm_->head().load(base.lm_head, c.base + "/model.safetensors");
    }
    if (!c.eval_dir.empty()) {
      const data::TaskStreamFile text(c.eval_dir + "/" + data::task_name(data::Task::encode_decode) + ".h5");
      const data::Ragged field = text.read_field(0, 0, std::min(c.eval_examples, text.examples()));
      for (int64_t i = 0; i < field.count(); ++i) held_out_.emplace_back(field.begin(i), field.begin(i) + field.length(i));
    }
  }

  // One model, written by the text task's backward pass, on every rank.
  int64_t vocab_size() const override { return config_.vocab_size; }
  std::vector<parallel::ParameterGroup> parameter_groups(const parallel::TaskPlan& plan) override {
    return {{"base", {}, plan.ranks_of(data::Task::encode_decode), mlm_->parameters()}};
  }

  // The task's loss is the mean cross-entropy over ALL the masked tokens of its global batch (as
  // Hugging Face's MLM loss is over a batch), whatever the world size and micro-batches: with M
  // masked tokens in the global batch, a micro-batch's gradient is that of its summed
  // cross-entropy times w_t / M. Masks are a pure function of (seed, step, example id, position,
  // token), so every example is masked the same way on whichever rank and in whichever
  // micro-batch it runs, and its dropout masks follow its id too.
  const Tensor& run(const data::TaskBatch& batch, const ObjectiveOptions& options) override {
    const data::PackedField& text = batch.fields[0];
    QARAC_CHECK(static_cast<int64_t>(batch.ids.size()) == batch.count(), "mlm: ", batch.ids.size(),
                " example ids for ", batch.count(), " examples");
    std::vector<std::vector<int32_t>> seqs;
    for (int64_t b = 0; b < text.count(); ++b)
      seqs.emplace_back(text.tokens.begin() + text.starts[b], text.tokens.begin() + text.starts[b + 1]);
    const uint64_t step = options.forward.step;
    const MaskedTokens masked = mask_tokens(seqs, batch.ids, config_.vocab_size, masking_, step);
    const int64_t global_masked = global_masked_tokens(batch, masked, step);
    // The trainer weighs this micro-batch's loss and gradients by its share n / N of the global
    // batch's examples (options.weight = w_t · n / N; the logged loss is Σ share · run()). Undo
    // that share: gradients of Σ CE · w_t / M, and a returned value Σ CE / M · N / n, so the
    // trainer's sum over micro-batches and ranks is the global batch's masked mean.
    const double share = static_cast<double>(batch.count()) / static_cast<double>(batch.global_count);
    const double per_token = global_masked > 0 ? 1.0 / static_cast<double>(global_masked) : 0.0;
    return mlm_->run(masked, options.forward, /*backward=*/true, per_token / share, options.weight / share * per_token);
  }

  EvalResult evaluate(Evaluator*, int64_t) override {
    EvalResult r;
    if (held_out_.empty()) return r;
    // The same masks at every evaluation (step 0), so the figures compare.
    r.metrics["mlm.loss"] = mlm_->loss(mask_tokens(held_out_, config_.vocab_size, masking_, 0), ForwardOptions{}, false);
    return r;
  }

  // The masked tokens of the batch's whole global batch. Every rank of the task gets that batch's
  // ids and tokens from the loader (data::TaskBatch::global), and the masks are a pure function of
  // (step, id, position, token), so every rank counts the same M locally, with no collective: an
  // all-reduce here would put a blocking round-trip among the task's ranks before the first
  // forward pass of every step, where counting costs a Philox draw per token of N examples on
  // the host. Counted once per step (the micro-batches share the global batch).
  int64_t global_masked_tokens(const data::TaskBatch& batch, const MaskedTokens& masked, uint64_t step) {
    if (!batch.global) {
      QARAC_CHECK(batch.count() == batch.global_count, "mlm: a part of a global batch (", batch.count(), " of ",
                  batch.global_count, " examples) without the global batch");
      return masked.masked;
    }
    if (batch.global != counted_batch_ || step != counted_step_) {
      const data::PackedField& text = batch.global->fields.at(0);
      QARAC_CHECK(static_cast<int64_t>(batch.global->ids.size()) == batch.global_count, "mlm: the global batch has ",
                  batch.global->ids.size(), " ids for ", batch.global_count, " examples");
      counted_masked_ = count_masked(text.tokens, text.starts, batch.global->ids, masking_, step);
      counted_batch_ = batch.global;  // held, so that its address is not reused while cached
      counted_step_ = step;
    }
    return counted_masked_;
  }

  void export_models(const std::string& output, const io::ExportExtras& extras) override {
    io::export_hf_model(output, "base", config_, io::master_tensors(mlm_->parameters()), extras);
  }

 private:
  RobertaConfig config_;
  MlmMasking masking_;
  std::unique_ptr<RobertaEncoder> encoder_;
  std::unique_ptr<MaskedLM> mlm_;
  std::vector<std::vector<int32_t>> held_out_;
  std::shared_ptr<const data::GlobalBatch> counted_batch_;  // global_masked_tokens' cache
  uint64_t counted_step_ = 0;
  int64_t counted_masked_ = 0;
};

}  // namespace

std::unique_ptr<Workload> make_mlm_workload(const TrainConfig& config, Device device) {
  return std::make_unique<MlmWorkload>(config, device);
}

}  // namespace qarac
