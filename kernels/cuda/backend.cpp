// The CUDA backend: each entry of the Backend table calls the host entry point of its op family
// (kernels/cuda/*.cuh) with raw device pointers, sizes read off the checked shapes and the
// storage dtypes: X is f32 or bf16, and A is f32 for both, so the accumulation tensors are passed
// as float pointers. Plain C++: the kernels and their launches live in the .cu files. Sequences
// are read from their device offsets and ids; the host copy only sizes the launches.
#include "kernels/backend.h"

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/cosine.cuh"
#include "kernels/cuda/cross_entropy.cuh"
#include "kernels/cuda/dropout.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/gelu.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/layernorm.cuh"
#include "kernels/cuda/mse.cuh"
#include "kernels/cuda/optimizer.cuh"
#include "kernels/cuda/pooling.cuh"
#include "kernels/cuda/rows.cuh"

namespace qarac::cuda {
namespace {

using ops::Sequences;

// The device address of an optional tensor, or null.
void* raw_or_null(const Tensor* t) { return t ? t->raw() : nullptr; }

// param's elements in the runs of one weight decay, for the optimizers' one launch.
std::vector<cuda::UpdateRun> update_runs(const Tensor& param, const std::vector<ops::ElementRange>& no_decay) {
  std::vector<cuda::UpdateRun> runs;
  for (const ops::DecayRun& r : ops::decay_runs(param.numel(), no_decay)) runs.push_back({r.begin, r.end, r.decays});
  return runs;
}

// c [.., M,N] = alpha op(a) op(b) + beta c, batched over the leading dimension of 3-D operands.
void gemm_any(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b, double alpha,
              double beta) {
  const int64_t batch = c.dim() == 3 ? c.size(0) : 1, m = c.size(-2), n = c.size(-1);
  const int64_t k = a.size(trans_a ? -2 : -1);
  cuda::gemm(a.dtype(), c.dtype(), trans_a, trans_b, batch, m, n, k, alpha, a.raw(), b.raw(), beta,
             c.raw());
}

// The ids of a sequence set as the kernels read them: the i64 tensor's bits as uint64_t.
const uint64_t* sequence_ids(const Sequences& seqs) {
  return reinterpret_cast<const uint64_t*>(seqs.ids.data<int64_t>());
}

// The kernels' form of a fused branch dropout (none: nothing dropped).
RowDropout row_dropout_of(const ops::BranchDropout* d) {
  if (!d) return {};
  return row_dropout(d->seqs->offsets.data<int32_t>(), sequence_ids(*d->seqs), d->seqs->count(),
                     d->p, d->key);
}

// The distance in elements between the rows of a 2-D tensor, contiguous or a row-strided view
// (ops.cpp allows the latter for attention's q, k, v and their gradients; each group shares one).
int64_t row_stride(const Tensor& t) { return t.strides()[0]; }

// The shape of an attention call; dq, the first of the gradients, in the backward pass only.
AttentionShape attention_shape(const Tensor& q, const Tensor& out, const Tensor* dq,
                               const Sequences& seqs, int64_t heads) {
  return {seqs.offsets.data<int32_t>(),
          sequence_ids(seqs),
          seqs.count(),
          q.size(0),
          seqs.max_len,
          heads,
          q.size(1) / heads,
          row_stride(q),
          dq ? row_stride(*dq) : 0,
          row_stride(out)};
}

class CudaBackend final : public ops::Backend {
 public:
  const char* name() const override { return "CUDA"; }
  const std::vector<ops::DTypePair>& dtypes() const override {
    static const std::vector<ops::DTypePair> pairs = {{DType::f32, DType::f32},
                                                      {DType::bf16, DType::f32}};
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
    cuda::linear_forward(x.dtype(), x.size(0), x.size(1), w.size(0), x.raw(), w.raw(), bias.raw(),
                         y.raw(), act == ops::Activation::gelu, raw_or_null(pre));
  }
  void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor& dw,
                       Tensor* dbias, const Tensor* input_gelu_pre, bool accumulate_dx,
                       Tensor* input_gelu_dbias) const override {
    const int64_t rows = x.size(0), in = x.size(1), out = w.size(0);
    cuda::linear_backward_weight(x.dtype(), dw.dtype(), rows, in, out, x.raw(), dy.raw(), dw.raw(),
                                 raw_or_null(dbias));
    if (dx)
      cuda::linear_backward_input(x.dtype(), rows, in, out, dy.raw(), w.raw(), dx->raw(),
                                  raw_or_null(input_gelu_pre), accumulate_dx,
                                  input_gelu_dbias ? input_gelu_dbias->data<float>() : nullptr);
  }

