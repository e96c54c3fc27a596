// The loader: the whole-stream reading, the deterministic shuffle, global batches and their
// division among a task's ranks, micro-batches, and the cursor. A stream is read whole at
// construction (one read per field) and kept in memory: the global order needs random access to
// every example, on every rank of the task (docs/data-format.md states the limit).
#include "data/loader.h"

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"

namespace qarac::data {
namespace {

// Marks the shuffle's Philox counters (the last counter word) apart from those of dropout and
// the MLM masking (sequence_uniform01, core/rng.h: an element index and the step's low bits in
// the first words, the sequence id in the last two). Their keys differ from the shuffle's except
// for tensor 0; a coincidence would then need a sequence id whose high word is this constant,
// which an example id (task, epoch, position) reaches only after millions of epochs.
constexpr uint32_t kShuffleDomain = 0x5eed0000u;

// A uniform integer in [0, bound) from 64 random bits: the high half of r·bound (Lemire), whose
// bias bound/2^64 is far below anything a shuffle could show.
uint64_t draw_below(const Philox4x32& r, uint64_t bound) {
  const uint64_t bits = (static_cast<uint64_t>(r.c[0]) << 32) | r.c[1];
  return static_cast<uint64_t>((static_cast<unsigned __int128>(bits) * bound) >> 64);
}

}  // namespace

RankPlan RankPlan::single() {
  RankPlan plan;
  for (int t = 0; t < kQaracTaskCount; ++t) plan.tasks.push_back({static_cast<Task>(t), 0, 1});
  return plan;
}

std::vector<int> divide_batch(const std::vector<int64_t>& tokens, int ranks) {
  QARAC_CHECK(ranks > 0, "dividing a batch among ", ranks, " ranks");
  std::vector<size_t> by_size(tokens.size());
  for (size_t i = 0; i < by_size.size(); ++i) by_size[i] = i;
  std::stable_sort(by_size.begin(), by_size.end(), [&](size_t a, size_t b) { return tokens[a] > tokens[b]; });
  std::vector<int64_t> load(static_cast<size_t>(ranks), 0);
  std::vector<int> owner(tokens.size(), 0);
  for (size_t i : by_size) {
    const size_t r = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = static_cast<int>(r);
    load[r] += tokens[i];
  }
  return owner;
}

// The task's low two bits are the id's top two and its third bit the one below them: the ids of
// the four QARAC tasks (and so their dropout masks) are those of the 2-bit task field before the
// rehearsal, and a checkpoint of that time resumes as it would have gone on.
constexpr int kEpochBits = 21, kPositionBits = 40, kHighTaskBit = kEpochBits + kPositionBits;

uint64_t example_id(Task task, int64_t epoch, int64_t position) {
  QARAC_CHECK(epoch >= 0 && epoch < (int64_t{1} << kEpochBits) && position >= 0 &&
                  position < (int64_t{1} << kPositionBits),
              "example identity: epoch ", epoch, ", position ", position, " out of range");
  const uint64_t t = static_cast<uint64_t>(task);
  return ((t & 3) << (kHighTaskBit + 1)) | ((t >> 2) << kHighTaskBit) |
         (static_cast<uint64_t>(epoch) << kPositionBits) | static_cast<uint64_t>(position);
}

uint64_t second_field_id(uint64_t id) {
  const uint64_t third_task_bit = uint64_t{1} << kHighTaskBit;
  QARAC_CHECK((id & third_task_bit) == 0, "second_field_id: ", id, " is not the id of a QARAC task's example");
  return id | third_task_bit;
}

ExampleIdentity decode_example_id(uint64_t id) {
  const uint64_t position_mask = (uint64_t{1} << kPositionBits) - 1;
  const uint64_t epoch_mask = (uint64_t{1} << kEpochBits) - 1;
  const uint64_t task = (id >> (kHighTaskBit + 1)) | (((id >> kHighTaskBit) & 1) << 2);
  return {static_cast<Task>(task), static_cast<int64_t>((id >> kPositionBits) & epoch_mask),
          static_cast<int64_t>(id & position_mask)};
}

std::vector<int64_t> shuffled_order(int64_t n, uint64_t seed, int64_t epoch, Task task) {
  QARAC_CHECK(n >= 0 && epoch >= 0 && epoch <= 0xffffffffll, "n ", n, ", epoch ", epoch);
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t domain = kShuffleDomain | static_cast<uint32_t>(task);
  for (int64_t i = n - 1; i > 0; --i) {
    const Philox4x32 ctr = {{static_cast<uint32_t>(i), static_cast<uint32_t>(static_cast<uint64_t>(i) >> 32),
                             static_cast<uint32_t>(epoch), domain}};
    const int64_t j = static_cast<int64_t>(draw_below(philox4x32_10(ctr, k0, k1), static_cast<uint64_t>(i + 1)));
    std::swap(order[i], order[j]);
  }
  return order;
}

int64_t PackedField::max_length() const {
  int64_t m = 0;
  for (int64_t b = 0; b < count(); ++b) m = std::max(m, length(b));
  return m;
}

int64_t TaskBatch::tokens() const {
  int64_t n = 0;
  for (const PackedField& f : fields) n += static_cast<int64_t>(f.tokens.size());
  return n;
}

std::vector<int64_t> part_bounds(const std::vector<int64_t>& tokens, int64_t max_tokens, int64_t max_items) {
  QARAC_CHECK(max_tokens >= 0 && max_items >= 0, "part sizes ", max_tokens, " tokens, ", max_items, " items");
  std::vector<int64_t> bounds;  // bounds.back(): where the part being filled begins
  int64_t used = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t items = bounds.empty() ? 0 : static_cast<int64_t>(i) - bounds.back();
    const bool full = items > 0 && ((max_tokens > 0 && used + tokens[i] > max_tokens) ||
                                    (max_items > 0 && items == max_items));
    if (bounds.empty() || full) {
      bounds.push_back(static_cast<int64_t>(i));
      used = 0;
    }
    used += tokens[i];
  }
  if (!tokens.empty()) bounds.push_back(static_cast<int64_t>(tokens.size()));
  return bounds;
}

