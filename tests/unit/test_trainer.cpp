// The trainer and its parts: the task plan (parsing, layouts for any world size, the one-line
// errors of bad specs), the learning-rate schedules, the optimizer class (NAdam's carried
// momentum product across a restore), the configuration (INI + command line, round trip), and
// qarac-train as a user meets it: bad options exit 2 with one line naming the key or file and
// leave no output directory; a short CPU run on the sample data (a random tiny RoBERTa as the
// base) writes the expected metrics and exports; a resumed run ends bit-identical to a straight
// one.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/test_support.h"
#include "support/train_cli.h"
#include "support/training_fixtures.h"
#include "core/error.h"
#include "data/loader.h"
#include "parallel/task_plan.h"
#include "io/safetensors.h"
#include "kernels/cpu/gemm.h"
#include "train/config.h"
#include "train/metrics.h"
#include "train/run_dir.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace fs = std::filesystem;
using namespace qarac;
using qarac::test_support::TempDir;
using data::Task;

namespace {

const parallel::TaskValues kUnitWeights = {1, 1, 1, 1};
const parallel::TaskValues kEqualCosts = {1, 1, 1, 1};

std::vector<Task> tasks(std::initializer_list<Task> list) { return list; }

// Expects an InputError of one line that contains every one of `parts`.
template <class F>
void expect_input_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no InputError; expected one mentioning " << *parts.begin();
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const std::string& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' missing from: " << msg;
  }
}

}  // namespace

// ---- Task plan ---------------------------------------------------------------------------------

TEST(TaskPlan, OneRankRunsEveryTask) {
  for (const char* spec : {"auto", "ed:1,qa:1,rs:1,cs:1", " cs:1, rs:1 ,qa:1,encode_decode:1 "}) {
    SCOPED_TRACE(spec);
    const parallel::TaskPlan plan = parallel::TaskPlan::parse(spec, 1, {2, 1, 1, 0.5}, kEqualCosts);
    EXPECT_EQ(plan.tasks_of(0), tasks({Task::encode_decode, Task::question_answering,
                                       Task::reasoning, Task::consistency}));
    for (int t = 0; t < data::kQaracTaskCount; ++t)
      EXPECT_EQ(plan.ranks_of(static_cast<Task>(t)), std::vector<int>{0});
    EXPECT_TRUE(plan.ranks_of(Task::masked_lm).empty()) << "rehearsal is off at weight 0";
    EXPECT_EQ(plan.weight(Task::encode_decode), 2.0);
    EXPECT_EQ(plan.weight(Task::consistency), 0.5);
    const data::RankPlan rp = plan.rank_plan(0);
    EXPECT_EQ(rp.world_size, 1);
    ASSERT_EQ(rp.tasks.size(), 4u);
    for (const data::TaskSlot& slot : rp.tasks) {
      EXPECT_EQ(slot.group_rank, 0);
      EXPECT_EQ(slot.group_size, 1);
    }
  }
}

TEST(TaskPlan, ExplicitCountsAreDealtRoundRobin) {
  // W = 6 = Σ n_t: one task per rank, in task order.
  const parallel::TaskPlan six = parallel::TaskPlan::parse("ed:2,qa:1,rs:2,cs:1", 6, kUnitWeights, kEqualCosts);
  EXPECT_EQ(six.ranks_of(Task::encode_decode), (std::vector<int>{0, 1}));
  EXPECT_EQ(six.ranks_of(Task::question_answering), (std::vector<int>{2}));
  EXPECT_EQ(six.ranks_of(Task::reasoning), (std::vector<int>{3, 4}));
  EXPECT_EQ(six.ranks_of(Task::consistency), (std::vector<int>{5}));
  const data::RankPlan r4 = six.rank_plan(4);
  ASSERT_EQ(r4.tasks.size(), 1u);
  EXPECT_EQ(r4.tasks[0].task, Task::reasoning);
  EXPECT_EQ(r4.tasks[0].group_rank, 1);
  EXPECT_EQ(r4.tasks[0].group_size, 2);
  EXPECT_EQ(six.ranks_holding(parallel::Model::decoder), (std::vector<int>{0, 1, 3, 4}));
  EXPECT_EQ(six.ranks_holding(parallel::Model::question_encoder), (std::vector<int>{2}));
  EXPECT_EQ(six.ranks_holding(parallel::Model::answer_encoder), (std::vector<int>{0, 1, 2, 3, 4, 5}));

  // W = 3 < Σ n_t = 6: slots ed ed qa rs rs cs go to ranks 0 1 2 0 1 2.
  const parallel::TaskPlan three = parallel::TaskPlan::parse("ed:2,qa:1,rs:2,cs:1", 3, kUnitWeights, kEqualCosts);
  EXPECT_EQ(three.tasks_of(0), tasks({Task::encode_decode, Task::reasoning}));
  EXPECT_EQ(three.tasks_of(1), tasks({Task::encode_decode, Task::reasoning}));
  EXPECT_EQ(three.tasks_of(2), tasks({Task::question_answering, Task::consistency}));
  EXPECT_EQ(three.rank_plan(1).tasks[1].group_rank, 1);

  // W = 5, not a multiple of 4.
  const parallel::TaskPlan five = parallel::TaskPlan::parse("ed:2,qa:1,rs:1,cs:1", 5, kUnitWeights, kEqualCosts);
  EXPECT_EQ(five.ranks_of(Task::encode_decode), (std::vector<int>{0, 1}));
  EXPECT_EQ(five.tasks_of(4), tasks({Task::consistency}));
}

TEST(TaskPlan, AutoBalancesTheEstimatedCost) {
  // Costs per step (parallel/task_cost.h gives them in FLOPs).
  const parallel::TaskValues costs{8192, 4096, 8192, 2048};

  // W >= 4: one rank each, then the extra ranks to the highest cost per rank: ed (8192), rs
  // (8192), then ed/rs again at 4096 tie with qa, earliest first: ed.
  const parallel::TaskPlan seven = parallel::TaskPlan::parse("auto", 7, kUnitWeights, costs);
  EXPECT_EQ(seven.group_size(Task::encode_decode), 3);
  EXPECT_EQ(seven.group_size(Task::question_answering), 1);
  EXPECT_EQ(seven.group_size(Task::reasoning), 2);
  EXPECT_EQ(seven.group_size(Task::consistency), 1);
  for (int r = 0; r < 7; ++r) EXPECT_EQ(seven.tasks_of(r).size(), 1u) << "rank " << r;

  // W < 4: each task on one rank, the costliest first onto the least loaded (ties: the lower
  // rank). W = 2: ed -> 0, rs -> 1, qa -> 0, cs -> 1; W = 3: ed -> 0, rs -> 1, qa -> 2, cs -> 2.
  const parallel::TaskPlan two = parallel::TaskPlan::parse("auto", 2, kUnitWeights, costs);
  EXPECT_EQ(two.tasks_of(0), tasks({Task::encode_decode, Task::question_answering}));
  EXPECT_EQ(two.tasks_of(1), tasks({Task::reasoning, Task::consistency}));
  const parallel::TaskPlan three = parallel::TaskPlan::parse("auto", 3, kUnitWeights, costs);
  EXPECT_EQ(three.tasks_of(0), tasks({Task::encode_decode}));
  EXPECT_EQ(three.tasks_of(1), tasks({Task::reasoning}));
  EXPECT_EQ(three.tasks_of(2), tasks({Task::question_answering, Task::consistency}));
}

TEST(TaskPlan, TableListsTasksAndRanks) {
  const parallel::TaskPlan plan = parallel::TaskPlan::parse("ed:2,qa:1,rs:2,cs:1", 6, {1, 2, 1, 1}, kEqualCosts);
  const std::string table = plan.table();
  EXPECT_NE(table.find("task plan: 6 ranks"), std::string::npos) << table;
  EXPECT_NE(table.find("encode_decode (ed)"), std::string::npos) << table;
  EXPECT_NE(table.find("0-1"), std::string::npos) << table;
  EXPECT_NE(table.find("AE D"), std::string::npos) << table;
}

TEST(TaskPlan, BadSpecsAreOneLineInputErrors) {
  const auto parse = [](const std::string& spec, int world) {
    return [spec, world] { parallel::TaskPlan::parse(spec, world, kUnitWeights, kEqualCosts); };
  };
  expect_input_error(parse("ed:2,qa:1", 4), {"--parallel.tasks", "task rs is missing"});
  expect_input_error(parse("ed:1,qa:1,rs:1,cs:1,", 4), {"--parallel.tasks", "ends with a comma"});
  expect_input_error(parse("ed:1,,qa:1,rs:1,cs:1", 4), {"--parallel.tasks", "'' is not task:ranks"});
  expect_input_error(parse("xx:1,qa:1,rs:1,cs:1", 4), {"--parallel.tasks", "unknown task 'xx'"});
  expect_input_error(parse("ed:0,qa:1,rs:1,cs:1", 4), {"--parallel.tasks", "ed:0"});
  expect_input_error(parse("ed:two,qa:1,rs:1,cs:1", 4), {"--parallel.tasks", "'two'"});
  expect_input_error(parse("ed:-1,qa:1,rs:1,cs:1", 4), {"--parallel.tasks", "'-1'"});
  expect_input_error(parse("ed,qa:1,rs:1,cs:1", 4), {"--parallel.tasks", "'ed'"});
  expect_input_error(parse("ed:1,ed:1,qa:1,rs:1,cs:1", 4), {"--parallel.tasks", "ed is given twice"});
  expect_input_error(parse("ed:5,qa:1,rs:1,cs:1", 4), {"--parallel.tasks", "ed:5", "[1, 4]"});
  // A count no job has is said as such (before: "not a positive integer").
  expect_input_error(parse("ed:99999999999,qa:1,rs:1,cs:1", 4),
                     {"--parallel.tasks: 'ed:99999999999': 99999999999 ranks is more than any job has"});
  expect_input_error(parse("ed:1,qa:1,rs:1,cs:1", 8), {"--parallel.tasks", "ranks 4..7"});
  expect_input_error(parse("", 1), {"--parallel.tasks", "empty"});
  expect_input_error(parse("auto", 0), {"world size"});
  expect_input_error([] { parallel::TaskPlan::parse("auto", 1, {1, -1, 1, 1}, kEqualCosts); },
                     {"question_answering", "weight"});
}

