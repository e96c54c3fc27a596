// Mean squared error of rows on CUDA, the loss of the question-answering objective (rows of
// d = 768 components) and of the consistency objective (rows of one cosine): with e = a − b,
//   loss = (1/k) Σ_j e_j²,   ∂loss/∂a_j = 2 e_j / k = −∂loss/∂b_j,
// the gradient scaled by the upstream dloss. Storage in X (f32 or bf16), arithmetic and losses
// in f32.
//
// One warp per row, as the row cosine (cosine.cu): lanes stride the row (coalesced scalar
// loads), Σ e² is reduced with the fixed tree of warp_sum (same bits on every run), and the
// gradient pass re-reads the row from L1/L2. There is one row per sample of a batch, so the op
// moves a few hundred KB at most: no vector accesses.
#include "kernels/cuda/context.cuh"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/mse.cuh"

namespace qarac::cuda {
namespace {

constexpr int kRowWarps = 8;  // rows per block, one per warp

template <class T>
__global__ void mse_kernel(const T* __restrict__ a, const T* __restrict__ b, int64_t rows,
                           int64_t k, float* __restrict__ losses, T* __restrict__ da,
                           T* __restrict__ db, float scale) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarpSize;
  if (r >= rows) return;  // the whole warp leaves: warp_sum has all its lanes
  const T* ar = a + r * k;
  const T* br = b + r * k;
  float sum = 0.f;
  for (int64_t j = threadIdx.x % kWarpSize; j < k; j += kWarpSize) {
    const float e = to_float(ar[j]) - to_float(br[j]);
    sum += e * e;
  }
  sum = warp_sum(sum);
  if (threadIdx.x % kWarpSize == 0) losses[r] = sum / static_cast<float>(k);
  if (!da && !db) return;
  for (int64_t j = threadIdx.x % kWarpSize; j < k; j += kWarpSize) {
    const float g = scale * (to_float(ar[j]) - to_float(br[j]));
    if (da) da[r * k + j] = from_float<T>(g);
    if (db) db[r * k + j] = from_float<T>(-g);
  }
}

}  // namespace

void mse_loss(DType dtype, const void* a, const void* b, int64_t rows, int64_t k, float* losses,
              void* da, void* db, double dloss) {
  QARAC_CHECK(rows >= 0 && k >= 1, "mse_loss: bad size (rows ", rows, ", k ", k, ")");
  QARAC_CHECK(ceil_div(rows, kRowWarps) <= 0x7fffffff, "mse_loss: ", rows,
              " rows exceed the launch grid");
  if (rows == 0) return;
  const unsigned blocks = static_cast<unsigned>(ceil_div(rows, kRowWarps));
  const float scale = static_cast<float>(dloss * 2.0 / static_cast<double>(k));
  dispatch_compute(dtype, "mse_loss", [&](auto tag) {
    using T = decltype(tag);
    mse_kernel<T><<<blocks, kRowWarps * kWarpSize, 0, stream()>>>(
        static_cast<const T*>(a), static_cast<const T*>(b), rows, k, losses, static_cast<T*>(da),
        static_cast<T*>(db), scale);
    QARAC_CHECK_LAUNCH();
  });
}

}  // namespace qarac::cuda
