// The NCCL backend of the gradient all-reduce on one rank: the communicator's creation (unique
// id broadcast over MPI, non-blocking init), an all-reduce of f32 and bf16 buckets ordered after
// the compute stream, and the timed wait. One rank, because NCCL refuses two ranks on one GPU;
// the multi-rank reduction path (buckets, groups, the invariant) is tested over MPI on the CPU.
// Two communicators launch on the process's one communication stream. Skipped without a CUDA
// device. With QARAC_CHECK_COLLECTIVE_TRACE=<folder>, CollectiveTrace checks the trace a run
// wrote there (QARAC_TRACE_COLLECTIVES) for one global order (tests/device/run.sh).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/memory.h"
#include "parallel/collective_trace.h"
#include "parallel/communicator.h"

using namespace qarac;

namespace {

TEST(Nccl, SingleRankAllReduceKeepsTheBucket) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (or no CUDA backend in this build)";
  ASSERT_TRUE(parallel::nccl_available());
  const parallel::MpiGroup world(MPI_COMM_WORLD, "the world", 60);
  const std::unique_ptr<parallel::Communicator> comm = parallel::make_nccl_communicator(world);
  EXPECT_STREQ(comm->backend(), "nccl");
  std::vector<float> values(3000);
  for (size_t i = 0; i < values.size(); ++i) values[i] = 0.25f * static_cast<float>(i % 97) - 3.0f;
  for (DType dtype : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor host = Tensor::from_vector(values, {3, 1000}).to(dtype);
    Tensor bucket = host.to(Device::cuda(0));
    Tensor second = host.to(Device::cuda(0));
    comm->start_all_reduce(bucket);
    comm->start_all_reduce(second);
    comm->wait("test all-reduce");
    // A sum over one rank is the identity, bit for bit (these values are exact in bf16).
    EXPECT_EQ(bucket.to(Device::cpu()).to(DType::f32).to_vector<float>(), host.to(DType::f32).to_vector<float>());
    EXPECT_EQ(second.to(Device::cpu()).to(DType::f32).to_vector<float>(), host.to(DType::f32).to_vector<float>());
  }
}

// Launches of two communicators interleaved on the shared stream all complete, each waited for
// by its own communicator.
TEST(Nccl, TwoCommunicatorsInterleaveOnOneStream) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (or no CUDA backend in this build)";
  const parallel::MpiGroup first_group(MPI_COMM_WORLD, "first", 60), second_group(MPI_COMM_WORLD, "second", 60);
  const std::unique_ptr<parallel::Communicator> first = parallel::make_nccl_communicator(first_group);
  const std::unique_ptr<parallel::Communicator> second = parallel::make_nccl_communicator(second_group);
  const Tensor host = Tensor::from_vector(std::vector<float>{1.5f, -2.0f, 3.25f, 0.0f}, {4});
  std::vector<Tensor> buckets;
  for (int i = 0; i < 4; ++i) buckets.push_back(host.to(Device::cuda(0)));
  for (int i = 0; i < 4; ++i) (i % 2 ? second : first)->start_all_reduce(buckets[static_cast<size_t>(i)]);
  first->wait("first");
  second->wait("second");
  for (const Tensor& b : buckets) EXPECT_EQ(b.to(Device::cpu()).to_vector<float>(), host.to_vector<float>());
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
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (or no CUDA backend in this build)";
  const parallel::MpiGroup world(MPI_COMM_WORLD, "the world", 60);
  const std::unique_ptr<parallel::Communicator> comm = parallel::make_nccl_communicator(world);
  Tensor cpu = Tensor::zeros({4}, DType::f32);
  EXPECT_THROW(comm->start_all_reduce(cpu), Error);
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  const int result = RUN_ALL_TESTS();
  MPI_Finalize();
  return result;
}
