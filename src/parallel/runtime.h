// Bootstrap of a distributed run (docs/design.md §4): MPI for the process's lifetime, this rank's
// place in the world and on its node, the GPU it uses, and the one way out of a failed job.
//   local rank  OMPI_COMM_WORLD_LOCAL_RANK (Open MPI's mpirun), MPI_LOCALRANKID (MPICH/Hydra),
//               SLURM_LOCALID (srun), else the rank among the processes that share memory with
//               this one (MPI_Comm_split_type), which works under any launcher.
//   GPU         local rank mod the visible devices: one rank per GPU when a node runs as many
//               ranks as it has GPUs.
#pragma once

#include <string>

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
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  // Where the local rank came from: "OMPI_COMM_WORLD_LOCAL_RANK", ..., or "shared-memory split".
  const std::string& local_rank_source() const { return local_source_; }

  // Makes GPU local_rank mod count current (before any CUDA work) and returns its ordinal.
  int use_local_gpu() const;

  // Ends every process of the job with `code` (MPI_Abort): for a rank that failed while the
  // others may be waiting in a collective. Never returns.
  [[noreturn]] void abort_job(int code) const;

 private:
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  std::string local_source_;
};

}  // namespace qarac::parallel