// Rehearsal (task.mlm.weight > 0) is a fifth task in every plan: W = 1 runs all five, explicit
// specs must name it, auto gives it ranks by its cost; at weight 0 it runs nowhere and a spec
// may not name it.
TEST(TaskPlan, RehearsalIsAFifthTaskOnlyWhenOn) {
  const parallel::TaskValues on = {1, 1, 1, 1, 0.5}, costs = {4, 2, 4, 1, 3};
  for (const char* spec : {"auto", "ed:1,qa:1,rs:1,cs:1,mlm:1", "masked_lm:1,cs:1,rs:1,qa:1,ed:1"}) {
    SCOPED_TRACE(spec);
    const parallel::TaskPlan one = parallel::TaskPlan::parse(spec, 1, on, costs);
    EXPECT_EQ(one.tasks_of(0), tasks({Task::encode_decode, Task::question_answering, Task::reasoning,
                                      Task::consistency, Task::masked_lm}));
    EXPECT_EQ(one.weight(Task::masked_lm), 0.5);
  }
  const parallel::TaskPlan five = parallel::TaskPlan::parse("ed:1,qa:1,rs:1,cs:1,mlm:1", 5, on, costs);
  EXPECT_EQ(five.ranks_of(Task::masked_lm), std::vector<int>{4});
  EXPECT_EQ(five.tasks_of(4), tasks({Task::masked_lm}));
  EXPECT_EQ(five.ranks_holding(parallel::Model::answer_encoder), (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_EQ(five.ranks_holding(parallel::Model::decoder), (std::vector<int>{0, 2}));
  EXPECT_NE(five.table().find("masked_lm (mlm)"), std::string::npos) << five.table();
  // auto: one rank each, the sixth and seventh to the costliest per rank (ED, RS: 4 each).
  const parallel::TaskPlan seven = parallel::TaskPlan::parse("auto", 7, on, costs);
  EXPECT_EQ(seven.group_size(Task::masked_lm), 1);
  EXPECT_EQ(seven.group_size(Task::encode_decode), 2);
  EXPECT_EQ(seven.group_size(Task::reasoning), 2);
  // Fewer ranks than tasks: LPT, the costliest first onto the least loaded rank.
  const parallel::TaskPlan two = parallel::TaskPlan::parse("auto", 2, on, costs);
  EXPECT_EQ(two.tasks_of(0), tasks({Task::encode_decode, Task::masked_lm}));
  EXPECT_EQ(two.tasks_of(1), tasks({Task::question_answering, Task::reasoning, Task::consistency}));

  const auto parse = [](const std::string& spec, const parallel::TaskValues& weights) {
    return [spec, weights] { parallel::TaskPlan::parse(spec, 5, weights, kEqualCosts); };
  };
  expect_input_error(parse("ed:1,qa:1,rs:1,cs:1", on),
                     {"--parallel.tasks", "task mlm is missing", "task.mlm.weight > 0"});
  expect_input_error(parse("ed:1,qa:1,rs:1,cs:1,mlm:1", kUnitWeights),
                     {"--parallel.tasks", "task mlm is given, but rehearsal is off (task.mlm.weight 0)"});
  EXPECT_TRUE(parallel::TaskPlan::parse("auto", 5, kUnitWeights, kEqualCosts).ranks_of(Task::masked_lm).empty());
}

// ---- Learning-rate schedule ---------------------------------------------------------------------

TEST(Schedule, WarmupThenEachDecay) {
  ScheduleConfig c;
  c.peak_lr = 1e-3;
  c.warmup_steps = 10;
  c.total_steps = 110;
  c.final_fraction = 0.1;
  for (Decay decay : {Decay::constant, Decay::linear, Decay::cosine, Decay::exponential}) {
    SCOPED_TRACE(decay_name(decay));
    c.decay = decay;
    const LearningRateSchedule s(c);
    EXPECT_EQ(s.at(0), 0.0);  // linear warmup from 0, as transformers' schedules
    EXPECT_DOUBLE_EQ(s.at(5), 0.5e-3);
    EXPECT_DOUBLE_EQ(s.at(10), 1e-3);  // the peak, where the decay starts
    const double half = s.at(60), end = s.at(110);  // p = 1/2, p = 1
    switch (decay) {
      case Decay::constant:
        EXPECT_DOUBLE_EQ(half, 1e-3);
        EXPECT_DOUBLE_EQ(end, 1e-3);
        break;
      case Decay::linear:
        EXPECT_DOUBLE_EQ(half, 1e-3 * 0.55);
        EXPECT_DOUBLE_EQ(s.at(35), 1e-3 * (1 - 0.9 * 0.25));
        EXPECT_DOUBLE_EQ(end, 1e-4);
        break;
      case Decay::cosine:
        EXPECT_DOUBLE_EQ(half, 1e-3 * 0.55);
        EXPECT_DOUBLE_EQ(s.at(35), 1e-3 * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI / 4))));
        EXPECT_DOUBLE_EQ(end, 1e-4);
        break;
      case Decay::exponential:
        EXPECT_DOUBLE_EQ(half, 1e-3 * std::sqrt(0.1));
        EXPECT_DOUBLE_EQ(end, 1e-4);
        break;
    }
    EXPECT_DOUBLE_EQ(s.at(500), end);  // past the end: the final rate
  }
  ScheduleConfig no_warmup;
  no_warmup.peak_lr = 2e-5;
  no_warmup.total_steps = 4;
  const LearningRateSchedule s(no_warmup);
  EXPECT_DOUBLE_EQ(s.at(0), 2e-5);
  EXPECT_DOUBLE_EQ(s.at(3), 2e-5 * 0.25);
}

// A final fraction of 1, the top of its range, is a decay that stays at the peak: every decay
// form gives the peak rate from the end of the warmup on.
TEST(Schedule, AFinalFractionOfOneStaysAtThePeak) {
  ScheduleConfig c;
  c.peak_lr = 1e-3;
  c.warmup_steps = 2;
  c.total_steps = 10;
  c.final_fraction = 1;
  for (Decay decay : {Decay::linear, Decay::cosine, Decay::exponential}) {
    SCOPED_TRACE(decay_name(decay));
    c.decay = decay;
    const LearningRateSchedule s(c);
    for (int64_t step = 2; step <= 10; ++step) EXPECT_DOUBLE_EQ(s.at(step), 1e-3) << "step " << step;
  }
}

TEST(Schedule, BadSettingsAreInputErrors) {
  ScheduleConfig c;
  c.decay = Decay::exponential;
  expect_input_error([&] { LearningRateSchedule{c}; }, {"exponential", "final"});
  c = {};
  c.peak_lr = -1;
  expect_input_error([&] { LearningRateSchedule{c}; }, {"learning rate"});
  c = {};
  c.final_fraction = 1.5;
  expect_input_error([&] { LearningRateSchedule{c}; }, {"[0, 1]"});
  expect_input_error([] { decay_from_name("step"); }, {"'step'", "cosine"});
}

// ---- Optimizer ------------------------------------------------------------------------------------

namespace {

// One f64 parameter of n elements with a fixed gradient per step.
struct OneParameter {
  Parameter p;
  explicit OneParameter(int64_t n) {
    p.allocate("w", {n}, DType::f64, Device::cpu());
    std::vector<double> w(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) w[i] = std::sin(1.0 + i);
    p.assign(Tensor::from_vector(w, {n}));
  }
  void set_grad(int64_t step) {
    std::vector<double> g(static_cast<size_t>(p.grad.numel()));
    for (size_t i = 0; i < g.size(); ++i) g[i] = std::cos(0.7 * step + i);
    p.grad.copy_(Tensor::from_vector(g, p.grad.shape()));
  }
};

}  // namespace

// NAdam's momentum product is carried across steps; set_steps (what a checkpoint restore calls)
// rebuilds it, so a run restored after two steps continues with the same bits as one that never
// stopped; and every step equals the op with the product formed from scratch.
TEST(OptimizerClass, NAdamContinuesBitExactlyAfterARestore) {
  OptimizerConfig config;
  config.kind = OptimizerKind::nadam;
  OneParameter straight(7), restored(7);
  Optimizer a({&straight.p}, config);
  for (int64_t s = 0; s < 5; ++s) {
    straight.set_grad(s);
    a.step(1e-2);
  }
  {
    Optimizer first({&restored.p}, config);
    for (int64_t s = 0; s < 2; ++s) {
      restored.set_grad(s);
      first.step(1e-2);
    }
    Optimizer second({&restored.p}, config);  // a new process: moments copied, steps restored
    second.first_moments()[0].copy_(first.first_moments()[0]);
    second.second_moments()[0].copy_(first.second_moments()[0]);
    second.set_steps(first.steps());
    for (int64_t s = 2; s < 5; ++s) {
      restored.set_grad(s);
      second.step(1e-2);
    }
    EXPECT_EQ(second.steps(), 5);
  }
  EXPECT_EQ(straight.p.master.to_vector<double>(), restored.p.master.to_vector<double>());
  EXPECT_EQ(optimizer_from_name("nadam"), OptimizerKind::nadam);
  expect_input_error([] { optimizer_from_name("sgd"); }, {"'sgd'", "adamw", "nadam"});
}

// The optimizer updates a packed model (pack_parameters) one span per call: the same bits as one
// call per tensor, for both rules, with clipping, and its moments are per-parameter views of
// the span's (what a checkpoint saves).
TEST(OptimizerClass, PackedParametersUpdateToTheBitsOfLooseOnes) {
  for (OptimizerKind kind : {OptimizerKind::adamw, OptimizerKind::nadam}) {
    OptimizerConfig config;
    config.kind = kind;
    std::vector<OneParameter> loose, packed;
    for (int64_t n : {7, 1, 12}) {
      loose.emplace_back(n);
      packed.emplace_back(n);
    }
    ParameterList loose_list, packed_list;
    for (size_t i = 0; i < loose.size(); ++i) {
      loose_list.push_back(&loose[i].p);
      packed_list.push_back(&packed[i].p);
    }
    pack_parameters(packed_list);
    Optimizer a(loose_list, config), b(packed_list, config);
    for (int64_t s = 0; s < 4; ++s) {
      for (size_t i = 0; i < loose.size(); ++i) {
        loose[i].set_grad(s + static_cast<int64_t>(i));
        packed[i].set_grad(s + static_cast<int64_t>(i));
      }
      EXPECT_EQ(a.step(1e-2, 2.0), b.step(1e-2, 2.0));
    }
    for (size_t i = 0; i < loose.size(); ++i) {
      EXPECT_EQ(loose[i].p.master.to_vector<double>(), packed[i].p.master.to_vector<double>()) << optimizer_name(kind);
      EXPECT_EQ(a.first_moments()[i].to_vector<double>(), b.first_moments()[i].to_vector<double>());
      EXPECT_EQ(a.second_moments()[i].to_vector<double>(), b.second_moments()[i].to_vector<double>());
    }
    EXPECT_EQ(b.first_moments()[1].raw(), static_cast<double*>(b.first_moments()[0].raw()) + 7);
  }
}

// ---- Configuration ----------------------------------------------------------------------------------

namespace {

std::optional<TrainConfig> parse(const std::vector<std::string>& args) {
  std::vector<const char*> argv = {"qarac-train"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  std::ostringstream help;
  return parse_train_config(static_cast<int>(argv.size()), argv.data(), help);
}

}  // namespace

// ---- Metrics log -------------------------------------------------------------------------------

// The run's last memory line: the steps' figures are the largest of the steps written, rank 0's
// whole-run figures the largest of every window it noted (a step and the evaluation or checkpoint
// after it), whatever their order, and of what it holds at the end.
TEST(MetricsLog, TheRunsMemoryPeaksAreTheLargestOfEveryStepAndWindow) {
  const TempDir dir("qarac-metrics-peaks");
  MetricsLog log;
  log.open((dir.path / "metrics.jsonl").string(), 0, false, "plain", 0);
  log.start(0);
  const parallel::TaskPlan plan = parallel::TaskPlan::single_task(Task::encode_decode, 1);
  constexpr uint64_t MiB = 1 << 20;
  int64_t step = 0;
  for (const uint64_t held : {3 * MiB, 7 * MiB, 5 * MiB}) {
    StepStats s;
    s.ran[0] = true;
    s.memory = {held, held, 0};
    log.write_step(++step, 1, plan, s);
  }
  log.note_memory_peaks({2 * MiB, 2 * MiB, 0});
  log.note_memory_peaks({40 * MiB, 41 * MiB, 0});  // an evaluation's window
  log.note_memory_peaks({9 * MiB, 9 * MiB, 0});
  testing::internal::CaptureStderr();
  log.say_memory_peaks({1 * MiB, 1 * MiB, 0});
  const std::string said = testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("the steps' memory peaks: host tensors 7.0 MiB on a rank"), std::string::npos) << said;
  EXPECT_NE(said.find("rank 0 over the whole run (its evaluations, checkpoints and export included): host tensors "
                      "40.0 MiB (41.0 MiB on its node)"),
            std::string::npos)
      << said;
  // What rank 0 holds at the end counts too.
  MetricsLog again;
  again.open((dir.path / "again.jsonl").string(), 0, false, "plain", 0);
  again.start(0);
  StepStats s;
  s.ran[0] = true;
  s.memory = {3 * MiB, 3 * MiB, 0};
  again.write_step(1, 1, plan, s);
  again.note_memory_peaks({4 * MiB, 4 * MiB, 0});
  testing::internal::CaptureStderr();
  again.say_memory_peaks({12 * MiB, 12 * MiB, 0});
  const std::string end = testing::internal::GetCapturedStderr();
  EXPECT_NE(end.find("host tensors 12.0 MiB"), std::string::npos) << end;
}

