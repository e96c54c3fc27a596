// CPU mean squared error of rows. With e = a - b, loss = (1/k) Σ_j e_j², so
// ∂loss/∂a_j = 2 e_j / k and ∂loss/∂b_j = -2 e_j / k; the upstream scalar dloss multiplies both.
#include "kernels/cpu/mse.h"

namespace qarac::cpu {

template <class T>
void mse_loss(const T* a, const T* b, int64_t rows, int64_t k, T* losses, T* da, T* db, T dloss) {
  const T scale = dloss * T(2) / static_cast<T>(k);
  for (int64_t r = 0; r < rows; ++r) {
    const T* ar = a + r * k;
    const T* br = b + r * k;
    T sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += (ar[j] - br[j]) * (ar[j] - br[j]);
    losses[r] = sum / static_cast<T>(k);
    for (int64_t j = 0; j < k; ++j) {
      const T g = scale * (ar[j] - br[j]);
      if (da) da[r * k + j] = g;
      if (db) db[r * k + j] = -g;
    }
  }
}

template void mse_loss<float>(const float*, const float*, int64_t, int64_t, float*, float*, float*,
                              float);
template void mse_loss<double>(const double*, const double*, int64_t, int64_t, double*, double*,
                               double*, double);

}  // namespace qarac::cpu
