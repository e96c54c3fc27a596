// The op dispatcher: checks every argument against the contract in ops.h (defined, contiguous,
// one device, shapes, and the dtype rules of the tensors' backend: which compute dtypes X it runs
// and which accumulation dtype A goes with each), then calls the entry of that backend
// (kernels/backend.h). Each op is checked here once, whatever the backend, in the vocabulary of
// kernels/op_args.h; a build without the CUDA backend refuses CUDA tensors with a message naming
// the op. The optimiser ops and the gradient norm are dispatched by ops_optimizer.cpp.
#include "kernels/ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "kernels/backend.h"
#include "kernels/op_args.h"

namespace qarac::ops {

using checks::Args;
using checks::check_probability;
using checks::Layout;
using checks::Role;

Sequences Sequences::from_lengths(const std::vector<int32_t>& lengths, Device device,
                                  const std::vector<uint64_t>& ids) {
  QARAC_CHECK(ids.empty() || ids.size() == lengths.size(), "Sequences::from_lengths: ", ids.size(),
              " ids for ", lengths.size(), " sequences");
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
  s.host_ids = ids;
  if (ids.empty())
    for (size_t b = 0; b < lengths.size(); ++b) s.host_ids.push_back(b);
  // The device copy as i64 (the tensor dtype of 64-bit integers) with the same bits; the kernels
  // read it back as uint64_t.
  const std::vector<int64_t> bits(s.host_ids.begin(), s.host_ids.end());
  s.ids = Tensor::from_vector(bits, {static_cast<int64_t>(bits.size())}, device);
  return s;
}

namespace {

// Shared by gemm and gemm_batched: a [.., M,K] or [.., K,M], b [.., K,N] or [.., N,K] ->
// c [.., M,N] in X or A, where ".." is the leading batch dimension when `batched`.
Args check_gemm(const char* op, bool batched, const Tensor& a, const Tensor& b, const Tensor& c,
                bool trans_a, bool trans_b) {
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
  return args;
}

}  // namespace

// ---- GEMM ------------------------------------------------------------------------------------
void gemm(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b, double alpha,
          double beta) {
  check_gemm("gemm", false, a, b, c, trans_a, trans_b)
      .backend()
      .gemm(a, b, c, trans_a, trans_b, alpha, beta);
}

void gemm_batched(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b,
                  double alpha, double beta) {
  check_gemm("gemm_batched", true, a, b, c, trans_a, trans_b)
      .backend()
      .gemm_batched(a, b, c, trans_a, trans_b, alpha, beta);
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
  QARAC_CHECK(act == Activation::gelu || !pre, op, ": pre is only written with Activation::gelu");
  if (pre) args.compute("pre", *pre, {rows, out});
  args.backend().linear_forward(x, w, bias, y, act, pre);
}

void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor& dw,
                     Tensor* dbias, const Tensor* input_gelu_pre, bool accumulate_dx,
                     Tensor* input_gelu_dbias) {
  const char* op = "linear_backward";
  const Args args(op, "x", x);
  args.rank("x", x, 2);
  args.rank("w", w, 2);
  const int64_t rows = x.size(0), in = x.size(1), out = w.size(0);
  args.compute("w", w, {out, in});
  args.compute("dy", dy, {rows, out});
  args.accumulation("dw", dw, {out, in});
  if (dbias) args.accumulation("dbias", *dbias, {out});
  if (dx) args.compute("dx", *dx, {rows, in});
  if (input_gelu_pre) {
    QARAC_CHECK(dx, op, ": input_gelu_pre is given but dx is not");
    QARAC_CHECK(!accumulate_dx, op, ": input_gelu_pre cannot be combined with accumulate_dx");
    args.compute("input_gelu_pre", *input_gelu_pre, {rows, in});
  }
  if (input_gelu_dbias) {
    QARAC_CHECK(input_gelu_pre, op, ": input_gelu_dbias is given but input_gelu_pre is not");
    args.accumulation("input_gelu_dbias", *input_gelu_dbias, {in});
  }
  args.backend().linear_backward(x, w, dy, dx, dw, dbias, input_gelu_pre, accumulate_dx,
                                 input_gelu_dbias);
}

// ---- Elementwise and bias --------------------------------------------------------------------
void bias_add(Tensor& y, const Tensor& bias) {
  const Args args("bias_add", "y", y);
  args.rank("y", y, 2);
  args.compute("bias", bias, {y.size(1)});
  args.backend().bias_add(y, bias);
}

void bias_backward(const Tensor& dy, Tensor& dbias) {
  const Args args("bias_backward", "dy", dy);
  args.rank("dy", dy, 2);
  args.accumulation("dbias", dbias, {dy.size(1)});
  args.backend().bias_backward(dy, dbias);
}

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  const Args args("add", "a", a);
  args.compute("b", b, a.shape());
  args.compute("out", out, a.shape());
  args.backend().add(a, b, out);
}

