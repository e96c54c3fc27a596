// Distributed training over MPI (docs/design.md §4), run as a user runs it: qarac-train under
// mpirun (oversubscribed on this machine) on the sample data with a random tiny base.
//   The invariant: what a run computes depends on neither the world size nor the task plan.
//   W ranks (W = 2, 3, 4, 5, 6, 8, explicit plans) and one process splitting every task into
//   micro-batches end 6 steps at the parameters of one process (W = 1) on the same global
//   batches, within 1e-12 of each model's largest weight in f64, with every model's replicas
//   bit-identical at every step (the replica check) and the same logged task losses (the means
//   over the global batches). So do runs with the contrastive QA objective, whose loss is one
//   function of the whole global batch: its ranks exchange their vectors.
//   The same with rehearsal (a fifth task, its head trained or frozen; W = 1 in micro-batches,
//   W = 2, W = 3 with two rehearsal ranks other than rank 0, W = 3 with a shared base).
//   The same for masked-LM pre-training (model.mode mlm): W = 3 and micro-batches end at the
//   base of one process, the loss being the mean over the global batch's masked tokens.
//   Elastic resume: a run checkpointed at one world size and resumed at another (and another
//   plan) ends where the run without a stop ends.
//   Never hang: a rank killed by SIGKILL, a rank that stalls, and replicas that diverge each end
//   the job with a non-zero status and a message naming what failed; every run is bounded by
//   `timeout`, so a hang fails the test instead of blocking the suite.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "core/hdf5_checksummed.h"
#include "core/memory.h"
#include "io/safetensors.h"
#include "parallel/collective_trace.h"
#include "support/test_support.h"
#include "support/training_fixtures.h"
#include "train/checkpoint.h"
#include "train/run_dir.h"

namespace fs = std::filesystem;
using namespace qarac;
using test_support::CliResult;
using test_support::run_command;
using test_support::TempDir;

namespace {

const std::string kSample = std::string(QARAC_SAMPLE_DIR) + "/";
// Dropout of every run: its masks are keyed by each example's global identity, not by its place
// in a rank's packed batch, so they too are the same whatever the layout.
const std::string kDropout = "0.1";
// Every run ends within this many seconds or fails the test (`timeout` exits 124).
constexpr int kRunLimit = 300;

// The MPI the build found decides the flags (tests/mpi/CMakeLists.txt): Hydra (MPICH, Intel MPI)
// oversubscribes, runs as root and passes the whole environment on by default.
std::string mpirun(int ranks) {
  std::string command = std::string(QARAC_MPIEXEC) + " -np " + std::to_string(ranks);
#if QARAC_MPIEXEC_OPEN_MPI
  command += " --oversubscribe";
  if (geteuid() == 0) command += " --allow-run-as-root";  // containers and CI run as root
#endif
  return command;
}

// mpirun of one rank per command, rank r running commands[r] (tests/mpi/per_rank.sh): MPMD's
// `A : -np 1 B`, which Open MPI 5.0.7's mpirun (Debian 13's) ends with a segmentation fault.
std::string per_rank(const std::vector<std::string>& commands) {
  std::string command = mpirun(static_cast<int>(commands.size())) + " " + QARAC_PER_RANK;
  for (const std::string& c : commands) command += " '" + c + "'";
  return command;
}

// The launcher flag that passes the environment variable `name` on to every rank.
std::string forward_env(const std::string& name) { return QARAC_MPIEXEC_OPEN_MPI ? " -x " + name : ""; }

// mpirun of `ranks` ranks with the test hook QARAC_FAULT=`fault` set in every rank.
std::string with_fault(const std::string& fault, int ranks) {
  return "env QARAC_FAULT=" + fault + " " + mpirun(ranks) + forward_env("QARAC_FAULT");
}

// How far two exports of a model lie apart: max |a − b| over every tensor, relative to the
// model's largest weight, and the tensor where it is largest. Relative to the whole model, not
// to each tensor: the rounding of a sum is relative to its terms, which come from the whole
// model, and a tensor near 0 (a bias that starts there) would make it look large.
std::pair<double, std::string> export_difference(const fs::path& a, const fs::path& b) {
  const TensorMap ta = io::read_safetensors((a / "model.safetensors").string());
  const TensorMap tb = io::read_safetensors((b / "model.safetensors").string());
  EXPECT_EQ(ta.size(), tb.size());
  double worst = 0, scale = 0;
  std::string where;
  for (const auto& [name, tensor] : tb) {
    const auto it = ta.find(name);
    if (it == ta.end()) {
      ADD_FAILURE() << name << " missing from " << a;
      continue;
    }
    const std::vector<double> x = it->second.to(DType::f64).to_vector<double>();
    const std::vector<double> y = tensor.to(DType::f64).to_vector<double>();
    for (size_t i = 0; i < y.size(); ++i) {
      scale = std::max(scale, std::fabs(y[i]));
      if (std::fabs(x[i] - y[i]) > worst) {
        worst = std::fabs(x[i] - y[i]);
        where = name;
      }
    }
  }
  return {scale > 0 ? worst / scale : worst, where};
}

class Distributed : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new TempDir("distributed");
    test_support::write_tiny_base(root_->path / "base", kSample + "tokenizer");
    const CliResult prep = test_support::prepare_sample_data(QARAC_PREP_EXE, kSample, root_->path / "data");
    ASSERT_EQ(prep.code, 0) << prep.output;
  }
  static void TearDownTestSuite() {
    delete root_;
    root_ = nullptr;
  }
  static fs::path root() { return root_->path; }

  // qarac-train (under `launcher`, which may be empty) for `steps` steps of the tiny model in f64
  // (unless `args` sets train.dtype), with dropout and clipping, global batches of 8 examples per
  // task (unless `args` sets one),
  // writing to root()/name. A
  // constant rate after one warm-up step, so that a run of 3 steps follows the same schedule as
  // the first 3 of a run of 6.
  static CliResult train(const std::string& launcher, const std::string& name, const std::string& args,
                         int steps = 6) {
    return run_command("timeout " + std::to_string(kRunLimit) + " " + launcher + " " + QARAC_TRAIN_EXE +
                       " --output " + (root() / name).string() + " --model.base " + (root() / "base").string() +
                       " --data.dir " + (root() / "data").string() +
                       (args.find("--train.dtype") == std::string::npos ? " --train.dtype f64" : "") +
                       " --model.dropout " +
                       kDropout + " --train.log_every 1 --train.steps " + std::to_string(steps) +
                       " --optimizer.lr 1e-3 --optimizer.warmup 1 --optimizer.decay constant --optimizer.clip 1" +
                       batches(args) + " --checkpoint.every 0 --eval.every 0 " + args);
  }
  static std::string batches(const std::string& args) {
    std::string text;
    // Pre-training (model.mode mlm) trains on the text stream alone: only its batch is a setting.
    const bool mlm = args.find("--model.mode mlm") != std::string::npos;
    for (const char* task : {"ed", "qa", "rs", "cs"}) {
      if (mlm && std::string(task) != "ed") continue;
      const std::string key = std::string("--task.") + task + ".batch";
      if (args.find(key) == std::string::npos) text += " " + key + " 8";
    }
    return text;
  }
  // The run of one process that every layout must match, trained once per test process.
  static void reference(const std::string& name, const std::string& options) {
    if (fs::exists(root() / name / "export")) return;
    const CliResult r = train("", name, options);
    ASSERT_EQ(r.code, 0) << r.output;
  }
  // Every model of run `name` against the same model of run `reference`: within `bound` of the
  // model's largest weight. Records the differences as test properties.
  static void expect_same_models(const std::string& name, const std::string& reference, double bound,
                                 const std::vector<const char*>& models = {"question_encoder", "answer_encoder",
                                                                           "decoder"}) {
    for (const char* model : models) {
      const auto [diff, where] = export_difference(root() / name / "export" / model,
                                                   root() / reference / "export" / model);
      EXPECT_LT(diff, bound) << model << " of " << name << ", largest in " << where;
      char text[32];
      std::snprintf(text, sizeof text, "%.3e", diff);
      RecordProperty(std::string("max_rel_diff_") + model, text);
      std::printf("%s %s: max |difference| / max |weight| = %s\n", name.c_str(), model, text);
    }
  }

  // A data folder `name` with the sample's streams but `task`'s, which qarac-prep makes from the
  // sample's `file` with its reader option `reader`: another stream of that task.
  static fs::path data_with_another(const std::string& name, const std::string& task, const std::string& reader,
                                    const std::string& file) {
    const fs::path other = root() / name;
    fs::create_directories(other);
    for (const char* kept : {"encode_decode", "question_answering", "reasoning", "consistency"})
      if (kept != task)
        fs::copy_file(root() / "data" / (std::string(kept) + ".h5"), other / (std::string(kept) + ".h5"),
                      fs::copy_options::overwrite_existing);
    const CliResult prep = run_command(std::string(QARAC_PREP_EXE) + " --tokenizer " + kSample + "tokenizer --out " +
                                       other.string() + " " + reader + " " + kSample + file);
    EXPECT_EQ(prep.code, 0) << prep.output;
    return other;
  }

  static TempDir* root_;
};

