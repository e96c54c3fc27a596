// This rank's data: one data::Loader per task of its plan, so that every task has its own global
// batch (task.<task>.batch); together they act as the loader of the rank's plan: a step takes
// this rank's part of each task's global batch, in plan order, and the cursor is the tasks'
// global cursors in that order.
#pragma once

#include <vector>

#include "data/loader.h"
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
  data::LoaderCursor cursor() const;
  // Restores this rank's tasks from a cursor of any tasks (a checkpoint's holds every task of the
  // run); InputError when one of this rank's tasks is missing from it.
  void restore(const data::LoaderCursor& c);

 private:
  std::vector<data::Loader> loaders_;
};

}  // namespace qarac