// A resumed run reads back the evaluations of the lines it keeps (eval.best and eval.patience count
// them): one whose metric was not finite, written as null, is an evaluation too, one that beat
// nothing, as it was in the run before; the lines after the resumed step are not kept.
TEST(MetricsLog, AResumeReadsBackEveryKeptEvaluationNullsIncluded) {
  const TempDir dir("qarac-metrics-resume");
  const fs::path path = dir.path / "metrics.jsonl";
  std::ofstream(path) << "{\"step\":2,\"eval\":true,\"cs.accuracy\":0.5}\n"
                      << "{\"step\":4,\"eval\":true,\"cs.accuracy\":null}\n"
                      << "{\"step\":6,\"eval\":true,\"cs.accuracy\":0.75}\n";
  MetricsLog log;
  log.open(path.string(), 4, /*resuming=*/true, "plain", 0);
  const std::map<int64_t, double> values = log.eval_values("cs.accuracy");
  ASSERT_EQ(values.size(), 2u);
  EXPECT_EQ(values.at(2), 0.5);
  EXPECT_TRUE(std::isnan(values.at(4)));
}

// metrics.jsonl removed while the run writes it (a user freeing the disk): a new file holds the
// lines from there on, and the log says what was lost; before, every later line went to the
// removed file, and the run ended without metrics, unsaid.
TEST(MetricsLog, AFileRemovedWhileWrittenIsCreatedAgain) {
  const TempDir dir("qarac-metrics-removed");
  const fs::path path = dir.path / "metrics.jsonl";
  MetricsLog log;
  log.open(path.string(), 0, false, "plain", 0);
  log.start(0);
  const parallel::TaskPlan plan = parallel::TaskPlan::single_task(Task::encode_decode, 1);
  StepStats s;
  s.ran[0] = true;
  log.write_step(1, 1, plan, s);
  fs::remove(path);
  testing::internal::CaptureStderr();
  log.write_step(2, 1, plan, s);
  const std::string said = testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find(path.string() + ": removed while the run wrote it; its earlier lines are lost, a new file holds "
                      "those from step 2 on"),
            std::string::npos)
      << said;
  log.write_eval(2, {{"cs.accuracy", 0.5}});
  std::ifstream in(path);
  std::vector<int64_t> steps;
  for (std::string line; std::getline(in, line);) steps.push_back(nlohmann::json::parse(line).at("step"));
  EXPECT_EQ(steps, (std::vector<int64_t>{2, 2}));
}

// The optimizer.* settings reach the schedule: the peak, the warmup, the run's steps, the decay and
// its final fraction (before reaching it, a missing one decays alike: only the later rates tell).
TEST(TrainConfig, TheScheduleFollowsTheOptimizerSettings) {
  const std::optional<TrainConfig> c =
      parse({"--data.dir", "/data", "--optimizer.lr", "1e-3", "--optimizer.warmup", "2", "--train.steps", "10",
             "--optimizer.decay", "linear", "--optimizer.final", "0.25"});
  ASSERT_TRUE(c);
  const LearningRateSchedule s(c->schedule_config());
  EXPECT_DOUBLE_EQ(s.at(1), 0.5e-3);                    // half way up the warmup
  EXPECT_DOUBLE_EQ(s.at(6), 1e-3 * (1 - 0.75 * 0.5));  // p = (6 - 2) / (10 - 2)
  EXPECT_DOUBLE_EQ(s.at(10), 0.25e-3);
}

TEST(TrainConfig, IniFileCommandLineOverridesAndRoundTrip) {
  TempDir dir("config");
  const std::string ini = (dir.path / "run.ini").string();
  std::ofstream(ini) << "output = /tmp/run\n[model]\nbase = /models/roberta\ntie_lm_head = true\n"
                        "[optimizer]\nname = nadam\nlr = 3e-5\n[task]\ned.batch = 512\n";
  const std::optional<TrainConfig> c =
      parse({"--config", ini, "--optimizer.lr", "5e-5", "--data.dir", "/data", "--optimizer.final=-0"});
  ASSERT_TRUE(c);
  EXPECT_EQ(c->output, "/tmp/run");
  EXPECT_EQ(c->base, "/models/roberta");
  EXPECT_TRUE(c->tie_lm_head);
  EXPECT_EQ(c->optimizer, "nadam");
  EXPECT_EQ(c->lr, 5e-5);  // the command line wins
  EXPECT_EQ(c->task[0].batch, 512);
  EXPECT_EQ(c->task[1].batch, 128);  // default
  EXPECT_EQ(c->data_dir, "/data");
  check_values(*c);

  // to_ini writes every key; reading it back gives the same configuration.
  const std::string text = to_ini(*c);
  EXPECT_NE(text.find("[optimizer]\nname = nadam\nlr = 5e-05\n"), std::string::npos) << text;
  const std::string again_path = (dir.path / "again.ini").string();
  std::ofstream(again_path) << text;
  const std::optional<TrainConfig> again = parse({"--config", again_path});
  ASSERT_TRUE(again);
  EXPECT_EQ(to_ini(*again), text);
  EXPECT_EQ(resume_mismatch(*again, text), "");
  TrainConfig other = *again;
  other.task[2].batch = 8;
  EXPECT_NE(resume_mismatch(other, text).find("task.rs.batch was 128 in the checkpoint's run and is 8 now"),
            std::string::npos);
  other = *again;
  other.steps = 10 * again->steps;  // a longer run may resume a shorter one
  other.tasks = "ed:2,qa:1,rs:1,cs:1";  // on another plan (and world size)
  other.micro_tokens = 100;             // in micro-batches
  EXPECT_EQ(resume_mismatch(other, text), "");
  // The decay's exemptions reach the optimizer: none unless asked (the runs before the key).
  EXPECT_EQ(again->optimizer_config().decay_exempt, DecayExempt::none);
  const std::optional<TrainConfig> exempt = parse({"--config", again_path, "--optimizer.decay_exempt", "bias_norm"});
  ASSERT_TRUE(exempt);
  EXPECT_EQ(exempt->optimizer_config().decay_exempt, DecayExempt::bias_norm);

  std::ostringstream help;
  const char* argv[] = {"qarac-train", "--help"};
  EXPECT_FALSE(parse_train_config(2, argv, help));
  for (const char* key : {"--optimizer.lr", "(=2e-05)", "--task.cs.batch", "--train.micro_tokens", "--parallel.tasks",
                          "--checkpoint.keep", "--model.share_encoder_base", "--resume"})
    EXPECT_NE(help.str().find(key), std::string::npos) << key;
}

// A run's config.ini reads back as its configuration in every mode (it leaves out the settings the
// mode refuses), and a checkpoint of the mode resumes under it. A folder given as --config is
// refused, not read as an empty file of defaults.
TEST(TrainConfig, RunConfigReadsBackInEveryMode) {
  TempDir dir("config-modes");
  const std::string path = (dir.path / "config.ini").string();
  const std::vector<std::vector<std::string>> runs = {
      {"--output", "/o", "--model.base", "/b", "--data.dir", "/d"},
      {"--output", "/o", "--model.base", "/b", "--data.dir", "/d", "--task.mlm.weight", "0.5"},
      {"--output", "/o", "--model.base", "/b", "--data.dir", "/d", "--task.qa.objective", "contrastive"},
      {"--output", "/o", "--model.mode", "mlm", "--model.tokenizer", "/t", "--data.dir", "/d"}};
  for (const std::vector<std::string>& args : runs) {
    const std::optional<TrainConfig> c = parse(args);
    ASSERT_TRUE(c);
    check_values(*c);
    const std::string text = to_ini(*c);
    std::ofstream(path) << text;
    const std::optional<TrainConfig> again = parse({"--config", path});
    ASSERT_TRUE(again);
    EXPECT_NO_THROW(check_values(*again)) << text;
    EXPECT_EQ(to_ini(*again), text);
    EXPECT_EQ(resume_mismatch(*again, text), "");
  }
  expect_input_error([&] { parse({"--config", dir.path.string()}); },
                     {"--config " + dir.path.string() + ": is a directory, not a file"});
}

// What --config may name and hold, from a hostile audit: before, a FIFO hung qarac-train deaf to
// SIGTERM, /dev/zero filled the memory, "flag =" read as true, a byte-order mark made "[train]"
// an invalid line that looked valid, and a NUL cut the message short of the key.
TEST(TrainConfig, AConfigFileIsAShortTextFile) {
  TempDir dir("config-files");
  const auto file = [&](const std::string& name, const std::string& text) {
    const std::string path = (dir.path / name).string();
    std::ofstream(path, std::ios::binary) << text;
    return path;
  };
  const std::string fifo = (dir.path / "fifo").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  for (const std::string& special : {fifo, std::string("/dev/zero")})
    expect_input_error([&] { parse({"--config", special}); },
                       {"--config " + special + ": not a regular file (a pipe, a device or a socket)"});
  const std::string big = file("big.ini", std::string((1 << 20) + 1, '#'));
  expect_input_error([&] { parse({"--config", big}); },
                     {"--config " + big + ": 1048577 bytes, more than an INI configuration holds (at most 1048576)"});
  const std::string empty_flag = file("flag.ini", "[train]\nsteps = 3\n[model]\nshare_encoder_base =\n");
  expect_input_error([&] { parse({"--config", empty_flag}); },
                     {empty_flag + ", line 4: model.share_encoder_base has no value (true or false)"});
  const std::string twice = file("twice.ini", "[train]\nsteps = 3\n[model]\nbase = /b\n[train]\nsteps = 4\n");
  expect_input_error([&] { parse({"--config", twice}); }, {twice + ", line 6: train.steps is set again (first on line 2)"});
  // A misspelt key set twice is said misspelt (before: "set again", and fixing that left the typo).
  const std::string typo = file("typo.ini", "[train]\nstep = 3\nstep = 4\n");
  expect_input_error([&] { parse({"--config", typo}); }, {typo + ", line 2: ", "train.step", "train.steps"});
  const std::string nul = file("nul.ini", std::string("[train]\nsteps = 3\0\n", 20));
  expect_input_error([&] { parse({"--config", nul}); }, {nul + ", line 2: holds a NUL byte"});
  const std::optional<TrainConfig> bom = parse({"--config", file("bom.ini", "\xEF\xBB\xBF[train]\nsteps = 7\n")});
  ASSERT_TRUE(bom);
  EXPECT_EQ(bom->steps, 7);
  const std::optional<TrainConfig> flag = parse({"--config", file("set.ini", "[model]\nshare_encoder_base = true\n")});
  ASSERT_TRUE(flag);
  EXPECT_TRUE(flag->share_encoder_base);
}

// config.ini writes paths absolute: read back from another directory (a resumed job's), the run
// finds the files it was given relative to where it started (before: the paths were kept as
// given, and resolved against the new directory).
TEST(TrainConfig, RunConfigPathsReadBackFromAnyDirectory) {
  TempDir dir("config-paths");
  const fs::path start = fs::current_path();
  fs::create_directories(dir.path / "first");
  fs::current_path(dir.path / "first");
  const std::optional<TrainConfig> c = parse({"--output", "run", "--model.base", "../base", "--data.dir", "data",
                                              "--eval.dir", "held out", "--eval.tokenizer", "/abs/tok"});
  ASSERT_TRUE(c);
  const std::string text = to_ini(*c);
  fs::current_path(dir.path);
  const std::string path = (dir.path / "config.ini").string();
  std::ofstream(path) << text;
  const std::optional<TrainConfig> again = parse({"--config", path});
  fs::current_path(start);
  ASSERT_TRUE(again);
  const std::string first = (dir.path / "first").string();
  EXPECT_EQ(again->output, first + "/run");
  EXPECT_EQ(again->base, first + "/../base");
  EXPECT_EQ(again->data_dir, first + "/data");
  EXPECT_EQ(again->eval_dir, first + "/held out");
  EXPECT_EQ(again->eval_tokenizer, "/abs/tok");
  EXPECT_EQ(again->tokenizer, "");  // unset stays unset
  EXPECT_EQ(to_ini(*again), text);
}

