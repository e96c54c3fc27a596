// Elementwise CUDA ops: bias add and its deterministic gradient, add, accumulate, scale. All are
// memory-bound: each element is read and written once, in 16-byte packs when the addresses
// allow it, with the arithmetic in f32 whatever the storage dtype.
#include "kernels/cuda/elementwise.cuh"

#include "core/memory.h"
#include "kernels/cuda/context.cuh"
#include "kernels/cuda/device_utils.cuh"

namespace qarac::cuda {
namespace {

// ---- Kernels ------------------------------------------------------------------------------------

// y[r, c] += bias[c]. With packs of N, cols % N == 0, so a pack never straddles two rows and its
// bias slice starts at c, a multiple of N (aligned when bias is).
template <class T>
struct BiasAddOp {
  T* y;
  const T* bias;
  int64_t cols;
  template <int N>
  __device__ void apply(int64_t i) const {
    Packed<T, N> v = load_packed<N>(y + i);
    const Packed<T, N> b = load_packed<N>(bias + i % cols);
#pragma unroll
    for (int k = 0; k < N; ++k) v.v[k] = from_float<T>(to_float(v.v[k]) + to_float(b.v[k]));
    store_packed<N>(y + i, v);
  }
};

// out = a + b (accumulate is out = a = dst, b = src).
template <class T>
struct AddOp {
  const T* a;
  const T* b;
  T* out;
  template <int N>
  __device__ void apply(int64_t i) const {
    const Packed<T, N> x = load_packed<N>(a + i), y = load_packed<N>(b + i);
    Packed<T, N> r;
#pragma unroll
    for (int k = 0; k < N; ++k) r.v[k] = from_float<T>(to_float(x.v[k]) + to_float(y.v[k]));
    store_packed<N>(out + i, r);
  }
};

template <class T>
struct ScaleOp {
  T* x;
  float factor;
  template <int N>
  __device__ void apply(int64_t i) const {
    Packed<T, N> v = load_packed<N>(x + i);
#pragma unroll
    for (int k = 0; k < N; ++k) v.v[k] = from_float<T>(to_float(v.v[k]) * factor);
    store_packed<N>(x + i, v);
  }
};

// Bias gradient, pass 1: column sums of dy over fixed chunks of kChunkRows rows. Block
// (kTileCols, kRowLanes) covers kTileCols columns of one chunk; thread (tx, ty) sums rows
// ty, ty + kRowLanes, ... of the chunk in that order, then the kRowLanes partial sums of a column
// are added in lane order. Every sum therefore has an order fixed by the shape alone (not by the
// GPU's SM count or scheduling), so replicas on different ranks get the same bits. A warp reads
// 32 consecutive columns of one row: coalesced. With one chunk the column sum is final and
// goes straight into dbias; otherwise it is stored in partial[chunk, c] for pass 2.
constexpr int kTileCols = 32, kRowLanes = 8;
constexpr int64_t kChunkRows = 256;

template <class T>
__global__ void bias_grad_partial_kernel(const T* dy, int64_t rows, int64_t cols, float* partial,
                                         float* dbias) {
  __shared__ float lanes[kRowLanes][kTileCols];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kTileCols + tx;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * kChunkRows;
  const int64_t end = min(begin + kChunkRows, rows);
  float sum = 0.f;
  if (c < cols)
    for (int64_t r = begin + ty; r < end; r += kRowLanes) sum += to_float(dy[r * cols + c]);
  lanes[ty][tx] = sum;
  __syncthreads();
  if (ty != 0 || c >= cols) return;
  float total = 0.f;
#pragma unroll
  for (int k = 0; k < kRowLanes; ++k) total += lanes[k][tx];
  if (gridDim.y == 1)
    dbias[c] += total;
  else
    partial[blockIdx.y * cols + c] = total;
}

// Pass 2: dbias[c] += the chunk sums of column c, in chunk order. One thread per column;
// consecutive threads read consecutive columns of each chunk row: coalesced.
__global__ void bias_grad_final_kernel(const float* partial, int64_t chunks, int64_t cols,
                                       float* dbias) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
       c += stride) {
    float total = 0.f;
    for (int64_t k = 0; k < chunks; ++k) total += partial[k * cols + c];
    dbias[c] += total;
  }
}

}  // namespace

// ---- Launchers ----------------------------------------------------------------------------------

void bias_add(DType dtype, void* y, const void* bias, int64_t rows, int64_t cols) {
  dispatch_compute(dtype, "bias_add", [&](auto tag) {
    using T = decltype(tag);
    const BiasAddOp<T> op{static_cast<T*>(y), static_cast<const T*>(bias), cols};
    const bool aligned = cols % kPack16<T> == 0 && aligned16(y) && aligned16(bias);
    launch_elementwise<T>(rows * cols, aligned, stream(), op);
  });
}

void bias_backward(DType dtype, DType grad_dtype, const void* dy, void* dbias, int64_t rows,
                   int64_t cols) {
  QARAC_CHECK(grad_dtype == DType::f32, "bias_backward: dbias must be f32, got ",
              dtype_name(grad_dtype));
  if (rows == 0 || cols == 0) return;
  float* out = static_cast<float*>(dbias);
  const int64_t chunks = ceil_div(rows, kChunkRows);
  QARAC_CHECK(chunks <= 65535, "bias_backward: ", rows, " rows exceed the grid's ",
              65535 * kChunkRows);
  // The partial sums live in a scratch block from the project's allocator; it is released when
  // this function returns, and a later allocation that reuses the block is ordered after these
  // kernels by the stream.
  int device = 0;
  QARAC_CHECK_CUDA(cudaGetDevice(&device));
  const Buffer partial(chunks > 1 ? static_cast<size_t>(chunks * cols) * sizeof(float) : 0,
                       Device::cuda(device));
  float* partial_data = static_cast<float*>(partial.data());
  dispatch_compute(dtype, "bias_backward", [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(static_cast<unsigned>(ceil_div(cols, kTileCols)), static_cast<unsigned>(chunks));
    bias_grad_partial_kernel<T><<<grid, dim3(kTileCols, kRowLanes), 0, stream()>>>(
        static_cast<const T*>(dy), rows, cols, partial_data, out);
    QARAC_CHECK_LAUNCH();
  });
  if (chunks > 1) {
    constexpr int kThreads = 256;
    bias_grad_final_kernel<<<grid_for(cols, kThreads), kThreads, 0, stream()>>>(partial_data,
                                                                                chunks, cols, out);
    QARAC_CHECK_LAUNCH();
  }
}

void add(DType dtype, const void* a, const void* b, void* out, int64_t n) {
  dispatch_compute(dtype, "add", [&](auto tag) {
    using T = decltype(tag);
    const AddOp<T> op{static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(out)};
    launch_elementwise<T>(n, aligned16(a) && aligned16(b) && aligned16(out), stream(), op);
  });
}

void accumulate(DType dtype, void* dst, const void* src, int64_t n) {
  add(dtype, dst, src, dst, n);
}

void scale(DType dtype, void* x, double factor, int64_t n) {
  dispatch_compute(dtype, "scale", [&](auto tag) {
    using T = decltype(tag);
    const ScaleOp<T> op{static_cast<T*>(x), static_cast<float>(factor)};
    launch_elementwise<T>(n, aligned16(x), stream(), op);
  });
}

}  // namespace qarac::cuda
