// The training loop of qarac-train: builds a run from its configuration (the plan, this rank's
// loaders, the workload, the gradient reduction, the optimizer) and runs its steps, with the
// replica checks, checkpoints, evaluations and the export on their schedules. The run directory
// is train/run_dir.h's, the workloads train/workload.h's, what is reported train/metrics.h's.
#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "core/log.h"
#include "parallel/gradient_sync.h"
#include "train/checkpoint.h"
#include "train/evaluation.h"
#include "train/fault.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/run_dir.h"
#include "train/schedule.h"
#include "train/task_loaders.h"
#include "train/workload.h"

namespace qarac {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

parallel::TaskPlan make_plan(const TrainConfig& c, int world_size) {
  parallel::TaskValues weights{};
  std::array<int64_t, data::kTaskCount> tokens{};
  for (int t = 0; t < data::kTaskCount; ++t) {
    weights[t] = c.task[t].weight;
    tokens[t] = c.task[t].tokens;
  }
  // Pre-training reads the text stream alone, on every rank.
  if (c.pretraining()) return parallel::TaskPlan::single_task(data::Task::encode_decode, world_size);
  return parallel::TaskPlan::parse(c.tasks, world_size, weights, parallel::estimated_costs(tokens));
}

// check_values first: the schedule's and the plan's own checks would name no key.
const TrainConfig& checked(const TrainConfig& c) {
  check_values(c);
  return c;
}

int world_size_of(const TrainConfig& c, const parallel::Runtime* runtime) {
  const int processes = runtime ? runtime->size() : 1;
  QARAC_INPUT_CHECK(c.simulate_world == 0 || processes == 1, "parallel.simulate_world: ", c.simulate_world,
                    " runs the plan of that many ranks in one process, but this job has ", processes);
  return c.simulate_world > 0 ? static_cast<int>(c.simulate_world) : processes;
}

}  // namespace

struct Trainer::Impl {
  // This process in the job.
  struct Place {
    explicit Place(const parallel::Runtime* r)
        : runtime(r), rank(r ? r->rank() : 0), world_size(r ? r->size() : 1) {}
    const parallel::Runtime* runtime;  // null: one process without MPI
    int rank, world_size;
    std::unique_ptr<parallel::MpiGroup> world;  // with several ranks
    parallel::Backend backend = parallel::Backend::mpi;
    bool root() const { return rank == 0; }
  };
  // What a step of this process runs, in order: this rank's task slots, or with
  // parallel.simulate_world every simulated rank's, one rank after another; and per slot the
  // models whose last use in the step it is: after its backward pass their reduction can start.
  struct StepLayout {
    std::vector<data::TaskSlot> slots;
    std::vector<std::vector<parallel::Model>> released_after;
  };
  // What trains.
  struct Training {
    std::unique_ptr<TaskLoaders> loaders;
    std::unique_ptr<Workload> workload;
    std::unique_ptr<parallel::GradientSync> sync;
    ParameterList params;  // the held ones: what the optimizer updates
    std::unique_ptr<Optimizer> optimizer;
    std::unique_ptr<Evaluator> evaluator;
    Tensor step_losses;  // [slots] on the device: the losses of one step, read back at once
  };
  // The steps at which each was last done.
  struct Last {
    int64_t checkpoint = -1, eval = -1, check = -1;
  };

  TrainConfig config;
  Place place;
  parallel::TaskPlan plan;
  LearningRateSchedule schedule;
  StepLayout layout;
  Training training;
  std::string output, checkpoint_dir;
  std::string resume_from;  // the checkpoint to resume from, when resuming
  MetricsLog metrics;       // rank 0's
  Fault fault;
  int64_t step = 0;  // training steps completed
  Last last;

  Impl(const TrainConfig& c, const parallel::Runtime* runtime);
  void build(Device device);
  std::string step_text() const { return "step " + std::to_string(step + 1); }
  void start();
  StepStats train_step();
  void save();
  void evaluate();
  void check_replicas();
  void export_models();
};

