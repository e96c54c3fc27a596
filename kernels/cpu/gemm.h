// CPU GEMMs through OpenBLAS. `gemm` is the BLAS-shaped entry point with leading dimensions, so
// other CPU ops (attention) can multiply sub-matrices of token-major activations in place;
// `gemm_batched` is the contiguous form behind ops::gemm and ops::gemm_batched.
#pragma once

#include <cstdint>

namespace qarac::cpu {

// c[m,n] = alpha * op(a) · op(b) + beta * c, row-major. op(a) is [m,k], op(b) is [k,n]; lda, ldb,
// ldc are the distances in elements between the starts of consecutive rows as stored.
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// `batch` independent products of contiguous matrices: a, b, c advance by m*k, k*n, m*n
// elements per batch index.
template <class T>
void gemm_batched(bool trans_a, bool trans_b, int64_t batch, int64_t m, int64_t n, int64_t k,
                  T alpha, const T* a, const T* b, T beta, T* c);

}  // namespace qarac::cpu
