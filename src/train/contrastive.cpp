// contrastive_loss (train/contrastive.h). With P the softmax of each row of S = (s_ij) and P' that
// of each column, ∂L/∂s_ij = G_ij = (P_ij + P'_ij − 2δ_ij) / 2N, and from
// ∂s_ij/∂q_i = −(2/τ)(q_i − a_j) = −∂s_ij/∂a_j:
//   ∂L/∂q_i = −(2/τ) [(Σ_j G_ij) q_i − (G A)_i],   ∂L/∂a_j = −(2/τ) [(Σ_i G_ij) a_j − (Gᵀ Q)_j].
// The three N×N×d products (Q Aᵀ for the distances |q_i|² + |a_j|² − 2 q_i·a_j, G A, Gᵀ Q) go
// through the CPU backend's GEMM: at N = 256, d = 768 a loop would take a tenth of a second a step.
// The expansion loses |q|²·ε to cancellation where q_i ≈ a_j, 1e-16 relative in f64.
#include "train/contrastive.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/tensor.h"
#include "kernels/ops.h"

namespace qarac {
namespace {

// log Σ_k exp(x_k) of n values `stride` apart, without overflow.
double log_sum_exp(const double* x, int64_t n, int64_t stride) {
  double top = -INFINITY;
  for (int64_t k = 0; k < n; ++k) top = std::max(top, x[k * stride]);
  double sum = 0;
  for (int64_t k = 0; k < n; ++k) sum += std::exp(x[k * stride] - top);
  return top + std::log(sum);
}

// |row|² of each row of [n, d] values.
std::vector<double> squared_norms(const std::vector<double>& rows, int64_t n, int64_t d) {
  std::vector<double> out(static_cast<size_t>(n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < d; ++k) out[i] += rows[i * d + k] * rows[i * d + k];
  return out;
}

}  // namespace

double contrastive_loss(const std::vector<double>& q, const std::vector<double>& a, int64_t n, int64_t d,
                        double temperature, std::vector<double>* grad_q, std::vector<double>* grad_a) {
  QARAC_CHECK(n >= 0 && d > 0 && static_cast<int64_t>(q.size()) == n * d && static_cast<int64_t>(a.size()) == n * d,
              "contrastive_loss: ", q.size(), " and ", a.size(), " values for ", n, " pairs of ", d);
  QARAC_CHECK(temperature > 0, "contrastive_loss: temperature ", temperature, " must be > 0");
  QARAC_CHECK((grad_q == nullptr) == (grad_a == nullptr), "contrastive_loss: both gradients or neither");
  if (grad_q) {
    grad_q->assign(q.size(), 0.0);
    grad_a->assign(a.size(), 0.0);
  }
  if (n == 0) return 0.0;
  const Tensor qt = Tensor::from_vector(q, {n, d}), at = Tensor::from_vector(a, {n, d});
  Tensor s = Tensor::zeros({n, n}, DType::f64);
  ops::gemm(qt, at, s, false, true);  // q_i · a_j
  const std::vector<double> qq = squared_norms(q, n, d), aa = squared_norms(a, n, d);
  double* sv = s.data<double>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) sv[i * n + j] = -(qq[i] + aa[j] - 2 * sv[i * n + j]) / temperature;

  std::vector<double> row_lse(static_cast<size_t>(n)), column_lse(static_cast<size_t>(n));
  double loss = 0;
  for (int64_t i = 0; i < n; ++i) {
    row_lse[i] = log_sum_exp(&sv[i * n], n, 1);
    column_lse[i] = log_sum_exp(&sv[i], n, n);
    loss += row_lse[i] + column_lse[i] - 2 * sv[i * n + i];
  }
  loss /= 2.0 * static_cast<double>(n);
  if (!grad_q) return loss;

  // G in place of S, and its row and column sums.
  std::vector<double> row_sum(static_cast<size_t>(n), 0.0), column_sum(static_cast<size_t>(n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double& g = sv[i * n + j];
      g = (std::exp(g - row_lse[i]) + std::exp(g - column_lse[j]) - (i == j ? 2.0 : 0.0)) / (2.0 * n);
      row_sum[i] += g;
      column_sum[j] += g;
    }
  Tensor ga = Tensor::zeros({n, d}, DType::f64), gtq = Tensor::zeros({n, d}, DType::f64);
  ops::gemm(s, at, ga, false, false);   // G A
  ops::gemm(s, qt, gtq, true, false);   // Gᵀ Q
  const double* gav = ga.data<double>();
  const double* gtqv = gtq.data<double>();
  const double scale = -2.0 / temperature;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < d; ++k) {
      (*grad_q)[i * d + k] = scale * (row_sum[i] * q[i * d + k] - gav[i * d + k]);
      (*grad_a)[i * d + k] = scale * (column_sum[i] * a[i * d + k] - gtqv[i * d + k]);
    }
  return loss;
}

}  // namespace qarac