void accumulate(Tensor& dst, const Tensor& src) {
  const Args args("accumulate", "dst", dst);
  args.compute("src", src, dst.shape());
  args.backend().accumulate(dst, src);
}

void scale(Tensor& x, double factor) {
  const Args args("scale", "x", x);
  args.backend().scale(x, factor);
}

// ---- Embeddings --------------------------------------------------------------------------------
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out, bool accumulate) {
  const Args args("embedding_forward", "table", table);
  args.rank("table", table, 2);
  args.index("ids", ids);
  args.rank("ids", ids, 1);
  args.compute("out", out, {ids.size(0), table.size(1)});
  args.backend().embedding_forward(ids, table, out, accumulate);
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  const Args args("embedding_backward", "dout", dout);
  args.index("ids", ids);
  args.rank("ids", ids, 1);
  args.rank("dtable", dtable, 2);
  args.compute("dout", dout, {ids.size(0), dtable.size(1)});
  args.accumulation("dtable", dtable);
  args.backend().embedding_backward(ids, dout, dtable);
}

// ---- LayerNorm ----------------------------------------------------------------------------------
namespace {

// What hidden dropout with probability p over `seqs` needs of the rows of t (named `name`): the
// sequences cover them, p is a probability, the draws' limits hold.
void check_hidden_dropout(const char* op, const Args& args, const char* name, const Tensor& t,
                          double p, const Sequences& seqs) {
  args.sequences(seqs, name, t.size(0));
  check_probability(op, p);
  if (p > 0) {
    checks::draw_limit(op, "row width (columns of x)", t.size(1), kRowWidthBits);
    checks::draw_limit(op, "longest sequence (seqs.max_len)", seqs.max_len, kSequencePositionBits);
  }
}

// layernorm_forward (b and sum null) and add_layernorm_forward (sum = a + b normalised).
Args check_layernorm(const char* op, const Tensor& a, const Tensor* b, const Tensor& gamma,
                     const Tensor& beta, double eps, const Tensor* sum, const Tensor& y,
                     const Tensor& mean, const Tensor& rstd) {
  const char* input = b ? "a" : "x";
  const Args args(op, input, a);
  args.rank(input, a, 2);
  const int64_t rows = a.size(0), cols = a.size(1);
  args.positive_eps(eps);
  if (b) {
    args.compute("b", *b, a.shape());
    args.compute("sum", *sum, a.shape());
  }
  args.compute("gamma", gamma, {cols});
  args.compute("beta", beta, {cols});
  args.compute("y", y, a.shape());
  args.accumulation("mean", mean, {rows});
  args.accumulation("rstd", rstd, {rows});
  return args;
}

}  // namespace

void layernorm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps,
                       Tensor& y, Tensor& mean, Tensor& rstd) {
  check_layernorm("layernorm_forward", x, nullptr, gamma, beta, eps, nullptr, y, mean, rstd)
      .backend()
      .layernorm_forward(x, gamma, beta, eps, y, mean, rstd);
}

void add_layernorm_forward(const Tensor& a, const Tensor& b, const Tensor& gamma,
                           const Tensor& beta, double eps, Tensor& sum, Tensor& y, Tensor& mean,
                           Tensor& rstd, const BranchDropout* branch_dropout) {
  const char* op = "add_layernorm_forward";
  const Args args = check_layernorm(op, a, &b, gamma, beta, eps, &sum, y, mean, rstd);
  if (branch_dropout) {
    QARAC_CHECK(branch_dropout->seqs, op, ": branch_dropout has no sequences");
    check_hidden_dropout(op, args, "a", a, branch_dropout->p, *branch_dropout->seqs);
  }
  args.backend().add_layernorm_forward(a, b, gamma, beta, eps, sum, y, mean, rstd, branch_dropout);
}

