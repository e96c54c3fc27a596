// The task plan (docs/design.md §4): which of the W ranks runs which task. The four QARAC tasks
// always run; the fifth, masked_lm (rehearsal), runs when its weight is positive and nowhere
// otherwise (task_runs). Every rank runs one or more tasks and every running task runs on one or
// more ranks, for any W >= 1: W = 1 is the QARAC step (every task in one process), W below the
// number of tasks packs several tasks on a rank, larger W gives each task its own ranks. A task's
// global batch is divided among its ranks (data::divide_batch); a rank scales its gradient by
// (its examples of the batch) / N_t · w_t, so that summing every model's gradients over the
// ranks holding it gives the gradient of Σ_t w_t loss_t over the global batches, whatever the
// layout.
//
// Specs (--parallel.tasks):
//   "ed:2,qa:1,rs:2,cs:1"  n_t ranks per task (short or full task names, every running task
//                          once and no other, 1 <= n_t <= W, Σ n_t >= W; with rehearsal on
//                          mlm too: "ed:1,qa:1,rs:1,cs:1,mlm:1"); the Σ n_t task slots, in
//                          task order, are dealt to ranks 0, 1, ..., W-1, 0, 1, ... so a task's
//                          ranks are distinct and no rank idles.
//   "auto"                 from each task's cost per step (its FLOPs, parallel/task_cost.h,
//                          at its global batch): with W at least the running tasks, every task
//                          gets a rank and each further rank goes to the task with the highest
//                          cost per rank; with fewer, each task gets one rank, the costliest
//                          first onto the least loaded rank.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/task.h"

namespace qarac::parallel {

// The three QARAC models (docs/design.md §2) and which tasks use them (§4).
enum class Model : int { question_encoder = 0, answer_encoder = 1, decoder = 2 };
constexpr int kModelCount = 3;
const char* model_name(Model model);        // "question_encoder", "answer_encoder", "decoder"
const char* model_short_name(Model model);  // "QE", "AE", "D"
// ED: AE + D, QA: QE + AE, RS: AE + D, CS: AE, MLM: AE (its base, with the base's MLM head).
const std::vector<Model>& models_of(data::Task task);

using TaskValues = std::array<double, data::kTaskCount>;  // one value per task, Task order

// Whether `task` runs under task weights `weights`: the QARAC tasks always, masked_lm (rehearsal)
// only with a positive weight (0 turns it off).
bool task_runs(data::Task task, const TaskValues& weights);

class TaskPlan {
 public:
  // Parses `spec` ("auto" or "ed:2,qa:1,..."); `weights` are the w_t, `costs` what auto
  // balances. InputError (one line, naming --parallel.tasks) for a bad spec or world size.
  static TaskPlan parse(const std::string& spec, int world_size, const TaskValues& weights,
                        const TaskValues& costs);
  // n_t ranks per task, dealt round-robin (the explicit form); 0 for a task that does not run.
  static TaskPlan from_counts(const std::array<int, data::kTaskCount>& ranks_per_task,
                              int world_size, const TaskValues& weights);
  static TaskPlan automatic(int world_size, const TaskValues& weights, const TaskValues& costs);
  // Every rank runs `task` alone and the other tasks run nowhere: pre-training a base on the
  // text stream (qarac-train's model.mode mlm), data-parallel over all ranks.
  static TaskPlan single_task(data::Task task, int world_size);

  int world_size() const { return world_size_; }
  // The tasks of `rank`, in task order (the loader's plan order).
  const std::vector<data::Task>& tasks_of(int rank) const;
  // The ranks of `task`, ascending: a rank's index here is its group rank.
  const std::vector<int>& ranks_of(data::Task task) const;
  int group_size(data::Task task) const { return static_cast<int>(ranks_of(task).size()); }
  // The ranks that hold `model` (run a task that uses it), ascending: its communicator.
  std::vector<int> ranks_holding(Model model) const;
  bool holds(int rank, Model model) const;

  double weight(data::Task task) const { return weights_[static_cast<int>(task)]; }

  // What the loader of `rank` needs: its tasks and its place in each task's group.
  data::RankPlan rank_plan(int rank) const;
  // A table for the start of a run: per task its ranks, weight and models; per rank its tasks
  // and models.
  std::string table() const;

 private:
  TaskPlan(int world_size, const TaskValues& weights);
  void assign(int rank, data::Task task);
  // Sorts, and checks that every rank and (unless only_some_tasks) every running task has work.
  void finish(bool only_some_tasks = false);

  int world_size_ = 1;
  TaskValues weights_{};
  std::vector<std::vector<data::Task>> tasks_of_;          // [rank]
  std::array<std::vector<int>, data::kTaskCount> ranks_of_;  // [task]
};

}  // namespace qarac::parallel