TempDir* Distributed::root_ = nullptr;

// The step lines of a run's metrics.jsonl.
std::vector<nlohmann::json> step_lines(const fs::path& run) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(run / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (!j.value("eval", false)) lines.push_back(std::move(j));
  }
  return lines;
}

// A world size with its options (a task plan, micro-batches, a shared encoder base and a tied LM
// head, which change the groups), and the options of the one-process reference it must match.
struct Layout {
  const char* label;
  int world;
  const char* options;
  const char* reference;  // the reference's name: runs with these options differ from the others'
  const char* reference_options;
};

// ctest names the case by its label rather than by the struct's bytes.
void PrintTo(const Layout& layout, std::ostream* os) { *os << layout.label; }

class Invariant : public Distributed, public ::testing::WithParamInterface<Layout> {};

// f64 and the same global batches: the layouts differ only in the order in which per-example
// gradients are summed (within a rank's backward pass, then over ranks in the all-reduce), so the
// parameters after 6 steps agree to rounding, about 1e-15 of the largest weight; 1e-12 leaves
// room for the Adam update amplifying it (g / sqrt(v) of tiny gradients) and nothing else.
constexpr double kBound = 1e-12;

// W ranks, any plan, or micro-batches end where one process ends; the replicas of every model
// agree bit for bit at every step (the replica check runs each step and stops the job otherwise).
TEST_P(Invariant, EveryLayoutComputesWhatOneProcessComputes) {
  const Layout& layout = GetParam();
  const std::string reference_name = layout.reference;
  reference(reference_name, layout.reference_options);
  // 10 KiB buckets: the large tensors reduce in place, the small ones packed several a bucket.
  const std::string name = std::string("layout-") + layout.label;
  const CliResult r = train(layout.world > 1 ? mpirun(layout.world) : "", name,
                            std::string("--parallel.check_every 1 --parallel.bucket_mb 0.01 ") + layout.options);
  ASSERT_EQ(r.code, 0) << r.output;
  if (layout.world > 1) {
    EXPECT_NE(r.output.find("every model's replicas are identical"), std::string::npos) << r.output;
  }
  expect_same_models(name, reference_name, kBound);

  // The logged task losses are the means over the global batches, the same for every layout (to
  // rounding); the per-task compute times and the slowest rank are the world's.
  const std::vector<nlohmann::json> lines = step_lines(root() / name), expected = step_lines(root() / reference_name);
  ASSERT_EQ(lines.size(), 6u);
  ASSERT_EQ(expected.size(), 6u);
  for (size_t i = 0; i < lines.size(); ++i) {
    for (const char* task : {"encode_decode", "question_answering", "reasoning", "consistency", "masked_lm"}) {
      ASSERT_EQ(lines[i].at("loss").contains(task), expected[i].at("loss").contains(task)) << task;
      if (!expected[i].at("loss").contains(task)) continue;  // rehearsal off
      const double got = lines[i].at("loss").at(task).get<double>();
      const double want = expected[i].at("loss").at(task).get<double>();
      EXPECT_NEAR(got, want, 1e-12 * std::max(1.0, std::fabs(want))) << task << " at step " << i + 1;
      EXPECT_GT(lines[i].at("task_compute_max_s").at(task).get<double>(), 0) << task;
    }
    EXPECT_EQ(lines[i].at("world_size").get<int>(), layout.world);
    EXPECT_EQ(lines[i].at("global_examples"), expected[i].at("global_examples"));
    EXPECT_EQ(lines[i].at("global_tokens"), expected[i].at("global_tokens"));
    const int slowest = lines[i].at("slowest_rank").get<int>();
    EXPECT_TRUE(slowest >= 0 && slowest < layout.world) << slowest;
  }
}