void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                        const Tensor& rstd, Tensor& dx, Tensor& dgamma, Tensor& dbeta,
                        const BranchDropout* branch_dropout, Tensor* dbranch, Tensor* dbias_branch) {
  const char* op = "layernorm_backward";
  const Args args(op, "x", x);
  args.rank("x", x, 2);
  const int64_t rows = x.size(0), cols = x.size(1);
  args.compute("dy", dy, x.shape());
  args.compute("gamma", gamma, {cols});
  args.accumulation("mean", mean, {rows});
  args.accumulation("rstd", rstd, {rows});
  args.compute("dx", dx, x.shape());
  args.accumulation("dgamma", dgamma, {cols});
  args.accumulation("dbeta", dbeta, {cols});
  QARAC_CHECK(!branch_dropout == !dbranch, op, ": branch_dropout and dbranch come together (",
              branch_dropout ? "dbranch" : "branch_dropout", " is missing)");
  if (branch_dropout) {
    QARAC_CHECK(branch_dropout->seqs, op, ": branch_dropout has no sequences");
    check_hidden_dropout(op, args, "x", x, branch_dropout->p, *branch_dropout->seqs);
    args.compute("dbranch", *dbranch, x.shape());
    QARAC_CHECK(dbranch->raw() != dx.raw(), op, ": dbranch ", dbranch->str(),
                " is dx: the gradient of the residual and of the branch need their own tensors");
  }
  if (dbias_branch) {
    args.accumulation("dbias_branch", *dbias_branch, {cols});
    QARAC_CHECK(dx.raw() != dy.raw(), op, ": dx ", dx.str(),
                " is dy: with dbias_branch, dy is read after dx is written");
  }
  args.backend().layernorm_backward(dy, x, gamma, mean, rstd, dx, dgamma, dbeta, branch_dropout,
                                    dbranch, dbias_branch);
}

// ---- GELU ---------------------------------------------------------------------------------------
void gelu_forward(const Tensor& x, Tensor& y) {
  const Args args("gelu_forward", "x", x);
  args.compute("y", y, x.shape());
  args.backend().gelu_forward(x, y);
}

void gelu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  const Args args("gelu_backward", "x", x);
  args.compute("dy", dy, x.shape());
  args.compute("dx", dx, x.shape());
  args.backend().gelu_backward(x, dy, dx);
}

// ---- Dropout ------------------------------------------------------------------------------------
namespace {

// Forward (x -> y) and backward (dy -> dx) take the same arguments: [T, C] over seqs.
Args check_dropout(const char* op, const char* in_name, const Tensor& in, const char* out_name,
                   double p, const Sequences& seqs, const Tensor& out) {
  const Args args(op, in_name, in);
  args.rank(in_name, in, 2);
  args.compute(out_name, out, in.shape());
  check_hidden_dropout(op, args, in_name, in, p, seqs);
  return args;
}

}  // namespace

void dropout_forward(const Tensor& x, double p, const RngKey& key, const Sequences& seqs,
                     Tensor& y) {
  check_dropout("dropout_forward", "x", x, "y", p, seqs, y)
      .backend()
      .dropout_forward(x, p, key, seqs, y);
}

void dropout_backward(const Tensor& dy, double p, const RngKey& key, const Sequences& seqs,
                      Tensor& dx) {
  check_dropout("dropout_backward", "dy", dy, "dx", p, seqs, dx)
      .backend()
      .dropout_backward(dy, p, key, seqs, dx);
}

