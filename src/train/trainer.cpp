// The training loop of qarac-train: builds a run from its configuration (the plan, this rank's
// loaders, the workload, the gradient reduction, the optimizer) and runs its steps, with the
// replica checks, checkpoints, evaluations and the export on their schedules (written by
// trainer_outputs.cpp). The run directory is train/run_dir.h's, the workloads train/workload.h's,
// what is reported train/metrics.h's.
#include "train/trainer.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <sstream>
#include <vector>

#include "core/atomic_file.h"
#include "core/log.h"
#include "io/hf_config.h"
#include "kernels/cpu/gemm.h"
#include "io/hf_export.h"
#include "train/stop_signals.h"
#include "train/trainer_impl.h"

namespace qarac {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// How config.ini's note of a resume that changed settings begins.
constexpr const char* kResumedNote = "# Resumed at step ";

double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// check_values first: the schedule's and the plan's own checks would name no key.
const TrainConfig& checked(const TrainConfig& c) {
  check_values(c);
  return c;
}

// Ranks whose CPUs OpenBLAS serves with other kernels (a cluster of mixed nodes) compute other
// last bits for the same examples, so what the run computes then depends on which ranks run which
// examples, as it does nowhere else. Said once, by the first rank whose kernels are not rank 0's.
void say_mixed_blas_kernels(const parallel::MpiGroup& world) {
  const std::string own = cpu::blas_core();
  std::array<char, 64> first{};
  own.copy(first.data(), first.size() - 1);
  world.broadcast(first.data(), static_cast<int>(first.size()), 0, "rank 0's OpenBLAS kernels");
  const std::string rank0 = first.data();
  double differing = rank0 == own.substr(0, first.size() - 1) ? world.size() : world.rank();
  world.all_reduce(&differing, 1, MPI_MIN, "which ranks run other OpenBLAS kernels");
  if (differing != world.rank()) return;
  log::warn("rank ", world.rank(), " (", hostname(), ") runs OpenBLAS's ", own, " kernels, rank 0 ", rank0,
            ": their products of the same numbers differ in the last bits, so the run's results depend on which ",
            "ranks run which examples; for results independent of the placement, set OPENBLAS_CORETYPE to a core ",
            "every rank's CPU runs (qarac-train --version names the kernels; the launch scripts pass it on)");
}

}  // namespace

Trainer::Impl::Impl(const TrainConfig& c, const parallel::Runtime* runtime)
    : config(checked(c)),
      place(runtime, config.timeout),
      costs(shared_task_costs(config, place.world.get())),
      plan(make_plan(config, runtime ? runtime->size() : 1, costs)),
      schedule(config.schedule_config()),
      output(config.output),
      checkpoint_dir(qarac::checkpoint_dir(output)) {
  Device device = Device::cpu();
  if (config.device == "cuda") {
    read_everywhere([] {
      QARAC_INPUT_CHECK(cuda_device_count() > 0, "train.device: cuda, but no CUDA device is available",
                        " (or this build has no CUDA backend)");
    });
    // The GPU this rank was given (GPU r for local rank r when every rank sees the node's GPUs):
    // the models and every tensor of the run live there, not on cuda:0.
    device = Device::cuda(runtime ? runtime->use_local_gpu(config.share_gpus, config.timeout) : 0);
  }
  place.backend = parallel::backend_from_name(config.backend, device.is_cuda());
  fault = Fault::from_env();
  check_output_dir(output, config.resume);
  build(device);
}