// A run's config.ini read back from a copy of its directory: its output names the original, which
// the copy's --resume would go on in (before: it did, pruning the original's checkpoints). The
// output must then come from the command line; the file read in place, or from a folder that is
// no run's, gives it as before.
TEST(TrainConfig, TheConfigIniOfACopiedRunNeedsAnOutput) {
  TempDir dir("config-copied-run");
  const fs::path original = dir.path / "run", copy = dir.path / "copy";
  const std::optional<TrainConfig> c = parse({"--output", original.string(), "--model.base", "/b", "--data.dir", "/d"});
  ASSERT_TRUE(c);
  for (const fs::path& folder : {original, copy}) {
    fs::create_directories(folder / "checkpoints");
    std::ofstream(folder / "config.ini") << to_ini(*c);
    std::ofstream(folder / kRunLockName) << "vm pid 1\n";
  }
  const std::string copied = (copy / "config.ini").string();
  expect_input_error([&] { parse({"--config", copied, "--resume"}); },
                     {"--config " + copied + " lies in the run directory " + copy.string() + ", but its output is " +
                          original.string(),
                      "give --output (" + copy.string() + " to go on in this one)"});
  const std::optional<TrainConfig> named = parse({"--config", copied, "--resume", "--output", copy.string()});
  ASSERT_TRUE(named);
  EXPECT_EQ(named->output, copy.string());
  const std::optional<TrainConfig> in_place = parse({"--config", (original / "config.ini").string(), "--resume"});
  ASSERT_TRUE(in_place);
  EXPECT_EQ(in_place->output, original.string());
  fs::remove(copy / kRunLockName);  // a configuration kept in a folder of its own (a project's checkpoints/)
  EXPECT_TRUE(parse({"--config", copied}));
}

// The documented example configurations stay valid: every key known, every value in range.
TEST(TrainConfig, ExampleConfigsParse) {
  int count = 0;
  for (const auto& entry : fs::directory_iterator(QARAC_CONFIGS_DIR)) {
    if (entry.path().extension() != ".ini") continue;
    SCOPED_TRACE(entry.path().string());
    std::optional<TrainConfig> c = parse({"--config", entry.path().string()});
    ASSERT_TRUE(c);
    // A launcher passes the run's paths on the command line (launch/quickstart.sh does).
    if (c->output.empty()) c->output = "/tmp/run";
    if (c->data_dir.empty()) c->data_dir = "/tmp/data";
    if (c->base.empty() && !c->pretraining()) c->base = "/tmp/base";
    if (c->tokenizer.empty() && c->pretraining()) c->tokenizer = "/tmp/tokenizer";
    if (c->eval_dir.empty() && c->eval_every > 0) c->eval_dir = "/tmp/heldout";
    check_values(*c);
    // As launch/forgetting.sh runs it: a constant rate, the template's `final = 0` kept.
    c->decay = "constant";
    check_values(*c);
    // As launch/scaling.sh runs it: no evaluation, the template's [eval] kept.
    std::optional<TrainConfig> timing = parse({"--config", entry.path().string(), "--output", "/tmp/run", "--data.dir",
                                               "/tmp/data", "--eval.every", "0", "--eval.dir", ""});
    ASSERT_TRUE(timing);
    if (!timing->pretraining()) timing->base = "/tmp/base";
    if (timing->pretraining() && timing->tokenizer.empty()) timing->tokenizer = "/tmp/tokenizer";
    check_values(*timing);
    ++count;
  }
  EXPECT_GE(count, 1);
}

// The optimizer's settings a mode ignores are refused only at a value other than the default:
// the defaults stand in the config.ini of every earlier run and in older templates, which
// --config must go on reading; another value means the user expected it to act.
TEST(TrainConfig, IgnoredOptimizerSettingsAreRefusedOnlyAwayFromTheirDefault) {
  std::optional<TrainConfig> c =
      parse({"--output", "/tmp/run", "--model.base", "/tmp/base", "--data.dir", "/tmp/data", "--optimizer.decay",
             "constant", "--optimizer.final", "0", "--optimizer.momentum_decay", "0.004",
             "--optimizer.decoupled_weight_decay", "true"});
  ASSERT_TRUE(c);
  EXPECT_NO_THROW(check_values(*c));
  c->decoupled_weight_decay = false;
  expect_input_error([&] { check_values(*c); }, {"optimizer.decoupled_weight_decay: has no effect with optimizer.name adamw"});
}

// A key the checkpoint's run did not have (an earlier build's) ran at its default: a resume that
// sets it otherwise says so like any other change.
TEST(TrainConfig, ResumeChangesCountAKeyTheCheckpointLacksAsItsDefault) {
  TrainConfig c;
  std::string saved = to_ini(c);
  const size_t at = saved.find("decay_exempt = none\n");
  ASSERT_NE(at, std::string::npos) << saved;
  saved.erase(at, std::string("decay_exempt = none\n").size());
  EXPECT_TRUE(resume_changes(c, saved).empty());
  c.decay_exempt = "bias_norm";
  EXPECT_EQ(resume_changes(c, saved), (std::vector<std::string>{"optimizer.decay_exempt none -> bias_norm"}));
}

// The masking probability shapes the masked-LM objective where one is trained: a resume that
// changes it says so, as it does for a rate (before: not a word); without rehearsal it has no
// effect in model.mode qarac, and fixes nothing.
TEST(TrainConfig, ResumeChangesSayAnotherMaskingWhereItActs) {
  TrainConfig c;
  c.task[static_cast<int>(data::Task::masked_lm)].weight = 0.5;
  const std::string saved = to_ini(c);
  c.mask_probability = 0.3;
  EXPECT_EQ(resume_changes(c, saved), (std::vector<std::string>{"model.mask_probability 0.15 -> 0.3"}));
  c.task[static_cast<int>(data::Task::masked_lm)].weight = 0;
  TrainConfig off;
  EXPECT_TRUE(resume_changes(c, to_ini(off)).empty());
}

// float32's range bounds the settings where the models compute in it, not in f64 runs (the CPU's
// reference precision), whose optimizer computes in double.
TEST(TrainConfig, Float32RangeChecksSpareF64Runs) {
  std::optional<TrainConfig> c = parse({"--output", "/tmp/run", "--model.base", "/tmp/base", "--data.dir", "/tmp/data",
                                        "--optimizer.eps", "1e-50"});
  ASSERT_TRUE(c);
  expect_input_error([&] { check_values(*c); }, {"optimizer.eps: 1e-50 is 0 in float32"});
  c->dtype = "f64";
  EXPECT_NO_THROW(check_values(*c));
}

TEST(TrainConfig, ValueErrorsNameTheKey) {
  TrainConfig c;
  c.output = "/tmp/x";
  c.base = "/b";
  c.data_dir = "/d";
  check_values(c);
  const auto expect_key = [&](const std::function<void(TrainConfig&)>& change, const std::string& key) {
    TrainConfig bad = c;
    change(bad);
    expect_input_error([&] { check_values(bad); }, {key});
  };
  expect_key([](TrainConfig& b) { b.lr = -1; }, "optimizer.lr");
  expect_key([](TrainConfig& b) { b.task[1].batch = 0; }, "task.qa.batch");
  // Typos, refused before they fill the memory or overflow a conversion.
  expect_key([](TrainConfig& b) { b.task[0].batch = 100000000; }, "task.ed.batch: 100000000 must lie between 1 and");
  expect_key([](TrainConfig& b) { b.bucket_mb = 1e-9; }, "parallel.bucket_mb");
  expect_key([](TrainConfig& b) { b.bucket_mb = 1e30; }, "parallel.bucket_mb");
  expect_key([](TrainConfig& b) { b.show_plan = 4294967297; }, "parallel.show_plan");
  expect_key([](TrainConfig& b) { b.micro_tokens = -2; }, "train.micro_tokens");
  expect_key([](TrainConfig& b) { b.qa_temperature = std::nan(""); }, "task.qa.temperature");
  expect_key(
      [](TrainConfig& b) {
        b.mode = "mlm";
        b.tokenizer = "/t";
        b.qa_objective = "contrastive";
        b.given.insert("task.qa.objective");
      },
      "task.qa.objective: has no effect with model.mode mlm");
  expect_key([](TrainConfig& b) { b.steps = 0; }, "train.steps");
  // More than a checkpoint may hold: its checkpoints would be refused by --resume.
  expect_key([](TrainConfig& b) { b.steps = 1000000001; }, "train.steps: 1000000001 must lie between 1 and 1000000000");
  expect_key([](TrainConfig& b) { b.optimizer = "sgd"; }, "optimizer.name");
  expect_key([](TrainConfig& b) { b.decay = "step"; }, "optimizer.decay");
  expect_key([](TrainConfig& b) { b.dtype = "bf16"; }, "train.dtype");
  expect_key([](TrainConfig& b) { b.device = "tpu"; }, "train.device");
  expect_key([](TrainConfig& b) { b.beta2 = 1; }, "optimizer.beta2");
  expect_key([](TrainConfig& b) { b.dropout = 1; }, "model.dropout");
  // Below 1, but 1 in the 16-bit dropout draws: refused here, not at the first step.
  expect_key([](TrainConfig& b) { b.dropout = 0.999999; }, "model.dropout");
  // Positive, but 0 in the draws: a run without the dropout it asks for.
  expect_key([](TrainConfig& b) { b.dropout = 1e-9; }, "model.dropout: 1e-09 rounds to 0");
  expect_key([](TrainConfig& b) { b.base.clear(); }, "model.base");
  expect_key([](TrainConfig& b) { b.output.clear(); }, "output");
}

// A value refused by check_values is named with the file and line that set it (before: the key
// alone, as if given on the command line); the command line's values and defaults are not.
TEST(TrainConfig, ValueErrorsOfTheConfigFileNameItsLine) {
  TempDir dir("config-lines");
  const std::string ini = (dir.path / "run.ini").string();
  std::ofstream(ini) << "output = /tmp/run\n[model]\nbase = /b\n[data]\ndir = /d\n[optimizer]\n"
                        "lr = -3e-5\n[task]\nqa.batch = 0\n";
  // check_values' message ("" when it accepts the configuration).
  const auto refusal = [](const TrainConfig& config) -> std::string {
    try {
      check_values(config);
    } catch (const InputError& e) {
      return e.what();
    }
    return "";
  };
  std::optional<TrainConfig> c = parse({"--config", ini});
  ASSERT_TRUE(c);
  expect_input_error([&] { check_values(*c); }, {ini + ", line 7: optimizer.lr"});
  c = parse({"--config", ini, "--optimizer.lr", "-1"});
  ASSERT_TRUE(c);
  EXPECT_EQ(refusal(*c).rfind("optimizer.lr: ", 0), 0u) << refusal(*c);  // no file named
  c = parse({"--config", ini, "--optimizer.lr", "1e-4"});
  ASSERT_TRUE(c);
  expect_input_error([&] { check_values(*c); }, {ini + ", line 9: task.qa.batch: 0 must lie between"});
  // Settings a mode ignores are said at once, each with its line.
  const std::string sizes = (dir.path / "sizes.ini").string();
  std::ofstream(sizes) << "output = /tmp/run\n[model]\nbase = /b\nlayers = 3\nhidden = 32\n[data]\ndir = /d\n";
  c = parse({"--config", sizes});
  ASSERT_TRUE(c);
  expect_input_error([&] { check_values(*c); }, {sizes + ", line 5: model.hidden: has no effect",
                                                "; model.layers (" + sizes + ", line 4): has no effect"});
  c = parse({"--config", ini, "--optimizer.lr", "1e-4"});
  ASSERT_TRUE(c);
  // Messages that name their key as an option (the task plan's) too.
  EXPECT_EQ(std::string(with_config_line(*c, InputError("--task.qa.batch: x")).what()), ini + ", line 9: --task.qa.batch: x");
  EXPECT_EQ(std::string(with_config_line(*c, InputError("--train.steps: x")).what()), "--train.steps: x");
  // The key a message is about comes first: one of the command line is named without the file,
  // though the message quotes a key of the file.
  const std::string steps = (dir.path / "steps.ini").string();
  std::ofstream(steps) << "output = /tmp/run\n[model]\nbase = /b\n[data]\ndir = /d\n[train]\nsteps = 10\n";
  c = parse({"--config", steps, "--optimizer.warmup", "10"});
  ASSERT_TRUE(c);
  EXPECT_EQ(refusal(*c).rfind("optimizer.warmup: 10 steps is not shorter than the run (train.steps 10)", 0), 0u)
      << refusal(*c);
}