constexpr const char* kSharedTied = "--model.share_encoder_base true --model.tie_lm_head true";
// Rehearsal, its head trained (a group of its own) or frozen with a shared encoder base.
#define QARAC_REHEARSAL "--task.mlm.weight 0.5 --task.mlm.batch 8 --eval.tokenizer " QARAC_SAMPLE_DIR "/tokenizer "
constexpr const char* kRehearsal = QARAC_REHEARSAL "--task.mlm.head trained";
constexpr const char* kRehearsalShared = QARAC_REHEARSAL "--model.share_encoder_base true";
#undef QARAC_REHEARSAL
// Small enough to split every task's 8 examples (about 20 tokens each, up to 60) into several
// micro-batches, and some examples longer than it run alone.
constexpr const char* kMicro = "--train.micro_tokens 40";
// L2 decay under NAdam adds wd·b to the gradient before dividing by sqrt(v) + eps: a parameter
// whose true gradient is 0 and which starts at 0 (the decoder's new key biases) would follow the
// rounding noise of its computed gradient, ×lr·wd/eps a step, if that gradient were not exactly 0.
constexpr const char* kNadamL2 = "--optimizer.name nadam --optimizer.decoupled_weight_decay false "
                                 "--optimizer.weight_decay 0.01";
INSTANTIATE_TEST_SUITE_P(
    Layouts, Invariant,
    ::testing::Values(Layout{"W1_micro_batches", 1, kMicro, "reference", ""},
                      Layout{"W2", 2, "", "reference", ""}, Layout{"W3", 3, "", "reference", ""},
                      Layout{"W4", 4, "", "reference", ""}, Layout{"W5", 5, "", "reference", ""},
                      Layout{"W6", 6, "", "reference", ""}, Layout{"W8", 8, "", "reference", ""},
                      Layout{"W4_plan_ed2_qa1_rs2_cs1", 4, "--parallel.tasks ed:2,qa:1,rs:2,cs:1", "reference", ""},
                      Layout{"W5_plan_ed1_qa1_rs2_cs1", 5, "--parallel.tasks ed:1,qa:1,rs:2,cs:1", "reference", ""},
                      Layout{"W3_micro_batches", 3, kMicro, "reference", ""},
                      Layout{"W3_nadam_l2_decay", 3, kNadamL2, "reference-nadam-l2", kNadamL2},
                      // One consistency example for two ranks: one of them runs none and still
                      // takes part in AE's reductions with zero gradients.
                      Layout{"W5_a_rank_without_examples", 5, "--parallel.tasks ed:1,qa:1,rs:1,cs:2 --task.cs.batch 1",
                             "reference-cs-batch-1", "--task.cs.batch 1"},
                      Layout{"W3_shared_base_tied_head", 3, kSharedTied, "reference-shared-tied", kSharedTied},
                      // Contrastive QA: the loss of the global batch from every QA rank's vectors.
                      Layout{"W1_contrastive_micro_batches", 1, "--task.qa.objective contrastive --train.micro_tokens 40",
                             "reference-contrastive", "--task.qa.objective contrastive"},
                      Layout{"W2_contrastive_plan_qa2", 2, "--task.qa.objective contrastive --parallel.tasks ed:1,qa:2,rs:1,cs:1",
                             "reference-contrastive", "--task.qa.objective contrastive"},
                      // Three examples for four QA ranks: one gathers none and still takes part.
                      Layout{"W4_contrastive_plan_qa4_a_rank_without_examples", 4,
                             "--task.qa.objective contrastive --task.qa.batch 3 --parallel.tasks ed:1,qa:4,rs:1,cs:1",
                             "reference-contrastive-qa-batch-3", "--task.qa.objective contrastive --task.qa.batch 3"},
                      Layout{"W1_rehearsal_micro_batches", 1,
                             "--train.micro_tokens 40 --task.mlm.weight 0.5 --task.mlm.batch 8 --task.mlm.head trained "
                             "--eval.tokenizer " QARAC_SAMPLE_DIR "/tokenizer",
                             "reference-rehearsal", kRehearsal},
                      Layout{"W2_rehearsal", 2, kRehearsal, "reference-rehearsal", kRehearsal},
                      // The rehearsal on ranks 1 and 2: its trained head reduced over both,
                      // and sent to rank 0 for the evaluation and the export.
                      Layout{"W3_rehearsal_plan_mlm2", 3,
                             "--parallel.tasks ed:1,qa:1,rs:1,cs:1,mlm:2 --task.mlm.weight 0.5 --task.mlm.batch 8 "
                             "--task.mlm.head trained --eval.tokenizer " QARAC_SAMPLE_DIR "/tokenizer",
                             "reference-rehearsal", kRehearsal},
                      Layout{"W3_rehearsal_shared_base", 3, kRehearsalShared, "reference-rehearsal-shared",
                             kRehearsalShared}),
    [](const ::testing::TestParamInfo<Layout>& layout) { return std::string(layout.param.label); });

// Elastic resume: 3 steps at W = 2 (a checkpoint at the end), then --resume to step 6 at W = 5
// with another plan; and 3 steps at W = 4 resumed at W = 1. Both end where 6 steps straight at
// W = 1 end. A fixed key that differs is refused in one line naming it and both values.
TEST_F(Distributed, ResumeAtAnotherWorldSizeContinuesTheSameRun) {
  reference("reference", "");
  const CliResult first = train(mpirun(2), "elastic-2-5", "", 3);
  ASSERT_EQ(first.code, 0) << first.output;
  EXPECT_TRUE(fs::is_directory(root() / "elastic-2-5" / "checkpoints" / "step-0000000003"));
  // The comparison means something: the last 3 steps move every model far beyond the bound.
  for (const char* model : {"question_encoder", "answer_encoder", "decoder"}) {
    const double moved = export_difference(root() / "elastic-2-5" / "export" / model,
                                           root() / "reference" / "export" / model).first;
    EXPECT_GT(moved, 1e-5) << model;
    std::printf("elastic-2-5 %s after 3 steps against 6: %.3e\n", model, moved);
  }
  const CliResult second = train(mpirun(5), "elastic-2-5", "--resume --parallel.tasks ed:2,qa:1,rs:1,cs:1", 6);
  ASSERT_EQ(second.code, 0) << second.output;
  EXPECT_NE(second.output.find("at step 3, written by a run of 2 ranks (this one: 5)"), std::string::npos)
      << second.output;
  expect_same_models("elastic-2-5", "reference", kBound);

  const CliResult third = train(mpirun(4), "elastic-4-1", "", 3);
  ASSERT_EQ(third.code, 0) << third.output;
  const CliResult fourth = train("", "elastic-4-1", "--resume", 6);
  ASSERT_EQ(fourth.code, 0) << fourth.output;
  EXPECT_NE(fourth.output.find("step-0000000003 at step 3, written by a run of 4 ranks (this one: 1)"),
            std::string::npos)
      << fourth.output;
  expect_same_models("elastic-4-1", "reference", kBound);

  const CliResult other = train(mpirun(2), "elastic-4-1", "--resume --train.seed 3", 8);
  EXPECT_EQ(other.code, 2) << other.output;
  EXPECT_NE(other.output.find("train.seed was 0 in the checkpoint's run and is 3 now"), std::string::npos)
      << other.output;
}

