// The training loop of qarac-train. Layout of a run directory (config.output):
//   config.ini              the effective configuration (a fresh run writes it)
//   metrics.jsonl           one JSON object per step, and per evaluation ("eval": true)
//   checkpoints/            checkpoint-<step>.h5, the newest checkpoint.keep of them; with several
//                           ranks, rank-<r>/checkpoint-<step>.h5, what rank r holds
//   export/<model>/         config.json + model.safetensors per model, at the end
#include "train/trainer.h"

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <thread>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/log.h"
#include "data/loader.h"
#include "dist/gradient_sync.h"
#include "dist/runtime.h"
#include "io/hf_checkpoint.h"
#include "io/hf_export.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "model/init.h"
#include "model/masked_lm.h"
#include "train/checkpoint.h"
#include "train/evaluation.h"
#include "train/objectives.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace qarac {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// "1h02m03s", "4m05s", "6s".
std::string duration_text(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char text[32];
  if (s >= 3600)
    std::snprintf(text, sizeof text, "%lldh%02lldm%02llds", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  else if (s >= 60)
    std::snprintf(text, sizeof text, "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  else
    std::snprintf(text, sizeof text, "%llds", static_cast<long long>(s));
  return text;
}

// One loader per task of the rank, so that every task has its own batch size; together they act
// as the loader of the rank's plan: a step takes one batch of each task, in plan order, and the
// cursor is the tasks' cursors in that order (what a checkpoint stores).
class TaskLoaders {
 public:
  TaskLoaders(const data::RankPlan& plan, const TrainConfig& config) {
    std::string first_hash, first_path;
    for (const data::TaskSlot& slot : plan.tasks) {
      data::RankPlan one = plan;
      one.tasks = {slot};
      const TaskSettings& settings = config.task[static_cast<int>(slot.task)];
      data::LoaderOptions options;
      options.data_dir = config.data_dir;
      options.seed = static_cast<uint64_t>(config.seed);
      options.token_budget = settings.tokens;
      options.max_examples = settings.examples;
      loaders_.emplace_back(one, options);
      const std::string path = config.data_dir + "/" + data::task_name(slot.task) + ".h5";
      const std::string& hash = loaders_.back().info(0).tokenizer_hash;
      if (first_path.empty()) {
        first_hash = hash;
        first_path = path;
      }
      QARAC_INPUT_CHECK(hash == first_hash, path, ": made with tokenizer ", hash, ", but ",
                        first_path, " with ", first_hash, " (rerun qarac-prep with one tokenizer)");
    }
  }

  data::StepBatch next() {
    data::StepBatch step;
    for (data::Loader& loader : loaders_) {
      data::StepBatch one = loader.next();
      step.step = one.step;
      step.tasks.push_back(std::move(one.tasks.front()));
    }
    return step;
  }

  data::LoaderCursor cursor() const {
    data::LoaderCursor c;
    for (const data::Loader& loader : loaders_) {
      const data::LoaderCursor one = loader.cursor();
      c.step = one.step;
      c.tasks.push_back(one.tasks.front());
    }
    return c;
  }

  void restore(const data::LoaderCursor& c) {
    QARAC_INPUT_CHECK(c.tasks.size() == loaders_.size(), "data cursor: ", c.tasks.size(),
                      " tasks, this rank runs ", loaders_.size());
    for (size_t i = 0; i < loaders_.size(); ++i) loaders_[i].restore({c.step, {c.tasks[i]}});
  }

 private:
  std::vector<data::Loader> loaders_;
};

// What one step measured. With several ranks, the losses, counts and times are the world's.
struct StepStats {
  double lr = 0, grad_norm = 0;
  std::array<double, data::kTaskCount> losses{};  // per task: mean over the ranks that ran it
  std::array<bool, data::kTaskCount> ran{};       // tasks that ran anywhere
  int64_t tokens = 0, examples = 0;               // summed over the ranks
  double seconds = 0;                              // this rank's wall time of the step
  // Means over the ranks: reading the batch, forward/backward/update, waiting for the gradient
  // reduction; and the longest wait of any rank.
  double data_seconds = 0, compute_seconds = 0, comm_seconds = 0, comm_max_seconds = 0;
};

// What a run trains. The step loop, optimizer, schedule, checkpoints and metrics are the same
// for both workloads; only the models, the loss of a task batch, the evaluation and the export
// differ.
class Workload {
 public:
  virtual ~Workload() = default;
  // Its parameters by model, each held by the ranks of `plan` whose tasks use the model.
  virtual std::vector<dist::ParameterGroup> parameter_groups(const dist::TaskPlan& plan) = 0;
  // Forward and backward of one task batch, gradients scaled by options.weight; the loss as a
  // device scalar [1].
  virtual const Tensor& run(const data::TaskBatch& batch, const ObjectiveOptions& options) = 0;
  // Held-out metrics (no gradients); `evaluator` is qarac-train's [eval] hook, may be null.
  virtual EvalResult evaluate(Evaluator* evaluator, int64_t step) = 0;
  // The trained models as Hugging Face directories under output/export/.
  virtual void export_models(const fs::path& output) = 0;
};

// model.mode qarac: QE, AE and D from a pre-trained base, on the four objectives.
class QaracWorkload : public Workload {
 public:
  // Builds the models `build` marks (dist::Model order).
  QaracWorkload(const TrainConfig& c, Device device, const std::array<bool, dist::kModelCount>& build)
      : base_(io::read_hf_roberta(c.base)) {
    if (c.dropout >= 0) base_.config.hidden_dropout = base_.config.attention_dropout = c.dropout;
    QaracConfig qc;
    qc.base = base_.config;
    qc.share_encoder_base = c.share_encoder_base;
    qc.tie_lm_head = c.tie_lm_head;
    qc.init_seed = static_cast<uint64_t>(c.seed);
    qc.init_std = c.init_std;
    qc.build_question_encoder = build[static_cast<int>(dist::Model::question_encoder)];
    qc.build_answer_encoder = build[static_cast<int>(dist::Model::answer_encoder)];
    qc.build_decoder = build[static_cast<int>(dist::Model::decoder)];
    models_ = std::make_unique<QaracModels>(qc, base_.encoder, c.dtype_value(), device);
    base_.encoder.clear();  // the models hold copies; the MLM head stays for the forgetting monitor
    objectives_ = std::make_unique<Objectives>(*models_);
  }
  std::vector<dist::ParameterGroup> parameter_groups(const dist::TaskPlan& plan) override {
    return dist::qarac_parameter_groups(plan, models_->parameters(), models_->config().share_encoder_base);
  }
  const Tensor& run(const data::TaskBatch& batch, const ObjectiveOptions& options) override {
    return objectives_->run(batch, options);
  }
  EvalResult evaluate(Evaluator* evaluator, int64_t step) override {
    return evaluator ? evaluator->evaluate({*models_, base_.lm_head, base_.config, step}) : EvalResult{};
  }
  void export_models(const fs::path& output) override {
    for (const char* model : {"question_encoder", "answer_encoder", "decoder"})
      io::export_hf_model(output.string(), model, models_->config().base,
                          io::master_tensors(models_->model_parameters(model)));
  }

 private:
  io::HfRoberta base_;
  std::unique_ptr<QaracModels> models_;
  std::unique_ptr<Objectives> objectives_;
};

// model.mode mlm: a RoBERTa base with its tied MLM head, masked language modelling on the text
// stream (encode_decode), from scratch or from model.base; exported as export/base, a Hugging
// Face RobertaForMaskedLM directory that model.base of a qarac run can name.
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
    loss_ = Tensor::zeros({1}, ops::accumulation_dtype(c.dtype_value()), device);
    if (!c.eval_dir.empty()) {
      const data::TaskStreamFile text(c.eval_dir + "/" + data::task_name(data::Task::encode_decode) + ".h5");
      const data::Ragged field = text.read_field(0, 0, std::min(c.eval_examples, text.examples()));
      for (int64_t i = 0; i < field.count(); ++i) held_out_.emplace_back(field.begin(i), field.begin(i) + field.length(i));
    }
  }
  // One model, written by the text task's backward pass, on every rank.
  std::vector<dist::ParameterGroup> parameter_groups(const dist::TaskPlan& plan) override {
    return {{"base", {}, plan.ranks_of(data::Task::encode_decode), mlm_->parameters()}};
  }
  const Tensor& run(const data::TaskBatch& batch, const ObjectiveOptions& options) override {
    const data::PackedField& text = batch.fields[0];
    std::vector<std::vector<int32_t>> seqs;
    for (int64_t b = 0; b < text.count(); ++b)
      seqs.emplace_back(text.tokens.begin() + text.starts[b], text.tokens.begin() + text.starts[b + 1]);
    const MaskedTokens masked = mask_tokens(seqs, config_.vocab_size, masking_, options.forward.step);
    const double loss = mlm_->loss(masked, options.forward, /*backward=*/true, options.weight);
    loss_.copy_(Tensor::from_vector(std::vector<double>{loss}, {1}).to(loss_.dtype()));
    return loss_;
  }
  EvalResult evaluate(Evaluator*, int64_t) override {
    EvalResult r;
    if (held_out_.empty()) return r;
    // The same masks at every evaluation (step 0), so the figures compare.
    r.metrics["mlm.loss"] = mlm_->loss(mask_tokens(held_out_, config_.vocab_size, masking_, 0), ForwardOptions{}, false);
    return r;
  }
  void export_models(const fs::path& output) override {
    io::export_hf_model(output.string(), "base", config_, io::master_tensors(mlm_->parameters()));
  }

 private:
  RobertaConfig config_;
  MlmMasking masking_;
  std::unique_ptr<RobertaEncoder> encoder_;
  std::unique_ptr<MaskedLM> mlm_;
  Tensor loss_;
  std::vector<std::vector<int32_t>> held_out_;
};