// Data longer than the models read: a new mlm model's positions are a setting (model.max_positions),
// a base's and a checkpoint's are not.
TEST(TrainConfig, TooLongDataIsToldWhatFixesIt) {
  TrainConfig c;
  EXPECT_EQ(c.too_long_remedy(128), "rerun qarac-prep with --max-length 128");
  c.mode = "mlm";
  EXPECT_EQ(c.too_long_remedy(128),
            "rerun qarac-prep with --max-length 128, or raise model.max_positions from 130 to the longest sequence + 2");
  c.resume = true;  // the checkpoint fixes the sizes
  EXPECT_EQ(c.too_long_remedy(128), "rerun qarac-prep with --max-length 128");
  c.resume = false;
  c.base = "/b";
  EXPECT_EQ(c.too_long_remedy(510), "rerun qarac-prep with --max-length 510");
}

// The one reading of INI text behind config.ini's comparisons and the line numbers of errors.
TEST(TrainConfig, IniEntriesAreReadAsTheOptionParserReadsThem) {
  const std::vector<IniEntry> e =
      ini_entries("# lr = 9\nlr = 1\n[optimizer]\n  warmup =  10 \r\n; x = 2\n[ train ]\nsteps=5\nno setting\n");
  ASSERT_EQ(e.size(), 3u);
  const std::tuple<const char*, const char*, int> expected[] = {
      {"lr", "1", 2}, {"optimizer.warmup", "10", 4}, {"train.steps", "5", 7}};
  for (size_t i = 0; i < e.size(); ++i) {
    EXPECT_EQ(e[i].key, std::get<0>(expected[i]));
    EXPECT_EQ(e[i].value, std::get<1>(expected[i]));
    EXPECT_EQ(e[i].line, std::get<2>(expected[i]));
  }
}

// Rehearsal's options: off by default; its other settings, and model.mask_probability, have no
// effect while it is off and are refused then; none in model.mode mlm.
TEST(TrainConfig, RehearsalOptionsAreCheckedAndRefusedWhileOff) {
  TrainConfig c;
  c.output = "/tmp/x";
  c.base = "/b";
  c.data_dir = "/d";
  EXPECT_FALSE(c.rehearsal());
  EXPECT_EQ(c.task_weight(Task::masked_lm), 0.0);
  const auto with = [&](std::initializer_list<std::string> given, const std::function<void(TrainConfig&)>& change) {
    TrainConfig d = c;
    d.given.insert(given.begin(), given.end());
    change(d);
    return d;
  };
  for (const char* key : {"task.mlm.batch", "task.mlm.head", "model.mask_probability"}) {
    const TrainConfig off = with({key}, [](TrainConfig&) {});
    expect_input_error([&] { check_values(off); }, {key, "has no effect while task.mlm.weight is 0 (rehearsal off)"});
  }
  const TrainConfig on = with({"task.mlm.weight", "task.mlm.batch", "task.mlm.head", "model.mask_probability"},
                              [](TrainConfig& d) {
                                d.task[static_cast<int>(Task::masked_lm)] = {0.5, 16};
                                d.mlm_head = "trained";
                                d.mask_probability = 0.2;
                              });
  EXPECT_TRUE(on.rehearsal());
  check_values(on);
  TrainConfig bad = on;
  bad.mlm_head = "thawed";
  expect_input_error([&] { check_values(bad); }, {"task.mlm.head", "thawed", "frozen or trained"});
  bad = on;
  bad.mask_probability = 1;
  expect_input_error([&] { check_values(bad); }, {"model.mask_probability", "(0, 1)"});
  // Below the step of the masking draws: it would mask 2^-24 of the tokens, far more than asked.
  bad.mask_probability = 1e-300;
  expect_input_error([&] { check_values(bad); }, {"model.mask_probability: 1e-300 is below 2^-24"});
  bad.mask_probability = 0x1p-24;
  check_values(bad);
  bad = on;
  bad.task[static_cast<int>(Task::masked_lm)].batch = 0;
  expect_input_error([&] { check_values(bad); }, {"task.mlm.batch"});
  bad = c;
  bad.task[static_cast<int>(Task::masked_lm)].weight = -1;
  expect_input_error([&] { check_values(bad); }, {"task.mlm.weight", ">= 0"});
  TrainConfig mlm_mode = with({"task.mlm.weight"}, [](TrainConfig& d) {
    d.mode = "mlm";
    d.tokenizer = "/t";
    d.task[static_cast<int>(Task::masked_lm)].weight = 1;
  });
  EXPECT_FALSE(mlm_mode.rehearsal());
  expect_input_error([&] { check_values(mlm_mode); }, {"task.mlm.weight", "has no effect with model.mode mlm"});
  mlm_mode.given = {"task.mlm.head"};
  expect_input_error([&] { check_values(mlm_mode); }, {"task.mlm.head", "has no effect with model.mode mlm"});
}

// Rehearsal may not be turned on or off at a resume: a run without it holds no cursor of its
// stream, one with it a cursor (and, trained, a head) that would be dropped. Checkpoints from
// before rehearsal existed (no task.mlm keys) resume with it off.
TEST(TrainConfig, ResumeKeepsRehearsalOnOrOff) {
  TrainConfig off;
  off.output = "/tmp/x";
  off.base = "/b";
  off.data_dir = "/d";
  TrainConfig on = off;
  on.task[static_cast<int>(Task::masked_lm)].weight = 1;
  const std::string off_text = to_ini(off), on_text = to_ini(on);
  std::string old_text;  // to_ini of a build before rehearsal: without the task.mlm lines
  std::istringstream lines(off_text);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("mlm.", 0) != 0) old_text += line + "\n";
  ASSERT_EQ(old_text.find("mlm."), std::string::npos);
  EXPECT_EQ(resume_mismatch(off, old_text), "");
  EXPECT_EQ(resume_mismatch(off, off_text), "");
  EXPECT_EQ(resume_mismatch(on, on_text), "");
  for (const std::string& saved : {old_text, off_text})
    EXPECT_NE(resume_mismatch(on, saved).find("task.mlm.weight: rehearsal was off in the checkpoint's run and is on"),
              std::string::npos);
  EXPECT_NE(resume_mismatch(off, on_text).find("task.mlm.weight: rehearsal was on in the checkpoint's run and is off"),
            std::string::npos);
  // A saved weight that is no number is named, not thrown at as an internal error.
  std::string garbled = on_text;
  garbled.replace(garbled.find("mlm.weight = 1"), 14, "mlm.weight = x");
  EXPECT_EQ(resume_mismatch(on, garbled), "task.mlm.weight is 'x' in the checkpoint's run, not a number");
  TrainConfig other = on;
  other.task[static_cast<int>(Task::masked_lm)].weight = 0.25;  // a weight may change, as every task's
  EXPECT_EQ(resume_mismatch(other, on_text), "");
  other.task[static_cast<int>(Task::masked_lm)].batch = 16;
  EXPECT_NE(resume_mismatch(other, on_text).find("task.mlm.batch was 128"), std::string::npos);
  other = on;
  other.mlm_head = "trained";
  EXPECT_NE(resume_mismatch(other, on_text).find("task.mlm.head was frozen"), std::string::npos);
  other = off;
  other.task[static_cast<int>(Task::masked_lm)].batch = 16;  // no effect while off: not compared
  EXPECT_EQ(resume_mismatch(other, old_text), "");
}

// ---- qarac-train ---------------------------------------------------------------------------------

using qarac::test_support::CliResult;
using qarac::test_support::run_command;
using qarac::test_support::TrainCli;

TEST_F(TrainCli, BadOptionsExit2WithOneLineAndWriteNothing) {
  expect_usage_error("--optimizer.no_such_key 1", {"optimizer.no_such_key"});
  expect_usage_error("--optimizer.lr fast", {"optimizer.lr", "fast"});
  expect_usage_error("--optimizer.lr=-1e-5", {"optimizer.lr", "-1e-05"});
  expect_usage_error("--task.qa.batch 0", {"task.qa.batch"});
  // Removed keys say what replaced them, on the command line and in a file.
  expect_usage_error("--task.qa.tokens 160", {"task.qa.tokens: removed", "task.qa.batch", "train.micro_tokens"});
  expect_usage_error("--task.ed.examples 4", {"task.ed.examples: removed", "task.ed.batch"});
  expect_usage_error("--parallel.simulate_world 2", {"parallel.simulate_world: removed", "W = 1"});
  for (const char* timeout : {"inf", "1e10", "nan", "0"})
    expect_usage_error(std::string("--parallel.timeout ") + timeout, {"parallel.timeout", "at most 1e7 seconds"});
  expect_usage_error("--train.steps 0", {"train.steps"});
  expect_usage_error("--parallel.tasks ed:1,qa:1", {"--parallel.tasks", "rs"});
  expect_usage_error("--parallel.backend gloo", {"parallel.backend", "gloo"});
  expect_usage_error("--parallel.backend nccl", {"parallel.backend", "train.device cpu"});
  expect_usage_error("--parallel.timeout 0", {"parallel.timeout"});
  expect_usage_error("--parallel.timeout 0.5", {"parallel.timeout: 0.5 must be at least 1 and at most 1e7 seconds"});
  expect_usage_error("--parallel.bucket_mb -1", {"parallel.bucket_mb"});
  expect_usage_error("--train.dtype f64 --train.device cuda", {"train.dtype", "f64"});
  expect_usage_error("--model.base " + (root() / "nothing").string(), {(root() / "nothing").string()});
  expect_usage_error("--eval.dir " + (root() / "no-eval").string(), {(root() / "no-eval").string()});

  // A data directory that lacks one task's file: the error names that file.
  const fs::path partial = root() / "partial";
  fs::create_directories(partial);
  for (const char* f : {"encode_decode.h5", "question_answering.h5", "consistency.h5"})
    fs::copy_file(root() / "data" / f, partial / f, fs::copy_options::overwrite_existing);
  expect_usage_error("--data.dir " + partial.string(), {"reasoning.h5"});

  // Errors in the INI file name the file and the key.
  const fs::path ini = root() / "bad.ini";
  std::ofstream(ini) << "[optimizer]\nlr = 1e-5\nwarmpu = 10\n";
  expect_usage_error("--config " + ini.string(), {ini.string(), "optimizer.warmpu"});
  std::ofstream(ini) << "[checkpoint]\nevery = often\n";
  expect_usage_error("--config " + ini.string(), {ini.string(), "checkpoint.every"});
  expect_usage_error("--config " + (root() / "missing.ini").string(), {"missing.ini"});
  std::ofstream(ini) << "[task]\ncs.tokens = 1024\n";
  expect_usage_error("--config " + ini.string(), {ini.string(), "task.cs.tokens: removed", "task.cs.batch"});

  // A fresh run refuses a directory that is not empty; --resume needs a run's directory.
  const fs::path used = root() / "used";
  fs::create_directories(used);
  std::ofstream(used / "notes.txt") << "another run\n";
  const CliResult r = train(used, "");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("not empty"), std::string::npos) << r.output;
  const CliResult resume = train(used, "--resume");
  EXPECT_EQ(resume.code, 2) << resume.output;
  EXPECT_NE(resume.output.find("is not a run directory"), std::string::npos) << resume.output;
  EXPECT_EQ(fs::directory_iterator(used)->path().filename(), "notes.txt");
  // Checkpoints of the per-rank layout of earlier versions are refused in one line.
  for (const char* old : {"rank-0", "checkpoint-0000000002.h5"}) {
    const fs::path run = root() / "old-layout";
    fs::remove_all(run);
    fs::create_directories(run / "checkpoints" / old);
    const CliResult refused = train(run, "--resume");
    EXPECT_EQ(refused.code, 2) << refused.output;
    EXPECT_NE(refused.output.find(std::string("holds ") + old + ", a checkpoint of the per-rank layout"),
              std::string::npos)
        << refused.output;
    EXPECT_EQ(refused.output.find('\n'), refused.output.size() - 1) << refused.output;
  }

  // The distributed tests' fault hook refuses what it cannot read.
  const CliResult fault = run_command("QARAC_FAULT=explode:1:2 " + std::string(QARAC_TRAIN_EXE) + " --output " +
                                      (root() / "never").string() + " --model.base " + (root() / "base").string() +
                                      " --data.dir " + (root() / "data").string());
  EXPECT_EQ(fault.code, 2) << fault.output;
  EXPECT_NE(fault.output.find("QARAC_FAULT: unknown kind 'explode'"), std::string::npos) << fault.output;
}