// At the same world size and plan a resumed job repeats the straight job's every operation in
// the same order: the same parameters, bit for bit. (It must say it resumed: a restart from step 0
// would end with the same bits.)
TEST_F(Distributed, ResumeAtTheSameWorldSizeIsBitExact) {
  const CliResult straight = train(mpirun(3), "straight-3", "");
  ASSERT_EQ(straight.code, 0) << straight.output;
  const CliResult first = train(mpirun(3), "resumed-3", "", 3);
  ASSERT_EQ(first.code, 0) << first.output;
  const CliResult second = train(mpirun(3), "resumed-3", "--resume", 6);
  ASSERT_EQ(second.code, 0) << second.output;
  EXPECT_NE(second.output.find("step-0000000003 at step 3\n"), std::string::npos) << second.output;  // the same world
  for (const char* model : {"question_encoder", "answer_encoder", "decoder"})
    EXPECT_EQ(export_difference(root() / "resumed-3" / "export" / model, root() / "straight-3" / "export" / model).first,
              0.0)
        << model;
}

// Preemption: SIGTERM reaches one rank of four during step 4 (what Slurm does before a
// preemption or, with --signal, before the time limit). Every rank stops after that step, the
// job writes a checkpoint of it and exits 75; --resume then finishes the run bit for bit as a
// straight one, each step logged once.
TEST_F(Distributed, SigtermStopsEveryRankWithACheckpointAndResumeFinishesTheRun) {
  const std::string f32 = "--train.dtype f32";
  const CliResult straight = train(mpirun(4), "straight-4-f32", f32);
  ASSERT_EQ(straight.code, 0) << straight.output;
  const CliResult stopped = train(with_fault("term:2:3", 4), "preempted-4", f32);
  ASSERT_EQ(stopped.code, 75) << stopped.output;
  EXPECT_NE(stopped.output.find("SIGTERM on rank 2: stopping after step 4 with a checkpoint"), std::string::npos)
      << stopped.output;
  EXPECT_TRUE(fs::is_directory(root() / "preempted-4" / "checkpoints" / "step-0000000004")) << stopped.output;
  EXPECT_FALSE(fs::exists(root() / "preempted-4" / "export")) << "a stopped run exports nothing";
  const CliResult resumed = train(mpirun(4), "preempted-4", f32 + " --resume");
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("step-0000000004 at step 4"), std::string::npos) << resumed.output;
  for (const char* model : {"question_encoder", "answer_encoder", "decoder"})
    EXPECT_EQ(export_difference(root() / "preempted-4" / "export" / model,
                                root() / "straight-4-f32" / "export" / model).first,
              0.0)
        << model;
  std::vector<int64_t> steps;
  for (const nlohmann::json& line : step_lines(root() / "preempted-4")) steps.push_back(line["step"].get<int64_t>());
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6})) << "every step logged once";
}

// A stop signal to the launcher itself, during step 2 of 40: it passes the signal on to every
// rank, which stop after the same step with a checkpoint, and reports their 75; --resume then
// finishes the run, each step logged once. Every launcher forwards SIGUSR1 (launch/README.md);
// Hydra (MPICH, Intel MPI) SIGTERM too, where Open MPI's mpirun kills the ranks a second later
// and reports 1. (train-local.sh's own test, tests/launch, cannot see the status under Hydra.)
class LauncherSignal : public Distributed {
 protected:
  static void expect_stop_and_resume(const std::string& signal, const std::string& name) {
    const std::string launcher = std::string(QARAC_SIGNAL_LAUNCHER) + " " + signal + " '^step 2/' " + mpirun(4);
    const CliResult stopped = train(launcher, name, "--train.dtype f32", 40);
    ASSERT_EQ(stopped.code, 75) << stopped.output;
    std::ifstream record(root() / name / "stopped.json");
    const nlohmann::json stop = nlohmann::json::parse(record);
    EXPECT_EQ(stop["signal"], "SIG" + signal) << stopped.output;
    EXPECT_GE(stop["step"].get<int64_t>(), 2) << stopped.output;
    EXPECT_LT(stop["step"].get<int64_t>(), 40) << stopped.output;
    const CliResult resumed = train(mpirun(4), name, "--train.dtype f32 --resume", 40);
    ASSERT_EQ(resumed.code, 0) << resumed.output;
    std::vector<int64_t> steps, every;
    for (const nlohmann::json& line : step_lines(root() / name)) steps.push_back(line["step"].get<int64_t>());
    for (int64_t step = 1; step <= 40; ++step) every.push_back(step);
    EXPECT_EQ(steps, every) << "every step logged once";
  }
};

TEST_F(LauncherSignal, SigusrOneStopsEveryRankWithACheckpoint) { expect_stop_and_resume("USR1", "launcher-usr1"); }

TEST_F(LauncherSignal, SigtermToHydraStopsEveryRankWithACheckpoint) {
  if (QARAC_MPIEXEC_OPEN_MPI) GTEST_SKIP() << "Open MPI's mpirun kills the ranks a second after a SIGTERM, by design";
  expect_stop_and_resume("TERM", "launcher-term");
}

// The job failed by itself: a non-zero status that is not `timeout`'s (124: it hung).
void expect_job_failed(const CliResult& r) {
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.code, 124) << "the job hung until `timeout` ended it:\n" << r.output;
}

