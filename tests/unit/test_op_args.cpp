// Every argument check of the op dispatcher (kernels/ops.cpp, in the vocabulary of
// kernels/op_args.h) has a case that breaks exactly that check in an otherwise valid call and
// expects the error, whose reason starts with "<op>: <argument>". A table holds one valid call of
// every op of kernels/ops.h and the contract of each tensor argument (its role, whether its rank
// is checked, a shape that breaks only its shape check, whether it may be a row-strided view);
// the generic tests derive the cases of the checks every argument has (undefined, layout, dtype,
// rank, shape), and the tests after them cover each op's own checks, the sequences and
// Sequences::from_lengths.
// Not reachable on a build without a GPU: the device checks (a tensor on another device) and the
// refusal of CUDA tensors by a build without the CUDA backend.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/ops.h"

using namespace qarac;

namespace {

// What a tensor argument is to its op.
enum class Kind {
  reference,               // the tensor the call is checked against, in X
  reference_accumulation,  // the same in A (the optimizers' param, sum_of_squares' out)
  compute,                 // X
  accumulation,            // A
  index,                   // i32
};

struct Arg {
  std::string name;  // as the messages name it
  Kind kind;
  Shape shape;         // in the valid call
  bool ranked = false;  // the op checks its number of dimensions
  Shape bad_shape{};    // breaks only its shape check; empty: no shape beyond the rank is checked
  bool row_strided = false;  // may also be a row-strided view (attention's q, k, v, dq, dk, dv)
};

// One valid call: the tensors by argument name, the sequences, and the call itself.
struct OpCall {
  std::string op;
  std::vector<Arg> args;
  std::map<std::string, Tensor> t;
  ops::Sequences seqs;
  double eps = 1e-5, p = 0.1;  // the eps of the ops that take one, the dropout probability
  int64_t heads = 2;
  std::function<void(OpCall&)> run;
  Tensor& operator[](const std::string& name) { return t.at(name); }
};

constexpr DType kX = DType::f64;  // the CPU's X and A in these calls
const RngKey kKey{1, 2, 3};

Tensor zeros(const Shape& shape, DType dtype = kX) { return Tensor::zeros(shape, dtype); }
Tensor ints(const std::vector<int32_t>& v) { return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}); }

