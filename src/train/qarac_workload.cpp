// model.mode qarac (train/workload.h): QE, AE and D built from a pre-trained base, trained on
// the four objectives (train/objectives.h) and, with rehearsal, masked language modelling through
// AE's base (train/rehearsal.h). The base's MLM head is set aside for the forgetting monitor of
// the evaluation and the rehearsal.
#include <cstdlib>
#include <string>
#include <string_view>

#include "core/hash.h"
#include "core/log.h"
#include "data/tokenizer.h"
#include "io/hf_checkpoint.h"
#include "io/hf_export.h"
#include "train/rehearsal.h"
#include "train/workload.h"

namespace qarac {
namespace {

// The rehearsal's masking, with <mask> and the special tokens of eval.tokenizer (as the forgetting
// monitor's), else of the tokenizer in model.base.
MlmMasking rehearsal_masking(const TrainConfig& c, const RobertaConfig& base) {
  std::string dir = c.eval_tokenizer;
  if (dir.empty() && data::Tokenizer::found_in(c.base)) dir = c.base;
  QARAC_INPUT_CHECK(!dir.empty(), "task.mlm.weight: rehearsal masks tokens with the tokenizer's <mask>, but ", c.base,
                    " holds no tokenizer (tokenizer.json, or vocab.json and merges.txt): set eval.tokenizer");
  const data::Tokenizer tokenizer = data::Tokenizer::from_dir(dir);
  QARAC_INPUT_CHECK(static_cast<int64_t>(tokenizer.vocab_size()) == base.vocab_size, "task.mlm.weight: the tokenizer ",
                    dir, " has ", tokenizer.vocab_size(), " tokens, but the base ", c.base, " has ", base.vocab_size);
  return mlm_masking(tokenizer, static_cast<uint64_t>(c.seed), c.mask_probability);
}

// Layers the weights hold beyond config.json's num_hidden_layers take no parameter: said, as
// transformers does, since a config that lies about its depth trains a smaller model unnoticed.
void warn_unused_layers(const io::HfRoberta& base, const std::string& source) {
  int64_t unused = 0;
  std::string first;
  constexpr std::string_view kLayers = "encoder.layer.";
  for (const auto& [name, tensor] : base.encoder) {
    if (name.rfind(kLayers, 0) != 0) continue;
    const char* number = name.c_str() + kLayers.size();
    char* end = nullptr;
    const long long layer = std::strtoll(number, &end, 10);
    if (end == number || layer < base.config.num_layers) continue;
    if (unused++ == 0) first = name;
  }
  if (unused > 0)
    log::warn_shared(source, ": ", unused, " tensors of layers beyond config.json's num_hidden_layers (",
              base.config.num_layers, ") are left unused (the first: '", printable(first), "')");
}

class QaracWorkload : public Workload {
 public:
  QaracWorkload(const TrainConfig& c, Device device, const std::array<bool, parallel::kModelCount>& build)
      : base_(io::read_hf_roberta(c.base)) {
    if (c.rehearsal())
      QARAC_INPUT_CHECK(!base_.lm_head.empty(), "task.mlm.weight: rehearsal trains with the base's MLM head, but ",
                        base_.weights, " has no lm_head.* tied to its word embeddings (a RobertaModel, or an untied head; give a RobertaForMaskedLM)");
    if (c.dropout >= 0) base_.config.hidden_dropout = base_.config.attention_dropout = c.dropout;
    QaracConfig qc;
    qc.base = base_.config;
    qc.share_encoder_base = c.share_encoder_base;
    qc.tie_lm_head = c.tie_lm_head;
    qc.init_seed = static_cast<uint64_t>(c.seed);
    qc.init_std = c.init_std;
    qc.build_question_encoder = build[static_cast<int>(parallel::Model::question_encoder)];
    qc.build_answer_encoder = build[static_cast<int>(parallel::Model::answer_encoder)];
    qc.build_decoder = build[static_cast<int>(parallel::Model::decoder)];
    qc.base_source = base_.weights;
    warn_unused_layers(base_, qc.base_source);
    models_ = std::make_unique<QaracModels>(qc, base_.encoder, c.dtype_value(), device);
    base_.encoder.clear();  // the models hold copies; the MLM head stays for the forgetting monitor
    objectives_ = std::make_unique<Objectives>(*models_, qa_objective_of(c));
    train_head_ = c.mlm_head == "trained";
    // The head read from the base at every start, never trained: a frozen rehearsal's, and the
    // forgetting monitor's (eval.tokenizer gives its masks). A trained one is the checkpoint's.
    if ((c.rehearsal() && !train_head_) || (!c.eval_dir.empty() && !c.eval_tokenizer.empty())) {
      Hash64 hash;
      for (const auto& [name, tensor] : base_.lm_head) {
        Tensor host = tensor.to(Device::cpu());
        if (!host.is_contiguous()) host = host.clone();
        hash.bytes(name.data(), name.size());
        hash.bytes(host.raw(), host.nbytes());
      }
      frozen_base_hash_ = hash.value();
    }
    if (c.rehearsal() && qc.build_answer_encoder)
      rehearsal_ = std::make_unique<Rehearsal>(*models_, base_.lm_head, base_.weights,
                                               rehearsal_masking(c, base_.config), train_head_);
    // eval.tokenizer is read by the forgetting monitor, the rehearsal and an export from a base
    // without a tokenizer; given where none of them is, it is said rather than passed unchecked.
    if (!c.eval_tokenizer.empty() && c.eval_dir.empty() && !c.rehearsal() && data::Tokenizer::found_in(c.base))
      log::warn_shared("eval.tokenizer ", c.eval_tokenizer, ": not read (no eval.dir for the forgetting monitor, "
                       "task.mlm.weight 0, and the exports carry model.base's tokenizer)");
  }