// A rank killed mid-run ends the whole job, non-zero, with the launcher or a peer naming it.
TEST_F(Distributed, KilledRankEndsTheJob) {
  const CliResult r = train(with_fault("kill:1:1", 3), "killed", "--parallel.timeout 20", 20);
  expect_job_failed(r);
  EXPECT_NE(r.output.find("killing rank 1 at step 1"), std::string::npos) << r.output;
  const bool named = r.output.find("signal 9") != std::string::npos ||
                     r.output.find("no completion within the timeout") != std::string::npos;
  EXPECT_TRUE(named) << r.output;
}

// A rank that stalls makes its peers' waits time out: they name the operation, the rank, the
// host and the step, and abort the job; and record it (failed.json) for the job script, which
// ends a launcher that waits on for a lost node (slurm/train.sbatch).
TEST_F(Distributed, StalledRankIsDetectedByTheTimeout) {
  const CliResult r = train(with_fault("stall:2:1", 3), "stalled",
                            "--parallel.timeout 5", 20);
  expect_job_failed(r);
  EXPECT_NE(r.output.find("no completion within the timeout of 5 s"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("at step 2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(hostname()), std::string::npos) << r.output;
  const nlohmann::json record =
      nlohmann::json::parse(test_support::read_text((root() / "stalled" / kFailureRecordName).string()), nullptr, false);
  ASSERT_TRUE(record.is_object()) << "no failure record: " << r.output;
  EXPECT_NE(record.value("error", "").find("no completion within the timeout of 5 s"), std::string::npos) << record;
  EXPECT_EQ(record.value("host", ""), hostname()) << record;
}

// Replicas that stop agreeing (one rank's weight shifted) stop the run at the next check, said by
// one of them (before: by every rank holding the model).
TEST_F(Distributed, DivergedReplicasStopTheRun) {
  const CliResult r = train(with_fault("diverge:1:2", 2), "diverged",
                            "--parallel.check_every 1 --parallel.timeout 20", 6);
  EXPECT_EQ(r.code, 4) << r.output;  // the reporting rank's abort, before the others' (theirs: 2)
  const std::string said = "diverged by step 3";
  EXPECT_NE(r.output.find(said), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find(said), r.output.rfind(said)) << "more than one rank said it: " << r.output;
}

// The fault shifts a seeded random element of a random shared parameter and names it; the check
// sees it wherever it lies: seed 1 picks one in the back half of its parameter (f64 masters),
// where a checksum over a prefix of each weight's bytes would not look.
TEST_F(Distributed, ReplicasDivergedAnywhereStopTheRun) {
  const CliResult r = train(with_fault("diverge:1:2:1", 2), "diverged-anywhere",
                            "--parallel.check_every 1 --parallel.timeout 20", 4);
  expect_job_failed(r);
  const size_t at = r.output.find("shifts element ");
  ASSERT_NE(at, std::string::npos) << r.output;
  long long element = -1, numel = 0;
  ASSERT_EQ(std::sscanf(r.output.c_str() + at, "shifts element %lld of %lld", &element, &numel), 2) << r.output;
  const std::string shifted = r.output.substr(at, r.output.find('\n', at) - at);
  std::printf("%s\n", shifted.c_str());
  EXPECT_GE(2 * element, numel) << "pick a seed whose element lies in the back half: " << shifted;
  EXPECT_NE(r.output.find("diverged by step 3"), std::string::npos) << r.output;
}

// A configuration error under mpirun: every rank reports it in one line and the job exits 2.
// An error in the options or the inputs, which every rank reads, is said once (by rank 0), not by
// each rank: here the options, the plan's shape, and a tokenizer that does not fit the base, which
// every rank of a pre-training reads.
TEST_F(Distributed, InputErrorEndsTheJobWithStatus2) {
  const std::string other_tokenizer = kSample + "../../tests/data/tokenizer";
  std::vector<std::pair<std::string, std::string>> faults = {
      {"--parallel.tasks ed:4,qa:1,rs:1,cs:1", "parallel.tasks"},
      {"--optimizer.beta1 2", "optimizer.beta1"},
      {"--optimizer.lrr 1", "'--optimizer.lrr'"},
      {"--model.mode mlm --model.tokenizer " + other_tokenizer, "model.tokenizer: "}};
  if (cuda_device_count() == 0)
    faults.emplace_back("--train.device cuda --train.dtype f32 --parallel.backend mpi", "train.device: cuda");
  for (const auto& [args, named] : faults) {
    SCOPED_TRACE(args);
    const CliResult r = train(mpirun(3), "bad", args);
    EXPECT_EQ(r.code, 2) << r.output;
    const std::string said = "qarac-train: error: ";
    EXPECT_NE(r.output.find(said), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find(said), r.output.rfind(said)) << "more than one rank said it: " << r.output;
    EXPECT_NE(r.output.find(named), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(root() / "bad"));
  }
}

// The environment in which MPI_Init of the MPI this test is built with fails: a PML that Open MPI
// does not have, a value of an MPICH setting that MPICH refuses; empty for another MPI.
std::string mpi_init_fails() {
#if defined(OMPI_MAJOR_VERSION)
  return "env OMPI_MCA_pml=no-such-pml ";
#elif defined(MPICH_VERSION) && !defined(I_MPI_VERSION)
  return "env MPIR_CVAR_DEVICE_COLLECTIVES=no-such ";
#else
  return "";
#endif
}

// A process that no launcher started reads its options before MPI starts: --help and a mistake
// are answered where MPI cannot start (made so here by mpi_init_fails), and without a
// singleton's MPI_Init (half a second) everywhere else.
TEST_F(Distributed, WithoutALauncherTheOptionsAreReadBeforeMpiStarts) {
  const std::string broken = mpi_init_fails();
  if (broken.empty()) GTEST_SKIP() << "needs Open MPI or MPICH, whose settings can make MPI_Init fail";
  const CliResult help = run_command(broken + QARAC_TRAIN_EXE + " --help");
  EXPECT_EQ(help.code, 0) << help.output;
  EXPECT_NE(help.output.find("Exit status:"), std::string::npos) << help.output;
  const CliResult typo = train(broken, "typo-without-mpi", "--optimizer.lrr 1");
  EXPECT_EQ(typo.code, 2) << typo.output;
  EXPECT_EQ(typo.output.find("qarac-train: error: unrecognised option '--optimizer.lrr'"), 0u) << typo.output;
  EXPECT_EQ(typo.output.find('\n'), typo.output.size() - 1) << "one line: " << typo.output;
  // Valid options do need MPI: the PML breaks it indeed.
  const CliResult run = train(broken, "run-without-mpi", "");
  EXPECT_NE(run.code, 0) << run.output;
}

// A step that overflows, which every rank learns of in the same all-reduce, ends the job in one
// line (before: one from each rank).
TEST_F(Distributed, ANonFiniteStepIsSaidOnce) {
  const CliResult r = train(mpirun(3), "nonfinite", "--train.dtype f32 --task.ed.weight 3e38", 3);
  EXPECT_EQ(r.code, 2) << r.output;
  const std::string said = "qarac-train: error: step 1: ";
  EXPECT_NE(r.output.find(said), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find(said), r.output.rfind(said)) << "more than one rank said it: " << r.output;
  EXPECT_NE(r.output.find("; the step was not applied"), std::string::npos) << r.output;
}

// A run that no launcher started needs no ssh or rsh on PATH (a container without them): before,
// Open MPI's MPI_Init failed there in 40 lines, its launch component refusing to load.
TEST_F(Distributed, WithoutALauncherARunNeedsNoSshOnPath) {
  const CliResult r = train("env PATH=/nonexistent", "no-ssh", "", 2);
  EXPECT_EQ(r.code, 0) << r.output;
}

// mpirun of 2 ranks under a Slurm job's --mem of `mib` MiB (SLURM_MEM_PER_NODE): their node's limit.
std::string two_ranks_with_mem(int64_t mib) {
  return "env SLURM_MEM_PER_NODE=" + std::to_string(mib) + " " + mpirun(2) + forward_env("SLURM_MEM_PER_NODE");
}

// What the 2 ranks of a run held at the start, as its log says: together and rank 0, in MiB.
std::pair<double, double> start_holding(const std::string& output) {
  std::smatch held;
  if (!std::regex_search(output, held,
                         std::regex(R"(: ([0-9.]+) MiB held by its 2 ranks at the start \(this one ([0-9.]+) MiB\))"))) {
    ADD_FAILURE() << "no start figures in: " << output;
    return {0, 0};
  }
  return {std::stod(held[1].str()), std::stod(held[2].str())};
}

// A Slurm job's --mem (as a cgroup's limit) is the node's, shared by its ranks: each counts the
// others' tensors, so that ranks that fit alone but not together are refused at the start, in one
// line from one rank, instead of being killed midway by the OOM killer or Slurm. The limit is set
// between the larger rank's tensors and their sum, as a first run reports them.
TEST_F(Distributed, TheRanksOfANodeShareItsMemoryLimit) {
  CliResult r = train(two_ranks_with_mem(1 << 20), "memory-fits", "", 2);
  ASSERT_EQ(r.code, 0) << r.output;
  const auto [both, first] = start_holding(r.output);
  const double larger = std::max(first, both - first);
  const auto limit = static_cast<int64_t>(std::ceil((larger + both) / 2));
  ASSERT_GT(static_cast<double>(limit), larger + 1) << r.output;
  ASSERT_LT(static_cast<double>(limit), both) << r.output;

  r = train(two_ranks_with_mem(limit), "memory-shared", "", 2);
  EXPECT_EQ(r.code, 2) << r.output;
  const std::string said = "qarac-train: error: out of memory on ";
  EXPECT_NE(r.output.find(said), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find(said), r.output.rfind(said)) << "more than one rank said it: " << r.output;
  for (const std::string& part : {std::string("the tensors of its 2 ranks hold "),
                                  "that Slurm's --mem allows (SLURM_MEM_PER_NODE=" + std::to_string(limit) + ")"})
    EXPECT_NE(r.output.find(part), std::string::npos) << part << ": " << r.output;
  EXPECT_FALSE(fs::exists(root() / "memory-shared"));
}

// Ranks that fit at the start but not with a step's activations are refused in the step: the job
// ends with exit status 2 and the one-line OutOfMemory with its remedy (from each rank refused:
// which is a race), without a hang, and the directory is left as found (no step completed), for
// the same command with more room. The limit is set between what the ranks hold at the start and
// what they hold together whatever their timing: a rank's step peak beside the other's models and
// optimizer state, as a run that fits reports them. (A fresh run: a resumed one also holds the
// checkpoint's tensors while it reads them, which may pass such a limit before the steps.)
TEST_F(Distributed, ARefusalInAStepEndsTheJobInOneLinePerRank) {
  CliResult r = train(two_ranks_with_mem(1 << 20), "memory-fits-steps", "", 2);
  ASSERT_EQ(r.code, 0) << r.output;
  const auto [start, first] = start_holding(r.output);
  double rank_peak = 0;  // the larger rank's, in its steps
  for (const nlohmann::json& line : step_lines(root() / "memory-fits-steps"))
    rank_peak = std::max(rank_peak, line.at("host_tensors_peak_bytes").get<double>() / (1 << 20));
  const double together = rank_peak + std::min(first, start - first);
  const auto limit = static_cast<int64_t>(std::ceil((start + together) / 2));
  ASSERT_GT(static_cast<double>(limit), start + 1) << "start " << start << " MiB, together " << together << " MiB";
  ASSERT_LT(static_cast<double>(limit), together - 1) << "start " << start << " MiB, together " << together << " MiB";

  r = train(two_ranks_with_mem(limit), "memory-refused-in-a-step", "", 2);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(", steps 0..2, output "), std::string::npos) << "refused before its steps: " << r.output;
  const std::string said = "qarac-train: error: out of memory on ";
  EXPECT_NE(r.output.find(said), std::string::npos) << r.output;
  // Each a line of its own, with the remedy.
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);)
    if (line.find("out of memory") != std::string::npos) {
      EXPECT_EQ(line.rfind(said, 0), 0u) << line;
      EXPECT_NE(line.find("train.micro_tokens runs each step in smaller micro-batches"), std::string::npos) << line;
    }
  EXPECT_FALSE(fs::exists(root() / "memory-refused-in-a-step"));
}