// Test hooks of the distributed tests, from QARAC_FAULT="<kind>:<rank>:<step>": at the start of
// step <step>, rank <rank> kills itself (kill, SIGKILL), sleeps for good (stall) or shifts one
// of its weights (diverge, which the replica check must catch). Unset in normal runs.
struct Fault {
  enum Kind { none, kill, stall, diverge } kind = none;
  int rank = -1;
  int64_t step = -1;

  static Fault from_env() {
    Fault f;
    const char* text = std::getenv("QARAC_FAULT");
    if (!text || !*text) return f;
    char kind[16] = {};
    long long step = -1;
    QARAC_INPUT_CHECK(std::sscanf(text, "%15[a-z]:%d:%lld", kind, &f.rank, &step) == 3,
                      "QARAC_FAULT: '", text, "' is not <kill|stall|diverge>:<rank>:<step>");
    const std::string k = kind;
    f.kind = k == "kill" ? Fault::kill : k == "stall" ? Fault::stall : k == "diverge" ? Fault::diverge : Fault::none;
    QARAC_INPUT_CHECK(f.kind != Fault::none, "QARAC_FAULT: unknown kind '", k, "' (kill, stall, diverge)");
    f.step = step;
    return f;
  }
};

}  // namespace

struct Trainer::Impl {
  TrainConfig config;
  const dist::Runtime* runtime;  // null: one process without MPI
  int rank = 0, world_size = 1;
  std::unique_ptr<dist::MpiGroup> world;  // with several ranks
  dist::Backend backend = dist::Backend::mpi;
  dist::TaskPlan plan;
  // The task batches this process runs per step, in order: this rank's slots, or with
  // parallel.simulate_world every simulated rank's, one rank after another.
  std::vector<data::TaskSlot> slots;
  // Per slot, the models whose last use in this process's step it is: after its backward pass
  // their reduction can start.
  std::vector<std::vector<dist::Model>> released_after;
  std::unique_ptr<TaskLoaders> loaders;
  std::unique_ptr<Workload> workload;
  std::unique_ptr<dist::GradientSync> sync;
  ParameterList params;  // the held ones: what the optimizer updates
  std::unique_ptr<Optimizer> optimizer;
  LearningRateSchedule schedule;
  std::unique_ptr<Evaluator> evaluator;
  Fault fault;
  std::string resume_from;  // the checkpoint to resume from, when resuming
  int64_t step = 0;         // training steps completed
  Tensor step_losses;       // [slots] on the device: the losses of one step, read back at once

