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
//   2. the sorted rows are cut into segments: at every change of id and at every multiple of
//      kChunkRows. A block per segment sums its rows in sorted order in f32. A run of equal ids
//      that lies within one chunk is a segment of its own, and its block adds the sum to dtable.
//      The segments of a run that crosses a chunk's end (a frequent word, <mask> in masked-LM
//      batches, a position id in batches of more than kChunkRows sequences) store their sums;
//   3. a block per such run adds them to dtable in chunk order.
// The order of every sum is thus a function of the ids alone, and no block sums more than
// kChunkRows rows: one id on most rows of a batch is summed by many blocks, not by one.
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

// The rows of dout each block sums at most: the sorted positions are cut at its multiples.
constexpr int64_t kChunkRows = 32;

// The sums of the segments of runs that cross a chunk's end, two slots of d floats per chunk: a
// run's first segment (from the run's start to the chunk's end) in its chunk's slot 1, the later
// segments (each from a chunk's start) in their chunk's slot 0.
template <class F>
__device__ inline F* segment_slot(F* partials, int64_t chunk, int slot, int64_t d) {
  return partials + (2 * chunk + slot) * d;
}

// Whether the run of equal ids at sorted position `last`, the last of its chunk, goes on into the
// next chunk.
__device__ inline bool run_goes_on(const uint32_t* sorted_ids, int64_t last, int64_t n) {
  return last + 1 < n && sorted_ids[last + 1] == sorted_ids[last];
}

// Block i handles the segment that starts at sorted position i, if one does: at a change of id or
// at a chunk's start. Ids are sorted, so the positions of the chunk equal to this id form a prefix,
// and __syncthreads_count gives its length to every thread (blockDim.x >= kChunkRows). Then thread
// t sums packs t, t + blockDim.x, ... of the segment's dout rows in sorted (= row) order, and adds
// the sums to dtable[id] when the segment is a whole run, or stores them in the segment's slot.
template <class T, int N>
__global__ void embedding_backward_kernel(const uint32_t* sorted_ids, const int32_t* sorted_rows,
                                          int64_t n, const T* dout, int64_t d, float* dtable,
                                          float* partials) {
  const int64_t begin = blockIdx.x, chunk = begin / kChunkRows;
  const uint32_t id = sorted_ids[begin];
  const bool run_start = begin == 0 || sorted_ids[begin - 1] != id;
  if (!run_start && begin % kChunkRows != 0) return;  // inside a segment: the whole block
  const int64_t chunk_end = min(n, (chunk + 1) * kChunkRows);
  const int64_t j = begin + threadIdx.x;
  const int64_t end = begin + __syncthreads_count(j < chunk_end && sorted_ids[j] == id);
  const bool whole_run = run_start && !(end == chunk_end && run_goes_on(sorted_ids, end - 1, n));
  float* dst = whole_run ? dtable + static_cast<int64_t>(id) * d
                         : segment_slot(partials, chunk, run_start ? 1 : 0, d);
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * N; c < d;
       c += static_cast<int64_t>(blockDim.x) * N) {
    float sum[N] = {};
#pragma unroll 4
    for (int64_t r = begin; r < end; ++r) {
      const Packed<T, N> v = load_packed<N>(dout + static_cast<int64_t>(sorted_rows[r]) * d + c);
#pragma unroll
      for (int k = 0; k < N; ++k) sum[k] += to_float(v.v[k]);
    }
    Packed<float, N> out = {};
    if (whole_run) out = load_packed<N>(dst + c);
#pragma unroll
    for (int k = 0; k < N; ++k) out.v[k] += sum[k];
    store_packed<N>(dst + c, out);
  }
}

