// Bucketed gradient all-reduce per model group, and the replica check (gradient_sync.h).
#include "parallel/gradient_sync.h"

#include <algorithm>
#include <chrono>
#include <iterator>

#include "core/hash.h"
#include "parallel/runtime.h"

namespace qarac::parallel {
namespace {

using Clock = std::chrono::steady_clock;

std::string rank_list(const std::vector<int>& ranks) {
  std::string text;
  for (size_t i = 0; i < ranks.size(); ++i) text += (i ? "," : "") + std::to_string(ranks[i]);
  return text;
}

}  // namespace

uint64_t replica_checksum(const ParameterList& params) {
  std::vector<uint64_t> hashes;
  for (const ParameterSpan& span : parameter_spans(params)) {  // a copy to the host per span
    const Tensor host = span.master.to(Device::cpu());
    hashes.push_back(hash64(host.raw(), host.nbytes()));
  }
  return hash64(hashes.data(), hashes.size() * sizeof(uint64_t));
}

std::vector<ParameterGroup> qarac_parameter_groups(const TaskPlan& plan, const ParameterList& all,
                                                   bool shared_encoder_base) {
  struct Prefix {
    const char* name;
    std::vector<Model> writers;
  };
  const Prefix prefixes[] = {{"question_encoder", {Model::question_encoder}},
                             {"answer_encoder", {Model::answer_encoder}},
                             {"decoder", {Model::decoder}},
                             {"shared_encoder", {Model::question_encoder, Model::answer_encoder}}};
  std::vector<ParameterGroup> groups;
  for (const Prefix& prefix : prefixes) {
    if (prefix.writers.size() > 1 && !shared_encoder_base) continue;
    ParameterGroup g;
    g.name = prefix.name;
    g.writers = prefix.writers;
    const std::string dot = g.name + ".";
    for (Parameter* p : all)
      if (p->name.compare(0, dot.size(), dot) == 0) g.params.push_back(p);
    for (Model m : g.writers)
      for (int r : plan.ranks_holding(m)) g.ranks.push_back(r);
    std::sort(g.ranks.begin(), g.ranks.end());
    g.ranks.erase(std::unique(g.ranks.begin(), g.ranks.end()), g.ranks.end());
    groups.push_back(std::move(g));
  }
  size_t grouped = 0;
  for (const ParameterGroup& g : groups) grouped += g.params.size();
  QARAC_CHECK(grouped == all.size(), "qarac_parameter_groups: ", all.size() - grouped,
              " parameters have no model prefix");
  return groups;
}

Backend backend_from_name(const std::string& name, bool cuda) {
  if (name == "auto") return cuda ? Backend::nccl : Backend::mpi;
  if (name == "mpi") {
    QARAC_INPUT_CHECK(!cuda, "parallel.backend: mpi reduces CPU tensors; train.device cuda needs nccl (or auto)");
    return Backend::mpi;
  }
  if (name == "nccl") {
    QARAC_INPUT_CHECK(cuda, "parallel.backend: nccl reduces CUDA tensors; train.device cpu needs mpi (or auto)");
    return Backend::nccl;
  }
  throw InputError("parallel.backend: '" + name + "' is not one of auto, mpi, nccl");
}

const char* backend_name(Backend backend) { return backend == Backend::nccl ? "nccl" : "mpi"; }

// A bucket's gradients are reduced as one flat tensor: a view of them where they lie back to back
// (pack_parameters: a model's consecutive parameters do), else a buffer they are copied into.
struct GradientSync::Bucket {
  ParameterList params;     // from the last parameter back
  Tensor flat;
  bool packed = false;      // flat is a buffer of copies, not a view of the gradients
  std::vector<bool> ready;  // per parameter, this step
  size_t pending = 0;       // parameters not ready yet
  void reset() {
    std::fill(ready.begin(), ready.end(), false);
    pending = params.size();
  }
};

struct GradientSync::Group {
  std::unique_ptr<MpiGroup> mpi;  // null when this rank does not hold the group
  std::unique_ptr<Communicator> comm;
  std::vector<Bucket> buckets;
  size_t next = 0;  // the first bucket not started this step
  bool layerwise = true;  // false for a group of several writers: model_done starts it
  bool released = false;  // its writers are done this step: every bucket may start
};

std::vector<size_t> launch_order(const std::vector<ParameterGroup>& groups) {
  const Model finished[] = {Model::decoder, Model::question_encoder, Model::answer_encoder};
  auto place = [&](const ParameterGroup& g) {
    std::ptrdiff_t last = -1;
    for (Model m : g.writers)
      last = std::max(last, std::find(std::begin(finished), std::end(finished), m) - std::begin(finished));
    return last;
  };
  std::vector<size_t> order(groups.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return place(groups[a]) < place(groups[b]); });
  return order;
}

