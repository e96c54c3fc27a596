// This rank's data: one data::Loader per task of its plan, so that every task has its own global
// batch (task.<task>.batch); together they act as the loader of the rank's plan: a step takes
// this rank's part of each task's global batch, in plan order, and the cursor is the tasks'
// global cursors in that order.
#pragma once

#include <string>
#include <vector>

#include "data/loader.h"
#include "parallel/communicator.h"
#include "train/config.h"

namespace qarac {

class TaskLoaders {
 public:
  // Opens data_dir/<task>.h5 of every task of `plan` (the rehearsal: encode_decode.h5);
  // InputError when two were made with different tokenizers, when one was made with another
  // tokenizer than the run's (export_tokenizer_dir, when it names one), when a token id is not
  // below `vocab_size` or a sequence is longer than `max_tokens` (the models').
  TaskLoaders(const data::RankPlan& plan, const TrainConfig& config, int64_t vocab_size, int64_t max_tokens);

  data::StepBatch next();
  // This rank's part of each of `batch`'s tasks in micro-batches of at most train.micro_tokens
  // tokens; an example longer than that runs alone (said once).
  std::vector<std::vector<data::TaskBatch>> micro_batches(const data::StepBatch& batch);
  data::LoaderCursor cursor() const;
  // Restores this rank's tasks from a cursor of any tasks (a checkpoint's holds every task of the
  // run); InputError naming `source` (the checkpoint) when one of this rank's tasks is missing
  // from it.
  void restore(const data::LoaderCursor& c, const std::string& source);

  // Across the ranks of `world` (null: this process alone), one all-reduce each:
  // Every rank of a task reads the same stream. Ranks that read different ones (re-prepared while
  // the job started, or node-local copies that differ) would draw the task's global batches from
  // different data, and nothing later would notice: the replicas still agree. InputError naming
  // the stream in `data_dir` otherwise.
  void check_streams_agree(const parallel::MpiGroup* world, const std::string& data_dir) const;
  // Every task's global cursor (a checkpoint's): each rank knows those of its own tasks, the same
  // on all of its ranks.
  data::LoaderCursor global_cursor(const parallel::MpiGroup* world) const;

 private:
  std::vector<data::Loader> loaders_;
  int64_t micro_tokens_;  // train.micro_tokens; 0: no limit
  bool warned_long_example_ = false;
};

}  // namespace qarac
