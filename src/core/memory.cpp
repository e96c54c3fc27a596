// Buffers on the host (aligned_alloc) and on CUDA devices (a caching allocator over cudaMalloc),
// and the copies and fills between them.
#include "core/memory.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <new>

#include "core/error.h"
#include "core/host_memory.h"
#ifdef QARAC_HAVE_CUDA
#include <cuda_runtime.h>

#include "core/check_cuda.h"
#endif

namespace qarac {

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

bool cuda_compiled() {
#ifdef QARAC_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef QARAC_HAVE_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: not an error for the caller, just no GPU
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

namespace {
constexpr size_t kHostAlignment = 64;  // a cache line; also what AVX-512 loads like

#ifdef QARAC_HAVE_CUDA
// ---- The CUDA caching allocator --------------------------------------------------------------
// cudaFree synchronises the device, cudaMalloc and cudaFree cost tens of microseconds to
// milliseconds each, and a training step creates and drops hundreds of tensors. So blocks
// freed by Buffers are kept in a per-device cache and handed to later allocations of about the
// same size; cudaMalloc runs only on a miss (in practice: during the first steps, and when a
// batch is longer than every earlier one).
//
// Why a freed block can be reused at once, without waiting for the GPU: every QARAC-MT kernel,
// copy and fill of a device runs in order on one stream (device_stream below). A Buffer
// destroyed on the host while a kernel that reads it is still queued can only be overwritten by
// work queued after that kernel, on the same stream, which starts after it ends: no race. Work
// on another stream (e.g. NCCL's) must keep its tensors alive until it is waited for.
//
// Sizes are rounded up so that tensors whose sizes differ a little (ragged batches) share blocks:
// to 512 B below 1 MiB, to whole 2 MiB above. A request takes the smallest cached block of at
// least its rounded size and at most 25% more (more would waste memory that a larger request
// could use); rounding keeps the number of distinct sizes small.
constexpr size_t kSmallQuantum = 512;
constexpr size_t kLargeThreshold = size_t{1} << 20;
constexpr size_t kLargeQuantum = size_t{2} << 20;

size_t rounded_block_size(size_t bytes, int device) {
  const size_t quantum = bytes < kLargeThreshold ? kSmallQuantum : kLargeQuantum;
  QARAC_CHECK(bytes <= std::numeric_limits<size_t>::max() - quantum, "a CUDA allocation of ",
              bytes, " bytes on cuda:", device, " is larger than any device");
  return (bytes + quantum - 1) / quantum * quantum;
}

// Makes `device` the current device (cudaMalloc and cudaFree act on the current one) for the
// guard's lifetime and then restores the caller's, so allocating never moves the caller.
class CurrentDevice {
 public:
  explicit CurrentDevice(int device) noexcept : device_(device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = device;
    if (previous_ != device) static_cast<void>(cudaSetDevice(device));
  }
  ~CurrentDevice() {
    if (previous_ != device_) static_cast<void>(cudaSetDevice(previous_));
  }
  CurrentDevice(const CurrentDevice&) = delete;
  CurrentDevice& operator=(const CurrentDevice&) = delete;

 private:
  int device_;
  int previous_ = 0;
};

class CachingAllocator {
 public:
  // Never destroyed: Buffers held by static objects may be released after every static
  // destructor has run. The driver reclaims the device memory at process exit.
  static CachingAllocator& instance() {
    static CachingAllocator* allocator = new CachingAllocator;
    return *allocator;
  }

  // A block of at least `bytes` on `device`; its actual size goes to `block_bytes`.
  void* allocate(size_t bytes, int device, size_t& block_bytes) {
    const size_t size = rounded_block_size(bytes, device);
    std::lock_guard<std::mutex> lock(mutex_);
    Pool& pool = pools_[device];
    const auto cached = pool.free.lower_bound(size);
    if (cached != pool.free.end() && cached->first <= size + size / 4) {
      void* ptr = cached->second;
      block_bytes = cached->first;
      pool.free.erase(cached);
      ++pool.stats.cache_hits;
      pool.add_in_use(block_bytes);
      return ptr;
    }

    const int devices = cuda_device_count();
    QARAC_CHECK(device >= 0 && device < devices, "a CUDA allocation on cuda:", device, ", but ",
                devices, " CUDA devices are visible");
    const CurrentDevice current(device);
    void* ptr = nullptr;
    cudaError_t rc = cudaMalloc(&ptr, size);
    size_t released = 0;
    if (rc == cudaErrorMemoryAllocation) {
      // Cached blocks of other sizes may be what is missing: give them back and try once more.
      // cudaFree synchronises the device, so this waits for gradient reductions in flight too;
      // should a peer be dead, its group's timeout on another rank ends the job meanwhile.
      static_cast<void>(cudaGetLastError());  // the failure is handled here, not by a later check
      released = release_cached(pool, device);
      rc = cudaMalloc(&ptr, size);
    }
    if (rc == cudaErrorMemoryAllocation) {
      static_cast<void>(cudaGetLastError());
      size_t free_bytes = 0, total_bytes = 0;
      static_cast<void>(cudaMemGetInfo(&free_bytes, &total_bytes));
      throw OutOfMemory(detail::concat("out of memory on cuda:", device, " of ", hostname(), ": ", size_text(bytes),
                                       " requested, with ", size_text(pool.stats.bytes_in_use),
                                       " held by this process's tensors; ", size_text(free_bytes), " of the device's ",
                                       size_text(total_bytes), " free"));
    }
    if (rc != cudaSuccess) {
      static_cast<void>(cudaGetLastError());
      detail::raise("CUDA", "cudaMalloc",
                    detail::concat(cudaGetErrorName(rc), ": ", cudaGetErrorString(rc), "; ", bytes,
                                   " bytes requested (", size, " rounded) on cuda:", device,
                                   "; the caching allocator held ", pool.stats.bytes_reserved,
                                   " bytes (", pool.stats.bytes_in_use, " in use) after releasing ",
                                   released, " cached bytes"),
                    __FILE__, __LINE__);
    }
    block_bytes = size;
    ++pool.stats.cuda_mallocs;
    pool.stats.bytes_reserved += size;
    pool.add_in_use(size);
    return ptr;
  }

  // Returns a block to the cache. Called by Buffer's destructor: must not throw.
  void release(void* ptr, size_t block_bytes, int device) noexcept {
    std::lock_guard<std::mutex> lock(mutex_);  // std::mutex::lock fails only when misused
    Pool& pool = pools_.find(device)->second;   // exists: the block was allocated from it
    pool.stats.bytes_in_use -= block_bytes;
    try {
      pool.free.emplace(block_bytes, ptr);
    } catch (const std::bad_alloc&) {
      // No host memory for the cache's list node: return the block to the driver instead.
      const CurrentDevice current(device);
      static_cast<void>(cudaFree(ptr));
      pool.stats.bytes_reserved -= block_bytes;
    }
  }

  CudaAllocatorStats stats(int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto pool = pools_.find(device);
    return pool == pools_.end() ? CudaAllocatorStats{} : pool->second.stats;
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [device, pool] : pools_) release_cached(pool, device);
  }

  void reset_peaks() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [device, pool] : pools_) pool.stats.peak_bytes_in_use = pool.stats.bytes_in_use;
  }

