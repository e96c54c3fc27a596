// MpiGroup (the control plane) and the MPI backend of Communicator (CPU gradients). Every
// operation is non-blocking underneath and waited for by polling MPI_Testall against a deadline,
// so a dead or stalled peer becomes a CommError instead of a hang. Polling also drives MPI's
// progress of non-blocking collectives, which Open MPI makes only inside MPI calls.
#include <algorithm>
#include <chrono>
#include <climits>
#include <thread>

#include "core/check_mpi.h"
#include "parallel/collective_trace.h"
#include "parallel/communicator.h"

namespace qarac::parallel {
namespace {

using Clock = std::chrono::steady_clock;

int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

// MPI counts are ints: large messages travel in pieces of at most 1 GiB.
constexpr int64_t kMaxMessage = int64_t{1} << 30;
// The sign bit of an int64_t (MpiGroup::all_reduce of uint64_t).
constexpr uint64_t kTopBit = uint64_t{1} << 63;

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    default: break;
  }
  QARAC_CHECK(false, "MPI all-reduce of ", dtype_name(dtype), " tensors is not supported (f32, f64)");
  return MPI_DATATYPE_NULL;
}

}  // namespace

void free_comm(MPI_Comm& comm) {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
}

MpiGroup::MpiGroup(MPI_Comm comm, std::string name, double timeout_s)
    : name_(std::move(name)), timeout_s_(timeout_s) {
  QARAC_CHECK(timeout_s > 0, "the communication timeout must be positive, got ", timeout_s);
  QARAC_CHECK_MPI(MPI_Comm_rank(comm, &rank_));
  QARAC_CHECK_MPI(MPI_Comm_size(comm, &size_));
  QARAC_CHECK_MPI(MPI_Comm_dup(comm, &comm_));
  try {
    QARAC_CHECK_MPI(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  } catch (...) {  // a constructor that throws runs no destructor
    free_comm(comm_);
    throw;
  }
}

MpiGroup::~MpiGroup() { free_comm(comm_); }

std::unique_ptr<MpiGroup> MpiGroup::subgroup(const std::vector<int>& members, std::string name) const {
  int me = 0;
  QARAC_CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &me));
  const bool member = std::find(members.begin(), members.end(), me) != members.end();
  // MPI_Comm_split is collective and blocking: bracket it with a timed barrier so that a peer
  // that never arrives is reported here rather than hanging the split.
  barrier("creating the group " + name);
  trace_collective(name_, size_, "split", 0);
  MPI_Comm split = MPI_COMM_NULL;
  QARAC_CHECK_MPI(MPI_Comm_split(comm_, member ? 0 : MPI_UNDEFINED, rank_, &split));
  const ScopedCommFree free_split(split);
  if (!member) return nullptr;
  return std::make_unique<MpiGroup>(split, std::move(name), timeout_s_);
}

std::string MpiGroup::describe(const std::string& what, const std::string& reason) const {
  return detail::concat(what, " on ", name_, " (rank ", rank_, " of ", size_, ", world rank ",
                        world_rank(), " on ", hostname(), "): ", reason);
}

void MpiGroup::wait(std::vector<MPI_Request>& requests, const std::string& what) const {
  const Clock::time_point deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s_));
  auto pause = std::chrono::microseconds(1);
  while (true) {
    int done = 0;
    const int rc = MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done,
                               MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) throw CommError(describe(what, detail::mpi_error_string(rc)));
    if (done) return;
    if (Clock::now() > deadline)
      throw CommError(describe(what, detail::concat("no completion within the timeout of ", timeout_s_,
                                                    " s (--parallel.timeout): a peer died or stalls")));
    // Back off to at most 1 ms between polls: prompt for short waits, cheap for long ones.
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(1000));
  }
}

void MpiGroup::barrier(const std::string& what) const {
  std::vector<MPI_Request> request(1);
  trace_collective(name_, size_, "barrier", 0);
  QARAC_CHECK_MPI(MPI_Ibarrier(comm_, &request[0]));
  wait(request, what);
}

void MpiGroup::all_reduce(double* values, int count, MPI_Op op, const std::string& what) const {
  std::vector<MPI_Request> request(1);
  trace_collective(name_, size_, "all_reduce", int64_t{count} * 8);
  QARAC_CHECK_MPI(MPI_Iallreduce(MPI_IN_PLACE, values, count, MPI_DOUBLE, op, comm_, &request[0]));
  wait(request, what);
}

void MpiGroup::all_reduce(uint64_t* values, int count, MPI_Op op, const std::string& what) const {
  // MPICH 4.0.2 (Debian 12's) compares unsigned integers as signed in MPI_MAX and MPI_MIN
  // (pmodels/mpich#6083): a checksum with its top bit set lost to a rank's 0. With the top bit
  // flipped, the signed order of the values is their unsigned order, which every MPI gets right.
  const bool ordered = op == MPI_MAX || op == MPI_MIN;
  if (ordered)
    for (int i = 0; i < count; ++i) values[i] ^= kTopBit;
  std::vector<MPI_Request> request(1);
  trace_collective(name_, size_, "all_reduce", int64_t{count} * 8);
  QARAC_CHECK_MPI(
      MPI_Iallreduce(MPI_IN_PLACE, values, count, ordered ? MPI_INT64_T : MPI_UINT64_T, op, comm_, &request[0]));
  wait(request, what);
  if (ordered)
    for (int i = 0; i < count; ++i) values[i] ^= kTopBit;
}

