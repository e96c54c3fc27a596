// The op dispatcher: checks every argument against the contract in ops.h, then runs the backend
// of the tensors' device in their dtype. Only the CPU reference exists so far; CUDA tensors are
// refused with a message naming the op.
#include "kernels/ops.h"

#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/layernorm.h"

namespace qarac::ops {
namespace {

// The arguments of one call. The first float tensor is the reference: f32 or f64, and every other
// float tensor must share its device and dtype. Every tensor must be defined and contiguous.
class Args {
 public:
  Args(const char* op, const char* name, const Tensor& ref) : op_(op), name_(name), ref_(ref) {
    layout(name, ref);
    QARAC_CHECK(ref.dtype() == DType::f32 || ref.dtype() == DType::f64, op_, ": ", name,
                " has dtype ", dtype_name(ref.dtype()), "; the ops compute in f32 or f64");
  }

  // A float tensor of any shape with the reference's device and dtype.
  void floating(const char* name, const Tensor& t) const {
    layout(name, t);
    QARAC_CHECK(t.device() == ref_.device() && t.dtype() == ref_.dtype(), op_, ": ", name, " ",
                t.str(), " does not match ", name_, " ", ref_.str(), " in dtype or device");
  }
  void floating(const char* name, const Tensor& t, const Shape& shape) const {
    floating(name, t);
    expect_shape(name, t, shape);
  }
  // An i32 tensor (ids, targets, masks) on the reference's device.
  void index(const char* name, const Tensor& t) const {
    layout(name, t);
    QARAC_CHECK(t.dtype() == DType::i32, op_, ": ", name, " ", t.str(), " must be i32");
    QARAC_CHECK(t.device() == ref_.device(), op_, ": ", name, " ", t.str(),
                " is not on the device of ", name_, " ", ref_.str());
  }
  void index(const char* name, const Tensor& t, const Shape& shape) const {
    index(name, t);
    expect_shape(name, t, shape);
  }
  void rank(const char* name, const Tensor& t, int dims) const {
    QARAC_CHECK(t.dim() == dims, op_, ": ", name, " ", t.str(), " must have ", dims, " dimensions");
  }

  // Runs f(T{}) with T the reference's element type on the CPU; CUDA has no backend yet.
  template <class F>
  void dispatch(F&& f) const {
    QARAC_CHECK(ref_.device().is_cpu(), op_, ": no CUDA implementation yet (", name_, " is ",
                ref_.str(), ")");
    if (ref_.dtype() == DType::f32)
      f(float{});
    else
      f(double{});
  }

 private:
  void layout(const char* name, const Tensor& t) const {
    QARAC_CHECK(t.defined(), op_, ": ", name, " is undefined");
    QARAC_CHECK(t.is_contiguous(), op_, ": ", name, " ", t.str(), " is not contiguous");
  }
  void expect_shape(const char* name, const Tensor& t, const Shape& shape) const {
    if (&t == &ref_)
      QARAC_CHECK(t.shape() == shape, op_, ": ", name, " ", t.str(), ": expected shape ",
                  shape_str(shape));
    else
      QARAC_CHECK(t.shape() == shape, op_, ": ", name, " ", t.str(), " does not match ", name_, " ",
                  ref_.str(), ": expected shape ", shape_str(shape));
  }

  const char* op_;
  const char* name_;
  const Tensor& ref_;
};

void check_probability(const char* op, double p) {
  QARAC_CHECK(p >= 0 && p < 1, op, ": dropout probability ", p, " is outside [0, 1)");
}

// Shared by gemm and gemm_batched: a [.., M,K] or [.., K,M], b [.., K,N] or [.., N,K] ->
// c [.., M,N], where ".." is the leading batch dimension when `batched`.
void gemm_checked(const char* op, bool batched, const Tensor& a, const Tensor& b, Tensor& c,
                  bool trans_a, bool trans_b, double alpha, double beta) {
  const Args args(op, "a", a);
  args.floating("b", b);
  const int dims = batched ? 3 : 2, lead = batched ? 1 : 0;
  args.rank("a", a, dims);
  args.rank("b", b, dims);
  const int64_t batch = batched ? a.size(0) : 1;
  const int64_t m = a.size(trans_a ? lead + 1 : lead), k = a.size(trans_a ? lead : lead + 1);
  const int64_t kb = b.size(trans_b ? lead + 1 : lead), n = b.size(trans_b ? lead : lead + 1);
  QARAC_CHECK(kb == k && (!batched || b.size(0) == batch), op, ": b ", b.str(), " does not fit a ",
              a.str(), " (trans_a=", trans_a, ", trans_b=", trans_b, ")");
  args.floating("c", c, batched ? Shape{batch, m, n} : Shape{m, n});
  args.dispatch([&](auto tag) {
    using T = decltype(tag);
    cpu::gemm_batched(trans_a, trans_b, batch, m, n, k, static_cast<T>(alpha), a.data<T>(),
                      b.data<T>(), static_cast<T>(beta), c.data<T>());
  });
}

}  // namespace

// ---- GEMM ------------------------------------------------------------------------------------
void gemm(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b, double alpha,
          double beta) {
  gemm_checked("gemm", false, a, b, c, trans_a, trans_b, alpha, beta);
}

void gemm_batched(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b,
                  double alpha, double beta) {
  gemm_checked("gemm_batched", true, a, b, c, trans_a, trans_b, alpha, beta);
}

// ---- Elementwise and bias --------------------------------------------------------------------
void bias_add(Tensor& y, const Tensor& bias) {
  const Args args("bias_add", "y", y);
  args.rank("y", y, 2);
  args.floating("bias", bias, {y.size(1)});
  args.dispatch([&](auto tag) {
    using T = decltype(tag);
    cpu::bias_add(y.data<T>(), bias.data<T>(), y.size(0), y.size(1));
  });
}

void bias_backward(const Tensor& dy, Tensor& dbias) {
  const Args args("bias_backward", "dy", dy);
  args.rank("dy", dy, 2);
  args.floating("dbias", dbias, {dy.size(1)});
  args.dispatch([&](auto tag) {
    using T = decltype(tag);
    cpu::bias_backward(dy.data<T>(), dbias.data<T>(), dy.size(0), dy.size(1));
  });
}

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  const Args args("add", "a", a);
  args.floating("b", b, a.shape());
  args.floating("out", out, a.shape());
  args.dispatch([&](auto tag) {
    using T = decltype(tag);
    cpu::add(a.data<T>(), b.data<T>(), out.data<T>(), a.numel());
  });
}