TaskBatch TaskBatch::slice(int64_t begin, int64_t end) const {
  QARAC_CHECK(0 <= begin && begin <= end && end <= count(), "examples [", begin, ", ", end, ") of a batch of ",
              count());
  TaskBatch m;
  m.task = task;
  m.global_count = global_count;
  m.global_tokens = global_tokens;
  m.global = global;
  const auto part = [&](const auto& v) { return std::decay_t<decltype(v)>(v.begin() + begin, v.begin() + end); };
  m.examples = part(examples);
  if (!ids.empty()) m.ids = part(ids);
  if (!labels.empty()) m.labels = part(labels);
  for (const PackedField& src : fields) {
    PackedField& dst = m.fields.emplace_back();
    dst.tokens.assign(src.tokens.begin() + src.starts[static_cast<size_t>(begin)],
                      src.tokens.begin() + src.starts[static_cast<size_t>(end)]);
    for (int64_t b = begin; b <= end; ++b)
      dst.starts.push_back(src.starts[static_cast<size_t>(b)] - src.starts[static_cast<size_t>(begin)]);
  }
  return m;
}

std::vector<TaskBatch> TaskBatch::split(int64_t max_tokens, int64_t max_examples) const {
  std::vector<int64_t> tokens(static_cast<size_t>(count()), 0);
  for (const PackedField& f : fields)
    for (int64_t b = 0; b < count(); ++b) tokens[static_cast<size_t>(b)] += f.length(b);
  const std::vector<int64_t> bounds = part_bounds(tokens, max_tokens, max_examples);
  std::vector<TaskBatch> out;
  for (size_t i = 0; i + 1 < bounds.size(); ++i) out.push_back(slice(bounds[i], bounds[i + 1]));
  return out;
}

