// Dropout on CUDA with the mask drawn from Philox (core/rng.h) exactly as the CPU reference draws
// it: column c of the row at position i of sequence b is kept when
// dropout_kept(key, ids[b], hidden_element(i, c), threshold), then scaled by dropout_keep_scale
// (computed in double and rounded to float, as the CPU's f32 path does), so both backends keep the
// same elements and, in f32, produce the same bits. The mask is a pure function of (key, sequence
// id, position, column): nothing is stored, the backward pass (the same op applied to dy)
// regenerates it, and a sequence draws the same mask at any row of any batch.
// A block takes one row at a time (grid-stride over rows): it finds the row's sequence by a
// binary search of the offsets (log2 B cached loads, shared by the row's cols elements), then its
// threads walk the columns in 16-byte packs. One Philox-4x32-10 evaluation (10 rounds of two
// 32x32->64 multiplies) decides a group of 8 columns: one per bf16 pack, one per two f32 packs.
#include "kernels/cuda/dropout.cuh"

#include <algorithm>

#include "kernels/cuda/context.cuh"
#include "kernels/cuda/device_utils.cuh"

namespace qarac::cuda {
namespace {

// N columns per access: N = 16 / sizeof(T) when cols is a multiple of N and x, y are 16-byte
// aligned (every row start then is), else 1. N divides the 8 columns of a draw and a pack starts
// at a multiple of N, so a pack lies inside one group and takes its decisions from one draw. x and
// y may alias: each element is read and written by one thread.
template <class T, int N>
__global__ void dropout_rows_kernel(const T* x, T* y, int64_t rows, int64_t cols, RowDropout d) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const RowMask m = row_mask(d, row);
    const T* in_row = x + row * cols;
    T* out_row = y + row * cols;
    for (int64_t c = static_cast<int64_t>(threadIdx.x) * N; c < cols;
         c += static_cast<int64_t>(blockDim.x) * N) {
      const uint32_t kept = kept_bits<N>(d, m, c);
      const Packed<T, N> in = load_packed<N>(in_row + c);
      Packed<T, N> out;
#pragma unroll
      for (int k = 0; k < N; ++k)
        out.v[k] = from_float<T>((kept >> k) & 1u ? to_float(in.v[k]) * d.keep_scale : 0.f);
      store_packed<N>(out_row + c, out);
    }
  }
}

}  // namespace

RowDropout row_dropout(const int32_t* offsets, const uint64_t* ids, int64_t batch, double p,
                       const RngKey& key) {
  QARAC_CHECK(p >= 0 && p < 1, "dropout: probability ", p, " is outside [0, 1)");
  const uint32_t threshold = dropout_threshold(p);
  return {offsets, ids, batch, key, threshold, static_cast<float>(dropout_keep_scale(threshold))};
}

void dropout(DType dtype, const void* x, void* y, int64_t rows, int64_t cols,
             const int32_t* offsets, const uint64_t* ids, int64_t batch, double p,
             const RngKey& key) {
  QARAC_CHECK(rows >= 0 && cols >= 0, "dropout: negative shape [", rows, ", ", cols, "]");
  const RowDropout d = row_dropout(offsets, ids, batch, p, key);
  if (rows == 0 || cols == 0) return;
  dispatch_compute(dtype, "dropout", [&](auto tag) {
    using T = decltype(tag);
    if (d.threshold == 0) {  // p = 0 (or below 2^-17, which keeps every element): a copy
      if (x != y)
        QARAC_CHECK_CUDA(cudaMemcpyAsync(y, x, static_cast<size_t>(rows * cols) * sizeof(T),
                                         cudaMemcpyDeviceToDevice, stream()));
      return;
    }
    QARAC_CHECK(batch > 0 && offsets != nullptr && ids != nullptr, "dropout: ", rows,
                " rows but no sequences (batch ", batch, ")");
    const T* xt = static_cast<const T*>(x);
    T* yt = static_cast<T*>(y);
    // One warp per 32 packs of a row, up to 256 threads: a 768-wide bf16 row is 96 packs.
    constexpr int N = kPack16<T>;
    const bool packed = cols % N == 0 && aligned16(x) && aligned16(y);
    const int64_t per_row = packed ? cols / N : cols;
    const int threads = static_cast<int>(std::min<int64_t>(256, ceil_div(per_row, kWarpSize) * kWarpSize));
    const unsigned blocks = grid_for(rows * threads, threads);
    if (packed)
      dropout_rows_kernel<T, N><<<blocks, threads, 0, stream()>>>(xt, yt, rows, cols, d);
    else
      dropout_rows_kernel<T, 1><<<blocks, threads, 0, stream()>>>(xt, yt, rows, cols, d);
    QARAC_CHECK_LAUNCH();
  });
}

}  // namespace qarac::cuda
