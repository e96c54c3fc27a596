// The state of a training run (Trainer::Impl), shared by the files that implement it: trainer.cpp
// builds the run and runs its steps, trainer_outputs.cpp writes what it leaves (checkpoints,
// evaluations and eval.best, replica checks, the export). Private to them: users see trainer.h.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/log.h"
#include "parallel/gradient_sync.h"
#include "parallel/runtime.h"
#include "parallel/task_plan.h"
#include "train/best_export.h"
#include "train/checkpoint.h"
#include "train/evaluation.h"
#include "train/export_card.h"
#include "train/fault.h"
#include "train/metrics.h"
#include "train/nonfinite.h"
#include "train/optimizer.h"
#include "train/plan_report.h"
#include "train/run_dir.h"
#include "train/schedule.h"
#include "train/task_loaders.h"
#include "train/trainer.h"
#include "train/workload.h"

namespace qarac {

struct Trainer::Impl {
  // This process in the job.
  struct Place {
    // r null: one process without MPI. `timeout`: of the world's waits (parallel.timeout).
    Place(const parallel::Runtime* r, double timeout)
        : runtime(r), rank(r ? r->rank() : 0), world_size(r ? r->size() : 1) {
      if (world_size == 1) return;
      log::set_rank(rank);
      world = std::make_unique<parallel::MpiGroup>(MPI_COMM_WORLD, "the world", timeout);
    }
    const parallel::Runtime* runtime;
    int rank, world_size;
    std::unique_ptr<parallel::MpiGroup> world;  // with several ranks
    parallel::Backend backend = parallel::Backend::mpi;
    bool root() const { return rank == 0; }
  };
  // What a step of this process runs, in order: this rank's task slots, and per slot the models
  // whose last use in the step it is: after its last micro-batch's backward pass their reduction
  // can start.
  struct StepLayout {
    std::vector<data::TaskSlot> slots;
    std::vector<std::vector<parallel::Model>> released_after;
  };
  // What trains.
  struct Training {
    std::unique_ptr<TaskLoaders> loaders;
    std::unique_ptr<Workload> workload;
    std::unique_ptr<parallel::GradientSync> sync;
    // Contrastive QA: the ranks of question_answering, which exchange their vectors every step.
    std::unique_ptr<parallel::MpiGroup> qa_group;
    ParameterList params;  // the held ones: what the optimizer updates
    std::unique_ptr<Optimizer> optimizer;
    std::unique_ptr<Evaluator> evaluator;
    Tensor run_losses;  // [micro-batches] on the device: the losses of one step, read back at once
    Device device;      // where the models live: this rank's GPU (use_local_gpu), or the CPU
  };
  // The steps at which each was last done.
  struct Last {
    int64_t checkpoint = -1, eval = -1, check = -1;
  };

  TrainConfig config;
  Place place;
  TaskCosts costs;  // what auto balances and the banner reports
  TrainingDataNote data_note;  // rank 0: what the exports say of the data, read at the start
  parallel::TaskPlan plan;
  LearningRateSchedule schedule;
  StepLayout layout;
  Training training;
  std::string output, checkpoint_dir;
  std::string resumed_with;  // config.ini's notes of the settings resumes changed, if any
  // The fingerprint of rank 0's held-out evaluation (Evaluator::fingerprint, or the workload's own),
  // known to every rank, and the first step whose evaluation is of it: checkpoints record both,
  // so that evaluations of another one are not compared with it (eval.best).
  uint64_t evaluation = 0;
  int64_t evaluation_since = 0;
  bool evaluation_changed = false;  // by this resume
  std::unique_ptr<RunLock> lock;  // rank 0's, for the whole run
  bool directory_ours = false;    // every rank: past the lock, the output directory is this run's
  MetricsLog metrics;       // rank 0's
  std::optional<BestExport> best;  // rank 0's, with eval.best (and so with eval.patience)
  Fault fault;
  SkippedSteps skipped;  // train.nonfinite skip's
  int64_t step = 0;  // training steps completed
  Last last;

  Impl(const TrainConfig& c, const parallel::Runtime* runtime);
  void build(Device device);
  std::string step_text() const { return "step " + std::to_string(step + 1); }
  void start();
  void restore(const std::string& checkpoint);
  void write_run_files();
  void discard_unstarted() noexcept;
  StepStats train_step();
  bool step_is_finite(const StepStats& s, const std::vector<double>& slot_losses);
  std::vector<CheckpointPart> held_parts() const;
  void save();
  void evaluate();
  bool patience_spent();
  // What every rank reads alike (a GPU, the base, the streams): a fault in it is said once.
  void read_everywhere(const std::function<void()>& read) const {
    place.runtime ? place.runtime->read_on_every_rank(read, config.timeout) : read();
  }
  void check_replicas();
  void export_models();
  io::ExportExtras extras() const { return export_extras(config, plan_report(config, plan, costs), data_note); }
  Trainer::RunEnd run();
};

}  // namespace qarac
