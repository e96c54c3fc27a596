// A run's directory (config.output) and where a run starts in it. Layout:
//   config.ini              the effective configuration (a fresh run writes it)
//   metrics.jsonl           one JSON object per step, and per evaluation ("eval": true)
//   checkpoints/            checkpoint-<step>.h5, the newest checkpoint.keep of them; with several
//                           ranks, rank-<r>/checkpoint-<step>.h5, what rank r holds
//   export/<model>/         config.json + model.safetensors per model, at the end
#pragma once

#include <string>

#include "parallel/communicator.h"

namespace qarac {

// A fresh run needs a new or empty directory, so that it never mixes its files with another
// run's; --resume needs the directory of the run. InputError naming the directory otherwise.
void check_output_dir(const std::string& output, bool resume);

// Where `rank` of `world_size` keeps its checkpoints: every rank saves what it holds in its own
// folder; one rank alone saves into checkpoints/ directly.
std::string checkpoint_dir(const std::string& output, int rank, int world_size);

// The checkpoint --resume starts from: the newest valid one of this rank's folder; with several
// ranks (`world` set, collective over it) the newest step every rank has, since a job killed
// while some ranks were writing leaves the others one checkpoint ahead. InputError when the run
// was trained with another number of ranks or some rank has no valid checkpoint.
std::string find_resume_checkpoint(const std::string& output, int rank, int world_size,
                                   const parallel::MpiGroup* world);

}  // namespace qarac
