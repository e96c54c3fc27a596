// CPU per-sequence sums and the global attention pooling head of the QARAC encoders (docs/design.md
// §2) over a padding-free batch: sequence b is rows [offsets[b], offsets[b+1]) of x [T, d].
#pragma once

#include <cstdint>

namespace qarac::cpu {

// out [batch, d] = Σ_{t in b} x_t; an empty sequence sums to 0.
template <class T>
void segment_sum(const T* x, const int32_t* offsets, int64_t batch, int64_t d, T* out);
// dx_t = dout_b for every t in b (+= with accumulate).
template <class T>
void segment_sum_backward(const T* dout, const int32_t* offsets, int64_t batch, int64_t d, T* dx,
                          bool accumulate);
// a_t = cos(l_t, g_b) (a [T]), v_b = Σ_{t in b} a_t x_t (v [batch, d]).
template <class T>
void pooling_forward(const T* x, const T* l, const T* g, const int32_t* offsets, int64_t batch,
                     int64_t d, T eps, T* v, T* a);
// dx += a_t dv_b; dl [T, d] and dg [batch, d] overwritten.
template <class T>
void pooling_backward(const T* dv, const T* x, const T* l, const T* g, const T* a,
                      const int32_t* offsets, int64_t batch, int64_t d, T eps, T* dx, T* dl, T* dg);

}  // namespace qarac::cpu