Loader::Loader(const RankPlan& plan, const LoaderOptions& options) : options_(options) {
  QARAC_INPUT_CHECK(plan.world_size > 0 && plan.rank >= 0 && plan.rank < plan.world_size,
                    "task plan: rank ", plan.rank, " of a world of ", plan.world_size);
  QARAC_INPUT_CHECK(!plan.tasks.empty(), "the task plan gives rank ", plan.rank, " no task");
  QARAC_INPUT_CHECK(options.global_batch > 0, "the global batch must be positive, got ",
                    options.global_batch);
  check_publishing_finished(options.data_dir);
  std::string hash = options.tokenizer_hash, hash_source = "the configured tokenizer";
  for (const TaskSlot& slot : plan.tasks) {
    for (const Stream& other : streams_)
      QARAC_INPUT_CHECK(other.slot.task != slot.task, "the task plan gives rank ", plan.rank,
                        " task ", task_name(slot.task), " twice");
    QARAC_INPUT_CHECK(slot.group_size > 0 && slot.group_rank >= 0 && slot.group_rank < slot.group_size,
                      "task plan: rank ", slot.group_rank, " of ", slot.group_size, " for ",
                      task_name(slot.task));
    const std::string path = options.data_dir + "/" + task_name(stream_task(slot.task)) + ".h5";
    const TaskStreamFile file(path);
    file.check_holds(stream_task(slot.task));
    if (hash.empty()) {
      hash = file.info().tokenizer_hash;
      hash_source = path;
    }
    QARAC_INPUT_CHECK(file.info().tokenizer_hash == hash, path, ": made with tokenizer ",
                      file.info().tokenizer_hash, ", but ", hash_source, " has ", hash,
                      " (rerun qarac-prep with one tokenizer)");

    Stream s;
    s.slot = slot;
    s.path = path;
    s.info = file.info();
    s.size = file.examples();
    StreamContents contents = file.read_all();
    QARAC_INPUT_CHECK(options.vocab_size <= 0 || contents.max_token < options.vocab_size, path, ": token id ",
                      contents.max_token, " is outside the model's vocabulary of ", options.vocab_size,
                      " ids (was the stream made with another tokenizer?)");
    // Found now, not when its batch comes up hours later.
    for (size_t f = 0; options.max_tokens > 0 && f < contents.fields.size(); ++f) {
      const Ragged& field = contents.fields[f];
      for (int64_t i = 0; i < field.count(); ++i)
        QARAC_INPUT_CHECK(field.length(i) <= options.max_tokens, path, ": example ", i, "'s ",
                          task_fields(stream_task(slot.task))[f], " has ", field.length(i), " tokens, more than the ",
                          options.max_tokens, " the model reads (",
                          options.too_long_remedy.empty()
                              ? "rerun qarac-prep with --max-length " + std::to_string(options.max_tokens)
                              : options.too_long_remedy,
                          ")");
    }
    s.checksum = contents.checksum;
    s.fields = std::move(contents.fields);
    s.labels = std::move(contents.labels);
    s.cost.assign(static_cast<size_t>(s.size), 0);
    for (const Ragged& field : s.fields)
      for (int64_t i = 0; i < s.size; ++i) s.cost[i] += field.length(i);
    s.order = shuffled_order(s.size, options.seed, 0, slot.task);
    log::debug(task_name(slot.task), ": rank ", slot.group_rank, "/", slot.group_size, " holds the ",
               s.size, " examples of ", path);
    streams_.push_back(std::move(s));
  }
}

