// CPU dropout: one Philox draw per element (inverted dropout, so no rescaling at inference).
#include "kernels/cpu/dropout.h"

namespace qarac::cpu {

template <class T>
void dropout(const T* x, T* y, int64_t n, double p, const RngKey& key, uint64_t first_index) {
  if (p == 0) {
    if (y != x)
      for (int64_t i = 0; i < n; ++i) y[i] = x[i];
    return;
  }
  const float threshold = static_cast<float>(p);
  const T keep_scale = static_cast<T>(1.0 / (1.0 - p));
  for (int64_t i = 0; i < n; ++i)
    y[i] = dropout_keep(key, first_index + static_cast<uint64_t>(i), threshold) ? x[i] * keep_scale
                                                                                : T(0);
}

template void dropout<float>(const float*, float*, int64_t, double, const RngKey&, uint64_t);
template void dropout<double>(const double*, double*, int64_t, double, const RngKey&, uint64_t);

}  // namespace qarac::cpu