  fs::path output, checkpoint_dir;
  std::ofstream metrics;
  bool terminal = false;       // stdout is a terminal: the progress line is rewritten in place
  bool progress_open = false;  // a progress line without its newline is on the terminal
  Clock::time_point started;
  int64_t first_step = 0;  // the step this process started at (ETA)
  int64_t last_checkpoint = -1, last_eval = -1, last_check = -1;

  Impl(const TrainConfig& c, const dist::Runtime* runtime_);
  bool is_root() const { return rank == 0; }
  std::string step_text() const { return "step " + std::to_string(step + 1); }
  void find_resume_checkpoint();
  void check_output_dir();
  StepStats train_step();
  void gather_stats(StepStats& s, const std::vector<double>& slot_losses) const;
  void inject_fault();
  void write_metrics(const StepStats& s);
  void print_progress(const StepStats& s);
  void end_progress_line();  // before a log line, so that it does not land inside the progress
  void save();
  void evaluate();
  void check_replicas();
  void export_models();
};

namespace {

dist::TaskPlan make_plan(const TrainConfig& c, int world_size) {
  dist::TaskValues weights{};
  std::array<int64_t, data::kTaskCount> tokens{};
  for (int t = 0; t < data::kTaskCount; ++t) {
    weights[t] = c.task[t].weight;
    tokens[t] = c.task[t].tokens;
  }
  // Pre-training reads the text stream alone, on every rank.
  if (c.pretraining()) return dist::TaskPlan::single_task(data::Task::encode_decode, world_size);
  return dist::TaskPlan::parse(c.tasks, world_size, weights, dist::estimated_costs(tokens));
}

// check_values first: the schedule's and the plan's own checks would name no key.
const TrainConfig& checked(const TrainConfig& c) {
  check_values(c);
  return c;
}

int world_size_of(const TrainConfig& c, const dist::Runtime* runtime) {
  const int processes = runtime ? runtime->size() : 1;
  QARAC_INPUT_CHECK(c.simulate_world == 0 || processes == 1, "parallel.simulate_world: ", c.simulate_world,
                    " runs the plan of that many ranks in one process, but this job has ", processes);
  return c.simulate_world > 0 ? static_cast<int>(c.simulate_world) : processes;
}

}  // namespace

