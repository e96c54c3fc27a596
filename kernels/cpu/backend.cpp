// The CPU reference backend: each entry of the Backend table runs the reference functions of
// kernels/cpu on the tensors' host pointers, in float (X = A = f32, what training on the CPU
// uses) or in double (X = A = f64, for gradient checks and as the reference the other backends
// are tested against). Sequences (offsets and ids) are read from their host copies.
#include "kernels/backend.h"

#include "kernels/cpu/attention.h"
#include "kernels/cpu/cosine.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/mse.h"
#include "kernels/cpu/optimizer.h"
#include "kernels/cpu/pooling.h"
#include "kernels/cpu/rows.h"

namespace qarac::cpu {
namespace {

using ops::Sequences;

// Calls f(T{}) with T the element type of compute dtype x, float or double (ops.cpp has refused
// any other); on the CPU the accumulation dtype is x itself, so T serves both.
template <class F>
void with_type(DType x, F&& f) {
  if (x == DType::f32)
    f(float{});
  else
    f(double{});
}

// The distance in elements between the rows of a 2-D tensor, contiguous or a row-strided view
// (ops.cpp allows the latter for attention's q, k, v and their gradients; each group shares one).
int64_t row_stride(const Tensor& t) { return t.strides()[0]; }

// The data of an optional tensor, or null.
template <class T>
T* data_or_null(const Tensor* t) {
  return t ? t->data<T>() : nullptr;
}

// An optimizer's `update` (cpu::adamw_update, cpu::nadam_update) over param's runs of one weight
// decay: `step` as given, or with weight_decay 0 where no_decay leaves the elements out.
template <class Step, class Update>
void update_by_runs(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, Tensor* param_copy,
                    const std::vector<ops::ElementRange>& no_decay, const Step& step, Update update) {
  with_type(param.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* copy = data_or_null<T>(param_copy);
    for (const ops::DecayRun& run : ops::decay_runs(param.numel(), no_decay)) {
      Step in_run = step;
      if (!run.decays) in_run.weight_decay = 0;
      update(param.data<T>() + run.begin, grad.data<T>() + run.begin, m.data<T>() + run.begin, v.data<T>() + run.begin,
             run.end - run.begin, in_run, copy ? copy + run.begin : nullptr);
    }
  });
}

// c [.., M,N] = alpha op(a) op(b) + beta c, batched over the leading dimension of 3-D operands.
void gemm_any(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b, double alpha,
              double beta) {
  const int64_t batch = c.dim() == 3 ? c.size(0) : 1, m = c.size(-2), n = c.size(-1);
  const int64_t k = a.size(trans_a ? -2 : -1);
  with_type(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::gemm_batched(trans_a, trans_b, batch, m, n, k, static_cast<T>(alpha), a.data<T>(),
                      b.data<T>(), static_cast<T>(beta), c.data<T>());
  });
}

// layernorm_forward (b, sum null) and add_layernorm_forward (x = a + b, written to sum).
void layernorm_any(const Tensor& a, const Tensor* b, const Tensor& gamma, const Tensor& beta,
                   double eps, Tensor* sum, Tensor& y, Tensor& mean, Tensor& rstd) {
  with_type(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::layernorm_forward(a.data<T>(), data_or_null<T>(b), gamma.data<T>(), beta.data<T>(),
                           static_cast<T>(eps), a.size(0), a.size(1), data_or_null<T>(sum),
                           y.data<T>(), mean.data<T>(), rstd.data<T>());
  });
}

// The forward (x -> y) and backward (dy -> dx) pass of dropout are the same masked scaling.
void dropout_any(const Tensor& in, double p, const RngKey& key, const Sequences& seqs,
                 Tensor& out) {
  with_type(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::dropout_rows(in.data<T>(), out.data<T>(), seqs.host.data(), seqs.host_ids.data(),
                      seqs.count(), in.size(1), p, key);
  });
}

class CpuBackend final : public ops::Backend {
 public:
  const char* name() const override { return "CPU"; }
  const std::vector<ops::DTypePair>& dtypes() const override {
    static const std::vector<ops::DTypePair> pairs = {{DType::f32, DType::f32},
                                                      {DType::f64, DType::f64}};
    return pairs;
  }

