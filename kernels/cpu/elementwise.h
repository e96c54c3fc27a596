// CPU elementwise ops: bias add and its gradient, sums and scaling, over contiguous arrays.
#pragma once

#include <cstdint>

namespace qarac::cpu {

template <class T>
void bias_add(T* y, const T* bias, int64_t rows, int64_t cols);  // y[r,c] += bias[c]
template <class T>
void bias_backward(const T* dy, T* dbias, int64_t rows, int64_t cols);  // dbias[c] += Σ_r dy[r,c]
template <class T>
void add(const T* a, const T* b, T* out, int64_t n);  // out may alias a or b
template <class T>
void accumulate(T* dst, const T* src, int64_t n);
template <class T>
void scale(T* x, T factor, int64_t n);

}  // namespace qarac::cpu
