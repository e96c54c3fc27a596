// This rank's data: one data::Loader per task of its plan, so that every task has its own batch
// size (train.<task>.tokens and .examples); together they act as the loader of the rank's plan:
// a step takes one batch of each task, in plan order, and the cursor is the tasks' cursors in
// that order (what a checkpoint stores).
#pragma once

#include <vector>

#include "data/loader.h"
#include "train/config.h"

namespace qarac {

class TaskLoaders {
 public:
  // Opens data_dir/<task>.h5 of every task of `plan`; InputError when two were made with
  // different tokenizers.
  TaskLoaders(const data::RankPlan& plan, const TrainConfig& config);

  data::StepBatch next();
  data::LoaderCursor cursor() const;
  // InputError when `c` holds another number of tasks than this rank runs.
  void restore(const data::LoaderCursor& c);

 private:
  std::vector<data::Loader> loaders_;
};

}  // namespace qarac
