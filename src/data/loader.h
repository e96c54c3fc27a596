// The data loader (docs/design.md §4, §6): one global data order per task, the same on every rank
// and for every world size. Each rank that runs a task keeps the task's whole stream in memory; the
// order of epoch e is a permutation of the whole stream, a pure function of (seed, epoch, task),
// cut into consecutive global batches of the task's N examples (a batch crossing the end of an
// epoch goes on in the next epoch's order, so every step has N examples of every task). Each
// global batch is divided among the task's n ranks by a deterministic rule that balances tokens
// (divide_batch); a rank hands out its part, in the batch's order, with each example's global
// identity (task, epoch, position in the epoch's order). The cursor (epoch, position) is global:
// the same on every rank, which is what lets a checkpoint resume at another world size.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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

  // One rank running the four QARAC tasks: the QARAC step (without rehearsal).
  static RankPlan single();
};

// Which of `ranks` ranks runs each example of a global batch whose examples have `tokens` tokens
// (all fields), in batch order: examples by decreasing token count (ties: earlier in the batch
// first), each to the rank with the fewest tokens so far (ties: the lowest rank). A pure function,
// so every rank computes the same division; with fewer examples than ranks some get none.
std::vector<int> divide_batch(const std::vector<int64_t>& tokens, int ranks);

// An example's global identity packed into 64 bits: task (3 bits: its low two at the top, its
// third below them), epoch (21 bits), position in the epoch's order (40 bits). Dropout masks
// keyed by it are the same whatever the layout. The rehearsal reads the text stream in an order
// of its own, so its examples have identities of their own (task masked_lm), apart from
// encode_decode's.
uint64_t example_id(Task task, int64_t epoch, int64_t position);
struct ExampleIdentity {
  Task task;
  int64_t epoch, position;
};
ExampleIdentity decode_example_id(uint64_t id);
// The dropout identity of an example's second field where one pass runs two fields of each
// example (the answer encoder reads reasoning's premises and consistency's statements together):
// the id of a QARAC task's example (`id`) with the task field's third bit set, which no such id
// has, so the pass's 2B sequences have 2B distinct ids and the second field its own masks.
uint64_t second_field_id(uint64_t id);

// A permutation of 0..n-1, a pure function of (seed, epoch, task): the same on every machine and
// compiler (Philox draws, Fisher-Yates), so a restored cursor finds the same order again.
std::vector<int64_t> shuffled_order(int64_t n, uint64_t seed, int64_t epoch, Task task);

struct LoaderOptions {
  std::string data_dir;        // holds <task_name>.h5 as qarac-prep writes them
  uint64_t seed = 0;
  int64_t global_batch = 64;   // examples of a task per optimizer step, over all its ranks
  std::string tokenizer_hash;  // non-empty: every file must come from this tokenizer
  int64_t vocab_size = 0;      // non-zero: every token id must be below it (the model's vocabulary)
  int64_t max_tokens = 0;      // non-zero: no sequence may be longer (what the model's positions hold)
  std::string too_long_remedy;  // what the error on a longer one advises; "": rerun qarac-prep
};

// One field of a batch without padding: sequence b is tokens[starts[b], starts[b+1]).
struct PackedField {
  std::vector<int32_t> tokens;
  std::vector<int32_t> starts;  // B+1 entries, starts[0] == 0

  int64_t count() const { return starts.empty() ? 0 : static_cast<int64_t>(starts.size()) - 1; }
  int64_t length(int64_t b) const { return starts[b + 1] - starts[b]; }
  int64_t max_length() const;
};

// A whole global batch, every rank's part, in batch order: its examples' ids and fields. Every
// rank of the task gets it, so a loss normalised over the global batch by something other than
// the example count (the MLM loss: by its masked tokens, a function of (id, position, token))
// needs no collective to learn the normaliser.
struct GlobalBatch {
  std::vector<uint64_t> ids;
  std::vector<PackedField> fields;
};