Trainer::Impl::Impl(const TrainConfig& c, const dist::Runtime* runtime_)
    : config(checked(c)),
      runtime(runtime_),
      rank(runtime_ ? runtime_->rank() : 0),
      world_size(runtime_ ? runtime_->size() : 1),
      plan(make_plan(config, world_size_of(config, runtime_))),
      schedule(config.schedule_config()),
      output(config.output),
      checkpoint_dir(output / "checkpoints") {
  const Device device = config.device_value();
  if (world_size > 1) {
    log::set_rank(rank);
    world = std::make_unique<dist::MpiGroup>(MPI_COMM_WORLD, "the world", config.timeout);
    checkpoint_dir /= "rank-" + std::to_string(rank);  // every rank saves what it holds
  }
  if (device.is_cuda()) {
    QARAC_INPUT_CHECK(cuda_device_count() > 0, "train.device: cuda, but no CUDA device is available",
                      " (or this build has no CUDA backend)");
    if (runtime) runtime->use_local_gpu();
  }
  backend = dist::backend_from_name(config.backend, device.is_cuda());
  fault = Fault::from_env();
  check_output_dir();

  data::RankPlan rank_plan = plan.rank_plan(rank);
  if (config.simulate_world > 0)
    for (int r = 1; r < plan.world_size(); ++r)
      for (const data::TaskSlot& slot : plan.rank_plan(r).tasks) rank_plan.tasks.push_back(slot);
  slots = rank_plan.tasks;
  released_after.resize(slots.size());
  for (int m = 0; m < dist::kModelCount; ++m) {
    for (size_t i = slots.size(); i-- > 0;) {
      const std::vector<dist::Model>& used = dist::models_of(slots[i].task);
      if (std::find(used.begin(), used.end(), static_cast<dist::Model>(m)) == used.end()) continue;
      released_after[i].push_back(static_cast<dist::Model>(m));
      break;
    }
  }
  loaders = std::make_unique<TaskLoaders>(rank_plan, config);
  if (config.pretraining())
    workload = std::make_unique<MlmWorkload>(config, device);
  else {
    // A rank builds the models its tasks use; rank 0 (and a simulated world) all three, for the
    // evaluation and the export.
    std::array<bool, dist::kModelCount> build{};
    for (int m = 0; m < dist::kModelCount; ++m)
      build[m] = is_root() || config.simulate_world > 0 || plan.holds(rank, static_cast<dist::Model>(m));
    workload = std::make_unique<QaracWorkload>(config, device, build);
  }
  // A simulated world holds every model in this one process.
  const dist::TaskPlan holders = config.simulate_world > 0 ? make_plan(config, 1) : plan;
  sync = std::make_unique<dist::GradientSync>(world.get(), workload->parameter_groups(holders), backend,
                                              static_cast<int64_t>(config.bucket_mb * (1 << 20)));
  params = sync->held_parameters();
  optimizer = std::make_unique<Optimizer>(params, config.optimizer_config());
  step_losses = Tensor::zeros({static_cast<int64_t>(slots.size())},
                              ops::accumulation_dtype(config.dtype_value()), device);
  if (config.resume) find_resume_checkpoint();
}