Trainer::Impl::Impl(const TrainConfig& c, const parallel::Runtime* runtime)
    : config(checked(c)),
      place(runtime),
      plan(make_plan(config, world_size_of(config, runtime))),
      schedule(config.schedule_config()),
      output(config.output),
      checkpoint_dir(qarac::checkpoint_dir(output, place.rank, place.world_size)) {
  const Device device = config.device_value();
  if (place.world_size > 1) {
    log::set_rank(place.rank);
    place.world = std::make_unique<parallel::MpiGroup>(MPI_COMM_WORLD, "the world", config.timeout);
  }
  if (device.is_cuda()) {
    QARAC_INPUT_CHECK(cuda_device_count() > 0, "train.device: cuda, but no CUDA device is available",
                      " (or this build has no CUDA backend)");
    if (runtime) runtime->use_local_gpu();
  }
  place.backend = parallel::backend_from_name(config.backend, device.is_cuda());
  fault = Fault::from_env();
  check_output_dir(output, config.resume);
  build(device);
  if (config.resume)
    resume_from = find_resume_checkpoint(output, place.rank, place.world_size, place.world.get());
}

// The step layout, loaders, workload, gradient reduction and optimizer of this process.
void Trainer::Impl::build(Device device) {
  data::RankPlan rank_plan = plan.rank_plan(place.rank);
  if (config.simulate_world > 0)
    for (int r = 1; r < plan.world_size(); ++r)
      for (const data::TaskSlot& slot : plan.rank_plan(r).tasks) rank_plan.tasks.push_back(slot);
  std::vector<data::TaskSlot>& slots = layout.slots;
  slots = rank_plan.tasks;
  layout.released_after.resize(slots.size());
  for (int m = 0; m < parallel::kModelCount; ++m) {
    for (size_t i = slots.size(); i-- > 0;) {
      const std::vector<parallel::Model>& used = parallel::models_of(slots[i].task);
      if (std::find(used.begin(), used.end(), static_cast<parallel::Model>(m)) == used.end()) continue;
      layout.released_after[i].push_back(static_cast<parallel::Model>(m));
      break;
    }
  }
  Training& t = training;
  t.loaders = std::make_unique<TaskLoaders>(rank_plan, config);
  if (config.pretraining()) {
    t.workload = make_mlm_workload(config, device);
  } else {
    // A rank builds the models its tasks use; rank 0 (and a simulated world) all three, for the
    // evaluation and the export.
    std::array<bool, parallel::kModelCount> build{};
    for (int m = 0; m < parallel::kModelCount; ++m)
      build[m] = place.root() || config.simulate_world > 0 || plan.holds(place.rank, static_cast<parallel::Model>(m));
    t.workload = make_qarac_workload(config, device, build);
  }
  // A simulated world holds every model in this one process.
  const parallel::TaskPlan holders = config.simulate_world > 0 ? make_plan(config, 1) : plan;
  const int64_t bucket_bytes = static_cast<int64_t>(config.bucket_mb * (1 << 20));
  t.sync = std::make_unique<parallel::GradientSync>(place.world.get(), t.workload->parameter_groups(holders),
                                                    place.backend, bucket_bytes);
  t.params = t.sync->held_parameters();
  t.optimizer = std::make_unique<Optimizer>(t.params, config.optimizer_config());
  t.step_losses =
      Tensor::zeros({static_cast<int64_t>(slots.size())}, ops::accumulation_dtype(config.dtype_value()), device);
}

