// contrastive_loss (train/contrastive.h). With P the softmax of each row of S = (s_ij) and P' that
// of each column, ∂L/∂s_ij = G_ij = (P_ij + P'_ij − 2δ_ij) / 2N, and from
// ∂s_ij/∂q_i = −(2/τ)(q_i − a_j) = −∂s_ij/∂a_j:
//   ∂L/∂q_i = −(2/τ) Σ_j G_ij (q_i − a_j),   ∂L/∂a_j = (2/τ) Σ_i G_ij (q_i − a_j).
#include "train/contrastive.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

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

}  // namespace

double contrastive_loss(const std::vector<double>& q, const std::vector<double>& a, int64_t n, int64_t d,
                        double temperature, std::vector<double>* grad_q, std::vector<double>* grad_a) {
  QARAC_CHECK(n >= 0 && d > 0 && static_cast<int64_t>(q.size()) == n * d && static_cast<int64_t>(a.size()) == n * d,
              "contrastive_loss: ", q.size(), " and ", a.size(), " values for ", n, " pairs of ", d);
  QARAC_CHECK(temperature > 0, "contrastive_loss: temperature ", temperature, " must be > 0");
  QARAC_CHECK((grad_q == nullptr) == (grad_a == nullptr), "contrastive_loss: both gradients or neither");
  const size_t nn = static_cast<size_t>(n);
  std::vector<double> s(nn * nn);  // s[i n + j] = −|q_i − a_j|² / τ
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double distance = 0;
      for (int64_t k = 0; k < d; ++k) {
        const double diff = q[i * d + k] - a[j * d + k];
        distance += diff * diff;
      }
      s[i * n + j] = -distance / temperature;
    }
  std::vector<double> row_lse(nn), column_lse(nn);
  double loss = 0;
  for (int64_t i = 0; i < n; ++i) {
    row_lse[i] = log_sum_exp(&s[i * n], n, 1);
    column_lse[i] = log_sum_exp(&s[i], n, n);
    loss += row_lse[i] + column_lse[i] - 2 * s[i * n + i];
  }
  if (n > 0) loss /= 2.0 * static_cast<double>(n);
  if (!grad_q) return loss;

  grad_q->assign(nn * d, 0.0);
  grad_a->assign(nn * d, 0.0);
  const double scale = 2.0 / temperature / (2.0 * static_cast<double>(n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      // G_ij · 2N: the row's and the column's softmax, less the targets.
      const double g = std::exp(s[i * n + j] - row_lse[i]) + std::exp(s[i * n + j] - column_lse[j]) -
                       (i == j ? 2.0 : 0.0);
      for (int64_t k = 0; k < d; ++k) {
        const double diff = q[i * d + k] - a[j * d + k];
        (*grad_q)[i * d + k] -= scale * g * diff;
        (*grad_a)[j * d + k] += scale * g * diff;
      }
    }
  return loss;
}

}  // namespace qarac
