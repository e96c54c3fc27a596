// CPU LayerNorm. Per row of C elements, with x̂ = (x - μ) r and r = 1/sqrt(σ² + eps):
//   forward:  y = x̂ γ + β; μ and σ² in two passes (the mean first, then Σ (x - μ)²), which avoids
//             the cancellation of E[x²] - μ² when |μ| is large against σ; NaN where Σ (x - μ)²
//             overflows. A post-LN block's residual sum x = a + b is formed in the same pass over
//             the row, while it is in cache.
//   backward: with g = dy γ (the gradient reaching x̂),
//             dx = r (g - mean(g) - x̂ mean(g x̂)),   dγ += Σ_rows dy x̂,   dβ += Σ_rows dy.
//             The two means are the projections that μ and r, functions of the whole row, remove:
//             shifting x̂ by a constant or scaling it along x̂ does not change the output.
#include "kernels/cpu/layernorm.h"

#include <cmath>
#include <limits>

namespace qarac::cpu {

template <class T>
void layernorm_forward(const T* a, const T* b, const T* gamma, const T* beta, T eps, int64_t rows,
                       int64_t cols, T* sum, T* y, T* mean, T* rstd) {
  const T inv_cols = T(1) / static_cast<T>(cols);
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = a + r * cols;
    if (b) {
      const T* br = b + r * cols;
      T* sr = sum + r * cols;
      for (int64_t c = 0; c < cols; ++c) sr[c] = xr[c] + br[c];
      xr = sr;
    }
    T* yr = y + r * cols;
    T total = 0;
    for (int64_t c = 0; c < cols; ++c) total += xr[c];
    const T mu = total * inv_cols;
    T sq = 0;
    for (int64_t c = 0; c < cols; ++c) sq += (xr[c] - mu) * (xr[c] - mu);
    // A finite row whose squares overflow (f32 entries beyond about 1e19) would get r = 0 and y = β,
    // finite whatever the row held: NaN instead, as any other overflow gives, which the programs'
    // finite checks refuse (qarac-generate decoded such vectors to one text, unsaid).
    const T rs = std::isfinite(sq) ? T(1) / std::sqrt(sq * inv_cols + eps) : std::numeric_limits<T>::quiet_NaN();
    for (int64_t c = 0; c < cols; ++c) yr[c] = (xr[c] - mu) * rs * gamma[c] + beta[c];
    mean[r] = mu;
    rstd[r] = rs;
  }
}

template <class T>
void layernorm_backward(const T* dy, const T* x, const T* gamma, const T* mean, const T* rstd,
                        int64_t rows, int64_t cols, T* dx, T* dgamma, T* dbeta) {
  const T inv_cols = T(1) / static_cast<T>(cols);
  for (int64_t r = 0; r < rows; ++r) {
    const T* dyr = dy + r * cols;
    const T* xr = x + r * cols;
    T* dxr = dx + r * cols;
    const T mu = mean[r], rs = rstd[r];
    T sum_g = 0, sum_gx = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const T xhat = (xr[c] - mu) * rs;
      const T g = dyr[c] * gamma[c];
      sum_g += g;
      sum_gx += g * xhat;
      dgamma[c] += dyr[c] * xhat;
      dbeta[c] += dyr[c];
    }
    const T mean_g = sum_g * inv_cols, mean_gx = sum_gx * inv_cols;
    for (int64_t c = 0; c < cols; ++c) {
      const T xhat = (xr[c] - mu) * rs;
      dxr[c] = rs * (dyr[c] * gamma[c] - mean_g - xhat * mean_gx);
    }
  }
}

template void layernorm_forward<float>(const float*, const float*, const float*, const float*,
                                       float, int64_t, int64_t, float*, float*, float*, float*);
template void layernorm_forward<double>(const double*, const double*, const double*, const double*,
                                        double, int64_t, int64_t, double*, double*, double*,
                                        double*);
template void layernorm_backward<float>(const float*, const float*, const float*, const float*,
                                        const float*, int64_t, int64_t, float*, float*, float*);
template void layernorm_backward<double>(const double*, const double*, const double*, const double*,
                                         const double*, int64_t, int64_t, double*, double*,
                                         double*);

}  // namespace qarac::cpu