// The step layout, loaders, workload, gradient reduction and optimizer of this process.
void Trainer::Impl::build(Device device) {
  const data::RankPlan rank_plan = plan.rank_plan(place.rank);
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
  t.device = device;
  read_everywhere([&] {
    if (config.pretraining()) {
      t.workload = make_mlm_workload(config, device, place.root());
    } else {
      // A rank builds the models its tasks use; rank 0 all three, for the evaluation and the export.
      std::array<bool, parallel::kModelCount> build{};
      for (int m = 0; m < parallel::kModelCount; ++m)
        build[m] = place.root() || plan.holds(place.rank, static_cast<parallel::Model>(m));
      t.workload = make_qarac_workload(config, device, build);
    }
    // Data tokenised with another tokenizer than the base's is refused here, before the output
    // directory exists: its ids would reach past the models' vocabulary.
    t.loaders = std::make_unique<TaskLoaders>(rank_plan, config, t.workload->vocab_size(), t.workload->max_tokens());
  });
  t.loaders->check_streams_agree(place.world.get(), config.data_dir);
  if (place.root()) data_note = training_data_note(config);
  if (config.contrastive_qa() && place.world) {
    const std::vector<int>& ranks = plan.ranks_of(data::Task::question_answering);
    std::string name = "question_answering ranks";
    for (size_t r = 0; r < ranks.size(); ++r) name += (r ? "," : " ") + std::to_string(ranks[r]);
    t.qa_group = place.world->subgroup(ranks, name);
  }
  const int64_t bucket_bytes = static_cast<int64_t>(config.bucket_mb * (1 << 20));
  t.sync = std::make_unique<parallel::GradientSync>(place.world.get(), t.workload->parameter_groups(plan),
                                                    place.backend, bucket_bytes);
  t.params = t.sync->held_parameters();
  t.optimizer = std::make_unique<Optimizer>(t.params, config.optimizer_config());
}

// The ranks of a node count each other's host tensors (the models and optimizer state, built by
// now); rank 0 locks the output directory (creating it) and removes what a killed run left
// half-written; the run restores the checkpoint when resuming from one; rank 0 writes config.ini
// (at every start), opens metrics.jsonl and prints the run's table; best/ gets the models the run
// starts with when they are the best on record and it lacks them.
void Trainer::Impl::start() {
  if (place.world && !place.runtime->share_host_memory(config.timeout))
    throw EndedByAnotherRank("the host memory of this node: another rank said why");
  if (place.root()) {
    lock = std::make_unique<RunLock>(output);
    // Again under the lock: another run may have started in the directory since the first check.
    check_output_dir(output, config.resume);
    // What a killed or failed run left half-written: nobody else writes here now.
    remove_unfinished_checkpoints(checkpoint_dir);
    remove_stop_record(output);
    for (const char* folder : {"export", "best"}) io::remove_unfinished_folder(fs::path(output) / folder);
  }
  // Every rank waits for the lock: nothing is read or written before the directory is this run's.
  if (place.world) place.world->barrier("locking the output directory");
  directory_ours = true;
  // What rank 0's evaluations measure on, which every rank's checkpoint parts record.
  if (place.root())
    evaluation = training.evaluator ? training.evaluator->fingerprint() : training.workload->evaluation_fingerprint();
  if (place.world) place.world->broadcast(&evaluation, sizeof evaluation, 0, "the evaluation's fingerprint");
  if (config.resume) {
    const std::optional<std::string> latest = find_resume_checkpoint(output, place.rank, place.world.get());
    // Every rank has restored its parts before rank 0 rewrites config.ini and metrics.jsonl: a
    // checkpoint that one rank refuses leaves the run's records as they were.
    if (latest) {
      read_everywhere([&] { restore(*latest); });
      release_free_host_memory();  // the checkpoint's tensors, read beside the models
    } else if (place.root()) {
      const int64_t recorded = refuse_restart_over_records(output, config.checkpoint_every);
      // A run stopped (exit 75) or killed right after its first checkpoint, which was then
      // removed, leaves no record of it: the steps it ran go, and are run again.
      log::warn("--resume: no completed checkpoint in ", qarac::checkpoint_dir(output),
                ": the run starts again from step 0",
                recorded > 0 ? detail::concat(" (metrics.jsonl's lines of steps 1-", recorded, " are dropped)") : "");
    }
  }
  if (place.root()) write_run_files();
  // After a change of the held-out evaluation, the first step evaluated with this run's: the
  // resume's, unless the earlier evaluation's is on record there (rank 0 knows; then the others).
  const auto first_of_this_evaluation = [&] {
    if (evaluation_changed) evaluation_since = last.eval == step ? step + 1 : step;
  };
  if (place.root()) first_of_this_evaluation();
  if (place.root() && !config.eval_best.empty())
    best.emplace(output, config.eval_best, metrics.eval_values(config.eval_best), step, evaluation_since, evaluation);
  // Every rank learns whether the evaluation due at the first step is already on record, and
  // whether best/ lacks the models the run starts with.
  double agreed[2] = {static_cast<double>(last.eval), best && best->lacks_best() ? 1.0 : 0.0};
  if (place.world) place.world->all_reduce(agreed, 2, MPI_MAX, "starting the run");
  last.eval = static_cast<int64_t>(agreed[0]);
  first_of_this_evaluation();
  if (agreed[1] != 0) {
    training.sync->gather_to_root("eval.best's export at step " + std::to_string(step));
    if (place.root()) {
      best->export_again([&](const std::string& folder) { training.workload->export_models(folder, extras()); });
      release_free_host_memory();
    }
  }
}