// Before: ranks of a task that read different streams (one re-prepared while the job started,
// node-local copies that differ) trained on both without a word, and the checkpoint recorded the
// checksum of neither. Here each rank has a data folder of its own (MPMD), whose reasoning
// streams differ.
TEST_F(Distributed, RanksOfATaskReadingDifferentStreamsAreRefused) {
  const fs::path other = data_with_another("data-other-reasoning", "reasoning", "--avicenna", "Avicenna_Test.csv");
  const auto rank = [&](const fs::path& data) {
    return std::string(QARAC_TRAIN_EXE) + " --output " + (root() / "different-streams").string() + " --model.base " +
           (root() / "base").string() + " --data.dir " + data.string() +
           " --train.dtype f64 --train.steps 1 --optimizer.warmup 0 --parallel.tasks ed:2,qa:2,rs:2,cs:2 --checkpoint.every 0 --eval.every 0" +
           batches("");
  };
  const CliResult r =
      run_command("timeout " + std::to_string(kRunLimit) + " " + per_rank({rank(root() / "data"), rank(other)}));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find((root() / "data" / "reasoning.h5").string() +
                          ": the ranks of task reasoning read different streams (checksums 0x"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(root() / "different-streams"));
}

// Ranks whose CPUs OpenBLAS serves with other kernels (a cluster of mixed nodes; stood in for by
// OPENBLAS_CORETYPE set per rank, to kernels any x86-64 CPU runs) compute other last bits for
// the same examples. Before, nothing said so, though the run's results then depend on where its
// examples run; now the first such rank does, naming both kernels; ranks alike say nothing.
TEST_F(Distributed, RanksOnOtherBlasKernelsAreSaid) {
#if !defined(__x86_64__)
  GTEST_SKIP() << "the kernels named are x86-64's";
#else
  const auto rank = [&](const std::string& core, const std::string& run) {
    return "OPENBLAS_CORETYPE=" + core + " " + std::string(QARAC_TRAIN_EXE) + " --output " + (root() / run).string() +
           " --model.base " + (root() / "base").string() + " --data.dir " + (root() / "data").string() +
           " --train.steps 1 --optimizer.warmup 0 --checkpoint.every 0 --eval.every 0" + batches("");
  };
  const std::string timeout = "timeout " + std::to_string(kRunLimit) + " ";
  CliResult r = run_command(timeout + per_rank({rank("Core2", "mixed-blas"), rank("Prescott", "mixed-blas")}));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("rank 1 (" + hostname() + ") runs OpenBLAS's Prescott kernels, rank 0 Core2: their " +
                          "products of the same numbers differ in the last bits"),
            std::string::npos)
      << r.output;
  r = run_command(timeout + per_rank({rank("Prescott", "alike-blas"), rank("Prescott", "alike-blas")}));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("runs OpenBLAS's"), std::string::npos) << r.output;
