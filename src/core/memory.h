// Owning blocks of memory on a device, freed when the last tensor referring to them goes away.
// CUDA blocks come from a per-device caching allocator, so a training step that allocates the
// same tensors every step calls cudaMalloc only in its first steps.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace qarac {

struct Device {
  enum class Kind : uint8_t { cpu, cuda };
  Kind kind = Kind::cpu;
  int index = 0;  // CUDA device ordinal; 0 for the CPU

  static Device cpu() { return {}; }
  static Device cuda(int ordinal = 0) { return {Kind::cuda, ordinal}; }
  bool is_cpu() const { return kind == Kind::cpu; }
  bool is_cuda() const { return kind == Kind::cuda; }
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;
};

// True when this build has the CUDA backend compiled in (a GPU may still be absent).
bool cuda_compiled();
// Number of usable CUDA devices; 0 when the backend is not compiled or no GPU/driver is present.
int cuda_device_count();

class Buffer {
 public:
  // Allocates `bytes` on `device` (64-byte aligned on the CPU). Zero bytes gives a valid empty
  // buffer. OutOfMemory (core/error.h) when the device lacks the memory: on the host, when the
  // process's host Buffers would hold more than host_memory_limit() (core/host_memory.h).
  Buffer(size_t bytes, Device device);
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  size_t block_bytes_ = 0;  // the block behind data_ (>= bytes_): aligned on the host, cached on CUDA
  Device device_;
};

// The bytes this process's host tensors hold (their aligned blocks).
uint64_t host_tensor_bytes();
// Hands the pages of freed host tensors back to the system. glibc keeps freed blocks below its
// mmap threshold, which rises with the largest block freed (up to 32 MiB): after an evaluation,
// whose batches are many times a step's, the process would stay that large for the rest of the
// run, its pages counted by a cgroup's limit (Slurm's --mem) though no tensor holds them.
void release_free_host_memory();
// "12.3 GiB", "4.0 MiB", "512 bytes": sizes in messages.
std::string size_text(uint64_t bytes);
// One process's count of its host tensor bytes, read by the others: a cache line of its own, so
// that each process's updates do not stall the others' reads. Lock-free, hence address-free: the
// processes may map it at different addresses.
struct alignas(64) HostTensorCounter {
  std::atomic<uint64_t> bytes{0};
};
static_assert(std::atomic<uint64_t>::is_always_lock_free, "HostTensorCounter is shared between processes");

// The processes under the same host_memory_limit() (the node's ranks) count their host tensors
// together: `counters` holds one per process, in memory they all map (an MPI shared window,
// parallel::Runtime::share_host_memory), `mine` this one's. From here on this process keeps
// counters[mine] at its host_tensor_bytes(), and refuses an allocation that would take its
// tensors and what the others' counters hold at that moment past the limit. Called before the
// process's other threads allocate; nullptr (count 0) ends the sharing, before the counters'
// memory goes away.
void share_host_tensor_counts(HostTensorCounter* counters, int count, int mine);
// OutOfMemory, naming the processes and their bytes, when the tensors of those sharing their
// counts hold more than the limit together; otherwise what they hold.
uint64_t check_shared_host_tensors();

// The most the tensors held since the last reset_memory_peaks() (at first: since the process
// started), for a run's record of what its steps need: this process's host tensors; those of the
// processes sharing their counts (share_host_tensor_counts) together, as this process found them
// at its own allocations (its own peak when it shares with none); and, for a CUDA `device`, the
// caching allocator's bytes in use (0 for the CPU).
struct MemoryPeaks {
  uint64_t host = 0, node_host = 0, device = 0;
};
MemoryPeaks memory_peaks(Device device);
// Starts every peak again from what is held now.
void reset_memory_peaks();

// The CUDA caching allocator's counters for one device (all zero for a device it never served).
struct CudaAllocatorStats {
  uint64_t cuda_mallocs = 0;       // cudaMalloc calls that succeeded: cache misses
  uint64_t bytes_reserved = 0;     // device memory held: blocks in use plus blocks cached
  uint64_t bytes_in_use = 0;       // blocks held by live Buffers (rounded sizes)
  uint64_t peak_bytes_in_use = 0;  // the most bytes_in_use since reset_memory_peaks()
  uint64_t cache_hits = 0;         // allocations served from the cache
};
CudaAllocatorStats cuda_allocator_stats(int device);
// Returns every cached (unused) block of every device to the driver; blocks in use stay.
void cuda_empty_cache();

// The stream (a cudaStream_t) on which everything QARAC-MT does on CUDA device `index` runs, in
// order: kernels and cuBLASLt calls (kernels/cuda/context.cuh), copies and fills (below). Created
// on first use, kept until the process ends; thread-safe.
void* device_stream(int index);
// Copies between any two devices (host<->device, device<->device), queued on the device side's
// stream after the work already there. A copy to the host returns with the data, and one between
// two GPUs once it is done (the source's device may reuse its block at once); a host-to-device
// copy returns once the driver has staged the pageable source (the caller may then reuse it).
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
// Zeroes bytes, on CUDA queued on the device's stream.
void zero_bytes(void* dst, Device device, size_t bytes);
// The copy_bytes and zero_bytes calls so far that moved or cleared any bytes: on CUDA each is a
// cudaMemcpyAsync or cudaMemsetAsync (qarac-bench prints them per step next to the ops).
uint64_t memory_calls();
// The Buffers of any bytes allocated so far (on CUDA from the caching allocator or cudaMalloc).
uint64_t buffer_allocations();

}  // namespace qarac