// ---- Attention ----------------------------------------------------------------------------------
namespace {

// The checks both directions share: q [T, H*Dh] (contiguous or row-strided) split into `heads`,
// the sequences over its T rows, the dropout probability. Each direction then checks k and v
// for q's shape and row stride, and dq, dk, dv for q's shape and one row stride of their own:
// the kernels address each of the two groups with one row stride.
void check_attention_layout(const char* op, const Args& args, const Tensor& q,
                            const Sequences& seqs, int64_t heads, double dropout_p) {
  args.rank("q", q, 2, Layout::row_strided);
  QARAC_CHECK(heads > 0 && q.size(1) > 0 && q.size(1) % heads == 0, op, ": q ", q.str(),
              " does not split into ", heads, " heads");
  args.sequences(seqs, "q", q.size(0));
  check_probability(op, dropout_p);
  if (dropout_p > 0) {
    checks::draw_limit(op, "heads", heads, kHeadBits);
    checks::draw_limit(op, "longest sequence (seqs.max_len)", seqs.max_len, kSequencePositionBits);
  }
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Sequences& seqs,
                       int64_t heads, bool causal, double dropout_p, const RngKey& dropout_key,
                       Tensor& out, Tensor& lse) {
  const char* op = "attention_forward";
  const Args args(op, "q", q, Role::compute, Layout::row_strided);
  check_attention_layout(op, args, q, seqs, heads, dropout_p);
  args.compute_rows("k", k, q.shape(), "q", q);
  args.compute_rows("v", v, q.shape(), "q", q);
  args.compute("out", out, q.shape());
  args.accumulation("lse", lse, {heads, q.size(0)});
  args.backend().attention_forward(q, k, v, seqs, heads, causal, dropout_p, dropout_key, out, lse);
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const Sequences& seqs, int64_t heads,
                        bool causal, double dropout_p, const RngKey& dropout_key, Tensor& dq,
                        Tensor& dk, Tensor& dv) {
  const char* op = "attention_backward";
  const Args args(op, "q", q, Role::compute, Layout::row_strided);
  check_attention_layout(op, args, q, seqs, heads, dropout_p);
  args.compute("dout", dout, q.shape());
  args.compute_rows("k", k, q.shape(), "q", q);
  args.compute_rows("v", v, q.shape(), "q", q);
  args.compute("out", out, q.shape());
  args.accumulation("lse", lse, {heads, q.size(0)});
  args.compute("dq", dq, q.shape(), Layout::row_strided);
  args.compute_rows("dk", dk, q.shape(), "dq", dq);
  args.compute_rows("dv", dv, q.shape(), "dq", dq);
  args.backend().attention_backward(dout, q, k, v, out, lse, seqs, heads, causal, dropout_p,
                                    dropout_key, dq, dk, dv);
}

void attention_over_ranges(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& ranges,
                           int64_t heads, Tensor& out) {
  const char* op = "attention_over_ranges";
  const Args args(op, "q", q, Role::compute, Layout::row_strided);
  args.rank("q", q, 2, Layout::row_strided);
  QARAC_CHECK(heads > 0 && q.size(1) > 0 && q.size(1) % heads == 0, op, ": q ", q.str(),
              " does not split into ", heads, " heads");
  args.rank("k", k, 2, Layout::row_strided);
  args.compute("k", k, {k.size(0), q.size(1)}, Layout::row_strided);
  args.compute_rows("v", v, k.shape(), "k", k);
  args.index("ranges", ranges, {q.size(0), 2});
  args.compute("out", out, q.shape());
  args.backend().attention_over_ranges(q, k, v, ranges, heads, out);
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
  args.backend().softmax_cross_entropy(logits, targets, ignore_index, losses, dlogits, dloss, valid,
                                       row_weights);
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
  args.backend().mse_loss(a, b, losses, da, db, dloss);
}

// ---- Row gather and scatter ---------------------------------------------------------------------
void gather_rows(const Tensor& src, const Tensor& index, Tensor& out) {
  const Args args("gather_rows", "src", src);
  args.rank("src", src, 2);
  args.index("index", index);
  args.rank("index", index, 1);
  args.compute("out", out, {index.size(0), src.size(1)});
  args.backend().gather_rows(src, index, out);
}

void scatter_rows(const Tensor& src, const Tensor& index, Tensor& out) {
  const Args args("scatter_rows", "src", src);
  args.rank("src", src, 2);
  args.rank("out", out, 2);
  args.index("index", index, {src.size(0)});
  args.compute("out", out, {out.size(0), src.size(1)});
  args.backend().scatter_rows(src, index, out);
}

// ---- Sequence sums and the pooling head ---------------------------------------------------------
void segment_sum(const Tensor& x, const Sequences& seqs, Tensor& out) {
  const Args args("segment_sum", "x", x);
  args.rank("x", x, 2);
  args.sequences(seqs, "x", x.size(0));
  args.compute("out", out, {seqs.count(), x.size(1)});
  args.backend().segment_sum(x, seqs, out);
}

void segment_sum_backward(const Tensor& dout, const Sequences& seqs, Tensor& dx, bool accumulate) {
  const Args args("segment_sum_backward", "dout", dout);
  args.rank("dout", dout, 2);
  args.rank("dx", dx, 2);
  args.sequences(seqs, "dx", dx.size(0));
  args.compute("dout", dout, {seqs.count(), dout.size(1)});
  args.compute("dx", dx, {seqs.tokens(), dout.size(1)});
  args.backend().segment_sum_backward(dout, seqs, dx, accumulate);
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
  args.backend().pooling_forward(x, l, g, seqs, eps, v, a);
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
  args.backend().pooling_backward(dv, x, l, g, a, seqs, eps, dx, dl, dg);
}

// ---- Cosine similarity --------------------------------------------------------------------------
void cosine_forward(const Tensor& a, const Tensor& b, double eps, Tensor& out) {
  const Args args("cosine_forward", "a", a);
  args.rank("a", a, 2);
  args.positive_eps(eps);
  args.compute("b", b, a.shape());
  args.accumulation("out", out, {a.size(0)});
  args.backend().cosine_forward(a, b, eps, out);
}

void cosine_backward(const Tensor& dout, const Tensor& a, const Tensor& b, double eps, Tensor& da,
                     Tensor& db) {
  const Args args("cosine_backward", "a", a);
  args.rank("a", a, 2);
  args.positive_eps(eps);
  args.accumulation("dout", dout, {a.size(0)});
  args.compute("b", b, a.shape());
  args.compute("da", da, a.shape());
  args.compute("db", db, a.shape());
  args.backend().cosine_backward(dout, a, b, eps, da, db);
}

}  // namespace qarac::ops
