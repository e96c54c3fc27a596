// CPU GEMMs: row-major cblas_sgemm/cblas_dgemm (OpenBLAS threads them itself), with the
// empty products (BLAS rejects a zero leading dimension) handled here, and one-row products of a
// large b (decoding at batch 1) as a gemv.
#include "kernels/cpu/gemm.h"

#include <cblas.h>

#include <cstdlib>
#include <limits>

#include "core/error.h"

namespace qarac::cpu {
namespace {

void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, blasint m, blasint n, blasint k, float alpha,
               const float* a, blasint lda, const float* b, blasint ldb, float beta, float* c,
               blasint ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, blasint m, blasint n, blasint k,
               double alpha, const double* a, blasint lda, const double* b, blasint ldb,
               double beta, double* c, blasint ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void blas_gemv(CBLAS_TRANSPOSE t, blasint m, blasint n, float alpha, const float* a, blasint lda,
               const float* x, blasint incx, float beta, float* y) {
  cblas_sgemv(CblasRowMajor, t, m, n, alpha, a, lda, x, incx, beta, y, 1);
}

void blas_gemv(CBLAS_TRANSPOSE t, blasint m, blasint n, double alpha, const double* a,
               blasint lda, const double* x, blasint incx, double beta, double* y) {
  cblas_dgemv(CblasRowMajor, t, m, n, alpha, a, lda, x, incx, beta, y, 1);
}

// From this many elements of b (1 MiB in f32), a one-row product is a gemv: sgemm packs all of b
// first, and the LM head's b is 154 MB at RoBERTa-base, repacked for every token.
constexpr int64_t kGemvMinElements = int64_t{1} << 18;

blasint to_blasint(int64_t v) {
  QARAC_CHECK(v >= 0 && v <= std::numeric_limits<blasint>::max(), "gemm: size ", v,
              " does not fit the BLAS integer type");
  return static_cast<blasint>(v);
}

}  // namespace

std::string blas_core_for(const std::string& core, const CpuFeatures& cpu) {
  bool before_avx2 = false;  // OpenBLAS's cores without AVX2 kernels: its fallbacks for a CPU it does not know
  for (const char* old : {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Sandybridge", "Barcelona",
                          "Opteron", "Opteron_SSE3", "Bulldozer"})
    before_avx2 = before_avx2 || core == old;
  if (!before_avx2) return "";
  return cpu.avx512bf16 ? "Cooperlake" : cpu.avx512f ? "SkylakeX" : cpu.avx2_fma ? "Haswell" : "";
}

std::string blas_core_to_set() {
#if defined(__x86_64__)
  if (std::getenv("OPENBLAS_CORETYPE")) return "";
  __builtin_cpu_init();
  const CpuFeatures cpu{__builtin_cpu_supports("avx512bf16") != 0, __builtin_cpu_supports("avx512f") != 0,
                        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")};
  return blas_core_for(openblas_get_corename(), cpu);
#else
  // aarch64: a CPU that OpenBLAS 0.3.21 does not know (Grace's Neoverse V2) gets its generic
  // armv8 kernels, NEON still; which of its cores is faster there is unmeasured (docs/platforms.md).
  return "";
#endif
}

std::string blas_core() { return openblas_get_corename(); }

std::string blas_kernels() {
  const std::string own = blas_core_to_set();
  return std::string(openblas_get_corename()) + " kernels" +
         (own.empty() ? "" : "; this CPU's own: OPENBLAS_CORETYPE=" + own);
}

std::string blas_core_advice() {
  const std::string own = blas_core_to_set();
  if (own.empty()) return "";
  return std::string("OpenBLAS runs its ") + openblas_get_corename() +
         " kernels on this CPU (a model it does not know): set the environment variable OPENBLAS_CORETYPE=" + own +
         " for GEMMs several times faster (launch/train-local.sh and quickstart.sh set it)";
}

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // an empty sum: c = beta * c, where beta = 0 overwrites (NaNs included)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  // A one-row product of a large b as a gemv; of a small one as a GEMM, whose packing makes its
  // bits independent of where the operands lie: OpenBLAS's AVX-512 sgemv (SkylakeX, Cooperlake
  // kernels; Debian 13's OpenBLAS picks them on such CPUs, Debian 12's took this machine's CPU for
  // Prescott) rounds a dot product differently with its operands' alignment, so that a 1-token
  // sequence's attention score from a row-strided Q|K|V view differed from a copy's.
  if (m == 1 && n * k >= kGemvMinElements) {
    // c's row = alpha op(b)ᵀ a's row: b [n,k] as stored times it (trans_b), or b [k,n] transposed.
    blas_gemv(trans_b ? CblasNoTrans : CblasTrans, to_blasint(trans_b ? n : k),
              to_blasint(trans_b ? k : n), alpha, b, to_blasint(ldb), a,
              to_blasint(trans_a ? lda : 1), beta, c);
    return;
  }
  blas_gemm(trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, to_blasint(m),
            to_blasint(n), to_blasint(k), alpha, a, to_blasint(lda), b, to_blasint(ldb), beta, c,
            to_blasint(ldc));
}

template <class T>
void gemm_batched(bool trans_a, bool trans_b, int64_t batch, int64_t m, int64_t n, int64_t k,
                  T alpha, const T* a, const T* b, T beta, T* c) {
  const int64_t lda = trans_a ? m : k, ldb = trans_b ? k : n;
  for (int64_t z = 0; z < batch; ++z)
    gemm(trans_a, trans_b, m, n, k, alpha, a + z * m * k, lda, b + z * k * n, ldb, beta,
         c + z * m * n, n);
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t);
template void gemm_batched<float>(bool, bool, int64_t, int64_t, int64_t, int64_t, float,
                                  const float*, const float*, float, float*);
template void gemm_batched<double>(bool, bool, int64_t, int64_t, int64_t, int64_t, double,
                                   const double*, const double*, double, double*);

}  // namespace qarac::cpu
