// CPU dense layers. With z = x wᵀ + b and y = act(z), row-major x [N,in], w [out,in]:
//   forward:  one GEMM (x · wᵀ, w read transposed where it lies), then the bias added to every
//             row and, for GELU, y = gelu(z) with z kept in `pre` for the backward pass;
//   backward: dy is the gradient of z (a GELU epilogue is differentiated by whoever consumes y:
//             the next layer through input_gelu_pre, below, or gelu_backward):
//             dw += dyᵀ x, dbias += Σ_rows dy, dx = dy w.
// A GELU *before* this layer (x = gelu(p), the FFN's second dense layer reading the first one's
// output) folds into dx: d loss/d p = (dy w) ⊙ gelu'(p), applied in place over dx, so the FFN's
// intermediate gradient needs no buffer of its own and no separate pass.
#include "kernels/cpu/linear.h"

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/gemm.h"

namespace qarac::cpu {

template <class T>
void linear_forward(const T* x, const T* w, const T* bias, int64_t rows, int64_t in, int64_t out,
                    bool gelu, T* y, T* pre) {
  T* z = gelu && pre ? pre : y;
  gemm(false, true, rows, out, in, T(1), x, in, w, in, T(0), z, out);
  bias_add(z, bias, rows, out);
  if (gelu) gelu_forward(z, y, rows * out);  // in place when no pre is kept
}

template <class T>
void linear_backward(const T* x, const T* w, const T* dy, int64_t rows, int64_t in, int64_t out,
                     T* dx, T* dw, T* dbias, const T* gelu_pre, bool accumulate_dx) {
  gemm(true, false, out, in, rows, T(1), dy, out, x, in, T(1), dw, in);
  if (dbias) bias_backward(dy, dbias, rows, out);
  if (!dx) return;
  gemm(false, false, rows, in, out, T(1), dy, out, w, in, accumulate_dx ? T(1) : T(0), dx, in);
  if (gelu_pre) gelu_backward(gelu_pre, dx, dx, rows * in);
}

template void linear_forward<float>(const float*, const float*, const float*, int64_t, int64_t,
                                    int64_t, bool, float*, float*);
template void linear_forward<double>(const double*, const double*, const double*, int64_t, int64_t,
                                     int64_t, bool, double*, double*);
template void linear_backward<float>(const float*, const float*, const float*, int64_t, int64_t,
                                     int64_t, float*, float*, float*, const float*, bool);
template void linear_backward<double>(const double*, const double*, const double*, int64_t, int64_t,
                                      int64_t, double*, double*, double*, const double*, bool);

}  // namespace qarac::cpu
