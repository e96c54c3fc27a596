// CPU GELU, the erf form RoBERTa uses (not the tanh approximation):
//   gelu(x)  = x Φ(x),            Φ(x) = ½ (1 + erf(x / √2))   (standard normal CDF)
//   gelu'(x) = Φ(x) + x φ(x),     φ(x) = exp(-x² / 2) / √(2π)  (standard normal density)
// f64 (the reference the f32 paths are held to) takes libm's erf and exp. f32 takes erf and exp2
// as polynomials, so that its loops vectorise: libm's erff and expf are calls, an element at a
// time, and made GELU a quarter of the quickstart's pre-training. kernels/cpu/gelu_fit.py makes
// the coefficients and measures the erf within 2.5 ulp (CUDA's erff, on the GPU: 2).
#include "kernels/cpu/gelu.h"

#include <cmath>
#include <cstring>

namespace qarac::cpu {
namespace {
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

// gelu_fit.py's: erf(x) = x P(x²) below 1; ±(1 - 2^Q(|x| - 2.5)) from 1 to 4; 2^f on [-½, ½].
constexpr float kErfSmall[] = {1.128379107e+00f,  -3.761262596e-01f, 1.128358543e-01f,
                               -2.685381286e-02f, 5.188329145e-03f,  -8.010203601e-04f,
                               7.853892021e-05f};
constexpr float kLog2Erfc[] = {-1.126285362e+01f, -7.722285748e+00f, -1.361750603e+00f,
                               -1.566548645e-02f, 3.123552306e-03f,  -6.061816821e-04f,
                               1.117438514e-04f,  -1.919030728e-05f, 2.308046078e-06f};
constexpr float kExp2[] = {1.000000000e+00f, 6.931471825e-01f, 2.402264625e-01f,
                           5.550328642e-02f, 9.618489072e-03f, 1.339993090e-03f,
                           1.534581243e-04f};
constexpr float kErfSmallEnd = 1.f, kErfOneFrom = 4.f, kErfCentre = 2.5f;
constexpr float kLog2E = 1.44269504088896340736f;

// c[K] + u (c[K+1] + u (...)), unrolled at compile time: a loop here keeps the callers' loops
// from vectorising.
template <size_t K = 0, size_t N>
inline float horner(const float (&c)[N], float u) {
  if constexpr (K + 1 == N) {
    return c[K];
  } else {
    return horner<K + 1>(c, u) * u + c[K];
  }
}

// 2^t for t <= 0; 0 below about 2^-126 (and for a NaN t, which only φ of a NaN x gives: x φ(x)
// stays NaN through x). Branch-free, so that loops calling it vectorise.
inline float exp2_nonpositive(float t) {
  t = t > -127.f ? t : -127.f;                     // 2^n below stays a normal float or is 0
  const float n = (t + 12582912.f) - 12582912.f;  // round to nearest: 1.5·2^23 drops the fraction
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // n = -127: 0, so 2^t = 0
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return horner(kExp2, t - n) * scale;
}

// Both branches are computed and one is selected, so that loops calling it vectorise. |x| is
// clamped to 4 for the outer branch, so that it stays finite for an infinite or NaN x; a NaN x
// takes the inner branch, x P(x²): NaN.
inline float erf_f32(float x) {
  const float a = std::fabs(x);
  const float inner = x * horner(kErfSmall, a * a);
  const float u = (a < kErfOneFrom ? a : kErfOneFrom) - kErfCentre;
  const float outer = std::copysign(1.f - exp2_nonpositive(horner(kLog2Erfc, u)), x);
  return a >= kErfSmallEnd ? outer : inner;
}

inline double normal_cdf(double v) { return 0.5 * (1 + std::erf(v * kInvSqrt2)); }
inline float normal_cdf(float v) { return 0.5f * (1.f + erf_f32(v * float(kInvSqrt2))); }
inline double normal_pdf(double v) { return kInvSqrt2Pi * std::exp(-0.5 * v * v); }
inline float normal_pdf(float v) {
  return float(kInvSqrt2Pi) * exp2_nonpositive(v * v * (-0.5f * kLog2E));
}

// The loops themselves, inlined into each entry point below so that each is compiled for its
// own instruction set.
template <class T>
inline void forward_loop(const T* x, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * normal_cdf(x[i]);
}

template <class T>
inline void backward_loop(const T* x, const T* dy, T* dx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    dx[i] = dy[i] * (normal_cdf(v) + v * normal_pdf(v));
  }
}
}  // namespace

// x86-64's baseline gives the f32 loops 4 lanes; clones for AVX-512 and AVX2, picked at load time
// by what the CPU has, give them 16 and 8. They run the same operations in the same order, and
// kernels/CMakeLists.txt forbids FMA contraction (AVX-512 brings FMA), so their bits are the
// baseline's. The clones are plain functions, not the template's specialisations: clang 19
// (Debian 13's) gives target_clones on an explicit specialisation a resolver that is a trap
// instruction, so that every program linking this file died at load (SIGILL).
#if defined(__x86_64__) && defined(__GNUC__)
#define QARAC_F32_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define QARAC_F32_CLONES
#endif

namespace {
QARAC_F32_CLONES void forward_f32(const float* x, float* y, int64_t n) { forward_loop(x, y, n); }
QARAC_F32_CLONES void backward_f32(const float* x, const float* dy, float* dx, int64_t n) {
  backward_loop(x, dy, dx, n);
}
}  // namespace

template <>
void gelu_forward<float>(const float* x, float* y, int64_t n) {
  forward_f32(x, y, n);
}
template <>
void gelu_forward<double>(const double* x, double* y, int64_t n) {
  forward_loop(x, y, n);
}
template <>
void gelu_backward<float>(const float* x, const float* dy, float* dx, int64_t n) {
  backward_f32(x, dy, dx, n);
}
template <>
void gelu_backward<double>(const double* x, const double* dy, double* dx, int64_t n) {
  backward_loop(x, dy, dx, n);
}

}  // namespace qarac::cpu