namespace {

std::vector<nlohmann::json> read_jsonl(const fs::path& path) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

}  // namespace

// A few steps on CPU write config.ini, one metrics line per step with the documented keys,
// checkpoints and an export per model; the NAdam optimizer runs the same loop.
// A loss that overflows stops the run at the step it happens, with one line and status 2, before
// the update: a huge task weight makes the gradients infinite.
TEST_F(TrainCli, OverflowingGradientsStopTheRunWithOneLine) {
  const fs::path out = root() / "overflow";
  const CliResult r = train(out, "--task.ed.weight 3e38 --train.steps 3");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("qarac-train: error: step 1: the gradient norm is "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("the step was not applied"), std::string::npos) << r.output;
  expect_usage_error("--task.ed.weight inf", {"task.ed.weight", "not a finite number"});
  expect_usage_error("--optimizer.weight_decay inf", {"optimizer.weight_decay", "not a finite number"});
}

// Models that give NaN on held-out data end the run at that evaluation, with one line naming the
// metrics, and leaves no best/ and no export: a base whose finite LayerNorm weights overflow every
// forward pass (loading accepts it: each weight is finite) fails its step-0 evaluation (before:
// the NaN vectors ranked each answer first, qa.selection_mrr 1, which eval.best exported).
TEST_F(TrainCli, AnEvaluationThatIsNotFiniteEndsTheRun) {
  const fs::path base = root() / "overflowing-base", out = root() / "nan-evaluation";
  fs::copy(root() / "base", base, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  TensorMap weights = io::read_safetensors((base / "model.safetensors").string());
  int scaled = 0;
  for (auto& [name, tensor] : weights)
    if (name.find("embeddings.LayerNorm.weight") != std::string::npos) {
      tensor = Tensor::from_vector(std::vector<float>(static_cast<size_t>(tensor.numel()), 1e30f), tensor.shape());
      ++scaled;
    }
  ASSERT_EQ(scaled, 1);
  io::write_safetensors((base / "model.safetensors").string(), weights);
  const CliResult r = train(out, "--model.base " + base.string() + " --train.steps 2 --eval.examples 8 --eval.dir " +
                                     (root() / "data").string() + " --eval.best qa.selection_mrr");
  EXPECT_EQ(r.code, 2) << r.output;
  for (const char* part : {"qarac-train: error: evaluation at step 0: ", "qa.selection_mrr", "qa.loss",
                           "are not finite: the models give NaN or infinity on held-out data (check "})
    EXPECT_NE(r.output.find(part), std::string::npos) << part << " in:\n" << r.output;
  EXPECT_EQ(r.output.find("cs.confusion"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out)) << "a run that ended before its first step leaves nothing";
}

// A moment estimate that overflowed stops the run at the checkpoint, which would hold it (before:
// written, the parameters it froze trained no more, and the checkpoint's own --resume refused
// it): NAdam's coupled weight decay of 1e30 makes the second moments infinite, though every loss
// and gradient norm stays finite.
TEST_F(TrainCli, AMomentThatOverflowedIsNeverCheckpointed) {
  const fs::path out = root() / "moment-overflow";
  const CliResult r = train(out, "--optimizer.name nadam --optimizer.decoupled_weight_decay false "
                                 "--optimizer.weight_decay 1e30 --train.steps 3 --checkpoint.every 2");
  EXPECT_EQ(r.code, 2) << r.output;
  for (const char* part : {"qarac-train: error: checkpoint at step 2: tensor 'optimizer/v/",
                           "holds a non-finite value", "an optimizer update overflowed (check "})
    EXPECT_NE(r.output.find(part), std::string::npos) << part << " in:\n" << r.output;
  EXPECT_FALSE(fs::exists(out / "checkpoints" / "step-0000000002"));
  EXPECT_FALSE(fs::exists(out / "export"));
}

// --parallel.show_plan W: the plan of W ranks with each rank's expected share, and no run: the
// shares follow the FLOP model (ED runs its text through AE and D with the LM head: the costliest
// task on these streams, so auto gives it the fifth rank of five).
TEST_F(TrainCli, ShowPlanPrintsThePlanOfAnyWorldSizeAndTrainsNothing) {
  const fs::path out = root() / "plan-only";
  const CliResult r = train(out, "--parallel.show_plan 5");
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* part : {"task plan: 5 ranks", "encode_decode (ed)       0-1", "expected share of the step",
                           "rank 4", "GFLOP per step"})
    EXPECT_NE(r.output.find(part), std::string::npos) << part << ":\n" << r.output;
  EXPECT_FALSE(fs::exists(out)) << "show_plan created the output directory";
  expect_usage_error("--parallel.show_plan -1", {"parallel.show_plan", "-1"});
}

