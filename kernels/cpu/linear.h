// CPU dense layers: y = act(x · wᵀ + bias) and its gradients, through the OpenBLAS GEMMs with the
// bias and GELU applied as epilogues over the GEMM's output.
#pragma once

#include <cstdint>

namespace qarac::cpu {

// x [rows,in], w [out,in], bias [out], y [rows,out]. With gelu, y = gelu(x·wᵀ + bias) and, when
// pre is not null, pre [rows,out] receives x·wᵀ + bias. y and pre must not alias x.
template <class T>
void linear_forward(const T* x, const T* w, const T* bias, int64_t rows, int64_t in, int64_t out,
                    bool gelu, T* y, T* pre);
// dw [out,in] += dyᵀ · x and, when dbias is not null, dbias [out] += Σ_rows dy. When dx is not
// null: dx [rows,in] = dy · w (+= with accumulate_dx), or, when gelu_pre [rows,in] is not null,
// dx = (dy · w) ⊙ gelu'(gelu_pre) (x having been gelu(gelu_pre)). dx must not alias gelu_pre, dy
// or w.
template <class T>
void linear_backward(const T* x, const T* w, const T* dy, int64_t rows, int64_t in, int64_t out,
                     T* dx, T* dw, T* dbias, const T* gelu_pre, bool accumulate_dx);

}  // namespace qarac::cpu