// Restores the checkpoint when resuming; rank 0 creates the output directory, writes config.ini
// (a fresh run), opens metrics.jsonl and prints the run's table.
void Trainer::Impl::start() {
  if (!resume_from.empty()) {
    // Restores parameters, moments and the optimizer's step; refuses a checkpoint whose run
    // fixed the models, the data order or the plan differently.
    const TrainingState state = load_checkpoint(
        resume_from, *training.optimizer, [&](const std::string& saved) { return resume_mismatch(config, saved); });
    step = state.step;
    training.loaders->restore(state.cursor);
    last.checkpoint = step;
    if (place.root()) log::info("resuming from ", resume_from, " at step ", step);
  }
  // Every rank has checked the output directory before rank 0 creates it.
  if (place.world) place.world->barrier("start of the run");
  if (place.root()) {
    const fs::path dir = output;
    std::error_code ec;
    fs::create_directories(dir, ec);
    QARAC_INPUT_CHECK(!ec, "output: cannot create ", output, ": ", ec.message());
    if (resume_from.empty()) {
      std::ofstream ini(dir / "config.ini");
      ini << to_ini(config);
      QARAC_INPUT_CHECK(ini.good(), (dir / "config.ini").string(), ": cannot write");
    }
    metrics.open((dir / "metrics.jsonl").string());
    int64_t count = 0;
    for (const parallel::ParameterGroup& g : training.sync->groups())
      for (const Parameter* p : g.params) count += p->master.numel();
    std::string layout_text;
    if (config.simulate_world > 0)
      layout_text = ", simulating " + std::to_string(config.simulate_world) + " ranks in one process";
    if (place.world)
      layout_text = ", " + std::to_string(place.world_size) + " ranks, gradient all-reduce over " +
                    parallel::backend_name(place.backend);
    std::printf("%sqarac-train: %lld parameters, %s%s, steps %lld..%lld, output %s\n", plan.table().c_str(),
                static_cast<long long>(count), optimizer_name(training.optimizer->config().kind),
                layout_text.c_str(), static_cast<long long>(step), static_cast<long long>(config.steps),
                output.c_str());
    std::fflush(stdout);
  }
  if (place.world) place.world->barrier("creating the output directory");
}

StepStats Trainer::Impl::train_step() {
  Training& t = training;
  const Clock::time_point t0 = Clock::now();
  StepStats s;
  fault.inject(place.rank, step, t.sync->groups());
  const data::StepBatch batch = t.loaders->next();
  const Clock::time_point t_data = Clock::now();
  zero_grads(t.params);
  int64_t examples = 0;
  for (size_t i = 0; i < batch.tasks.size(); ++i) {
    const data::TaskBatch& task_batch = batch.tasks[i];
    ObjectiveOptions options;
    options.weight = plan.gradient_scale(task_batch.task);  // w_t / n_t
    options.forward.training = true;
    options.forward.seed = static_cast<uint64_t>(config.seed);
    options.forward.step = static_cast<uint64_t>(step);
    // A model's reduction starts a bucket at a time during its last backward pass of the step.
    const std::vector<parallel::Model>& released = layout.released_after[i];
    options.backward_done = [&](parallel::Model m) {
      if (std::find(released.begin(), released.end(), m) != released.end()) t.sync->model_done(m);
    };
    for (parallel::Model m : released) options.last_use[static_cast<int>(m)] = true;
    options.gradients_ready = [&](const ParameterList& ready) { t.sync->parameters_ready(ready); };
    const Tensor& loss = t.workload->run(task_batch, options);
    // Kept on the device: the losses are read back together after the update.
    t.step_losses.slice(0, static_cast<int64_t>(i), static_cast<int64_t>(i) + 1).copy_(loss);
    s.tokens += task_batch.tokens();
    examples += task_batch.count();
    for (parallel::Model m : released) t.sync->model_done(m);  // workloads that do not report it
  }
  const Clock::time_point t_backward = Clock::now();
  const double waited = t.sync->finish(step_text());
  s.lr = schedule.at(step);
  // The norm of the whole gradient, every model's counted once: clipping needs it, the metrics
  // report it.
  s.grad_norm = std::sqrt(t.sync->global_grad_sum_of_squares(step_text()));
  t.optimizer->update(s.lr, Optimizer::clip_factor(s.grad_norm, config.clip));
  std::vector<double> slot_losses = t.step_losses.to(Device::cpu()).to(DType::f64).to_vector<double>();
  ++step;
  const Clock::time_point t_end = Clock::now();
  s.seconds = seconds_between(t0, t_end);
  s.examples = examples;
  s.data_seconds = seconds_between(t0, t_data);
  s.comm_seconds = s.comm_max_seconds = waited;
  s.compute_seconds = seconds_between(t_data, t_backward) + seconds_between(t_backward, t_end) - waited;
  gather_step_stats(s, layout.slots, slot_losses, place.world.get(), place.world_size, step);
  return s;
}