// This rank's part of a task's global batch (or a whole batch, or a micro-batch of a part).
struct TaskBatch {
  Task task = Task::encode_decode;
  std::vector<int64_t> examples;    // indices of the examples in the task file
  std::vector<uint64_t> ids;        // example_id of each example (empty: none given)
  std::vector<PackedField> fields;  // task_fields(task) order
  std::vector<float> labels;        // consistency: +1, 0, -1 per example; empty otherwise
  int64_t global_count = 0;         // examples of the global batch this is part of (N)
  int64_t global_tokens = 0;        // tokens of that global batch (all fields, all ranks)
  std::shared_ptr<const GlobalBatch> global;  // that global batch whole (null: not given)

  int64_t count() const { return static_cast<int64_t>(examples.size()); }
  int64_t tokens() const;  // over all fields
  // Examples [begin, end), with this batch's task and global batch.
  TaskBatch slice(int64_t begin, int64_t end) const;
  // Consecutive micro-batches of at most `max_tokens` tokens and `max_examples` examples each
  // (part_bounds; 0: no limit), in order. No micro-batch for an empty batch.
  std::vector<TaskBatch> split(int64_t max_tokens, int64_t max_examples = 0) const;
};

// The bounds [0, b1, ..., n] of consecutive parts of the n items whose sizes are `tokens`: a part
// holds at most max_tokens tokens and max_items items (0: no limit), and at least one item (an
// item longer than max_tokens makes a part alone). Empty when n is 0.
std::vector<int64_t> part_bounds(const std::vector<int64_t>& tokens, int64_t max_tokens, int64_t max_items = 0);

// One step's data: this rank's part of every task's global batch, in plan order.
struct StepBatch {
  int64_t step = 0;
  std::vector<TaskBatch> tasks;
};

// Where a task's stream stands: the next global batch starts at `position` of the order of
// `epoch`. The same on every rank of the task. `stream_checksum` is the content checksum of the
// stream it was taken on (TaskStreamFile::read_all), so that a cursor is never applied to another
// stream of the same size; 0 stands for "unknown" (a checkpoint from before it) and is accepted.
struct TaskCursor {
  Task task = Task::encode_decode;
  int64_t epoch = 0;
  int64_t position = 0;
  uint64_t stream_checksum = 0;
};

struct LoaderCursor {
  int64_t step = 0;
  std::vector<TaskCursor> tasks;  // plan order
};

class Loader {
 public:
  // Opens <data_dir>/<task>.h5 (the task's data::stream_task) for every task of the plan and
  // reads the whole stream, checking its checksum. InputError when a file is missing, invalid,
  // damaged or empty, the files disagree on the tokenizer, or a token id is outside
  // options.vocab_size.
  Loader(const RankPlan& plan, const LoaderOptions& options);

  // This rank's part of every task's next global batch, in plan order.
  StepBatch next();
  LoaderCursor cursor() const;  // the position of the next call to next()
  // InputError when the cursor names other tasks, lies outside a stream or was taken on a stream
  // with another checksum (other data).
  void restore(const LoaderCursor& cursor);

  const StreamInfo& info(size_t slot) const { return streams_[slot].info; }
  int64_t stream_size(size_t slot) const { return streams_[slot].size; }

 private:
  struct Stream {
    TaskSlot slot;
    StreamInfo info;
    int64_t size = 0;              // examples in the file
    std::string path;
    uint64_t checksum = 0;         // of the stream's content, as read
    std::vector<Ragged> fields;    // the whole stream's tokens, field by field
    std::vector<int8_t> labels;
    std::vector<int64_t> cost;     // tokens of all fields, per example
    std::vector<int64_t> order;    // shuffled_order of the current epoch
    int64_t epoch = 0, position = 0;
  };
  TaskBatch draw(Stream& stream);

  LoaderOptions options_;
  std::vector<Stream> streams_;
  int64_t step_ = 0;
};

}  // namespace qarac::data