GradientSync::GradientSync(const MpiGroup* world, std::vector<ParameterGroup> groups, Backend backend,
                           int64_t bucket_bytes)
    : world_(world), groups_(std::move(groups)), models_done_(kModelCount, false), order_(launch_order(groups_)) {
  QARAC_CHECK(bucket_bytes > 0, "bucket size must be positive, got ", bucket_bytes);
  rank_ = world ? world->rank() : 0;
  for (const ParameterGroup& g : groups_) {
    auto state = std::make_unique<Group>();
    if (!world) QARAC_CHECK(g.ranks == std::vector<int>{0}, "group ", g.name, ": ranks ", rank_list(g.ranks),
                            " without MPI");
    // Collective over the world, in group order on every rank: MPI_Comm_split and NCCL's
    // initialisation of one group at a time.
    if (world && g.ranks.size() > 1) {
      state->mpi = world->subgroup(g.ranks, g.name + " ranks " + rank_list(g.ranks));
      if (state->mpi)
        state->comm = backend == Backend::nccl ? make_nccl_communicator(*state->mpi)
                                               : make_mpi_communicator(*state->mpi);
    }
    add_group(g, std::move(state), bucket_bytes);
  }
}

GradientSync::GradientSync(int rank, std::vector<ParameterGroup> groups, int64_t bucket_bytes, const Connect& connect)
    : world_(nullptr), groups_(std::move(groups)), models_done_(kModelCount, false), order_(launch_order(groups_)),
      rank_(rank) {
  QARAC_CHECK(bucket_bytes > 0, "bucket size must be positive, got ", bucket_bytes);
  for (const ParameterGroup& g : groups_) {
    auto state = std::make_unique<Group>();
    if (g.ranks.size() > 1 && std::find(g.ranks.begin(), g.ranks.end(), rank) != g.ranks.end())
      state->comm = connect(g);
    add_group(g, std::move(state), bucket_bytes);
  }
}

void GradientSync::add_group(const ParameterGroup& g, std::unique_ptr<Group> state, int64_t bucket_bytes) {
  if (state->comm) {
    // Buckets from the last parameter back: the order the backward pass finishes them.
    Bucket current;
    int64_t bytes = 0;
    for (auto it = g.params.rbegin(); it != g.params.rend(); ++it) {
      Parameter* p = *it;
      const int64_t size = static_cast<int64_t>(p->grad.nbytes());
      if (!current.params.empty() && bytes + size > bucket_bytes) {
        state->buckets.push_back(std::move(current));
        current = Bucket{};
        bytes = 0;
      }
      current.params.push_back(p);
      bytes += size;
    }
    if (!current.params.empty()) state->buckets.push_back(std::move(current));
    state->layerwise = g.writers.size() == 1;
    for (size_t b = 0; b < state->buckets.size(); ++b)
      for (size_t i = 0; i < state->buckets[b].params.size(); ++i)
        places_[state->buckets[b].params[i]->grad.raw()] = {state_.size(), b, i};
    for (Bucket& b : state->buckets) {
      b.ready.resize(b.params.size());
      b.reset();
      const std::vector<ParameterSpan> spans = parameter_spans(ParameterList(b.params.rbegin(), b.params.rend()));
      b.packed = spans.size() > 1;
      if (!b.packed) {
        b.flat = spans.front().grad;
        continue;
      }
      int64_t n = 0;
      for (const Parameter* p : b.params) n += p->grad.numel();
      b.flat = Tensor::empty({n}, b.params.front()->grad.dtype(), b.params.front()->grad.device());
    }
  }
  state_.push_back(std::move(state));
}

GradientSync::~GradientSync() = default;

ParameterList GradientSync::held_parameters() const {
  ParameterList held;
  for (const ParameterGroup& g : groups_)
    if (std::find(g.ranks.begin(), g.ranks.end(), rank_) != g.ranks.end())
      held.insert(held.end(), g.params.begin(), g.params.end());
  return held;
}

void GradientSync::start_ready() {
  for (; cursor_ < order_.size(); ++cursor_) {
    Group& group = *state_[order_[cursor_]];
    for (; group.next < group.buckets.size(); ++group.next) {
      Bucket& b = group.buckets[group.next];
      // A complete bucket behind this one waits, of whichever group: the order is global.
      if (!group.released && b.pending > 0) return;
      if (b.packed) {
        int64_t offset = 0;
        for (const Parameter* p : b.params) {
          const int64_t n = p->grad.numel();
          b.flat.slice(0, offset, offset + n).reshape(p->grad.shape()).copy_(p->grad);
          offset += n;
        }
      }
      group.comm->start_all_reduce(b.flat);
    }
  }
}

