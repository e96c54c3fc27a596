// MPI's lifetime, this rank's place, GPU and node memory, and ending a failed job (runtime.h).
#include "parallel/runtime.h"

#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <set>
#include <thread>

#include "core/check_mpi.h"
#include "core/hash.h"
#include "core/host_memory.h"
#include "core/log.h"
#include "core/memory.h"
#include "parallel/communicator.h"
#ifdef QARAC_HAVE_CUDA
#include "core/check_cuda.h"
#endif

namespace qarac::parallel {
namespace {

// The UUID of visible device `d` as two words: what tells the GPUs apart, whichever ordinal each
// rank's CUDA_VISIBLE_DEVICES gives them.
void device_uuid(int d, uint64_t* words) {
#ifdef QARAC_HAVE_CUDA
  cudaDeviceProp prop{};
  QARAC_CHECK_CUDA(cudaGetDeviceProperties(&prop, d));
  static_assert(sizeof prop.uuid.bytes == 2 * sizeof(uint64_t), "a CUDA UUID is 16 bytes");
  std::memcpy(words, prop.uuid.bytes, sizeof prop.uuid.bytes);
#else
  (void)words;
  QARAC_CHECK(false, "device ", d, ": this build has no CUDA backend");
#endif
}

}  // namespace

std::vector<int> assign_gpus(const std::vector<std::vector<std::string>>& visible, bool share,
                             const std::string& host) {
  std::set<std::string> gpus;
  for (const std::vector<std::string>& own : visible) gpus.insert(own.begin(), own.end());
  std::map<std::string, int> users;
  std::vector<int> device(visible.size());
  for (size_t r = 0; r < visible.size(); ++r) {
    const std::vector<std::string>& own = visible[r];
    QARAC_INPUT_CHECK(!own.empty(), "local rank ", r, " on ", host, " sees no CUDA device (CUDA_VISIBLE_DEVICES)");
    size_t pick = own.size();
    for (size_t d = 0; d < own.size() && pick == own.size(); ++d)
      if (!users.count(own[d])) pick = d;
    if (pick == own.size()) {
      QARAC_INPUT_CHECK(share, visible.size(), " ranks on ", host, " but ", gpus.size(),
                        gpus.size() == 1 ? " GPU" : " GPUs", " among them: local rank ", r, " sees ", own.size(),
                        ", all taken by the ranks before it; start at most one rank per GPU, give each rank its own "
                        "(srun --gpus-per-task=1), or pass --parallel.share_gpus");
      pick = 0;
      for (size_t d = 1; d < own.size(); ++d)
        if (users[own[d]] < users[own[pick]]) pick = d;
    }
    ++users[own[pick]];
    device[r] = static_cast<int>(pick);
  }
  return device;
}

bool started_by_a_launcher() {
  static const bool launched = [] {
    // Open MPI's mpirun, Hydra (MPICH, Intel MPI), PMIx launchers, Slurm's srun.
    for (const char* variable : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_PROCID"})
      if (std::getenv(variable)) return true;
    return false;
  }();
  return launched;
}

Runtime::Runtime(int* argc, char*** argv) {
  int initialized = 0;
  QARAC_CHECK_MPI(MPI_Initialized(&initialized));
  QARAC_CHECK(!initialized, "MPI is already initialised: create one parallel::Runtime per process");
  started_by_a_launcher();  // read before MPI_Init adds to the environment
  int provided = 0;
  QARAC_CHECK_MPI(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  QARAC_CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  QARAC_CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size_));
  // Only the main thread calls MPI, but OpenBLAS, NCCL and the data readers run threads of their
  // own, which an MPI library providing MPI_THREAD_SINGLE does not promise to tolerate.
  if (provided < MPI_THREAD_FUNNELED && rank_ == 0)
    log::warn("the MPI library provides thread level ", provided, " (MPI_THREAD_SINGLE), not MPI_THREAD_FUNNELED: ",
              "the run's other threads (OpenBLAS, NCCL, readers) call no MPI, but this library does not promise ",
              "to tolerate them; an MPI built with thread support is safer");
  // The node's ranks, among which use_local_gpu assigns the node's GPUs.
  QARAC_CHECK_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node_));
}

