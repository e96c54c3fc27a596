// The task plan: parsing, the round-robin and automatic layouts, and the table printed at start.
#include "parallel/task_plan.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "core/error.h"

namespace qarac::parallel {

using data::Task;
using data::kTaskCount;

namespace {

constexpr const char* kOption = "--parallel.tasks";

Task task_at(int t) { return static_cast<Task>(t); }

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

void check_world(int world_size) {
  QARAC_INPUT_CHECK(world_size >= 1, "the world size must be at least 1, got ", world_size);
}

void check_weights(const TaskValues& weights) {
  for (int t = 0; t < kTaskCount; ++t)
    QARAC_INPUT_CHECK(weights[t] >= 0, "task ", data::task_name(task_at(t)), ": weight ",
                      weights[t], " must be >= 0");
}

// The tasks that run, in task order.
std::vector<int> running(const TaskValues& weights) {
  std::vector<int> tasks;
  for (int t = 0; t < kTaskCount; ++t)
    if (task_runs(task_at(t), weights)) tasks.push_back(t);
  return tasks;
}

}  // namespace

bool task_runs(Task task, const TaskValues& weights) {
  return task != Task::masked_lm || weights[static_cast<int>(task)] > 0;
}

const char* model_name(Model model) {
  switch (model) {
    case Model::question_encoder: return "question_encoder";
    case Model::answer_encoder: return "answer_encoder";
    case Model::decoder: return "decoder";
  }
  return "?";
}

const char* model_short_name(Model model) {
  switch (model) {
    case Model::question_encoder: return "QE";
    case Model::answer_encoder: return "AE";
    case Model::decoder: return "D";
  }
  return "?";
}

const std::vector<Model>& models_of(Task task) {
  static const std::array<std::vector<Model>, kTaskCount> kModels = {{
      {Model::answer_encoder, Model::decoder},           // encode_decode: D(AE(x), x)
      {Model::question_encoder, Model::answer_encoder},  // question_answering: QE(q) - AE(a)
      {Model::answer_encoder, Model::decoder},           // reasoning: D(AE(p0) + AE(p1), c)
      {Model::answer_encoder},                           // consistency: cos(AE(s0), AE(s1))
      {Model::answer_encoder},                           // masked_lm: MLM through AE's base
  }};
  return kModels[static_cast<int>(task)];
}

TaskPlan::TaskPlan(int world_size, const TaskValues& weights)
    : world_size_(world_size), weights_(weights), tasks_of_(static_cast<size_t>(world_size)) {}

void TaskPlan::assign(int rank, Task task) {
  tasks_of_[rank].push_back(task);
  ranks_of_[static_cast<int>(task)].push_back(rank);
}

void TaskPlan::finish(bool only_some_tasks) {
  for (auto& tasks : tasks_of_) std::sort(tasks.begin(), tasks.end());
  for (auto& ranks : ranks_of_) std::sort(ranks.begin(), ranks.end());
  for (int r = 0; r < world_size_; ++r)
    QARAC_CHECK(!tasks_of_[r].empty(), "task plan: rank ", r, " has no task");
  for (int t = 0; t < kTaskCount && !only_some_tasks; ++t)
    QARAC_CHECK(ranks_of_[t].empty() != task_runs(task_at(t), weights_), "task plan: task ",
                data::task_name(task_at(t)), ranks_of_[t].empty() ? " has no rank" : " runs, but is off");
}

TaskPlan TaskPlan::single_task(data::Task task, int world_size) {
  check_world(world_size);
  TaskValues weights{};
  weights[static_cast<int>(task)] = 1.0;
  TaskPlan plan(world_size, weights);
  for (int r = 0; r < world_size; ++r) plan.assign(r, task);
  plan.finish(/*only_some_tasks=*/true);
  return plan;
}

TaskPlan TaskPlan::from_counts(const std::array<int, kTaskCount>& ranks_per_task, int world_size,
                               const TaskValues& weights) {
  check_world(world_size);
  check_weights(weights);
  int total = 0;
  for (int t = 0; t < kTaskCount; ++t) {
    const int n = ranks_per_task[t];
    if (!task_runs(task_at(t), weights)) {
      QARAC_INPUT_CHECK(n == 0, kOption, ": task ", data::task_short_name(task_at(t)),
                        " is given, but rehearsal is off (task.mlm.weight 0); remove it or set the weight");
      continue;
    }
    QARAC_INPUT_CHECK(n >= 1 && n <= world_size, kOption, ": ", data::task_short_name(task_at(t)),
                      ":", n, " must lie in [1, ", world_size, "] (the world has ", world_size,
                      world_size == 1 ? " rank)" : " ranks)");
    total += n;
  }
  QARAC_INPUT_CHECK(total >= world_size, kOption, ": the tasks take ", total,
                    " ranks but the world has ", world_size, ", so ranks ", total, "..",
                    world_size - 1, " would have no task");
  TaskPlan plan(world_size, weights);
  // Deal the task slots in task order round-robin: task t's n_t slots are consecutive, so with
  // n_t <= W they land on distinct ranks.
  int slot = 0;
  for (int t = 0; t < kTaskCount; ++t)
    for (int i = 0; i < ranks_per_task[t]; ++i) plan.assign(slot++ % world_size, task_at(t));
  plan.finish();
  return plan;
}

TaskPlan TaskPlan::automatic(int world_size, const TaskValues& weights, const TaskValues& costs) {
  check_world(world_size);
  check_weights(weights);
  const std::vector<int> tasks = running(weights);
  for (int t : tasks)
    QARAC_CHECK(costs[t] > 0, "task plan: the cost of ", data::task_name(task_at(t)), " is ",
                costs[t], "; costs must be positive");
  if (world_size >= static_cast<int>(tasks.size())) {
    // One rank each, then every further rank to the task whose ranks carry the highest cost
    // (cost / ranks): the greedy that minimises the slowest rank's share. Ties go to the
    // earlier task, so the plan is a pure function of its inputs.
    std::array<int, kTaskCount> counts{};
    for (int t : tasks) counts[t] = 1;
    for (int extra = static_cast<int>(tasks.size()); extra < world_size; ++extra) {
      int best = tasks.front();
      for (int t : tasks)
        if (costs[t] / counts[t] > costs[best] / counts[best]) best = t;
      ++counts[best];
    }
    return from_counts(counts, world_size, weights);
  }
  // Fewer ranks than tasks: one rank per task, longest task first onto the least loaded rank
  // (LPT scheduling); ties go to the earlier task and the lower rank.
  std::vector<int> order = tasks;
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return costs[a] > costs[b]; });
  std::vector<double> load(static_cast<size_t>(world_size), 0.0);
  TaskPlan plan(world_size, weights);
  for (int t : order) {
    const int rank = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    load[rank] += costs[t];
    plan.assign(rank, task_at(t));
  }
  plan.finish();
  return plan;
}