#endif
}

// A resume that one rank refuses (its consistency stream, that task's only one, holds other data
// than the checkpoint's) ends the job before rank 0 rewrites the run's records: config.ini and
// metrics.jsonl stay as they were. Before, rank 0 restored its own parts and wrote config.ini,
// with the note of a resume at another rate that never ran, while rank 1 refused.
TEST_F(Distributed, AResumeAnotherRankRefusesLeavesTheRecordsAsTheyWere) {
  const std::string plan = " --parallel.tasks ed:1,qa:1,rs:1,cs:1";  // rank 1 runs qa and cs
  const CliResult first = train(mpirun(2), "resume-refused", plan, 2);
  ASSERT_EQ(first.code, 0) << first.output;
  const fs::path run = root() / "resume-refused";
  const fs::path other = data_with_another("data-other-consistency", "consistency", "--snli", "snli_1.0_dev.txt");
  const std::string ini = test_support::read_text((run / "config.ini").string());
  const std::string metrics = test_support::read_text((run / "metrics.jsonl").string());
  const auto rank = [&](const fs::path& data) {
    return std::string(QARAC_TRAIN_EXE) + " --output " + run.string() + " --model.base " + (root() / "base").string() +
           " --data.dir " + data.string() + " --resume --train.dtype f64 --model.dropout " + kDropout +
           " --train.steps 4 --optimizer.lr 1e-2 --optimizer.warmup 1 --optimizer.decay constant" +
           " --checkpoint.every 0 --eval.every 0" + plan + batches("");
  };
  const CliResult r =
      run_command("timeout " + std::to_string(kRunLimit) + " " + per_rank({rank(root() / "data"), rank(other)}));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find((other / "consistency.h5").string() + ": the checkpoint was made with another task stream"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(test_support::read_text((run / "config.ini").string()), ini);
  EXPECT_EQ(test_support::read_text((run / "metrics.jsonl").string()), metrics);
}

// Rank 0 alone evaluates; the fingerprint of its evaluation goes to every rank, so that every part
// of a checkpoint records it, whichever rank wrote it (a resume compares the one in the parts its
// rank reads). Here rank 1 alone holds the question encoder, and writes its part.
TEST_F(Distributed, EveryPartOfACheckpointRecordsTheEvaluation) {
  const std::string eval = " --parallel.tasks ed:1,qa:1,rs:1,cs:1 --eval.dir " + (root() / "data").string() +
                           " --eval.examples 4 --eval.decoded 1";
  const CliResult r = train(mpirun(2), "evaluation-recorded", eval, 2);
  ASSERT_EQ(r.code, 0) << r.output;
  const H5FileKind kind{kCheckpointFormat, kCheckpointVersion, "checkpoint"};
  std::set<int64_t> recorded;
  int parts = 0;
  for (const auto& entry : fs::directory_iterator(root() / "evaluation-recorded" / "checkpoints" / "step-0000000002")) {
    ChecksummedH5Reader reader(entry.path().string(), kind);
    const H5Contents contents =
        reader.read([](const std::string& name, const Shape&) { return name == "state/evaluation"; });
    ASSERT_EQ(contents.count("state/evaluation"), 1u) << entry.path();
    recorded.insert(contents.at("state/evaluation").values.data<int64_t>()[0]);
    ++parts;
  }
  EXPECT_EQ(parts, 3);
  ASSERT_EQ(recorded.size(), 1u);
  EXPECT_NE(*recorded.begin(), 0);
}

// A rank opens the streams of its own tasks only: rank 0 estimates the plan's costs from every
// stream and tells the others (before, each of W ranks read the whole dataset for them). Rank 1,
// holding qa and cs under ed:1,qa:1,rs:1,cs:1 at W = 2, is given a folder with only those two.
TEST_F(Distributed, RanksOpenOnlyTheStreamsOfTheirTasks) {
  const fs::path own = root() / "data-qa-cs";
  fs::create_directories(own);
  for (const char* task : {"question_answering", "consistency"})
    fs::copy_file(root() / "data" / (std::string(task) + ".h5"), own / (std::string(task) + ".h5"),
                  fs::copy_options::overwrite_existing);
  const auto rank = [&](const fs::path& data) {
    return std::string(QARAC_TRAIN_EXE) + " --output " + (root() / "own-streams").string() + " --model.base " +
           (root() / "base").string() + " --data.dir " + data.string() +
           " --train.steps 1 --optimizer.warmup 0 --parallel.tasks ed:1,qa:1,rs:1,cs:1 --checkpoint.every 0"
           " --eval.every 0" + batches("");
  };
  const CliResult r =
      run_command("timeout " + std::to_string(kRunLimit) + " " + per_rank({rank(root() / "data"), rank(own)}));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("step 1/1"), std::string::npos) << r.output;
}

