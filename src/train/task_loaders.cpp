// TaskLoaders (train/task_loaders.h).
#include "train/task_loaders.h"

#include <algorithm>
#include <string>

#include "data/shards.h"
#include "data/tokenizer.h"
#include "train/export_card.h"

namespace qarac {

TaskLoaders::TaskLoaders(const data::RankPlan& plan, const TrainConfig& config, int64_t vocab_size,
                         int64_t max_tokens) {
  // The tokenizer the exports carry must be the one the data was made with: a mismatch is refused
  // now, before the output directory exists, rather than by the export at the end of the run.
  const std::string tokenizer_dir = export_tokenizer_dir(config);
  const std::string tokenizer_hash =
      tokenizer_dir.empty() ? std::string() : data::Tokenizer::from_dir(tokenizer_dir).hash();
  std::string first_hash, first_path;
  for (const data::TaskSlot& slot : plan.tasks) {
    // The hashes come from the streams' metadata, before a loader reads every example: a stream
    // of another tokenizer is named as such, not by a token id outside the vocabulary.
    const std::string path = config.data_dir + "/" + data::task_name(data::stream_task(slot.task)) + ".h5";
    const std::string hash = data::TaskStreamFile(path).info().tokenizer_hash;
    if (first_path.empty()) {
      first_hash = hash;
      first_path = path;
    }
    QARAC_INPUT_CHECK(hash == first_hash, path, ": made with tokenizer ", hash, ", but ", first_path, " with ",
                      first_hash, " (rerun qarac-prep with one tokenizer)");
    QARAC_INPUT_CHECK(tokenizer_hash.empty() || hash == tokenizer_hash, path, ": made with tokenizer ", hash,
                      ", but the run's tokenizer, ", tokenizer_dir, ", is ", tokenizer_hash,
                      " (rerun qarac-prep with --tokenizer ", tokenizer_dir, ", or give the data's tokenizer)");

    data::RankPlan one = plan;
    one.tasks = {slot};
    const TaskSettings& settings = config.task[static_cast<int>(slot.task)];
    data::LoaderOptions options;
    options.data_dir = config.data_dir;
    options.seed = static_cast<uint64_t>(config.seed);
    options.global_batch = settings.batch;
    options.vocab_size = vocab_size;
    options.max_tokens = max_tokens;
    loaders_.emplace_back(one, options);
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