// The valid tensor of `a`: zeros, or 0, 1, 2, ... for indices (distinct, as scatter_rows needs).
Tensor valid_tensor(const Arg& a) {
  if (a.kind != Kind::index) return zeros(a.shape);
  std::vector<int32_t> v(static_cast<size_t>(shape_numel(a.shape)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int32_t>(i);
  return ints(v);
}

// The calls: T = 4 tokens in sequences of 1 and 3, width d = 6 (2 heads of 3), B = 2 sequences,
// tables of 5 rows, 3 outputs of a dense layer. A shape with a 7 (or a 5 for 4 rows) is the one
// that breaks a shape check.
std::vector<OpCall> op_calls() {
  const Kind R = Kind::reference, RA = Kind::reference_accumulation, X = Kind::compute, A = Kind::accumulation,
             I = Kind::index;
  const Shape td = {4, 6}, tw = {4, 7}, rows = {4}, rows5 = {5}, cols = {6}, cols7 = {7}, bd = {2, 6}, bw = {2, 7};
  std::vector<OpCall> calls;
  const auto add = [&](const std::string& op, std::vector<Arg> args, std::function<void(OpCall&)> run) {
    OpCall c;
    c.op = op;
    for (const Arg& a : args) c.t[a.name] = valid_tensor(a);
    c.args = std::move(args);
    c.seqs = ops::Sequences::from_lengths({1, 3}, Device::cpu());
    c.run = std::move(run);
    calls.push_back(std::move(c));
  };
  add("gemm", {{"a", R, td, true}, {"b", X, {6, 5}, true}, {"c", X, {4, 5}, false, td}},
      [](OpCall& c) { ops::gemm(c["a"], c["b"], c["c"], false, false); });
  add("gemm_batched", {{"a", R, {2, 4, 6}, true}, {"b", X, {2, 6, 5}, true}, {"c", X, {2, 4, 5}, false, {2, 4, 6}}},
      [](OpCall& c) { ops::gemm_batched(c["a"], c["b"], c["c"], false, false); });
  add("linear_forward",
      {{"x", R, td, true}, {"w", X, {3, 6}, true, {3, 7}}, {"bias", X, {3}, false, rows},
       {"y", X, {4, 3}, false, {4, 4}}, {"pre", X, {4, 3}, false, {4, 4}}},
      [](OpCall& c) { ops::linear_forward(c["x"], c["w"], c["bias"], c["y"], ops::Activation::gelu, &c["pre"]); });
  add("linear_backward",
      {{"x", R, td, true}, {"w", X, {3, 6}, true, {3, 7}}, {"dy", X, {4, 3}, false, {4, 4}}, {"dx", X, td, false, tw},
       {"dw", A, {3, 6}, false, {3, 7}}, {"dbias", A, {3}, false, rows}, {"input_gelu_pre", X, td, false, tw}},
      [](OpCall& c) {
        ops::linear_backward(c["x"], c["w"], c["dy"], &c["dx"], c["dw"], &c["dbias"], &c["input_gelu_pre"]);
      });
  add("bias_add", {{"y", R, td, true}, {"bias", X, cols, false, cols7}},
      [](OpCall& c) { ops::bias_add(c["y"], c["bias"]); });
  add("bias_backward", {{"dy", R, td, true}, {"dbias", A, cols, false, cols7}},
      [](OpCall& c) { ops::bias_backward(c["dy"], c["dbias"]); });
  add("add", {{"a", R, td}, {"b", X, td, false, tw}, {"out", X, td, false, tw}},
      [](OpCall& c) { ops::add(c["a"], c["b"], c["out"]); });
  add("accumulate", {{"dst", R, td}, {"src", X, td, false, tw}},
      [](OpCall& c) { ops::accumulate(c["dst"], c["src"]); });
  add("scale", {{"x", R, td}}, [](OpCall& c) { ops::scale(c["x"], 2); });
  add("embedding_forward", {{"table", R, {5, 6}, true}, {"ids", I, rows, true}, {"out", X, td, false, tw}},
      [](OpCall& c) { ops::embedding_forward(c["ids"], c["table"], c["out"]); });
  add("embedding_backward", {{"dout", R, td, false, tw}, {"ids", I, rows, true}, {"dtable", A, {5, 6}, true}},
      [](OpCall& c) { ops::embedding_backward(c["ids"], c["dout"], c["dtable"]); });
  add("layernorm_forward",
      {{"x", R, td, true}, {"gamma", X, cols, false, cols7}, {"beta", X, cols, false, cols7}, {"y", X, td, false, tw},
       {"mean", A, rows, false, rows5}, {"rstd", A, rows, false, rows5}},
      [](OpCall& c) { ops::layernorm_forward(c["x"], c["gamma"], c["beta"], c.eps, c["y"], c["mean"], c["rstd"]); });
  add("add_layernorm_forward",
      {{"a", R, td, true}, {"b", X, td, false, tw}, {"gamma", X, cols, false, cols7}, {"beta", X, cols, false, cols7},
       {"sum", X, td, false, tw}, {"y", X, td, false, tw}, {"mean", A, rows, false, rows5},
       {"rstd", A, rows, false, rows5}},
      [](OpCall& c) {
        ops::add_layernorm_forward(c["a"], c["b"], c["gamma"], c["beta"], c.eps, c["sum"], c["y"], c["mean"],
                                   c["rstd"]);
      });
  add("layernorm_backward",
      {{"x", R, td, true}, {"dy", X, td, false, tw}, {"gamma", X, cols, false, cols7}, {"mean", A, rows, false, rows5},
       {"rstd", A, rows, false, rows5}, {"dx", X, td, false, tw}, {"dgamma", A, cols, false, cols7},
       {"dbeta", A, cols, false, cols7}},
      [](OpCall& c) {
        ops::layernorm_backward(c["dy"], c["x"], c["gamma"], c["mean"], c["rstd"], c["dx"], c["dgamma"], c["dbeta"]);
      });
  add("gelu_forward", {{"x", R, td}, {"y", X, td, false, tw}}, [](OpCall& c) { ops::gelu_forward(c["x"], c["y"]); });
  add("gelu_backward", {{"x", R, td}, {"dy", X, td, false, tw}, {"dx", X, td, false, tw}},
      [](OpCall& c) { ops::gelu_backward(c["x"], c["dy"], c["dx"]); });
  add("dropout_forward", {{"x", R, td, true}, {"y", X, td, false, tw}},
      [](OpCall& c) { ops::dropout_forward(c["x"], c.p, kKey, c.seqs, c["y"]); });
  add("dropout_backward", {{"dy", R, td, true}, {"dx", X, td, false, tw}},
      [](OpCall& c) { ops::dropout_backward(c["dy"], c.p, kKey, c.seqs, c["dx"]); });
  add("attention_forward",
      {{"q", R, td, true, {}, true}, {"k", X, td, false, tw, true}, {"v", X, td, false, tw, true},
       {"out", X, td, false, tw}, {"lse", A, {2, 4}, false, {2, 5}}},
      [](OpCall& c) {
        ops::attention_forward(c["q"], c["k"], c["v"], c.seqs, c.heads, true, c.p, kKey, c["out"], c["lse"]);
      });
  add("attention_backward",
      {{"dout", X, td, false, tw}, {"q", R, td, true, {}, true}, {"k", X, td, false, tw, true},
       {"v", X, td, false, tw, true}, {"out", X, td, false, tw}, {"lse", A, {2, 4}, false, {2, 5}},
       {"dq", X, td, false, tw, true}, {"dk", X, td, false, tw, true}, {"dv", X, td, false, tw, true}},
      [](OpCall& c) {
        ops::attention_backward(c["dout"], c["q"], c["k"], c["v"], c["out"], c["lse"], c.seqs, c.heads, true, c.p, kKey,
                                c["dq"], c["dk"], c["dv"]);
      });
  add("softmax_cross_entropy",
      {{"logits", R, td, true}, {"targets", I, rows, false, rows5}, {"losses", A, rows, false, rows5},
       {"dlogits", X, td, false, tw}, {"row_weights", A, rows, false, rows5}},
      [](OpCall& c) {
        ops::softmax_cross_entropy(c["logits"], c["targets"], -100, c["losses"], &c["dlogits"], 1, 5,
                                   &c["row_weights"]);
      });
  add("mse_loss",
      {{"a", R, td, true}, {"b", X, td, false, tw}, {"losses", A, rows, false, rows5}, {"da", X, td, false, tw},
       {"db", X, td, false, tw}},
      [](OpCall& c) { ops::mse_loss(c["a"], c["b"], c["losses"], &c["da"], &c["db"]); });
  add("gather_rows", {{"src", R, {5, 6}, true}, {"index", I, rows, true}, {"out", X, td, false, tw}},
      [](OpCall& c) { ops::gather_rows(c["src"], c["index"], c["out"]); });
  add("scatter_rows", {{"src", R, td, true}, {"index", I, rows, false, rows5}, {"out", X, {5, 6}, true, {5, 7}}},
      [](OpCall& c) { ops::scatter_rows(c["src"], c["index"], c["out"]); });
  add("segment_sum", {{"x", R, td, true}, {"out", X, bd, false, bw}},
      [](OpCall& c) { ops::segment_sum(c["x"], c.seqs, c["out"]); });
  add("segment_sum_backward", {{"dout", R, bd, true, {3, 6}}, {"dx", X, td, true, tw}},
      [](OpCall& c) { ops::segment_sum_backward(c["dout"], c.seqs, c["dx"]); });
  add("pooling_forward",
      {{"x", R, td, true}, {"l", X, td, false, tw}, {"g", X, bd, false, bw}, {"v", X, bd, false, bw},
       {"a", A, rows, false, rows5}},
      [](OpCall& c) { ops::pooling_forward(c["x"], c["l"], c["g"], c.seqs, c.eps, c["v"], c["a"]); });
  add("pooling_backward",
      {{"dv", X, bd, false, bw}, {"x", R, td, true}, {"l", X, td, false, tw}, {"g", X, bd, false, bw},
       {"a", A, rows, false, rows5}, {"dx", X, td, false, tw}, {"dl", X, td, false, tw}, {"dg", X, bd, false, bw}},
      [](OpCall& c) {
        ops::pooling_backward(c["dv"], c["x"], c["l"], c["g"], c["a"], c.seqs, c.eps, c["dx"], c["dl"], c["dg"]);
      });
  add("cosine_forward", {{"a", R, td, true}, {"b", X, td, false, tw}, {"out", A, rows, false, rows5}},
      [](OpCall& c) { ops::cosine_forward(c["a"], c["b"], c.eps, c["out"]); });
  add("cosine_backward",
      {{"dout", A, rows, false, rows5}, {"a", R, td, true}, {"b", X, td, false, tw}, {"da", X, td, false, tw},
       {"db", X, td, false, tw}},
      [](OpCall& c) { ops::cosine_backward(c["dout"], c["a"], c["b"], c.eps, c["da"], c["db"]); });
  const std::vector<Arg> optimizer_args = {
      {"param", RA, {2, 3}}, {"grad", A, {2, 3}, false, {2, 4}}, {"m", A, {2, 3}, false, {2, 4}},
      {"v", A, {2, 3}, false, {2, 4}}};
  add("adamw_update", optimizer_args,
      [](OpCall& c) { ops::adamw_update(c["param"], c["grad"], c["m"], c["v"], ops::AdamW{}); });
  add("nadam_update", optimizer_args, [](OpCall& c) {
    ops::NAdam h;
    h.mu_product = ops::nadam_mu_product(h);
    ops::nadam_update(c["param"], c["grad"], c["m"], c["v"], h);
  });
  add("sum_of_squares", {{"out", RA, {1}, false, {2}}}, [](OpCall& c) {
    const Tensor a = zeros({2, 3}), b = zeros({4});
    ops::sum_of_squares({&a, &b}, c["out"]);
  });
  return calls;
}

// The call of `op`, fresh.
OpCall call_of(const std::string& op) {
  for (OpCall& c : op_calls())
    if (c.op == op) return c;
  ADD_FAILURE() << "no call of " << op;
  return {};
}

// The reason of a qarac::Error ("check error in `<statement>`: <reason> (<file>:<line> on <host>)").
std::string reason_of(const std::string& message) {
  const size_t begin = message.find("`: ");
  const size_t end = message.rfind(" (");
  if (begin == std::string::npos || end == std::string::npos || end < begin) return message;
  return message.substr(begin + 3, end - begin - 3);
}

// Runs `f`, expecting a qarac::Error whose reason starts with `prefix` and holds every `parts`.
void expect_error(const std::function<void()>& f, const std::string& prefix, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no qarac::Error; expected one starting '" << prefix << "'";
  } catch (const Error& e) {
    const std::string reason = reason_of(e.what());
    EXPECT_EQ(reason.rfind(prefix, 0), 0u) << "'" << prefix << "' does not start: " << reason;
    for (const std::string& p : parts)
      EXPECT_NE(reason.find(p), std::string::npos) << "'" << p << "' missing from: " << reason;
  }
}

// Runs the call `op` with its tensor `name` replaced by `bad`, expecting an error about `name`.
void expect_argument_error(const std::string& op, const std::string& name, const Tensor& bad,
                           const std::vector<std::string>& parts) {
  SCOPED_TRACE(op + " " + name + " " + (bad.defined() ? bad.str() : "undefined"));
  OpCall c = call_of(op);
  c[name] = bad;
  expect_error([&] { c.run(c); }, op + ": " + name + " ", parts);
}

// A view of the shape and dtype of `t` that is not contiguous (2 or more dimensions).
Tensor not_contiguous(const Tensor& t) {
  Shape wider = t.shape();
  wider.back() += 1;
  return Tensor::zeros(wider, t.dtype()).slice(-1, 0, t.shape().back());
}

// A view of the elements of `t` that is neither contiguous nor row-strided: its elements every
// other one, as a [.., 1] view with column stride 2 (the Tensor API makes no 2-D view whose
// column stride is not 1).
Tensor not_row_strided(const Tensor& t) {
  Shape pairs = t.shape();
  pairs.push_back(2);
  return Tensor::zeros(pairs, t.dtype()).slice(-1, 0, 1);
}

}  // namespace

