// The contrastive question_answering loss (train/contrastive.h) on its own: a value worked out by
// hand, its gradients against central differences in f64, and the properties the distributed
// trainer relies on (the same loss whatever the order of the pairs; no overflow far apart).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "train/contrastive.h"

using qarac::contrastive_loss;

namespace {

std::vector<double> random_vectors(std::mt19937_64& gen, int64_t n, int64_t d, double scale) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> v(static_cast<size_t>(n * d));
  for (double& x : v) x = normal(gen);
  return v;
}

}  // namespace

// Two pairs in one dimension, q = a = (0, 1), τ = 1: s = [[0, −1], [−1, 0]], every row and column
// gives log(1 + e⁻¹) − 0, so L = log(1 + e⁻¹).
TEST(ContrastiveLoss, MatchesAValueWorkedOutByHand) {
  EXPECT_NEAR(contrastive_loss({0, 1}, {0, 1}, 2, 1, 1.0), std::log1p(std::exp(-1.0)), 1e-15);
  // τ = 0.5 doubles every logit: log(1 + e⁻²).
  EXPECT_NEAR(contrastive_loss({0, 1}, {0, 1}, 2, 1, 0.5), std::log1p(std::exp(-2.0)), 1e-15);
  // One pair has no negative: its softmax is 1 whatever the vectors.
  std::vector<double> gq, ga;
  EXPECT_EQ(contrastive_loss({1, 2}, {3, -4}, 1, 2, 1.0, &gq, &ga), 0.0);
  EXPECT_EQ(gq, (std::vector<double>{0, 0}));
  EXPECT_EQ(ga, (std::vector<double>{0, 0}));
  EXPECT_EQ(contrastive_loss({}, {}, 0, 3, 1.0), 0.0);
}

// Central differences, h = 1e-6 on O(1) values: truncation O(h²) ≈ 1e-12, rounding ≈ ε/h ≈ 1e-10;
// the analytic gradient must agree to 1e-8.
TEST(ContrastiveLoss, GradientsMatchFiniteDifferences) {
  std::mt19937_64 gen(7);
  const int64_t n = 5, d = 3;
  for (double temperature : {0.3, 1.0, 4.0}) {
    SCOPED_TRACE(temperature);
    std::vector<double> q = random_vectors(gen, n, d, 1.0), a = random_vectors(gen, n, d, 1.0);
    std::vector<double> gq, ga;
    contrastive_loss(q, a, n, d, temperature, &gq, &ga);
    const double h = 1e-6;
    for (std::vector<double>* x : {&q, &a}) {
      const std::vector<double>& analytic = x == &q ? gq : ga;
      for (size_t i = 0; i < x->size(); ++i) {
        const double saved = (*x)[i];
        (*x)[i] = saved + h;
        const double up = contrastive_loss(q, a, n, d, temperature);
        (*x)[i] = saved - h;
        const double down = contrastive_loss(q, a, n, d, temperature);
        (*x)[i] = saved;
        EXPECT_NEAR(analytic[i], (up - down) / (2 * h), 1e-8) << (x == &q ? "q" : "a") << i;
      }
    }
  }
}

// The ranks' rows arrive in rank order, which depends on the plan: permuting the pairs permutes
// the gradients and leaves the loss, to rounding.
TEST(ContrastiveLoss, TheOrderOfThePairsDoesNotMatter) {
  std::mt19937_64 gen(3);
  const int64_t n = 6, d = 4;
  const std::vector<double> q = random_vectors(gen, n, d, 1.0), a = random_vectors(gen, n, d, 1.0);
  std::vector<double> gq, ga;
  const double loss = contrastive_loss(q, a, n, d, 0.7, &gq, &ga);
  const std::vector<int64_t> order = {3, 0, 5, 1, 4, 2};
  std::vector<double> pq, pa;
  for (int64_t i : order) {
    pq.insert(pq.end(), q.begin() + i * d, q.begin() + (i + 1) * d);
    pa.insert(pa.end(), a.begin() + i * d, a.begin() + (i + 1) * d);
  }
  std::vector<double> pgq, pga;
  EXPECT_NEAR(contrastive_loss(pq, pa, n, d, 0.7, &pgq, &pga), loss, 1e-14 * loss);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t k = 0; k < d; ++k) {
      EXPECT_NEAR(pgq[r * d + k], gq[order[r] * d + k], 1e-14);
      EXPECT_NEAR(pga[r * d + k], ga[order[r] * d + k], 1e-14);
    }
}

// Vectors far apart give logits of −10⁶ and beyond: the log-sum-exp keeps the loss finite and
// exact (the positives nearest: L ≈ 0), where exp would underflow every term to 0 and give inf.
TEST(ContrastiveLoss, StaysFiniteFarApart) {
  std::vector<double> gq, ga;
  const double loss = contrastive_loss({0, 1000, 2000}, {0, 1000, 2000}, 3, 1, 1.0, &gq, &ga);
  EXPECT_EQ(loss, 0.0);
  for (double g : gq) EXPECT_TRUE(std::isfinite(g));
  // Every answer at the same distance from every question: L = log N.
  // (−10⁶ + log 3) − (−10⁶) keeps log 3 to the spacing of doubles near 10⁶, 1.2e-10.
  EXPECT_NEAR(contrastive_loss({0, 0, 0}, {1e3, 1e3, 1e3}, 3, 1, 1.0), std::log(3.0), 1e-9);
}
