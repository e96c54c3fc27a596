// Distributed training over MPI (DESIGN.md §4), run as a user runs it: qarac-train under mpirun
// (oversubscribed on this machine) on the sample data with a random tiny base.
//   The invariant: W ranks (W = 1, 2, 3, 4, 5, 8) after k steps hold the parameters that one
//   process computes from the same global batch (qarac-train --parallel.simulate_world W), and
//   every replica of a model holds bit-identical parameters.
//   Never hang: a rank killed by SIGKILL, a rank that stalls, and replicas that diverge each end
//   the job with a non-zero status and a message naming what failed; every run is bounded by
//   `timeout`, so a hang fails the test instead of blocking the suite.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "support/test_support.h"
#include "support/training_fixtures.h"

namespace fs = std::filesystem;
using namespace qarac;
using test_support::CliResult;
using test_support::run_command;
using test_support::TempDir;

namespace {

const std::string kSample = std::string(QARAC_SAMPLE_DIR) + "/";
// Every run ends within this many seconds or fails the test (`timeout` exits 124).
constexpr int kRunLimit = 300;

std::string mpirun(int ranks) {
  std::string command = std::string(QARAC_MPIEXEC) + " -np " + std::to_string(ranks) + " --oversubscribe";
  if (geteuid() == 0) command += " --allow-run-as-root";  // containers and CI run as root
  return command;
}

// mpirun of `ranks` ranks with the test hook QARAC_FAULT=`fault` set in every rank.
std::string with_fault(const std::string& fault, int ranks) {
  return "env QARAC_FAULT=" + fault + " " + mpirun(ranks) + " -x QARAC_FAULT";
}

// Reads one dataset of f64 values from an HDF5 file (a checkpoint's master weights).
std::vector<double> read_h5_doubles(const fs::path& file, const std::string& dataset) {
  std::vector<double> values;
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) return values;
  const hid_t d = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
  if (d >= 0) {
    const hid_t space = H5Dget_space(d);
    values.resize(static_cast<size_t>(H5Sget_simple_extent_npoints(space)));
    H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data());
    H5Sclose(space);
    H5Dclose(d);
  }
  H5Fclose(f);
  return values;
}

// The names of the datasets under /parameters of a checkpoint.
std::vector<std::string> checkpoint_parameters(const fs::path& file) {
  std::vector<std::string> names;
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) return names;
  const hid_t g = H5Gopen2(f, "/parameters", H5P_DEFAULT);
  hsize_t count = 0;
  H5Gget_num_objs(g, &count);
  for (hsize_t i = 0; i < count; ++i) {
    char name[512];
    H5Gget_objname_by_idx(g, i, name, sizeof name);
    names.emplace_back(name);
  }
  H5Gclose(g);
  H5Fclose(f);
  return names;
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

  // qarac-train (under `launcher`, which may be empty) for `steps` steps of the tiny model in f64,
  // with dropout, writing to root()/name.
  static CliResult train(const std::string& launcher, const std::string& name, const std::string& args,
                         int steps = 3) {
    return run_command("timeout " + std::to_string(kRunLimit) + " " + launcher + " " + QARAC_TRAIN_EXE +
                       " --output " + (root() / name).string() + " --model.base " + (root() / "base").string() +
                       " --data.dir " + (root() / "data").string() +
                       " --train.dtype f64 --model.dropout 0.1 --train.log_every 1 --train.steps " + std::to_string(steps) +
                       " --optimizer.lr 1e-3 --optimizer.warmup 1 --optimizer.clip 1"
                       " --task.ed.tokens 160 --task.qa.tokens 160 --task.rs.tokens 160 --task.cs.tokens 160"
                       " --checkpoint.every 0 --eval.every 0 " + args);
  }

  static TempDir* root_;
};

TempDir* Distributed::root_ = nullptr;

// How far two exports of a model lie apart: max |a − b| over every tensor, relative to the
// model's largest weight, and the tensor where it is largest. Relative to the whole model, not
// to each tensor: a tensor whose exact value stays zero (the attention key bias, whose gradient
// cancels in the softmax) holds only rounding noise, and noise relative to noise means nothing.
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

// A world size, and model options (a shared encoder base and a tied LM head change the groups).
struct Layout {
  int world;
  const char* options;
  const char* label;
};

class Invariant : public Distributed, public ::testing::WithParamInterface<Layout> {};

