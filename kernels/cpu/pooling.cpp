// CPU pooling over the sequences of a padding-free batch. The encoders' global attention pooling
// head weighs each token by the cosine of its local projection l_t = Wl x_t with the sequence's
// global projection g_b = Wg Σ_t x_t (the GEMMs and the sum are separate ops):
//   forward:  a_t = cos(l_t, g_b),  v_b = Σ_{t in b} a_t x_t   (no softmax: a_t ∈ [-1, 1]);
//   backward: given dv_b, the product rule splits v_b's dependence on x_t and a_t:
//             dx_t += a_t dv_b,   da_t = dv_b · x_t,
//             dl_t = da_t ∂cos/∂l_t = da_t (α_t g_b - β_l,t l_t),
//             dg_b = Σ_{t in b} da_t ∂cos/∂g_b = Σ_{t in b} da_t (α_t l_t - β_g,t g_b),
//             with α, β of cos(l_t, g_b) as derived in cosine.h (α = 1/(‖l‖‖g‖), β_l = a/‖l‖²,
//             β_g = a/‖g‖², or α = 1/eps and β = 0 where ‖l‖‖g‖ <= eps).
// dx accumulates because x also reaches the loss through l and g (the pooling matrices).
// ‖g_b‖² is taken once per sequence; every other quantity once per token.
#include "kernels/cpu/pooling.h"

#include <algorithm>

#include "kernels/cpu/cosine.h"

namespace qarac::cpu {
namespace {

template <class T>
T dot(const T* x, const T* y, int64_t d) {
  T s = 0;
  for (int64_t e = 0; e < d; ++e) s += x[e] * y[e];
  return s;
}

}  // namespace

template <class T>
void segment_sum(const T* x, const int32_t* offsets, int64_t batch, int64_t d, T* out) {
  for (int64_t b = 0; b < batch; ++b) {
    T* o = out + b * d;
    std::fill(o, o + d, T(0));
    for (int64_t t = offsets[b]; t < offsets[b + 1]; ++t)
      for (int64_t e = 0; e < d; ++e) o[e] += x[t * d + e];
  }
}

template <class T>
void segment_sum_backward(const T* dout, const int32_t* offsets, int64_t batch, int64_t d, T* dx,
                          bool accumulate) {
  for (int64_t b = 0; b < batch; ++b) {
    const T* g = dout + b * d;
    for (int64_t t = offsets[b]; t < offsets[b + 1]; ++t)
      for (int64_t e = 0; e < d; ++e) dx[t * d + e] = accumulate ? dx[t * d + e] + g[e] : g[e];
  }
}

template <class T>
void pooling_forward(const T* x, const T* l, const T* g, const int32_t* offsets, int64_t batch,
                     int64_t d, T eps, T* v, T* a) {
  for (int64_t b = 0; b < batch; ++b) {
    const T* gb = g + b * d;
    const T sq_g = dot(gb, gb, d);
    T* vb = v + b * d;
    std::fill(vb, vb + d, T(0));
    for (int64_t t = offsets[b]; t < offsets[b + 1]; ++t) {
      const T* lt = l + t * d;
      const T* xt = x + t * d;
      a[t] = cosine(dot(lt, gb, d), dot(lt, lt, d), sq_g, eps).value;
      for (int64_t e = 0; e < d; ++e) vb[e] += a[t] * xt[e];
    }
  }
}

template <class T>
void pooling_backward(const T* dv, const T* x, const T* l, const T* g, const T* a,
                      const int32_t* offsets, int64_t batch, int64_t d, T eps, T* dx, T* dl,
                      T* dg) {
  for (int64_t b = 0; b < batch; ++b) {
    const T* gb = g + b * d;
    const T* dvb = dv + b * d;
    const T sq_g = dot(gb, gb, d);
    T* dgb = dg + b * d;
    std::fill(dgb, dgb + d, T(0));
    for (int64_t t = offsets[b]; t < offsets[b + 1]; ++t) {
      const T* lt = l + t * d;
      const T* xt = x + t * d;
      T* dxt = dx + t * d;
      T* dlt = dl + t * d;
      const T da = dot(dvb, xt, d);
      const Cosine<T> c = cosine(dot(lt, gb, d), dot(lt, lt, d), sq_g, eps);
      for (int64_t e = 0; e < d; ++e) {
        dxt[e] += a[t] * dvb[e];
        dlt[e] = da * (c.alpha * gb[e] - c.beta_x * lt[e]);
        dgb[e] += da * (c.alpha * lt[e] - c.beta_y * gb[e]);
      }
    }
  }
}

template void segment_sum<float>(const float*, const int32_t*, int64_t, int64_t, float*);
template void segment_sum<double>(const double*, const int32_t*, int64_t, int64_t, double*);
template void segment_sum_backward<float>(const float*, const int32_t*, int64_t, int64_t, float*,
                                          bool);
template void segment_sum_backward<double>(const double*, const int32_t*, int64_t, int64_t, double*,
                                           bool);
template void pooling_forward<float>(const float*, const float*, const float*, const int32_t*,
                                     int64_t, int64_t, float, float*, float*);
template void pooling_forward<double>(const double*, const double*, const double*, const int32_t*,
                                      int64_t, int64_t, double, double*, double*);
template void pooling_backward<float>(const float*, const float*, const float*, const float*,
                                      const float*, const int32_t*, int64_t, int64_t, float, float*,
                                      float*, float*);
template void pooling_backward<double>(const double*, const double*, const double*, const double*,
                                       const double*, const int32_t*, int64_t, int64_t, double,
                                       double*, double*, double*);

}  // namespace qarac::cpu