void GradientSync::parameters_ready(const ParameterList& params) {
  for (const Parameter* p : params) {
    const auto it = places_.find(p->grad.raw());
    if (it == places_.end()) continue;  // a group this rank reduces with nobody
    Group& group = *state_[it->second.group];
    if (!group.layerwise) continue;
    Bucket& b = group.buckets[it->second.bucket];
    if (b.ready[it->second.index]) continue;
    b.ready[it->second.index] = true;
    if (--b.pending == 0) start_ready();
  }
}

void GradientSync::model_done(Model model) {
  models_done_[static_cast<int>(model)] = true;
  for (size_t i = 0; i < groups_.size(); ++i) {
    Group& state = *state_[i];
    const std::vector<Model>& writers = groups_[i].writers;
    if (std::all_of(writers.begin(), writers.end(), [&](Model m) { return models_done_[static_cast<int>(m)]; }))
      state.released = true;
  }
  start_ready();
}

double GradientSync::finish(const std::string& step_text) {
  for (auto& state : state_) state->released = true;
  start_ready();
  const Clock::time_point t0 = Clock::now();
  for (size_t i = 0; i < groups_.size(); ++i) {
    Group& state = *state_[i];
    if (state.comm) state.comm->wait("gradient all-reduce of " + groups_[i].name + " at " + step_text);
  }
  const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
  for (auto& state : state_) {
    for (Bucket& b : state->buckets) {
      b.reset();
      if (!b.packed) continue;
      int64_t offset = 0;
      for (Parameter* p : b.params) {
        const int64_t n = p->grad.numel();
        p->grad.copy_(b.flat.slice(0, offset, offset + n).reshape(p->grad.shape()));
        offset += n;
      }
    }
    state->next = 0;
    state->released = false;
  }
  cursor_ = 0;
  std::fill(models_done_.begin(), models_done_.end(), false);
  return waited;
}

double GradientSync::global_grad_sum_of_squares(const std::string& step_text) {
  // After the reduction every holder has the same sums: the first holder counts them.
  ParameterList owned;
  for (const ParameterGroup& g : groups_)
    if (g.ranks.front() == rank_) owned.insert(owned.end(), g.params.begin(), g.params.end());
  double sum = grad_sum_of_squares(owned);
  if (world_) world_->all_reduce(&sum, 1, MPI_SUM, "gradient norm at " + step_text);
  return sum;
}

void GradientSync::check_replicas(int64_t step) {
  for (size_t i = 0; i < groups_.size(); ++i) {
    const Group& state = *state_[i];
    if (!state.mpi) continue;
    uint64_t low = replica_checksum(groups_[i].params), high = low;
    const std::string what = "replica check of " + groups_[i].name + " at step " + std::to_string(step);
    state.mpi->all_reduce(&low, 1, MPI_MIN, what);
    state.mpi->all_reduce(&high, 1, MPI_MAX, what);
    if (low == high) continue;
    // Every holder sees it: the group's first says it, the others end with it.
    if (rank_ != groups_[i].ranks.front()) throw EndedByAnotherRank(what + ": the replicas diverged");
    throw ReplicaError(detail::concat("replicas of ", groups_[i].name, " diverged by step ", step,
                                      ": the checksums of its master weights differ across ranks ",
                                      rank_list(groups_[i].ranks), " (this is rank ", rank_, " on ", hostname(),
                                      "); the run stops rather than train on"));
  }
}

void GradientSync::gather_to_root(const std::string& what) {
  if (!world_) return;
  for (const ParameterGroup& g : groups_) {
    const int owner = g.ranks.front();
    if (std::find(g.ranks.begin(), g.ranks.end(), 0) != g.ranks.end()) continue;
    if (rank_ != owner && rank_ != 0) continue;
    for (size_t i = 0; i < g.params.size(); ++i) {
      Parameter& p = *g.params[i];
      const std::string text = what + ": " + g.name + " weights from rank " + std::to_string(owner);
      if (rank_ == owner) {
        const Tensor host = p.master.to(Device::cpu());
        world_->send(host.raw(), static_cast<int64_t>(host.nbytes()), 0, static_cast<int>(i), text);
      } else {
        Tensor host = Tensor::empty(p.master.shape(), p.master.dtype(), Device::cpu());
        world_->receive(host.raw(), static_cast<int64_t>(host.nbytes()), owner, static_cast<int>(i), text);
        p.assign(host);
      }
    }
  }
}

void GradientSync::abort() noexcept {
  for (auto& state : state_)
    if (state->comm) state->comm->abort();
}

}  // namespace qarac::parallel