TEST_F(TrainCli, ShortRunWritesMetricsCheckpointsAndExports) {
  const fs::path out = root() / "short";
  const CliResult r = train(out, "--train.steps 3 --optimizer.warmup 2 --checkpoint.every 2 --checkpoint.keep 5"
                                 " --eval.every 2"
                                 " --eval.examples 16 --eval.decoded 2 --eval.dir " + (root() / "data").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("task plan: 1 rank"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("step 3/3"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::is_regular_file(out / "config.ini"));
  std::smatch counted;
  ASSERT_TRUE(std::regex_search(r.output, counted, std::regex("qarac-train: ([0-9]+) parameters"))) << r.output;
  const uint64_t parameter_count = std::stoull(counted[1].str());
  EXPECT_NE(r.output.find("the steps' memory peaks: host tensors "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("; rank 0 over the whole run (its evaluations, checkpoints and export included): host "
                          "tensors "),
            std::string::npos)
      << r.output;

  // Evaluations (before training, at step 2 and at the end) carry "eval": true.
  std::vector<nlohmann::json> lines, evals;
  for (nlohmann::json& line : read_jsonl(out / "metrics.jsonl"))
    (line.value("eval", false) ? evals : lines).push_back(std::move(line));
  ASSERT_EQ(evals.size(), 3u);
  const int64_t eval_steps[] = {0, 2, 3};
  for (size_t i = 0; i < evals.size(); ++i) {
    EXPECT_EQ(evals[i].at("step").get<int64_t>(), eval_steps[i]);
    EXPECT_TRUE(evals[i].contains("qa.retrieval_accuracy")) << evals[i].dump();
  }
  ASSERT_EQ(lines.size(), 3u);
  for (size_t i = 0; i < lines.size(); ++i) {
    const nlohmann::json& line = lines[i];
    EXPECT_EQ(line.at("step").get<int64_t>(), static_cast<int64_t>(i + 1));
    for (const char* key : {"world_size", "lr", "grad_norm", "loss_weighted", "global_tokens", "global_examples",
                            "global_tokens_per_s", "global_examples_per_s", "step_time_s", "data_time_s",
                            "compute_time_s", "comm_wait_s", "comm_wait_max_s", "elapsed_s", "slowest_rank",
                            "slowest_rank_compute_s", "host_tensors_peak_bytes", "node_host_tensors_peak_bytes"})
      EXPECT_TRUE(line.contains(key)) << key << " missing from " << line.dump();
    // One rank, so the node's peak is its own; more than the models and their moments hold.
    EXPECT_EQ(line.at("node_host_tensors_peak_bytes"), line.at("host_tensors_peak_bytes"));
    EXPECT_GT(line.at("host_tensors_peak_bytes").get<uint64_t>(), 3 * 4 * parameter_count);
    EXPECT_FALSE(line.contains("gpu_tensors_peak_bytes")) << "a CPU run";
    EXPECT_EQ(line.at("slowest_rank").get<int>(), 0);
    EXPECT_EQ(line.at("global_examples").get<int64_t>(), 4 * 8);  // every task's global batch
    for (const char* task : {"encode_decode", "question_answering", "reasoning", "consistency"}) {
      const double loss = line.at("loss").at(task).get<double>();
      EXPECT_TRUE(std::isfinite(loss) && loss >= 0) << task << ": " << loss;
      const double compute = line.at("task_compute_max_s").at(task).get<double>();
      EXPECT_TRUE(compute > 0 && compute <= line.at("compute_time_s").get<double>()) << task << ": " << compute;
    }
    EXPECT_GT(line.at("grad_norm").get<double>(), 0);
  }
  EXPECT_EQ(lines[0].at("lr").get<double>(), 0.0);  // warmup from 0
  EXPECT_DOUBLE_EQ(lines[1].at("lr").get<double>(), 0.5e-3);

  std::set<std::string> checkpoints;
  for (const auto& e : fs::directory_iterator(out / "checkpoints")) checkpoints.insert(e.path().filename());
  EXPECT_EQ(checkpoints, (std::set<std::string>{"step-0000000002", "step-0000000003"}));
  // One file per model group, each holding that group's weights and the global state.
  std::set<std::string> parts;
  for (const auto& e : fs::directory_iterator(out / "checkpoints" / "step-0000000003"))
    parts.insert(e.path().filename());
  EXPECT_EQ(parts, (std::set<std::string>{"question_encoder.h5", "answer_encoder.h5", "decoder.h5"}));
  for (const char* model : {"question_encoder", "answer_encoder", "decoder"}) {
    EXPECT_TRUE(fs::is_regular_file(out / "export" / model / "config.json")) << model;
    EXPECT_TRUE(fs::is_regular_file(out / "export" / model / "model.safetensors")) << model;
  }

  const fs::path nadam = root() / "nadam";
  const CliResult n = train(nadam, "--train.steps 2 --optimizer.name nadam --parallel.tasks ed:1,qa:1,rs:1,cs:1");
  ASSERT_EQ(n.code, 0) << n.output;
  EXPECT_EQ(read_jsonl(nadam / "metrics.jsonl").size(), 2u);
}

namespace {

// The three exported models of runs `a` and `b` hold the same tensors, bit for bit.
void expect_identical_exports(const fs::path& a, const fs::path& b) {
  for (const char* model : {"question_encoder", "answer_encoder", "decoder"}) {
    SCOPED_TRACE(model);
    const TensorMap ta = io::read_safetensors((a / "export" / model / "model.safetensors").string());
    const TensorMap tb = io::read_safetensors((b / "export" / model / "model.safetensors").string());
    ASSERT_EQ(ta.size(), tb.size());
    for (const auto& [name, tensor] : ta) {
      ASSERT_TRUE(tb.count(name)) << name;
      EXPECT_EQ(tensor.to_vector<float>(), tb.at(name).to_vector<float>()) << name;
    }
  }
}

// qarac-eval run as `command`: refused with exit 2 and one line, "qarac-eval: error: ...", that
// names every one of `parts`.
void expect_eval_refused(const std::string& command, const std::vector<std::string>& parts) {
  const CliResult r = run_command(command);
  EXPECT_EQ(r.code, 2) << command << ": " << r.output;
  EXPECT_EQ(r.output.find("qarac-eval: error: "), 0u) << r.output;
  EXPECT_EQ(r.output.find('\n'), r.output.size() - 1) << r.output;  // one line
  for (const std::string& p : parts) EXPECT_NE(r.output.find(p), std::string::npos) << p << ": " << r.output;
}

}  // namespace

// The invariant of checkpoints: N steps straight, or N/2, then --resume for the rest, end with
// the same parameters, bit for bit (CPU), with dropout on so that the random streams must resume
// too.
TEST_F(TrainCli, ResumedRunIsBitIdenticalToAStraightOne) {
  const std::string common = "--model.dropout 0.1 --optimizer.name nadam --checkpoint.every 0 ";
  const fs::path straight = root() / "straight", split = root() / "split";
  const CliResult a = train(straight, common + "--train.steps 4");
  ASSERT_EQ(a.code, 0) << a.output;
  const CliResult b1 = train(split, common + "--train.steps 2");
  ASSERT_EQ(b1.code, 0) << b1.output;
  const CliResult b2 = train(split, common + "--train.steps 4 --resume");
  ASSERT_EQ(b2.code, 0) << b2.output;
  EXPECT_NE(b2.output.find("resuming from"), std::string::npos) << b2.output;

  const std::vector<nlohmann::json> la = read_jsonl(straight / "metrics.jsonl"),
                                    lb = read_jsonl(split / "metrics.jsonl");
  ASSERT_EQ(la.size(), 4u);
  ASSERT_EQ(lb.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(la[i].at("loss"), lb[i].at("loss")) << "step " << i + 1;

  expect_identical_exports(straight, split);
}

// The same run writes the same bytes (checkpoints, exports and their model cards) into any run
// directory, killed and resumed or not: checksums of two runs' files tell whether they computed
// the same. Before, every HDF5 group recorded the second it was made and the stored settings named
// the run directory.
TEST_F(TrainCli, RunsWriteTheSameBytesInAnyDirectory) {
  const std::string args = "--model.dropout 0.1 --train.steps 4 --checkpoint.every 2 --checkpoint.keep 0";
  const fs::path straight = root() / "bytes_straight", killed = root() / "bytes_killed";
  const CliResult a = train(straight, args);
  ASSERT_EQ(a.code, 0) << a.output;
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // HDF5's times count seconds
  const CliResult b1 = train(killed, args, "QARAC_FAULT=kill:0:3");  // after the checkpoint at step 2
  ASSERT_NE(b1.code, 0) << b1.output;
  const CliResult b2 = train(killed, args + " --resume");
  ASSERT_EQ(b2.code, 0) << b2.output;
  EXPECT_NE(b2.output.find("resuming from"), std::string::npos) << b2.output;

  size_t compared = 0;
  for (const char* folder : {"checkpoints", "export"})
    for (const fs::directory_entry& e : fs::recursive_directory_iterator(straight / folder)) {
      if (!e.is_regular_file()) continue;
      const fs::path relative = fs::relative(e.path(), straight);
      EXPECT_TRUE(test_support::read_text(e.path()) == test_support::read_text(killed / relative))
          << relative << " differs";
      ++compared;
    }
  EXPECT_GE(compared, 6u + 3u);  // two checkpoints of three parts, three model cards and more
}

// qarac-eval on a run's exports, with the run's evaluation settings and the same BLAS, gives its
// last evaluation bit for bit: the figures are the evaluator's, of the models the run exported.
// What it cannot evaluate is one line naming the folder or file.
TEST_F(TrainCli, QaracEvalGivesTheRunsLastEvaluation) {
  const fs::path run = root() / "evaluated", data = root() / "data";
  const std::string tokenizer = test_support::kSample + "tokenizer";
  const CliResult trained = train(run, "--train.steps 2 --train.seed 3 --eval.dir " + data.string() + " --eval.tokenizer " +
                                           tokenizer + " --eval.examples 24 --eval.batch 8 --eval.decoded 4");
  ASSERT_EQ(trained.code, 0) << trained.output;
  const std::string eval = std::string(QARAC_EVAL_EXE) + " --models ", exports = (run / "export").string();
  const std::string same =
      " --data " + data.string() + " --examples 24 --batch 8 --decoded 4 --seed 3 --base " + (root() / "base").string();
  // To files: standard error may say which OPENBLAS_CORETYPE this CPU's own kernels are.
  const std::string json_file = (root() / "evaluated.json").string(), lines_file = (root() / "lines.txt").string();
  const CliResult evaluated = run_command(eval + exports + same + " --json --output " + json_file);
  ASSERT_EQ(evaluated.code, 0) << evaluated.output;
  const nlohmann::json got = nlohmann::json::parse(test_support::read_text(json_file));
  nlohmann::json last = read_jsonl(run / "metrics.jsonl").back();
  ASSERT_TRUE(last.value("eval", false)) << last;
  for (const char* key : {"eval", "evaluation", "step"}) last.erase(key);
  EXPECT_EQ(got, last);
  EXPECT_TRUE(got.contains("forgetting.mlm_loss") && got.contains("qa.selection_mrr") &&
              got.contains("rs.token_accuracy"))
      << got;

  // Text lines, one per metric; without --base no forgetting monitor.
  const CliResult lines = run_command(eval + exports + " --data " + data.string() + " --output " + lines_file);
  ASSERT_EQ(lines.code, 0) << lines.output;
  const std::string text = test_support::read_text(lines_file);
  EXPECT_EQ(text.rfind("cs.accuracy 0.", 0), 0u) << text;  // the first of the sorted names
  EXPECT_EQ(text.find("forgetting"), std::string::npos) << text;

  const auto expect_refused = [&](const std::string& args, const std::vector<std::string>& parts) {
    expect_eval_refused(eval + args, parts);
  };
  const std::string on_data = " --data " + data.string();
  expect_refused(run.string() + on_data, {run.string() + ": has no question_encoder/"});
  expect_refused(exports + "/decoder" + on_data, {"has no question_encoder/"});
  expect_refused(exports + on_data + " --seed 3", {"--seed", "--base"});
  expect_refused(exports + " --data " + (data / "consistency.h5").string(), {"consistency.h5: is not a directory"});
  expect_refused(exports + on_data + " --base " + tokenizer, {tokenizer + ": config.json is missing"});
  // Streams of another tokenizer would be read as other words.
  const fs::path other = root() / "other_tokenizer";
  const CliResult prep = run_command(std::string(QARAC_PREP_EXE) + " --tokenizer " + QARAC_SOURCE_DIR +
                                     "/tests/data/tokenizer --out " + other.string() + " --text " +
                                     test_support::kSample + "corpus_heldout.txt");
  ASSERT_EQ(prep.code, 0) << prep.output;
  expect_refused(exports + " --data " + other.string(),
                 {(other / "encode_decode.h5").string() + ": made with tokenizer", "but the models (" + exports + ")"});
}

// qarac-eval with the settings the test above leaves out: a run whose evaluation passes were
// capped by train.micro_tokens (--micro-tokens) gives its last evaluation bit for bit, --decoded
// takes "all", its --help default; refused: a negative --seed (no run has one), an --output in the
// base's folder or one that cannot be written (said before the evaluation, which may take hours;
// it was said after it, so that here the data's error came first), and two runs' exports put
// together.
TEST_F(TrainCli, QaracEvalFollowsEveryEvaluationSettingAndRefusesWhatIsNotOneRuns) {
  const fs::path run = root() / "capped", other = root() / "other-run", data = root() / "data";
  const std::string settings = " --eval.dir " + data.string() + " --eval.tokenizer " + test_support::kSample +
                               "tokenizer --eval.examples 24 --eval.batch 8 --eval.decoded 4";
  const CliResult trained = train(run, "--train.steps 2 --train.micro_tokens 130" + settings);
  ASSERT_EQ(trained.code, 0) << trained.output;
  const CliResult trained_other = train(other, "--train.steps 1 --optimizer.warmup 0" + settings);
  ASSERT_EQ(trained_other.code, 0) << trained_other.output;
  const std::string eval = std::string(QARAC_EVAL_EXE) + " --models ", exports = (run / "export").string();
  const std::string same =
      " --data " + data.string() + " --examples 24 --batch 8 --decoded 4 --json --base " + (root() / "base").string();
  nlohmann::json last = read_jsonl(run / "metrics.jsonl").back();
  for (const char* key : {"eval", "evaluation", "step"}) last.erase(key);
  const std::string file = (root() / "capped.json").string();  // standard error may hold a warning
  const CliResult capped = run_command(eval + exports + same + " --micro-tokens 130 --output " + file);
  ASSERT_EQ(capped.code, 0) << capped.output;
  EXPECT_EQ(nlohmann::json::parse(test_support::read_text(file)), last);
  // Uncapped, the passes are others, and so are the losses' last bits: the cap mattered.
  const CliResult uncapped = run_command(eval + exports + same + " --output " + file);
  ASSERT_EQ(uncapped.code, 0) << uncapped.output;
  EXPECT_NE(nlohmann::json::parse(test_support::read_text(file)), last);
  const CliResult all = run_command(eval + exports + " --data " + data.string() + " --examples 4 --decoded all");
  EXPECT_EQ(all.code, 0) << all.output;
  EXPECT_NE(all.output.find("ed.token_accuracy "), std::string::npos) << all.output;

  const auto expect_refused = [&](const std::string& args, const std::vector<std::string>& parts) {
    expect_eval_refused(eval + args, parts);
  };
  const std::string on_data = " --data " + data.string();
  expect_refused(exports + on_data + " --decoded -1", {"--decoded", "'-1'", "or all"});
  expect_refused(exports + on_data + " --base " + (root() / "base").string() + " --seed -1", {"--seed", "-1"});
  expect_refused(exports + on_data + " --output ''", {"--output is empty"});
  // The base is a model folder too: its config.json was replaced by the metrics.
  const fs::path base_config = root() / "base" / "config.json";
  const std::string base_text = test_support::read_text(base_config.string());
  expect_refused(exports + on_data + " --base " + (root() / "base").string() + " --output " + base_config.string(),
                 {"--output " + base_config.string() + " is inside the --base folder " + (root() / "base").string()});
  EXPECT_EQ(test_support::read_text(base_config.string()), base_text);
  // Each folder is named as what it is (an --output among the streams was "inside the model folder").
  expect_refused(exports + on_data + " --output " + (data / "metrics.txt").string(),
                 {"is inside the --data folder " + data.string() + ": writing it would damage the task streams"});
  expect_refused(exports + on_data + " --output " + exports + "/decoder/metrics.txt",
                 {"is inside the --models folder " + exports + ": writing it would damage the models"});
  const fs::path empty = root() / "no-streams", nowhere = root() / "nowhere" / "metrics.txt";
  fs::create_directories(empty);
  expect_refused(exports + " --data " + empty.string() + " --output " + nowhere.string(),
                 {nowhere.string(), "No such file or directory"});
  expect_refused((run / "best").string() + on_data, {(run / "best").string() + ": does not exist", "eval.best"});
  // One run's encoders with another's decoder: sizes and tokenizer alike, the cards differ.
  const fs::path mixed = root() / "mixed";
  fs::create_directories(mixed);
  for (const char* model : {"question_encoder", "answer_encoder"})
    fs::copy(run / "export" / model, mixed / model, fs::copy_options::recursive);
  fs::copy(other / "export" / "decoder", mixed / "decoder", fs::copy_options::recursive);
  expect_refused(mixed.string() + on_data, {(mixed / "decoder" / "README.md").string(), "other runs or steps"});
  fs::remove(mixed / "decoder" / "README.md");  // a card removed: nothing to compare, evaluated
  const CliResult uncarded = run_command(eval + mixed.string() + on_data + " --examples 4");
  EXPECT_EQ(uncarded.code, 0) << uncarded.output;
}

// What the models cannot read with what they were trained on is one line before any figure: a
// stream of sequences longer than the models take (a warning that the folder holds no other task
// came before that error), and a --base whose tokenizer is not the exports' though its sizes
// match (its MLM head's ids would be other words; nothing refused it).
TEST_F(TrainCli, QaracEvalRefusesWhatTheModelsCannotReadInOneLine) {
  const fs::path run = root() / "unreadable", data = root() / "data";
  const CliResult trained =
      train(run, "--train.steps 1 --optimizer.warmup 0 --eval.tokenizer " + test_support::kSample + "tokenizer");
  ASSERT_EQ(trained.code, 0) << trained.output;
  const std::string eval = std::string(QARAC_EVAL_EXE) + " --models ", exports = (run / "export").string();
  const auto expect_refused = [&](const std::string& args, const std::vector<std::string>& parts) {
    expect_eval_refused(eval + args, parts);
  };
  // One text of 600 words, prepared for models of 1000 tokens; these take 512.
  const fs::path long_text = root() / "long.txt", long_streams = root() / "long_streams";
  std::string words;
  for (int i = 0; i < 600; ++i) words += "the ";
  std::ofstream(long_text) << words << "\n";
  const CliResult prep = run_command(std::string(QARAC_PREP_EXE) + " --tokenizer " + test_support::kSample +
                                     "tokenizer --max-length 1000 --out " + long_streams.string() + " --text " +
                                     long_text.string());
  ASSERT_EQ(prep.code, 0) << prep.output;
  expect_refused(exports + " --data " + long_streams.string(),
                 {(long_streams / "encode_decode.h5").string() + ": its", "more than the 512 the models read"});
  // The base with the sample tokenizer's vocabulary and two merges swapped: same size, other ids.
  const fs::path other_base = root() / "base_other_tokenizer", sample = test_support::kSample + "tokenizer";
  fs::create_directories(other_base);
  for (const char* file : {"config.json", "model.safetensors"}) fs::copy_file(root() / "base" / file, other_base / file);
  fs::copy_file(sample / "vocab.json", other_base / "vocab.json");
  std::string merges = test_support::read_text((sample / "merges.txt").string());
  const size_t first = merges.find('\n') + 1, second = merges.find('\n', first) + 1, third = merges.find('\n', second) + 1;
  merges = merges.substr(0, first) + merges.substr(second, third - second) + merges.substr(first, second - first) +
           merges.substr(third);
  std::ofstream(other_base / "merges.txt", std::ios::binary) << merges;
  expect_refused(exports + " --data " + data.string() + " --examples 2 --decoded 0 --base " + other_base.string(),
                 {"--base " + other_base.string() + ": tokenizer ", "but the models (" + exports + ") carry "});
  // With the run's tokenizer beside it, that base is the run's.
  for (const char* file : {"vocab.json", "merges.txt"}) fs::remove(other_base / file);
  fs::copy_file(sample / "tokenizer.json", other_base / "tokenizer.json");
  const CliResult same = run_command(eval + exports + " --data " + data.string() + " --examples 2 --decoded 0 --base " +
                                     other_base.string());
  EXPECT_EQ(same.code, 0) << same.output;
  EXPECT_NE(same.output.find("forgetting.mlm_loss "), std::string::npos) << same.output;
}

// On a CPU that OpenBLAS takes for an older one, qarac-eval names the OPENBLAS_CORETYPE that makes
// its evaluation twice as fast and is the one launch/train-local.sh gave the run, as qarac-train
// does (it said nothing); with it set, nothing.
TEST_F(TrainCli, QaracEvalNamesTheCpusOwnBlasCore) {
  if (cpu::blas_core_advice().empty())
    GTEST_SKIP() << "OpenBLAS runs this CPU's own kernels (or OPENBLAS_CORETYPE is set)";
  const fs::path run = root() / "blas";
  const CliResult trained = train(run, "--train.steps 2 --eval.tokenizer " + test_support::kSample + "tokenizer");
  ASSERT_EQ(trained.code, 0) << trained.output;
  const std::string eval = std::string(QARAC_EVAL_EXE) + " --models " + (run / "export").string() + " --data " +
                           (root() / "data").string() + " --examples 4 --decoded 1";
  const CliResult generic = run_command(eval);
  ASSERT_EQ(generic.code, 0) << generic.output;
  EXPECT_NE(generic.output.find("OPENBLAS_CORETYPE=" + cpu::blas_core_to_set()), std::string::npos) << generic.output;
  const CliResult own = run_command("OPENBLAS_CORETYPE=" + cpu::blas_core_to_set() + " " + eval);
  ASSERT_EQ(own.code, 0) << own.output;
  EXPECT_EQ(own.output.find("OPENBLAS_CORETYPE"), std::string::npos) << own.output;
}

// Rehearsal from the command line: its input errors come in one line before the output directory
// exists; a run writes the rehearsal's loss per step and its trained head as a checkpoint part of
// its own, and resumed halfway it ends bit for bit where the straight run does (dropout on, the
// head trained: its weights and moments must come back too); a resume may not turn it off.
TEST_F(TrainCli, RehearsalRunsResumesAndRefusesWhatItCannotDo) {
  const std::string tokenizer = "--eval.tokenizer " + test_support::kSample + "tokenizer ";
  expect_usage_error("--task.mlm.batch 8", {"task.mlm.batch", "rehearsal off"});
  expect_usage_error("--model.mask_probability 0.2", {"model.mask_probability", "rehearsal off"});
  expect_usage_error("--parallel.tasks ed:1,qa:1,rs:1,cs:1,mlm:1", {"--parallel.tasks", "task mlm is given"});
  expect_usage_error(tokenizer + "--task.mlm.weight 1 --parallel.tasks ed:1,qa:1,rs:1,cs:1",
                     {"--parallel.tasks", "task mlm is missing"});
  expect_usage_error(tokenizer + "--task.mlm.weight 1 --task.mlm.head thawed", {"task.mlm.head", "thawed"});
  expect_usage_error("--task.mlm.weight 1", {"task.mlm.weight", "holds no tokenizer", "eval.tokenizer"});
  // A base without its MLM head (a RobertaModel).
  const fs::path headless = root() / "headless-base";
  test_support::write_tiny_base(headless, test_support::kSample + "tokenizer", 0, /*mlm_head=*/false);
  expect_usage_error(tokenizer + "--task.mlm.weight 1 --model.base " + headless.string(),
                     {"task.mlm.weight", "no lm_head.*", "RobertaForMaskedLM"});

  const std::string common = tokenizer + "--task.mlm.weight 0.5 --task.mlm.batch 8 --task.mlm.head trained "
                                         "--model.mask_probability 0.2 --model.dropout 0.1 --optimizer.name nadam "
                                         "--checkpoint.every 0 ";
  const fs::path straight = root() / "rehearsal-straight", split = root() / "rehearsal-split";
  const CliResult a = train(straight, common + "--train.steps 4");
  ASSERT_EQ(a.code, 0) << a.output;
  EXPECT_NE(a.output.find("masked_lm (mlm)"), std::string::npos) << a.output;
  const CliResult b1 = train(split, common + "--train.steps 2");
  ASSERT_EQ(b1.code, 0) << b1.output;
  const CliResult off = train(split, tokenizer + "--train.steps 4 --model.dropout 0.1 --optimizer.name nadam --resume");
  EXPECT_EQ(off.code, 2) << off.output;
  EXPECT_NE(off.output.find("task.mlm.weight: rehearsal was on in the checkpoint's run and is off"), std::string::npos)
      << off.output;
  const CliResult b2 = train(split, common + "--train.steps 4 --resume");
  ASSERT_EQ(b2.code, 0) << b2.output;
  EXPECT_NE(b2.output.find("resuming from"), std::string::npos) << b2.output;

  const std::vector<nlohmann::json> la = read_jsonl(straight / "metrics.jsonl"),
                                    lb = read_jsonl(split / "metrics.jsonl");
  ASSERT_EQ(la.size(), 4u);
  ASSERT_EQ(lb.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    const double loss = la[i].at("loss").at("masked_lm").get<double>();
    EXPECT_TRUE(std::isfinite(loss) && loss > 0) << la[i].dump();
    EXPECT_EQ(la[i].at("loss"), lb[i].at("loss")) << "step " << i + 1;
    EXPECT_EQ(la[i].at("global_examples").get<int64_t>(), 5 * 8);  // every task's global batch
  }
  std::set<std::string> parts;
  for (const auto& e : fs::directory_iterator(straight / "checkpoints" / "step-0000000004"))
    parts.insert(e.path().filename());
  EXPECT_EQ(parts, (std::set<std::string>{"question_encoder.h5", "answer_encoder.h5", "decoder.h5", "mlm_head.h5"}));
  expect_identical_exports(straight, split);
  EXPECT_FALSE(fs::exists(straight / "export" / "mlm_head")) << "the rehearsal head is not exported";
}

// Every rank of a task gets the task's whole global batch beside its own part (the MLM loss
// normalises by the masked tokens of the global batch, which each rank counts from it): the same
// ids and tokens on every rank and for every world size, each rank's part a piece of it, and the
// micro-batches of a part share it.
TEST_F(TrainCli, LoaderGivesEveryRankTheWholeGlobalBatch) {
  data::LoaderOptions options;
  options.data_dir = (root() / "data").string();
  options.seed = 5;
  options.global_batch = 8;
  auto plan = [](int world, int rank) {
    data::RankPlan p;
    p.world_size = world;
    p.rank = rank;
    p.tasks = {{Task::encode_decode, rank, world}};
    return p;
  };
  data::Loader single(plan(1, 0), options);
  std::vector<std::unique_ptr<data::Loader>> ranks;
  for (int r = 0; r < 3; ++r) ranks.push_back(std::make_unique<data::Loader>(plan(3, r), options));
  for (int step = 0; step < 3; ++step) {
    const data::TaskBatch whole = single.next().tasks.at(0);
    ASSERT_TRUE(whole.global);
    EXPECT_EQ(whole.global->ids, whole.ids);
    EXPECT_EQ(whole.global->fields.at(0).tokens, whole.fields.at(0).tokens);
    std::multiset<uint64_t> seen;
    for (auto& loader : ranks) {
      const data::TaskBatch part = loader->next().tasks.at(0);
      ASSERT_TRUE(part.global);
      EXPECT_EQ(part.global->ids, whole.ids) << "step " << step;
      EXPECT_EQ(part.global->fields.at(0).tokens, whole.fields.at(0).tokens) << "step " << step;
      EXPECT_EQ(part.global->fields.at(0).starts, whole.fields.at(0).starts) << "step " << step;
      for (int64_t b = 0; b < part.count(); ++b) {
        seen.insert(part.ids[static_cast<size_t>(b)]);
        const auto at = std::find(whole.ids.begin(), whole.ids.end(), part.ids[static_cast<size_t>(b)]);
        ASSERT_NE(at, whole.ids.end());
        const size_t g = static_cast<size_t>(at - whole.ids.begin());
        const data::PackedField& mine = part.fields.at(0);
        const data::PackedField& all = whole.fields.at(0);
        EXPECT_TRUE(std::equal(mine.tokens.begin() + mine.starts[static_cast<size_t>(b)],
                               mine.tokens.begin() + mine.starts[static_cast<size_t>(b) + 1],
                               all.tokens.begin() + all.starts[g], all.tokens.begin() + all.starts[g + 1]));
      }
      for (const data::TaskBatch& micro : part.split(20)) EXPECT_EQ(micro.global, part.global);
    }
    EXPECT_EQ(seen, std::multiset<uint64_t>(whole.ids.begin(), whole.ids.end())) << "step " << step;
  }
}
