// Bootstrap of a distributed run (docs/design.md §4): MPI for the process's lifetime, this rank's
// place in the world and on its node, the GPU it uses, and the one way out of a failed job.
//   node        the processes that share memory with this one (MPI_Comm_split_type), which any
//               launcher gives; a rank's local rank is its place among them.
//   GPU         each rank of a node, in the order of the shared-memory split, takes the first
//               of the devices it sees (CUDA_VISIBLE_DEVICES, as Slurm's --gpus-per-task and
//               --gpu-bind set it) that no rank before it took: GPU r for local rank r when
//               every rank sees the node's GPUs, its own GPU when the launcher gave each rank
//               one. More ranks than GPUs is an error naming the counts, unless
//               --parallel.share_gpus; GPUs are told apart by their UUIDs.
#pragma once

#include <mpi.h>

#include <exception>
#include <string>
#include <vector>

#include "core/error.h"

namespace qarac {

// Thrown on the ranks that did not fail when another rank's failure ends the job (a checkpoint
// part that a full disk refused, options every rank read alike): that rank says why in one line;
// these end with it, silent.
class EndedByAnotherRank : public Error {
 public:
  using Error::Error;
};

}  // namespace qarac

namespace qarac::parallel {

class Runtime {
 public:
  // MPI_Init_thread (funneled: only the main thread calls MPI). A program started without a
  // launcher runs as a world of one (MPI singleton).
  Runtime(int* argc, char*** argv);
  // MPI_Finalize.
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }

  // Chooses this rank's GPU with the node's other ranks (assign_gpus; collective over the node,
  // each wait bounded by `timeout_s`), makes it current before any CUDA work and returns its
  // ordinal among the visible devices.
  int use_local_gpu(bool share_gpus, double timeout_s) const;

  // The node's ranks under one host memory limit (host_memory_limit: the node's physical memory,
  // or a cgroup such as a Slurm job's --mem, which all its ranks on the node share) count each
  // other's host tensors from here on, through counters in shared memory that each keeps current
  // (core/memory.h): an allocation that would take them together past the limit is refused.
  // When they are past it already (the models and the optimizer state): OutOfMemory on the lowest
  // of them, which says so, and false on the others. Collective over the node, each wait bounded
  // by `timeout_s`; once per process.
  bool share_host_memory(double timeout_s) const;

  // Runs `read` on every rank: an InputError or OutOfMemory it throws, on every rank alike as a
  // rule (each reads the same options and files, into the same limits), is said by the lowest
  // rank that met one, and the others end silently (EndedByAnotherRank). `read` must not wait on
  // other ranks. One all-reduce over the world, bounded by `timeout_s`.
  template <class Read>
  void read_on_every_rank(Read&& read, double timeout_s) const {
    std::exception_ptr failure;
    try {
      read();
    } catch (const InputError&) {
      failure = std::current_exception();
    } catch (const OutOfMemory&) {
      failure = std::current_exception();
    }
    const int first = first_rank_with(failure != nullptr, timeout_s);
    if (first == rank_) std::rethrow_exception(failure);
    if (first < size_) throw EndedByAnotherRank("rank " + std::to_string(first) + " said why");
  }

  // Ends every process of the job with `code` (MPI_Abort): for a rank that failed while the
  // others may be waiting in a collective. Never returns.
  [[noreturn]] void abort_job(int code) const;

 private:
  // The lowest rank whose `flag` is set, or size() when none is.
  int first_rank_with(bool flag, double timeout_s) const;

  int rank_ = 0, size_ = 1;
  MPI_Comm node_ = MPI_COMM_NULL;  // the ranks that share memory with this one
  // The shared window of share_host_memory's counters, freed at MPI_Finalize: the process's
  // bookkeeping, not the runtime's state, hence mutable.
  mutable MPI_Win host_counts_ = MPI_WIN_NULL;
};

// Whether a launcher (mpirun, mpiexec, srun) started this process, as the variables it gives its
// ranks say, read once, before MPI starts (Runtime's constructor reads it first): Open MPI sets
// PMIX_RANK in a singleton's own environment. Without one, the process is a world of one.
bool started_by_a_launcher();

// The device each of a node's ranks uses: visible[r] lists the identities of the GPUs local rank
// r sees, in CUDA's order. Rank by rank, each takes the first of its GPUs that no rank before it
// took. A rank that finds all of its GPUs taken: InputError naming `host` and the counts, or,
// with `share`, the one of its GPUs the fewest ranks use.
std::vector<int> assign_gpus(const std::vector<std::vector<std::string>>& visible, bool share,
                             const std::string& host);

}  // namespace qarac::parallel
