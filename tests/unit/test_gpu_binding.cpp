// Which GPU each rank of a node uses (parallel::assign_gpus): the node's GPUs one per local rank,
// the launcher's binding (Slurm --gpus-per-task, --gpu-bind: each rank sees its own GPUs) kept,
// and more ranks than GPUs an error naming the counts unless --parallel.share_gpus.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "parallel/runtime.h"
#include "support/test_support.h"

using namespace qarac;
using parallel::assign_gpus;
using test_support::expect_input_error;
using Visible = std::vector<std::vector<std::string>>;

namespace {

TEST(GpuBinding, EveryRankSeesTheNodesGpusAndTakesTheOneOfItsLocalRank) {
  const Visible four(4, {"A", "B", "C", "D"});
  EXPECT_EQ(assign_gpus(four, false, "node1"), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(assign_gpus(Visible(2, {"A", "B", "C", "D"}), false, "node1"), (std::vector<int>{0, 1}));
  EXPECT_EQ(assign_gpus(Visible(1, {"A"}), false, "node1"), (std::vector<int>{0}));
}

// srun --gpus-per-task=1 (or --gpu-bind with one GPU a task): every rank sees one GPU, its own,
// as device 0.
TEST(GpuBinding, OneGpuPerTaskFromSlurmIsDeviceZeroOfEveryRank) {
  EXPECT_EQ(assign_gpus({{"A"}, {"B"}, {"C"}, {"D"}}, false, "node1"), (std::vector<int>{0, 0, 0, 0}));
  // --gpus-per-task=2: a rank uses the first of its two.
  EXPECT_EQ(assign_gpus({{"A", "B"}, {"C", "D"}}, false, "node1"), (std::vector<int>{0, 0}));
}

TEST(GpuBinding, MoreRanksThanGpusIsAnErrorNamingTheCounts) {
  expect_input_error([] { assign_gpus(Visible(5, {"A", "B", "C", "D"}), false, "node1"); },
                     {"5 ranks on node1", "4 GPUs", "local rank 4 sees 4", "--parallel.share_gpus",
                      "--gpus-per-task=1"});
  expect_input_error([] { assign_gpus(Visible(2, {"A"}), false, "node7"); },
                     {"2 ranks on node7", "1 GPU among them", "local rank 1"});
  // Two ranks bound to one GPU by the launcher.
  expect_input_error([] { assign_gpus({{"A"}, {"B"}, {"A"}}, false, "node1"); },
                     {"3 ranks on node1", "2 GPUs", "local rank 2"});
  expect_input_error([] { assign_gpus({{"A"}, {}}, false, "node1"); },
                     {"local rank 1 on node1 sees no CUDA device"});
}

TEST(GpuBinding, SharedGpusGoToTheLeastUsedWithShareGpus) {
  EXPECT_EQ(assign_gpus(Visible(6, {"A", "B", "C", "D"}), true, "node1"), (std::vector<int>{0, 1, 2, 3, 0, 1}));
  EXPECT_EQ(assign_gpus(Visible(3, {"A"}), true, "node1"), (std::vector<int>{0, 0, 0}));
}

}  // namespace
