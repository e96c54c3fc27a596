// Row gather and scatter on CUDA: out[i] = src[index[i]] and out[index[i]] = src[i]. Pure data
// movement, memory-bound: each element is read once and written once. The grid-stride loop of
// launch_elementwise walks the m × dim elements on the side that is dense (the gather's output,
// the scatter's input) in 16-byte packs when dim is a multiple of the pack width and the rows
// are aligned, so a pack never straddles two rows; the indexed side is then accessed in packs
// too, its rows starting at multiples of dim. One i32 index load per pack, cached in L1 for the
// dim / N packs of a row.
#include "kernels/cuda/context.cuh"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/rows.cuh"

namespace qarac::cuda {
namespace {

// Element i of the dense side is (row i / dim, column i % dim); `scatter` says which side the
// index applies to.
template <class T, bool scatter>
struct RowsOp {
  const T* src;
  const int32_t* index;
  T* out;
  int64_t dim;
  template <int N>
  __device__ void apply(int64_t i) const {
    const int64_t row = i / dim, col = i % dim;
    const int64_t other = static_cast<int64_t>(index[row]) * dim + col;
    if constexpr (scatter)
      store_packed<N>(out + other, load_packed<N>(src + i));
    else
      store_packed<N>(out + i, load_packed<N>(src + other));
  }
};

template <bool scatter>
void launch_rows(const char* op, DType dtype, const void* src, const int32_t* index, int64_t m,
                 int64_t dim, void* out) {
  QARAC_CHECK(m >= 0 && dim >= 0, op, ": negative size (m ", m, ", dim ", dim, ")");
  dispatch_compute(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    const RowsOp<T, scatter> rows{static_cast<const T*>(src), index, static_cast<T*>(out), dim};
    const bool aligned = dim % kPack16<T> == 0 && aligned16(src) && aligned16(out);
    launch_elementwise<T>(m * dim, aligned, stream(), rows);
  });
}

}  // namespace

void gather_rows(DType dtype, const void* src, const int32_t* index, int64_t m, int64_t dim,
                 void* out) {
  launch_rows<false>("gather_rows", dtype, src, index, m, dim, out);
}

void scatter_rows(DType dtype, const void* src, const int32_t* index, int64_t m, int64_t dim,
                  void* out) {
  launch_rows<true>("scatter_rows", dtype, src, index, m, dim, out);
}

}  // namespace qarac::cuda
