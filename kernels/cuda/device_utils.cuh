// Device-side helpers shared by the CUDA kernels: element type conversions, packed (up to 16-byte)
// accesses, warp and block reductions, dropout's row masks, and the launch check. Include from .cu
// files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/check_cuda.h"
#include "core/dtype.h"
#include "core/memory.h"
#include "core/rng.h"
#include "kernels/cuda/context.cuh"
#include "kernels/cuda/dropout.cuh"

// Checks the launch just queued (bad configuration, missing kernel image); errors inside the
// kernel surface at the next synchronising call.
#define QARAC_CHECK_LAUNCH() QARAC_CHECK_CUDA(cudaGetLastError())

namespace qarac::cuda {

constexpr int kWarpSize = 32;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
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

// The sequence of a padding-free batch that holds token row `row` (< offsets[batch]): the last b
// with offsets[b] <= row. Empty sequences repeat an offset; the last b of a run of equal offsets
// is the one whose range is not empty. A binary search over the B+1 offsets.
__device__ __forceinline__ int64_t sequence_of_row(const int32_t* offsets, int64_t batch,
                                                   int64_t row) {
  int64_t lo = 0, hi = batch - 1;  // offsets[0] = 0 <= row, so the answer lies in [lo, hi]
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= row)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// The hidden-dropout mask of row `row` (dropout.cuh's RowDropout, core/rng.h's contract): its
// sequence's id and the element index of its column 0, found once per row.
struct RowMask {
  uint64_t id, first;
};
__device__ __forceinline__ RowMask row_mask(const RowDropout& d, int64_t row) {
  const int64_t b = sequence_of_row(d.offsets, d.batch, row);
  return {d.ids[b], hidden_element(static_cast<uint64_t>(row - d.offsets[b]), 0)};
}
// Bit k (k < N) set when column c + k is kept; c a multiple of N, and N divides the 8 columns one
// Philox draw decides, so the N columns take their decisions from one draw.
template <int N>
__device__ __forceinline__ uint32_t kept_bits(const RowDropout& d, const RowMask& m, int64_t c) {
  static_assert(kDropoutGroup % N == 0, "a pack lies inside one group of draws");
  constexpr uint64_t kLow = kDropoutGroup - 1;
  const uint64_t e = m.first + static_cast<uint64_t>(c);
  return dropout_group_mask(d.key, m.id, e & ~kLow, d.threshold) >> (e & kLow);
}

// N consecutive elements of T moved as one access: Packed<T, 16 / sizeof(T)> is one 16-byte
// load or store (the address 16-byte aligned), Packed<T, 1> a scalar one. Kernels templated on N run the same body
// vectorised when the sizes and addresses allow it and scalar otherwise.
template <class T, int N>
struct alignas(sizeof(T) * N) Packed {
  T v[N];
};
template <int N, class T>
__device__ __forceinline__ Packed<T, N> load_packed(const T* p) {
  return *reinterpret_cast<const Packed<T, N>*>(p);
}
template <int N, class T>
__device__ __forceinline__ void store_packed(T* p, const Packed<T, N>& x) {
  *reinterpret_cast<Packed<T, N>*>(p) = x;
}
// The widest access for T: 16 bytes.
template <class T>
constexpr int kPack16 = 16 / static_cast<int>(sizeof(T));

// Whether p can be accessed 16 bytes at a time (null counts as aligned: absent operands).
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Blocks for a grid-stride loop over `items` work items of `threads` threads each: enough to
// fill every multiprocessor several times over, no more (the loop covers the rest), so the
// launch never exceeds the grid limit and each thread amortises its index arithmetic.
inline unsigned grid_for(int64_t items, int threads) {
  int device = 0, sms = 0;
  QARAC_CHECK_CUDA(cudaGetDevice(&device));
  QARAC_CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t wanted = ceil_div(items, threads), cap = static_cast<int64_t>(sms) * 16;
  return static_cast<unsigned>(wanted < 1 ? 1 : (wanted < cap ? wanted : cap));
}

// Calls f(T{}) with T the CUDA element type of a compute dtype (f32 -> float, bf16 ->
// __nv_bfloat16); any other dtype raises an error naming the op.
template <class F>
void dispatch_compute(DType dtype, const char* op, F&& f) {
  if (dtype == DType::f32)
    f(float{});
  else if (dtype == DType::bf16)
    f(__nv_bfloat16{});
  else
    QARAC_CHECK(false, op, ": dtype ", dtype_name(dtype), " has no CUDA kernel (f32 or bf16)");
}

}  // namespace qarac::cuda

