// CPU row cosine similarity (the consistency objective compares two answer vectors with it): one
// pass over each pair of rows for x·y, ‖x‖², ‖y‖², and one more for the gradient, whose
// derivation is in cosine.h.
#include "kernels/cpu/cosine.h"

namespace qarac::cpu {

template <class T>
void cosine_forward(const T* a, const T* b, int64_t rows, int64_t d, T eps, T* out) {
  for (int64_t r = 0; r < rows; ++r) out[r] = cosine(a + r * d, b + r * d, d, eps).value;
}

template <class T>
void cosine_backward(const T* dout, const T* a, const T* b, int64_t rows, int64_t d, T eps, T* da,
                     T* db) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* ar = a + r * d;
    const T* br = b + r * d;
    const Cosine<T> c = cosine(ar, br, d, eps);
    const T g = dout[r];
    for (int64_t e = 0; e < d; ++e) {
      da[r * d + e] = g * (c.alpha * br[e] - c.beta_x * ar[e]);
      db[r * d + e] = g * (c.alpha * ar[e] - c.beta_y * br[e]);
    }
  }
}

template void cosine_forward<float>(const float*, const float*, int64_t, int64_t, float, float*);
template void cosine_forward<double>(const double*, const double*, int64_t, int64_t, double,
                                     double*);
template void cosine_backward<float>(const float*, const float*, const float*, int64_t, int64_t,
                                     float, float*, float*);
template void cosine_backward<double>(const double*, const double*, const double*, int64_t, int64_t,
                                      double, double*, double*);

}  // namespace qarac::cpu
