// Gradient reduction of the parallel multi-task trainer (docs/design.md §4). The parameters fall
// into groups, one per model (a shared encoder base is a group of its own, written by QE and AE),
// and each group is held by the ranks whose tasks use its models. A group is reduced (SUM over its
// holders, each rank's gradients already scaled by its share of the global batches) in buckets
// of about --parallel.bucket_mb, formed from the last parameter back, the order the backward pass
// finishes them. Every rank launches its buckets in one global order, that of the groups in
// launch_order() and then of the buckets in a group, whatever order its tasks finish them in:
// two ranks that share communicators launch their collectives in the same relative order, which
// keeps them from deadlocking (docs/distributed.md §7). During a model's last backward pass of the
// step on this rank, each bucket starts as soon as it and every bucket before it in that order
// are complete, asynchronously — on CUDA on the communication stream, overlapping the rest of the
// backward pass — and everything is waited for, with the timeout, before the update.
// Every holder then applies the same update to the same sums, so replicas stay identical;
// check_replicas() verifies it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/task_plan.h"
#include "model/parameter.h"

namespace qarac::parallel {

// Replicas of a model hold different parameters: the run cannot be trusted any more.
class ReplicaError : public Error {
 public:
  using Error::Error;
};

struct ParameterGroup {
  std::string name;            // "question_encoder", "shared_encoder", "base", ...
  std::vector<Model> writers;  // the models whose backward passes write these gradients
  std::vector<int> ranks;      // the world ranks that hold the group, ascending
  ParameterList params;
};

// The QARAC models' groups, from the prefixes of QaracModels::parameters() ("question_encoder.",
// "answer_encoder.", "decoder.", and "shared_encoder." with a shared encoder base), held as the
// plan says. Every process gets the same groups; those of models it did not build are empty.
std::vector<ParameterGroup> qarac_parameter_groups(const TaskPlan& plan, const ParameterList& all,
                                                   bool shared_encoder_base);

// hash64 (core/hash.h) of every byte of the master weights of each packed span
// (parameter_spans), then of those hashes in order: replicas updated identically agree bit for
// bit, and one element that differs anywhere changes it. What check_replicas compares across
// ranks; never stored.
uint64_t replica_checksum(const ParameterList& params);

// The order in which every rank launches the groups' collectives: the groups by the last of
// their writers in the order a rank running one task finishes the models (D, then QE, then AE:
// train/objectives.cpp back-propagates the decoder before the encoders, QE before AE, and every
// task uses AE), groups whose last writer is the same in the order given. Indices into `groups`.
std::vector<size_t> launch_order(const std::vector<ParameterGroup>& groups);

enum class Backend { mpi, nccl };
Backend backend_from_name(const std::string& name, bool cuda);  // "auto" | "mpi" | "nccl"
const char* backend_name(Backend backend);

class GradientSync {
 public:
  // `world` null: a single process without MPI (every group has one holder, nothing to reduce).
  // Otherwise collective over the world: creates the groups' communicators.
  GradientSync(const MpiGroup* world, std::vector<ParameterGroup> groups, Backend backend,
               int64_t bucket_bytes);
  // Without MPI, for tests that play every rank of a plan in one process: this process is `rank`
  // and `connect` gives the communicator of each group of several holders that it holds.
  using Connect = std::function<std::unique_ptr<Communicator>(const ParameterGroup&)>;
  GradientSync(int rank, std::vector<ParameterGroup> groups, int64_t bucket_bytes, const Connect& connect);
  ~GradientSync();

  // This rank's parameters (the groups it holds, in group order): what its optimizer updates.
  ParameterList held_parameters() const;
  const std::vector<ParameterGroup>& groups() const { return groups_; }

  // These parameters' gradients are final for the step (a layer's, during its model's last
  // backward pass): starts the buckets this completes. Groups written by several models (a
  // shared base) wait for model_done instead.
  void parameters_ready(const ParameterList& params);
  // `model`'s backward passes on this rank are done for the step: starts every bucket left of
  // the groups whose writers are all done. Calling it again for the same model changes nothing.
  void model_done(Model model);
  // Starts what is left, waits for every reduction and writes the sums back into the gradients.
  // Returns the seconds spent waiting.
  double finish(const std::string& step_text);
  // Σ ‖g‖² over every group's (reduced) gradients, each group counted once in the world.
  double global_grad_sum_of_squares(const std::string& step_text);
  // Compares a checksum of every group's master weights across its holders; ReplicaError
  // naming the group and step when they differ.
  void check_replicas(int64_t step);
  // Rank 0 receives the master weights of the groups it does not hold from their first holder
  // (before rank 0 evaluates, checkpoints the whole model or exports). Collective.
  void gather_to_root(const std::string& what);
  // Abandons reductions in flight before the job is aborted.
  void abort() noexcept;

 private:
  struct Bucket;
  struct Group;
  // Appends the state of group `g`; with a communicator, its buckets.
  void add_group(const ParameterGroup& g, std::unique_ptr<Group> state, int64_t bucket_bytes);
  // Starts the buckets in the launch order from the next one on, while they are complete (or
  // their group is released).
  void start_ready();

  const MpiGroup* world_;
  std::vector<ParameterGroup> groups_;
  std::vector<std::unique_ptr<Group>> state_;  // per group
  // Where each reduced gradient lies: its group and bucket, keyed by the gradient's storage
  // (the models' own parameters and the groups' views share it).
  struct Place {
    size_t group, bucket, index;
  };
  std::unordered_map<const void*, Place> places_;
  std::vector<bool> models_done_;
  std::vector<size_t> order_;  // launch_order(groups_)
  size_t cursor_ = 0;          // the place in order_ of the first group not fully started
  int rank_ = 0;
};

}  // namespace qarac::parallel
