// The op dispatcher: checks every argument against the contract in ops.h (defined, contiguous,
// one device, shapes, the dtype rules of compute dtype X and accumulation dtype A), then runs the
// backend of the tensors' device: the CPU reference (kernels/cpu) in float or double, or, in a
// build with QARAC_HAVE_CUDA, the CUDA host entry points (kernels/cuda/*.cuh) with raw device
// pointers. A build without the CUDA backend refuses CUDA tensors with a message naming the op.
#include "kernels/ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

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

#ifdef QARAC_HAVE_CUDA
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
#endif

namespace qarac::ops {

Sequences Sequences::from_lengths(const std::vector<int32_t>& lengths, Device device) {
  Sequences s;
  s.host.reserve(lengths.size() + 1);
  s.host.push_back(0);
  int64_t total = 0;
  for (size_t b = 0; b < lengths.size(); ++b) {
    QARAC_CHECK(lengths[b] >= 0, "Sequences::from_lengths: sequence ", b, " has length ",
                lengths[b], "; lengths must be >= 0");
    total += lengths[b];
    QARAC_CHECK(total <= std::numeric_limits<int32_t>::max(), "Sequences::from_lengths: ", total,
                " tokens overflow the i32 offsets");
    s.host.push_back(static_cast<int32_t>(total));
    s.max_len = std::max<int64_t>(s.max_len, lengths[b]);
  }
  s.offsets = Tensor::from_vector(s.host, {static_cast<int64_t>(s.host.size())}, device);
  return s;
}

namespace {

// What the reference tensor of a call holds: values in the compute dtype X (activations,
// weights), or values in the accumulation dtype A (master weights, moments, a norm).
enum class Role { compute, accumulation };

// The arguments of one call, checked against a reference tensor that fixes the device, X and
// A = accumulation_dtype(X): X is f32 or f64 on the CPU (A == X there), f32 or bf16 on CUDA
// (A = f32). Every tensor must be defined and contiguous and live on the reference's device.
class Args {
 public:
  Args(const char* op, const char* name, const Tensor& ref, Role role = Role::compute)
      : op_(op), name_(name), ref_(ref) {
    layout(name, ref);
    const bool cpu = ref.device().is_cpu();
#ifndef QARAC_HAVE_CUDA
    QARAC_CHECK(cpu, op, ": this build has no CUDA backend (", name, " is ", ref.str(), ")");
#endif
    const DType d = ref.dtype();
    if (role == Role::compute) {
      QARAC_CHECK(cpu ? d == DType::f32 || d == DType::f64 : d == DType::f32 || d == DType::bf16,
                  op, ": ", name, " ", ref.str(), " has dtype ", dtype_name(d),
                  cpu ? "; CPU ops compute in f32 or f64" : "; CUDA ops compute in f32 or bf16");
      x_ = d;
      a_ = accumulation_dtype(d);
    } else {
      QARAC_CHECK(cpu ? d == DType::f32 || d == DType::f64 : d == DType::f32, op, ": ", name, " ",
                  ref.str(), " has dtype ", dtype_name(d),
                  cpu ? "; CPU ops accumulate in f32 or f64" : "; CUDA ops accumulate in f32");
      x_ = a_ = d;
    }
  }

  bool cuda() const { return ref_.device().is_cuda(); }
  DType a_dtype() const { return a_; }

  // A tensor of X, optionally of a given shape.
  void compute(const char* name, const Tensor& t) const { expect_dtype(name, t, x_, "compute"); }
  void compute(const char* name, const Tensor& t, const Shape& shape) const {
    compute(name, t);
    expect_shape(name, t, shape);
  }
  // A tensor of A: parameter gradients, statistics, losses, similarities.
  void accumulation(const char* name, const Tensor& t) const {
    expect_dtype(name, t, a_, "accumulation");
  }
  void accumulation(const char* name, const Tensor& t, const Shape& shape) const {
    accumulation(name, t);
    expect_shape(name, t, shape);
  }
  // An i32 tensor (ids, targets, offsets).
  void index(const char* name, const Tensor& t) const {
    layout(name, t);
    same_device(name, t);
    QARAC_CHECK(t.dtype() == DType::i32, op_, ": ", name, " ", t.str(), " must be i32");
  }
  void index(const char* name, const Tensor& t, const Shape& shape) const {
    index(name, t);
    expect_shape(name, t, shape);
  }
  void rank(const char* name, const Tensor& t, int dims) const {
    layout(name, t);
    QARAC_CHECK(t.dim() == dims, op_, ": ", name, " ", t.str(), " must have ", dims, " dimensions");
  }
  void positive_eps(double eps) const {
    QARAC_CHECK(eps > 0, op_, ": eps ", eps, " must be positive");
  }