  void gemm(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b, double alpha,
            double beta) const override {
    gemm_any(a, b, c, trans_a, trans_b, alpha, beta);
  }
  void gemm_batched(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b,
                    double alpha, double beta) const override {
    gemm_any(a, b, c, trans_a, trans_b, alpha, beta);
  }

  void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
                      ops::Activation act, Tensor* pre) const override {
    with_type(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::linear_forward(x.data<T>(), w.data<T>(), bias.data<T>(), x.size(0), x.size(1), w.size(0),
                          act == ops::Activation::gelu, y.data<T>(), data_or_null<T>(pre));
    });
  }
  void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor& dw,
                       Tensor* dbias, const Tensor* input_gelu_pre, bool accumulate_dx,
                       Tensor* input_gelu_dbias) const override {
    with_type(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::linear_backward(x.data<T>(), w.data<T>(), dy.data<T>(), x.size(0), x.size(1), w.size(0),
                           data_or_null<T>(dx), dw.data<T>(), data_or_null<T>(dbias),
                           data_or_null<T>(input_gelu_pre), accumulate_dx);
    });
    if (input_gelu_dbias) bias_backward(*dx, *input_gelu_dbias);
  }

  void bias_add(Tensor& y, const Tensor& bias) const override {
    with_type(y.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::bias_add(y.data<T>(), bias.data<T>(), y.size(0), y.size(1));
    });
  }
  void bias_backward(const Tensor& dy, Tensor& dbias) const override {
    with_type(dy.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::bias_backward(dy.data<T>(), dbias.data<T>(), dy.size(0), dy.size(1));
    });
  }
  void add(const Tensor& a, const Tensor& b, Tensor& out) const override {
    with_type(a.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::add(a.data<T>(), b.data<T>(), out.data<T>(), a.numel());
    });
  }
  void accumulate(Tensor& dst, const Tensor& src) const override {
    with_type(dst.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::accumulate(dst.data<T>(), src.data<T>(), dst.numel());
    });
  }
  void scale(Tensor& x, double factor) const override {
    with_type(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::scale(x.data<T>(), static_cast<T>(factor), x.numel());
    });
  }

  void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out,
                         bool accumulate) const override {
    with_type(table.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::embedding_forward(ids.data<int32_t>(), ids.size(0), table.data<T>(), table.size(0),
                             table.size(1), out.data<T>(), accumulate);
    });
  }
  void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) const override {
    with_type(dout.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::embedding_backward(ids.data<int32_t>(), ids.size(0), dout.data<T>(), dtable.size(0),
                              dtable.size(1), dtable.data<T>());
    });
  }

  void layernorm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps,
                         Tensor& y, Tensor& mean, Tensor& rstd) const override {
    layernorm_any(x, nullptr, gamma, beta, eps, nullptr, y, mean, rstd);
  }
  // The reference of the fused branch dropout: the separate ops, one after the other, the dropped
  // branch held in `sum` until the residual is added to it (the LayerNorm may add in place), or
  // in a tensor of its own when sum is the residual b.
  void add_layernorm_forward(const Tensor& a, const Tensor& b, const Tensor& gamma,
                             const Tensor& beta, double eps, Tensor& sum, Tensor& y, Tensor& mean,
                             Tensor& rstd, const ops::BranchDropout* branch_dropout) const override {
    if (!branch_dropout) {
      layernorm_any(a, &b, gamma, beta, eps, &sum, y, mean, rstd);
      return;
    }
    Tensor dropped = sum.raw() == b.raw() ? Tensor::empty(a.shape(), a.dtype(), a.device()) : sum;
    dropout_any(a, branch_dropout->p, branch_dropout->key, *branch_dropout->seqs, dropped);
    layernorm_any(dropped, &b, gamma, beta, eps, &sum, y, mean, rstd);
  }
  void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                          const Tensor& mean, const Tensor& rstd, Tensor& dx, Tensor& dgamma,
                          Tensor& dbeta, const ops::BranchDropout* branch_dropout,
                          Tensor* dbranch, Tensor* dbias_branch) const override {
    with_type(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::layernorm_backward(dy.data<T>(), x.data<T>(), gamma.data<T>(), mean.data<T>(),
                              rstd.data<T>(), x.size(0), x.size(1), dx.data<T>(), dgamma.data<T>(),
                              dbeta.data<T>());
    });
    if (branch_dropout)
      dropout_any(dx, branch_dropout->p, branch_dropout->key, *branch_dropout->seqs, *dbranch);
    if (dbias_branch) bias_backward(branch_dropout ? *dbranch : dx, *dbias_branch);
  }

  void gelu_forward(const Tensor& x, Tensor& y) const override {
    with_type(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::gelu_forward(x.data<T>(), y.data<T>(), x.numel());
    });
  }
  void gelu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) const override {
    with_type(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::gelu_backward(x.data<T>(), dy.data<T>(), dx.data<T>(), x.numel());
    });
  }
  void dropout_forward(const Tensor& x, double p, const RngKey& key, const Sequences& seqs,
                       Tensor& y) const override {
    dropout_any(x, p, key, seqs, y);
  }
  void dropout_backward(const Tensor& dy, double p, const RngKey& key, const Sequences& seqs,
                        Tensor& dx) const override {
    dropout_any(dy, p, key, seqs, dx);
  }

  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Sequences& seqs,
                         int64_t heads, bool causal, double dropout_p, const RngKey& dropout_key,
                         Tensor& out, Tensor& lse) const override {
    with_type(q.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::attention_forward(q.data<T>(), k.data<T>(), v.data<T>(), row_stride(q),
                             seqs.host.data(), seqs.host_ids.data(), seqs.count(), seqs.max_len,
                             heads, q.size(1) / heads, causal, dropout_p, dropout_key,
                             out.data<T>(), row_stride(out), lse.data<T>());
    });
  }
  void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& out, const Tensor& lse, const Sequences& seqs,
                          int64_t heads, bool causal, double dropout_p, const RngKey& dropout_key,
                          Tensor& dq, Tensor& dk, Tensor& dv) const override {
    with_type(q.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::attention_backward(dout.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(),
                              lse.data<T>(), row_stride(q), row_stride(out), seqs.host.data(),
                              seqs.host_ids.data(), seqs.count(), seqs.max_len, heads,
                              q.size(1) / heads, causal, dropout_p, dropout_key, dq.data<T>(),
                              dk.data<T>(), dv.data<T>(), row_stride(dq));
    });
  }

  void attention_over_ranges(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& ranges,
                             int64_t heads, Tensor& out) const override {
    with_type(q.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::attention_over_ranges(q.data<T>(), row_stride(q), k.data<T>(), v.data<T>(), row_stride(k),
                                 k.size(0), ranges.data<int32_t>(), q.size(0), heads, q.size(1) / heads,
                                 out.data<T>());
    });
  }

  void softmax_cross_entropy(const Tensor& logits, const Tensor& targets, int32_t ignore_index,
                             Tensor& losses, Tensor* dlogits, double dloss, int64_t valid_cols,
                             const Tensor* row_weights) const override {
    with_type(logits.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::softmax_cross_entropy(logits.data<T>(), targets.data<int32_t>(), logits.size(0),
                                 logits.size(1), valid_cols, ignore_index, losses.data<T>(),
                                 data_or_null<T>(dlogits), static_cast<T>(dloss),
                                 data_or_null<T>(row_weights));
    });
  }
  void mse_loss(const Tensor& a, const Tensor& b, Tensor& losses, Tensor* da, Tensor* db,
                double dloss) const override {
    with_type(a.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::mse_loss(a.data<T>(), b.data<T>(), a.size(0), a.size(1), losses.data<T>(),
                    data_or_null<T>(da), data_or_null<T>(db), static_cast<T>(dloss));
    });
  }

  void gather_rows(const Tensor& src, const Tensor& index, Tensor& out) const override {
    with_type(src.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::gather_rows(src.data<T>(), src.size(0), index.data<int32_t>(), index.size(0),
                       src.size(1), out.data<T>());
    });
  }
  void scatter_rows(const Tensor& src, const Tensor& index, Tensor& out) const override {
    with_type(src.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::scatter_rows(src.data<T>(), src.size(0), index.data<int32_t>(), out.size(0), src.size(1),
                        out.data<T>());
    });
  }

  void segment_sum(const Tensor& x, const Sequences& seqs, Tensor& out) const override {
    with_type(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::segment_sum(x.data<T>(), seqs.host.data(), seqs.count(), x.size(1), out.data<T>());
    });
  }
  void segment_sum_backward(const Tensor& dout, const Sequences& seqs, Tensor& dx,
                            bool accumulate) const override {
    with_type(dout.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::segment_sum_backward(dout.data<T>(), seqs.host.data(), seqs.count(), dout.size(1),
                                dx.data<T>(), accumulate);
    });
  }
  void pooling_forward(const Tensor& x, const Tensor& l, const Tensor& g, const Sequences& seqs,
                       double eps, Tensor& v, Tensor& a) const override {
    with_type(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::pooling_forward(x.data<T>(), l.data<T>(), g.data<T>(), seqs.host.data(), seqs.count(),
                           x.size(1), static_cast<T>(eps), v.data<T>(), a.data<T>());
    });
  }
  void pooling_backward(const Tensor& dv, const Tensor& x, const Tensor& l, const Tensor& g,
                        const Tensor& a, const Sequences& seqs, double eps, Tensor& dx, Tensor& dl,
                        Tensor& dg) const override {
    with_type(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::pooling_backward(dv.data<T>(), x.data<T>(), l.data<T>(), g.data<T>(), a.data<T>(),
                            seqs.host.data(), seqs.count(), x.size(1), static_cast<T>(eps),
                            dx.data<T>(), dl.data<T>(), dg.data<T>());
    });
  }
  void cosine_forward(const Tensor& a, const Tensor& b, double eps, Tensor& out) const override {
    with_type(a.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::cosine_forward(a.data<T>(), b.data<T>(), a.size(0), a.size(1), static_cast<T>(eps),
                          out.data<T>());
    });
  }
  void cosine_backward(const Tensor& dout, const Tensor& a, const Tensor& b, double eps, Tensor& da,
                       Tensor& db) const override {
    with_type(a.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::cosine_backward(dout.data<T>(), a.data<T>(), b.data<T>(), a.size(0), a.size(1),
                           static_cast<T>(eps), da.data<T>(), db.data<T>());
    });
  }

  void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                    const ops::AdamW& config, Tensor* param_copy) const override {
    const ops::AdamWCoefficients c = ops::adamw_coefficients(config);
    const AdamWStep step{config.lr,          config.beta1,        config.beta2,
                         config.eps,         config.weight_decay, config.grad_scale,
                         c.bias_correction1, c.bias_correction2};
    update_by_runs(param, grad, m, v, param_copy, config.no_decay, step,
                   [](auto... args) { cpu::adamw_update(args...); });
  }
  void nadam_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                    const ops::NAdam& config, Tensor* param_copy) const override {
    const ops::NAdamCoefficients c = ops::nadam_coefficients(config);
    const NAdamStep step{config.lr,
                         config.beta1,
                         config.beta2,
                         config.eps,
                         config.weight_decay,
                         config.grad_scale,
                         config.decoupled_weight_decay,
                         c.bias_correction2,
                         c.grad_coef,
                         c.momentum_coef};
    update_by_runs(param, grad, m, v, param_copy, config.no_decay, step,
                   [](auto... args) { cpu::nadam_update(args...); });
  }
  void sum_of_squares(const std::vector<const Tensor*>& tensors, Tensor& out) const override {
    with_type(out.dtype(), [&](auto tag) {
      using T = decltype(tag);
      // One running sum in double whatever T, element after element in tensor order: the same
      // bits on every run, and however the elements are cut into tensors (a packed model's
      // spans or its parameters one by one).
      double total = 0;
      for (const Tensor* t : tensors) total = cpu::sum_of_squares(total, t->data<T>(), t->numel());
      out.data<T>()[0] = static_cast<T>(total);
    });
  }
};

}  // namespace
}  // namespace qarac::cpu

namespace qarac::ops {

const Backend& cpu_backend() {
  static const cpu::CpuBackend backend;
  return backend;
}

}  // namespace qarac::ops