 private:
  struct Pool {
    std::multimap<size_t, void*> free;  // cached blocks by size
    CudaAllocatorStats stats;

    void add_in_use(size_t bytes) {
      stats.bytes_in_use += bytes;
      stats.peak_bytes_in_use = std::max(stats.peak_bytes_in_use, stats.bytes_in_use);
    }
  };

  // cudaFree of every cached block of `pool` (the caller holds the mutex); returns the bytes.
  size_t release_cached(Pool& pool, int device) noexcept {
    const CurrentDevice current(device);
    size_t released = 0;
    for (const auto& [size, ptr] : pool.free) {
      static_cast<void>(cudaFree(ptr));  // a failing free leaves nothing to recover
      released += size;
    }
    pool.free.clear();
    pool.stats.bytes_reserved -= released;
    return released;
  }

  std::mutex mutex_;
  std::map<int, Pool> pools_;  // by device ordinal
};
#else
[[noreturn]] void no_cuda(const char* what) {
  QARAC_CHECK(false, what, " needs the CUDA backend, which this build does not have (QARAC_CUDA=OFF)");
}
#endif
}  // namespace

CudaAllocatorStats cuda_allocator_stats(int device) {
#ifdef QARAC_HAVE_CUDA
  return CachingAllocator::instance().stats(device);
#else
  static_cast<void>(device);
  return {};
#endif
}

