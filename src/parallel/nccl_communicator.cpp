// The NCCL backend of Communicator (CUDA gradients). The communicator is created non-blocking
// (ncclConfig_t.blocking = 0), so neither its creation nor an enqueue can block the host: every
// wait polls ncclCommGetAsyncError of every communicator of the process (and the completion
// event) against the group's deadline, and on timeout or error raises a CommError, after which
// the job ends with MPI_Abort (without ncclCommAbort, which can wait on peers that are gone). A
// communicator that ends with the run is finalized (flushed and quiescent on every rank) before
// it is destroyed; one that failed is aborted. Reductions run on the process's one communication
// stream, which first waits for the compute stream, so a bucket reduces while the backward pass
// goes on; wait() makes the compute stream wait for them.
#include "parallel/communicator.h"

#ifdef QARAC_HAVE_CUDA

#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <memory>
#include <thread>
#include <vector>

#include "core/check_cuda.h"
#include "core/log.h"
#include "kernels/cuda/context.cuh"
#include "parallel/collective_trace.h"

namespace qarac::parallel {
namespace {

using Clock = std::chrono::steady_clock;

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    default: break;
  }
  QARAC_CHECK(false, "NCCL all-reduce of ", dtype_name(dtype), " tensors is not supported");
  return ncclFloat32;
}

// The one stream every NCCL communicator of the process launches on, created with the first
// and destroyed with the last. On it the collectives of all communicators run one after another
// in launch order, which GradientSync keeps the same on every rank. On a stream per communicator
// the GPU may run them in another order or at once, and a collective spinning for its peers can
// keep another from running: two ranks that each run first what the other runs second wait for
// each other for ever (docs/distributed.md §7).
std::shared_ptr<CUstream_st> communication_stream() {
  static std::weak_ptr<CUstream_st> shared;
  std::shared_ptr<CUstream_st> stream = shared.lock();
  if (stream) return stream;
  cudaStream_t created = nullptr;
  QARAC_CHECK_CUDA(cudaStreamCreateWithFlags(&created, cudaStreamNonBlocking));
  stream.reset(created, [](cudaStream_t s) { cudaStreamDestroy(s); });
  shared = stream;
  return stream;
}

class NcclCommunicator;
// The process's communicators, in creation order: a wait on the shared stream waits for the
// collectives of all of them, so it watches the errors of all of them.
std::vector<NcclCommunicator*>& live_communicators() {
  static std::vector<NcclCommunicator*> live;
  return live;
}

class NcclCommunicator final : public Communicator {
 public:
  // A constructor that throws runs no destructor: what it had made is released here, aborted
  // (the other members are failing too, or will time out).
  explicit NcclCommunicator(const MpiGroup& group) : group_(group) {
    try {
      open();
    } catch (...) {
      aborted_ = true;
      release();
      throw;
    }
  }
  ~NcclCommunicator() override { release(); }

  const char* backend() const override { return "nccl"; }

  void start_all_reduce(Tensor& buffer) override {
    QARAC_CHECK(buffer.device().is_cuda() && buffer.is_contiguous(),
                "the NCCL backend reduces contiguous CUDA tensors");
    // The bucket was written on the compute stream: the reduction starts after that work.
    QARAC_CHECK_CUDA(cudaEventRecord(ready_, cuda::stream()));
    QARAC_CHECK_CUDA(cudaStreamWaitEvent(stream_.get(), ready_, 0));
    trace_collective(group_.name(), group_.size(), "all_reduce", static_cast<int64_t>(buffer.nbytes()));
    check(ncclAllReduce(buffer.raw(), buffer.raw(), static_cast<size_t>(buffer.numel()), nccl_type(buffer.dtype()),
                        ncclSum, comm_, stream_.get()),
          "enqueueing an NCCL all-reduce");
    settle("enqueueing an NCCL all-reduce");
    pending_ = true;
  }

  void wait(const std::string& what) override {
    if (!pending_) return;
    // On the shared stream this also waits for the later launches of other communicators.
    QARAC_CHECK_CUDA(cudaEventRecord(done_, stream_.get()));
    poll(what, [&] {
      const cudaError_t e = cudaEventQuery(done_);
      if (e == cudaErrorNotReady) return false;
      QARAC_CHECK_CUDA(e);
      return true;
    });
    QARAC_CHECK_CUDA(cudaStreamWaitEvent(cuda::stream(), done_, 0));
    pending_ = false;
  }

  void abort() noexcept override {
    aborted_ = true;
    pending_ = false;
  }