  void bias_add(Tensor& y, const Tensor& bias) const override {
    cuda::bias_add(y.dtype(), y.raw(), bias.raw(), y.size(0), y.size(1));
  }
  void bias_backward(const Tensor& dy, Tensor& dbias) const override {
    cuda::bias_backward(dy.dtype(), dbias.dtype(), dy.raw(), dbias.raw(), dy.size(0), dy.size(1));
  }
  void add(const Tensor& a, const Tensor& b, Tensor& out) const override {
    cuda::add(a.dtype(), a.raw(), b.raw(), out.raw(), a.numel());
  }
  void accumulate(Tensor& dst, const Tensor& src) const override {
    cuda::accumulate(dst.dtype(), dst.raw(), src.raw(), dst.numel());
  }
  void scale(Tensor& x, double factor) const override {
    cuda::scale(x.dtype(), x.raw(), factor, x.numel());
  }

  void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out,
                         bool accumulate) const override {
    cuda::embedding_forward(table.dtype(), ids.data<int32_t>(), ids.size(0), table.raw(),
                            table.size(0), table.size(1), out.raw(), accumulate);
  }
  void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) const override {
    cuda::embedding_backward(dout.dtype(), dtable.dtype(), ids.data<int32_t>(), ids.size(0),
                             dout.raw(), dtable.size(0), dtable.size(1), dtable.raw());
  }

  void layernorm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps,
                         Tensor& y, Tensor& mean, Tensor& rstd) const override {
    cuda::layernorm_forward(x.dtype(), x.raw(), nullptr, gamma.raw(), beta.raw(), eps, x.size(0),
                            x.size(1), nullptr, y.raw(), mean.data<float>(), rstd.data<float>());
  }
  void add_layernorm_forward(const Tensor& a, const Tensor& b, const Tensor& gamma,
                             const Tensor& beta, double eps, Tensor& sum, Tensor& y, Tensor& mean,
                             Tensor& rstd, const ops::BranchDropout* branch_dropout) const override {
    cuda::layernorm_forward(a.dtype(), a.raw(), b.raw(), gamma.raw(), beta.raw(), eps, a.size(0),
                            a.size(1), sum.raw(), y.raw(), mean.data<float>(), rstd.data<float>(),
                            row_dropout_of(branch_dropout));
  }
  void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                          const Tensor& mean, const Tensor& rstd, Tensor& dx, Tensor& dgamma,
                          Tensor& dbeta, const ops::BranchDropout* branch_dropout,
                          Tensor* dbranch, Tensor* dbias_branch) const override {
    cuda::layernorm_backward(x.dtype(), dy.raw(), x.raw(), gamma.raw(), mean.data<float>(),
                             rstd.data<float>(), x.size(0), x.size(1), dx.raw(),
                             dgamma.data<float>(), dbeta.data<float>(),
                             row_dropout_of(branch_dropout), raw_or_null(dbranch),
                             dbias_branch ? dbias_branch->data<float>() : nullptr);
  }

  void gelu_forward(const Tensor& x, Tensor& y) const override {
    cuda::gelu_forward(x.dtype(), x.raw(), y.raw(), x.numel());
  }
  void gelu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) const override {
    cuda::gelu_backward(x.dtype(), x.raw(), dy.raw(), dx.raw(), x.numel());
  }
  // Forward and backward are the same masked scaling of their input.
  void dropout_forward(const Tensor& x, double p, const RngKey& key, const Sequences& seqs,
                       Tensor& y) const override {
    cuda::dropout(x.dtype(), x.raw(), y.raw(), x.size(0), x.size(1), seqs.offsets.data<int32_t>(),
                  sequence_ids(seqs), seqs.count(), p, key);
  }
  void dropout_backward(const Tensor& dy, double p, const RngKey& key, const Sequences& seqs,
                        Tensor& dx) const override {
    cuda::dropout(dy.dtype(), dy.raw(), dx.raw(), dy.size(0), dy.size(1),
                  seqs.offsets.data<int32_t>(), sequence_ids(seqs), seqs.count(), p, key);
  }

  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Sequences& seqs,
                         int64_t heads, bool causal, double dropout_p, const RngKey& dropout_key,
                         Tensor& out, Tensor& lse) const override {
    cuda::attention_forward(q.dtype(), attention_shape(q, out, nullptr, seqs, heads), q.raw(),
                            k.raw(), v.raw(), causal, dropout_p, dropout_key, out.raw(),
                            lse.data<float>());
  }
  void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& out, const Tensor& lse, const Sequences& seqs,
                          int64_t heads, bool causal, double dropout_p, const RngKey& dropout_key,
                          Tensor& dq, Tensor& dk, Tensor& dv) const override {
    cuda::attention_backward(q.dtype(), attention_shape(q, out, &dq, seqs, heads), dout.raw(),
                             q.raw(), k.raw(), v.raw(), out.raw(), lse.data<float>(), causal,
                             dropout_p, dropout_key, dq.raw(), dk.raw(), dv.raw());
  }
  void attention_over_ranges(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& ranges,
                             int64_t heads, Tensor& out) const override {
    cuda::attention_over_ranges(q.dtype(), q.size(0), heads, q.size(1) / heads, q.raw(), row_stride(q),
                                k.raw(), v.raw(), row_stride(k), ranges.data<int32_t>(), out.raw());
  }

  void softmax_cross_entropy(const Tensor& logits, const Tensor& targets, int32_t ignore_index,
                             Tensor& losses, Tensor* dlogits, double dloss, int64_t valid_cols,
                             const Tensor* row_weights) const override {
    cuda::softmax_cross_entropy(logits.dtype(), logits.raw(), targets.data<int32_t>(),
                                logits.size(0), logits.size(1), valid_cols, ignore_index,
                                losses.data<float>(), raw_or_null(dlogits), dloss,
                                row_weights ? row_weights->data<float>() : nullptr);
  }
  void mse_loss(const Tensor& a, const Tensor& b, Tensor& losses, Tensor* da, Tensor* db,
                double dloss) const override {
    cuda::mse_loss(a.dtype(), a.raw(), b.raw(), a.size(0), a.size(1), losses.data<float>(),
                   raw_or_null(da), raw_or_null(db), dloss);
  }

  void gather_rows(const Tensor& src, const Tensor& index, Tensor& out) const override {
    cuda::gather_rows(src.dtype(), src.raw(), index.data<int32_t>(), index.size(0), src.size(1),
                      out.raw());
  }
  void scatter_rows(const Tensor& src, const Tensor& index, Tensor& out) const override {
    cuda::scatter_rows(src.dtype(), src.raw(), index.data<int32_t>(), src.size(0), src.size(1),
                       out.raw());
  }

  void segment_sum(const Tensor& x, const Sequences& seqs, Tensor& out) const override {
    cuda::segment_sum(x.dtype(), x.raw(), seqs.offsets.data<int32_t>(), seqs.count(), x.size(1),
                      out.raw());
  }
  void segment_sum_backward(const Tensor& dout, const Sequences& seqs, Tensor& dx,
                            bool accumulate) const override {
    cuda::segment_sum_backward(dout.dtype(), dout.raw(), seqs.offsets.data<int32_t>(), seqs.count(),
                               seqs.tokens(), dout.size(1), dx.raw(), accumulate);
  }
  void pooling_forward(const Tensor& x, const Tensor& l, const Tensor& g, const Sequences& seqs,
                       double eps, Tensor& v, Tensor& a) const override {
    cuda::pooling_forward(x.dtype(), x.raw(), l.raw(), g.raw(), seqs.offsets.data<int32_t>(),
                          seqs.count(), x.size(0), x.size(1), eps, v.raw(), a.data<float>());
  }
  void pooling_backward(const Tensor& dv, const Tensor& x, const Tensor& l, const Tensor& g,
                        const Tensor& a, const Sequences& seqs, double eps, Tensor& dx, Tensor& dl,
                        Tensor& dg) const override {
    cuda::pooling_backward(x.dtype(), dv.raw(), x.raw(), l.raw(), g.raw(), a.data<float>(),
                           seqs.offsets.data<int32_t>(), seqs.count(), x.size(0), x.size(1), eps,
                           dx.raw(), dl.raw(), dg.raw());
  }
  void cosine_forward(const Tensor& a, const Tensor& b, double eps, Tensor& out) const override {
    cuda::cosine_forward(a.dtype(), a.raw(), b.raw(), a.size(0), a.size(1), eps, out.data<float>());
  }
  void cosine_backward(const Tensor& dout, const Tensor& a, const Tensor& b, double eps, Tensor& da,
                       Tensor& db) const override {
    cuda::cosine_backward(a.dtype(), dout.data<float>(), a.raw(), b.raw(), a.size(0), a.size(1),
                          eps, da.raw(), db.raw());
  }

  // Master weights, gradients and moments are f32 (A); the compute copy, when given, is f32 or
  // bf16 and receives the updated weights rounded to it.
  void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                    const ops::AdamW& config, Tensor* param_copy) const override {
    const ops::AdamWCoefficients c = ops::adamw_coefficients(config);
    const AdamWArgs args{config.lr,          config.beta1,        config.beta2,
                         config.eps,         config.weight_decay, config.grad_scale,
                         c.bias_correction1, c.bias_correction2};
    cuda::adamw_update(param.data<float>(), grad.data<float>(), m.data<float>(), v.data<float>(),
                       update_runs(param, config.no_decay), args,
                       param_copy ? param_copy->dtype() : DType::f32, raw_or_null(param_copy));
  }
  void nadam_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                    const ops::NAdam& config, Tensor* param_copy) const override {
    const ops::NAdamCoefficients c = ops::nadam_coefficients(config);
    const NAdamArgs args{config.lr,
                         config.beta1,
                         config.beta2,
                         config.eps,
                         config.weight_decay,
                         config.grad_scale,
                         config.decoupled_weight_decay,
                         c.bias_correction2,
                         c.grad_coef,
                         c.momentum_coef};
    cuda::nadam_update(param.data<float>(), grad.data<float>(), m.data<float>(), v.data<float>(),
                       update_runs(param, config.no_decay), args,
                       param_copy ? param_copy->dtype() : DType::f32, raw_or_null(param_copy));
  }
  void sum_of_squares(const std::vector<const Tensor*>& tensors, Tensor& out) const override {
    std::vector<Span> spans;
    spans.reserve(tensors.size());
    for (const Tensor* t : tensors) spans.push_back({t->raw(), t->numel()});
    cuda::sum_of_squares(tensors.empty() ? out.dtype() : tensors[0]->dtype(), spans,
                         out.data<float>());
  }
};

}  // namespace
}  // namespace qarac::cuda

namespace qarac::ops {

const Backend& cuda_backend() {
  static const cuda::CudaBackend backend;
  return backend;
}

}  // namespace qarac::ops