Runtime::~Runtime() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  if (host_counts_ != MPI_WIN_NULL) {
    share_host_tensor_counts(nullptr, 0, 0);
    MPI_Win_unlock_all(host_counts_);
    MPI_Win_free(&host_counts_);
  }
  if (node_ != MPI_COMM_NULL) MPI_Comm_free(&node_);
  MPI_Finalize();
}

int Runtime::use_local_gpu(bool share_gpus, double timeout_s) const {
  const int count = cuda_device_count();
  QARAC_CHECK(count > 0, "rank ", rank_, " on ", hostname(), ": no CUDA device is visible");
  // Every rank of the node learns which GPUs each sees: a table of one row per local rank (the
  // count, then two words per UUID), each row written by its rank and summed over the node.
  const MpiGroup node(node_, "the ranks on " + hostname(), timeout_s);
  uint64_t most = static_cast<uint64_t>(count);
  node.all_reduce(&most, 1, MPI_MAX, "counting the GPUs of the node's ranks");
  const size_t row = 1 + 2 * most;
  std::vector<uint64_t> table(row * static_cast<size_t>(node.size()), 0);
  uint64_t* own = &table[row * static_cast<size_t>(node.rank())];
  own[0] = static_cast<uint64_t>(count);
  for (int d = 0; d < count; ++d) device_uuid(d, own + 1 + 2 * d);
  node.all_reduce(table.data(), static_cast<int>(table.size()), MPI_SUM, "gathering the GPUs of the node's ranks");
  std::vector<std::vector<std::string>> visible(static_cast<size_t>(node.size()));
  for (size_t r = 0; r < visible.size(); ++r)
    for (uint64_t d = 0; d < table[r * row]; ++d) {
      const uint64_t* words = &table[r * row + 1 + 2 * d];
      visible[r].push_back(std::to_string(words[0]) + ":" + std::to_string(words[1]));
    }
  const std::vector<int> devices = assign_gpus(visible, share_gpus, hostname());
  auto gpu_of = [&](size_t r) { return visible[r][static_cast<size_t>(devices[r])]; };
  const size_t me = static_cast<size_t>(node.rank());
  const int device = devices[me];
  int sharing = 0;
  for (size_t r = 0; r < visible.size(); ++r) sharing += gpu_of(r) == gpu_of(me);
  if (sharing > 1)
    log::warn("rank ", rank_, " shares GPU ", device, " of ", hostname(), " with ", sharing - 1,
              " other rank(s) (--parallel.share_gpus); NCCL refuses two ranks of one communicator on one GPU");
#ifdef QARAC_HAVE_CUDA
  QARAC_CHECK_CUDA(cudaSetDevice(device));
#endif
  return device;
}