// ---- The checks every tensor argument has -----------------------------------------------------

TEST(OpArgs, EveryOpHasAValidCallThatRuns) {
  const std::set<std::string> all = {
      "gemm", "gemm_batched", "linear_forward", "linear_backward", "bias_add", "bias_backward", "add",
      "accumulate", "scale", "embedding_forward", "embedding_backward", "layernorm_forward",
      "add_layernorm_forward", "layernorm_backward", "gelu_forward", "gelu_backward", "dropout_forward",
      "dropout_backward", "attention_forward", "attention_backward", "softmax_cross_entropy", "mse_loss",
      "gather_rows", "scatter_rows", "segment_sum", "segment_sum_backward", "pooling_forward",
      "pooling_backward", "cosine_forward", "cosine_backward", "adamw_update", "nadam_update", "sum_of_squares"};
  std::set<std::string> listed;
  for (OpCall& c : op_calls()) {
    SCOPED_TRACE(c.op);
    listed.insert(c.op);
    EXPECT_NO_THROW(c.run(c));
  }
  EXPECT_EQ(listed, all);
}

TEST(OpArgs, UndefinedTensors) {
  for (const OpCall& c : op_calls())
    for (const Arg& a : c.args) expect_argument_error(c.op, a.name, Tensor(), {"is undefined"});
}