  // The sequences of a packed batch whose activations `name` have `rows` rows: offsets from 0,
  // non-decreasing, ending at rows; max_len the longest length; the offsets tensor i32 [B+1] on
  // the reference's device (on the CPU also equal to the host copy, which the CPU backend reads).
  void sequences(const Sequences& s, const char* name, int64_t rows) const {
    QARAC_CHECK(!s.host.empty(), op_, ": seqs has no offsets (seqs.host is empty)");
    QARAC_CHECK(s.host[0] == 0, op_, ": seqs.host starts at ", s.host[0], ", not 0");
    int64_t longest = 0;
    for (size_t b = 0; b + 1 < s.host.size(); ++b) {
      const int64_t len = int64_t{s.host[b + 1]} - s.host[b];
      QARAC_CHECK(len >= 0, op_, ": seqs: sequence ", b, " has negative length ", len);
      longest = std::max(longest, len);
    }
    QARAC_CHECK(s.max_len == longest, op_, ": seqs.max_len is ", s.max_len,
                " but the longest sequence has ", longest, " tokens");
    QARAC_CHECK(s.tokens() == rows, op_, ": seqs covers ", s.tokens(), " tokens but ", name,
                " has ", rows, " rows");
    index("seqs.offsets", s.offsets, {s.count() + 1});
    if (!cuda()) {
      const int32_t* o = s.offsets.data<int32_t>();
      for (int64_t b = 0; b <= s.count(); ++b)
        QARAC_CHECK(o[b] == s.host[b], op_, ": seqs.offsets[", b, "] = ", o[b],
                    " differs from seqs.host[", b, "] = ", s.host[b]);
    }
  }

  // Runs f(T{}) with T the element type of X (and of A, the same on the CPU).
  template <class F>
  void run_cpu(F&& f) const {
    if (x_ == DType::f32)
      f(float{});
    else
      f(double{});
  }

 private:
  void layout(const char* name, const Tensor& t) const {
    QARAC_CHECK(t.defined(), op_, ": ", name, " is undefined");
    QARAC_CHECK(t.is_contiguous(), op_, ": ", name, " ", t.str(), " is not contiguous");
  }
  void same_device(const char* name, const Tensor& t) const {
    QARAC_CHECK(t.device() == ref_.device(), op_, ": ", name, " ", t.str(),
                " is not on the device of ", name_, " ", ref_.str());
  }
  void expect_dtype(const char* name, const Tensor& t, DType want, const char* which) const {
    layout(name, t);
    same_device(name, t);
    QARAC_CHECK(t.dtype() == want, op_, ": ", name, " ", t.str(), " must be ", dtype_name(want),
                ", the ", which, " dtype that goes with ", name_, " ", ref_.str());
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
  DType x_, a_;
};

void check_probability(const char* op, double p) {
  QARAC_CHECK(p >= 0 && p < 1, op, ": dropout probability ", p, " is outside [0, 1)");
}

// Shared by gemm and gemm_batched: a [.., M,K] or [.., K,M], b [.., K,N] or [.., N,K] ->
// c [.., M,N] in X or A, where ".." is the leading batch dimension when `batched`.
void gemm_checked(const char* op, bool batched, const Tensor& a, const Tensor& b, Tensor& c,
                  bool trans_a, bool trans_b, double alpha, double beta) {
  const Args args(op, "a", a);
  args.compute("b", b);
  const int dims = batched ? 3 : 2, lead = batched ? 1 : 0;
  args.rank("a", a, dims);
  args.rank("b", b, dims);
  const int64_t batch = batched ? a.size(0) : 1;
  const int64_t m = a.size(trans_a ? lead + 1 : lead), k = a.size(trans_a ? lead : lead + 1);
  const int64_t kb = b.size(trans_b ? lead + 1 : lead), n = b.size(trans_b ? lead : lead + 1);
  QARAC_CHECK(kb == k && (!batched || b.size(0) == batch), op, ": b ", b.str(), " does not fit a ",
              a.str(), " (trans_a=", trans_a, ", trans_b=", trans_b, ")");
  const Shape shape = batched ? Shape{batch, m, n} : Shape{m, n};
  if (c.defined() && c.dtype() == args.a_dtype())
    args.accumulation("c", c, shape);
  else
    args.compute("c", c, shape);
#ifdef QARAC_HAVE_CUDA
  if (args.cuda())
    return cuda::gemm(a.dtype(), c.dtype(), trans_a, trans_b, batch, m, n, k, alpha, a.raw(),
                      b.raw(), beta, c.raw());
#endif
  args.run_cpu([&](auto tag) {
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

// ---- Dense layers -------------------------------------------------------------------------------
void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, Activation act,
                    Tensor* pre) {
  const char* op = "linear_forward";
  const Args args(op, "x", x);
  args.rank("x", x, 2);
  args.rank("w", w, 2);
  const int64_t rows = x.size(0), in = x.size(1), out = w.size(0);
  args.compute("w", w, {out, in});
  args.compute("bias", bias, {out});
  args.compute("y", y, {rows, out});
  const bool gelu = act == Activation::gelu;
  QARAC_CHECK(gelu || !pre, op, ": pre is only written with Activation::gelu");
  if (pre) args.compute("pre", *pre, {rows, out});
#ifdef QARAC_HAVE_CUDA
  if (args.cuda())
    return cuda::linear_forward(x.dtype(), rows, in, out, x.raw(), w.raw(), bias.raw(), y.raw(),
                                gelu, pre ? pre->raw() : nullptr);
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::linear_forward(x.data<T>(), w.data<T>(), bias.data<T>(), rows, in, out, gelu, y.data<T>(),
                        pre ? pre->data<T>() : nullptr);
  });
}

void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor& dw,
                     Tensor& dbias, const Tensor* input_gelu_pre, bool accumulate_dx) {
  const char* op = "linear_backward";
  const Args args(op, "x", x);
  args.rank("x", x, 2);
  args.rank("w", w, 2);
  const int64_t rows = x.size(0), in = x.size(1), out = w.size(0);
  args.compute("w", w, {out, in});
  args.compute("dy", dy, {rows, out});
  args.accumulation("dw", dw, {out, in});
  args.accumulation("dbias", dbias, {out});
  if (dx) args.compute("dx", *dx, {rows, in});
  if (input_gelu_pre) {
    QARAC_CHECK(dx, op, ": input_gelu_pre is given but dx is not");
    QARAC_CHECK(!accumulate_dx, op, ": input_gelu_pre cannot be combined with accumulate_dx");
    args.compute("input_gelu_pre", *input_gelu_pre, {rows, in});
  }
#ifdef QARAC_HAVE_CUDA
  if (args.cuda()) {
    cuda::linear_backward_weight(x.dtype(), dw.dtype(), rows, in, out, x.raw(), dy.raw(), dw.raw(),
                                 dbias.raw());
    if (dx)
      cuda::linear_backward_input(x.dtype(), rows, in, out, dy.raw(), w.raw(), dx->raw(),
                                  input_gelu_pre ? input_gelu_pre->raw() : nullptr, accumulate_dx);
    return;
  }
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::linear_backward(x.data<T>(), w.data<T>(), dy.data<T>(), rows, in, out,
                         dx ? dx->data<T>() : nullptr, dw.data<T>(), dbias.data<T>(),
                         input_gelu_pre ? input_gelu_pre->data<T>() : nullptr, accumulate_dx);
  });
}