// A fresh run needs a new or empty directory, so that it never mixes its files with another
// run's; --resume needs the directory of the run.
void Trainer::Impl::check_output_dir() {
  std::error_code ec;
  const bool exists = fs::exists(output, ec);
  if (config.resume) {
    QARAC_INPUT_CHECK(exists, "--resume: output ", output.string(), " does not exist");
    return;
  }
  if (!exists) return;
  QARAC_INPUT_CHECK(fs::is_directory(output, ec), "output: ", output.string(), " is not a directory");
  QARAC_INPUT_CHECK(fs::is_empty(output, ec), "output: ", output.string(),
                    " is not empty (--resume continues its run; or choose another directory)");
}

// The newest checkpoint of this rank's folder; with several ranks, the newest step every rank
// has (a job killed while some ranks were writing leaves the others one checkpoint ahead).
void Trainer::Impl::find_resume_checkpoint() {
  // A run resumes with the world size it was trained with: its checkpoints lie in one folder
  // per rank (several ranks) or in checkpoints/ itself (one).
  int rank_folders = 0;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(output / "checkpoints", ec))
    rank_folders += e.is_directory() && e.path().filename().string().rfind("rank-", 0) == 0;
  const int trained_with = rank_folders > 0 ? rank_folders : 1;
  QARAC_INPUT_CHECK(trained_with == world_size, "--resume: ", output.string(), " was trained with ", trained_with,
                    " rank(s) and this job has ", world_size, "; resume it with as many (mpirun -np ",
                    trained_with, ")");
  const std::optional<std::string> latest = find_latest_checkpoint(checkpoint_dir.string());
  if (!world) {
    QARAC_INPUT_CHECK(latest, "--resume: no valid checkpoint in ", checkpoint_dir.string());
    resume_from = *latest;
    return;
  }
  // The step from the file name; -1 for none.
  double newest = latest ? static_cast<double>(std::stoll(fs::path(*latest).stem().string().substr(11))) : -1;
  double oldest = newest;
  world->all_reduce(&newest, 1, MPI_MAX, "agreeing on the checkpoint to resume from");
  world->all_reduce(&oldest, 1, MPI_MIN, "agreeing on the checkpoint to resume from");
  QARAC_INPUT_CHECK(oldest >= 0, "--resume: some rank has no valid checkpoint (this is rank ", rank,
                    "; its folder ", checkpoint_dir.string(), latest ? " has one)" : " has none)");
  if (oldest != newest && is_root())
    log::warn("--resume: the ranks' newest checkpoints differ (steps ", oldest, " and ", newest,
              "); resuming all from step ", oldest);
  resume_from = checkpoint_path(checkpoint_dir.string(), static_cast<int64_t>(oldest));
}

void Trainer::Impl::inject_fault() {
  if (fault.kind == Fault::none || fault.rank != rank || fault.step != step) return;
  log::warn("QARAC_FAULT: ", fault.kind == Fault::kill ? "killing" : fault.kind == Fault::stall ? "stalling" : "perturbing",
            " rank ", rank, " at step ", step);
  if (fault.kind == Fault::kill) std::raise(SIGKILL);
  if (fault.kind == Fault::stall)
    while (true) std::this_thread::sleep_for(std::chrono::hours(1));
  // A weight of a model other ranks hold too, so that the replicas disagree.
  Parameter* target = nullptr;
  for (const dist::ParameterGroup& g : sync->groups())
    if (!target && g.ranks.size() > 1 && std::find(g.ranks.begin(), g.ranks.end(), rank) != g.ranks.end())
      target = g.params.front();
  QARAC_INPUT_CHECK(target, "QARAC_FAULT: diverge, but rank ", rank, " shares no model with another rank");
  Parameter& p = *target;
  Tensor shifted = p.master.to(Device::cpu()).to(DType::f64).clone();
  shifted.data<double>()[0] += 1e-3;
  p.assign(shifted);
}