void accumulate(Tensor& dst, const Tensor& src) {
  const Args args("accumulate", "dst", dst);
  args.floating("src", src, dst.shape());
  args.dispatch([&](auto tag) {
    using T = decltype(tag);
    cpu::accumulate(dst.data<T>(), src.data<T>(), dst.numel());
  });
}

void scale(Tensor& x, double factor) {
  const Args args("scale", "x", x);
  args.dispatch([&](auto tag) {
    using T = decltype(tag);
    cpu::scale(x.data<T>(), static_cast<T>(factor), x.numel());
  });
}

// ---- Embeddings --------------------------------------------------------------------------------
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out, bool accumulate) {
  const Args args("embedding_forward", "table", table);
  args.rank("table", table, 2);
  args.index("ids", ids);
  args.rank("ids", ids, 1);
  args.floating("out", out, {ids.size(0), table.size(1)});
  args.dispatch([&](auto tag) {
    using T = decltype(tag);
    cpu::embedding_forward(ids.data<int32_t>(), ids.size(0), table.data<T>(), table.size(0),
                           table.size(1), out.data<T>(), accumulate);
  });
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  const Args args("embedding_backward", "dtable", dtable);
  args.rank("dtable", dtable, 2);
  args.index("ids", ids);
  args.rank("ids", ids, 1);
  args.floating("dout", dout, {ids.size(0), dtable.size(1)});
  args.dispatch([&](auto tag) {
    using T = decltype(tag);
    cpu::embedding_backward(ids.data<int32_t>(), ids.size(0), dout.data<T>(), dtable.size(0),
                            dtable.size(1), dtable.data<T>());
  });
}

// ---- LayerNorm ----------------------------------------------------------------------------------
void layernorm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps,
                       Tensor& y, Tensor& mean, Tensor& rstd) {
  const Args args("layernorm_forward", "x", x);
  args.rank("x", x, 2);
  const int64_t rows = x.size(0), cols = x.size(1);
  QARAC_CHECK(eps > 0, "layernorm_forward: eps ", eps, " must be positive");
  args.floating("gamma", gamma, {cols});
  args.floating("beta", beta, {cols});
  args.floating("y", y, x.shape());
  args.floating("mean", mean, {rows});
  args.floating("rstd", rstd, {rows});
  args.dispatch([&](auto tag) {
    using T = decltype(tag);
    cpu::layernorm_forward(x.data<T>(), gamma.data<T>(), beta.data<T>(), static_cast<T>(eps), rows,
                           cols, y.data<T>(), mean.data<T>(), rstd.data<T>());
  });
}

void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                        const Tensor& rstd, Tensor& dx, Tensor& dgamma, Tensor& dbeta) {
  const Args args("layernorm_backward", "x", x);
  args.rank("x", x, 2);
  const int64_t rows = x.size(0), cols = x.size(1);
  args.floating("dy", dy, x.shape());
  args.floating("gamma", gamma, {cols});
  args.floating("mean", mean, {rows});
  args.floating("rstd", rstd, {rows});
  args.floating("dx", dx, x.shape());
  args.floating("dgamma", dgamma, {cols});
  args.floating("dbeta", dbeta, {cols});
  args.dispatch([&](auto tag) {
    using T = decltype(tag);
    cpu::layernorm_backward(dy.data<T>(), x.data<T>(), gamma.data<T>(), mean.data<T>(),
                            rstd.data<T>(), rows, cols, dx.data<T>(), dgamma.data<T>(),
                            dbeta.data<T>());
  });
}

