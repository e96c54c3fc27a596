// The collective schedule (docs/distributed.md §7): every rank launches its gradient buckets in
// one global order, so that no two ranks can wait on each other's collectives.
//   The checker (parallel/collective_trace.h) finds crossed launches, cycles through three ranks
//   that no pair of ranks shows, and communicators whose members launch different sequences.
//   The schedule: for every plan of 1 to 16 ranks (auto, explicit counts, a shared encoder base,
//   rehearsal with its head frozen or trained, masked-LM pre-training), the real GradientSync of
//   every rank is driven in one process with a communicator that records each launch, the
//   gradients reported ready in the trainer's order and in random orders (a different one on
//   every rank), over two steps; the launches of all ranks must admit one global order.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "parallel/collective_trace.h"
#include "parallel/gradient_sync.h"

using namespace qarac;
using parallel::Collective;
using parallel::CollectiveLog;
using parallel::Model;
using parallel::ParameterGroup;
using parallel::TaskPlan;

namespace {

Collective all_reduce(const std::string& comm, int size, int64_t bytes = 64) {
  return {comm, size, "all_reduce", bytes};
}

TEST(CollectiveOrderCheck, SameRelativeOrderOnEveryRankPasses) {
  const std::vector<CollectiveLog> logs = {
      {all_reduce("A", 3), all_reduce("B", 2), all_reduce("A", 3)},
      {all_reduce("A", 3), all_reduce("B", 2), all_reduce("A", 3)},
      {all_reduce("A", 3), {"world", 1, "barrier", 0}, all_reduce("A", 3)}};
  EXPECT_EQ(parallel::collective_order_error(logs), "");
}

TEST(CollectiveOrderCheck, CrossedLaunchesOfTwoRanksAreADeadlock) {
  const std::vector<CollectiveLog> logs = {{all_reduce("A", 2), all_reduce("B", 2)},
                                           {all_reduce("B", 2), all_reduce("A", 2)}};
  const std::string error = parallel::collective_order_error(logs);
  EXPECT_NE(error.find("deadlock"), std::string::npos) << error;
  EXPECT_NE(error.find("rank 0 launches all_reduce #1 on A before all_reduce #1 on B"), std::string::npos) << error;
  EXPECT_NE(error.find("rank 1 launches all_reduce #1 on B before all_reduce #1 on A"), std::string::npos) << error;
}

// Every pair of ranks shares one communicator only, so no pair disagrees, yet 0 waits for 2 on
// C, 2 for 1 on B and 1 for 0 on A.
TEST(CollectiveOrderCheck, ACycleThroughThreeRanksIsADeadlock) {
  const std::vector<CollectiveLog> logs = {{all_reduce("A", 2), all_reduce("C", 2)},
                                           {all_reduce("B", 2), all_reduce("A", 2)},
                                           {all_reduce("C", 2), all_reduce("B", 2)}};
  const std::string error = parallel::collective_order_error(logs);
  EXPECT_NE(error.find("deadlock"), std::string::npos) << error;
  for (const char* rank : {"rank 0 ", "rank 1 ", "rank 2 "}) EXPECT_NE(error.find(rank), std::string::npos) << error;
}

TEST(CollectiveOrderCheck, MembersMustLaunchTheSameSequence) {
  EXPECT_NE(parallel::collective_order_error({{all_reduce("A", 2, 64)}, {all_reduce("A", 2, 128)}})
                .find("collective #1 on A: rank 0 launches all_reduce of 64 bytes over 2 ranks, rank 1 all_reduce of "
                      "128 bytes"),
            std::string::npos);
  EXPECT_NE(parallel::collective_order_error({{all_reduce("A", 2), all_reduce("A", 2)}, {all_reduce("A", 2)}})
                .find("rank 0 launches 2 collectives on A, rank 1 1"),
            std::string::npos);
  // A member that launches nothing on its communicator leaves the others waiting.
  EXPECT_NE(parallel::collective_order_error({{all_reduce("A", 3)}, {all_reduce("A", 3)}, {}})
                .find("A has 3 ranks, but only ranks 0,1 launch collectives on it"),
            std::string::npos);
}

// ---- the schedule of GradientSync, every rank of a plan played in one process ----

// A communicator that records what its rank launches.
class Recorder final : public parallel::Communicator {
 public:
  Recorder(CollectiveLog& log, const ParameterGroup& group)
      : log_(log), name_(group.name), size_(static_cast<int>(group.ranks.size())) {}
  const char* backend() const override { return "recorder"; }
  void start_all_reduce(Tensor& buffer) override {
    log_.push_back({name_, size_, "all_reduce", static_cast<int64_t>(buffer.nbytes())});
  }
  void wait(const std::string&) override {}
  void abort() noexcept override {}

