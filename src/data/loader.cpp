// The per-rank loader: share reading, the deterministic shuffle, token-budget batching and the
// cursor. A share is read whole at construction (two hyperslab reads per field) and kept in
// memory: shuffling needs random access, and a rank's share is 1/n of one task stream.
#include "data/loader.h"

#include <algorithm>
#include <cstring>
#include <tuple>

#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"

namespace qarac::data {
namespace {

// Marks the shuffle's Philox counters so that they never coincide with dropout's, which use the
// same generator with (index, step) counters.
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
  for (int t = 0; t < kTaskCount; ++t) plan.tasks.push_back({static_cast<Task>(t), 0, 1});
  return plan;
}

std::pair<int64_t, int64_t> share_of(int64_t n, int group_rank, int group_size) {
  QARAC_CHECK(group_size > 0 && group_rank >= 0 && group_rank < group_size, "rank ", group_rank,
              " of ", group_size);
  const auto bound = [&](int r) { return n * r / group_size; };
  return {bound(group_rank), bound(group_rank + 1)};
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

PaddedField pad(const PackedField& field, int32_t pad_id) {
  const int64_t batch = field.count(), seq = field.max_length();
  PaddedField out;
  out.ids = Tensor::empty({batch, seq}, DType::i32);
  out.mask = Tensor::zeros({batch, seq}, DType::i32);
  int32_t* ids = out.ids.data<int32_t>();
  int32_t* mask = out.mask.data<int32_t>();
  std::fill(ids, ids + batch * seq, pad_id);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t len = field.length(b);
    std::memcpy(ids + b * seq, field.tokens.data() + field.starts[b], len * sizeof(int32_t));
    std::fill(mask + b * seq, mask + b * seq + len, 1);
  }
  return out;
}

int64_t TaskBatch::tokens() const {
  int64_t n = 0;
  for (const PackedField& f : fields) n += static_cast<int64_t>(f.tokens.size());
  return n;
}

Loader::Loader(const RankPlan& plan, const LoaderOptions& options) : options_(options) {
  QARAC_INPUT_CHECK(plan.world_size > 0 && plan.rank >= 0 && plan.rank < plan.world_size,
                    "task plan: rank ", plan.rank, " of a world of ", plan.world_size);
  QARAC_INPUT_CHECK(!plan.tasks.empty(), "the task plan gives rank ", plan.rank, " no task");
  QARAC_INPUT_CHECK(options.token_budget > 0, "the token budget must be positive, got ",
                    options.token_budget);
  QARAC_INPUT_CHECK(options.max_examples >= 0, "max examples must be >= 0, got ",
                    options.max_examples);
  std::string hash = options.tokenizer_hash, hash_source = "the configured tokenizer";
  for (const TaskSlot& slot : plan.tasks) {
    for (const Share& other : shares_)
      QARAC_INPUT_CHECK(other.slot.task != slot.task, "the task plan gives rank ", plan.rank,
                        " task ", task_name(slot.task), " twice");
    QARAC_INPUT_CHECK(slot.group_size > 0 && slot.group_rank >= 0 && slot.group_rank < slot.group_size,
                      "task plan: rank ", slot.group_rank, " of ", slot.group_size, " for ",
                      task_name(slot.task));
    const std::string path = options.data_dir + "/" + task_name(slot.task) + ".h5";
    const TaskStreamFile file(path);
    QARAC_INPUT_CHECK(file.task() == slot.task, path, ": holds task ", task_name(file.task()),
                      ", expected ", task_name(slot.task));
    if (hash.empty()) {
      hash = file.info().tokenizer_hash;
      hash_source = path;
    }
    QARAC_INPUT_CHECK(file.info().tokenizer_hash == hash, path, ": made with tokenizer ",
                      file.info().tokenizer_hash, ", but ", hash_source, " has ", hash,
                      " (rerun qarac-prep with one tokenizer)");

    Share s;
    s.slot = slot;
    s.info = file.info();
    std::tie(s.begin, s.end) = share_of(file.examples(), slot.group_rank, slot.group_size);
    QARAC_INPUT_CHECK(s.end > s.begin, path, ": ", file.examples(), " examples cannot be shared by ",
                      slot.group_size, " ranks (rank ", slot.group_rank, " would get none)");
    const int64_t n = s.end - s.begin;
    s.cost.assign(static_cast<size_t>(n), 0);
    for (size_t f = 0; f < task_fields(slot.task).size(); ++f) {
      s.fields.push_back(file.read_field(static_cast<int>(f), s.begin, s.end));
      for (int64_t i = 0; i < n; ++i) s.cost[i] += s.fields.back().length(i);
    }
    if (task_has_label(slot.task)) s.labels = file.read_labels(s.begin, s.end);
    s.order = shuffled_order(n, options.seed, 0, slot.task);
    log::debug(task_name(slot.task), ": rank ", slot.group_rank, "/", slot.group_size,
               " reads examples [", s.begin, ", ", s.end, ") of ", path);
    shares_.push_back(std::move(s));
  }
}

// Takes examples in shuffled order while they fit the budget (always at least one, so that an
// example longer than the budget is still seen) and never past the end of the epoch, so that no
// batch holds an example twice.
TaskBatch Loader::draw(Share& s) {
  const int64_t n = s.end - s.begin;
  if (s.position == n) {
    ++s.epoch;
    s.position = 0;
    s.order = shuffled_order(n, options_.seed, s.epoch, s.slot.task);
  }
  TaskBatch batch;
  batch.task = s.slot.task;
  batch.epoch = s.epoch;
  batch.fields.resize(s.fields.size());
  for (PackedField& f : batch.fields) f.starts.push_back(0);
  int64_t used = 0;
  while (s.position < n) {
    const int64_t local = s.order[s.position];
    if (batch.count() > 0 && (used + s.cost[local] > options_.token_budget ||
                              (options_.max_examples > 0 && batch.count() >= options_.max_examples)))
      break;
    used += s.cost[local];
    batch.examples.push_back(s.begin + local);
    for (size_t f = 0; f < s.fields.size(); ++f) {
      const Ragged& src = s.fields[f];
      PackedField& dst = batch.fields[f];
      dst.tokens.insert(dst.tokens.end(), src.begin(local), src.begin(local) + src.length(local));
      dst.starts.push_back(static_cast<int32_t>(dst.tokens.size()));
    }
    if (!s.labels.empty()) batch.labels.push_back(static_cast<float>(s.labels[local]));
    ++s.position;
  }
  return batch;
}

StepBatch Loader::next() {
  StepBatch step;
  step.step = step_++;
  for (Share& s : shares_) step.tasks.push_back(draw(s));
  return step;
}

LoaderCursor Loader::cursor() const {
  LoaderCursor c;
  c.step = step_;
  for (const Share& s : shares_) c.tasks.push_back({s.slot.task, s.epoch, s.position, s.begin, s.end});
  return c;
}

void Loader::restore(const LoaderCursor& c) {
  QARAC_INPUT_CHECK(c.tasks.size() == shares_.size(), "data cursor: ", c.tasks.size(),
                    " tasks, this rank runs ", shares_.size());
  QARAC_INPUT_CHECK(c.step >= 0, "data cursor: negative step ", c.step);
  for (size_t i = 0; i < shares_.size(); ++i) {
    const TaskCursor& t = c.tasks[i];
    const Share& s = shares_[i];
    QARAC_INPUT_CHECK(t.task == s.slot.task, "data cursor: task ", i, " is ", task_name(t.task),
                      ", this rank runs ", task_name(s.slot.task));
    QARAC_INPUT_CHECK(t.share_begin == s.begin && t.share_end == s.end, "data cursor: ",
                      task_name(t.task), " share [", t.share_begin, ", ", t.share_end,
                      ") differs from this rank's [", s.begin, ", ", s.end,
                      ") (another task plan or other data)");
    QARAC_INPUT_CHECK(t.epoch >= 0 && t.position >= 0 && t.position <= s.end - s.begin,
                      "data cursor: ", task_name(t.task), " position ", t.position, " of epoch ",
                      t.epoch, " is outside the share of ", s.end - s.begin);
  }
  step_ = c.step;
  for (size_t i = 0; i < shares_.size(); ++i) {
    Share& s = shares_[i];
    if (s.epoch != c.tasks[i].epoch) s.order = shuffled_order(s.end - s.begin, options_.seed, c.tasks[i].epoch, s.slot.task);
    s.epoch = c.tasks[i].epoch;
    s.position = c.tasks[i].position;
  }
}

}  // namespace qarac::data