// ---- model.mode mlm: masked-LM pre-training of the base is layout-invariant too ----
// The masks of a token are keyed by (example id, position, token), dropout by the example id, and
// the loss is the mean over the masked tokens of the whole global batch (every rank counts them
// from the global batch the loader gives it): W ranks and micro-batches end where one process
// ends, with the same logged loss.
const std::string kMlm = "--model.mode mlm --model.tokenizer " + kSample + "tokenizer";

struct MlmLayout {
  const char* label;
  int world;
  const char* options;
};
void PrintTo(const MlmLayout& layout, std::ostream* os) { *os << layout.label; }

class MlmInvariant : public Distributed, public ::testing::WithParamInterface<MlmLayout> {};

TEST_P(MlmInvariant, EveryLayoutPretrainsWhatOneProcessPretrains) {
  const MlmLayout& layout = GetParam();
  reference("reference-mlm", kMlm);
  const std::string name = std::string("mlm-") + layout.label;
  const CliResult r = train(layout.world > 1 ? mpirun(layout.world) : "", name,
                            kMlm + " --parallel.check_every 1 --parallel.bucket_mb 0.01 " + layout.options);
  ASSERT_EQ(r.code, 0) << r.output;
  if (layout.world > 1) {
    EXPECT_NE(r.output.find("every model's replicas are identical"), std::string::npos) << r.output;
  }
  expect_same_models(name, "reference-mlm", kBound, {"base"});
  const std::vector<nlohmann::json> lines = step_lines(root() / name), expected = step_lines(root() / "reference-mlm");
  ASSERT_EQ(lines.size(), 6u);
  ASSERT_EQ(expected.size(), 6u);
  for (size_t i = 0; i < lines.size(); ++i) {
    const double got = lines[i].at("loss").at("encode_decode").get<double>();
    const double want = expected[i].at("loss").at("encode_decode").get<double>();
    EXPECT_NEAR(got, want, 1e-12 * std::max(1.0, std::fabs(want))) << "MLM loss at step " << i + 1;
    EXPECT_EQ(lines[i].at("global_tokens"), expected[i].at("global_tokens"));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, MlmInvariant,
    ::testing::Values(MlmLayout{"W1_micro_batches", 1, kMicro}, MlmLayout{"W3", 3, ""},
                      MlmLayout{"W3_micro_batches", 3, kMicro}),
    [](const ::testing::TestParamInfo<MlmLayout>& layout) { return std::string(layout.param.label); });

// The bound tells runs apart: another seed (other data order, masks and dropout) ends far from
// the reference.
TEST_F(Distributed, MlmRunsOfAnotherSeedDiffer) {
  reference("reference-mlm", kMlm);
  const CliResult r = train("", "mlm-seed-3", kMlm + " --train.seed 3");
  ASSERT_EQ(r.code, 0) << r.output;
  const double diff = export_difference(root() / "mlm-seed-3" / "export" / "base",
                                        root() / "reference-mlm" / "export" / "base").first;
  EXPECT_GT(diff, 1e-6);
  std::printf("mlm-seed-3 base against the reference: %.3e\n", diff);
}

// ---- the collective schedule (docs/distributed.md §7) ----
// Every rank traces what it launches (QARAC_TRACE_COLLECTIVES): the gradient buckets of every
// group, the norm, statistics and replica-check all-reduces, the barriers and the creation of the
// groups; together the launches admit one global order. In this plan rank 0 runs ED and QA (it
// finishes D before QE) and rank 2 QA and RS (QE before D): they share the groups of QE, AE, D
// and the shared base, and would cross if each launched its buckets as its tasks finish them.
// With the contrastive QA objective, the four QA ranks also exchange their vectors every step,
// on a group of their own, before any bucket of the step.
TEST_F(Distributed, CollectiveLaunchesOfEveryRankFollowOneGlobalOrder) {
  const fs::path traces = root() / "traces-5";
  const CliResult r = train("env QARAC_TRACE_COLLECTIVES=" + traces.string() + " " + mpirun(5) +
                                forward_env("QARAC_TRACE_COLLECTIVES"),
                            "traced-5",
                            std::string("--parallel.tasks ed:2,qa:4,rs:2,cs:1 --parallel.check_every 1 "
                                        "--parallel.bucket_mb 0.01 --task.qa.objective contrastive ") + kSharedTied,
                            3);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::vector<parallel::CollectiveLog> logs = parallel::read_collective_traces(traces.string());
  ASSERT_EQ(logs.size(), 5u);
  EXPECT_EQ(parallel::collective_order_error(logs), "");
  size_t buckets = 0, world = 0, gathers = 0;
  for (const parallel::CollectiveLog& log : logs)
    for (const parallel::Collective& c : log) {
      buckets += c.op == "all_reduce" && c.comm.find(" ranks ") != std::string::npos;
      world += c.comm == "the world";
      gathers += c.op == "all_gather";
    }
  EXPECT_GT(buckets, 100u) << "the traces hold the gradient buckets";
  EXPECT_GT(world, 20u) << "the traces hold the world's collectives";
  // Two all-gathers (the counts, then the vectors) per step on each of the four QA ranks.
  EXPECT_EQ(gathers, 3u * 4u * 2u) << "the traces hold the QA ranks' exchanges";
  std::printf("5 ranks: %zu bucket all-reduces, %zu collectives on the world\n", buckets, world);
}

}  // namespace