// ---- Elementwise and bias --------------------------------------------------------------------
void bias_add(Tensor& y, const Tensor& bias) {
  const Args args("bias_add", "y", y);
  args.rank("y", y, 2);
  args.compute("bias", bias, {y.size(1)});
#ifdef QARAC_HAVE_CUDA
  if (args.cuda()) return cuda::bias_add(y.dtype(), y.raw(), bias.raw(), y.size(0), y.size(1));
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::bias_add(y.data<T>(), bias.data<T>(), y.size(0), y.size(1));
  });
}

void bias_backward(const Tensor& dy, Tensor& dbias) {
  const Args args("bias_backward", "dy", dy);
  args.rank("dy", dy, 2);
  args.accumulation("dbias", dbias, {dy.size(1)});
#ifdef QARAC_HAVE_CUDA
  if (args.cuda())
    return cuda::bias_backward(dy.dtype(), dbias.dtype(), dy.raw(), dbias.raw(), dy.size(0),
                               dy.size(1));
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::bias_backward(dy.data<T>(), dbias.data<T>(), dy.size(0), dy.size(1));
  });
}

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  const Args args("add", "a", a);
  args.compute("b", b, a.shape());
  args.compute("out", out, a.shape());
#ifdef QARAC_HAVE_CUDA
  if (args.cuda()) return cuda::add(a.dtype(), a.raw(), b.raw(), out.raw(), a.numel());
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::add(a.data<T>(), b.data<T>(), out.data<T>(), a.numel());
  });
}

void accumulate(Tensor& dst, const Tensor& src) {
  const Args args("accumulate", "dst", dst);
  args.compute("src", src, dst.shape());
#ifdef QARAC_HAVE_CUDA
  if (args.cuda()) return cuda::accumulate(dst.dtype(), dst.raw(), src.raw(), dst.numel());
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::accumulate(dst.data<T>(), src.data<T>(), dst.numel());
  });
}

void scale(Tensor& x, double factor) {
  const Args args("scale", "x", x);
#ifdef QARAC_HAVE_CUDA
  if (args.cuda()) return cuda::scale(x.dtype(), x.raw(), factor, x.numel());
#endif
  args.run_cpu([&](auto tag) {
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
  args.compute("out", out, {ids.size(0), table.size(1)});
#ifdef QARAC_HAVE_CUDA
  if (args.cuda())
    return cuda::embedding_forward(table.dtype(), ids.data<int32_t>(), ids.size(0), table.raw(),
                                   table.size(0), table.size(1), out.raw(), accumulate);
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::embedding_forward(ids.data<int32_t>(), ids.size(0), table.data<T>(), table.size(0),
                           table.size(1), out.data<T>(), accumulate);
  });
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  const Args args("embedding_backward", "dout", dout);
  args.index("ids", ids);
  args.rank("ids", ids, 1);
  args.rank("dtable", dtable, 2);
  args.compute("dout", dout, {ids.size(0), dtable.size(1)});
  args.accumulation("dtable", dtable);
#ifdef QARAC_HAVE_CUDA
  if (args.cuda())
    return cuda::embedding_backward(dout.dtype(), dtable.dtype(), ids.data<int32_t>(), ids.size(0),
                                    dout.raw(), dtable.size(0), dtable.size(1), dtable.raw());
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::embedding_backward(ids.data<int32_t>(), ids.size(0), dout.data<T>(), dtable.size(0),
                            dtable.size(1), dtable.data<T>());
  });
}

