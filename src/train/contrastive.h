// The contrastive question_answering objective (task.qa.objective contrastive): symmetric InfoNCE
// over the N (question, answer) pairs of the task's global batch, every other answer of the batch
// a negative of a question and every other question one of an answer, as dense retrievers (DPR)
// and CLIP train. The logits are s_ij = −|q_i − a_j|² / τ, so that the positive term is QARAC's
// own pull of QE(q) onto AE(a), and retrieval by nearest answer (the evaluation's) ranks by them:
//   L = (1/2N) Σ_i [ (logsumexp_j s_ij − s_ii) + (logsumexp_j s_ji − s_ii) ].
// MSE alone is minimised by shrinking every vector; the negatives keep different answers apart.
//
// The batch is small (N ≤ a few hundred, d = 768: N²d ≈ 10⁸ flops at most), and its vectors come
// from every rank of the task, so the loss is computed on the host in f64, the same on every rank.
#pragma once

#include <cstdint>
#include <vector>

namespace qarac {

// L for the row-major [n, d] vectors q and a; when grad_q and grad_a are given, they get
// ∂L/∂q and ∂L/∂a ([n, d] each). n = 0 gives 0.
double contrastive_loss(const std::vector<double>& q, const std::vector<double>& a, int64_t n, int64_t d,
                        double temperature, std::vector<double>* grad_q = nullptr,
                        std::vector<double>* grad_a = nullptr);

}  // namespace qarac