// Restores the parameters and moments of the groups this rank holds, the optimizer's step and the
// data cursors; refuses a checkpoint whose run fixed the models, the data order or the global
// batches differently. The world size and the plan may differ from the checkpoint's.
void Trainer::Impl::restore(const std::string& checkpoint) {
  std::string saved_config;
  const TrainingState state = load_checkpoint(
      checkpoint, *training.optimizer,
      [&](const std::string& saved) {
        saved_config = saved;
        return resume_mismatch(config, saved);
      },
      held_parts());
  step = state.step;
  QARAC_INPUT_CHECK(step <= config.steps, "--resume: ", checkpoint, " is at step ", step, ", beyond train.steps ",
                    config.steps, " (raise train.steps to go on)");
  // The same weights in other models (another base's layer_norm_eps or dropout) would go on
  // training unsaid, and the export would describe models that were trained otherwise.
  // Versions before commit 311f593 (7 December 2026) read a config.json without layer_norm_eps
  // as RoBERTa's 1e-5, this one as transformers does (1e-12): the same base builds other models.
  const std::string base_config = config.base.empty() ? "" : (fs::path(config.base) / "config.json").string();
  const bool eps_left_out = !base_config.empty() && !io::hf_config_sets(base_config, "layer_norm_eps");
  const std::string eps_fix = detail::concat(
      base_config, " leaves layer_norm_eps out, which versions of QARAC-MT before commit 311f593 (7 December 2026) ",
      "read as 1e-05 and this one reads as transformers does, 1e-12: add \"layer_norm_eps\": 1e-05 to it (or to a ",
      "copy given as model.base) to go on as the run began, or resume with the version that wrote the checkpoint");
  if (!state.model_config.empty()) {
    const std::vector<std::string> other =
        io::model_field_changes(state.model_config, io::model_fields_json(training.workload->model_config()));
    const std::string source = config.pretraining() && config.base.empty()
                                   ? "model.* settings"
                                   : "model.base (" + config.base + ") and model.dropout";
    const bool eps_changed = std::any_of(other.begin(), other.end(),
                                         [](const std::string& c) { return c.rfind("layer_norm_eps ", 0) == 0; });
    QARAC_INPUT_CHECK(other.empty(), "--resume: ", checkpoint, ": the checkpoint's run built its models otherwise than ",
                      "this run's ", source, " give: ", joined(other), " (they must match: ",
                      eps_changed && eps_left_out ? eps_fix : "resume with the run's own", ")");
  } else {
    // A checkpoint of a version before they were recorded (all before 311f593): its run read a
    // layer_norm_eps the base leaves out as 1e-5.
    QARAC_INPUT_CHECK(!eps_left_out, "--resume: ", checkpoint, " records no model configuration (an earlier ",
                      "version's), and ", eps_fix);
  }
  training.loaders->restore(state.cursor, checkpoint);
  last.checkpoint = step;
  // Elastic: allowed, and said (the banner below gives the new plan).
  const bool other_world = state.world_size > 0 && state.world_size != place.world_size;
  if (place.root())
    log::info("resuming from ", checkpoint, " at step ", step,
              other_world ? detail::concat(", written by a run of ", state.world_size, " rank",
                                           state.world_size == 1 ? "" : "s", " (this one: ", place.world_size, ")")
                          : std::string());
  // Allowed, but said: the run goes on other than one uninterrupted run would.
  std::string changes = joined(resume_changes(config, saved_config));
  const uint64_t base_hash = training.workload->frozen_base_hash();
  if (state.frozen_base_hash != 0 && base_hash != 0 && base_hash != state.frozen_base_hash)
    changes += detail::concat(changes.empty() ? "" : ", ", "model.base's MLM head (hash64 ", std::hex, std::showbase,
                              state.frozen_base_hash, " -> ", base_hash, ")");
  // The notes of earlier resumes (the checkpoint's configuration text is config.ini's) go on.
  std::istringstream saved_lines(saved_config);
  for (std::string line; std::getline(saved_lines, line);)
    if (line.rfind(kResumedNote, 0) == 0) resumed_with += line + "\n";
  // Other held-out examples or settings: the evaluations on record measured something else, and
  // only this run's compare from here on (start() finds its first step). A run without an
  // evaluation passes the checkpoint's on.
  evaluation_since = state.evaluation_since;
  if (evaluation == 0) {
    evaluation = state.evaluation;
  } else if (state.evaluation != 0 && state.evaluation != evaluation) {
    evaluation_changed = true;  // start() sets evaluation_since
    changes += detail::concat(changes.empty() ? "" : ", ", "the held-out evaluation (other examples or settings: the "
                              "evaluations on record do not compare with this run's)");
  }
  if (changes.empty()) return;
  resumed_with +=
      kResumedNote + std::to_string(step) + " with settings other than the checkpoint's run's: " + changes + "\n";
  if (place.root())
    log::warn("--resume: settings other than the checkpoint's run's: ", changes,
              " (the run goes on with them; config.ini says so)");
}

