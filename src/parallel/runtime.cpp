#include "parallel/runtime.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>

#include "core/check_mpi.h"
#include "core/memory.h"
#ifdef QARAC_HAVE_CUDA
#include "core/check_cuda.h"
#endif

namespace qarac::parallel {
namespace {

// The first of `names` that is set to a non-negative integer, with the name it came from.
bool local_rank_from_env(int& value, std::string& source) {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}) {
    const char* text = std::getenv(name);
    if (!text || !*text) continue;
    char* end = nullptr;
    const long v = std::strtol(text, &end, 10);
    if (*end != '\0' || v < 0) continue;
    value = static_cast<int>(v);
    source = name;
    return true;
  }
  return false;
}

}  // namespace

Runtime::Runtime(int* argc, char*** argv) {
  int initialized = 0;
  QARAC_CHECK_MPI(MPI_Initialized(&initialized));
  QARAC_CHECK(!initialized, "MPI is already initialised: create one parallel::Runtime per process");
  int provided = 0;
  QARAC_CHECK_MPI(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  QARAC_CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  QARAC_CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size_));
  // The node's ranks: the shared-memory split gives their count (and the rank when no
  // launcher variable names it).
  MPI_Comm node = MPI_COMM_NULL;
  QARAC_CHECK_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
  int node_rank = 0;
  QARAC_CHECK_MPI(MPI_Comm_rank(node, &node_rank));
  QARAC_CHECK_MPI(MPI_Comm_size(node, &local_size_));
  MPI_Comm_free(&node);
  if (!local_rank_from_env(local_rank_, local_source_)) {
    local_rank_ = node_rank;
    local_source_ = "shared-memory split";
  }
}

Runtime::~Runtime() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

int Runtime::use_local_gpu() const {
  const int count = cuda_device_count();
  QARAC_CHECK(count > 0, "rank ", rank_, " on ", hostname(), ": no CUDA device is visible");
  const int device = local_rank_ % count;
#ifdef QARAC_HAVE_CUDA
  QARAC_CHECK_CUDA(cudaSetDevice(device));
#endif
  return device;
}

void Runtime::abort_job(int code) const {
  std::fflush(stdout);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, code);
  std::abort();  // MPI_Abort does not return; this satisfies [[noreturn]] if it ever did
}

}  // namespace qarac::parallel
