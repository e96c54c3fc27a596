// A run's directory (config.output) and where a run starts in it. Layout:
//   config.ini              the effective configuration (a fresh run writes it)
//   metrics.jsonl           one JSON object per step, and per evaluation ("eval": true)
//   checkpoints/            step-<step>/<part>.h5, the newest checkpoint.keep of them: the global
//                           state, every model group once (train/checkpoint.h), whatever the
//                           world size (with several machines the folder must be shared)
//   export/<model>/         config.json + model.safetensors per model, at the end
#pragma once

#include <string>

#include "parallel/communicator.h"

namespace qarac {

// A fresh run needs a new or empty directory, so that it never mixes its files with another
// run's; --resume needs the directory of the run. InputError naming the directory otherwise.
void check_output_dir(const std::string& output, bool resume);

// Where a run keeps its checkpoints: <output>/checkpoints.
std::string checkpoint_dir(const std::string& output);

// The checkpoint --resume starts from: the newest valid one, which rank 0 finds and tells the
// others (`world` set: collective over it). Any world size and task plan may resume it.
// InputError when there is none, or the folder holds checkpoints of the per-rank layout of
// earlier versions (on every rank).
std::string find_resume_checkpoint(const std::string& output, int rank, const parallel::MpiGroup* world);

}  // namespace qarac