// W ranks and one process simulating them end at the same parameters; the replicas of every
// model agree at every step (the replica check runs each step and stops the job otherwise) and
// their checkpoints hold bit-identical master weights.
TEST_P(Invariant, RanksMatchOneProcessOnTheGlobalBatch) {
  const int world = GetParam().world;
  const std::string w = std::string(GetParam().label), options = GetParam().options;
  const CliResult reference = train("", "reference-" + w, "--parallel.simulate_world " + std::to_string(world) + " " + options);
  ASSERT_EQ(reference.code, 0) << reference.output;
  // 10 KiB buckets: the large tensors reduce in place, the small ones packed several a bucket.
  const CliResult ranks = train(mpirun(world), "ranks-" + w,
                                "--parallel.check_every 1 --parallel.bucket_mb 0.01 " + options);
  ASSERT_EQ(ranks.code, 0) << ranks.output;
  if (world > 1) {
    EXPECT_NE(ranks.output.find("every model's replicas are identical"), std::string::npos) << ranks.output;
  }

  for (const char* model : {"question_encoder", "answer_encoder", "decoder"}) {
    const auto [diff, where] = export_difference(root() / ("ranks-" + w) / "export" / model,
                                                 root() / ("reference-" + w) / "export" / model);
    // f64 compute: the ranks sum the same per-rank gradients in another order (the all-reduce),
    // which changes the last bits only; 1e-5 is the bound, far above that.
    EXPECT_LT(diff, 1e-5) << model << " with " << world << " ranks, largest in " << where;
    char text[32];
    std::snprintf(text, sizeof text, "%.3e", diff);
    RecordProperty(std::string("max_rel_diff_") + model, text);
  }
  if (world == 1) return;
  // The same parameter in every rank's checkpoint that holds it: bit for bit.
  std::map<std::string, std::vector<double>> first;
  std::map<std::string, int> holders;
  for (int r = 0; r < world; ++r) {
    const fs::path file = root() / ("ranks-" + w) / "checkpoints" / ("rank-" + std::to_string(r)) /
                          "checkpoint-0000000003.h5";
    ASSERT_TRUE(fs::exists(file)) << file;
    for (const std::string& name : checkpoint_parameters(file)) {
      const std::vector<double> values = read_h5_doubles(file, "/parameters/" + name);
      ASSERT_FALSE(values.empty()) << name;
      const auto [it, inserted] = first.emplace(name, values);
      if (!inserted) {
        EXPECT_EQ(it->second, values) << name << " differs on rank " << r;
      }
      ++holders[name];
    }
  }
  // Every rank runs a task that uses AE: its weights are on all of them.
  EXPECT_EQ(holders["answer_encoder.pooling.global_projection.weight"], world);
}

constexpr const char* kSharedTied = "--model.share_encoder_base true --model.tie_lm_head true";
INSTANTIATE_TEST_SUITE_P(WorldSizes, Invariant,
                         ::testing::Values(Layout{1, "", "W1"}, Layout{2, "", "W2"}, Layout{3, "", "W3"},
                                           Layout{4, "", "W4"}, Layout{5, "", "W5"}, Layout{8, "", "W8"},
                                           Layout{3, kSharedTied, "W3_shared_base_tied_head"},
                                           Layout{4, kSharedTied, "W4_shared_base_tied_head"}),
                         [](const ::testing::TestParamInfo<Layout>& layout) { return std::string(layout.param.label); });

// A job stopped after its checkpoint and resumed (every rank from its own folder) ends where a
// straight job ends, bit for bit; resuming with another world size is refused in one line.
TEST_F(Distributed, ResumedJobMatchesAStraightOne) {
  const CliResult straight = train(mpirun(3), "straight", "", 4);
  ASSERT_EQ(straight.code, 0) << straight.output;
  const CliResult first = train(mpirun(3), "resumed", "", 2);
  ASSERT_EQ(first.code, 0) << first.output;
  const CliResult second = train(mpirun(3), "resumed", "--resume", 4);
  ASSERT_EQ(second.code, 0) << second.output;
  EXPECT_NE(second.output.find("at step 2"), std::string::npos) << second.output;
  for (const char* model : {"question_encoder", "answer_encoder", "decoder"}) {
    const auto [diff, where] = export_difference(root() / "resumed" / "export" / model,
                                                 root() / "straight" / "export" / model);
    EXPECT_EQ(diff, 0.0) << model << ", largest in " << where;
  }
  const CliResult other = train(mpirun(2), "resumed", "--resume", 6);
  EXPECT_EQ(other.code, 2) << other.output;
  EXPECT_NE(other.output.find("was trained with 3 rank(s) and this job has 2"), std::string::npos) << other.output;
}

// The job failed by itself: a non-zero status that is not `timeout`'s (124: it hung).
void expect_job_failed(const CliResult& r) {
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.code, 124) << "the job hung until `timeout` ended it:\n" << r.output;
}

// A rank killed mid-run ends the whole job, non-zero, with the launcher or a peer naming it.
TEST_F(Distributed, KilledRankEndsTheJob) {
  const CliResult r = train(with_fault("kill:1:1", 3), "killed",
                            "--parallel.timeout 20", 20);
  expect_job_failed(r);
  EXPECT_NE(r.output.find("killing rank 1 at step 1"), std::string::npos) << r.output;
  const bool named = r.output.find("signal 9") != std::string::npos ||
                     r.output.find("no completion within the timeout") != std::string::npos;
  EXPECT_TRUE(named) << r.output;
}

// A rank that stalls makes its peers' waits time out: they name the operation, the rank, the
// host and the step, and abort the job.
TEST_F(Distributed, StalledRankIsDetectedByTheTimeout) {
  const CliResult r = train(with_fault("stall:2:1", 3), "stalled",
                            "--parallel.timeout 5", 20);
  expect_job_failed(r);
  EXPECT_NE(r.output.find("no completion within the timeout of 5 s"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("at step 2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(hostname()), std::string::npos) << r.output;
}

// Replicas that stop agreeing (one rank's weight shifted) stop the run at the next check.
TEST_F(Distributed, DivergedReplicasStopTheRun) {
  const CliResult r = train(with_fault("diverge:1:2", 2), "diverged",
                            "--parallel.check_every 1 --parallel.timeout 20", 6);
  expect_job_failed(r);
  EXPECT_NE(r.output.find("diverged by step 3"), std::string::npos) << r.output;
}

// A configuration error under mpirun: every rank reports it in one line and the job exits 2.
TEST_F(Distributed, InputErrorEndsTheJobWithStatus2) {
  const CliResult r = train(mpirun(2), "bad", "--parallel.tasks ed:3,qa:1,rs:1,cs:1");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("qarac-train: error: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("parallel.tasks"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(root() / "bad"));
}

}  // namespace