TEST(OpArgs, NonContiguousTensors) {
  for (OpCall& c : op_calls())
    for (const Arg& a : c.args)
      if (a.row_strided)
        expect_argument_error(c.op, a.name, not_row_strided(c[a.name]),
                              {"with strides [12, 2, 1]", "is neither contiguous nor row-strided"});
      else if (c[a.name].dim() >= 2)
        expect_argument_error(c.op, a.name, not_contiguous(c[a.name]), {"is not contiguous"});
}

// The reference fixes X and A: a dtype the CPU does not compute (accumulate) in is refused; the
// others must be X, A or i32 as their role says.
TEST(OpArgs, WrongDtypes) {
  for (OpCall& c : op_calls())
    for (const Arg& a : c.args) {
      const Shape& shape = c[a.name].shape();
      switch (a.kind) {
        case Kind::reference:
          expect_argument_error(c.op, a.name, zeros(shape, DType::bf16), {"has dtype bf16", "ops compute in"});
          break;
        case Kind::reference_accumulation:
          expect_argument_error(c.op, a.name, zeros(shape, DType::bf16), {"has dtype bf16", "ops accumulate in"});
          break;
        case Kind::compute:
          expect_argument_error(c.op, a.name, zeros(shape, DType::f32), {"must be f64", "the compute dtype"});
          break;
        case Kind::accumulation:
          expect_argument_error(c.op, a.name, zeros(shape, DType::f32), {"must be f64", "the accumulation dtype"});
          break;
        case Kind::index:
          expect_argument_error(c.op, a.name, zeros(shape, DType::i64), {"must be i32"});
          break;
      }
    }
}

TEST(OpArgs, WrongRanks) {
  for (OpCall& c : op_calls())
    for (const Arg& a : c.args)
      if (a.ranked) {
        Shape more = c[a.name].shape();
        more.push_back(1);
        expect_argument_error(c.op, a.name, zeros(more, c[a.name].dtype()),
                              {"must have " + std::to_string(more.size() - 1) + " dimensions"});
      }
}

TEST(OpArgs, WrongShapes) {
  for (OpCall& c : op_calls())
    for (const Arg& a : c.args)
      if (!a.bad_shape.empty())
        expect_argument_error(c.op, a.name, zeros(a.bad_shape, c[a.name].dtype()),
                              {"expected shape " + shape_str(c[a.name].shape())});
}

// ---- Each op's own checks ----------------------------------------------------------------------

// Runs the call `op` changed by `change`, expecting the error that starts "<op>: <prefix>".
void expect_call_error(const std::string& op, const std::function<void(OpCall&)>& change, const std::string& prefix,
                       const std::vector<std::string>& parts) {
  SCOPED_TRACE(op);
  OpCall c = call_of(op);
  change(c);
  expect_error([&] { c.run(c); }, op + ": " + prefix, parts);
}