 private:
  CollectiveLog& log_;
  std::string name_;
  int size_;
};

// Parameters named as QaracModels::parameters() names them, of sizes that give each group
// buckets of one large tensor and buckets of several small ones.
class Weights {
 public:
  explicit Weights(const std::vector<std::string>& prefixes) {
    const int64_t sizes[] = {24, 3, 40, 7, 64, 5, 9};
    for (const std::string& prefix : prefixes)
      for (size_t i = 0; i < std::size(sizes); ++i) {
        owned_.push_back(std::make_unique<Parameter>());
        owned_.back()->allocate(prefix + ".w" + std::to_string(i), {sizes[i]}, DType::f32, Device::cpu());
        all_.push_back(owned_.back().get());
      }
  }
  const ParameterList& all() const { return all_; }
  // The parameters of model `m`'s own group, in the order its backward pass finishes them.
  ParameterList backward(Model m) const {
    ParameterList list;
    const std::string dot = std::string(parallel::model_name(m)) + ".";
    for (auto it = all_.rbegin(); it != all_.rend(); ++it)
      if ((*it)->name.compare(0, dot.size(), dot) == 0) list.push_back(*it);
    return list;
  }

 private:
  std::vector<std::unique_ptr<Parameter>> owned_;
  ParameterList all_;
};

constexpr int64_t kBucketBytes = 100;  // 25 f32 values: buckets of one tensor and of several

// The models each task's objective back-propagates, in order (train/objectives.cpp).
std::vector<Model> backward_order(data::Task task) {
  switch (task) {
    case data::Task::encode_decode:
    case data::Task::reasoning: return {Model::decoder, Model::answer_encoder};
    case data::Task::question_answering: return {Model::question_encoder, Model::answer_encoder};
    case data::Task::consistency:
    case data::Task::masked_lm: return {Model::answer_encoder};
  }
  return {};
}

// Reports a step's gradients to `sync` as the trainer does (train/trainer.cpp): the rank's tasks
// in plan order; a model's parameters, two at a time, during its last backward pass of the step,
// then model_done; model_done again after each task for the models it releases.
void trainer_order(parallel::GradientSync& sync, const TaskPlan& plan, int rank, const Weights& weights) {
  const std::vector<data::Task>& tasks = plan.tasks_of(rank);
  for (size_t i = 0; i < tasks.size(); ++i) {
    std::vector<Model> released;
    for (Model m : parallel::models_of(tasks[i])) {
      bool later = false;
      for (size_t j = i + 1; j < tasks.size(); ++j) {
        const std::vector<Model>& used = parallel::models_of(tasks[j]);
        later = later || std::find(used.begin(), used.end(), m) != used.end();
      }
      if (!later) released.push_back(m);
    }
    for (Model m : backward_order(tasks[i])) {
      if (std::find(released.begin(), released.end(), m) == released.end()) continue;
      const ParameterList params = weights.backward(m);
      for (size_t k = 0; k < params.size(); k += 2)
        sync.parameters_ready(ParameterList(params.begin() + static_cast<std::ptrdiff_t>(k),
                                            params.begin() + static_cast<std::ptrdiff_t>(std::min(k + 2, params.size()))));
      sync.model_done(m);
    }
    for (Model m : released) sync.model_done(m);
  }
}

// Reports every parameter and every model_done of the rank's models in an order drawn by `random`.
void random_order(parallel::GradientSync& sync, const TaskPlan& plan, int rank, const Weights& weights,
                  std::mt19937& random) {
  struct Event {
    Parameter* param;  // null: model_done(model)
    Model model;
  };
  std::vector<Event> events;
  for (int m = 0; m < parallel::kModelCount; ++m) {
    const Model model = static_cast<Model>(m);
    if (!plan.holds(rank, model)) continue;
    for (Parameter* p : weights.backward(model)) events.push_back({p, model});
    events.push_back({nullptr, model});
  }
  std::shuffle(events.begin(), events.end(), random);
  for (const Event& e : events) {
    if (e.param)
      sync.parameters_ready({e.param});
    else
      sync.model_done(e.model);
  }
}

enum class Driver { trainer, random };

// Two steps of every rank of `plan`, each rank's GradientSync recording its launches; the
// checker's verdict on them ("" when they admit one global order).
// With a trained rehearsal head (`head`), its group "mlm_head" as the QARAC workload adds it: written
// during AE's backward pass, held by the rehearsal's ranks, released by model_done(AE).
std::string schedule_error(const TaskPlan& plan, bool shared_base, bool mlm, Driver driver, uint32_t seed,
                           bool head = false) {
  const Weights weights(mlm ? std::vector<std::string>{"base"}
                            : shared_base ? std::vector<std::string>{"question_encoder", "answer_encoder", "decoder",
                                                                     "shared_encoder"}
                                          : std::vector<std::string>{"question_encoder", "answer_encoder", "decoder"});
  const Weights head_weights({"mlm_head"});
  std::vector<CollectiveLog> logs(static_cast<size_t>(plan.world_size()));
  std::mt19937 random(seed);
  for (int rank = 0; rank < plan.world_size(); ++rank) {
    std::vector<ParameterGroup> groups =
        mlm ? std::vector<ParameterGroup>{{"base", {}, plan.ranks_of(data::Task::encode_decode), weights.all()}}
            : parallel::qarac_parameter_groups(plan, weights.all(), shared_base);
    if (head)
      groups.push_back({"mlm_head", {Model::answer_encoder}, plan.ranks_of(data::Task::masked_lm), head_weights.all()});
    CollectiveLog& log = logs[static_cast<size_t>(rank)];
    parallel::GradientSync sync(rank, std::move(groups), kBucketBytes,
                                [&](const ParameterGroup& g) { return std::make_unique<Recorder>(log, g); });
    for (int step = 0; step < 2; ++step) {
      if (driver == Driver::trainer)
        trainer_order(sync, plan, rank, weights);
      else
        random_order(sync, plan, rank, weights, random);
      sync.finish("step " + std::to_string(step));
    }
  }
  if (plan.world_size() > 1) {
    size_t launches = 0;
    for (const CollectiveLog& log : logs) launches += log.size();
    if (launches == 0) return "no rank launched anything";
  }
  return parallel::collective_order_error(logs);
}

// The plans of W ranks: auto, explicit counts from {1, ⌈W/3⌉, W} per task (every combination
// that the world allows), and each task alone (masked-LM pre-training runs the text task alone).
std::vector<std::pair<std::string, TaskPlan>> plans_of(int world) {
  const parallel::TaskValues weights{1, 1, 1, 1}, costs{0.43, 0.16, 0.22, 0.19};
  std::vector<std::pair<std::string, TaskPlan>> plans;
  plans.emplace_back("auto", TaskPlan::automatic(world, weights, costs));
  const std::set<int> choices = {1, (world + 2) / 3, world};
  for (int ed : choices)
    for (int qa : choices)
      for (int rs : choices)
        for (int cs : choices) {
          if (ed + qa + rs + cs < world) continue;
          const std::string spec = "ed:" + std::to_string(ed) + ",qa:" + std::to_string(qa) +
                                   ",rs:" + std::to_string(rs) + ",cs:" + std::to_string(cs);
          plans.emplace_back(spec, TaskPlan::from_counts({ed, qa, rs, cs}, world, weights));
        }
  return plans;
}

// The same with rehearsal on: auto, and explicit counts from {1, ⌈W/3⌉, W} for ED and RS, QA and
// CS, and MLM.
std::vector<std::pair<std::string, TaskPlan>> rehearsal_plans_of(int world) {
  const parallel::TaskValues weights{1, 1, 1, 1, 1}, costs{0.43, 0.16, 0.22, 0.19, 0.12};
  std::vector<std::pair<std::string, TaskPlan>> plans;
  plans.emplace_back("auto", TaskPlan::automatic(world, weights, costs));
  const std::set<int> choices = {1, (world + 2) / 3, world};
  for (int decoding : choices)
    for (int encoding : choices)
      for (int mlm : choices) {
        if (2 * decoding + 2 * encoding + mlm < world) continue;
        const std::string spec = "ed:" + std::to_string(decoding) + ",qa:" + std::to_string(encoding) +
                                 ",rs:" + std::to_string(decoding) + ",cs:" + std::to_string(encoding) +
                                 ",mlm:" + std::to_string(mlm);
        plans.emplace_back(spec, TaskPlan::from_counts({decoding, encoding, decoding, encoding, mlm}, world, weights));
      }
  return plans;
}

TEST(CollectiveSchedule, GroupsLaunchDecoderThenQuestionThenAnswerEncoderThenSharedBase) {
  const Weights weights({"question_encoder", "answer_encoder", "decoder", "shared_encoder"});
  const TaskPlan plan = TaskPlan::automatic(4, {1, 1, 1, 1}, {1, 1, 1, 1});
  const std::vector<ParameterGroup> groups = parallel::qarac_parameter_groups(plan, weights.all(), true);
  std::vector<std::string> names;
  for (size_t i : parallel::launch_order(groups)) names.push_back(groups[i].name);
  EXPECT_EQ(names, (std::vector<std::string>{"decoder", "question_encoder", "answer_encoder", "shared_encoder"}));
}

// A trained rehearsal head's group goes after the models' (the workload appends it, writer AE).
TEST(CollectiveSchedule, ARehearsalHeadLaunchesAfterTheAnswerEncodersGroups) {
  const Weights weights({"question_encoder", "answer_encoder", "decoder", "shared_encoder"}), head({"mlm_head"});
  const TaskPlan plan = TaskPlan::automatic(5, {1, 1, 1, 1, 1}, {1, 1, 1, 1, 1});
  std::vector<ParameterGroup> groups = parallel::qarac_parameter_groups(plan, weights.all(), true);
  groups.push_back({"mlm_head", {Model::answer_encoder}, plan.ranks_of(data::Task::masked_lm), head.all()});
  std::vector<std::string> names;
  for (size_t i : parallel::launch_order(groups)) names.push_back(groups[i].name);
  EXPECT_EQ(names, (std::vector<std::string>{"decoder", "question_encoder", "answer_encoder", "shared_encoder",
                                             "mlm_head"}));
}

TEST(CollectiveSchedule, EveryPlanOfOneToSixteenRanksLaunchesInOneGlobalOrder) {
  int checked = 0;
  for (int world = 1; world <= 16; ++world) {
    for (const auto& [spec, plan] : plans_of(world))
      for (bool shared : {false, true})
        for (Driver driver : {Driver::trainer, Driver::random}) {
          const uint32_t seed = static_cast<uint32_t>(1000 * world + checked);
          const std::string error = schedule_error(plan, shared, false, driver, seed);
          ASSERT_EQ(error, "") << "W = " << world << ", plan " << spec << (shared ? ", shared encoder base" : "")
                               << (driver == Driver::trainer ? ", the trainer's order" : ", random orders, seed ")
                               << (driver == Driver::random ? std::to_string(seed) : "");
          ++checked;
        }
    for (const auto& [spec, plan] : rehearsal_plans_of(world))
      for (bool shared : {false, true})
        for (bool head : {false, true})
          for (Driver driver : {Driver::trainer, Driver::random}) {
            const uint32_t seed = static_cast<uint32_t>(1000 * world + checked);
            const std::string error = schedule_error(plan, shared, false, driver, seed, head);
            ASSERT_EQ(error, "") << "W = " << world << ", plan " << spec << (shared ? ", shared encoder base" : "")
                                 << (head ? ", trained rehearsal head" : ", frozen rehearsal head")
                                 << (driver == Driver::trainer ? ", the trainer's order" : ", random orders, seed ")
                                 << (driver == Driver::random ? std::to_string(seed) : "");
            ++checked;
          }
    for (Driver driver : {Driver::trainer, Driver::random}) {
      const std::string error =
          schedule_error(TaskPlan::single_task(data::Task::encode_decode, world), false, true, driver, 7u);
      ASSERT_EQ(error, "") << "W = " << world << ", masked-LM pre-training";
      ++checked;
    }
  }
  std::printf("%d plans and orders of 1 to 16 ranks launch in one global order\n", checked);
}

}  // namespace

