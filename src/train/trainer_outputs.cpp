// What a training run leaves (train/trainer_impl.h): the global checkpoints, the evaluations with
// eval.best and eval.patience, the replica checks and the export.
#include <algorithm>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include "core/log.h"
#include "io/hf_config.h"
#include "io/hf_export.h"
#include "train/trainer_impl.h"

namespace qarac {
namespace {
namespace fs = std::filesystem;
}  // namespace

// The checkpoint parts this rank holds: its model groups.
std::vector<CheckpointPart> Trainer::Impl::held_parts() const {
  std::vector<CheckpointPart> parts;
  for (const parallel::ParameterGroup& g : training.sync->groups())
    if (std::find(g.ranks.begin(), g.ranks.end(), place.rank) != g.ranks.end()) parts.push_back({g.name, g.params});
  return parts;
}

// A global checkpoint: each model group written once, by its lowest rank, into a temporary
// folder that rank 0 renames once every part is complete (train/checkpoint.h).
void Trainer::Impl::save() {
  last.checkpoint = step;
  TrainingState state;
  state.step = step;
  state.seed = static_cast<uint64_t>(config.seed);
  state.cursor = training.loaders->global_cursor(place.world.get());
  state.config = resumed_with + settings_ini(config);  // the notes of earlier resumes go on
  state.frozen_base_hash = training.workload->frozen_base_hash();
  state.model_config = io::model_fields_json(training.workload->model_config());
  state.evaluation = evaluation;
  state.evaluation_since = evaluation_since;
  state.world_size = place.world_size;
  const std::string what = "checkpoint at step " + std::to_string(step);
  if (place.root()) {
    lock->check_held(what);
    begin_checkpoint(checkpoint_dir, step);
  }
  if (place.world) place.world->barrier(what);
  std::vector<std::string> names;
  for (const parallel::ParameterGroup& g : training.sync->groups()) names.push_back(g.name);
  const std::string folder = checkpoint_temp_path(checkpoint_dir, step);
  // A part that failed (a full disk) leaves no half checkpoint behind: every rank finishes its
  // own parts first and learns whether any failed, then rank 0 removes the folder, which nobody
  // writes into any more (removed under a rank still writing, it gave that rank a second error
  // with a false cause), and the job ends with one line from each rank that failed.
  std::exception_ptr failure;
  try {
    for (const parallel::ParameterGroup& g : training.sync->groups())
      if (g.ranks.front() == place.rank) {
        require_finite_weights(g.params, what);  // a resume from them would only stop again
        require_finite_moments(*training.optimizer, g.params, what);
        write_checkpoint_part(folder, {g.name, g.params}, names, *training.optimizer, state);
      }
  } catch (const std::exception&) {  // a full disk, or any other failure: the others must learn of it
    failure = std::current_exception();
  }
  double failed = failure ? 1 : 0;
  if (place.world) place.world->all_reduce(&failed, 1, MPI_MAX, what);
  if (failed > 0) {
    std::error_code ec;
    if (place.root()) fs::remove_all(folder, ec);
    if (place.world) place.world->barrier(what);
    if (failure) {
      try {
        std::rethrow_exception(failure);
      } catch (const InputError& e) {
        // Measured now that the failed checkpoint is gone: what the next one will find.
        const std::string noted = with_space_needed(e.what(), checkpoint_dir, static_cast<int>(config.checkpoint_keep));
        if (noted == e.what()) throw;
        throw InputError(noted);
      }
    }
    throw EndedByAnotherRank(what + ": another rank could not write its part");
  }
  std::string path;
  if (place.root()) {
    try {
      // The metrics up to the checkpoint survive a crash with it: a resumed run keeps them.
      metrics.sync();
      path = commit_checkpoint(checkpoint_dir, step, static_cast<int>(config.checkpoint_keep));
    } catch (const InputError&) {
      std::error_code ec;
      fs::remove_all(folder, ec);
      throw;
    }
  }
  if (place.world) place.world->barrier(what);
  metrics.end_progress_line();
  if (place.root()) log::info("checkpoint ", path);
}

void Trainer::Impl::evaluate() {
  last.eval = step;
  training.sync->gather_to_root("evaluation at step " + std::to_string(step));
  if (!place.root()) return;
  const EvalResult result = training.workload->evaluate(training.evaluator.get());
  metrics.write_eval(step, result.metrics);
  if (const std::string what = nonfinite_evaluation(step, result.metrics); !what.empty()) {
    metrics.end_progress_line();
    throw InputError(what);
  }
  if (best)
    best->consider(step, result.metrics, [&](const std::string& folder) {
      lock->check_held("eval.best's export at step " + std::to_string(step));
      training.workload->export_models(folder, extras());
    });
  release_free_host_memory();  // the evaluation's batches and the export's host copies
}

// eval.patience: whether rank 0's evaluations since the best have reached it, agreed by every rank.
bool Trainer::Impl::patience_spent() {
  if (config.eval_patience == 0) return false;
  double spent = place.root() && best->evaluations_since_best() >= config.eval_patience ? 1 : 0;
  if (place.world) place.world->all_reduce(&spent, 1, MPI_MAX, "eval.patience at step " + std::to_string(step));
  if (spent != 0 && place.root()) {
    metrics.end_progress_line();
    log::warn("eval.patience: ", best->describe_wait(), ": the run ends at step ", step, " of ", config.steps,
              " (--resume with a larger eval.patience goes on)");
  }
  return spent != 0;
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
  lock->check_held("export");
  // The run's last lines (its final evaluation) are on disk before its models are reported done.
  metrics.close();
  // As one set (io::write_folder): never models of two steps after a full disk or a kill.
  const std::string folder = output + "/export";
  std::vector<std::string> models;
  io::write_folder(folder, [&](const fs::path& temp) { models = training.workload->export_models(temp, extras()); });
  log::info("exported ", joined(models), " to ", folder);
}

}  // namespace qarac
