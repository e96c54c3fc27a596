// Embedding lookup (a gather of table rows by token id) and its gradient (a scatter-add of the
// output gradient's rows into the table gradient) on CUDA.
//
// Forward: one warp per output row, 16-byte packs along the row when d and the addresses allow;
// a row of d = 768 bf16 is 96 packs, three per lane, all independent loads.
//
// Backward, deterministic: several rows of a batch share an id (padding, frequent words, every
// position id once per sequence), and summing them with atomics would add them in whatever order
// the warps happen to run, so the table gradient would differ in its last bits from run to run and
// from rank to rank. Data-parallel replicas must stay bit-identical: every rank applies the same
// AdamW update to the all-reduced gradient, and the all-reduce only sums what each rank produced,
// so a nondeterministic scatter would let replicas drift apart. Instead:
//   1. the (id, row) pairs are sorted by id with CUB's radix sort, which is stable, so the rows of
//      one id stay in increasing row order;
//   2. one block per distinct id (a block per sorted position; those that do not start a run of
//      equal ids exit at once) sums that id's rows in sorted order in f32 and adds the sum to
//      dtable once.
// The order of every sum is thus a function of the ids alone. A long run (an id on most rows)
// is summed by one block: fine for the vocabulary, where runs are short, and worth splitting
// across blocks only if profiles show it.
#include "kernels/cuda/embedding.cuh"

#include <algorithm>

#include <cub/device/device_radix_sort.cuh>

#include "core/memory.h"
#include "kernels/cuda/context.cuh"
#include "kernels/cuda/device_utils.cuh"

namespace qarac::cuda {
namespace {

// ---- Kernels ------------------------------------------------------------------------------------

constexpr int kWarpsPerBlock = 8;

// out[i, :] = table[ids[i], :] (or +=), warp w of the block handling row blockIdx.x * 8 + w.
template <class T, int N>
__global__ void embedding_forward_kernel(const int32_t* ids, int64_t n, const T* table, int64_t d,
                                         T* out, bool accumulate) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (row >= n) return;
  const T* src = table + static_cast<int64_t>(ids[row]) * d;
  T* dst = out + row * d;
  for (int64_t c = static_cast<int64_t>(threadIdx.x % kWarpSize) * N; c < d; c += kWarpSize * N) {
    Packed<T, N> v = load_packed<N>(src + c);
    if (accumulate) {
      const Packed<T, N> o = load_packed<N>(dst + c);
#pragma unroll
      for (int k = 0; k < N; ++k) v.v[k] = from_float<T>(to_float(v.v[k]) + to_float(o.v[k]));
    }
    store_packed<N>(dst + c, v);
  }
}

// The sort's values: row indices 0 .. n-1.
__global__ void iota_kernel(int32_t* rows, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    rows[i] = static_cast<int32_t>(i);
}

// Block i handles the run of equal ids that starts at sorted position i, if one does. The run's
// end is found cooperatively: ids are sorted, so within each window of blockDim.x positions the
// ones equal to this id form a prefix, and __syncthreads_count gives its length to every thread
// (the loop is uniform across the block). Then thread t sums packs t, t + blockDim.x, ... of the
// run's dout rows in sorted (= row) order and adds the sums to dtable[id].
template <class T, int N>
__global__ void embedding_backward_kernel(const uint32_t* sorted_ids, const int32_t* sorted_rows,
                                          int64_t n, const T* dout, int64_t d, float* dtable) {
  const int64_t begin = blockIdx.x;
  const uint32_t id = sorted_ids[begin];
  if (begin > 0 && sorted_ids[begin - 1] == id) return;  // not the start of a run: whole block
  int64_t end = begin + 1;
  for (;;) {
    const int64_t j = end + threadIdx.x;
    const int same = __syncthreads_count(j < n && sorted_ids[j] == id);
    end += same;
    if (same < static_cast<int>(blockDim.x)) break;
  }
  float* dst = dtable + static_cast<int64_t>(id) * d;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * N; c < d;
       c += static_cast<int64_t>(blockDim.x) * N) {
    float sum[N] = {};
#pragma unroll 4
    for (int64_t j = begin; j < end; ++j) {
      const Packed<T, N> v = load_packed<N>(dout + static_cast<int64_t>(sorted_rows[j]) * d + c);
#pragma unroll
      for (int k = 0; k < N; ++k) sum[k] += to_float(v.v[k]);
    }
    Packed<float, N> acc = load_packed<N>(dst + c);
#pragma unroll
    for (int k = 0; k < N; ++k) acc.v[k] += sum[k];
    store_packed<N>(dst + c, acc);
  }
}

