// model.mode mlm (train/workload.h): a RoBERTa base with its tied MLM head, pre-trained by masked
// language modelling on the text stream (encode_decode), from scratch or from model.base; the
// quickstart's tiny base. Evaluation: the MLM loss on held-out text, with the same masks every
// time.
#include <algorithm>
#include <memory>
#include <string>

#include "core/log.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "io/hf_checkpoint.h"
#include "io/hf_export.h"
#include "model/init.h"
#include "model/masked_lm.h"
#include "train/rehearsal.h"
#include "train/workload.h"

namespace qarac {
namespace {

class MlmWorkload : public Workload {
 public:
  MlmWorkload(const TrainConfig& c, Device device, bool evaluates) {
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
    // Only a base can disagree: a new model takes the tokenizer's size.
    QARAC_INPUT_CHECK(static_cast<int64_t>(tokenizer.vocab_size()) == config_.vocab_size, "model.tokenizer: ",
                      tokenizer.vocab_size(), " tokens, but the base ", c.base, " has ", config_.vocab_size);
    if (c.dropout >= 0) config_.hidden_dropout = config_.attention_dropout = c.dropout;
    encoder_ = std::make_unique<RobertaEncoder>(config_, c.dtype_value(), device);
    mlm_ = std::make_unique<MaskedLM>(*encoder_);
    loss_ = std::make_unique<MaskedLmLoss>(masking_, config_.vocab_size);
    if (c.base.empty()) {
      init_normal(mlm_->parameters(), c.init_std, static_cast<uint64_t>(c.seed));
    } else {
      io::assign_parameters(encoder_->parameters(), base.encoder, base.weights);
      if (!base.lm_head.empty()) {
        mlm_->head().load(base.lm_head, base.weights);
      } else {
        // Left as allocated, the head's dense matrix would be 0: its LayerNorm would normalise
        // rows of zeros. It starts as a new model's does.
        init_normal(mlm_->head().parameters(), c.init_std, static_cast<uint64_t>(c.seed));
        log::warn(base.weights, " has no MLM head (lm_head.*: a RobertaModel, or an untied head); model.mode mlm "
                  "starts a new one (matrices N(0, ", c.init_std, "), seed ", c.seed, ")");
      }
    }
    if (evaluates && !c.eval_dir.empty()) {
      // Checked as the training text is: its task, its tokenizer (the model's), its lengths.
      data::check_publishing_finished(c.eval_dir);
      const data::TaskStreamFile text(c.eval_dir + "/" + data::task_name(data::Task::encode_decode) + ".h5");
      text.check_holds(data::Task::encode_decode, "eval.dir's held-out text");
      QARAC_INPUT_CHECK(text.info().tokenizer_hash == tokenizer.hash(), text.path(), ": made with tokenizer ",
                        text.info().tokenizer_hash, ", but model.tokenizer, ", c.tokenizer, ", is ", tokenizer.hash(),
                        " (rerun qarac-prep with --tokenizer ", c.tokenizer, ")");
      // The whole stream checked against its checksum, a block at a time, as the QARAC evaluator
      // does: the part read below checks none, and a stream written before seals has only the checksum.
      text.verify();
      const data::Ragged field = text.read_field(0, 0, std::min(c.eval_examples, text.examples()));
      std::vector<int64_t> lengths;
      for (int64_t i = 0; i < field.count(); ++i) {
        QARAC_INPUT_CHECK(field.length(i) <= config_.max_tokens(), text.path(), ": example ", i, "'s text has ",
                          field.length(i), " tokens, more than the ", config_.max_tokens(),
                          " the model reads (", c.too_long_remedy(config_.max_tokens()), ")");
        held_out_.emplace_back(field.begin(i), field.begin(i) + field.length(i));
        lengths.push_back(field.length(i));
      }
      held_out_passes_ = data::part_bounds(lengths, c.micro_tokens, c.eval_batch);
    }
  }

  uint64_t evaluation_fingerprint() const override {
    if (held_out_.empty()) return 0;
    Hash64 hash;
    for (const std::vector<int32_t>& text : held_out_) fingerprint_values(hash, text);
    fingerprint_masking(hash, masking_);
    return hash.value();
  }

  // One model, written by the text task's backward pass, on every rank.
  const RobertaConfig& model_config() const override { return config_; }
  int64_t vocab_size() const override { return config_.vocab_size; }
  int64_t max_tokens() const override { return config_.max_tokens(); }
  std::vector<parallel::ParameterGroup> parameter_groups(const parallel::TaskPlan& plan) override {
    return {{"base", {}, plan.ranks_of(data::Task::encode_decode), mlm_->parameters()}};
  }

  // The loss of train/rehearsal.h's MaskedLmLoss; the base's dropout masks follow each example's id.
  const Tensor& run(const data::TaskBatch& batch, const ObjectiveOptions& options) override {
    return loss_->run(*mlm_, batch, options.weight, options.forward);
  }

  EvalResult evaluate(Evaluator*) override {
    EvalResult r;
    if (held_out_.empty()) return r;
    // The same masks at every evaluation (step 0), so the figures compare.
    r.metrics["mlm.loss"] = mlm_->loss_in_parts(mask_tokens(held_out_, config_.vocab_size, masking_, 0),
                                                held_out_passes_, ForwardOptions{});
    return r;
  }

  std::vector<std::string> export_models(const std::string& folder, const io::ExportExtras& extras) override {
    io::export_hf_model(folder, "base", config_, io::master_tensors(mlm_->parameters()), extras);
    return {"base"};
  }

 private:
  RobertaConfig config_;
  MlmMasking masking_;
  std::unique_ptr<RobertaEncoder> encoder_;
  std::unique_ptr<MaskedLM> mlm_;
  std::unique_ptr<MaskedLmLoss> loss_;
  std::vector<std::vector<int32_t>> held_out_;
  std::vector<int64_t> held_out_passes_;  // evaluated a pass at a time (eval.batch, train.micro_tokens)
};

}  // namespace

std::unique_ptr<Workload> make_mlm_workload(const TrainConfig& config, Device device, bool evaluates) {
  return std::make_unique<MlmWorkload>(config, device, evaluates);
}

}  // namespace qarac