TEST(OpArgs, GemmOperandsMustFit) {
  expect_call_error("gemm", [](OpCall& c) { c["b"] = zeros({5, 5}); }, "b ", {"does not fit a"});  // K 5, not 6
  expect_call_error("gemm_batched", [](OpCall& c) { c["b"] = zeros({3, 6, 5}); }, "b ", {"does not fit a"});
}

// input_gelu_dbias, the bias gradient of the layer that produced input_gelu_pre: only with
// input_gelu_pre, shaped [in], in A.
TEST(OpArgs, InputGeluBiasGradient) {
  OpCall c = call_of("linear_backward");
  Tensor dbias = zeros({6}), narrow = zeros({7});
  const auto call = [&c](const Tensor* pre, Tensor* input_dbias) {
    return [&c, pre, input_dbias] {
      ops::linear_backward(c["x"], c["w"], c["dy"], &c["dx"], c["dw"], &c["dbias"], pre, false, input_dbias);
    };
  };
  EXPECT_NO_THROW(call(&c["input_gelu_pre"], &dbias)());
  expect_error(call(nullptr, &dbias), "linear_backward: input_gelu_dbias is given but input_gelu_pre is not", {});
  expect_error(call(&c["input_gelu_pre"], &narrow), "linear_backward: input_gelu_dbias ", {"[7]"});
}

TEST(OpArgs, LinearLayerCombinations) {
  OpCall c = call_of("linear_forward");
  expect_error([&] { ops::linear_forward(c["x"], c["w"], c["bias"], c["y"], ops::Activation::none, &c["pre"]); },
               "linear_forward: pre ", {"only written with Activation::gelu"});
  OpCall b = call_of("linear_backward");
  expect_error(
      [&] { ops::linear_backward(b["x"], b["w"], b["dy"], nullptr, b["dw"], &b["dbias"], &b["input_gelu_pre"]); },
      "linear_backward: input_gelu_pre ", {"dx is not"});
  expect_error(
      [&] { ops::linear_backward(b["x"], b["w"], b["dy"], &b["dx"], b["dw"], &b["dbias"], &b["input_gelu_pre"], true); },
      "linear_backward: input_gelu_pre ", {"accumulate_dx"});
}

TEST(OpArgs, EpsMustBePositive) {
  for (const char* op : {"layernorm_forward", "add_layernorm_forward", "pooling_forward", "pooling_backward",
                         "cosine_forward", "cosine_backward"})
    for (double eps : {0.0, -1e-5})
      expect_call_error(op, [&](OpCall& c) { c.eps = eps; }, "eps ", {"must be positive"});
}

TEST(OpArgs, DropoutProbability) {
  for (const char* op : {"dropout_forward", "dropout_backward", "attention_forward", "attention_backward"})
    for (double p : {1.0, -0.1, 1.5})
      expect_call_error(op, [&](OpCall& c) { c.p = p; }, "dropout probability", {"outside [0, 1)"});
  // Below 1, but 1 in the 16-bit draws: every element dropped, no finite keep scale.
  for (const char* op : {"dropout_forward", "dropout_backward", "attention_forward", "attention_backward"})
    expect_call_error(op, [&](OpCall& c) { c.p = 1 - std::ldexp(1.0, -18); }, "dropout probability",
                      {"rounds to 1 in the 16-bit draws"});
}

// Rows wider than 2^24 columns, sequences longer than 2^16 tokens, more than 2^8 heads: the limits
// of a dropout element index (core/rng.h). Without dropout the same sizes run.
TEST(OpArgs, DropoutDrawLimits) {
  const auto wide = [](OpCall& c) {
    for (auto& [name, t] : c.t) t = Tensor::empty({0, (int64_t{1} << 24) + 1}, kX);  // no storage
    c.seqs = ops::Sequences::from_lengths({}, Device::cpu());
  };
  const int32_t longest = (1 << 16) + 1;
  const auto tall = [&](OpCall& c) {
    for (auto& [name, t] : c.t) t = name == "lse" ? zeros({2, longest}) : zeros({longest, 2});
    c.seqs = ops::Sequences::from_lengths({longest}, Device::cpu());
  };
  const auto many_heads = [](OpCall& c) {
    for (auto& [name, t] : c.t) t = name == "lse" ? zeros({257, 4}) : zeros({4, 257});
    c.heads = 257;
  };
  for (const char* op : {"dropout_forward", "dropout_backward"}) {
    expect_call_error(op, wide, "row width", {"16777217", "2^24"});
    expect_call_error(op, tall, "longest sequence", {"65537", "2^16"});
  }
  for (const char* op : {"attention_forward", "attention_backward"}) {
    expect_call_error(op, tall, "longest sequence", {"65537", "2^16"});
    expect_call_error(op, many_heads, "heads", {"257", "2^8"});
  }
  for (const char* op : {"dropout_forward", "attention_backward"}) {
    OpCall c = call_of(op);
    op == std::string("dropout_forward") ? tall(c) : many_heads(c);
    c.p = 0;
    c.run(c);
  }
}