// ---- where the buckets lie ----

// Stands in for a group of two ranks holding the same gradients: the sum doubles the buffer.
class Doubler final : public parallel::Communicator {
 public:
  explicit Doubler(std::vector<const void*>& buffers) : buffers_(buffers) {}
  const char* backend() const override { return "doubler"; }
  void start_all_reduce(Tensor& buffer) override {
    buffers_.push_back(buffer.raw());
    double* x = buffer.data<double>();
    for (int64_t i = 0; i < buffer.numel(); ++i) x[i] *= 2;
  }
  void wait(const std::string&) override {}
  void abort() noexcept override {}

 private:
  std::vector<const void*>& buffers_;
};

// A bucket of consecutive packed parameters (pack_parameters) is reduced where the gradients lie,
// with no copy in or out; loose parameters are copied into a buffer and back. Both get the sums.
TEST(GradientBuckets, PackedParametersAreReducedInPlace) {
  for (bool packed : {true, false}) {
    std::vector<std::unique_ptr<Parameter>> owned;
    ParameterList params;
    for (int64_t n : {5, 3, 4, 6}) {
      owned.push_back(std::make_unique<Parameter>());
      owned.back()->allocate("question_encoder.w" + std::to_string(n), {n}, DType::f64, Device::cpu());
      params.push_back(owned.back().get());
    }
    if (packed) pack_parameters(params);
    for (Parameter* p : params) {
      std::vector<double> g(static_cast<size_t>(p->grad.numel()));
      for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<double>(i) + 0.5 * static_cast<double>(g.size());
      p->grad.copy_(Tensor::from_vector(g, p->grad.shape()));
    }
    std::vector<const void*> buffers;
    parallel::GradientSync sync(0, {{"question_encoder", {Model::question_encoder}, {0, 1}, params}},
                                /*bucket_bytes=*/80, [&](const ParameterGroup&) { return std::make_unique<Doubler>(buffers); });
    const uint64_t copies = memory_calls();
    sync.parameters_ready(ParameterList(params.rbegin(), params.rend()));
    sync.model_done(Model::question_encoder);
    sync.finish("step 0");
    // 80 bytes: {w6, w4} and {w3, w5}, from the last parameter back.
    ASSERT_EQ(buffers.size(), 2u);
    if (packed) {
      EXPECT_EQ(memory_calls(), copies);
      EXPECT_EQ(buffers[0], params[2]->grad.raw());
      EXPECT_EQ(buffers[1], params[0]->grad.raw());
    } else {
      EXPECT_GT(memory_calls(), copies);
    }
    for (Parameter* p : params) {
      const std::vector<double> g = p->grad.to_vector<double>();
      for (size_t i = 0; i < g.size(); ++i) EXPECT_EQ(g[i], 2 * (static_cast<double>(i) + 0.5 * static_cast<double>(g.size())));
    }
  }
}