namespace qarac::cuda {

// A grid-stride loop over n elements in packs of N: op.apply<N>(i) handles elements [i, i+N),
// then op.apply<1>(i) the n % N elements of the tail. Every element is read and written by the
// thread that owns it, so an op's output may alias its inputs.
template <int N, class Op>
__global__ void elementwise_kernel(int64_t n, Op op) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = n / N;
  for (int64_t p = first; p < packs; p += stride) op.template apply<N>(p * N);
  for (int64_t i = packs * N + first; i < n; i += stride) op.template apply<1>(i);
}

// Launches elementwise_kernel on the context's stream with 16-byte packs when every pointer the
// op touches is 16-byte aligned (`aligned`), else element by element. Memory-bound: 256 threads
// and one 16-byte access per operand per iteration keep enough bytes in flight per SM.
template <class T, class Op>
void launch_elementwise(int64_t n, bool aligned, cudaStream_t stream, const Op& op) {
  if (n <= 0) return;
  constexpr int kThreads = 256;
  if (aligned) {
    elementwise_kernel<kPack16<T>><<<grid_for(ceil_div(n, kPack16<T>), kThreads), kThreads, 0,
                                     stream>>>(n, op);
  } else {
    elementwise_kernel<1><<<grid_for(n, kThreads), kThreads, 0, stream>>>(n, op);
  }
  QARAC_CHECK_LAUNCH();
}

}  // namespace qarac::cuda

// ---- Added for the pooling head and the row cosine (pooling.cu, cosine.cu) --------------------
namespace qarac::cuda {

// cos(x, y) = x·y / max(‖x‖ ‖y‖, eps) from x·y, ‖x‖² and ‖y‖², with its gradient in the form
//   ∂cos/∂x = alpha y − beta_x x,   ∂cos/∂y = alpha x − beta_y y.
// Where ‖x‖ ‖y‖ > eps: alpha = 1/(‖x‖ ‖y‖), beta_x = cos/‖x‖², beta_y = cos/‖y‖² (from
// ∂‖x‖/∂x = x/‖x‖); where the denominator is clamped it is the constant eps: alpha = 1/eps,
// beta = 0. Both norms are positive on the first branch. Same form as kernels/cpu/cosine.h.
struct CosineTerms {
  float value, alpha, beta_x, beta_y;
};
__device__ __forceinline__ CosineTerms cosine_terms(float dot, float sq_x, float sq_y, float eps) {
  const float norms = sqrtf(sq_x) * sqrtf(sq_y);
  if (norms > eps) {
    const float value = dot / norms;
    return {value, 1.f / norms, value / sq_x, value / sq_y};
  }
  return {dot / eps, 1.f / eps, 0.f, 0.f};
}

}  // namespace qarac::cuda

// ---- Added for the column sums of parameter gradients (elementwise.cu, gelu.cu, layernorm.cu) --
namespace qarac::cuda {

// Column sums over the rows of a [rows, cols] matrix in an order fixed by the shape alone (not by
// the GPU's SM count or scheduling; no atomics), so replicas on different ranks get the same bits,
// and every kernel that sums in this order gives the same bits for the same values (the fused
// bias gradients of the GELU and LayerNorm backward passes are bias_backward's):
//   - rows in chunks of kColumnChunk = 32; lane l (0..7) of a chunk sums the chunk's rows l,
//     l + 8, l + 16, l + 24 in that order, and the chunk's sum adds the lanes in order;
//   - with one chunk that is the total, added to out; otherwise the chunk sums, kept in
//     partial[chunk, c], are added the same way: lane l sums chunks l, l + 8, ... in order, then
//     the lanes in order.
// Chunks of 32 rows let a kernel that owns whole rows (the LayerNorm backward, a warp per row)
// form a chunk's sum in one block and still fill the GPU with blocks. K sums are taken in one
// pass over the rows: value(r, c) gives the K elements (a producer fused into the sums computes
// them, and may store what it computes, there).
constexpr int kColumnTile = 32, kColumnLanes = 8;
constexpr int64_t kColumnChunk = 32;
// A block of the column sums takes this many chunks (strided by the grid): 32 rows per thread,
// against the block's two barriers per chunk.
constexpr int64_t kColumnChunksPerBlock = 8;

template <int K>
struct ColumnValues {
  float v[K];
};
template <int K>
struct ColumnOutputs {  // out[k] [cols] (f32) += the sums of values k
  float* out[K];
};

// The chunk sums partial [K][chunks][cols] of column c added in lane order, by block (kColumnTile,
// kColumnLanes) as thread (tx, ty) = (c's column in the tile, its lane).
template <int K>
__device__ void add_chunk_sums(const float* partial, int64_t chunks, int64_t cols, int64_t c,
                               ColumnOutputs<K> out) {
  __shared__ float lanes[K][kColumnLanes][kColumnTile];
  const int tx = threadIdx.x, ty = threadIdx.y;
  float sum[K] = {};
  if (c < cols)
    for (int64_t chunk = ty; chunk < chunks; chunk += kColumnLanes) {
#pragma unroll
      for (int k = 0; k < K; ++k) sum[k] += partial[(k * chunks + chunk) * cols + c];
    }
#pragma unroll
  for (int k = 0; k < K; ++k) lanes[k][ty][tx] = sum[k];
  __syncthreads();
  if (ty != 0 || c >= cols) return;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    float total = 0.f;
#pragma unroll
    for (int l = 0; l < kColumnLanes; ++l) total += lanes[k][l][tx];
    out.out[k][c] += total;
  }
}

