// A host emulator of the CUDA features the CUDA kernels use (kernels/cuda/*.cu and
// device_utils.cuh), so that the CPU-only CI runs their real source (ported by port_kernel.py) and
// compares it with the CPU reference; emulated_libraries.h adds the cuBLASLt and CUB calls.
//
// Every CUDA thread of a block is a fiber; a random scheduler runs one fiber at a time until it
// reaches a barrier. __syncthreads waits for the whole block and each warp collective (shuffle,
// ldmatrix, mma, __syncwarp) for its 32 lanes, which must all reach the same kind of collective:
// anything else (a divergent shuffle, a __syncthreads some threads skip) is reported as a
// deadlock or divergence. Threads of a warp do not run in lockstep, and the schedule is random
// (seeded), so a missing barrier shows as a read of shared memory that is still poisoned (every
// byte 0xFF: NaN in f32 and bf16) or already overwritten. cp.async copies land at issue ("eager") or at the latest
// wait_group that must see them ("lazy"). Device memory ends against an inaccessible page, so
// an overrun faults. What this cannot see: ex2.approx's precision (exact exp2 here), the
// hardware memory model (a fiber's stores are visible at once), ptxas and real launch limits
// beyond the few checked in launch().
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

#include "core/dtype.h"
#include "core/error.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }

struct __nv_bfloat16 {
  uint16_t x;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {qarac::bf16(f).bits}; }
inline float __bfloat162float(__nv_bfloat16 b) {
  qarac::bf16 t;
  t.bits = b.x;
  return static_cast<float>(t);
}
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}

using cudaError_t = int;
using cudaStream_t = void*;
constexpr cudaError_t cudaSuccess = 0;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount };
// Two multiprocessors: grid_for then caps a grid at 32 blocks, so grid-stride loops take several
// turns on the tests' small inputs.
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  *value = 2;
  return cudaSuccess;
}
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };
namespace emu {
// Counts a launch of `name` (emulated_backend.h reads the counts).
void count_launch(const char* name);
}  // namespace emu
// Device memory is host memory; the stream is in order, so an asynchronous copy or fill may as well
// land now.
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  emu::count_launch("cudaMemcpyAsync");
  memcpy(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) {
  emu::count_launch("cudaMemsetAsync");
  memset(dst, value, bytes);
  return cudaSuccess;
}
// A kernel's errors are exceptions of the launch itself, so the launch check has nothing left.
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
#define QARAC_CHECK_CUDA(stmt)                                                                \
  do {                                                                                        \
    if ((stmt) != cudaSuccess) throw ::qarac::Error("emulated CUDA: " #stmt " failed");       \
  } while (0)

namespace emu {

// Raises qarac::Error naming the block and thread when called from a kernel.
[[noreturn]] void fail(const char* what);

const dim3& thread_idx();
const dim3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

// Runs body() as every thread of every block of the grid. kernel identifies the function for
// the shared-memory limit set by cudaFuncSetAttribute; name, as written at the launch, counts it.
void launch(const void* kernel, const char* name, dim3 grid, dim3 block, size_t dynamic_smem,
            std::function<void()> body);

void set_max_dynamic_smem(const void* kernel, int bytes);

// Schedule and cp.async mode of the following launches.
void set_schedule_seed(uint64_t seed);
void set_eager_cp_async(bool eager);

// __shared__ variables: every thread of the block gets the same address for its n-th
// declaration; dynamic shared memory is one 128-byte aligned arena.
void* static_shared(size_t bytes, size_t align);
float* dynamic_shared();

void syncthreads();
int syncthreads_count(int predicate);
void syncwarp();
uint32_t shfl(unsigned mask, uint32_t value, int src_lane);
uint32_t shfl_xor(unsigned mask, uint32_t value, int lane_mask);
void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans);
void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
void cp_async16(void* smem, const void* gmem);
void cp_async_commit();
void cp_async_wait(int pending_groups);

template <class T>
T shfl_as(unsigned mask, T v, int lane, bool xor_mode) {
  static_assert(sizeof(T) == 4, "4-byte shuffles only");
  uint32_t u;
  memcpy(&u, &v, 4);
  u = xor_mode ? shfl_xor(mask, u, lane) : shfl(mask, u, lane);
  memcpy(&v, &u, 4);
  return v;
}

// Device memory: the buffer ends against a PROT_NONE page (a read or write past its end faults)
// and starts after one; its contents are 0xFF until written.
class DeviceMemory {
 public:
  explicit DeviceMemory(size_t bytes);
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  void* data() const { return data_; }

 private:
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  void* data_ = nullptr;
};

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())
#define __syncthreads() ::emu::syncthreads()
#define __syncthreads_count(predicate) ::emu::syncthreads_count(predicate)
#define __syncwarp() ::emu::syncwarp()
#define __shfl_sync(m, v, lane) ::emu::shfl_as(m, v, lane, false)
#define __shfl_xor_sync(m, v, lane_mask) ::emu::shfl_as(m, v, lane_mask, true)