// The fused dropout of a residual branch (ops::BranchDropout): its probability and sequences are
// checked as dropout_forward's, and the backward pass's dbranch comes with it, shaped as dx and
// not dx itself; the branch's bias gradient (dbias_branch) is [C] and needs dx apart from dy.
TEST(OpArgs, BranchDropout) {
  OpCall c = call_of("layernorm_backward");
  const ops::BranchDropout drop{0.1, kKey, &c.seqs};
  Tensor dbranch = zeros({4, 6});
  const auto backward = [&](const ops::BranchDropout* d, Tensor* branch) {
    return [&c, d, branch] {
      ops::layernorm_backward(c["dy"], c["x"], c["gamma"], c["mean"], c["rstd"], c["dx"], c["dgamma"], c["dbeta"],
                              d, branch);
    };
  };
  EXPECT_NO_THROW(backward(&drop, &dbranch)());
  expect_error(backward(&drop, nullptr), "layernorm_backward: branch_dropout and dbranch come together",
               {"dbranch is missing"});
  expect_error(backward(nullptr, &dbranch), "layernorm_backward: branch_dropout and dbranch come together",
               {"branch_dropout is missing"});
  expect_error(backward(&drop, &c["dx"]), "layernorm_backward: dbranch ", {"is dx"});
  Tensor narrow = zeros({4, 7});
  expect_error(backward(&drop, &narrow), "layernorm_backward: dbranch ", {"[4, 7]"});
  const ops::BranchDropout certain{1.0, kKey, &c.seqs};
  expect_error(backward(&certain, &dbranch), "layernorm_backward: dropout probability", {"outside [0, 1)"});
  Tensor dbias = zeros({6}), narrow_bias = zeros({7});
  const auto with_bias = [&](Tensor* dx, Tensor* bias) {
    return [&c, dx, bias] {
      ops::layernorm_backward(c["dy"], c["x"], c["gamma"], c["mean"], c["rstd"], *dx, c["dgamma"], c["dbeta"],
                              nullptr, nullptr, bias);
    };
  };
  EXPECT_NO_THROW(with_bias(&c["dx"], &dbias)());
  expect_error(with_bias(&c["dx"], &narrow_bias), "layernorm_backward: dbias_branch ", {"[7]"});
  expect_error(with_bias(&c["dy"], &dbias), "layernorm_backward: dx ", {"is dy"});
  const ops::Sequences three = ops::Sequences::from_lengths({1, 2}, Device::cpu());
  const ops::BranchDropout short_seqs{0.1, kKey, &three};
  expect_error(backward(&short_seqs, &dbranch), "layernorm_backward: seqs covers 3 tokens", {"x"});

  OpCall f = call_of("add_layernorm_forward");
  const auto forward = [&f](const ops::BranchDropout* d) {
    return [&f, d] {
      ops::add_layernorm_forward(f["a"], f["b"], f["gamma"], f["beta"], f.eps, f["sum"], f["y"], f["mean"], f["rstd"],
                                 d);
    };
  };
  const ops::BranchDropout forward_drop{0.1, kKey, &f.seqs};
  EXPECT_NO_THROW(forward(&forward_drop)());
  const ops::BranchDropout no_seqs{0.1, kKey, nullptr};
  expect_error(forward(&no_seqs), "add_layernorm_forward: branch_dropout has no sequences", {});
  const ops::BranchDropout negative{-0.5, kKey, &f.seqs};
  expect_error(forward(&negative), "add_layernorm_forward: dropout probability", {"outside [0, 1)"});
}

TEST(OpArgs, AttentionHeadsMustSplitTheWidth) {
  for (const char* op : {"attention_forward", "attention_backward"}) {
    for (int64_t heads : {int64_t{4}, int64_t{0}, int64_t{-2}})
      expect_call_error(op, [&](OpCall& c) { c.heads = heads; }, "q ",
                        {"does not split into " + std::to_string(heads) + " heads"});
    const auto no_columns = [](OpCall& c) {
      for (auto& [name, t] : c.t)
        if (name != "lse") t = zeros({4, 0});
    };
    expect_call_error(op, no_columns, "q ", {"does not split into 2 heads"});
  }
}

namespace {

// The tensors `names` of call c become the column slices [0, 6), [6, 12), ... of one [4, width]
// tensor: row-strided views with row stride `width`, as one fused projection's output gives.
void fuse(OpCall& c, const std::vector<std::string>& names, int64_t width) {
  const Tensor buffer = zeros({4, width});
  for (size_t i = 0; i < names.size(); ++i) {
    const int64_t first = 6 * static_cast<int64_t>(i);
    c[names[i]] = buffer.slice(1, first, first + 6);
  }
}

}  // namespace

