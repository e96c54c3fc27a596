// The NCCL backend of the gradient all-reduce: the communicator's creation (unique id broadcast
// over MPI, non-blocking init), an all-reduce of f32 and bf16 buckets ordered after the compute
// stream summed over every rank, and the timed wait; two communicators launch on the process's one
// communication stream. Under mpirun each rank takes its own GPU as qarac-train does
// (Runtime::use_local_gpu; NCCL refuses two ranks on one GPU), so one GPU runs one rank, where a
// sum is the identity, and tests/device/run.sh runs one rank per GPU; the multi-rank reduction
// path (buckets, groups, the invariant) is tested over MPI on the CPU too. Skipped without a CUDA
// device. With QARAC_CHECK_COLLECTIVE_TRACE=<folder>, CollectiveTrace checks the trace a run
// wrote there (QARAC_TRACE_COLLECTIVES) for one global order (tests/device/run.sh).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/error.h"
#include "core/memory.h"
#include "parallel/collective_trace.h"
#include "parallel/communicator.h"
#include "parallel/runtime.h"

using namespace qarac;

namespace {

// This rank's GPU, chosen in main; -1 without one.
int rank_gpu = -1;

// Each rank's bucket is the values times (its rank + 1): the sum over W ranks is the values
// times W (W + 1) / 2. The values are small integers, so every sum is exact in bf16 too.
TEST(Nccl, AllReduceSumsEveryRanksBucket) {
  if (rank_gpu < 0) GTEST_SKIP() << "no CUDA device (or no CUDA backend in this build)";
  ASSERT_TRUE(parallel::nccl_available());
  const parallel::MpiGroup world(MPI_COMM_WORLD, "the world", 60);
  const std::unique_ptr<parallel::Communicator> comm = parallel::make_nccl_communicator(world);
  EXPECT_STREQ(comm->backend(), "nccl");
  const float ranks = static_cast<float>(world.size());
  std::vector<float> mine(3000), sum(3000);
  for (size_t i = 0; i < mine.size(); ++i) {
    const float value = static_cast<float>(static_cast<int>(i % 5) - 2);
    mine[i] = value * static_cast<float>(world.rank() + 1);
    sum[i] = value * ranks * (ranks + 1) / 2;
  }
  for (DType dtype : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor host = Tensor::from_vector(mine, {3, 1000}).to(dtype);
    Tensor bucket = host.to(Device::cuda(rank_gpu));
    Tensor second = host.to(Device::cuda(rank_gpu));
    comm->start_all_reduce(bucket);
    comm->start_all_reduce(second);
    comm->wait("test all-reduce");
    EXPECT_EQ(bucket.to(Device::cpu()).to(DType::f32).to_vector<float>(), sum);
    EXPECT_EQ(second.to(Device::cpu()).to(DType::f32).to_vector<float>(), sum);
  }
}

// Launches of two communicators interleaved on the shared stream all complete, each waited for
// by its own communicator.
TEST(Nccl, TwoCommunicatorsInterleaveOnOneStream) {
  if (rank_gpu < 0) GTEST_SKIP() << "no CUDA device (or no CUDA backend in this build)";
  const parallel::MpiGroup first_group(MPI_COMM_WORLD, "first", 60), second_group(MPI_COMM_WORLD, "second", 60);
  const std::unique_ptr<parallel::Communicator> first = parallel::make_nccl_communicator(first_group);
  const std::unique_ptr<parallel::Communicator> second = parallel::make_nccl_communicator(second_group);
  const std::vector<float> values = {1.5f, -2.0f, 3.25f, 0.0f};
  std::vector<float> sum;
  for (float v : values) sum.push_back(v * static_cast<float>(first_group.size()));
  const Tensor host = Tensor::from_vector(values, {4});
  std::vector<Tensor> buckets;
  for (int i = 0; i < 4; ++i) buckets.push_back(host.to(Device::cuda(rank_gpu)));
  for (int i = 0; i < 4; ++i) (i % 2 ? second : first)->start_all_reduce(buckets[static_cast<size_t>(i)]);
  first->wait("first");
  second->wait("second");
  for (const Tensor& b : buckets) EXPECT_EQ(b.to(Device::cpu()).to_vector<float>(), sum);
}

// The trace of a run (QARAC_TRACE_COLLECTIVES) admits one global order of its collectives.
TEST(CollectiveTrace, RunLaunchesInOneGlobalOrder) {
  const char* folder = std::getenv("QARAC_CHECK_COLLECTIVE_TRACE");
  if (!folder || !*folder) GTEST_SKIP() << "QARAC_CHECK_COLLECTIVE_TRACE names no trace folder";
  const std::vector<parallel::CollectiveLog> logs = parallel::read_collective_traces(folder);
  size_t launches = 0;
  for (const parallel::CollectiveLog& log : logs) launches += log.size();
  std::printf("%zu ranks, %zu collective launches\n", logs.size(), launches);
  EXPECT_EQ(parallel::collective_order_error(logs), "");
}

TEST(Nccl, BackendNeedsCudaTensors) {
  if (rank_gpu < 0) GTEST_SKIP() << "no CUDA device (or no CUDA backend in this build)";
  const parallel::MpiGroup world(MPI_COMM_WORLD, "the world", 60);
  const std::unique_ptr<parallel::Communicator> comm = parallel::make_nccl_communicator(world);
  Tensor cpu = Tensor::zeros({4}, DType::f32);
  EXPECT_THROW(comm->start_all_reduce(cpu), Error);
}

}  // namespace

int main(int argc, char** argv) {
  const parallel::Runtime runtime(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  try {
    // One GPU per rank of a node, as qarac-train takes them.
    if (cuda_device_count() > 0) rank_gpu = runtime.use_local_gpu(/*share_gpus=*/false, 60);
  } catch (const InputError& e) {
    std::fprintf(stderr, "test_nccl: %s\n", e.what());
    return 2;
  }
  return RUN_ALL_TESTS();
}
