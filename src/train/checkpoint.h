// Training checkpoints (DESIGN.md §6): what goes in a checkpoint and where, and a run's
// checkpoint folder (keep the newest N, find the newest valid one). A checkpoint holds the whole
// state a run needs to go on exactly where it stopped — master weights, optimizer moments and
// step, the training step and seed (the RNG is counter-based, so these two are its whole state),
// the data loader's cursor and the run's configuration text. Resuming from one is bit-exact on
// the CPU.
//
// Files are "checkpoint-<step, 10 digits>.h5" in a run's checkpoint folder, written atomically
// (core/atomic_file.h: a final name only ever holds a finished file) as checksummed HDF5 files
// (core/hdf5_checksummed.h: a checksum over every dataset and a `complete` attribute written
// last), so a file damaged afterwards (truncated by a full disk, a flipped byte, a partial copy)
// is detected and never resumed from.
//
// Layout (every value is a dataset, so the checksum covers all of them; h5dump shows them):
//   /                     attributes: format, version, checksum (u64), complete = 1 (written last)
//   /config               string: the run's configuration text
//   /state/step           i64 scalar: training steps completed
//   /state/seed           u64 scalar: the run's seed
//   /parameters/<name>    f32 (f64) [shape]: master weights, by parameter name
//   /optimizer/kind       string: "adamw" or "nadam" (the moments mean different things)
//   /optimizer/steps      i64 scalar: updates applied
//   /optimizer/m/<name>   first moments, as the master weights
//   /optimizer/v/<name>   second moments
//   /loader/step          i64 scalar
//   /loader/task          i32 [n]: data::Task per task of the cursor, plan order
//   /loader/{epoch, position, share_begin, share_end}   i64 [n]
// Datasets are contiguous and uncompressed (the state is floating-point noise that deflate does
// not shrink).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "data/loader.h"
#include "train/optimizer.h"

namespace qarac {

// Root attribute `format`; `version` changes with any incompatible layout change.
constexpr const char* kCheckpointFormat = "qarac-checkpoint";
constexpr int kCheckpointVersion = 1;

// What a run needs besides the optimizer (which holds the parameters, moments and its own step).
struct TrainingState {
  int64_t step = 0;   // training steps completed: the next step to run
  uint64_t seed = 0;  // the run's seed; with `step`, the state of every random stream (core/rng.h)
  data::LoaderCursor cursor;
  std::string config;  // the run's configuration (INI text), stored as given
};

// "<dir>/checkpoint-0000000042.h5".
std::string checkpoint_path(const std::string& dir, int64_t step);
// The step in the name of checkpoint_path(dir, step); -1 for a path not named so.
int64_t checkpoint_step(const std::string& path);

// Writes the optimizer's parameters (master weights), moments and step with `state` to
// checkpoint_path(dir, state.step), creating `dir` if needed, and returns that path. Then deletes
// the older checkpoints beyond the newest `keep_last` (0 keeps all), and the temporary files of
// writes that never finished. Files of a later step than state.step (another run's) are kept.
// One process writes a folder: call it on one rank.
std::string save_checkpoint(const std::string& dir, const Optimizer& optimizer,
                            const TrainingState& state, int keep_last);

// Throws a one-line qarac::InputError naming `path` when it is not a checkpoint this build can
// resume from: not HDF5, truncated, unfinished (no `complete`), failing its checksum, of another
// format or version, or missing part of the state. Reads the whole file.
void verify_checkpoint(const std::string& path);

// The newest checkpoint of `dir` that verify_checkpoint accepts; each newer one it refuses is
// skipped with a log::warn naming the file and why. nullopt when there is none (or no `dir`).
// Temporary files and other names are ignored.
std::optional<std::string> find_latest_checkpoint(const std::string& dir);

// Returns "" to accept a checkpoint written under `saved_config`, or why it does not fit this run.
using ConfigCheck = std::function<std::string(const std::string& saved_config)>;

// Restores the optimizer's parameters (master and compute copies), moments and step from `path`,
// zeroes the gradients, and returns the rest of the state. The file is read whole into host
// memory first (about the size of the checkpoint), so that it can be checked before any write. Refuses, with a one-line
// qarac::InputError naming the file and leaving the optimizer untouched, whatever
// verify_checkpoint refuses, a parameter or moment missing or of another shape or dtype, a
// parameter the model does not have, another optimizer kind, and a configuration that
// `check_config` refuses.
TrainingState load_checkpoint(const std::string& path, Optimizer& optimizer,
                              const ConfigCheck& check_config = {});

}  // namespace qarac