// ---- LayerNorm ----------------------------------------------------------------------------------
namespace {

// layernorm_forward (b and sum undefined) and add_layernorm_forward (sum = a + b normalised).
void layernorm_checked(const char* op, const Tensor& a, const Tensor* b, const Tensor& gamma,
                       const Tensor& beta, double eps, Tensor* sum, Tensor& y, Tensor& mean,
                       Tensor& rstd) {
  const bool fused = b != nullptr;
  const char* input = fused ? "a" : "x";
  const Args args(op, input, a);
  args.rank(input, a, 2);
  const int64_t rows = a.size(0), cols = a.size(1);
  args.positive_eps(eps);
  if (fused) {
    args.compute("b", *b, a.shape());
    args.compute("sum", *sum, a.shape());
  }
  args.compute("gamma", gamma, {cols});
  args.compute("beta", beta, {cols});
  args.compute("y", y, a.shape());
  args.accumulation("mean", mean, {rows});
  args.accumulation("rstd", rstd, {rows});
#ifdef QARAC_HAVE_CUDA
  if (args.cuda())
    return cuda::layernorm_forward(a.dtype(), a.raw(), fused ? b->raw() : nullptr, gamma.raw(),
                                   beta.raw(), eps, rows, cols, fused ? sum->raw() : nullptr,
                                   y.raw(), mean.data<float>(), rstd.data<float>());
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::layernorm_forward(a.data<T>(), fused ? b->data<T>() : nullptr, gamma.data<T>(),
                           beta.data<T>(), static_cast<T>(eps), rows, cols,
                           fused ? sum->data<T>() : nullptr, y.data<T>(), mean.data<T>(),
                           rstd.data<T>());
  });
}

}  // namespace

void layernorm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps,
                       Tensor& y, Tensor& mean, Tensor& rstd) {
  layernorm_checked("layernorm_forward", x, nullptr, gamma, beta, eps, nullptr, y, mean, rstd);
}

void add_layernorm_forward(const Tensor& a, const Tensor& b, const Tensor& gamma,
                           const Tensor& beta, double eps, Tensor& sum, Tensor& y, Tensor& mean,
                           Tensor& rstd) {
  layernorm_checked("add_layernorm_forward", a, &b, gamma, beta, eps, &sum, y, mean, rstd);
}

void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                        const Tensor& rstd, Tensor& dx, Tensor& dgamma, Tensor& dbeta) {
  const Args args("layernorm_backward", "x", x);
  args.rank("x", x, 2);
  const int64_t rows = x.size(0), cols = x.size(1);
  args.compute("dy", dy, x.shape());
  args.compute("gamma", gamma, {cols});
  args.accumulation("mean", mean, {rows});
  args.accumulation("rstd", rstd, {rows});
  args.compute("dx", dx, x.shape());
  args.accumulation("dgamma", dgamma, {cols});
  args.accumulation("dbeta", dbeta, {cols});
#ifdef QARAC_HAVE_CUDA
  if (args.cuda())
    return cuda::layernorm_backward(x.dtype(), dy.raw(), x.raw(), gamma.raw(), mean.data<float>(),
                                    rstd.data<float>(), rows, cols, dx.raw(), dgamma.data<float>(),
                                    dbeta.data<float>());
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::layernorm_backward(dy.data<T>(), x.data<T>(), gamma.data<T>(), mean.data<T>(),
                            rstd.data<T>(), rows, cols, dx.data<T>(), dgamma.data<T>(),
                            dbeta.data<T>());
  });
}

// ---- GELU ---------------------------------------------------------------------------------------
void gelu_forward(const Tensor& x, Tensor& y) {
  const Args args("gelu_forward", "x", x);
  args.compute("y", y, x.shape());
#ifdef QARAC_HAVE_CUDA
  if (args.cuda()) return cuda::gelu_forward(x.dtype(), x.raw(), y.raw(), x.numel());
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::gelu_forward(x.data<T>(), y.data<T>(), x.numel());
  });
}

void gelu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  const Args args("gelu_backward", "x", x);
  args.compute("dy", dy, x.shape());
  args.compute("dx", dx, x.shape());
#ifdef QARAC_HAVE_CUDA
  if (args.cuda()) return cuda::gelu_backward(x.dtype(), x.raw(), dy.raw(), dx.raw(), x.numel());
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::gelu_backward(x.data<T>(), dy.data<T>(), dx.data<T>(), x.numel());
  });
}

// ---- Dropout ------------------------------------------------------------------------------------
namespace {

// Forward (x -> y) and backward (dy -> dx) are the same masked scaling.
void dropout_checked(const char* op, const char* in_name, const Tensor& in, const char* out_name,
                     double p, const RngKey& key, Tensor& out) {
  const Args args(op, in_name, in);
  args.compute(out_name, out, in.shape());
  check_probability(op, p);
#ifdef QARAC_HAVE_CUDA
  if (args.cuda()) return cuda::dropout(in.dtype(), in.raw(), out.raw(), in.numel(), p, key);
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::dropout(in.data<T>(), out.data<T>(), in.numel(), p, key, 0);
  });
}

}  // namespace

void dropout_forward(const Tensor& x, double p, const RngKey& key, Tensor& y) {
  dropout_checked("dropout_forward", "x", x, "y", p, key, y);
}

void dropout_backward(const Tensor& dy, double p, const RngKey& key, Tensor& dx) {
  dropout_checked("dropout_backward", "dy", dy, "dx", p, key, dx);
}