// Every rank saves what it holds (its models' weights and moments, its data cursors) into its
// own folder (train/run_dir.h).
void Trainer::Impl::save() {
  last.checkpoint = step;
  TrainingState state;
  state.step = step;
  state.seed = static_cast<uint64_t>(config.seed);
  state.cursor = training.loaders->cursor();
  state.config = to_ini(config);
  const std::string path =
      save_checkpoint(checkpoint_dir, *training.optimizer, state, static_cast<int>(config.checkpoint_keep));
  if (place.world) place.world->barrier("checkpoint at step " + std::to_string(step));
  metrics.end_progress_line();
  if (place.root())
    log::info("checkpoint ", place.world ? (fs::path(checkpoint_dir).parent_path() / "rank-*").string() : path,
              place.world ? " at step " + std::to_string(step) : "");
}

void Trainer::Impl::evaluate() {
  last.eval = step;
  training.sync->gather_to_root("evaluation at step " + std::to_string(step));
  if (!place.root()) return;
  metrics.write_eval(step, training.workload->evaluate(training.evaluator.get(), step).metrics);
}

void Trainer::Impl::check_replicas() {
  last.check = step;
  if (!place.world) return;
  training.sync->check_replicas(step);
  if (place.root()) log::info("replica check at step ", step, ": every model's replicas are identical");
}

void Trainer::Impl::export_models() {
  training.sync->gather_to_root("export");
  if (!place.root()) return;
  metrics.end_progress_line();
  training.workload->export_models(output);
}

Trainer::Trainer(const TrainConfig& config, const parallel::Runtime* runtime)
    : impl_(std::make_unique<Impl>(config, runtime)) {}

Trainer::~Trainer() = default;

void Trainer::set_evaluator(std::unique_ptr<Evaluator> evaluator) {
  impl_->training.evaluator = std::move(evaluator);
}
const parallel::TaskPlan& Trainer::plan() const { return impl_->plan; }
int64_t Trainer::step() const { return impl_->step; }

void Trainer::abort() noexcept {
  if (impl_ && impl_->training.sync) impl_->training.sync->abort();
}

void Trainer::run() {
  Impl& t = *impl_;
  const TrainConfig& c = t.config;
  t.start();
  // The first evaluation of a fresh run measures the models before fine-tuning: the baseline of
  // the forgetting monitor.
  if (t.resume_from.empty()) t.evaluate();
  t.metrics.start(t.step);
  while (t.step < c.steps) {
    const StepStats s = t.train_step();
    if (t.place.root()) {
      t.metrics.write_step(t.step, t.place.world_size, t.plan, s);
      t.metrics.print_progress(t.step, c.steps, c.log_every, t.place.world_size, s);
    }
    if (c.check_every > 0 && t.step % c.check_every == 0) t.check_replicas();
    if (c.checkpoint_every > 0 && t.step % c.checkpoint_every == 0) t.save();
    if (c.eval_every > 0 && t.step % c.eval_every == 0) t.evaluate();
  }
  if (t.last.check != t.step) t.check_replicas();
  if (t.last.checkpoint != t.step) t.save();
  if (t.last.eval != t.step) t.evaluate();
  t.export_models();
}

}  // namespace qarac
