// TaskLoaders (train/task_loaders.h).
#include "train/task_loaders.h"

#include <algorithm>
#include <string>

#include "core/error.h"
#include "core/log.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "train/export_card.h"

namespace qarac {

TaskLoaders::TaskLoaders(const data::RankPlan& plan, const TrainConfig& config, int64_t vocab_size,
                         int64_t max_tokens)
    : micro_tokens_(config.micro_tokens) {
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
    options.too_long_remedy = config.too_long_remedy(max_tokens);
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

std::vector<std::vector<data::TaskBatch>> TaskLoaders::micro_batches(const data::StepBatch& batch) {
  std::vector<std::vector<data::TaskBatch>> micro(batch.tasks.size());
  for (size_t i = 0; i < batch.tasks.size(); ++i) {
    micro[i] = batch.tasks[i].split(micro_tokens_);
    for (const data::TaskBatch& m : micro[i])
      if (micro_tokens_ > 0 && m.tokens() > micro_tokens_ && !warned_long_example_) {
        warned_long_example_ = true;
        log::warn("train.micro_tokens ", micro_tokens_, ": an example of ", data::task_name(m.task), " has ",
                  m.tokens(), " tokens and runs alone (said once)");
      }
  }
  return micro;
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

void TaskLoaders::restore(const data::LoaderCursor& c, const std::string& source) {
  for (data::Loader& loader : loaders_) {
    const data::Task task = loader.cursor().tasks.front().task;
    const auto it =
        std::find_if(c.tasks.begin(), c.tasks.end(), [&](const data::TaskCursor& t) { return t.task == task; });
    QARAC_INPUT_CHECK(it != c.tasks.end(), source, ": the data cursor holds no position for task ",
                      data::task_name(task));
    loader.restore({c.step, {*it}});
  }
}

// Per task: whether this rank reads it, its content checksum, and the checksum's complement, whose
// maximum is the complement of the smallest.
void TaskLoaders::check_streams_agree(const parallel::MpiGroup* world, const std::string& data_dir) const {
  if (!world) return;
  constexpr size_t kFields = 3;
  std::vector<uint64_t> seen(kFields * data::kTaskCount, 0);
  for (const data::TaskCursor& t : cursor().tasks) {
    uint64_t* s = &seen[kFields * static_cast<size_t>(t.task)];
    s[0] = 1;
    s[1] = t.stream_checksum;
    s[2] = ~t.stream_checksum;
  }
  world->all_reduce(seen.data(), static_cast<int>(seen.size()), MPI_MAX, "task streams");
  for (int t = 0; t < data::kTaskCount; ++t) {
    const uint64_t* s = &seen[kFields * static_cast<size_t>(t)];
    const data::Task task = static_cast<data::Task>(t);
    QARAC_INPUT_CHECK(s[0] == 0 || s[1] == ~s[2], data_dir, "/", data::task_name(data::stream_task(task)),
                      ".h5: the ranks of task ", data::task_name(task), " read different streams (checksums ",
                      std::hex, std::showbase, ~s[2], " and ", s[1],
                      "): it changed while the job started, or the ranks see different copies; rerun");
  }
}

// Per task: whether this rank reads it, its epoch, position and stream checksum (zeros where it
// does not; the ranks that read a task hold the same cursor, so the maximum is theirs).
data::LoaderCursor TaskLoaders::global_cursor(const parallel::MpiGroup* world) const {
  constexpr size_t kFields = 4;
  const data::LoaderCursor mine = cursor();
  std::vector<uint64_t> known(kFields * data::kTaskCount, 0);
  for (const data::TaskCursor& t : mine.tasks) {
    uint64_t* k = &known[kFields * static_cast<size_t>(t.task)];
    k[0] = 1;
    k[1] = static_cast<uint64_t>(t.epoch);
    k[2] = static_cast<uint64_t>(t.position);
    k[3] = t.stream_checksum;
  }
  if (world) world->all_reduce(known.data(), static_cast<int>(known.size()), MPI_MAX, "data cursors");
  data::LoaderCursor all;
  all.step = mine.step;
  for (int t = 0; t < data::kTaskCount; ++t) {
    const uint64_t* k = &known[kFields * static_cast<size_t>(t)];
    if (k[0] == 0) continue;
    all.tasks.push_back({static_cast<data::Task>(t), static_cast<int64_t>(k[1]), static_cast<int64_t>(k[2]), k[3]});
  }
  return all;
}

}  // namespace qarac