// ---- Attention ----------------------------------------------------------------------------------
namespace {

// The checks both directions share: q [T, H*Dh] split into `heads`, the sequences over its T
// rows, the dropout probability. Returns Dh.
int64_t attention_head_dim(const char* op, const Args& args, const Tensor& q, const Sequences& seqs,
                           int64_t heads, double dropout_p) {
  args.rank("q", q, 2);
  QARAC_CHECK(heads > 0 && q.size(1) > 0 && q.size(1) % heads == 0, op, ": q ", q.str(),
              " does not split into ", heads, " heads");
  args.sequences(seqs, "q", q.size(0));
  check_probability(op, dropout_p);
  return q.size(1) / heads;
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Sequences& seqs,
                       int64_t heads, bool causal, double dropout_p, const RngKey& dropout_key,
                       Tensor& out, Tensor& lse) {
  const char* op = "attention_forward";
  const Args args(op, "q", q);
  const int64_t head_dim = attention_head_dim(op, args, q, seqs, heads, dropout_p);
  const int64_t tokens = q.size(0);
  args.compute("k", k, q.shape());
  args.compute("v", v, q.shape());
  args.compute("out", out, q.shape());
  args.accumulation("lse", lse, {heads, tokens});
#ifdef QARAC_HAVE_CUDA
  if (args.cuda()) {
    const cuda::AttentionShape shape{
        seqs.offsets.data<int32_t>(), seqs.count(), tokens, seqs.max_len, heads, head_dim};
    return cuda::attention_forward(q.dtype(), shape, q.raw(), k.raw(), v.raw(), causal, dropout_p,
                                   dropout_key, out.raw(), lse.data<float>());
  }
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::attention_forward(q.data<T>(), k.data<T>(), v.data<T>(), seqs.host.data(), seqs.count(),
                           seqs.max_len, heads, head_dim, causal, dropout_p, dropout_key,
                           out.data<T>(), lse.data<T>());
  });
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const Sequences& seqs, int64_t heads,
                        bool causal, double dropout_p, const RngKey& dropout_key, Tensor& dq,
                        Tensor& dk, Tensor& dv) {
  const char* op = "attention_backward";
  const Args args(op, "q", q);
  const int64_t head_dim = attention_head_dim(op, args, q, seqs, heads, dropout_p);
  const int64_t tokens = q.size(0);
  args.compute("dout", dout, q.shape());
  args.compute("k", k, q.shape());
  args.compute("v", v, q.shape());
  args.compute("out", out, q.shape());
  args.accumulation("lse", lse, {heads, tokens});
  args.compute("dq", dq, q.shape());
  args.compute("dk", dk, q.shape());
  args.compute("dv", dv, q.shape());
#ifdef QARAC_HAVE_CUDA
  if (args.cuda()) {
    const cuda::AttentionShape shape{
        seqs.offsets.data<int32_t>(), seqs.count(), tokens, seqs.max_len, heads, head_dim};
    return cuda::attention_backward(q.dtype(), shape, dout.raw(), q.raw(), k.raw(), v.raw(),
                                    out.raw(), lse.data<float>(), causal, dropout_p, dropout_key,
                                    dq.raw(), dk.raw(), dv.raw());
  }
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::attention_backward(dout.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(),
                            lse.data<T>(), seqs.host.data(), seqs.count(), seqs.max_len, heads,
                            head_dim, causal, dropout_p, dropout_key, dq.data<T>(), dk.data<T>(),
                            dv.data<T>());
  });
}

// ---- Softmax cross-entropy ----------------------------------------------------------------------
void softmax_cross_entropy(const Tensor& logits, const Tensor& targets, int32_t ignore_index,
                           Tensor& losses, Tensor* dlogits, double dloss, int64_t valid_cols,
                           const Tensor* row_weights) {
  const char* op = "softmax_cross_entropy";
  const Args args(op, "logits", logits);
  args.rank("logits", logits, 2);
  const int64_t rows = logits.size(0), cols = logits.size(1);
  const int64_t valid = valid_cols == -1 ? cols : valid_cols;
  QARAC_CHECK(valid >= 1 && valid <= cols, op, ": valid_cols ", valid_cols, " is outside [1, ",
              cols, "] (the columns of logits ", logits.str(), ", or -1 for all)");
  args.index("targets", targets, {rows});
  args.accumulation("losses", losses, {rows});
  if (dlogits) args.compute("dlogits", *dlogits, logits.shape());
  if (row_weights) args.accumulation("row_weights", *row_weights, {rows});
#ifdef QARAC_HAVE_CUDA
  if (args.cuda())
    return cuda::softmax_cross_entropy(logits.dtype(), logits.raw(), targets.data<int32_t>(), rows,
                                       cols, valid, ignore_index, losses.data<float>(),
                                       dlogits ? dlogits->raw() : nullptr, dloss,
                                       row_weights ? row_weights->data<float>() : nullptr);
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::softmax_cross_entropy(logits.data<T>(), targets.data<int32_t>(), rows, cols, valid,
                               ignore_index, losses.data<T>(),
                               dlogits ? dlogits->data<T>() : nullptr, static_cast<T>(dloss),
                               row_weights ? row_weights->data<T>() : nullptr);
  });
}