// Rank 0: config.ini, the metrics log (continued on a resume) and the run's banner.
void Trainer::Impl::write_run_files() {
  const fs::path dir = output;
  // The settings the run goes on with, rewritten at every start: a resume may change the rates,
  // the length, the plan (the checkpoints keep those they were made with).
  const std::string ini = resumed_with + to_ini(config);
  AtomicFile file((dir / "config.ini").string(), AtomicFile::stream, AtomicFile::replace);
  file.write(ini.data(), ini.size());
  file.commit();
  metrics.open((dir / "metrics.jsonl").string(), step, config.resume, config.progress, evaluation);
  if (metrics.has_eval(step)) last.eval = step;
  int64_t count = 0;
  for (const parallel::ParameterGroup& g : training.sync->groups())
    for (const Parameter* p : g.params) count += p->master.numel();
  std::string layout_text;
  if (place.world)
    layout_text = ", " + std::to_string(place.world_size) + " ranks, gradient all-reduce over " +
                  parallel::backend_name(place.backend);
  std::printf("%sqarac-train: %lld parameters, %s%s, steps %lld..%lld, output %s\n",
              plan_report(config, plan, costs).c_str(), static_cast<long long>(count),
              optimizer_name(training.optimizer->config().kind), layout_text.c_str(), static_cast<long long>(step),
              static_cast<long long>(config.steps), output.c_str());
  std::fflush(stdout);
}