void cuda_empty_cache() {
#ifdef QARAC_HAVE_CUDA
  CachingAllocator::instance().empty_cache();
#endif
}

namespace {
// What qarac-bench reports per step (memory.h).
std::atomic<uint64_t> memory_call_count{0}, allocation_count{0};
// The bytes of this process's host Buffers (their aligned blocks), counted against
// host_memory_limit() with those of the other processes under it (share_host_tensor_counts).
// Memory outside tensors is not counted: this catches a model or batch that cannot fit, not every
// shortage.
std::atomic<uint64_t> host_bytes_held{0};
// memory_peaks(): the most host_bytes_held, and the most the node's counters summed to at this
// process's allocations, since reset_memory_peaks().
std::atomic<uint64_t> host_bytes_peak{0}, node_host_bytes_peak{0};

void raise_to(std::atomic<uint64_t>& peak, uint64_t value) {
  uint64_t seen = peak.load(std::memory_order_relaxed);
  while (seen < value && !peak.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
  }
}

// The node's counters (share_host_tensor_counts). `count` and `mine` are written before the
// pointer is published and read after it is loaded.
std::atomic<HostTensorCounter*> shared_counters{nullptr};
int shared_count = 0, shared_mine = 0;

// What the tensors of the other processes sharing their counts hold now, and how many they are.
struct Elsewhere {
  uint64_t bytes = 0;
  int processes = 0;
};
Elsewhere host_tensors_elsewhere() {
  Elsewhere e;
  HostTensorCounter* counters = shared_counters.load(std::memory_order_acquire);
  if (counters == nullptr) return e;
  // Sequentially consistent, as the update of this process's own counter before it (Buffer): of
  // two processes allocating at once, at least one sees the other's bytes.
  for (int p = 0; p < shared_count; ++p)
    if (p != shared_mine) e.bytes += counters[p].bytes.load();
  e.processes = shared_count - 1;
  return e;
}

// This process's counter follows its tensors: `delta` bytes more (or, negative, fewer).
void count_shared(int64_t delta) {
  if (HostTensorCounter* counters = shared_counters.load(std::memory_order_acquire))
    counters[shared_mine].bytes.fetch_add(static_cast<uint64_t>(delta));  // wraps back for a negative delta
}

// " and 3.1 GiB by the tensors of the 3 other ranks on this node": what the others hold, in messages.
std::string elsewhere_text(const Elsewhere& e) {
  if (e.processes == 0) return "";
  return detail::concat(" and ", size_text(e.bytes), " by the tensors of the ", e.processes, " other rank",
                        e.processes == 1 ? "" : "s", " on this node");
}
}  // namespace

std::string size_text(uint64_t bytes) {
  char text[32];
  if (bytes < (1u << 20))
    std::snprintf(text, sizeof text, "%llu bytes", static_cast<unsigned long long>(bytes));
  else
    std::snprintf(text, sizeof text, "%.1f %s", static_cast<double>(bytes) / (bytes < (1u << 30) ? 0x1p20 : 0x1p30),
                  bytes < (1u << 30) ? "MiB" : "GiB");
  return text;
}

