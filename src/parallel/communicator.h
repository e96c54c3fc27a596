// Communication of the parallel multi-task trainer (docs/design.md §4), in two layers:
//   MpiGroup      the control plane: an MPI communicator over some ranks with small host-side
//                 collectives (barrier, all-reduce of a few numbers, broadcast, all-gather of
//                 rows, point-to-point) that all wait with a timeout. Bootstrap, NCCL ids,
//                 metrics, the replica check and the checkpoint agreement go through it.
//   Communicator  the data plane: SUM all-reduce of gradient buckets, started asynchronously and
//                 waited for with a timeout; an MPI backend for CPU tensors and an NCCL backend
//                 for CUDA tensors (one stream for every communicator of the process, beside
//                 the compute stream: the collectives overlap the compute and run in the order
//                 they were launched, docs/distributed.md §7).
// Every collective launch goes to the trace of parallel/collective_trace.h when
// QARAC_TRACE_COLLECTIVES is set.
// Never hang: no wait here blocks for longer than its timeout. On timeout or an asynchronous
// error a CommError names the rank, host, group and operation; the program's main aborts the
// job (MPI_Abort) after the communicators have been aborted.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace qarac::parallel {

// A collective that timed out, or failed asynchronously: the job cannot go on.
class CommError : public Error {
 public:
  using Error::Error;
};

// MPI_Comm_free of `comm`, unless it is MPI_COMM_NULL or MPI has been finalized.
void free_comm(MPI_Comm& comm);

// Frees the communicator it names when its scope ends, by an exception too: the one an
// MPI_Comm_split made, once the MpiGroup built of it holds its duplicate.
class ScopedCommFree {
 public:
  explicit ScopedCommFree(MPI_Comm& comm) : comm_(comm) {}
  ~ScopedCommFree() { free_comm(comm_); }
  ScopedCommFree(const ScopedCommFree&) = delete;
  ScopedCommFree& operator=(const ScopedCommFree&) = delete;

 private:
  MPI_Comm& comm_;
};

class MpiGroup {
 public:
  // A duplicate of `comm` with MPI_ERRORS_RETURN, so that failures come back as CommErrors.
  // `name` says in messages which ranks these are ("world", "answer_encoder ranks 0,1,2").
  MpiGroup(MPI_Comm comm, std::string name, double timeout_s);
  ~MpiGroup();
  MpiGroup(const MpiGroup&) = delete;
  MpiGroup& operator=(const MpiGroup&) = delete;

  // The group of the world ranks in `members` (ascending). Collective over this group: every
  // rank calls it with the same members; a rank not in them gets nullptr.
  std::unique_ptr<MpiGroup> subgroup(const std::vector<int>& members, std::string name) const;

  MPI_Comm comm() const { return comm_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  const std::string& name() const { return name_; }
  double timeout() const { return timeout_s_; }

  void barrier(const std::string& what) const;
  void all_reduce(double* values, int count, MPI_Op op, const std::string& what) const;
  void all_reduce(uint64_t* values, int count, MPI_Op op, const std::string& what) const;
  void broadcast(void* bytes, int count, int root, const std::string& what) const;
  // Every rank's `mine` (whole rows of `width` doubles; ranks may hold different numbers of rows,
  // none included), concatenated in rank order; `first_row` gets the index of this rank's first.
  std::vector<double> all_gather_rows(const std::vector<double>& mine, int64_t width, int64_t* first_row,
                                      const std::string& what) const;
  void send(const void* bytes, int64_t count, int to, int tag, const std::string& what) const;
  void receive(void* bytes, int64_t count, int from, int tag, const std::string& what) const;

  // Waits for every request, polling (MPI_Testall) until the timeout: CommError otherwise.
  void wait(std::vector<MPI_Request>& requests, const std::string& what) const;
  // The CommError text: "<what> on <group> (rank r of W, world rank w on host): <reason>".
  std::string describe(const std::string& what, const std::string& reason) const;

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::string name_;
  double timeout_s_;
};

// The data plane of one model group (the ranks holding a model).
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual const char* backend() const = 0;  // "mpi" or "nccl"

  // Starts a SUM all-reduce of `buffer` (contiguous, on this backend's device) in place. The
  // buffer must stay alive and unwritten until wait() returns. On CUDA, the reduction waits for
  // the work queued so far on the compute stream (the backward pass that produced the buffer).
  virtual void start_all_reduce(Tensor& buffer) = 0;
  // Waits for every started reduction, at most the group's timeout; CommError on timeout or an
  // asynchronous error. Afterwards the results are visible to the compute stream.
  virtual void wait(const std::string& what) = 0;
  // Abandons whatever is in flight (before the job is aborted). Never throws.
  virtual void abort() noexcept = 0;
};

// Gradients of CPU tensors over `group` (which must outlive the communicator).
std::unique_ptr<Communicator> make_mpi_communicator(const MpiGroup& group);
// Gradients of CUDA tensors: an NCCL communicator over the ranks of `group` (the unique id is
// broadcast over it), on the process's communication stream. InputError when the build has no
// CUDA/NCCL backend.
std::unique_ptr<Communicator> make_nccl_communicator(const MpiGroup& group);
bool nccl_available();

}  // namespace qarac::parallel