// q, k, v may be row-strided views sharing one row stride, and so may dq, dk, dv with a row
// stride of their own (the kernels address each group with one): the column slices of one
// buffer each run. A view with another row stride than its group's first is refused, named with
// the row strides of both (a different q names k, the first compared with it).
TEST(OpArgs, AttentionRowStridedViews) {
  for (const std::string op : {"attention_forward", "attention_backward"}) {
    const bool backward = op == "attention_backward";
    const auto fused = [&](OpCall& c) {
      fuse(c, {"q", "k", "v"}, 18);
      if (backward) fuse(c, {"dq", "dk", "dv"}, 20);
    };
    {
      SCOPED_TRACE(op + " fused");
      OpCall c = call_of(op);
      fused(c);
      EXPECT_NO_THROW(c.run(c));
    }
    const auto restrided = [&](const std::string& name) {
      return [=](OpCall& c) {
        fused(c);
        c[name] = zeros({4, 7}).slice(1, 0, 6);
      };
    };
    expect_call_error(op, restrided("q"), "k ", {"has row stride 18 but q has 7", "must share one row stride"});
    expect_call_error(op, restrided("k"), "k ", {"has row stride 7 but q has 18", "must share one row stride"});
    expect_call_error(op, restrided("v"), "v ", {"has row stride 7 but q has 18", "must share one row stride"});
    if (!backward) continue;
    expect_call_error(op, restrided("dq"), "dk ", {"has row stride 20 but dq has 7", "must share one row stride"});
    expect_call_error(op, restrided("dk"), "dk ", {"has row stride 7 but dq has 20", "must share one row stride"});
    expect_call_error(op, restrided("dv"), "dv ", {"has row stride 7 but dq has 20", "must share one row stride"});
  }
}

TEST(OpArgs, LossChecks) {
  OpCall s = call_of("softmax_cross_entropy");
  for (int64_t valid : {int64_t{0}, int64_t{7}, int64_t{-2}})
    expect_error([&] { ops::softmax_cross_entropy(s["logits"], s["targets"], -100, s["losses"], nullptr, 1, valid); },
                 "softmax_cross_entropy: valid_cols " + std::to_string(valid), {"outside [1, 6]"});
  ops::softmax_cross_entropy(s["logits"], s["targets"], -100, s["losses"], nullptr, 1, -1);  // -1: all columns
  const auto no_columns = [](OpCall& c) {
    for (const char* name : {"a", "b", "da", "db"}) c[name] = zeros({4, 0});
  };
  expect_call_error("mse_loss", no_columns, "a ", {"no columns"});
}

namespace {

// The checks adamw_update and nadam_update share, with hyper-parameters `base` (valid).
template <class Config>
void expect_optimizer_errors(const std::string& op, Config base) {
  const auto run = [&](const Config& config, Tensor* copy) {
    OpCall c = call_of(op);
    if constexpr (std::is_same_v<Config, ops::AdamW>)
      ops::adamw_update(c["param"], c["grad"], c["m"], c["v"], config, copy);
    else
      ops::nadam_update(c["param"], c["grad"], c["m"], c["v"], config, copy);
  };
  Tensor undefined, strided = not_contiguous(zeros({2, 3})), other = zeros({3, 2}), f32 = zeros({2, 3}, DType::f32);
  const std::string copy = op + ": param_copy ";
  expect_error([&] { run(base, &undefined); }, copy, {"undefined or not contiguous"});
  expect_error([&] { run(base, &strided); }, copy, {"undefined or not contiguous"});
  expect_error([&] { run(base, &other); }, copy, {"does not match param", "shape"});
  expect_error([&] { run(base, &f32); }, copy, {"not a compute dtype for param"});
  Tensor good = zeros({2, 3});
  run(base, &good);
  Config c = base;
  c.step = 0;
  expect_error([&] { run(c, nullptr); }, op + ": step 0", {"must be >= 1"});
  for (auto [beta1, beta2] : {std::pair{1.0, 0.9}, std::pair{-0.1, 0.9}, std::pair{0.9, 1.0}, std::pair{0.9, -0.1}}) {
    c = base;
    c.beta1 = beta1;
    c.beta2 = beta2;
    expect_error([&] { run(c, nullptr); }, op + ": betas", {"must lie in [0, 1)"});
  }
  for (double Config::*rate : {&Config::lr, &Config::eps, &Config::weight_decay}) {
    c = base;
    c.*rate = -1e-3;
    expect_error([&] { run(c, nullptr); }, op + ": lr ", {"must be >= 0"});
  }
}

}  // namespace

TEST(OpArgs, OptimizerChecks) {
  expect_optimizer_errors("adamw_update", ops::AdamW{});
  ops::NAdam h;
  h.mu_product = ops::nadam_mu_product(h);
  expect_optimizer_errors("nadam_update", h);
  const auto run = [](const ops::NAdam& config) {
    OpCall c = call_of("nadam_update");
    ops::nadam_update(c["param"], c["grad"], c["m"], c["v"], config);
  };
  ops::NAdam bad = h;
  bad.momentum_decay = -1e-3;
  expect_error([&] { run(bad); }, "nadam_update: momentum_decay", {"must be >= 0"});
  for (double product : {0.0, 1.0, -0.5}) {
    bad = h;
    bad.mu_product = product;
    expect_error([&] { run(bad); }, "nadam_update: mu_product", {"not a product of the momentum schedule"});
  }
  ops::NAdam no_momentum = h;  // β1 = 0: every μ_t is 0, and so is their product
  no_momentum.beta1 = 0;
  no_momentum.mu_product = 0;
  run(no_momentum);
}

