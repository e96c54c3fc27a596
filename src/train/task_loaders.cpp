// TaskLoaders (train/task_loaders.h).
#include "train/task_loaders.h"

#include <algorithm>
#include <string>

namespace qarac {

TaskLoaders::TaskLoaders(const data::RankPlan& plan, const TrainConfig& config, int64_t vocab_size) {
  std::string first_hash, first_path;
  for (const data::TaskSlot& slot : plan.tasks) {
    data::RankPlan one = plan;
    one.tasks = {slot};
    const TaskSettings& settings = config.task[static_cast<int>(slot.task)];
    data::LoaderOptions options;
    options.data_dir = config.data_dir;
    options.seed = static_cast<uint64_t>(config.seed);
    options.global_batch = settings.batch;
    options.vocab_size = vocab_size;
    loaders_.emplace_back(one, options);
    const std::string path = config.data_dir + "/" + data::task_name(data::stream_task(slot.task)) + ".h5";
    const std::string& hash = loaders_.back().info(0).tokenizer_hash;
    if (first_path.empty()) {
      first_hash = hash;
      first_path = path;
    }
    QARAC_INPUT_CHECK(hash == first_hash, path, ": made with tokenizer ", hash, ", but ", first_path, " with ",
                      first_hash, " (rerun qarac-prep with one tokenizer)");
  }
}

data::StepBatch TaskLoaders::next() {
  data::StepBatch step;
  for (data::Loader& loader : loaders_) {
    data::StepBatch one = loader.next();
    step.step = one.step;
    step.tasks.push_back(std::move(one.tasks.front()));
  }
  return step;
}

data::LoaderCursor TaskLoaders::cursor() const {
  data::LoaderCursor c;
  for (const data::Loader& loader : loaders_) {
    const data::LoaderCursor one = loader.cursor();
    c.step = one.step;
    c.tasks.push_back(one.tasks.front());
  }
  return c;
}

void TaskLoaders::restore(const data::LoaderCursor& c) {
  for (data::Loader& loader : loaders_) {
    const data::Task task = loader.cursor().tasks.front().task;
    const auto it =
        std::find_if(c.tasks.begin(), c.tasks.end(), [&](const data::TaskCursor& t) { return t.task == task; });
    QARAC_INPUT_CHECK(it != c.tasks.end(), "data cursor: holds no position for task ", data::task_name(task));
    loader.restore({c.step, {*it}});
  }
}

}  // namespace qarac