void MpiGroup::broadcast(void* bytes, int count, int root, const std::string& what) const {
  std::vector<MPI_Request> request(1);
  trace_collective(name_, size_, "broadcast", count);
  QARAC_CHECK_MPI(MPI_Ibcast(bytes, count, MPI_BYTE, root, comm_, &request[0]));
  wait(request, what);
}

std::vector<double> MpiGroup::all_gather_rows(const std::vector<double>& mine, int64_t width, int64_t* first_row,
                                              const std::string& what) const {
  QARAC_CHECK(width > 0 && static_cast<int64_t>(mine.size()) % width == 0, what, ": ", mine.size(),
              " values are no whole number of rows of ", width);
  std::vector<MPI_Request> request(1);
  std::vector<int64_t> rows(static_cast<size_t>(size_), 0);
  rows[static_cast<size_t>(rank_)] = static_cast<int64_t>(mine.size()) / width;
  trace_collective(name_, size_, "all_gather", int64_t{8} * size_);
  QARAC_CHECK_MPI(MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, rows.data(), 1, MPI_INT64_T, comm_, &request[0]));
  wait(request, what);
  // MPI counts and displacements are ints: a gathered batch holds far fewer values.
  std::vector<int> counts(rows.size()), displacements(rows.size());
  int64_t total = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    QARAC_CHECK(total + rows[r] * width <= INT_MAX, what, ": ", total + rows[r] * width,
                " values are more than one MPI_Allgatherv moves");
    counts[r] = static_cast<int>(rows[r] * width);
    displacements[r] = static_cast<int>(total);
    total += rows[r] * width;
  }
  *first_row = displacements[static_cast<size_t>(rank_)] / width;
  std::vector<double> all(static_cast<size_t>(total));
  trace_collective(name_, size_, "all_gather", total * 8);
  QARAC_CHECK_MPI(MPI_Iallgatherv(mine.data(), counts[static_cast<size_t>(rank_)], MPI_DOUBLE, all.data(),
                                  counts.data(), displacements.data(), MPI_DOUBLE, comm_, &request[0]));
  wait(request, what);
  return all;
}

void MpiGroup::send(const void* bytes, int64_t count, int to, int tag, const std::string& what) const {
  std::vector<MPI_Request> requests;
  const char* p = static_cast<const char*>(bytes);
  for (int64_t done = 0; done < count; done += kMaxMessage) {
    requests.emplace_back();
    QARAC_CHECK_MPI(MPI_Isend(p + done, static_cast<int>(std::min(kMaxMessage, count - done)), MPI_BYTE,
                              to, tag, comm_, &requests.back()));
  }
  wait(requests, what);
}

void MpiGroup::receive(void* bytes, int64_t count, int from, int tag, const std::string& what) const {
  std::vector<MPI_Request> requests;
  char* p = static_cast<char*>(bytes);
  for (int64_t done = 0; done < count; done += kMaxMessage) {
    requests.emplace_back();
    QARAC_CHECK_MPI(MPI_Irecv(p + done, static_cast<int>(std::min(kMaxMessage, count - done)), MPI_BYTE,
                              from, tag, comm_, &requests.back()));
  }
  wait(requests, what);
}

namespace {

// In-place MPI_Iallreduce per bucket; wait() completes them all.
class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(const MpiGroup& group) : group_(group) {}
  const char* backend() const override { return "mpi"; }

  void start_all_reduce(Tensor& buffer) override {
    QARAC_CHECK(buffer.device().is_cpu() && buffer.is_contiguous(),
                "the MPI backend reduces contiguous CPU tensors (use the NCCL backend for CUDA)");
    QARAC_CHECK(buffer.numel() <= INT_MAX, "gradient bucket of ", buffer.numel(),
                " elements is too large for one MPI call; lower --parallel.bucket_mb");
    trace_collective(group_.name(), group_.size(), "all_reduce", static_cast<int64_t>(buffer.nbytes()));
    requests_.emplace_back();
    QARAC_CHECK_MPI(MPI_Iallreduce(MPI_IN_PLACE, buffer.raw(), static_cast<int>(buffer.numel()),
                                   mpi_type(buffer.dtype()), MPI_SUM, group_.comm(), &requests_.back()));
  }

  void wait(const std::string& what) override {
    group_.wait(requests_, what);
    requests_.clear();
  }

  // MPI has no way to cancel a collective: the job abort that follows ends it.
  void abort() noexcept override { requests_.clear(); }

 private:
  const MpiGroup& group_;
  std::vector<MPI_Request> requests_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(const MpiGroup& group) {
  return std::make_unique<MpiCommunicator>(group);
}

}  // namespace qarac::parallel
