// A run's task plan and what the start banner says of it: the plan (`auto` balances each task's
// FLOPs per step, parallel/task_cost.h, at its global batch and its stream's mean lengths),
// each task's global batch, ranks, examples and micro-batches per rank, and each rank's expected
// share of the step. `qarac-train --parallel.show_plan W` prints it for W ranks without training,
// so a cluster job can be sized before it is submitted.
#pragma once

#include <array>
#include <string>

#include "parallel/task_plan.h"
#include "train/config.h"

namespace qarac {
namespace parallel {
class MpiGroup;
}  // namespace parallel

// What one step of each task costs (data::Task order); zeros where a task does not run or, in
// model.mode mlm, where nothing is estimated.
struct TaskCosts {
  std::array<double, data::kTaskCount> flops{};               // forward and backward
  std::array<double, data::kTaskCount> tokens_per_example{};  // all fields, the stream's mean
};

// The costs of config's tasks: reads the base's config.json and opens every task stream for its
// lengths (InputError naming a missing or invalid file). mlm mode: none.
TaskCosts estimate_task_costs(const TrainConfig& config);
// The same, estimated by rank 0 of `world` alone (null: this process) and broadcast: estimating
// opens every task stream, and the seal check of each reads it whole, which the other ranks, each
// reading only its own tasks' streams, need not repeat (W ranks would read the dataset W times
// before the first step). A stream that rank 0 refuses ends the job from there.
TaskCosts shared_task_costs(const TrainConfig& config, const parallel::MpiGroup* world);

// The plan of `world_size` ranks: parallel.tasks, `auto` balancing `costs`; mlm mode: every rank
// runs the text stream.
parallel::TaskPlan make_plan(const TrainConfig& config, int world_size, const TaskCosts& costs);

// The banner: the plan's table, then per task its global batch over its ranks and per rank its
// expected FLOPs, their share of the step's and against the busiest rank's.
std::string plan_report(const TrainConfig& config, const parallel::TaskPlan& plan, const TaskCosts& costs);

}  // namespace qarac