bool Runtime::share_host_memory(double timeout_s) const {
  const MpiGroup node(node_, "the ranks on " + hostname(), timeout_s);
  // MPI_Comm_split waits without a bound: every rank of the node gets there, as this shows.
  node.barrier("sharing the host memory of the node's ranks");
  // Ranks of one node in cgroups of their own (containers) each have their own limit.
  const std::string& source = host_memory_limit().source;
  const int color = static_cast<int>(hash64(source.data(), source.size()) & 0x7fffffff);
  MPI_Comm split = MPI_COMM_NULL;
  QARAC_CHECK_MPI(MPI_Comm_split(node_, color, rank_, &split));
  const ScopedCommFree free_split(split);
  const MpiGroup sharing(split, "the ranks on " + hostname() + " under one memory limit", timeout_s);
  // A line from every node (its lowest rank), each counting only its own ranks, against its own
  // limit: the nodes of a job need not be alike.
  const auto report = [&](uint64_t held) {
    if (sharing.rank() != 0) return;
    log::info("host tensors on ", hostname(), ": ", size_text(held), " held by its ", sharing.size(),
              sharing.size() == 1 ? " rank" : " ranks", " at the start (this one ", size_text(host_tensor_bytes()),
              "), of the ", size_text(host_memory_limit().bytes), " ", host_memory_limit().source);
  };
  if (sharing.size() == 1) {
    report(host_tensor_bytes());
    return true;
  }
  // One counter per rank in memory the node's ranks all map, each updated by its rank as it
  // allocates and frees (core/memory.h), kept to the end of the process. Every rank of `split`
  // waits in the collective calls below: the barrier showed they all got here.
  QARAC_CHECK(host_counts_ == MPI_WIN_NULL, "Runtime::share_host_memory: once per process");
  const size_t count = static_cast<size_t>(sharing.size());
  // Room to start the counters at a cache line, wherever the window starts (the same offset in
  // every process: each maps the segment at a page boundary).
  const size_t room = count * sizeof(HostTensorCounter) + alignof(HostTensorCounter);
  void* base = nullptr;
  QARAC_CHECK_MPI(MPI_Win_allocate_shared(sharing.rank() == 0 ? static_cast<MPI_Aint>(room) : 0, 1, MPI_INFO_NULL,
                                          split, &base, &host_counts_));
  MPI_Aint bytes = 0;
  int unit = 0;
  QARAC_CHECK_MPI(MPI_Win_shared_query(host_counts_, 0, &bytes, &unit, &base));
  size_t space = static_cast<size_t>(bytes);
  void* first = std::align(alignof(HostTensorCounter), count * sizeof(HostTensorCounter), base, space);
  QARAC_CHECK(first != nullptr, "Runtime::share_host_memory: a shared window of ", bytes, " bytes holds no ", count,
              " counters");
  auto* counters = static_cast<HostTensorCounter*>(first);
  // One access epoch for the window's life: the counters are read and written as C++ atomics,
  // and MPI_Win_sync around a barrier orders one rank's writes before another's reads.
  QARAC_CHECK_MPI(MPI_Win_lock_all(MPI_MODE_NOCHECK, host_counts_));
  const auto synced_barrier = [&](const std::string& what) {
    QARAC_CHECK_MPI(MPI_Win_sync(host_counts_));
    sharing.barrier(what);
    QARAC_CHECK_MPI(MPI_Win_sync(host_counts_));
  };
  if (sharing.rank() == 0)
    for (size_t r = 0; r < count; ++r) new (counters + r) HostTensorCounter;
  synced_barrier("making the node's host tensor counters");
  share_host_tensor_counts(counters, sharing.size(), sharing.rank());
  synced_barrier("counting the host tensors of the node's ranks");
  try {
    report(check_shared_host_tensors());
  } catch (const OutOfMemory&) {
    if (sharing.rank() == 0) throw;
    return false;
  }
  return true;
}

int Runtime::first_rank_with(bool flag, double timeout_s) const {
  uint64_t first = static_cast<uint64_t>(flag ? rank_ : size_);
  if (size_ > 1) MpiGroup(MPI_COMM_WORLD, "the world", timeout_s).all_reduce(&first, 1, MPI_MIN, "reading the inputs");
  return static_cast<int>(first);
}

void Runtime::abort_job(int code) const {
  std::fflush(stdout);
  std::fflush(stderr);
  // MPICH's Hydra kills the job on MPI_Abort before it has read the rank's pipes, losing the line
  // that says what failed; a moment's pause lets it read them (measured: 2 of 20 lost without it).
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  MPI_Abort(MPI_COMM_WORLD, code);
  std::abort();  // MPI_Abort does not return; this satisfies [[noreturn]] if it ever did
}

}  // namespace qarac::parallel