// What the CUDA builtins and kernels/cuda/context.cuh give the kernels, in the namespace the port
// puts them in (a namespace of its own, so that nothing clashes with the real CUDA backend when
// the build has one); device_utils.cuh is ported as it is (device_utils_emulated.h).
namespace qarac::cuda_emulated {

// CUDA's integer min overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }

template <class Kernel>
cudaError_t cudaFuncSetAttribute(Kernel kernel, cudaFuncAttribute, int bytes) {
  ::emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), bytes);
  return cudaSuccess;
}

// kernel<<<grid, block, smem, stream>>>(args...) becomes launch_kernel(grid, block, smem,
// stream).named("kernel")(kernel, args...): the kernel is resolved against the arguments, as CUDA
// does, and counted by its name.
struct Launch {
  dim3 grid, block;
  size_t smem;
  const char* name = "kernel";
  Launch named(const char* kernel_name) const { return {grid, block, smem, kernel_name}; }
  // A kernel named as a function or a pointer: its parameters take the arguments.
  template <class... Params, class... Args>
  void operator()(void (*kernel)(Params...), Args... args) const {
    ::emu::launch(reinterpret_cast<const void*>(kernel), name, grid, block, smem, [=] { kernel(args...); });
  }
  // A function template whose last template arguments are deduced from the call
  // (elementwise_kernel<1>(n, op)): its parameters are the arguments' types.
  template <class... Args>
  void operator()(void (*kernel)(Args...), Args... args) const {
    ::emu::launch(reinterpret_cast<const void*>(kernel), name, grid, block, smem, [=] { kernel(args...); });
  }
};
inline Launch launch_kernel(dim3 grid, dim3 block, size_t smem, cudaStream_t) { return {grid, block, smem}; }

// attention.cu's inline-PTX helpers, which the port removes.
inline void cp_async16(void* smem, const void* gmem) { ::emu::cp_async16(smem, gmem); }
inline void cp_async_commit() { ::emu::cp_async_commit(); }
template <int N>
void cp_async_wait() { ::emu::cp_async_wait(N); }
inline void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* p) { ::emu::ldmatrix_x4(r, p, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const __nv_bfloat16* p) { ::emu::ldmatrix_x4(r, p, true); }
inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  ::emu::mma_bf16(d, a, b0, b1);
}
inline float exp2_approx(float x) { return exp2f(x); }  // exact, unlike ex2.approx

// The caching allocator's Buffer, as attention_backward uses it (a scratch block on the device).
struct Device {
  static Device cuda(int) { return {}; }
};
class Buffer {
 public:
  Buffer(size_t bytes, Device) : memory_(bytes) {}
  void* data() const { return memory_.data(); }

 private:
  ::emu::DeviceMemory memory_;
};

}  // namespace qarac::cuda_emulated