// A fresh run that ends in an error before its first step leaves its directory as it found it,
// so that the same command can run again once the cause is fixed (a run that was killed cannot:
// --resume starts it from step 0). Later failures keep what they wrote: the metrics of the steps
// that ran tell what went wrong, and --resume goes on.
void Trainer::Impl::discard_unstarted() noexcept {
  if (!place.root() || !lock || config.resume || step > 0 || last.checkpoint >= 0) return;
  std::error_code ec;
  // best/: eval.best's export of the evaluation at step 0.
  for (const char* name : {"config.ini", "metrics.jsonl", "checkpoints", "best", kRunLockName})
    fs::remove_all(fs::path(output) / name, ec);
  if (lock->created_directory()) fs::remove(output, ec);  // only when empty: nobody else's files
  lock.reset();
}

StepStats Trainer::Impl::train_step() {
  Training& t = training;
  const Clock::time_point t0 = Clock::now();
  StepStats s;
  if (place.root()) metrics.note_memory_peaks(memory_peaks(t.device));
  reset_memory_peaks();
  fault.inject(place.rank, step, t.sync->groups());
  const data::StepBatch batch = t.loaders->next();
  const std::vector<std::vector<data::TaskBatch>> micro = t.loaders->micro_batches(batch);
  int64_t runs = 0;
  for (const std::vector<data::TaskBatch>& m : micro) runs += static_cast<int64_t>(m.size());
  if (!t.run_losses.defined() || t.run_losses.size(0) < runs)
    t.run_losses = Tensor::zeros({std::max<int64_t>(runs, 1)}, ops::accumulation_dtype(config.dtype_value()),
                                 t.device);
  const Clock::time_point t_data = Clock::now();
  zero_grads(t.params);
  int64_t examples = 0, run = 0;
  std::vector<double> run_share;      // per micro-batch: its examples / N
  std::vector<size_t> run_slot;       // per micro-batch: its slot
  std::vector<double> slot_seconds(batch.tasks.size(), 0.0);
  ForwardOptions forward;
  forward.training = true;
  forward.seed = static_cast<uint64_t>(config.seed);
  forward.step = static_cast<uint64_t>(step);
  const GatherRows gather = [&](const std::vector<double>& mine, int64_t width, int64_t* first_row) {
    *first_row = 0;
    return t.qa_group ? t.qa_group->all_gather_rows(mine, width, first_row, "contrastive QA vectors, " + step_text())
                      : mine;
  };
  // An objective over the whole global batch (contrastive QA) exchanges its vectors first: no
  // gradient collective of the step is in flight yet, so the exchange is one more host collective
  // between steps for the collective schedule (docs/distributed.md §7).
  for (size_t i = 0; i < batch.tasks.size(); ++i) {
    const Clock::time_point t_begin = Clock::now();
    t.workload->begin_task(batch.tasks[i].task, micro[i], forward, gather);
    slot_seconds[i] += seconds_between(t_begin, Clock::now());
  }
  for (size_t i = 0; i < batch.tasks.size(); ++i) {
    const Clock::time_point t_slot = Clock::now();
    const data::TaskBatch& part = batch.tasks[i];
    // A model's reduction starts a bucket at a time during its last backward pass of the step:
    // the last micro-batch of its last task on this rank.
    const std::vector<parallel::Model>& released = layout.released_after[i];
    for (size_t k = 0; k < micro[i].size(); ++k) {
      const data::TaskBatch& m = micro[i][k];
      const double share = static_cast<double>(m.count()) / static_cast<double>(m.global_count);
      ObjectiveOptions options;
      // The task's loss is the mean over its global batch: this micro-batch's mean counts
      // (its examples) / N of it.
      options.weight = config.task_weight(m.task) * share;
      options.forward = forward;
      if (k + 1 == micro[i].size()) {
        options.backward_done = [&](parallel::Model model) {
          if (std::find(released.begin(), released.end(), model) != released.end()) t.sync->model_done(model);
        };
        for (parallel::Model model : released) options.last_use[static_cast<int>(model)] = true;
        options.gradients_ready = [&](const ParameterList& ready) { t.sync->parameters_ready(ready); };
      }
      const Tensor& loss = t.workload->run(m, options);
      // Kept on the device: the losses are read back together after the update.
      t.run_losses.slice(0, run, run + 1).copy_(loss);
      run_share.push_back(share);
      run_slot.push_back(i);
      ++run;
    }
    s.tokens += part.tokens();
    examples += part.count();
    // Workloads that do not report it, and a rank with no example of the batch: its zero
    // gradients still take part in the reductions.
    for (parallel::Model model : released) t.sync->model_done(model);
    slot_seconds[i] += seconds_between(t_slot, Clock::now());
  }
  const double waited = t.sync->finish(step_text());
  s.lr = schedule.at(step);
  // The norm of the whole gradient, every model's counted once: clipping needs it, the metrics
  // report it. Its all-reduce waits for the slowest rank: communication, not compute.
  const Clock::time_point t_norm = Clock::now();
  s.grad_norm = std::sqrt(t.sync->global_grad_sum_of_squares(step_text()));
  const double norm_wait = seconds_between(t_norm, Clock::now());
  // The norm's all-reduce waited for every gradient, so the losses are ready: reading them back
  // now costs no overlap.
  std::vector<double> slot_losses(batch.tasks.size(), 0.0);
  if (run > 0) {
    const std::vector<double> losses = t.run_losses.to(Device::cpu()).to(DType::f64).to_vector<double>();
    for (size_t j = 0; j < run_slot.size(); ++j) slot_losses[run_slot[j]] += losses[j] * run_share[j];
  }
  s.skipped = !step_is_finite(s, slot_losses);
  if (!s.skipped) t.optimizer->update(s.lr, Optimizer::clip_factor(s.grad_norm, config.clip));
  s.skipped_steps = step + 1 - t.optimizer->steps();
  ++step;
  const Clock::time_point t_end = Clock::now();
  s.seconds = seconds_between(t0, t_end);
  s.examples = examples;
  s.data_seconds = seconds_between(t0, t_data);
  s.comm_seconds = waited + norm_wait;
  s.compute_seconds = seconds_between(t_data, t_end) - s.comm_seconds;
  s.stop_signal = StopSignals::received();
  s.memory = memory_peaks(t.device);
  gather_step_stats(s, layout.slots, slot_losses, slot_seconds, place.world.get(), place.rank, place.world_size,
                    step);
  return s;
}