  const RobertaConfig& model_config() const override { return models_->config().base; }
  int64_t vocab_size() const override { return models_->config().base.vocab_size; }
  int64_t max_tokens() const override { return models_->config().base.max_tokens(); }
  // With a trained rehearsal head, its group last: written during AE's backward pass of the
  // rehearsal, it launches after AE's groups (parallel::launch_order, docs/distributed.md §7).
  std::vector<parallel::ParameterGroup> parameter_groups(const parallel::TaskPlan& plan) override {
    std::vector<parallel::ParameterGroup> groups =
        parallel::qarac_parameter_groups(plan, models_->parameters(), models_->config().share_encoder_base);
    if (rehearsal_ && train_head_)
      groups.push_back({"mlm_head", {parallel::Model::answer_encoder}, plan.ranks_of(data::Task::masked_lm),
                        rehearsal_->head_parameters()});
    return groups;
  }

  void begin_task(data::Task task, const std::vector<data::TaskBatch>& micro, const ForwardOptions& forward,
                  const GatherRows& gather) override {
    objectives_->begin_task(task, micro, forward, gather);
  }

  const Tensor& run(const data::TaskBatch& batch, const ObjectiveOptions& options) override {
    if (batch.task != data::Task::masked_lm) return objectives_->run(batch, options);
    QARAC_CHECK(rehearsal_, "a masked_lm batch without rehearsal");
    return rehearsal_->run(batch, options);
  }

  EvalResult evaluate(Evaluator* evaluator) override {
    return evaluator ? evaluator->evaluate({*models_, base_.lm_head}) : EvalResult{};
  }

  std::vector<std::string> export_models(const std::string& folder, const io::ExportExtras& extras) override {
    const std::vector<std::string> models = {"question_encoder", "answer_encoder", "decoder"};
    // export_hf_model refuses weights that are not finite as written (f32: an f64 run's may overflow).
    for (const std::string& model : models)
      io::export_hf_model(folder, model, models_->config().base,
                          io::master_tensors(models_->model_parameters(model)), extras);
    return models;
  }

  uint64_t frozen_base_hash() const override { return frozen_base_hash_; }

 private:
  io::HfRoberta base_;
  std::unique_ptr<QaracModels> models_;
  std::unique_ptr<Objectives> objectives_;
  std::unique_ptr<Rehearsal> rehearsal_;  // task.mlm.weight > 0
  bool train_head_ = false;              // task.mlm.head trained
  uint64_t frozen_base_hash_ = 0;        // of base_.lm_head, when the run reads it
};

}  // namespace

QaObjective qa_objective_of(const TrainConfig& config) { return {config.contrastive_qa(), config.qa_temperature}; }

std::unique_ptr<Workload> make_qarac_workload(const TrainConfig& config, Device device,
                                              const std::array<bool, parallel::kModelCount>& build) {
  return std::make_unique<QaracWorkload>(config, device, build);
}

}  // namespace qarac
