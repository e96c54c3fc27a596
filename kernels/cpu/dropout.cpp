// CPU dropout: one Philox draw per 8 elements (core/rng.h); inverted dropout, so no rescaling at
// inference.
#include "kernels/cpu/dropout.h"

namespace qarac::cpu {

template <class T>
void dropout(const T* x, T* y, int64_t n, double p, const RngKey& key, uint64_t id,
             uint64_t first_element) {
  const uint32_t threshold = dropout_threshold(p);
  if (threshold == 0) {  // p = 0, or below 2^-17: every 16-bit draw keeps its element
    if (y != x)
      for (int64_t i = 0; i < n; ++i) y[i] = x[i];
    return;
  }
  const T keep_scale = static_cast<T>(dropout_keep_scale(threshold));
  constexpr uint64_t kLow = kDropoutGroup - 1;
  uint32_t mask = 0;  // the decisions of element e's group, bit k for element (e & ~kLow) + k
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t e = first_element + static_cast<uint64_t>(i);
    if (i == 0 || (e & kLow) == 0) mask = dropout_group_mask(key, id, e & ~kLow, threshold);
    y[i] = (mask >> (e & kLow)) & 1u ? x[i] * keep_scale : T(0);
  }
}

template <class T>
void dropout_rows(const T* x, T* y, const int32_t* offsets, const uint64_t* ids, int64_t batch,
                  int64_t cols, double p, const RngKey& key) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = offsets[b]; t < offsets[b + 1]; ++t)
      dropout(x + t * cols, y + t * cols, cols, p, key, ids[b],
              hidden_element(static_cast<uint64_t>(t - offsets[b]), 0));
}

template void dropout<float>(const float*, float*, int64_t, double, const RngKey&, uint64_t,
                             uint64_t);
template void dropout<double>(const double*, double*, int64_t, double, const RngKey&, uint64_t,
                              uint64_t);
template void dropout_rows<float>(const float*, float*, const int32_t*, const uint64_t*, int64_t,
                                  int64_t, double, const RngKey&);
template void dropout_rows<double>(const double*, double*, const int32_t*, const uint64_t*,
                                   int64_t, int64_t, double, const RngKey&);

}  // namespace qarac::cpu