// Block c handles the run that starts in chunk c and goes on past its end, if one does: it adds
// the run's segment sums (slot 1 of chunk c, then slot 0 of each later chunk the run reaches) in
// chunk order, and the total to dtable[id].
template <int N>
__global__ void embedding_backward_runs_kernel(const uint32_t* sorted_ids, int64_t n, int64_t d,
                                               const float* partials, float* dtable) {
  const int64_t chunk = blockIdx.x, first = chunk * kChunkRows;
  const int64_t last = min(n, first + kChunkRows) - 1;
  const uint32_t id = sorted_ids[last];
  if (!run_goes_on(sorted_ids, last, n)) return;         // no run leaves this chunk
  if (chunk > 0 && sorted_ids[first - 1] == id) return;  // the one that does began before it
  float* dst = dtable + static_cast<int64_t>(id) * d;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * N; c < d;
       c += static_cast<int64_t>(blockDim.x) * N) {
    Packed<float, N> sum = load_packed<N>(segment_slot(partials, chunk, 1, d) + c);
    for (int64_t later = chunk + 1;; ++later) {
      const Packed<float, N> v = load_packed<N>(segment_slot(partials, later, 0, d) + c);
#pragma unroll
      for (int k = 0; k < N; ++k) sum.v[k] += v.v[k];
      const int64_t next = (later + 1) * kChunkRows;  // another run may leave this chunk
      if (next >= n || sorted_ids[next] != id) break;
    }
    Packed<float, N> acc = load_packed<N>(dst + c);
#pragma unroll
    for (int k = 0; k < N; ++k) acc.v[k] += sum.v[k];
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
  // sort, CUB's temporary storage and the segment sums (two rows of d floats per chunk), each
  // 256-byte aligned. Released when this function returns; a later allocation that reuses the
  // block is ordered after these kernels by the stream.
  size_t cub_bytes = 0;
  QARAC_CHECK_CUDA(cub::DeviceRadixSort::SortPairs(nullptr, cub_bytes, keys_in,
                                                   static_cast<uint32_t*>(nullptr),
                                                   static_cast<const int32_t*>(nullptr),
                                                   static_cast<int32_t*>(nullptr), items, 0, bits,
                                                   s));
  const int64_t chunks = ceil_div(n, kChunkRows);
  const size_t array_bytes = round256(static_cast<size_t>(n) * sizeof(int32_t));
  const size_t cub_offset = 3 * array_bytes, partials_offset = cub_offset + round256(cub_bytes);
  const size_t total = partials_offset + static_cast<size_t>(2 * chunks * d) * sizeof(float);
  int device = 0;
  QARAC_CHECK_CUDA(cudaGetDevice(&device));
  const Buffer scratch(total, Device::cuda(device));
  char* base = static_cast<char*>(scratch.data());
  uint32_t* sorted_ids = reinterpret_cast<uint32_t*>(base);
  int32_t* rows = reinterpret_cast<int32_t*>(base + array_bytes);
  int32_t* sorted_rows = reinterpret_cast<int32_t*>(base + 2 * array_bytes);
  void* cub_temp = base + cub_offset;
  float* partials = reinterpret_cast<float*>(base + partials_offset);

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
    // Threads: one per pack of a row, rounded up to whole warps (at least kChunkRows, which the
    // segment's length needs), at most 256. The segment sums are 256-byte aligned rows of d
    // floats, so d % kN == 0 aligns them as the packs need.
    static_assert(kChunkRows <= kWarpSize, "a block's threads cover a chunk");
    const bool vector = d % kN == 0 && aligned16(dout) &&
                        reinterpret_cast<uintptr_t>(dtable) % (sizeof(float) * kN) == 0;
    const int64_t packs = vector ? d / kN : d;
    const int threads = static_cast<int>(std::min<int64_t>(ceil_div(packs, kWarpSize) * kWarpSize,
                                                           kThreads));
    const unsigned blocks = static_cast<unsigned>(n), run_blocks = static_cast<unsigned>(chunks);
    if (vector) {
      embedding_backward_kernel<T, kN><<<blocks, threads, 0, s>>>(sorted_ids, sorted_rows, n, grad,
                                                                  d, table, partials);
      QARAC_CHECK_LAUNCH();
      embedding_backward_runs_kernel<kN><<<run_blocks, threads, 0, s>>>(sorted_ids, n, d, partials,
                                                                        table);
    } else {
      embedding_backward_kernel<T, 1><<<blocks, threads, 0, s>>>(sorted_ids, sorted_rows, n, grad,
                                                                 d, table, partials);
      QARAC_CHECK_LAUNCH();
      embedding_backward_runs_kernel<1><<<run_blocks, threads, 0, s>>>(sorted_ids, n, d, partials,
                                                                       table);
    }
    QARAC_CHECK_LAUNCH();
  });
}

}  // namespace qarac::cuda