 private:
  // Creates the communicator: a collective call of the group's members.
  void open() {
    ncclUniqueId id{};
    if (group_.rank() == 0) check(ncclGetUniqueId(&id), "creating the NCCL unique id");
    group_.broadcast(&id, sizeof id, 0, "broadcasting the NCCL unique id");
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    trace_collective(group_.name(), group_.size(), "nccl_init", 0);
    check(ncclCommInitRankConfig(&comm_, group_.size(), id, group_.rank(), &config), "creating the NCCL communicator");
    settle("creating the NCCL communicator");
    stream_ = communication_stream();
    QARAC_CHECK_CUDA(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    QARAC_CHECK_CUDA(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
    live_communicators().push_back(this);
  }

  // Frees what open() made: finalized when it is sound, aborted when not.
  void release() noexcept {
    std::vector<NcclCommunicator*>& live = live_communicators();
    live.erase(std::remove(live.begin(), live.end(), this), live.end());
    if (comm_) {
      // Finalizing flushes the communicator and waits (bounded) until it is quiescent on every
      // rank, after which destroying it frees this rank's part without blocking.
      bool finalized = false;
      if (!aborted_) {
        try {
          check(ncclCommFinalize(comm_), "finalizing the NCCL communicator");
          settle("finalizing the NCCL communicator");
          finalized = true;
        } catch (const std::exception& e) {
          log::warn(e.what(), "; aborting it");
        }
      }
      const ncclResult_t rc = finalized ? ncclCommDestroy(comm_) : ncclCommAbort(comm_);
      if (rc != ncclSuccess)
        log::warn(group_.name(), ": ", finalized ? "ncclCommDestroy" : "ncclCommAbort", ": ", ncclGetErrorString(rc));
    }
    if (ready_) cudaEventDestroy(ready_);
    if (done_) cudaEventDestroy(done_);
  }

  // A CommError naming the group and NCCL's messages, unless `rc` is a success or (non-blocking)
  // in progress.
  void check(ncclResult_t rc, const std::string& what) {
    if (rc == ncclSuccess || rc == ncclInProgress) return;
    aborted_ = true;
    throw CommError(group_.describe(what, detail::concat("NCCL: ", ncclGetErrorString(rc), "; ",
                                                         ncclGetLastError(nullptr))));
  }
  // This communicator's asynchronous state; an error is a CommError naming its group, and what
  // `waiter` was doing when it saw it.
  ncclResult_t async_state(const NcclCommunicator& waiter, const std::string& what) {
    ncclResult_t state = ncclSuccess;
    check(ncclCommGetAsyncError(comm_, &state), "reading NCCL's asynchronous error");
    if (state == ncclSuccess || state == ncclInProgress) return state;
    aborted_ = true;
    const std::string error = detail::concat("NCCL asynchronous error: ", ncclGetErrorString(state));
    throw CommError(&waiter == this ? group_.describe(what, error)
                                    : group_.describe(what, error + " (seen by " + waiter.group_.name() +
                                                                ", whose collectives share its stream)"));
  }
  // Until `finished` holds, polls it and the asynchronous errors of this and the process's other
  // communicators (their collectives share the stream this waits on) against the deadline.
  template <class Finished>
  void poll(const std::string& what, Finished finished) {
    const Clock::time_point deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                          std::chrono::duration<double>(group_.timeout()));
    while (true) {
      const ncclResult_t state = async_state(*this, what);
      for (NcclCommunicator* other : live_communicators())
        if (other != this && other->comm_ && !other->aborted_) other->async_state(*this, what);
      if (state == ncclSuccess && finished()) return;
      if (Clock::now() > deadline) {
        aborted_ = true;
        throw CommError(group_.describe(what, detail::concat("no completion within the timeout of ",
                                                             group_.timeout(), " s (--parallel.timeout)")));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  // A non-blocking call may return before it is done: wait until NCCL reports it settled.
  void settle(const std::string& what) {
    poll(what, [] { return true; });
  }

  const MpiGroup& group_;
  ncclComm_t comm_ = nullptr;
  std::shared_ptr<CUstream_st> stream_;  // communication_stream()
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  bool pending_ = false, aborted_ = false;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const MpiGroup& group) {
  return std::make_unique<NcclCommunicator>(group);
}

bool nccl_available() { return true; }

}  // namespace qarac::parallel

#else  // no CUDA backend in this build

namespace qarac::parallel {

std::unique_ptr<Communicator> make_nccl_communicator(const MpiGroup&) {
  throw InputError("parallel.backend: nccl, but this build has no CUDA/NCCL backend (configure with -DQARAC_CUDA=ON)");
}

bool nccl_available() { return false; }

}  // namespace qarac::parallel

#endif
