// The NCCL backend of the gradient all-reduce on one rank: the communicator's creation (unique
// id broadcast over MPI, non-blocking init), an all-reduce of f32 and bf16 buckets ordered after
// the compute stream, and the timed wait. One rank, because NCCL refuses two ranks on one GPU;
// the multi-rank reduction path (buckets, groups, the invariant) is tested over MPI on the CPU.
// Skipped without a CUDA device.
#include <gtest/gtest.h>
#include <mpi.h>

#include <vector>

#include "core/memory.h"
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
