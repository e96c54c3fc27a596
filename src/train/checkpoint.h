// Training checkpoints (docs/design.md §6): what goes in a checkpoint and where, and a run's
// checkpoint folder (keep the newest N, find the newest valid one). A checkpoint holds the whole
// state a run needs to go on exactly where it stopped — master weights, optimizer moments and
// step, the training step and seed (the RNG is counter-based, so these two are its whole state),
// the data loader's cursor and the run's configuration text. Resuming from one is bit-exact on
// the CPU.
//
// A checkpoint is a folder "step-<step, 10 digits>" in a run's checkpoint folder, holding one
// file "<part>.h5" per part of the parameters (the trainer's parts are its model groups:
// question_encoder, answer_encoder, decoder, shared_encoder, and a trained rehearsal head,
// mlm_head; in model.mode mlm the one part base), each part's master weights and moments written once, by one process (the group's
// lowest world rank). Every part file also holds the global state (step, seed, optimizer step,
// the global data cursors, the config and the list of parts), so any part tells what the
// checkpoint is and a folder missing a part is refused. The folder is written under "step-<step>.tmp" and renamed by one process once every
// part is complete, so a final name only ever holds a whole checkpoint; each file is also written
// atomically (core/atomic_file.h) as a checksummed HDF5 file (core/hdf5_checksummed.h: a checksum
// over every dataset and a `complete` attribute written last), so a file damaged afterwards (a
// full disk, a flipped byte, a partial copy) is detected and never resumed from. Nothing in it
// depends on the world size or the task plan: a run resumes from it at any other.
//
// Layout of a part file (every value is a dataset, so the checksum covers all of them):
//   /                     attributes: format, version, checksum (u64), complete = 1 (written last)
//   /config               string: the run's configuration text
//   /checkpoint/parts     string: the names of every part of the checkpoint, one a line
//   /state/step           i64 scalar: training steps completed
//   /state/seed           u64 scalar: the run's seed
//   /state/frozen_base_hash  u64 scalar: the hash of what the run keeps frozen from its base
//                         (Workload::frozen_base_hash; 0: none, or a checkpoint from before it)
//   /state/model_config   string: the models' configuration, config.json's fields in one JSON
//                         line (io::model_fields_json; absent in checkpoints from before it)
//   /state/evaluation     u64 scalar: the fingerprint of rank 0's held-out evaluation
//                         (Evaluator::fingerprint; absent where there is none, or from before it)
//   /state/evaluation_since  i64 scalar: the first step whose evaluation is of that fingerprint
//                         (absent: 0)
//   /state/world_size     i64 scalar: the ranks of the run that wrote it, for a resume to say
//                         (absent in checkpoints from before it)
//   /parameters/<name>    f32 (f64) [shape]: master weights of this part, by parameter name
//   /optimizer/kind       string: "adamw" or "nadam" (the moments mean different things)
//   /optimizer/steps      i64 scalar: updates applied (NAdam's running product is a function of it)
//   /optimizer/m/<name>   first moments, as the master weights
//   /optimizer/v/<name>   second moments
//   /loader/step          i64 scalar
//   /loader/task          i32 [n]: data::Task per task of the run
//   /loader/{epoch, position}   i64 [n]: the global cursor of each task
//   /loader/checksum      i64 [n]: the content checksum of each task's stream (its u64 bits), so
//                         that a resume on other data of the same size is refused (absent in
//                         checkpoints from before it: not checked)
// Datasets are contiguous and uncompressed (the state is floating-point noise that deflate does
// not shrink).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "data/loader.h"
#include "train/optimizer.h"

