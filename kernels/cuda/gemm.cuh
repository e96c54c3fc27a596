// GEMMs and dense layers through cuBLASLt: bf16 (or f32) inputs, f32 accumulation, bias and GELU
// epilogues. Row-major semantics as ops::gemm / ops::linear_*; pointers are device pointers.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qarac::cuda {

// c = alpha op(a) op(b) + beta c for `batch` contiguous products (strides m*k, k*n, m*n).
// a, b in `ab`; c in `c_dtype` (= ab, or f32 with bf16 inputs). f32 inputs compute in true f32
// (no TF32), so the f32 mode can be checked tightly against the CPU reference.
void gemm(DType ab, DType c_dtype, bool trans_a, bool trans_b, int64_t batch, int64_t m, int64_t n,
          int64_t k, double alpha, const void* a, const void* b, double beta, void* c);

// y [rows,out] = act(x [rows,in] · wᵀ + bias); with gelu, pre receives x · wᵀ + bias.
void linear_forward(DType dtype, int64_t rows, int64_t in, int64_t out, const void* x,
                    const void* w, const void* bias, void* y, bool gelu, void* pre);
// dx [rows,in] = dy · w (+= with accumulate); if gelu_pre: dx = (dy · w) ⊙ gelu'(gelu_pre), and
// with gelu_dbias [in] (f32) also gelu_dbias += Σ_rows dx in the same pass.
void linear_backward_input(DType dtype, int64_t rows, int64_t in, int64_t out, const void* dy,
                           const void* w, void* dx, const void* gelu_pre, bool accumulate,
                           float* gelu_dbias = nullptr);
// dw [out,in] (grad_dtype) += dyᵀ · x and, if dbias, dbias [out] (grad_dtype) += Σ_rows dy.
void linear_backward_weight(DType dtype, DType grad_dtype, int64_t rows, int64_t in, int64_t out,
                            const void* x, const void* dy, void* dw, void* dbias);

}  // namespace qarac::cuda