TaskPlan TaskPlan::parse(const std::string& spec, int world_size, const TaskValues& weights,
                         const TaskValues& costs) {
  const std::string s = trim(spec);
  if (s == "auto") return automatic(world_size, weights, costs);
  QARAC_INPUT_CHECK(!s.empty(), kOption, ": empty; expected 'auto' or e.g. 'ed:2,qa:1,rs:2,cs:1'");
  // getline yields no empty item after a last comma: said, as a doubled comma's empty item is.
  QARAC_INPUT_CHECK(s.back() != ',', kOption, ": '", s, "' ends with a comma (a task left out?)");
  std::array<int, kTaskCount> counts;
  counts.fill(0);
  std::istringstream items(s);
  std::string item;
  while (std::getline(items, item, ',')) {
    item = trim(item);
    const size_t colon = item.find(':');
    QARAC_INPUT_CHECK(colon != std::string::npos, kOption, ": '", item,
                      "' is not task:ranks (e.g. 'ed:2'; or 'auto')");
    const std::string name = trim(item.substr(0, colon)), number = trim(item.substr(colon + 1));
    Task task;
    try {
      task = data::task_from_name(name);
    } catch (const InputError& e) {
      throw InputError(std::string(kOption) + ": " + e.what());
    }
    const bool digits = !number.empty() && number.find_first_not_of("0123456789") == std::string::npos;
    QARAC_INPUT_CHECK(digits, kOption, ": '", item, "': the rank count '", number,
                      "' is not a positive integer");
    // Six digits at most: far beyond any job, and within an int.
    QARAC_INPUT_CHECK(number.size() <= 6, kOption, ": '", item, "': ", number, " ranks is more than any job has");
    int& n = counts[static_cast<int>(task)];
    QARAC_INPUT_CHECK(n == 0, kOption, ": task ", data::task_short_name(task), " is given twice");
    n = std::stoi(number);
    QARAC_INPUT_CHECK(n >= 1, kOption, ": '", item, "': every task needs at least one rank");
  }
  for (int t : running(weights))
    QARAC_INPUT_CHECK(counts[t] > 0, kOption, ": task ", data::task_short_name(task_at(t)),
                      " is missing; every task needs at least one rank",
                      task_at(t) == Task::masked_lm ? " (rehearsal is on: task.mlm.weight > 0)" : "");
  return from_counts(counts, world_size, weights);
}