StepStats Trainer::Impl::train_step() {
  const Clock::time_point t0 = Clock::now();
  StepStats s;
  inject_fault();
  const data::StepBatch batch = loaders->next();
  const Clock::time_point t_data = Clock::now();
  zero_grads(params);
  int64_t examples = 0;
  for (size_t i = 0; i < batch.tasks.size(); ++i) {
    const data::TaskBatch& task_batch = batch.tasks[i];
    ObjectiveOptions options;
    options.weight = plan.gradient_scale(task_batch.task);  // w_t / n_t
    options.forward.training = true;
    options.forward.seed = static_cast<uint64_t>(config.seed);
    options.forward.step = static_cast<uint64_t>(step);
    // A model's reduction starts a bucket at a time during its last backward pass of the step.
    const std::vector<dist::Model>& released = released_after[i];
    options.backward_done = [&](dist::Model m) {
      if (std::find(released.begin(), released.end(), m) != released.end()) sync->model_done(m);
    };
    for (dist::Model m : released) options.last_use[static_cast<int>(m)] = true;
    options.gradients_ready = [&](const ParameterList& ready) { sync->parameters_ready(ready); };
    const Tensor& loss = workload->run(task_batch, options);
    // Kept on the device: the losses are read back together after the update.
    step_losses.slice(0, static_cast<int64_t>(i), static_cast<int64_t>(i) + 1).copy_(loss);
    s.tokens += task_batch.tokens();
    examples += task_batch.count();
    for (dist::Model m : released) sync->model_done(m);  // workloads that do not report it
  }
  const Clock::time_point t_backward = Clock::now();
  const double waited = sync->finish(step_text());
  s.lr = schedule.at(step);
  // The norm of the whole gradient, every model's counted once: clipping needs it, the metrics
  // report it.
  s.grad_norm = std::sqrt(sync->global_grad_sum_of_squares(step_text()));
  optimizer->update(s.lr, Optimizer::clip_factor(s.grad_norm, config.clip));
  std::vector<double> slot_losses = step_losses.to(Device::cpu()).to(DType::f64).to_vector<double>();
  ++step;
  const Clock::time_point t_end = Clock::now();
  s.seconds = seconds_between(t0, t_end);
  s.examples = examples;
  s.data_seconds = seconds_between(t0, t_data);
  s.comm_seconds = s.comm_max_seconds = waited;
  s.compute_seconds = seconds_between(t_data, t_backward) + seconds_between(t_backward, t_end) - waited;
  gather_stats(s, slot_losses);
  return s;
}

// Per task the mean loss over the slots (ranks) that ran it; with several ranks, everything
// summed (or maximised) over the world: one small all-reduce per step.
void Trainer::Impl::gather_stats(StepStats& s, const std::vector<double>& slot_losses) const {
  enum { kTokens, kExamples, kData, kCompute, kComm, kLoss, kCount = kLoss + data::kTaskCount };
  std::vector<double> sums(kCount + data::kTaskCount, 0.0);
  sums[kTokens] = static_cast<double>(s.tokens);
  sums[kExamples] = static_cast<double>(s.examples);
  sums[kData] = s.data_seconds;
  sums[kCompute] = s.compute_seconds;
  sums[kComm] = s.comm_seconds;
  for (size_t i = 0; i < slots.size(); ++i) {
    const int t = static_cast<int>(slots[i].task);
    sums[kLoss + t] += slot_losses[i];
    sums[kCount + t] += 1;
  }
  double comm_max = s.comm_seconds;
  if (world) {
    world->all_reduce(sums.data(), static_cast<int>(sums.size()), MPI_SUM, "step statistics at step " + std::to_string(step));
    world->all_reduce(&comm_max, 1, MPI_MAX, "step statistics at step " + std::to_string(step));
  }
  const double ranks = static_cast<double>(world_size);
  s.tokens = static_cast<int64_t>(sums[kTokens]);
  s.examples = static_cast<int64_t>(sums[kExamples]);
  s.data_seconds = sums[kData] / ranks;
  s.compute_seconds = sums[kCompute] / ranks;
  s.comm_seconds = sums[kComm] / ranks;
  s.comm_max_seconds = comm_max;
  for (int t = 0; t < data::kTaskCount; ++t) {
    s.ran[t] = sums[kCount + t] > 0;
    s.losses[t] = s.ran[t] ? sums[kLoss + t] / sums[kCount + t] : 0.0;
  }
}