// ---- GELU ---------------------------------------------------------------------------------------
void gelu_forward(const Tensor& x, Tensor& y) {
  const Args args("gelu_forward", "x", x);
  args.floating("y", y, x.shape());
  args.dispatch([&](auto tag) {
    using T = decltype(tag);
    cpu::gelu_forward(x.data<T>(), y.data<T>(), x.numel());
  });
}

void gelu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  const Args args("gelu_backward", "x", x);
  args.floating("dy", dy, x.shape());
  args.floating("dx", dx, x.shape());
  args.dispatch([&](auto tag) {
    using T = decltype(tag);
    cpu::gelu_backward(x.data<T>(), dy.data<T>(), dx.data<T>(), x.numel());
  });
}

// ---- Dropout ------------------------------------------------------------------------------------
void dropout_forward(const Tensor& x, double p, const RngKey& key, Tensor& y) {
  const Args args("dropout_forward", "x", x);
  args.floating("y", y, x.shape());
  check_probability("dropout_forward", p);
  args.dispatch([&](auto tag) {
    using T = decltype(tag);
    cpu::dropout(x.data<T>(), y.data<T>(), x.numel(), p, key, 0);
  });
}

void dropout_backward(const Tensor& dy, double p, const RngKey& key, Tensor& dx) {
  const Args args("dropout_backward", "dy", dy);
  args.floating("dx", dx, dy.shape());
  check_probability("dropout_backward", p);
  args.dispatch([&](auto tag) {
    using T = decltype(tag);
    cpu::dropout(dy.data<T>(), dx.data<T>(), dy.numel(), p, key, 0);
  });
}

// ---- Attention ----------------------------------------------------------------------------------
namespace {
void check_dims(const char* op, const AttentionDims& d) {
  QARAC_CHECK(d.batch > 0 && d.seq > 0 && d.heads > 0 && d.head_dim > 0, op,
              ": dims must be positive, got batch ", d.batch, ", seq ", d.seq, ", heads ", d.heads,
              ", head_dim ", d.head_dim);
}
}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask,
                       const AttentionDims& dims, bool causal, double dropout_p,
                       const RngKey& dropout_key, Tensor& out, Tensor& probs) {
  const char* op = "attention_forward";
  check_dims(op, dims);
  check_probability(op, dropout_p);
  const Shape tokens = {dims.batch * dims.seq, dims.heads * dims.head_dim};
  const Args args(op, "q", q);
  args.floating("q", q, tokens);
  args.floating("k", k, tokens);
  args.floating("v", v, tokens);
  args.index("key_mask", key_mask, {dims.batch, dims.seq});
  args.floating("out", out, tokens);
  args.floating("probs", probs, {dims.batch, dims.heads, dims.seq, dims.seq});
  args.dispatch([&](auto tag) {
    using T = decltype(tag);
    cpu::attention_forward(q.data<T>(), k.data<T>(), v.data<T>(), key_mask.data<int32_t>(),
                           dims.batch, dims.seq, dims.heads, dims.head_dim, causal, dropout_p,
                           dropout_key, out.data<T>(), probs.data<T>());
  });
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& probs, const AttentionDims& dims, double dropout_p,
                        const RngKey& dropout_key, Tensor& dq, Tensor& dk, Tensor& dv) {
  const char* op = "attention_backward";
  check_dims(op, dims);
  check_probability(op, dropout_p);
  const Shape tokens = {dims.batch * dims.seq, dims.heads * dims.head_dim};
  const Args args(op, "q", q);
  args.floating("q", q, tokens);
  args.floating("dout", dout, tokens);
  args.floating("k", k, tokens);
  args.floating("v", v, tokens);
  args.floating("probs", probs, {dims.batch, dims.heads, dims.seq, dims.seq});
  args.floating("dq", dq, tokens);
  args.floating("dk", dk, tokens);
  args.floating("dv", dv, tokens);
  args.dispatch([&](auto tag) {
    using T = decltype(tag);
    cpu::attention_backward(dout.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(), probs.data<T>(),
                            dims.batch, dims.seq, dims.heads, dims.head_dim, dropout_p, dropout_key,
                            dq.data<T>(), dk.data<T>(), dv.data<T>());
  });
}

// ---- Softmax cross-entropy ----------------------------------------------------------------------
void softmax_cross_entropy(const Tensor& logits, const Tensor& targets, int32_t ignore_index,
                           Tensor& losses, Tensor* dlogits, double dloss) {
  const Args args("softmax_cross_entropy", "logits", logits);
  args.rank("logits", logits, 2);
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  args.index("targets", targets, {rows});
  args.floating("losses", losses, {rows});
  if (dlogits) args.floating("dlogits", *dlogits, logits.shape());
  args.dispatch([&](auto tag) {
    using T = decltype(tag);
    cpu::softmax_cross_entropy(logits.data<T>(), targets.data<int32_t>(), rows, vocab, ignore_index,
                               losses.data<T>(), dlogits ? dlogits->data<T>() : nullptr,
                               static_cast<T>(dloss));
  });
}

}  // namespace qarac::ops