// Bytes rounded up to a multiple of 256, the alignment of each piece of the scratch buffer.
size_t round256(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

// ---- Launchers ----------------------------------------------------------------------------------

void embedding_forward(DType dtype, const int32_t* ids, int64_t n, const void* table, int64_t vocab,
                       int64_t d, void* out, bool accumulate) {
  if (n == 0 || d == 0) return;
  QARAC_CHECK(vocab > 0, "embedding_forward: empty table");
  dispatch_compute(dtype, "embedding_forward", [&](auto tag) {
    using T = decltype(tag);
    constexpr int kN = kPack16<T>;
    const unsigned blocks = static_cast<unsigned>(ceil_div(n, kWarpsPerBlock));
    const int threads = kWarpsPerBlock * kWarpSize;
    const T* t = static_cast<const T*>(table);
    T* o = static_cast<T*>(out);
    if (d % kN == 0 && aligned16(table) && aligned16(out))
      embedding_forward_kernel<T, kN><<<blocks, threads, 0, stream()>>>(ids, n, t, d, o, accumulate);
    else
      embedding_forward_kernel<T, 1><<<blocks, threads, 0, stream()>>>(ids, n, t, d, o, accumulate);
    QARAC_CHECK_LAUNCH();
  });
}

void embedding_backward(DType dtype, DType grad_dtype, const int32_t* ids, int64_t n,
                        const void* dout, int64_t vocab, int64_t d, void* dtable) {
  QARAC_CHECK(grad_dtype == DType::f32, "embedding_backward: dtable must be f32, got ",
              dtype_name(grad_dtype));
  if (n == 0 || d == 0) return;
  QARAC_CHECK(vocab > 0, "embedding_backward: empty table");
  QARAC_CHECK(n <= INT32_MAX, "embedding_backward: ", n, " rows exceed the int32 sort");
  cudaStream_t s = stream();
  // Ids lie in [0, vocab) (trusted, see ops.h), so as unsigned keys they sort like the ints and
  // only their low `bits` bits need sorting (16 for RoBERTa's 50265 ids instead of 32: half the
  // radix passes).
  int bits = 1;
  while (bits < 32 && (static_cast<uint64_t>(vocab - 1) >> bits) != 0) ++bits;
  const uint32_t* keys_in = reinterpret_cast<const uint32_t*>(ids);
  const int items = static_cast<int>(n);

  // One scratch buffer from the project's allocator: sorted ids, row indices before and after the
  // sort, and CUB's temporary storage, each 256-byte aligned. Released when this function
  // returns; a later allocation that reuses the block is ordered after these kernels by the
  // stream.
  size_t cub_bytes = 0;
  QARAC_CHECK_CUDA(cub::DeviceRadixSort::SortPairs(nullptr, cub_bytes, keys_in,
                                                   static_cast<uint32_t*>(nullptr),
                                                   static_cast<const int32_t*>(nullptr),
                                                   static_cast<int32_t*>(nullptr), items, 0, bits,
                                                   s));
  const size_t array_bytes = round256(static_cast<size_t>(n) * sizeof(int32_t));
  const size_t total = 3 * array_bytes + round256(cub_bytes);
  int device = 0;
  QARAC_CHECK_CUDA(cudaGetDevice(&device));
  const Buffer scratch(total, Device::cuda(device));
  char* base = static_cast<char*>(scratch.data());
  uint32_t* sorted_ids = reinterpret_cast<uint32_t*>(base);
  int32_t* rows = reinterpret_cast<int32_t*>(base + array_bytes);
  int32_t* sorted_rows = reinterpret_cast<int32_t*>(base + 2 * array_bytes);
  void* cub_temp = base + 3 * array_bytes;

  constexpr int kThreads = 256;
  iota_kernel<<<grid_for(n, kThreads), kThreads, 0, s>>>(rows, n);
  QARAC_CHECK_LAUNCH();
  QARAC_CHECK_CUDA(cub::DeviceRadixSort::SortPairs(cub_temp, cub_bytes, keys_in, sorted_ids, rows,
                                                   sorted_rows, items, 0, bits, s));

  dispatch_compute(dtype, "embedding_backward", [&](auto tag) {
    using T = decltype(tag);
    constexpr int kN = kPack16<T>;
    const T* grad = static_cast<const T*>(dout);
    float* table = static_cast<float*>(dtable);
    // Threads: one per pack of a row, rounded up to whole warps, at most 256.
    const bool vector = d % kN == 0 && aligned16(dout) &&
                        reinterpret_cast<uintptr_t>(dtable) % (sizeof(float) * kN) == 0;
    const int64_t packs = vector ? d / kN : d;
    const int threads = static_cast<int>(std::min<int64_t>(ceil_div(packs, kWarpSize) * kWarpSize,
                                                           kThreads));
    const unsigned blocks = static_cast<unsigned>(n);
    if (vector)
      embedding_backward_kernel<T, kN><<<blocks, threads, 0, s>>>(sorted_ids, sorted_rows, n, grad,
                                                                  d, table);
    else
      embedding_backward_kernel<T, 1><<<blocks, threads, 0, s>>>(sorted_ids, sorted_rows, n, grad,
                                                                 d, table);
    QARAC_CHECK_LAUNCH();
  });
}

}  // namespace qarac::cuda