TEST(OpArgs, SumOfSquaresInputs) {
  Tensor out = zeros({1}), out32 = zeros({1}, DType::f32);
  const Tensor a = zeros({2, 3}), undefined, strided = not_contiguous(zeros({2, 3})), f32 = zeros({3}, DType::f32);
  const std::string second = "sum_of_squares: tensors[1] ";
  expect_error([&] { ops::sum_of_squares({&a, nullptr}, out); }, second, {"is null"});
  expect_error([&] { ops::sum_of_squares({&a, &undefined}, out); }, second, {"undefined or not contiguous"});
  expect_error([&] { ops::sum_of_squares({&a, &strided}, out); }, second, {"undefined or not contiguous"});
  expect_error([&] { ops::sum_of_squares({&a, &f32}, out); }, second, {"does not go with tensors[0]"});
  expect_error([&] { ops::sum_of_squares({&f32}, out); }, "sum_of_squares: tensors[0] ", {"and out f64[1]"});
  ops::sum_of_squares({&f32}, out32);
  ops::sum_of_squares({}, out);
}

// ---- Sequences ---------------------------------------------------------------------------------

TEST(OpArgs, EveryOpOverSequencesChecksThem) {
  for (const char* op : {"dropout_forward", "dropout_backward", "attention_forward", "attention_backward",
                         "segment_sum", "segment_sum_backward", "pooling_forward", "pooling_backward"})
    expect_call_error(op, [](OpCall& c) { c.seqs = ops::Sequences::from_lengths({1, 2}, Device::cpu()); },
                      "seqs covers 3 tokens", {"has 4 rows"});
}

namespace {

// Sequences {1, 3} with ids 10, 11 over segment_sum's 4 rows, changed by `change`: the error that
// starts "segment_sum: <prefix>".
void expect_sequences_error(const std::function<void(ops::Sequences&)>& change, const std::string& prefix,
                            const std::vector<std::string>& parts = {}) {
  const auto broken = [&](OpCall& c) {
    c.seqs = ops::Sequences::from_lengths({1, 3}, Device::cpu(), {10, 11});
    change(c.seqs);
  };
  expect_call_error("segment_sum", broken, prefix, parts);
}

Tensor longs(const std::vector<int64_t>& v) { return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}); }

}  // namespace

TEST(OpArgs, EachSequencesCheck) {
  expect_sequences_error([](ops::Sequences& s) { s.host.clear(); }, "seqs has no offsets");
  // Offsets from 1 (lengths 1 and 2, 4 rows, the copies agree): only the start is wrong.
  expect_sequences_error(
      [](ops::Sequences& s) {
        s.host = {1, 2, 4};
        s.offsets = ints(s.host);
        s.max_len = 2;
      },
      "seqs.host starts at 1, not 0");
  expect_sequences_error(
      [](ops::Sequences& s) {  // lengths 3, -2, 3 over 4 rows
        s.host = {0, 3, 1, 4};
        s.offsets = ints(s.host);
        s.max_len = 3;
        s.host_ids = {10, 11, 12};
        s.ids = longs({10, 11, 12});
      },
      "seqs: sequence 1 has negative length -2");
  expect_sequences_error([](ops::Sequences& s) { s.max_len = 4; }, "seqs.max_len is 4", {"longest sequence has 3"});
  expect_sequences_error([](ops::Sequences& s) { s.offsets = longs({0, 1, 4}); }, "seqs.offsets ", {"must be i32"});
  expect_sequences_error([](ops::Sequences& s) { s.offsets = ints({0, 1, 4, 4}); }, "seqs.offsets ",
                         {"expected shape [3]"});
  expect_sequences_error([](ops::Sequences& s) { s.offsets = Tensor(); }, "seqs.offsets ", {"is undefined"});
  expect_sequences_error([](ops::Sequences& s) { s.offsets = ints({0, 2, 4}); }, "seqs.offsets[1] = 2",
                         {"differs from seqs.host[1] = 1"});
  expect_sequences_error([](ops::Sequences& s) { s.host_ids = {10}; }, "seqs has 1 ids", {"for 2 sequences"});
  expect_sequences_error([](ops::Sequences& s) { s.ids = Tensor(); }, "seqs.ids ", {"is undefined"});
  expect_sequences_error([](ops::Sequences& s) { s.ids = ints({10, 11}); }, "seqs.ids ", {"must be i64"});
  expect_sequences_error([](ops::Sequences& s) { s.ids = longs({10, 11, 12}); }, "seqs.ids ", {"expected shape [2]"});
  expect_sequences_error([](ops::Sequences& s) { s.ids = longs({10, 13}); }, "seqs.ids[1] = 13",
                         {"differs from seqs.host_ids[1] = 11"});
}

TEST(OpArgs, SequencesFromLengths) {
  expect_error([] { ops::Sequences::from_lengths({2, -1}, Device::cpu()); }, "Sequences::from_lengths: sequence 1",
               {"length -1"});
  expect_error([] { ops::Sequences::from_lengths({2, 3}, Device::cpu(), {7}); }, "Sequences::from_lengths: 1 ids",
               {"for 2 sequences"});
  const int32_t most = std::numeric_limits<int32_t>::max();
  expect_error([&] { ops::Sequences::from_lengths({most, 1}, Device::cpu()); }, "Sequences::from_lengths: 2147483648",
               {"overflow the i32 offsets"});
}