// ---- Mean squared error of rows -----------------------------------------------------------------
void mse_loss(const Tensor& a, const Tensor& b, Tensor& losses, Tensor* da, Tensor* db,
              double dloss) {
  const char* op = "mse_loss";
  const Args args(op, "a", a);
  args.rank("a", a, 2);
  const int64_t rows = a.size(0), k = a.size(1);
  QARAC_CHECK(k >= 1, op, ": a ", a.str(), " has no columns to average over");
  args.compute("b", b, a.shape());
  args.accumulation("losses", losses, {rows});
  if (da) args.compute("da", *da, a.shape());
  if (db) args.compute("db", *db, a.shape());
#ifdef QARAC_HAVE_CUDA
  if (args.cuda())
    return cuda::mse_loss(a.dtype(), a.raw(), b.raw(), rows, k, losses.data<float>(),
                          da ? da->raw() : nullptr, db ? db->raw() : nullptr, dloss);
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::mse_loss(a.data<T>(), b.data<T>(), rows, k, losses.data<T>(), da ? da->data<T>() : nullptr,
                  db ? db->data<T>() : nullptr, static_cast<T>(dloss));
  });
}

// ---- Row gather and scatter ---------------------------------------------------------------------
void gather_rows(const Tensor& src, const Tensor& index, Tensor& out) {
  const Args args("gather_rows", "src", src);
  args.rank("src", src, 2);
  args.index("index", index);
  args.rank("index", index, 1);
  const int64_t n = src.size(0), m = index.size(0), d = src.size(1);
  args.compute("out", out, {m, d});
#ifdef QARAC_HAVE_CUDA
  if (args.cuda())
    return cuda::gather_rows(src.dtype(), src.raw(), index.data<int32_t>(), m, d, out.raw());
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::gather_rows(src.data<T>(), n, index.data<int32_t>(), m, d, out.data<T>());
  });
}

void scatter_rows(const Tensor& src, const Tensor& index, Tensor& out) {
  const Args args("scatter_rows", "src", src);
  args.rank("src", src, 2);
  args.rank("out", out, 2);
  const int64_t m = src.size(0), n = out.size(0), d = src.size(1);
  args.index("index", index, {m});
  args.compute("out", out, {n, d});
#ifdef QARAC_HAVE_CUDA
  if (args.cuda())
    return cuda::scatter_rows(src.dtype(), src.raw(), index.data<int32_t>(), m, d, out.raw());
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::scatter_rows(src.data<T>(), m, index.data<int32_t>(), n, d, out.data<T>());
  });
}

// ---- Sequence sums and the pooling head ---------------------------------------------------------
void segment_sum(const Tensor& x, const Sequences& seqs, Tensor& out) {
  const Args args("segment_sum", "x", x);
  args.rank("x", x, 2);
  args.sequences(seqs, "x", x.size(0));
  const int64_t batch = seqs.count(), d = x.size(1);
  args.compute("out", out, {batch, d});
#ifdef QARAC_HAVE_CUDA
  if (args.cuda())
    return cuda::segment_sum(x.dtype(), x.raw(), seqs.offsets.data<int32_t>(), batch, d, out.raw());
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::segment_sum(x.data<T>(), seqs.host.data(), batch, d, out.data<T>());
  });
}

void segment_sum_backward(const Tensor& dout, const Sequences& seqs, Tensor& dx, bool accumulate) {
  const Args args("segment_sum_backward", "dout", dout);
  args.rank("dout", dout, 2);
  args.rank("dx", dx, 2);
  args.sequences(seqs, "dx", dx.size(0));
  const int64_t batch = seqs.count(), tokens = seqs.tokens(), d = dout.size(1);
  args.compute("dout", dout, {batch, d});
  args.compute("dx", dx, {tokens, d});
#ifdef QARAC_HAVE_CUDA
  if (args.cuda())
    return cuda::segment_sum_backward(dout.dtype(), dout.raw(), seqs.offsets.data<int32_t>(), batch,
                                      tokens, d, dx.raw(), accumulate);
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::segment_sum_backward(dout.data<T>(), seqs.host.data(), batch, d, dx.data<T>(), accumulate);
  });
}

void pooling_forward(const Tensor& x, const Tensor& l, const Tensor& g, const Sequences& seqs,
                     double eps, Tensor& v, Tensor& a) {
  const Args args("pooling_forward", "x", x);
  args.rank("x", x, 2);
  args.sequences(seqs, "x", x.size(0));
  args.positive_eps(eps);
  const int64_t batch = seqs.count(), tokens = x.size(0), d = x.size(1);
  args.compute("l", l, x.shape());
  args.compute("g", g, {batch, d});
  args.compute("v", v, {batch, d});
  args.accumulation("a", a, {tokens});
#ifdef QARAC_HAVE_CUDA
  if (args.cuda())
    return cuda::pooling_forward(x.dtype(), x.raw(), l.raw(), g.raw(), seqs.offsets.data<int32_t>(),
                                 batch, tokens, d, eps, v.raw(), a.data<float>());
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::pooling_forward(x.data<T>(), l.data<T>(), g.data<T>(), seqs.host.data(), batch, d,
                         static_cast<T>(eps), v.data<T>(), a.data<T>());
  });
}

