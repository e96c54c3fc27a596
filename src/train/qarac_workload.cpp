// model.mode qarac (train/workload.h): QE, AE and D built from a pre-trained base, trained on
// the four objectives (train/objectives.h). The base's MLM head is set aside for the forgetting
// monitor of the evaluation.
#include <string>

#include "io/hf_checkpoint.h"
#include "io/hf_export.h"
#include "train/workload.h"

namespace qarac {
namespace {

class QaracWorkload : public Workload {
 public:
  QaracWorkload(const TrainConfig& c, Device device, const std::array<bool, parallel::kModelCount>& build)
      : base_(io::read_hf_roberta(c.base)) {
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
    models_ = std::make_unique<QaracModels>(qc, base_.encoder, c.dtype_value(), device);
    base_.encoder.clear();  // the models hold copies; the MLM head stays for the forgetting monitor
    objectives_ = std::make_unique<Objectives>(*models_, qa_objective_of(c));
  }

  int64_t vocab_size() const override { return models_->config().base.vocab_size; }
  std::vector<parallel::ParameterGroup> parameter_groups(const parallel::TaskPlan& plan) override {
    return parallel::qarac_parameter_groups(plan, models_->parameters(), models_->config().share_encoder_base);
  }

  void begin_task(data::Task task, const std::vector<data::TaskBatch>& micro, const ForwardOptions& forward,
                  const GatherRows& gather) override {
    objectives_->begin_task(task, micro, forward, gather);
  }

  const Tensor& run(const data::TaskBatch& batch, const ObjectiveOptions& options) override {
    return objectives_->run(batch, options);
  }

  EvalResult evaluate(Evaluator* evaluator, int64_t step) override {
    return evaluator ? evaluator->evaluate({*models_, base_.lm_head, base_.config, step}) : EvalResult{};
  }

  void export_models(const std::string& output, const io::ExportExtras& extras) override {
    for (const char* model : {"question_encoder", "answer_encoder", "decoder"})
      io::export_hf_model(output, model, models_->config().base,
                          io::master_tensors(models_->model_parameters(model)), extras);
  }

 private:
  io::HfRoberta base_;
  std::unique_ptr<QaracModels> models_;
  std::unique_ptr<Objectives> objectives_;
};

}  // namespace

QaObjective qa_objective_of(const TrainConfig& config) { return {config.contrastive_qa(), config.qa_temperature}; }

std::unique_ptr<Workload> make_qarac_workload(const TrainConfig& config, Device device,
                                              const std::array<bool, parallel::kModelCount>& build) {
  return std::make_unique<QaracWorkload>(config, device, build);
}

}  // namespace qarac
