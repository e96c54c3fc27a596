// Device-side helpers shared by the CUDA kernels: element type conversions, 16-byte vector
// access, warp and block reductions, and the launch check. Include from .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/check_cuda.h"
#include "core/dtype.h"

// Checks the launch just queued (bad configuration, missing kernel image); errors inside the
// kernel surface at the next synchronising call.
#define QARAC_CHECK_LAUNCH() QARAC_CHECK_CUDA(cudaGetLastError())

namespace qarac::cuda {

constexpr int kWarpSize = 32;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The CUDA element type behind a storage dtype: f32 -> float, bf16 -> __nv_bfloat16.
template <class T> struct DeviceType;
template <> struct DeviceType<float> { using type = float; };
template <> struct DeviceType<bf16> { using type = __nv_bfloat16; };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// 16 bytes of T: 4 floats or 8 bf16, loaded and stored in one instruction. The address must be
// 16-byte aligned (row starts are, when the row length is a multiple of the vector width).
template <class T>
struct alignas(16) Vec16 {
  static constexpr int size = 16 / sizeof(T);
  T v[size];
};
template <class T>
__device__ __forceinline__ Vec16<T> load16(const T* p) {
  return *reinterpret_cast<const Vec16<T>*>(p);
}
template <class T>
__device__ __forceinline__ void store16(T* p, const Vec16<T>& x) {
  *reinterpret_cast<Vec16<T>*>(p) = x;
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` is 32 floats of shared memory; the call synchronises the block.
__device__ __forceinline__ float block_sum(float x, float* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  x = warp_sum(x);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  const int warps = blockDim.x / kWarpSize;
  x = lane < warps ? scratch[lane] : 0.f;
  return warp_sum(x);
}

}  // namespace qarac::cuda