const std::vector<Task>& TaskPlan::tasks_of(int rank) const {
  QARAC_CHECK(rank >= 0 && rank < world_size_, "task plan: rank ", rank, " of ", world_size_);
  return tasks_of_[rank];
}

const std::vector<int>& TaskPlan::ranks_of(Task task) const {
  return ranks_of_[static_cast<int>(task)];
}

bool TaskPlan::holds(int rank, Model model) const {
  for (Task task : tasks_of(rank)) {
    const std::vector<Model>& models = models_of(task);
    if (std::find(models.begin(), models.end(), model) != models.end()) return true;
  }
  return false;
}

std::vector<int> TaskPlan::ranks_holding(Model model) const {
  std::vector<int> ranks;
  for (int r = 0; r < world_size_; ++r)
    if (holds(r, model)) ranks.push_back(r);
  return ranks;
}

data::RankPlan TaskPlan::rank_plan(int rank) const {
  data::RankPlan plan;
  plan.world_size = world_size_;
  plan.rank = rank;
  for (Task task : tasks_of(rank)) {
    const std::vector<int>& ranks = ranks_of(task);
    const int group_rank = static_cast<int>(std::find(ranks.begin(), ranks.end(), rank) - ranks.begin());
    plan.tasks.push_back({task, group_rank, static_cast<int>(ranks.size())});
  }
  return plan;
}

namespace {

// Ranks as "0-3,5": runs of consecutive ranks collapsed.
std::string rank_list(const std::vector<int>& ranks) {
  std::string out;
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    if (!out.empty()) out += ",";
    out += std::to_string(ranks[i]);
    if (j > i) out += "-" + std::to_string(ranks[j]);
    i = j + 1;
  }
  return out;
}

std::string model_list(const std::vector<Model>& models) {
  std::string out;
  for (Model m : models) out += (out.empty() ? "" : " ") + std::string(model_short_name(m));
  return out;
}

}  // namespace

std::string TaskPlan::table() const {
  std::ostringstream os;
  char line[160];
  os << "task plan: " << world_size_ << (world_size_ == 1 ? " rank" : " ranks") << "\n";
  std::snprintf(line, sizeof line, "  %-24s %-12s %8s  %s\n", "task", "ranks", "weight", "models");
  os << line;
  for (int t = 0; t < kTaskCount; ++t) {
    const Task task = task_at(t);
    if (ranks_of(task).empty()) continue;  // a single-task plan
    const std::string name = std::string(data::task_name(task)) + " (" + data::task_short_name(task) + ")";
    std::snprintf(line, sizeof line, "  %-24s %-12s %8.4g  %s\n", name.c_str(),
                  rank_list(ranks_of(task)).c_str(), weight(task), model_list(models_of(task)).c_str());
    os << line;
  }
  std::snprintf(line, sizeof line, "  %-6s %-20s %s\n", "rank", "tasks", "models");
  os << line;
  for (int r = 0; r < world_size_; ++r) {
    std::string tasks;
    for (Task task : tasks_of_[r]) tasks += (tasks.empty() ? "" : " ") + std::string(data::task_short_name(task));
    std::vector<Model> models;
    for (int m = 0; m < kModelCount; ++m)
      if (holds(r, static_cast<Model>(m))) models.push_back(static_cast<Model>(m));
    std::snprintf(line, sizeof line, "  %-6d %-20s %s\n", r, tasks.c_str(), model_list(models).c_str());
    os << line;
  }
  return os.str();
}

}  // namespace qarac::parallel