namespace qarac {

// The most steps a checkpoint may have completed: a larger one in a file is damage, and
// train.steps stays within it (folder names keep their 10 digits).
constexpr int64_t kMaxCheckpointStep = 1000000000;

// Root attribute `format`; `version` changes with any incompatible layout change.
constexpr const char* kCheckpointFormat = "qarac-checkpoint";
constexpr int kCheckpointVersion = 2;

// What a run needs besides the optimizer (which holds the parameters, moments and its own step).
struct TrainingState {
  int64_t step = 0;   // training steps completed: the next step to run
  uint64_t seed = 0;  // the run's seed; with `step`, the state of every random stream (core/rng.h)
  data::LoaderCursor cursor;  // the global cursor of every task of the run
  std::string config;  // the run's configuration (INI text), stored as given
  uint64_t frozen_base_hash = 0;  // Workload::frozen_base_hash; 0: none (or a checkpoint from before it)
  std::string model_config;       // io::model_fields_json of Workload::model_config; empty: not recorded
  uint64_t evaluation = 0;        // Evaluator::fingerprint of the run's evaluation; 0: none, or not recorded
  int64_t evaluation_since = 0;   // the first step whose evaluation is of that fingerprint
  int64_t world_size = 0;         // of the run that wrote it; 0: not recorded
};

// Some of the optimizer's parameters, saved as one file of a checkpoint.
struct CheckpointPart {
  std::string name;  // the file is <name>.h5
  ParameterList params;
};

// "<dir>/step-0000000042".
std::string checkpoint_path(const std::string& dir, int64_t step);
// The step in the name of checkpoint_path(dir, step); -1 for a path not named so.
int64_t checkpoint_step(const std::string& path);

// "<dir>/step-0000000042.tmp": where the parts of that checkpoint are written.
std::string checkpoint_temp_path(const std::string& dir, int64_t step);
// One process, first: creates the empty temporary folder of the checkpoint at `step` in `dir`
// (replacing one a dead write left) and returns it; the parts are written into it.
std::string begin_checkpoint(const std::string& dir, int64_t step);
// Any process: writes `part` (parameters from `optimizer`, with their moments) and `state` into
// the temporary folder `folder`; `parts` names every part of the checkpoint.
void write_checkpoint_part(const std::string& folder, const CheckpointPart& part,
                           const std::vector<std::string>& parts, const Optimizer& optimizer,
                           const TrainingState& state);
// One process, after every part is written: renames the temporary folder of `step` to its final
// name and returns it, then deletes the checkpoints beyond the newest `keep_last` (0 keeps all)
// and the temporary folders of writes that never finished. Checkpoints of a later step than
// `step` (another run's) are kept.
std::string commit_checkpoint(const std::string& dir, int64_t step, int keep_last);
// Removes the temporary folders of `dir`: checkpoints being written or deleted when their process
// died or failed. Only for a process that knows no other writes there (the holder of the run
// directory's lock, at the start of a run, or after a failed write).
void remove_unfinished_checkpoints(const std::string& dir);
// `what`, the error of a checkpoint that could not be written into `dir`, and, when it failed for
// lack of space (ENOSPC, EDQUOT), what checkpoint.keep `keep_last` asks of the disk: room for
// keep_last + 1 checkpoints while the newest is written, the oldest being removed only once the
// newest is complete; with the size of the newest on disk and the room free (the failed one
// removed, this is what the next checkpoint will find).
std::string with_space_needed(const std::string& what, const std::string& dir, int keep_last);
// begin, one part per entry of `parts` (empty: one part "model" with every parameter of the
// optimizer), commit: a single process holding everything.
std::string save_checkpoint(const std::string& dir, const Optimizer& optimizer, const TrainingState& state,
                            int keep_last, const std::vector<CheckpointPart>& parts = {});

// Throws a one-line qarac::InputError naming the file when checkpoint folder `path` is not one
// this build can resume from: a part missing, not HDF5, truncated, unfinished (no `complete`),
// failing its checksum, of another format or version, parts disagreeing on the step, or missing
// part of the state. Reads every file whole.
void verify_checkpoint(const std::string& path);

// The newest checkpoint of `dir` that verify_checkpoint accepts; each newer one it refuses is
// skipped with a log::warn naming the file and why. nullopt when `dir` holds no checkpoint (or
// does not exist); temporary folders and other names are ignored. InputError when it holds
// checkpoints but refuses every one, and when it holds checkpoints of the per-rank layout of
// earlier versions (rank-<r>/ folders, checkpoint-<step>.h5 files).
std::optional<std::string> find_latest_checkpoint(const std::string& dir);
// Only the layout check of find_latest_checkpoint (cheap: lists the folder).
void refuse_old_checkpoints(const std::string& dir);

// Returns "" to accept a checkpoint written under `saved_config`, or why it does not fit this run.
using ConfigCheck = std::function<std::string(const std::string& saved_config)>;

// Restores the parameters of `parts` (master and compute copies; parts empty: one part "model"
// with every parameter of the optimizer), their moments and the optimizer's step from checkpoint
// folder `path`, zeroes the gradients, and returns the rest of the state. Every part file is read
// whole into host memory first, so that everything can be checked before any write. Refuses,
// with a one-line qarac::InputError naming the file and leaving the optimizer untouched, whatever
// verify_checkpoint refuses of the files it reads, a parameter or moment missing or of another
// shape or dtype, a parameter the part does not have, another optimizer kind, and a
// configuration that `check_config` refuses.
TrainingState load_checkpoint(const std::string& path, Optimizer& optimizer,
                              const ConfigCheck& check_config = {},
                              const std::vector<CheckpointPart>& parts = {});

}  // namespace qarac
