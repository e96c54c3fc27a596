// The task plan a run uses and the lines the start banner gives of it (plan_report.h).
#include "train/plan_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "data/shards.h"
#include "io/hf_config.h"
#include "parallel/communicator.h"
#include "parallel/task_cost.h"

namespace qarac {

TaskCosts estimate_task_costs(const TrainConfig& c) {
  TaskCosts costs;
  if (c.pretraining()) return costs;
  const RobertaConfig base = io::read_hf_config(c.base + "/config.json");
  std::array<parallel::TaskShape, data::kTaskCount> shapes{};
  for (int t = 0; t < data::kTaskCount; ++t) {
    const data::Task task = static_cast<data::Task>(t);
    if (task == data::Task::masked_lm && !c.rehearsal()) continue;  // runs nowhere: batch 0, no cost
    const data::TaskStreamFile stream(c.data_dir + "/" + data::task_name(data::stream_task(task)) + ".h5");
    stream.check_holds(data::stream_task(task));
    const data::StreamInfo& info = stream.info();
    const double examples = static_cast<double>(info.examples);
    shapes[t].batch = static_cast<double>(c.task[t].batch);
    for (const int64_t tokens : info.field_tokens) {
      shapes[t].mean_field_tokens.push_back(static_cast<double>(tokens) / examples);
      costs.tokens_per_example[t] += static_cast<double>(tokens) / examples;
    }
  }
  costs.flops = parallel::task_step_flops(base, shapes);
  return costs;
}

TaskCosts shared_task_costs(const TrainConfig& config, const parallel::MpiGroup* world) {
  static_assert(std::is_trivially_copyable_v<TaskCosts>, "broadcast as bytes");
  TaskCosts costs;
  if (!world || world->rank() == 0) costs = estimate_task_costs(config);
  if (world) world->broadcast(&costs, static_cast<int>(sizeof costs), 0, "the task costs");
  return costs;
}

parallel::TaskPlan make_plan(const TrainConfig& c, int world_size, const TaskCosts& costs) {
  if (c.pretraining()) return parallel::TaskPlan::single_task(data::Task::encode_decode, world_size);
  parallel::TaskValues weights{};
  for (int t = 0; t < data::kTaskCount; ++t) weights[t] = c.task[t].weight;
  return parallel::TaskPlan::parse(c.tasks, world_size, weights, costs.flops);
}

std::string plan_report(const TrainConfig& c, const parallel::TaskPlan& plan, const TaskCosts& costs) {
  std::string text = plan.table();
  const bool estimated = costs.flops != decltype(costs.flops){};
  text += "global batches (examples per step, whatever the world size):\n";
  char line[200];
  // A rank's expected work: its part of each of its tasks, 1/n_t of the task's FLOPs (the
  // division balances tokens).
  std::vector<double> rank_flops(static_cast<size_t>(plan.world_size()), 0.0);
  double total = 0;
  for (int t = 0; t < data::kTaskCount; ++t) {
    const data::Task task = static_cast<data::Task>(t);
    const int ranks = plan.group_size(task);
    if (ranks == 0) continue;
    const double per_rank = static_cast<double>(c.task[t].batch) / ranks;
    std::snprintf(line, sizeof line, "  %-4s %6lld over %d rank(s), about %.1f each", data::task_short_name(task),
                  static_cast<long long>(c.task[t].batch), ranks, per_rank);
    text += line;
    if (estimated) {
      std::snprintf(line, sizeof line, ", %.3g GFLOP per step (%.3g per rank)", costs.flops[t] / 1e9,
                    costs.flops[t] / ranks / 1e9);
      text += line;
      total += costs.flops[t];
      for (const int r : plan.ranks_of(task)) rank_flops[static_cast<size_t>(r)] += costs.flops[t] / ranks;
    }
    if (c.micro_tokens > 0 && costs.tokens_per_example[t] > 0) {
      const double micro = std::ceil(per_rank * costs.tokens_per_example[t] / static_cast<double>(c.micro_tokens));
      std::snprintf(line, sizeof line, ", about %.0f micro-batch(es) of <= %lld tokens", std::max(micro, 1.0),
                    static_cast<long long>(c.micro_tokens));
      text += line;
    }
    if (task == data::Task::question_answering && c.contrastive_qa()) {
      std::snprintf(line, sizeof line, ", contrastive over all %lld at once (temperature %g)",
                    static_cast<long long>(c.task[t].batch), c.qa_temperature);
      text += line;
    }
    text += "\n";
  }
  if (!estimated) return text;
  // The step lasts as long as the busiest rank computes (the others wait in the reductions).
  const double busiest = *std::max_element(rank_flops.begin(), rank_flops.end());
  text += "expected share of the step (FLOPs: forward and backward; the step lasts as long as the busiest rank):\n";
  for (size_t r = 0; r < rank_flops.size(); ++r) {
    std::snprintf(line, sizeof line, "  rank %-4zu %9.3g GFLOP  %5.1f%% of the step's work  %5.1f%% of the busiest rank's\n",
                  r, rank_flops[r] / 1e9, 100.0 * rank_flops[r] / total, 100.0 * rank_flops[r] / busiest);
    text += line;
  }
  return text;
}

}  // namespace qarac
