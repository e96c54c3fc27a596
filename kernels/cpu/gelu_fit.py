#!/usr/bin/env python3
"""The polynomial coefficients of kernels/cpu/gelu.cpp's f32 erf and exp2, and their error.

Near-minimax fits (least squares on Chebyshev nodes, reweighted by Lawson's iteration), made in
f64 against mpmath's erf, then rounded to f32; the check evaluates the f32 function as gelu.cpp
does (each operation rounded to f32, Horner's scheme, no FMA) at 360,000 points of [0, 4.5] and
prints its largest error in units of the last place of f32. Needs numpy and mpmath.

  erf(x) = x P(x²)                    for |x| < 1          P of degree 6
  erf(x) = ±(1 - 2^Q(|x| - 2.5))       for 1 <= |x| < 4     Q of degree 8 (log2 erfc, smooth)
  erf(x) = ±1                          for |x| >= 4         (erfc(4) = 1.5e-8, under half an ulp of 1)
  2^f                                  for |f| <= 1/2       degree 6, after 2^t = 2^n 2^(t - n)
"""
import math

import mpmath
import numpy as np

mpmath.mp.dps = 40
F32 = np.float32
SMALL_END, LARGE_END, CENTRE = 1.0, 4.0, 2.5


def chebyshev_nodes(lo, hi, n):
    k = np.arange(n)
    return (lo + hi) / 2 + (hi - lo) / 2 * np.cos((2 * k + 1) * np.pi / (2 * n))


def fit(xs, ys, degree, relative):
    """Coefficients c[0..degree] of the near-minimax polynomial, and its largest error."""
    basis = np.vander(xs, degree + 1, increasing=True)
    scale = np.abs(ys) if relative else np.ones_like(ys)
    weights = np.ones_like(xs)
    for _ in range(300):  # Lawson: weight the points by their error until it levels out
        root = np.sqrt(weights)
        c = np.linalg.lstsq(basis * (root / scale)[:, None], ys * root / scale, rcond=None)[0]
        error = np.abs(basis @ c - ys) / scale
        weights = weights * error
        weights /= weights.sum()
    return c.astype(F32), error.max()


def horner(c, u):
    r = np.full_like(u, c[-1])
    for k in range(len(c) - 2, -1, -1):
        r = (r * u).astype(F32) + c[k]
    return r.astype(F32)


def main():
    x = chebyshev_nodes(0, SMALL_END, 400)
    p, p_error = fit(x * x, np.array([float(mpmath.erf(v) / v) for v in x]), 6, True)
    x = chebyshev_nodes(SMALL_END, LARGE_END, 600)
    q, q_error = fit(x - CENTRE, np.array([float(mpmath.log(mpmath.erfc(v), 2)) for v in x]), 8,
                     False)
    f = chebyshev_nodes(-0.5, 0.5, 400)
    e, e_error = fit(f, 2.0 ** f, 6, True)
    print(f"fit errors: P {p_error:.2e} (relative), Q {q_error:.2e} (absolute), 2^f {e_error:.2e} "
          "(relative)")

    def exp2(t):
        n = ((t + F32(12582912.0)) - F32(12582912.0)).astype(F32)
        scale = ((n.astype(np.int32) + 127) << 23).astype(np.int32).view(F32)
        return (horner(e, (t - n).astype(F32)) * scale).astype(F32)

    def erf(x):
        a = np.abs(x)
        small = (x * horner(p, (a * a).astype(F32))).astype(F32)
        u = (np.minimum(a, F32(LARGE_END)) - F32(CENTRE)).astype(F32)
        large = np.copysign((F32(1) - exp2(horner(q, u))).astype(F32), x)
        return np.where(a >= F32(SMALL_END), large, small)

    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(0, 4.5, 300000), rng.uniform(0, 1e-3, 20000),
                        np.linspace(0.999, 1.001, 20001), np.linspace(3.99, 4.01, 20001)])
    x = x.astype(F32)
    exact = np.array([float(mpmath.erf(float(v))) for v in x])
    ulps = np.abs(erf(x).astype(np.float64) - exact) / np.spacing(np.abs(exact).astype(F32))
    print(f"f32 erf: largest error {ulps.max():.2f} ulp (at {x[ulps.argmax()]:.7g}), mean "
          f"{ulps.mean():.2f}")
    for name, c in (("kErfSmall", p), ("kLog2Erfc", q), ("kExp2", e)):
        print(f"constexpr float {name}[] = {{" + ", ".join(f"{float(v):.9e}f" for v in c) + "};")
    assert math.isclose(float(p[0]), 2 / math.sqrt(math.pi), rel_tol=1e-6)


if __name__ == "__main__":
    main()