// The next N examples of the global order (going on into the next epoch's order at the end of
// an epoch), divided among the task's ranks; this rank keeps its part, in batch order.
TaskBatch Loader::draw(Stream& s) {
  struct Entry {
    int64_t index;  // in the file
    uint64_t id;
  };
  std::vector<Entry> global;
  std::vector<int64_t> tokens;
  const int64_t n = options_.global_batch;
  TaskBatch batch;
  batch.task = s.slot.task;
  batch.global_count = n;
  while (static_cast<int64_t>(global.size()) < n) {
    if (s.position == s.size) {
      ++s.epoch;
      s.position = 0;
      s.order = shuffled_order(s.size, options_.seed, s.epoch, s.slot.task);
    }
    const int64_t index = s.order[static_cast<size_t>(s.position)];
    global.push_back({index, example_id(s.slot.task, s.epoch, s.position)});
    tokens.push_back(s.cost[static_cast<size_t>(index)]);
    batch.global_tokens += s.cost[static_cast<size_t>(index)];
    ++s.position;
  }
  // Checked before packing: the packed offsets (PackedField::starts, ops::Sequences) are int32,
  // and a batch past them would wrap silently after filling gigabytes.
  QARAC_INPUT_CHECK(batch.global_tokens <= std::numeric_limits<int32_t>::max(), s.path, ": a global batch of ", n,
                    " examples holds ", batch.global_tokens, " tokens, more than the ",
                    std::numeric_limits<int32_t>::max(), " its int32 offsets address: lower the task's batch");
  const std::vector<int> owner = divide_batch(tokens, s.slot.group_size);
  auto whole = std::make_shared<GlobalBatch>();
  batch.fields.resize(s.fields.size());
  whole->fields.resize(s.fields.size());
  for (PackedField& f : batch.fields) f.starts.push_back(0);
  for (PackedField& f : whole->fields) f.starts.push_back(0);
  auto append = [&s](int64_t index, std::vector<PackedField>& fields) {
    for (size_t f = 0; f < s.fields.size(); ++f) {
      const Ragged& src = s.fields[f];
      PackedField& dst = fields[f];
      dst.tokens.insert(dst.tokens.end(), src.begin(index), src.begin(index) + src.length(index));
      dst.starts.push_back(static_cast<int32_t>(dst.tokens.size()));
    }
  };
  for (size_t i = 0; i < global.size(); ++i) {
    whole->ids.push_back(global[i].id);
    append(global[i].index, whole->fields);
    if (owner[i] != s.slot.group_rank) continue;
    const int64_t index = global[i].index;
    batch.examples.push_back(index);
    batch.ids.push_back(global[i].id);
    append(index, batch.fields);
    if (!s.labels.empty()) batch.labels.push_back(static_cast<float>(s.labels[static_cast<size_t>(index)]));
  }
  batch.global = std::move(whole);
  return batch;
}

StepBatch Loader::next() {
  StepBatch step;
  step.step = step_++;
  for (Stream& s : streams_) step.tasks.push_back(draw(s));
  return step;
}

LoaderCursor Loader::cursor() const {
  LoaderCursor c;
  c.step = step_;
  for (const Stream& s : streams_) c.tasks.push_back({s.slot.task, s.epoch, s.position, s.checksum});
  return c;
}

void Loader::restore(const LoaderCursor& c) {
  QARAC_INPUT_CHECK(c.tasks.size() == streams_.size(), "data cursor: ", c.tasks.size(),
                    " tasks, this rank runs ", streams_.size());
  QARAC_INPUT_CHECK(c.step >= 0, "data cursor: negative step ", c.step);
  for (size_t i = 0; i < streams_.size(); ++i) {
    const TaskCursor& t = c.tasks[i];
    const Stream& s = streams_[i];
    QARAC_INPUT_CHECK(t.task == s.slot.task, "data cursor: task ", i, " is ", task_name(t.task),
                      ", this rank runs ", task_name(s.slot.task));
    QARAC_INPUT_CHECK(t.stream_checksum == 0 || t.stream_checksum == s.checksum, s.path,
                      ": the checkpoint was made with another task stream (checksum ", std::hex, std::showbase,
                      t.stream_checksum, ", this file ", s.checksum,
                      "): its data order would go on over other examples; point data.dir at the run's streams, or "
                      "start a new run on these");
    // Epochs past kEpochBits cannot be named in an example's identity (example_id).
    QARAC_INPUT_CHECK(t.epoch >= 0 && t.epoch < (int64_t{1} << kEpochBits) && t.position >= 0 &&
                          t.position <= s.size,
                      "data cursor: ", task_name(t.task), " position ", t.position, " of epoch ", t.epoch,
                      " is outside the stream of ", s.size, " examples (other data?)");
  }
  step_ = c.step;
  for (size_t i = 0; i < streams_.size(); ++i) {
    Stream& s = streams_[i];
    if (s.epoch != c.tasks[i].epoch) s.order = shuffled_order(s.size, options_.seed, c.tasks[i].epoch, s.slot.task);
    s.epoch = c.tasks[i].epoch;
    s.position = c.tasks[i].position;
  }
}

}  // namespace qarac::data
