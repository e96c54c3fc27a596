// MpiGroup's reductions over several ranks, under mpiexec (tests/mpi/CMakeLists.txt: 2 ranks): one
// rank alone never applies the operation, so only a run of several shows what the library does.
// MPICH 4.0.2 (Debian 12's) compares unsigned integers as signed in MPI_MAX and MPI_MIN
// (pmodels/mpich#6083): the maximum of a checksum with its top bit set and 0 is 0, which made
// every run of more than one rank refuse its task streams. So that this is tested whatever MPI
// the build uses, this program takes MPI_Iallreduce's place (the MPI profiling interface) and
// reduces as MPICH 4.0.2 does.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdint>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/runtime.h"

using namespace qarac;

extern "C" int MPI_Iallreduce(const void* send, void* receive, int count, MPI_Datatype type, MPI_Op op, MPI_Comm comm,
                              MPI_Request* request) {
  if (type == MPI_UINT64_T && (op == MPI_MAX || op == MPI_MIN)) type = MPI_INT64_T;
  return PMPI_Iallreduce(send, receive, count, type, op, comm, request);
}

namespace {

constexpr uint64_t kTop = uint64_t{1} << 63;
// A task stream's checksum (task_loaders.cpp reduces it with the zeros of the ranks that do not
// read the task).
constexpr uint64_t kChecksum = 0xac504281905ff89cULL;

// Rank 0 holds the first value of each pair, every other rank the second.
std::vector<uint64_t> own_values(int rank) {
  const std::vector<uint64_t> first = {UINT64_MAX, kTop, kChecksum, 7};
  const std::vector<uint64_t> others = {1, kTop - 1, 0, 3};
  return rank == 0 ? first : others;
}

TEST(MpiGroup, MaxAndMinOfUint64AreUnsignedOverEveryRank) {
  const parallel::MpiGroup world(MPI_COMM_WORLD, "the world", 60);
  ASSERT_GE(world.size(), 2) << "run this under mpiexec with 2 ranks or more";
  std::vector<uint64_t> maxima = own_values(world.rank()), minima = maxima;
  world.all_reduce(maxima.data(), static_cast<int>(maxima.size()), MPI_MAX, "the test's maxima");
  world.all_reduce(minima.data(), static_cast<int>(minima.size()), MPI_MIN, "the test's minima");
  EXPECT_EQ(maxima, (std::vector<uint64_t>{UINT64_MAX, kTop, kChecksum, 7}));
  EXPECT_EQ(minima, (std::vector<uint64_t>{1, kTop - 1, 0, 3}));
}

TEST(MpiGroup, SumOfUint64WrapsAsUnsigned) {
  const parallel::MpiGroup world(MPI_COMM_WORLD, "the world", 60);
  std::vector<uint64_t> sums = own_values(world.rank());
  world.all_reduce(sums.data(), static_cast<int>(sums.size()), MPI_SUM, "the test's sums");
  const uint64_t others = static_cast<uint64_t>(world.size() - 1);
  EXPECT_EQ(sums, (std::vector<uint64_t>{UINT64_MAX + others, kTop + others * (kTop - 1), kChecksum, 7 + 3 * others}));
}

}  // namespace

int main(int argc, char** argv) {
  const parallel::Runtime runtime(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