uint64_t host_tensor_bytes() { return host_bytes_held.load(std::memory_order_relaxed); }

void release_free_host_memory() {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

void share_host_tensor_counts(HostTensorCounter* counters, int count, int mine) {
  if (counters == nullptr) {
    shared_counters.store(nullptr, std::memory_order_release);
    return;
  }
  QARAC_CHECK(count > 0 && mine >= 0 && mine < count, "share_host_tensor_counts: process ", mine, " of ", count);
  shared_count = count;
  shared_mine = mine;
  counters[mine].bytes.store(host_tensor_bytes());
  shared_counters.store(counters, std::memory_order_release);
}

uint64_t check_shared_host_tensors() {
  const HostMemoryLimit& limit = host_memory_limit();
  const uint64_t mine = host_tensor_bytes();
  const Elsewhere others = host_tensors_elsewhere();
  if (others.bytes > limit.bytes || mine > limit.bytes - others.bytes)
    throw OutOfMemory(detail::concat("out of memory on ", hostname(), ": the tensors of its ", others.processes + 1,
                                     " ranks hold ", size_text(mine + others.bytes), " together (this one ",
                                     size_text(mine), "), more than the ", size_text(limit.bytes), " ", limit.source,
                                     "; fewer ranks per node hold less"));
  return mine + others.bytes;
}

MemoryPeaks memory_peaks(Device device) {
  MemoryPeaks peaks;
  peaks.host = host_bytes_peak.load(std::memory_order_relaxed);
  peaks.node_host = std::max(peaks.host, node_host_bytes_peak.load(std::memory_order_relaxed));
  if (device.is_cuda()) peaks.device = cuda_allocator_stats(device.index).peak_bytes_in_use;
  return peaks;
}

void reset_memory_peaks() {
  const uint64_t held = host_tensor_bytes();
  host_bytes_peak.store(held, std::memory_order_relaxed);
  node_host_bytes_peak.store(held + host_tensors_elsewhere().bytes, std::memory_order_relaxed);
#ifdef QARAC_HAVE_CUDA
  CachingAllocator::instance().reset_peaks();
#endif
}

uint64_t memory_calls() { return memory_call_count.load(std::memory_order_relaxed); }
uint64_t buffer_allocations() { return allocation_count.load(std::memory_order_relaxed); }

Buffer::Buffer(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  if (bytes == 0) return;
  allocation_count.fetch_add(1, std::memory_order_relaxed);
  if (device.is_cpu()) {
    QARAC_CHECK(bytes <= std::numeric_limits<size_t>::max() - kHostAlignment, "a host allocation of ", bytes,
                " bytes is larger than any machine");
    const size_t rounded = (bytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
    const uint64_t held = host_bytes_held.fetch_add(rounded, std::memory_order_relaxed);
    count_shared(static_cast<int64_t>(rounded));  // before reading the others' counters
    const HostMemoryLimit& limit = host_memory_limit();
    const Elsewhere elsewhere = host_tensors_elsewhere();
    const uint64_t room = limit.bytes > elsewhere.bytes ? limit.bytes - elsewhere.bytes : 0;
    if (rounded > room || held > room - rounded) {
      host_bytes_held.fetch_sub(rounded, std::memory_order_relaxed);
      count_shared(-static_cast<int64_t>(rounded));
      throw OutOfMemory(detail::concat("out of memory on ", hostname(), ": a tensor of ", size_text(bytes), " with ",
                                       size_text(held), " held by this process's tensors already",
                                       elsewhere_text(elsewhere), " is more than the ", size_text(limit.bytes), " ",
                                       limit.source));
    }
    data_ = std::aligned_alloc(kHostAlignment, rounded);
    if (data_ == nullptr) {
      host_bytes_held.fetch_sub(rounded, std::memory_order_relaxed);
      count_shared(-static_cast<int64_t>(rounded));
      throw OutOfMemory(detail::concat("out of memory on ", hostname(), ": allocating a tensor of ", size_text(bytes),
                                       " failed, with ", size_text(held), " held by this process's tensors"));
    }
    block_bytes_ = rounded;
    raise_to(host_bytes_peak, held + rounded);
    raise_to(node_host_bytes_peak, held + rounded + elsewhere.bytes);
    return;
  }
#ifdef QARAC_HAVE_CUDA
  data_ = CachingAllocator::instance().allocate(bytes, device.index, block_bytes_);
#else
  no_cuda("a CUDA allocation");
#endif
}

Buffer::~Buffer() {
  if (!data_) return;
  if (device_.is_cpu()) {
    std::free(data_);
    host_bytes_held.fetch_sub(block_bytes_, std::memory_order_relaxed);
    count_shared(-static_cast<int64_t>(block_bytes_));
  } else {
#ifdef QARAC_HAVE_CUDA
    CachingAllocator::instance().release(data_, block_bytes_, device_.index);
#endif
  }
}

#ifdef QARAC_HAVE_CUDA
void* device_stream(int index) {
  // Never destroyed, like the allocator: the driver reclaims the streams at exit.
  static std::mutex mutex;
  static std::map<int, cudaStream_t>* streams = new std::map<int, cudaStream_t>();
  std::lock_guard<std::mutex> lock(mutex);
  cudaStream_t& stream = (*streams)[index];
  if (!stream) {
    // Blocking (not cudaStreamNonBlocking): ordered against the legacy default stream, should
    // anything still use it. The caller's current device is left as it was.
    const CurrentDevice current(index);
    QARAC_CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamDefault));
  }
  return stream;
}
#else
void* device_stream(int) { no_cuda("a device stream"); }
#endif

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  memory_call_count.fetch_add(1, std::memory_order_relaxed);
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef QARAC_HAVE_CUDA
  // On the stream of the device that holds the destination (of the source for a download):
  // ordered after the kernels queued there, without waiting for them as a cudaMemcpy on the
  // legacy stream would (an upload from pageable memory waited for the whole device).
  const int device = dst_device.is_cuda() ? dst_device.index : src_device.index;
  const CurrentDevice current(device);
  const auto stream = static_cast<cudaStream_t>(device_stream(device));
  // Between two devices the source's own stream may still be writing it before, and may reuse
  // its block (the caching pool assumes every user of a block is on that device's stream) after:
  // the copy waits for the one and finishes before the other. Rare (one GPU per rank), so simple.
  const bool across = dst_device.is_cuda() && src_device.is_cuda() && src_device.index != dst_device.index;
  if (across) QARAC_CHECK_CUDA(cudaStreamSynchronize(static_cast<cudaStream_t>(device_stream(src_device.index))));
  QARAC_CHECK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream));
  if (dst_device.is_cpu() || across) QARAC_CHECK_CUDA(cudaStreamSynchronize(stream));
#else
  no_cuda("a device copy");
#endif
}

void zero_bytes(void* dst, Device device, size_t bytes) {
  if (bytes == 0) return;
  memory_call_count.fetch_add(1, std::memory_order_relaxed);
  if (device.is_cpu()) {
    std::memset(dst, 0, bytes);
    return;
  }
#ifdef QARAC_HAVE_CUDA
  // Not cudaSetDevice: that would move the caller (and every later kernel, which runs on the
  // current device's context) to device.index for good.
  const CurrentDevice current(device.index);
  QARAC_CHECK_CUDA(
      cudaMemsetAsync(dst, 0, bytes, static_cast<cudaStream_t>(device_stream(device.index))));
#else
  no_cuda("a device memset");
#endif
}

}  // namespace qarac