// Block (kColumnTile, kColumnLanes): kColumnTile columns of chunks blockIdx.y, blockIdx.y +
// gridDim.y, ...; thread (tx, ty) is lane ty of column tx. partial is [K][chunks][cols]. A single
// block in y holds every chunk and adds the chunk sums itself (up to kColumnChunksPerBlock
// chunks: one launch); otherwise column_sums_final_kernel does.
template <int K, class Value>
__global__ void column_sums_partial_kernel(Value value, int64_t rows, int64_t cols, int64_t chunks,
                                           float* partial, ColumnOutputs<K> out) {
  __shared__ float lanes[K][kColumnLanes][kColumnTile];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColumnTile + tx;
  for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
    const int64_t begin = chunk * kColumnChunk, end = min(begin + kColumnChunk, rows);
    float sum[K] = {};
    if (c < cols)
      for (int64_t r = begin + ty; r < end; r += kColumnLanes) {
        const ColumnValues<K> v = value(r, c);
#pragma unroll
        for (int k = 0; k < K; ++k) sum[k] += v.v[k];
      }
#pragma unroll
    for (int k = 0; k < K; ++k) lanes[k][ty][tx] = sum[k];
    __syncthreads();
    if (ty == 0 && c < cols) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        float total = 0.f;
#pragma unroll
        for (int l = 0; l < kColumnLanes; ++l) total += lanes[k][l][tx];
        if (chunks == 1)
          out.out[k][c] += total;
        else
          partial[(k * chunks + chunk) * cols + c] = total;
      }
    }
    __syncthreads();  // the lanes are written again for the next chunk; the chunk sums are seen
  }
  if (gridDim.y == 1 && chunks > 1) add_chunk_sums(partial, chunks, cols, c, out);
}

template <int K>
__global__ void column_sums_final_kernel(const float* partial, int64_t chunks, int64_t cols,
                                         ColumnOutputs<K> out) {
  add_chunk_sums(partial, chunks, cols,
                 static_cast<int64_t>(blockIdx.x) * kColumnTile + threadIdx.x, out);
}

// Scratch for K chunk sums of `chunks` chunks (none needed for one chunk), from the project's
// allocator and released when the caller returns: a later allocation that reuses the block is
// ordered after the kernels that use it by the stream.
inline Buffer column_partials(int k, int64_t chunks, int64_t cols) {
  int device = 0;
  QARAC_CHECK_CUDA(cudaGetDevice(&device));
  return Buffer(chunks > 1 ? static_cast<size_t>(k * chunks * cols) * sizeof(float) : 0,
                Device::cuda(device));
}

// out.out[k] += the chunk sums in partial, when there are several chunks.
template <int K>
void column_sums_final(const float* partial, int64_t chunks, int64_t cols, ColumnOutputs<K> out) {
  if (chunks <= 1 || cols == 0) return;
  column_sums_final_kernel<K><<<static_cast<unsigned>(ceil_div(cols, kColumnTile)),
                                dim3(kColumnTile, kColumnLanes), 0, stream()>>>(partial, chunks,
                                                                                cols, out);
  QARAC_CHECK_LAUNCH();
}

// out.out[k] [cols] (f32) += Σ_rows value(r, c).v[k], on the context's stream.
template <int K, class Value>
void column_sums(Value value, int64_t rows, int64_t cols, ColumnOutputs<K> out) {
  if (rows == 0 || cols == 0) return;
  const int64_t chunks = ceil_div(rows, kColumnChunk);
  const Buffer partial = column_partials(K, chunks, cols);
  float* partial_data = static_cast<float*>(partial.data());
  const int64_t blocks_y = std::min<int64_t>(ceil_div(chunks, kColumnChunksPerBlock), 65535);
  const dim3 grid(static_cast<unsigned>(ceil_div(cols, kColumnTile)), static_cast<unsigned>(blocks_y));
  column_sums_partial_kernel<K, Value><<<grid, dim3(kColumnTile, kColumnLanes), 0, stream()>>>(
      value, rows, cols, chunks, partial_data, out);
  QARAC_CHECK_LAUNCH();
  if (blocks_y > 1) column_sums_final(partial_data, chunks, cols, out);
}

}  // namespace qarac::cuda