void Trainer::Impl::write_metrics(const StepStats& s) {
  nlohmann::json line;
  line["step"] = step;
  line["world_size"] = world_size;
  line["lr"] = s.lr;
  line["grad_norm"] = s.grad_norm;
  nlohmann::json losses = nlohmann::json::object();
  double weighted = 0;
  for (int t = 0; t < data::kTaskCount; ++t) {
    if (!s.ran[t]) continue;
    const data::Task task = static_cast<data::Task>(t);
    losses[data::task_name(task)] = s.losses[t];
    weighted += plan.weight(task) * s.losses[t];
  }
  line["loss"] = losses;
  line["loss_weighted"] = weighted;  // Σ w_t loss_t
  const double per_s = s.seconds > 0 ? 1.0 / s.seconds : 0.0;
  line["global_tokens"] = s.tokens;
  line["global_examples"] = s.examples;
  line["global_tokens_per_s"] = static_cast<double>(s.tokens) * per_s;
  line["global_examples_per_s"] = static_cast<double>(s.examples) * per_s;
  line["step_time_s"] = s.seconds;
  line["data_time_s"] = s.data_seconds;
  line["compute_time_s"] = s.compute_seconds;
  line["comm_wait_s"] = s.comm_seconds;
  line["comm_wait_max_s"] = s.comm_max_seconds;
  line["elapsed_s"] = seconds_between(started, Clock::now());
  metrics << line.dump() << "\n";
  metrics.flush();
}

void Trainer::Impl::print_progress(const StepStats& s) {
  const bool last = step == config.steps;
  if (!terminal && step % config.log_every != 0 && !last) return;
  const double per_step = seconds_between(started, Clock::now()) / static_cast<double>(step - first_step);
  std::string losses;
  char item[64];
  for (int t = 0; t < data::kTaskCount; ++t) {
    if (!s.ran[t]) continue;
    std::snprintf(item, sizeof item, "%s%s %.4f", losses.empty() ? "" : " ",
                  data::task_short_name(static_cast<data::Task>(t)), s.losses[t]);
    losses += item;
  }
  char comm[64] = "";
  if (world_size > 1) std::snprintf(comm, sizeof comm, " (comm wait %.3f)", s.comm_seconds);
  char line[512];
  std::snprintf(line, sizeof line,
                "step %lld/%lld | loss %s | lr %.3g | grad norm %.3g | %.0f tokens/s | %.3f s/step%s | ETA %s",
                static_cast<long long>(step), static_cast<long long>(config.steps), losses.c_str(),
                s.lr, s.grad_norm, s.seconds > 0 ? static_cast<double>(s.tokens) / s.seconds : 0.0,
                s.seconds, comm, duration_text(per_step * static_cast<double>(config.steps - step)).c_str());
  // On a terminal the line is rewritten in place ("\r", then erase to the end of the line).
  if (terminal) {
    std::printf("\r%s\033[K", line);
    progress_open = true;
    if (last) end_progress_line();
  } else {
    std::printf("%s\n", line);
  }
  std::fflush(stdout);
}

void Trainer::Impl::end_progress_line() {
  if (!progress_open) return;
  std::printf("\n");
  std::fflush(stdout);
  progress_open = false;
}

// Every rank saves what it holds (its models' weights and moments, its data cursors) into its
// own folder; one rank alone saves into checkpoints/ directly.
void Trainer::Impl::save() {
  last_checkpoint = step;
  TrainingState state;
  state.step = step;
  state.seed = static_cast<uint64_t>(config.seed);
  state.cursor = loaders->cursor();
  state.config = to_ini(config);
  const std::string path = save_checkpoint(checkpoint_dir.string(), *optimizer, state,
                                           static_cast<int>(config.checkpoint_keep));
  if (world) world->barrier("checkpoint at step " + std::to_string(step));
  end_progress_line();
  if (is_root()) log::info("checkpoint ", world ? (checkpoint_dir.parent_path() / "rank-*").string() : path,
                           world ? " at step " + std::to_string(step) : "");
}

void Trainer::Impl::evaluate() {
  last_eval = step;
  sync->gather_to_root("evaluation at step " + std::to_string(step));
  if (!is_root()) return;
  const EvalResult result = workload->evaluate(evaluator.get(), step);
  if (result.metrics.empty()) return;
  nlohmann::json line;
  line["step"] = step;
  line["eval"] = true;
  for (const auto& [name, value] : result.metrics) line[name] = value;
  metrics << line.dump() << "\n";
  metrics.flush();
  // The log line leaves out the confusion matrix's cells (metrics.jsonl has them all).
  std::string text;
  for (const auto& [name, value] : result.metrics)
    if (name.find(".confusion.") == std::string::npos) text += " " + name + "=" + std::to_string(value);
  end_progress_line();
  log::info("eval at step ", step, ":", text);
}

