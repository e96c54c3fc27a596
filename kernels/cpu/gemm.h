// CPU GEMMs through OpenBLAS. `gemm` is the BLAS-shaped entry point with leading dimensions, so
// other CPU ops (attention) can multiply sub-matrices of token-major activations in place;
// `gemm_batched` is the contiguous form behind ops::gemm and ops::gemm_batched.
#pragma once

#include <cstdint>
#include <string>

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

// What to do when OpenBLAS runs kernels older than this CPU: its DYNAMIC_ARCH builds take a CPU
// model they do not know (0.3.21 a cloud VM's "Intel Xeon Processor" with AVX-512) for a
// Prescott and run SSE3 kernels, 4-5x slower GEMMs than its own. A line naming the
// OPENBLAS_CORETYPE to set, which OpenBLAS reads when it loads; "" when its kernels use AVX2 or
// OPENBLAS_CORETYPE is set already.
std::string blas_core_advice();
// That OPENBLAS_CORETYPE alone ("" as above).
std::string blas_core_to_set();
// The OpenBLAS core whose kernels run ("Haswell"): ranks on CPUs it serves with different ones
// compute other last bits for the same products.
std::string blas_core();
// What --version says of OpenBLAS: its kernels, and the OPENBLAS_CORETYPE to set if any
// ("Prescott kernels; this CPU's own: OPENBLAS_CORETYPE=Cooperlake"), which the launch scripts read.
std::string blas_kernels();

// The x86 features that choose an OpenBLAS core.
struct CpuFeatures {
  bool avx512bf16 = false, avx512f = false, avx2_fma = false;
};
// The OPENBLAS_CORETYPE for a CPU of `cpu`'s features on which OpenBLAS runs `core`'s kernels: ""
// when `core` has AVX2 kernels already, or the CPU has none of those features.
std::string blas_core_for(const std::string& core, const CpuFeatures& cpu);

}  // namespace qarac::cpu
