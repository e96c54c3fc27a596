// CPU GELU in its exact (erf) form and its derivative.
#pragma once

#include <cstdint>

namespace qarac::cpu {

template <class T>
void gelu_forward(const T* x, T* y, int64_t n);  // y may alias x
template <class T>
void gelu_backward(const T* x, const T* dy, T* dx, int64_t n);

}  // namespace qarac::cpu