void Trainer::Impl::check_replicas() {
  last_check = step;
  if (!world) return;
  sync->check_replicas(step);
  if (is_root()) log::info("replica check at step ", step, ": every model's replicas are identical");
}

void Trainer::Impl::export_models() {
  sync->gather_to_root("export");
  if (!is_root()) return;
  end_progress_line();
  workload->export_models(output);
}

Trainer::Trainer(const TrainConfig& config, const dist::Runtime* runtime)
    : impl_(std::make_unique<Impl>(config, runtime)) {}

Trainer::~Trainer() = default;

void Trainer::set_evaluator(std::unique_ptr<Evaluator> evaluator) { impl_->evaluator = std::move(evaluator); }
const dist::TaskPlan& Trainer::plan() const { return impl_->plan; }
int64_t Trainer::step() const { return impl_->step; }

void Trainer::abort() noexcept {
  if (impl_ && impl_->sync) impl_->sync->abort();
}

void Trainer::run() {
  Impl& t = *impl_;
  const TrainConfig& c = t.config;
  if (!t.resume_from.empty()) {
    // Restores parameters, moments and the optimizer's step; refuses a checkpoint whose run
    // fixed the models, the data order or the plan differently.
    const TrainingState state = load_checkpoint(
        t.resume_from, *t.optimizer, [&](const std::string& saved) { return resume_mismatch(c, saved); });
    t.step = state.step;
    t.loaders->restore(state.cursor);
    t.last_checkpoint = t.step;
    if (t.is_root()) log::info("resuming from ", t.resume_from, " at step ", t.step);
  }
  // Every rank has checked the output directory before rank 0 creates it.
  if (t.world) t.world->barrier("start of the run");
  if (t.is_root()) {
    std::error_code ec;
    fs::create_directories(t.output, ec);
    QARAC_INPUT_CHECK(!ec, "output: cannot create ", t.output.string(), ": ", ec.message());
    if (t.resume_from.empty()) {
      std::ofstream ini(t.output / "config.ini");
      ini << to_ini(c);
      QARAC_INPUT_CHECK(ini.good(), (t.output / "config.ini").string(), ": cannot write");
    }
    const fs::path metrics_path = t.output / "metrics.jsonl";
    t.metrics.open(metrics_path, std::ios::app);  // a resumed run goes on in the same file
    QARAC_INPUT_CHECK(t.metrics.good(), metrics_path.string(), ": cannot open for writing");
    t.terminal = isatty(fileno(stdout)) != 0;
    int64_t count = 0;
    for (const dist::ParameterGroup& g : t.sync->groups())
      for (const Parameter* p : g.params) count += p->master.numel();
    std::string layout;
    if (c.simulate_world > 0) layout = ", simulating " + std::to_string(c.simulate_world) + " ranks in one process";
    if (t.world) layout = ", " + std::to_string(t.world_size) + " ranks, gradient all-reduce over " + dist::backend_name(t.backend);
    std::printf("%sqarac-train: %lld parameters, %s%s, steps %lld..%lld, output %s\n", t.plan.table().c_str(),
                static_cast<long long>(count), optimizer_name(t.optimizer->config().kind), layout.c_str(),
                static_cast<long long>(t.step), static_cast<long long>(c.steps), t.output.c_str());
    std::fflush(stdout);
  }
  if (t.world) t.world->barrier("creating the output directory");
  // The first evaluation of a fresh run measures the models before fine-tuning: the baseline of
  // the forgetting monitor.
  if (t.resume_from.empty()) t.evaluate();
  t.started = Clock::now();
  t.first_step = t.step;
  while (t.step < c.steps) {
    const StepStats s = t.train_step();
    if (t.is_root()) {
      t.write_metrics(s);
      t.print_progress(s);
    }
    if (c.check_every > 0 && t.step % c.check_every == 0) t.check_replicas();
    if (c.checkpoint_every > 0 && t.step % c.checkpoint_every == 0) t.save();
    if (c.eval_every > 0 && t.step % c.eval_every == 0) t.evaluate();
  }
  if (t.last_check != t.step) t.check_replicas();
  if (t.last_checkpoint != t.step) t.save();
  if (t.last_eval != t.step) t.evaluate();
  t.export_models();
}

}  // namespace qarac