void pooling_backward(const Tensor& dv, const Tensor& x, const Tensor& l, const Tensor& g,
                      const Tensor& a, const Sequences& seqs, double eps, Tensor& dx, Tensor& dl,
                      Tensor& dg) {
  const Args args("pooling_backward", "x", x);
  args.rank("x", x, 2);
  args.sequences(seqs, "x", x.size(0));
  args.positive_eps(eps);
  const int64_t batch = seqs.count(), tokens = x.size(0), d = x.size(1);
  args.compute("dv", dv, {batch, d});
  args.compute("l", l, x.shape());
  args.compute("g", g, {batch, d});
  args.accumulation("a", a, {tokens});
  args.compute("dx", dx, x.shape());
  args.compute("dl", dl, x.shape());
  args.compute("dg", dg, {batch, d});
#ifdef QARAC_HAVE_CUDA
  if (args.cuda())
    return cuda::pooling_backward(x.dtype(), dv.raw(), x.raw(), l.raw(), g.raw(), a.data<float>(),
                                  seqs.offsets.data<int32_t>(), batch, tokens, d, eps, dx.raw(),
                                  dl.raw(), dg.raw());
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::pooling_backward(dv.data<T>(), x.data<T>(), l.data<T>(), g.data<T>(), a.data<T>(),
                          seqs.host.data(), batch, d, static_cast<T>(eps), dx.data<T>(),
                          dl.data<T>(), dg.data<T>());
  });
}

// ---- Cosine similarity
// ------------------------------------------------------------------------------
void cosine_forward(const Tensor& a, const Tensor& b, double eps, Tensor& out) {
  const Args args("cosine_forward", "a", a);
  args.rank("a", a, 2);
  args.positive_eps(eps);
  const int64_t rows = a.size(0), d = a.size(1);
  args.compute("b", b, a.shape());
  args.accumulation("out", out, {rows});
#ifdef QARAC_HAVE_CUDA
  if (args.cuda())
    return cuda::cosine_forward(a.dtype(), a.raw(), b.raw(), rows, d, eps, out.data<float>());
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::cosine_forward(a.data<T>(), b.data<T>(), rows, d, static_cast<T>(eps), out.data<T>());
  });
}

void cosine_backward(const Tensor& dout, const Tensor& a, const Tensor& b, double eps, Tensor& da,
                     Tensor& db) {
  const Args args("cosine_backward", "a", a);
  args.rank("a", a, 2);
  args.positive_eps(eps);
  const int64_t rows = a.size(0), d = a.size(1);
  args.accumulation("dout", dout, {rows});
  args.compute("b", b, a.shape());
  args.compute("da", da, a.shape());
  args.compute("db", db, a.shape());
#ifdef QARAC_HAVE_CUDA
  if (args.cuda())
    return cuda::cosine_backward(a.dtype(), dout.data<float>(), a.raw(), b.raw(), rows, d, eps,
                                 da.raw(), db.raw());
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::cosine_backward(dout.data<T>(), a.data<T>(), b.data<T>(), rows, d, static_cast<T>(eps),
                         da.data<T>(), db.data<T>());
  });
}

// ---- Optimiser and gradient norm ----------------------------------------------------------------
namespace {

// The checks adamw_update and nadam_update share: param, grad, m, v and the compute copy, the
// 1-based step, betas and the non-negative rates. Returns the checked arguments.
template <class Config>
Args check_optimizer_args(const char* op, const Tensor& param, const Tensor& grad, const Tensor& m,
                          const Tensor& v, const Config& config, const Tensor* param_copy) {
  Args args(op, "param", param, Role::accumulation);
  args.accumulation("grad", grad, param.shape());
  args.accumulation("m", m, param.shape());
  args.accumulation("v", v, param.shape());
  if (param_copy) {
    // The compute copy: X, which is A itself on the CPU and f32 or bf16 on CUDA.
    const Tensor& c = *param_copy;
    QARAC_CHECK(c.defined() && c.is_contiguous(), op,
                ": param_copy is undefined or not contiguous");
    QARAC_CHECK(c.device() == param.device() && c.shape() == param.shape(), op, ": param_copy ",
                c.str(), " does not match param ", param.str(), " in device or shape");
    QARAC_CHECK(args.cuda() ? c.dtype() == DType::f32 || c.dtype() == DType::bf16
                            : c.dtype() == param.dtype(),
                op, ": param_copy ", c.str(), " is not a compute dtype for param ", param.str());
  }
  QARAC_CHECK(config.step >= 1, op, ": step ", config.step, " must be >= 1 (it is 1-based)");
  QARAC_CHECK(config.beta1 >= 0 && config.beta1 < 1 && config.beta2 >= 0 && config.beta2 < 1, op,
              ": betas (", config.beta1, ", ", config.beta2, ") must lie in [0, 1)");
  QARAC_CHECK(config.lr >= 0 && config.eps >= 0 && config.weight_decay >= 0, op, ": lr ", config.lr,
              ", eps ", config.eps, " and weight_decay ", config.weight_decay, " must be >= 0");
  return args;
}

}  // namespace

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamW& config,
                  Tensor* param_copy) {
  const Args args = check_optimizer_args("adamw_update", param, grad, m, v, config, param_copy);
  const double steps = static_cast<double>(config.step);
  const cpu::AdamWStep step{config.lr,
                            config.beta1,
                            config.beta2,
                            config.eps,
                            config.weight_decay,
                            config.grad_scale,
                            1.0 - std::pow(config.beta1, steps),
                            1.0 - std::pow(config.beta2, steps)};
#ifdef QARAC_HAVE_CUDA
  if (args.cuda()) {
    const cuda::AdamWArgs cuda_step{step.lr,
                                    step.beta1,
                                    step.beta2,
                                    step.eps,
                                    step.weight_decay,
                                    step.grad_scale,
                                    step.bias_correction1,
                                    step.bias_correction2};
    return cuda::adamw_update(param.data<float>(), grad.data<float>(), m.data<float>(),
                              v.data<float>(), param.numel(), cuda_step,
                              param_copy ? param_copy->dtype() : DType::f32,
                              param_copy ? param_copy->raw() : nullptr);
  }
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::adamw_update(param.data<T>(), grad.data<T>(), m.data<T>(), v.data<T>(), param.numel(),
                      step, param_copy ? param_copy->data<T>() : nullptr);
  });
}