// Whether the step may be applied: its gradient norm and every task's loss on every rank are
// finite. Every rank takes the same decision after the same all-reduce, so with train.nonfinite
// stop all of them stop here together, before the update: the checkpoints on disk never hold the
// overflowed state. With skip the update is left out and the run goes on.
bool Trainer::Impl::step_is_finite(const StepStats& s, const std::vector<double>& slot_losses) {
  const std::string tasks = tasks_with_nonfinite_losses(layout.slots, slot_losses, place.world.get(), step_text());
  if (std::isfinite(s.grad_norm) && tasks.empty()) return true;
  const std::string what = nonfinite_step(step_text(), s.grad_norm, tasks);
  if (config.nonfinite != "skip")
    stop_at_nonfinite_step(step_text(), what, training.optimizer->parameters(), place.world.get());
  if (place.root()) {
    metrics.end_progress_line();
    log::warn(what, "; its update is skipped");
  }
  return false;
}

Trainer::Trainer(const TrainConfig& config, const parallel::Runtime* runtime)
    : impl_(std::make_unique<Impl>(config, runtime)) {}

Trainer::~Trainer() = default;

void Trainer::set_evaluator(std::unique_ptr<Evaluator> evaluator) { impl_->training.evaluator = std::move(evaluator); }

void Trainer::abort() noexcept { if (impl_ && impl_->training.sync) impl_->training.sync->abort(); }

Trainer::RunEnd Trainer::run() {
  try {
    return impl_->run();
  } catch (const parallel::CommError& e) {
    impl_->metrics.end_progress_line();
    if (impl_->directory_ours) record_failure(impl_->output, impl_->step, impl_->place.rank, e.what());
    impl_->discard_unstarted();
    throw;
  } catch (...) {
    impl_->metrics.end_progress_line();  // the error is said on a line of its own
    impl_->discard_unstarted();
    throw;
  }
}

