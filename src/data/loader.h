// The per-rank data loader (DESIGN §4, §6). A rank reads, from each task-stream file of the tasks
// it runs, only its own share: a contiguous block of examples, disjoint from the other ranks of
// that task and together covering the stream. Each step it hands out one batch of every task:
// examples in an order shuffled from (seed, epoch, task), as many as fit a token budget; a
// share that runs out starts its next epoch, so shorter streams repeat and no step lacks a task.
// Its position is a small cursor that a checkpoint saves; restoring it continues the exact same
// sequence of batches.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "data/task.h"
#include "data/shards.h"

namespace qarac::data {

// What the loader needs of the task plan (the distributed task plan fills it in): the tasks this
// rank runs and, for each, this rank's place among all the ranks that run it.
struct TaskSlot {
  Task task = Task::encode_decode;
  int group_rank = 0;  // this rank's index among the ranks of `task`, 0..group_size-1
  int group_size = 1;  // how many ranks run `task`
};

struct RankPlan {
  int world_size = 1;
  int rank = 0;
  std::vector<TaskSlot> tasks;

  // One rank running all four tasks: the QARAC step.
  static RankPlan single();
};

// The examples [begin, end) of a stream of n that rank `group_rank` of `group_size` reads:
// contiguous blocks in rank order whose sizes differ by at most one.
std::pair<int64_t, int64_t> share_of(int64_t n, int group_rank, int group_size);

// A permutation of 0..n-1, a pure function of (seed, epoch, task): the same on every machine and
// compiler (Philox draws, Fisher-Yates), so a restored cursor finds the same order again.
std::vector<int64_t> shuffled_order(int64_t n, uint64_t seed, int64_t epoch, Task task);

struct LoaderOptions {
  std::string data_dir;         // holds <task_name>.h5 as qarac-prep writes them
  uint64_t seed = 0;
  int64_t token_budget = 8192;  // per task and step: the tokens of all fields of a batch
  int64_t max_examples = 0;     // per task and step; 0: no limit besides the budget
  std::string tokenizer_hash;   // non-empty: every file must come from this tokenizer
};

// One field of a batch without padding: sequence b is tokens[starts[b], starts[b+1]).
struct PackedField {
  std::vector<int32_t> tokens;
  std::vector<int32_t> starts;  // B+1 entries, starts[0] == 0

  int64_t count() const { return starts.empty() ? 0 : static_cast<int64_t>(starts.size()) - 1; }
  int64_t length(int64_t b) const { return starts[b + 1] - starts[b]; }
  int64_t max_length() const;
};

// The same field padded for the CPU backend: ids and mask i32 [B, S] on the host, S the longest
// sequence; ids are pad_id and mask 0 past each sequence's end (Hugging Face's attention_mask).
struct PaddedField {
  Tensor ids;
  Tensor mask;
};
PaddedField pad(const PackedField& field, int32_t pad_id);

struct TaskBatch {
  Task task = Task::encode_decode;
  int64_t epoch = 0;                // the epoch of this rank's share the batch belongs to
  std::vector<int64_t> examples;    // indices of the examples in the task file
  std::vector<PackedField> fields;  // task_fields(task) order
  std::vector<float> labels;        // consistency: +1, 0, -1 per example; empty otherwise

  int64_t count() const { return static_cast<int64_t>(examples.size()); }
  int64_t tokens() const;  // over all fields
  PaddedField padded(int field, int32_t pad_id) const { return pad(fields[field], pad_id); }
};

// One step's data: a batch of every task of the rank, in plan order.
struct StepBatch {
  int64_t step = 0;
  std::vector<TaskBatch> tasks;
};

// Where a task's share stands: the next batch starts at `position` of the order of `epoch`.
// The share bounds let restore() refuse a cursor saved under another plan or other data.
struct TaskCursor {
  Task task = Task::encode_decode;
  int64_t epoch = 0;
  int64_t position = 0;
  int64_t share_begin = 0, share_end = 0;
};

struct LoaderCursor {
  int64_t step = 0;
  std::vector<TaskCursor> tasks;  // plan order
};

class Loader {
 public:
  // Opens <data_dir>/<task>.h5 for every task of the plan and reads this rank's share of it.
  // InputError when a file is missing or invalid, the files disagree on the tokenizer, or a
  // share would be empty (fewer examples than ranks).
  Loader(const RankPlan& plan, const LoaderOptions& options);

  StepBatch next();
  LoaderCursor cursor() const;  // the position of the next call to next()
  void restore(const LoaderCursor& cursor);

  const StreamInfo& info(size_t slot) const { return shares_[slot].info; }
  int64_t share_size(size_t slot) const { return shares_[slot].end - shares_[slot].begin; }

 private:
  struct Share {
    TaskSlot slot;
    StreamInfo info;
    int64_t begin = 0, end = 0;        // the share in the file
    std::vector<Ragged> fields;        // the share's tokens, field by field
    std::vector<int8_t> labels;
    std::vector<int64_t> cost;         // tokens of all fields, per example of the share
    std::vector<int64_t> order;        // shuffled_order of the current epoch
    int64_t epoch = 0, position = 0;
  };
  TaskBatch draw(Share& share);

  LoaderOptions options_;
  std::vector<Share> shares_;
  int64_t step_ = 0;
};

}  // namespace qarac::data