double nadam_mu(const NAdam& config, int64_t t) {
  return config.beta1 * (1.0 - 0.5 * std::pow(0.96, static_cast<double>(t) * config.momentum_decay));
}

double nadam_mu_product(const NAdam& config) {
  double product = 1.0;
  for (int64_t t = 1; t <= config.step; ++t) product *= nadam_mu(config, t);
  return product;
}

void nadam_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const NAdam& config,
                  Tensor* param_copy) {
  const char* op = "nadam_update";
  const Args args = check_optimizer_args(op, param, grad, m, v, config, param_copy);
  QARAC_CHECK(config.momentum_decay >= 0, op, ": momentum_decay ", config.momentum_decay,
              " must be >= 0");
  // Π_t < 1 since β1 < 1, so 1 - Π_t is a valid denominator; Π_t > 0 unless β1 = 0 (μ_t >= β1 / 2),
  // so an unset product (0) is an error rather than a silently different optimiser.
  QARAC_CHECK(config.mu_product >= 0 && config.mu_product < 1 &&
                  (config.mu_product > 0 || config.beta1 == 0),
              op, ": mu_product ", config.mu_product,
              " is not a product of the momentum schedule (set it with nadam_mu_product)");
  const double mu = nadam_mu(config, config.step), mu_next = nadam_mu(config, config.step + 1);
  const cpu::NAdamStep step{config.lr,
                            config.beta1,
                            config.beta2,
                            config.eps,
                            config.weight_decay,
                            config.grad_scale,
                            config.decoupled_weight_decay,
                            1.0 - std::pow(config.beta2, static_cast<double>(config.step)),
                            config.lr * (1.0 - mu) / (1.0 - config.mu_product),
                            config.lr * mu_next / (1.0 - config.mu_product * mu_next)};
#ifdef QARAC_HAVE_CUDA
  if (args.cuda()) {
    const cuda::NAdamArgs cuda_step{step.lr,
                                    step.beta1,
                                    step.beta2,
                                    step.eps,
                                    step.weight_decay,
                                    step.grad_scale,
                                    step.decoupled_weight_decay,
                                    step.bias_correction2,
                                    step.grad_coef,
                                    step.momentum_coef};
    return cuda::nadam_update(param.data<float>(), grad.data<float>(), m.data<float>(),
                              v.data<float>(), param.numel(), cuda_step,
                              param_copy ? param_copy->dtype() : DType::f32,
                              param_copy ? param_copy->raw() : nullptr);
  }
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    cpu::nadam_update(param.data<T>(), grad.data<T>(), m.data<T>(), v.data<T>(), param.numel(),
                      step, param_copy ? param_copy->data<T>() : nullptr);
  });
}

void sum_of_squares(const std::vector<const Tensor*>& tensors, Tensor& out) {
  const char* op = "sum_of_squares";
  const Args args(op, "out", out, Role::accumulation);
  args.accumulation("out", out, {1});
  // One dtype for all inputs, whose accumulation dtype is out's: A itself, or X on CUDA.
  const DType dtype = tensors.empty() || !tensors[0] ? out.dtype() : tensors[0]->dtype();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::string name = "tensors[" + std::to_string(i) + "]";
    QARAC_CHECK(tensors[i], op, ": ", name, " is null");
    const Tensor& t = *tensors[i];
    QARAC_CHECK(t.defined() && t.is_contiguous(), op, ": ", name,
                " is undefined or not contiguous");
    QARAC_CHECK(t.device() == out.device(), op, ": ", name, " ", t.str(),
                " is not on the device of out ", out.str());
    QARAC_CHECK(t.dtype() == dtype && is_floating(dtype) &&
                    accumulation_dtype(dtype) == out.dtype() &&
                    (args.cuda() || dtype == out.dtype()),
                op, ": ", name, " ", t.str(), " does not go with tensors[0] and out ", out.str(),
                " (one dtype for all, whose accumulation dtype is out's)");
  }
#ifdef QARAC_HAVE_CUDA
  if (args.cuda()) {
    std::vector<cuda::Span> spans;
    spans.reserve(tensors.size());
    for (const Tensor* t : tensors) spans.push_back({t->raw(), t->numel()});
    return cuda::sum_of_squares(dtype, spans, out.data<float>());
  }
#endif
  args.run_cpu([&](auto tag) {
    using T = decltype(tag);
    double total = 0;
    for (const Tensor* t : tensors) total += cpu::sum_of_squares(t->data<T>(), t->numel());
    out.data<T>()[0] = static_cast<T>(total);
  });
}

}  // namespace qarac::ops