Trainer::RunEnd Trainer::Impl::run() {
  Impl& t = *this;
  const TrainConfig& c = t.config;
  t.start();
  // Said once the run has started: a run refused at its start needs no advice on its speed.
  if (t.training.device.is_cpu() && t.place.root())
    if (const std::string advice = cpu::blas_core_advice(); !advice.empty()) log::warn(advice);
  if (t.training.device.is_cpu() && t.place.world) say_mixed_blas_kernels(*t.place.world);
  // The evaluation due at the first step, unless a run that stopped there already recorded it:
  // at step 0 it measures the models before fine-tuning, the baseline of the forgetting monitor.
  if (t.last.eval != t.step && (t.step == 0 || (c.eval_every > 0 && t.step % c.eval_every == 0))) t.evaluate();
  bool spent = t.patience_spent();  // after a resume, perhaps by the evaluations on record
  t.metrics.start(t.step);
  while (!spent && t.step < c.steps) {
    StepStats s = t.train_step();
    s.last_checkpoint = t.last.checkpoint;
    if (t.place.root()) {
      t.metrics.write_step(t.step, t.place.world_size, t.plan, s);
      t.metrics.print_progress(t.step, c.steps, c.log_every, t.place.world_size, s);
    }
    // After the step's record: a run this ends has it in metrics.jsonl.
    t.skipped.after("step " + std::to_string(t.step), s.skipped, t.step == c.steps,
                    t.training.optimizer->parameters(), t.place.world.get());
    if (s.stop_signal != 0 && t.step < c.steps) {  // after the last step the run just finishes
      // Every rank learnt of the request in the same all-reduce, after the same step.
      t.metrics.end_progress_line();
      if (t.place.root())
        log::warn(StopSignals::name(s.stop_signal), " on rank ", s.stop_rank, ": stopping after step ", t.step,
                  " with a checkpoint (exit status ", kExitPreempted, "; --resume continues)");
      if (t.last.checkpoint != t.step) t.save();
      // The exit status says it too: a record that cannot be written (a full disk) is a warning,
      // as is a failed close of metrics.jsonl, whose lines the checkpoint fsynced.
      if (t.place.root()) {
        try {
          t.metrics.close();
        } catch (const InputError& e) {
          log::warn(e.what(), " (its lines are the checkpoint's, fsynced with it; exit status ", kExitPreempted,
                    " says the stop)");
        }
        try {
          record_stop(t.output, t.step, StopSignals::name(s.stop_signal), s.stop_rank,
                      checkpoint_path(t.checkpoint_dir, t.step));
        } catch (const InputError& e) {
          log::warn(e.what(), " (the checkpoint is complete; exit status ", kExitPreempted, " says the stop)");
        }
      }
      // The others wait for the record: srun ends rank 0 once another rank has exited 75.
      if (t.place.world) t.place.world->barrier("the record of the stop");
      t.metrics.say_memory_peaks(memory_peaks(t.training.device));
      return RunEnd::stopped;
    }
    if (c.check_every > 0 && t.step % c.check_every == 0) t.check_replicas();
    if (c.checkpoint_every > 0 && t.step % c.checkpoint_every == 0) t.save();
    if (c.eval_every > 0 && t.step % c.eval_every == 0) {
      t.evaluate();
      spent = t.patience_spent();
    }
  }
  if (t.last.check != t.step) t.check_replicas();
  if (t.last.checkpoint != t.step) t.save();
  if (t.last.eval != t.step) t.evaluate();
  t.export_models();
  t.metrics.say_memory_peaks(memory_peaks(t.training.device));
  // A request in the last step or later (the final evaluation, the export): the run finished.
  if (StopSignals::received() != 0 && t.place.root())
    log::warn(StopSignals::name(StopSignals::received()), " in the last step or after it: the run finished (nothing to resume)");
  return RunEnd::finished;
}

}  // namespace qarac
