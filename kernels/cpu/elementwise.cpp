// CPU elementwise ops. Every loop walks rows in memory order so the compiler vectorises it; the
// bias gradient sums row after row into dbias rather than column by column down the matrix.
#include "kernels/cpu/elementwise.h"

namespace qarac::cpu {

template <class T>
void bias_add(T* y, const T* bias, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    T* row = y + r * cols;
    for (int64_t c = 0; c < cols; ++c) row[c] += bias[c];
  }
}

template <class T>
void bias_backward(const T* dy, T* dbias, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = dy + r * cols;
    for (int64_t c = 0; c < cols; ++c) dbias[c] += row[c];
  }
}

template <class T>
void add(const T* a, const T* b, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <class T>
void accumulate(T* dst, const T* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

template <class T>
void scale(T* x, T factor, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] *= factor;
}

template void bias_add<float>(float*, const float*, int64_t, int64_t);
template void bias_add<double>(double*, const double*, int64_t, int64_t);
template void bias_backward<float>(const float*, float*, int64_t, int64_t);
template void bias_backward<double>(const double*, double*, int64_t, int64_t);
template void add<float>(const float*, const float*, float*, int64_t);
template void add<double>(const double*, const double*, double*, int64_t);
template void accumulate<float>(float*, const float*, int64_t);
template void accumulate<double>(double*, const double*, int64_t);
template void scale<float>(float*, float, int64_t);
template void scale<double>(double*, double, int64_t);

}  // namespace qarac::cpu
