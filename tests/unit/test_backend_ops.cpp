// The op table: every op of ops.h, forward and backward, on every backend this build has and in
// every compute dtype the backend runs (CPU f32; CUDA f32 and bf16), compared with the CPU
// backend in float64 on the same inputs rounded to that dtype (ggml's test-backend-ops is the
// model). The CUDA backend runs twice: on the GPU when there is one, and in every build as its
// own source ported to a host emulator of CUDA and its libraries (tests/emulation: the kernels,
// the cuBLASLt calls, the glue of kernels/cuda/backend.cpp), on host tensors.
//
// A case is a function of a CaseRun. It draws sizes and values from the run's seeded generator,
// declares its tensors (inputs; outputs the op must overwrite, which start as garbage; outputs
// the op accumulates into or partly keeps, which start as random values), calls the ops, and
// says which outputs are gradients of which inputs for which loss. Each case runs three ways:
// - on the backend under test, its tensors in the tested dtypes on the backend's device;
// - on the CPU in float64 with the same values (inputs rounded to the tested dtype first): the
//   reference each output of the first run must match within its bound (below);
// - on the CPU in float64 with unrounded values, to check the reference itself, which the CPU f32
//   run cannot since it shares its code: every gradient a backward op returns must agree with
//   central finite differences of the forward ops, ⟨∂L/∂x, u⟩ against (L(x + hu) - L(x - hu))/2h
//   along a random direction u, and forward-only ops (add, scale, the optimisers, ...) must agree
//   with a short definition written out in this file.
// Each case runs twice: round 0 draws row widths that are multiples of 8 (the CUDA kernels'
// 16-byte vector paths), round 1 odd ones (their scalar tails). A failure prints the seed and the
// shape of every tensor. CUDA cases skip, with the reason, when the build has no CUDA backend or
// the machine no GPU. With QARAC_BACKEND_OPS_MARGINS=1 every comparison prints its worst error as
// a fraction of its bound, which is how the bounds below are measured.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "core/hash.h"
#include "core/memory.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "emulated_backend.h"
#include "kernels/backend.h"
#include "kernels/ops.h"

using namespace qarac;

namespace {

// ---- Bounds -------------------------------------------------------------------------------------
// An output passes when every element has |got - want| <= rtol |want| + atol s, s the scale of
// the output: its rms, the largest |want| of the element's row, or the largest |want| of the
// whole tensor. The reference is exact to ~1e-16, so what a bound measures is the tested run's
// own rounding. The values come from the CUDA-against-CPU tests this table replaced, measured on
// an H100 against a CPU f32 (or f64) reference, and each keeps their metric.
enum class Scale { rms, row_max, max };
struct Tol {
  double rtol, atol;
  Scale scale;
};
// By the compute dtype X of the tested run: f32 (CPU and CUDA) or bf16 (CUDA).
struct Bound {
  Tol f32, bf16;
};

// Dense ops (GEMMs, linear layers, elementwise, GELU, dropout, embeddings, LayerNorm,
// cross-entropy), as tol (|want| + rms):
// - f32, 1e-5: both sides round at 6e-8 per operation and differ in summation order (cuBLASLt's
//   tiles or a warp tree against a loop) and in libm against CUDA's erff/expf (1-2 ulp); sums of
//   a few hundred terms keep that near 1e-6.
// - bf16 outputs, 1e-2: one rounding to 8 significant bits (2^-9 relative), and for compound ops
//   or chains one more rounding of an intermediate (a linear layer's pre-activation, the GELU of
//   the next layer's input) that the f64 reference does not make; also the bound of f32 outputs
//   computed downstream of such an intermediate (a weight gradient from a GELU's rounded output).
constexpr Bound kDenseX = {{1e-5, 1e-5, Scale::rms}, {1e-2, 1e-2, Scale::rms}};
// f32 outputs our own kernels compute from bf16 inputs (bias and embedding gradients, dγ and dβ,
// LayerNorm statistics, losses): products of two bf16 numbers are exact in f32, so only the
// summation order differs, as in f32.
constexpr Bound kDenseA = {{1e-5, 1e-5, Scale::rms}, {1e-5, 1e-5, Scale::rms}};
// f32 GEMM outputs from bf16 inputs (weight gradients): the tensor cores add each MMA's products
// to the accumulator with alignment and truncation rather than IEEE rounding (Fasi, Higham,
// Mikaitis, Pranesh, "Numerical behavior of NVIDIA tensor cores", 2021): about one biased ulp of
// the running sum per 8-16 products, a few tens of ulps over a few hundred terms.
constexpr Bound kGemmA = {{1e-5, 1e-5, Scale::rms}, {5e-5, 5e-5, Scale::rms}};
// Row ops (segment sums, the pooling head, row cosine, mean squared error), as rtol |want| +
// atol (largest |want| of the row): f32 sums of at most a few hundred O(1) terms are within ~1e-6
// of the row's largest value, so 1e-5 fails on any formula error (O(1)) and never on rounding;
// bf16 outputs add one rounding (2^-8 relative at most), 2^-7 leaving a factor 2.
constexpr Bound kRowsX = {{1e-5, 1e-5, Scale::row_max}, {1.0 / 128, 1e-5, Scale::row_max}};
constexpr Bound kRowsA = {{1e-5, 1e-5, Scale::row_max}, {1e-5, 1e-5, Scale::row_max}};
// The pooling head's dl_t = da_t (g/den - a_t l_t/|l_t|²) and dg_b = Σ_t da_t (l_t/den - a_t
// g/|g|²) are built from sums whose terms cancel (da_t = dv_b · x_t over d terms of random sign,
// then the two terms in the brackets), so their rounding is relative to the terms, not to the
// possibly small result: measured on an H100, an element whose da_t was small against Σ|dv_i x_ti|
// was off by 1e-4 of itself. The absolute part is therefore taken against the largest |want| of
// the tensor, 1e-4 of it, which covers the terms' scale (about ten times a typical element).
constexpr Bound kPoolingGrads = {{1e-5, 1e-4, Scale::max}, {1.0 / 128, 1e-4, Scale::max}};
// Attention, as tol · (largest |want| of the tensor): gradients are sums whose terms cancel (the
// dq and dk rows of a one-token sequence are exactly 0 and rounding noise on both sides).
// f32: sums of at most 512 O(1) terms, online rescaling against BLAS loops, expf against
// std::exp: measured <= 1.2e-6 against f64; 1e-5. bf16: P rounded to bf16 before P·V, P̃ and dS
// before the dV, dK and dQ products, D from the bf16-rounded O, each output rounded: measured
// <= 7.1e-3; 2e-2.
constexpr Bound kAttention = {{0, 1e-5, Scale::max}, {0, 2e-2, Scale::max}};
// lse stays f32 whatever X: from bf16 inputs the scores are exact products accumulated in f32,
// and the exponentials (__expf, ex2.approx: a few ulps, ~1e-7 per term) and the f32 sums of at
// most 512 terms err as in f32: measured <= 1.5e-7 of the largest |lse| (H100 and emulator); the
// f32 bound, 1e-5, for both.
constexpr Bound kLse = {{0, 1e-5, Scale::max}, {0, 1e-5, Scale::max}};
// AdamW and NAdam on f32 master weights whatever X: both sides evaluate the same f32 formula
// with constants formed in double; the GPU contracts into FMAs (an ulp per operation), a few ulps
// after three steps: 1e-6 relative.
constexpr Bound kOptimizer = {{1e-6, 1e-6, Scale::max}, {1e-6, 1e-6, Scale::max}};
// The optimiser's compute copy: the master weights in X, one rounding to bf16 in bf16.
constexpr Bound kComputeCopy = {{1e-6, 1e-6, Scale::max}, {1.0 / 128, 1e-6, Scale::max}};
// The squared gradient norm: the CPU sums in double; the GPU's f32 per-thread sums and trees are
// within ~1e-6 relative of that.
constexpr Bound kSumOfSquares = {{1e-5, 0, Scale::max}, {1e-5, 0, Scale::max}};
// Data movement (gathers, scatters, broadcasts of one row to many): the same values.
constexpr Bound kExact = {{0, 0, Scale::max}, {0, 0, Scale::max}};

// The CPU f64 reference against the definitions written out below: the same arithmetic in
// another order, a few ulps of f64.
constexpr Tol kDefinitionTol = {1e-12, 1e-12, Scale::rms};
// Finite differences in f64 with step h = 1e-5 along u ~ N(0, 1): the truncation error is
// O(h² |L'''|) ≈ 1e-10 and the rounding error O(ε |L| / h) ≈ 1e-11 |L|, against a directional
// derivative whose terms sum to Σ|g_i u_i|: measured <= 3e-10 of that sum over the table. A
// backward formula with a wrong term, sign, scale or mask is off by 1e-4..1 of it; 1e-8 keeps a
// margin of 30 over the noise.
constexpr double kFdStep = 1e-5;
constexpr double kFdTol = 1e-8;

// ---- A run of a case ---------------------------------------------------------------------------

enum class Role { x, a };  // values in the compute dtype X or the accumulation dtype A
constexpr Role X = Role::x, A = Role::a;
enum class Fill { garbage, start };  // an output the op overwrites, or accumulates into
struct Range {
  double lo = -1, hi = 1;
};

// Where a run's tensors live, the dtypes they are stored in and the dtypes their values are
// rounded to first (the tested dtypes, for the tested run and its reference alike).
struct Placement {
  Device device = Device::cpu();
  DType x = DType::f64, a = DType::f64;
  DType round_x = DType::f64, round_a = DType::f64;
  bool self_check = false;  // the unrounded f64 run: losses are summed, definitions checked
};

// The finite-difference runs move one input (by creation order) along a direction.
struct Perturbation {
  size_t input = std::numeric_limits<size_t>::max();
  const std::vector<double>* direction = nullptr;
  double step = 0;
};

double round_to(DType dtype, double v) {
  if (dtype == DType::f32) return static_cast<float>(v);
  if (dtype == DType::bf16) return static_cast<float>(bf16(static_cast<float>(v)));
  return v;
}

std::vector<double> host_values(const Tensor& t) {
  return t.to(Device::cpu()).to(DType::f64).to_vector<double>();
}

// Expects every element of `got` within `tol` of `want` (laid out as `shape`); returns the worst
// error as a fraction of its bound.
double expect_within(const std::vector<double>& got, const std::vector<double>& want,
                     const Shape& shape, const Tol& tol, const std::string& what) {
  const size_t n = want.size();
  EXPECT_EQ(got.size(), n) << what;
  if (got.size() != n) return HUGE_VAL;
  // Rows along the last dimension; a 1-D tensor is one row.
  const size_t row = std::max<size_t>(1, shape.size() >= 2 ? static_cast<size_t>(shape.back()) : n);
  double squares = 0, largest = 0;
  for (double w : want) {
    squares += w * w;
    largest = std::max(largest, std::fabs(w));
  }
  const double rms = n ? std::sqrt(squares / static_cast<double>(n)) : 0;
  size_t bad = 0, worst = 0;
  double worst_ratio = 0;
  for (size_t begin = 0; begin < n; begin += row) {
    const size_t end = std::min(n, begin + row);
    double s = tol.scale == Scale::rms ? rms : largest;
    if (tol.scale == Scale::row_max) {
      s = 0;
      for (size_t i = begin; i < end; ++i) s = std::max(s, std::fabs(want[i]));
    }
    for (size_t i = begin; i < end; ++i) {
      const double err = std::fabs(got[i] - want[i]),
                   limit = tol.rtol * std::fabs(want[i]) + tol.atol * s;
      const double ratio = err == 0 ? 0 : (limit > 0 ? err / limit : HUGE_VAL);
      if (!(err <= limit)) ++bad;  // NaN fails too
      if (!(ratio <= worst_ratio)) {
        worst_ratio = ratio;
        worst = i;
      }
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << n << " elements out of bounds; worst, "
                     << worst_ratio << " x its bound, element " << worst << ": got "
                     << (n ? got[worst] : 0) << ", want " << (n ? want[worst] : 0) << " (rtol "
                     << tol.rtol << ", atol " << tol.atol << " x the "
                     << (tol.scale == Scale::rms       ? "rms"
                         : tol.scale == Scale::row_max ? "row's largest |want|"
                                                       : "largest |want|")
                     << ")";
  return worst_ratio;
}

class CaseRun {
 public:
  struct Output {
    std::string name;
    Tensor tensor;
    Bound bound;
  };
  struct Gradient {
    Tensor tensor;
    size_t input;  // index into the inputs, in creation order
  };

  CaseRun(const Placement& placement, uint64_t seed, int round, Perturbation perturbation = {})
      : placement_(placement), rng_(seed), round_(round), perturbation_(perturbation) {}

  // ---- Sizes and values, from the run's generator
  int64_t size(int64_t lo, int64_t hi) {  // uniform in [lo, hi]
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
  }
  // A row width in [1, max]: a multiple of 8 in round 0, odd in round 1.
  int64_t width(int64_t max) {
    return round_ == 0 ? 8 * size(1, std::max<int64_t>(max / 8, 1))
                       : 2 * size(0, (max - 1) / 2) + 1;
  }
  template <class T>
  T pick(std::initializer_list<T> choices) {
    return choices.begin()[size(0, static_cast<int64_t>(choices.size()) - 1)];
  }
  template <class T>
  T per_round(std::initializer_list<T> choices) {  // the round's own choice
    return choices.begin()[static_cast<size_t>(round_) % choices.size()];
  }
  int round() const { return round_; }
  std::vector<double> uniform(int64_t n, double lo = -1, double hi = 1) {
    std::uniform_real_distribution<double> dist(lo, hi);
    std::vector<double> v(static_cast<size_t>(n));
    for (double& x : v) x = dist(rng_);
    return v;
  }
  std::vector<int32_t> ints(int64_t n, int32_t lo, int32_t hi) {  // uniform in [lo, hi]
    std::uniform_int_distribution<int32_t> dist(lo, hi);
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (int32_t& x : v) x = dist(rng_);
    return v;
  }

  // ---- Tensors
  // An input, uniform in `range` or with the given values.
  Tensor in(const std::string& name, const Shape& shape, Role role = X, Range range = {}) {
    return in(name, shape, uniform(shape_numel(shape), range.lo, range.hi), role);
  }
  Tensor in(const std::string& name, const Shape& shape, std::vector<double> values,
            Role role = X) {
    if (perturbation_.input == inputs_.size())  // only in f64 runs, where nothing is rounded
      for (size_t i = 0; i < values.size(); ++i)
        values[i] += perturbation_.step * (*perturbation_.direction)[i];
    inputs_.push_back(created_.size());
    return make(name, shape, std::move(values), role);
  }
  Tensor ids(const std::vector<int32_t>& values) {
    return Tensor::from_vector(values, {static_cast<int64_t>(values.size())}, placement_.device);
  }
  // Sequences of the given lengths; with `random_ids`, each gets an id drawn from the whole
  // 64-bit range (the dropout masks then depend on ids, not on places), else ids[b] = b.
  ops::Sequences seqs(const std::vector<int32_t>& lengths, bool random_ids = false) {
    std::ostringstream os;
    os << "lengths {";
    for (size_t i = 0; i < lengths.size(); ++i) os << (i ? ", " : "") << lengths[i];
    std::vector<uint64_t> ids;
    if (random_ids) {
      std::uniform_int_distribution<uint64_t> dist;
      for (size_t i = 0; i < lengths.size(); ++i) ids.push_back(dist(rng_));
      os << "} ids {";
      for (size_t i = 0; i < ids.size(); ++i) os << (i ? ", " : "") << ids[i];
    }
    description_ += os.str() + "}; ";
    return ops::Sequences::from_lengths(lengths, placement_.device, ids);
  }
  // An output the op must overwrite: it starts as garbage (values in [1000, 2000)).
  Tensor out(const std::string& name, const Shape& shape, const Bound& bound, Role role = X) {
    Tensor t = make(name, shape, uniform(shape_numel(shape), 1000, 2000), role);
    outputs_.push_back({name, t, bound});
    return t;
  }
  // An output that starts with values in `range` which the op accumulates into or partly keeps.
  Tensor inout(const std::string& name, const Shape& shape, const Bound& bound, Role role = X,
               Range range = {}) {
    Tensor t = make(name, shape, uniform(shape_numel(shape), range.lo, range.hi), role);
    outputs_.push_back({name, t, bound});
    return t;
  }
  // The gradient of the declared loss with respect to input `of`: overwritten by the op
  // (garbage), or accumulated onto a random start, which the finite-difference runs make zero.
  Tensor grad(const std::string& name, const Tensor& of, const Bound& bound,
              Fill fill = Fill::garbage, Role role = X) {
    std::vector<double> v =
        fill == Fill::garbage ? uniform(of.numel(), 1000, 2000) : uniform(of.numel());
    if (fill == Fill::start && placement_.self_check) std::fill(v.begin(), v.end(), 0.0);
    Tensor t = make(name, of.shape(), std::move(v), role);
    outputs_.push_back({name, t, bound});
    gradient(t, of);
    return t;
  }
  // A tensor already declared (an input overwritten in place) compared after the case.
  void result(const std::string& name, const Tensor& t, const Bound& bound) {
    outputs_.push_back({name, t, bound});
  }
  // g (read after the case) is the gradient of the loss with respect to input `of`.
  void gradient(const Tensor& g, const Tensor& of) {
    for (size_t i = 0; i < inputs_.size(); ++i)
      if (created_[inputs_[i]].tensor.raw() == of.raw()) {
        gradients_.push_back({g, i});
        return;
      }
    ADD_FAILURE() << "a gradient of a tensor that is not an input of the case";
  }
  // Adds factor · Σ_i weights_i out_i (weights 1 when not given) to the loss, as they are now.
  void loss(const Tensor& out, const Tensor& weights, double factor = 1) {
    ++losses_;
    if (!placement_.self_check) return;
    const std::vector<double> o = host_values(out), w = host_values(weights);
    for (size_t i = 0; i < o.size(); ++i) loss_ += factor * w[i] * o[i];
  }
  void loss(const Tensor& out, double factor = 1) {
    ++losses_;
    if (!placement_.self_check) return;
    for (double o : host_values(out)) loss_ += factor * o;
  }
  // In the unperturbed f64 run: expects t, as it is now, to hold want() (a definition of the op
  // in this file, from the inputs' values).
  void define(const Tensor& t, const std::function<std::vector<double>()>& want) {
    if (!placement_.self_check || perturbation_.direction) return;
    ++definitions_;
    expect_within(host_values(t), want(), t.shape(), kDefinitionTol, "definition of " + name_of(t));
  }
  // The values a declared tensor started with, as the op saw them (rounded).
  const std::vector<double>& values(const Tensor& t) const {
    for (const Created& c : created_)
      if (c.tensor.raw() == t.raw()) return c.values;
    ADD_FAILURE() << "values of a tensor the case did not declare";
    static const std::vector<double> none;
    return none;
  }

  // ---- What the harness reads afterwards
  const std::vector<Output>& outputs() const { return outputs_; }
  const std::vector<Gradient>& gradients() const { return gradients_; }
  const std::vector<double>& input_values(size_t input) const {
    return created_[inputs_[input]].values;
  }
  const std::string& input_name(size_t input) const { return created_[inputs_[input]].name; }
  const Shape& input_shape(size_t input) const { return created_[inputs_[input]].tensor.shape(); }
  double loss_value() const { return loss_; }
  int losses() const { return losses_; }
  int definitions() const { return definitions_; }
  const std::string& description() const { return description_; }

 private:
  struct Created {
    std::string name;
    Tensor tensor;
    std::vector<double> values;
  };

  DType storage(Role role) const { return role == X ? placement_.x : placement_.a; }

  Tensor make(const std::string& name, const Shape& shape, std::vector<double> values, Role role) {
    const DType round = role == X ? placement_.round_x : placement_.round_a;
    for (double& v : values) v = round_to(round, v);
    Tensor t = Tensor::from_vector(values, shape).to(storage(role)).to(placement_.device);
    description_ += name + " " + shape_str(shape) + "; ";
    created_.push_back({name, t, std::move(values)});
    return t;
  }
  std::string name_of(const Tensor& t) const {
    for (const Created& c : created_)
      if (c.tensor.raw() == t.raw()) return c.name;
    return "?";
  }

  Placement placement_;
  std::mt19937_64 rng_;
  int round_;
  Perturbation perturbation_;
  std::vector<Created> created_;
  std::vector<size_t> inputs_;  // indices into created_
  std::vector<Output> outputs_;
  std::vector<Gradient> gradients_;
  double loss_ = 0;
  int losses_ = 0, definitions_ = 0;
  std::string description_;
};

// ---- Definitions of the forward-only ops, in f64 ------------------------------------------------

// alpha op(a) op(b) + beta c0 for `batch` contiguous [m,k]·[k,n] products.
std::vector<double> matmul(const std::vector<double>& a, const std::vector<double>& b,
                           const std::vector<double>& c0, int64_t batch, int64_t m, int64_t n,
                           int64_t k, bool trans_a, bool trans_b, double alpha, double beta) {
  std::vector<double> c(static_cast<size_t>(batch * m * n));
  for (int64_t z = 0; z < batch; ++z)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t p = 0; p < k; ++p) {
          const double x = a[z * m * k + (trans_a ? p * m + i : i * k + p)];
          const double y = b[z * k * n + (trans_b ? j * k + p : p * n + j)];
          s += x * y;
        }
        const size_t o = static_cast<size_t>(z * m * n + i * n + j);
        c[o] = alpha * s + (beta == 0 ? 0 : beta * c0[o]);
      }
  return c;
}

// The weight decay of element i of an optimizer's param: none in its no_decay ranges.
double weight_decay_at(const std::vector<ops::ElementRange>& no_decay, double weight_decay, size_t i) {
  for (const ops::ElementRange& r : no_decay)
    if (static_cast<int64_t>(i) >= r.begin && static_cast<int64_t>(i) < r.end) return 0;
  return weight_decay;
}

// One torch.optim.AdamW step (ops.h) on the elements from `first` on (the op's param), in place.
void adamw_definition(std::vector<double>& p, std::vector<double>& m, std::vector<double>& v,
                      const std::vector<double>& grad, const ops::AdamW& c, size_t first) {
  const double t = static_cast<double>(c.step);
  for (size_t i = first; i < p.size(); ++i) {
    const double g = c.grad_scale * grad[i];
    p[i] -= c.lr * weight_decay_at(c.no_decay, c.weight_decay, i - first) * p[i];
    m[i] = c.beta1 * m[i] + (1 - c.beta1) * g;
    v[i] = c.beta2 * v[i] + (1 - c.beta2) * g * g;
    p[i] -= c.lr * (m[i] / (1 - std::pow(c.beta1, t))) /
            (std::sqrt(v[i] / (1 - std::pow(c.beta2, t))) + c.eps);
  }
}

// One torch.optim.NAdam step (ops.h) on the elements from `first` on, its momentum product
// formed here from the schedule.
void nadam_definition(std::vector<double>& p, std::vector<double>& m, std::vector<double>& v,
                      const std::vector<double>& grad, const ops::NAdam& c, size_t first) {
  auto mu = [&](int64_t t) {
    return c.beta1 * (1 - 0.5 * std::pow(0.96, static_cast<double>(t) * c.momentum_decay));
  };
  double product = 1;
  for (int64_t t = 1; t <= c.step; ++t) product *= mu(t);
  const double product_next = product * mu(c.step + 1);
  const double t = static_cast<double>(c.step);
  for (size_t i = first; i < p.size(); ++i) {
    double g = c.grad_scale * grad[i];
    const double weight_decay = weight_decay_at(c.no_decay, c.weight_decay, i - first);
    if (c.decoupled_weight_decay)
      p[i] -= c.lr * weight_decay * p[i];
    else
      g += weight_decay * p[i];
    m[i] = c.beta1 * m[i] + (1 - c.beta1) * g;
    v[i] = c.beta2 * v[i] + (1 - c.beta2) * g * g;
    const double d = std::sqrt(v[i] / (1 - std::pow(c.beta2, t))) + c.eps;
    p[i] -= c.lr * (1 - mu(c.step)) / (1 - product) * g / d +
            c.lr * mu(c.step + 1) / (1 - product_next) * m[i] / d;
  }
}

// ---- The table -------------------------------------------------------------------------------

const RngKey kKey{20240611, 17, 5};
constexpr int32_t kIgnore = -100;
constexpr double kLnEps = 1e-5;
constexpr double kPoolingEps = 1e-12;  // the pooling head's (docs/design.md §2)

// Ragged lengths with a one-token and empty sequences (first, between, last) and sequences
// shorter and longer than a warp or a 64-row tile; `longest` bounds the longest.
std::vector<int32_t> ragged_lengths(CaseRun& r, int64_t longest) {
  return {0,
          static_cast<int32_t>(r.size(2, 40)),
          1,
          0,
          static_cast<int32_t>(r.size(longest / 2, longest)),
          static_cast<int32_t>(r.size(2, 20)),
          0};
}
int64_t total(const std::vector<int32_t>& lengths) {
  int64_t t = 0;
  for (int32_t n : lengths) t += n;
  return t;
}

// Attention with the given masks: the forward's out and lse, and the backward's dq, dk, dv for
// the loss ⟨dout, out⟩. Head dim 64 (bf16: the tensor-core path) in round 0, 32 in round 1.
// With dropout the sequences have random ids, which every backend must read from the sequences.
void attention_case(CaseRun& r, bool causal, double dropout) {
  const std::vector<int32_t> lengths = ragged_lengths(r, 140);
  const int64_t heads = r.pick<int64_t>({1, 2, 3, 5}), head_dim = r.per_round<int64_t>({64, 32});
  const int64_t tokens = total(lengths);
  const ops::Sequences seqs = r.seqs(lengths, dropout > 0);
  const Shape shape = {tokens, heads * head_dim};
  // Scores of standard deviation ~2: softmax rows from nearly flat to peaked.
  const Tensor q = r.in("q", shape, X, {-2.6, 2.6}), k = r.in("k", shape, X, {-2.6, 2.6});
  const Tensor v = r.in("v", shape);
  Tensor out = r.out("out", shape, kAttention), lse = r.out("lse", {heads, tokens}, kLse, A);
  ops::attention_forward(q, k, v, seqs, heads, causal, dropout, kKey, out, lse);
  const Tensor dout = r.in("dout", shape);
  r.loss(out, dout);
  Tensor dq = r.grad("dq", q, kAttention), dk = r.grad("dk", k, kAttention),
         dv = r.grad("dv", v, kAttention);
  ops::attention_backward(dout, q, k, v, out, lse, seqs, heads, causal, dropout, kKey, dq, dk, dv);
}

// Attention over key ranges (decoding with a cache): query rows over ranges of one K | V cache,
// ranges of one key, of fewer keys than a block has warps, and of hundreds, overlapping and
// nested; head dims of 1 to 4 columns per lane on CUDA, some with lanes that hold none (40, 24,
// 96). Round 0: q contiguous; round 1: q the middle third of a fused [n, 3w] buffer and a cache
// of odd row stride 2w + 1.
void attention_over_ranges_case(CaseRun& r) {
  const int64_t heads = r.pick<int64_t>({1, 2, 3}), rows = r.size(150, 320), n = r.size(6, 40);
  std::vector<int32_t> ranges;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = i == 0 ? 1 : i == 1 ? 3 : i == 2 ? rows : r.size(1, rows);
    const int64_t begin = r.size(0, rows - len);
    ranges.insert(ranges.end(), {static_cast<int32_t>(begin), static_cast<int32_t>(begin + len)});
  }
  const Tensor key_ranges = r.ids(ranges).reshape({n, 2});
  for (const int64_t head_dim : r.round() == 0 ? std::vector<int64_t>{64, 128, 16} : std::vector<int64_t>{40, 96, 24}) {
    const std::string dh = " (Dh " + std::to_string(head_dim) + ")";
    const int64_t w = heads * head_dim, ld = 2 * w + r.round();
    const Tensor cache = r.in("cache K | V" + dh, {rows, ld}, X, {-2.6, 2.6});
    const Tensor fused = r.in("q" + dh, {n, r.round() == 0 ? w : 3 * w}, X, {-2.6, 2.6});
    const Tensor q = r.round() == 0 ? fused : fused.slice(1, w, 2 * w);
    const Tensor k = cache.slice(1, 0, w), v = cache.slice(1, w, 2 * w);
    Tensor out = r.out("out" + dh, {n, w}, kAttention);
    ops::attention_over_ranges(q, k, v, key_ranges, heads, out);
    r.define(out, [&] {
      const std::vector<double>& qv = r.values(fused);
      const std::vector<double>& cv = r.values(cache);
      const int64_t q0 = r.round() == 0 ? 0 : w, ldq = fused.size(1);
      std::vector<double> want(static_cast<size_t>(n * w));
      for (int64_t i = 0; i < n; ++i)
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t begin = ranges[2 * i], end = ranges[2 * i + 1];
          std::vector<double> p;
          for (int64_t j = begin; j < end; ++j) {
            double dot = 0;
            for (int64_t c = 0; c < head_dim; ++c)
              dot += qv[i * ldq + q0 + h * head_dim + c] * cv[j * ld + h * head_dim + c];
            p.push_back(dot / std::sqrt(static_cast<double>(head_dim)));
          }
          const double max = *std::max_element(p.begin(), p.end());
          double sum = 0;
          for (double& x : p) sum += (x = std::exp(x - max));
          for (int64_t c = 0; c < head_dim; ++c) {
            double o = 0;
            for (int64_t j = begin; j < end; ++j) o += p[j - begin] / sum * cv[j * ld + w + h * head_dim + c];
            want[i * w + h * head_dim + c] = o;
          }
        }
      return want;
    });
  }
}

// The optimisers' three steps on n elements (16-byte packs and a scalar tail); round 1 on views
// one element into their buffers (no pack fits) and without the compute copy. The weight decay
// leaves out ranges of 1 to 5 elements, some back to back, one at each end where they fall
// there: runs of one decay of every alignment. Round 0 has several hundred runs, more than one
// CUDA launch takes, and after its 100th range a run of 5000 elements, which several blocks of
// a launch share (the block offsets of a run that is not the launch's first).
template <class Config, class Update, class Definition>
void optimizer_case(CaseRun& r, Config config, Update update, Definition definition) {
  const int64_t n = r.round() == 0 ? r.size(6500, 7500) : r.size(1, 1100), first = r.round();
  for (int64_t at = r.size(0, 3); at < n;) {
    const int64_t end = std::min(n, at + r.size(1, 5));
    config.no_decay.push_back({at, end});
    at = end + (r.round() == 0 && config.no_decay.size() == 100 ? 5000 : r.size(0, 6));
  }
  auto view = [&](const Tensor& t) { return t.slice(0, first, first + n); };
  Tensor p = r.inout("param", {n + first}, kOptimizer, A);
  Tensor m = r.inout("m", {n + first}, kOptimizer, A, {-0.1, 0.1});
  Tensor v = r.inout("v", {n + first}, kOptimizer, A, {0, 0.01});
  Tensor copy = first == 0 ? r.out("param_copy", {n}, kComputeCopy) : Tensor();
  std::vector<double> pw = r.values(p), mw = r.values(m), vw = r.values(v);
  Tensor pv = view(p), mv = view(m), vv = view(v);
  for (int64_t step = 1; step <= 3; ++step) {
    config.step = step;
    const Tensor grad = r.in("grad " + std::to_string(step), {n + first}, A);
    update(pv, view(grad), mv, vv, config, first == 0 ? &copy : nullptr);
    definition(pw, mw, vw, r.values(grad), config, static_cast<size_t>(first));
  }
  r.define(p, [&] { return pw; });
  r.define(m, [&] { return mw; });
  r.define(v, [&] { return vw; });
  if (first == 0) r.define(copy, [&] { return pw; });
}

struct Case {
  const char* name;  // the op or ops it runs, and a variant
  void (*body)(CaseRun& r);
};

const Case kCases[] = {
    // ---- GEMM
    {"gemm",
     [](CaseRun& r) {
       // Every transpose pair; c = alpha op(a) op(b) + beta c and, with beta = 0, over garbage.
       const int64_t m = r.size(1, 70), n = r.width(200), k = r.width(300);
       for (const bool ta : {false, true})
         for (const bool tb : {false, true}) {
           const std::string t = std::string(ta ? " aT" : "") + (tb ? " bT" : "");
           const Tensor a = r.in("a" + t, ta ? Shape{k, m} : Shape{m, k});
           const Tensor b = r.in("b" + t, tb ? Shape{n, k} : Shape{k, n});
           Tensor c = r.inout("c" + t, {m, n}, kDenseX);
           Tensor fresh = r.out("c, beta 0" + t, {m, n}, kDenseX);
           ops::gemm(a, b, c, ta, tb, 0.5, 0.75);
           ops::gemm(a, b, fresh, ta, tb);
           r.define(c, [&] {
             return matmul(r.values(a), r.values(b), r.values(c), 1, m, n, k, ta, tb, 0.5, 0.75);
           });
           r.define(fresh,
                    [&] { return matmul(r.values(a), r.values(b), {}, 1, m, n, k, ta, tb, 1, 0); });
         }
     }},
    {"gemm_output_in_A",
     [](CaseRun& r) {
       // Weight gradients: inputs in X, c in A accumulated with beta = 1, twice.
       const int64_t m = r.width(64), n = r.width(300), k = r.size(1, 301);
       const Tensor a = r.in("a", {k, m}), b = r.in("b", {k, n});
       Tensor c = r.inout("c", {m, n}, kGemmA, A);
       ops::gemm(a, b, c, true, false, 1.0, 1.0);
       ops::gemm(a, b, c, true, false, 1.0, 1.0);
       r.define(c, [&] {
         std::vector<double> want =
             matmul(r.values(a), r.values(b), r.values(c), 1, m, n, k, true, false, 1.0, 1.0);
         const std::vector<double> once =
             matmul(r.values(a), r.values(b), {}, 1, m, n, k, true, false, 1.0, 0.0);
         for (size_t i = 0; i < want.size(); ++i) want[i] += once[i];
         return want;
       });
     }},
    {"gemm_batched",
     [](CaseRun& r) {
       const int64_t z = r.size(1, 4), m = r.size(1, 40), n = r.width(64), k = r.width(64);
       for (const bool ta : {false, true})
         for (const bool tb : {false, true}) {
           const std::string t = std::string(ta ? " aT" : "") + (tb ? " bT" : "");
           const Tensor a = r.in("a" + t, ta ? Shape{z, k, m} : Shape{z, m, k});
           const Tensor b = r.in("b" + t, tb ? Shape{z, n, k} : Shape{z, k, n});
           Tensor c = r.inout("c" + t, {z, m, n}, kDenseX);
           ops::gemm_batched(a, b, c, ta, tb, 1.0, 0.5);
           r.define(c, [&] {
             return matmul(r.values(a), r.values(b), r.values(c), z, m, n, k, ta, tb, 1.0, 0.5);
           });
         }
     }},
    // ---- Dense layers
    {"linear_forward_backward",
     [](CaseRun& r) {
       // y = x wᵀ + b; dx overwritten, dw and dbias accumulated; then dx accumulated (the
       // parameter gradients a second time: the loss counts twice); then no dx at all.
       const int64_t rows = r.size(1, 200), in = r.width(200), out = r.width(200);
       const Tensor x = r.in("x", {rows, in}, X, {-2, 2}), w = r.in("w", {out, in}, X, {-0.2, 0.2});
       const Tensor bias = r.in("bias", {out});
       Tensor y = r.out("y", {rows, out}, kDenseX);
       ops::linear_forward(x, w, bias, y);
       const Tensor dy = r.in("dy", {rows, out});
       r.loss(y, dy, 2);
       Tensor dx = r.grad("dx", x, kDenseX);
       Tensor dw = r.grad("dw", w, kGemmA, Fill::start, A);
       Tensor db = r.grad("dbias", bias, kDenseA, Fill::start, A);
       ops::linear_backward(x, w, dy, &dx, dw, &db);
       Tensor dx_sum = r.grad("dx (accumulate_dx)", x, kDenseX, Fill::start);
       ops::linear_backward(x, w, dy, &dx_sum, dw, &db, nullptr, true);
       Tensor dw_only = r.inout("dw (no dx)", {out, in}, kGemmA, A);
       Tensor db_only = r.inout("dbias (no dx)", {out}, kDenseA, A);
       ops::linear_backward(x, w, dy, nullptr, dw_only, &db_only);
     }},
    {"linear_gelu_epilogue",
     [](CaseRun& r) {
       // y = gelu(x wᵀ + b) with pre kept, and without (GELU in place over y); the backward
       // pass through gelu_backward(pre) into linear_backward.
       const int64_t rows = r.size(1, 200), in = r.width(200), out = r.width(200);
       const Tensor x = r.in("x", {rows, in}, X, {-2, 2}), w = r.in("w", {out, in}, X, {-0.2, 0.2});
       const Tensor bias = r.in("bias", {out});
       Tensor y = r.out("y", {rows, out}, kDenseX), pre = r.out("pre", {rows, out}, kDenseX);
       ops::linear_forward(x, w, bias, y, ops::Activation::gelu, &pre);
       Tensor alone = r.out("y without pre", {rows, out}, kDenseX);
       ops::linear_forward(x, w, bias, alone, ops::Activation::gelu);
       const Tensor dy = r.in("dy", {rows, out});
       r.loss(y, dy);
       Tensor dz = r.out("dz = dy gelu'(pre)", {rows, out}, kDenseX);
       ops::gelu_backward(pre, dy, dz);
       // Downstream of the rounded pre and dz: kDenseX whatever the storage.
       Tensor dx = r.grad("dx", x, kDenseX), dw = r.grad("dw", w, kDenseX, Fill::start, A),
              db = r.grad("dbias", bias, kDenseX, Fill::start, A);
       ops::linear_backward(x, w, dz, &dx, dw, &db);
     }},
    {"linear_input_gelu_pre",
     [](CaseRun& r) {
       // x = gelu(p) feeds the layer (the FFN's second dense layer); linear_backward folds
       // gelu'(p) into dx and sums it into the bias gradient of the layer that produced p = p0 +
       // p_bias (the FFN's first). Past 32 rows the column sums take several chunks. p0 and
       // p_bias lie on the 1/16 grid, so p (in [-3.5, 3.5]) is exact in bf16 as in f64.
       const int64_t rows = r.size(1, 400), in = r.width(200), out = r.width(200);
       auto grid = [](std::vector<double> v) {
         for (double& x : v) x = std::round(x * 16) / 16;
         return v;
       };
       Tensor p = r.in("p0", {rows, in}, grid(r.uniform(rows * in, -3, 3)));
       const Tensor p_bias = r.in("p_bias", {in}, grid(r.uniform(in, -0.5, 0.5)));
       ops::bias_add(p, p_bias);
       Tensor x = r.out("x = gelu(p)", {rows, in}, kDenseX);
       ops::gelu_forward(p, x);
       const Tensor w = r.in("w", {out, in}, X, {-0.2, 0.2}), bias = r.in("bias", {out});
       Tensor y = r.out("y", {rows, out}, kDenseX);
       ops::linear_forward(x, w, bias, y);
       const Tensor dy = r.in("dy", {rows, out});
       r.loss(y, dy);
       // dw reads the rounded gelu(p): kDenseX; dbias only dy; the sums of dp its rounding.
       Tensor dp = r.grad("dp", p, kDenseX), dw = r.grad("dw", w, kDenseX, Fill::start, A),
              db = r.grad("dbias", bias, kDenseA, Fill::start, A),
              dp_bias = r.grad("dp_bias", p_bias, kDenseX, Fill::start, A);
       ops::linear_backward(x, w, dy, &dp, dw, &db, &p, false, &dp_bias);
     }},
    // ---- Elementwise and bias
    {"bias_add_backward",
     [](CaseRun& r) {
       // Past 32 rows the CUDA column reduction takes several chunks.
       const int64_t rows = r.size(1, 700), cols = r.width(300);
       Tensor y = r.inout("y", {rows, cols}, kDenseX);
       const Tensor bias = r.in("bias", {cols});
       ops::bias_add(y, bias);
       const Tensor dy = r.in("dy", {rows, cols});
       r.loss(y, dy);
       Tensor db = r.grad("dbias", bias, kDenseA, Fill::start, A);
       ops::bias_backward(dy, db);
     }},
    {"add",
     [](CaseRun& r) {
       // Whole tensors, or in round 1 views one element in (misaligned: the scalar path); out
       // separate and aliasing a.
       const int64_t n = r.width(3000), first = r.round();
       const Tensor a = r.in("a", {n + first}), b = r.in("b", {n + first});
       Tensor out = r.out("out", {n + first}, kDenseX);
       Tensor alias = r.in("a (aliased by out)", {n + first}, r.values(a));
       Tensor out_view = out.slice(0, first, first + n),
              alias_view = alias.slice(0, first, first + n);
       ops::add(a.slice(0, first, first + n), b.slice(0, first, first + n), out_view);
       ops::add(alias_view, b.slice(0, first, first + n), alias_view);
       r.result("a + b in place over a", alias, kDenseX);
       auto want = [&](const std::vector<double>& start) {
         std::vector<double> s = start;
         for (int64_t i = first; i < n + first; ++i) s[i] = r.values(a)[i] + r.values(b)[i];
         return s;
       };
       r.define(out, [&] { return want(r.values(out)); });
       r.define(alias, [&] { return want(r.values(alias)); });
     }},
    {"accumulate",
     [](CaseRun& r) {
       const int64_t n = r.width(3000), first = r.round();
       Tensor dst = r.inout("dst", {n + first}, kDenseX);
       const Tensor src = r.in("src", {n + first});
       Tensor dst_view = dst.slice(0, first, first + n);
       ops::accumulate(dst_view, src.slice(0, first, first + n));
       r.define(dst, [&] {
         std::vector<double> s = r.values(dst);
         for (int64_t i = first; i < n + first; ++i) s[i] += r.values(src)[i];
         return s;
       });
     }},
    {"scale",
     [](CaseRun& r) {
       const int64_t n = r.width(3000), first = r.round();
       Tensor x = r.inout("x", {n + first}, kDenseX);
       Tensor x_view = x.slice(0, first, first + n);
       ops::scale(x_view, -1.5);
       r.define(x, [&] {
         std::vector<double> s = r.values(x);
         for (int64_t i = first; i < n + first; ++i) s[i] *= -1.5;
         return s;
       });
     }},
    // ---- Embeddings
    {"embedding_forward_backward",
     [](CaseRun& r) {
       // Few ids over many rows: long runs of equal ids, one id on every third row. The lookup
       // overwrites out, or accumulates onto it; the gradient accumulates both.
       const int64_t vocab = r.size(2, 60), n = r.size(1, 700), d = r.width(300);
       std::vector<int32_t> idv = r.ints(n, 0, static_cast<int32_t>(vocab - 1));
       for (size_t i = 0; i < idv.size(); i += 3) idv[i] = 1;
       const Tensor ids = r.ids(idv), table = r.in("table", {vocab, d});
       Tensor out = r.out("out", {n, d}, kDenseX),
              sum = r.inout("out (accumulate)", {n, d}, kDenseX);
       ops::embedding_forward(ids, table, out);
       ops::embedding_forward(ids, table, sum, true);
       const Tensor dout = r.in("dout", {n, d}), dsum = r.in("dout (accumulate)", {n, d});
       r.loss(out, dout);
       r.loss(sum, dsum);
       Tensor dtable = r.grad("dtable", table, kDenseA, Fill::start, A);
       ops::embedding_backward(ids, dout, dtable);
       ops::embedding_backward(ids, dsum, dtable);
     }},
    {"embedding_backward_chunked_runs",
     [](CaseRun& r) {
       // Runs of equal ids whose sorted positions begin and end on CUDA's chunks of 32 rows and
       // off them: a chunk of one id, a run over two whole chunks, a run that ends at a chunk's
       // end without going on, one that goes on by a row, a run over eight chunks; then a random
       // tail. Rows shuffled.
       const int64_t d = r.width(300);
       const int32_t counts[] = {32, 64, 1, 31, 33, 5, 250, 3};
       std::vector<int32_t> idv;
       for (int32_t id = 0; id < 8; ++id) idv.insert(idv.end(), static_cast<size_t>(counts[id]), id);
       const std::vector<int32_t> tail = r.ints(r.size(0, 100), 8, 20);
       idv.insert(idv.end(), tail.begin(), tail.end());
       for (size_t i = idv.size() - 1; i > 0; --i)
         std::swap(idv[i], idv[static_cast<size_t>(r.size(0, static_cast<int64_t>(i)))]);
       const int64_t n = static_cast<int64_t>(idv.size());
       const Tensor ids = r.ids(idv), table = r.in("table", {21, d});
       Tensor out = r.out("out", {n, d}, kDenseX);
       ops::embedding_forward(ids, table, out);
       const Tensor dout = r.in("dout", {n, d});
       r.loss(out, dout);
       Tensor dtable = r.grad("dtable", table, kDenseA, Fill::start, A);
       ops::embedding_backward(ids, dout, dtable);
     }},
    // ---- LayerNorm
    {"layernorm_forward_backward",
     [](CaseRun& r) {
       // Rows of mean 3, so a one-pass variance would lose digits; past 32 rows the CUDA dγ, dβ
       // reduction takes several chunks. Widths in round 0 take CUDA's one-pass backward, odd ones
       // its row-then-column path. dx overwritten (also in place over dy), dγ, dβ accumulated.
       const int64_t rows = r.size(1, 700), cols = r.width(300);
       const Tensor x = r.in("x", {rows, cols}, X, {2, 4});
       const Tensor gamma = r.in("gamma", {cols}, X, {0.5, 1.5}), beta = r.in("beta", {cols});
       Tensor y = r.out("y", {rows, cols}, kDenseX);
       Tensor mean = r.out("mean", {rows}, kDenseA, A), rstd = r.out("rstd", {rows}, kDenseA, A);
       ops::layernorm_forward(x, gamma, beta, kLnEps, y, mean, rstd);
       const Tensor dy = r.in("dy", {rows, cols});
       r.loss(y, dy);
       Tensor dx = r.grad("dx", x, kDenseX),
              dgamma = r.grad("dgamma", gamma, kDenseA, Fill::start, A),
              dbeta = r.grad("dbeta", beta, kDenseA, Fill::start, A);
       ops::layernorm_backward(dy, x, gamma, mean, rstd, dx, dgamma, dbeta);
       Tensor in_place = r.in("dy (dx in place)", {rows, cols}, r.values(dy));
       Tensor dgamma2 = r.inout("dgamma (in place run)", {cols}, kDenseA, A),
              dbeta2 = r.inout("dbeta (in place run)", {cols}, kDenseA, A);
       ops::layernorm_backward(in_place, x, gamma, mean, rstd, in_place, dgamma2, dbeta2);
       r.result("dx in place over dy", in_place, kDenseX);
     }},
    {"add_layernorm_forward_backward",
     [](CaseRun& r) {
       // The post-LN residual block. The GPU rounds sum = a + b to X before normalising it and
       // the f64 reference does not, so a and b are multiples of 1/32 in [2, 4] and [-1, 1]:
       // their sum (in [1, 5]) is then exact even in bf16 (8 significant bits), for both.
       const int64_t rows = r.size(1, 300), cols = r.width(300);
       auto grid = [](std::vector<double> v) {
         for (double& x : v) x = std::round(x * 32) / 32;
         return v;
       };
       const Tensor a = r.in("a", {rows, cols}, grid(r.uniform(rows * cols, 2, 4)));
       const Tensor b = r.in("b", {rows, cols}, grid(r.uniform(rows * cols)));
       const Tensor gamma = r.in("gamma", {cols}, X, {0.5, 1.5}), beta = r.in("beta", {cols});
       Tensor sum = r.out("sum", {rows, cols}, kExact), y = r.out("y", {rows, cols}, kDenseX);
       Tensor mean = r.out("mean", {rows}, kDenseA, A), rstd = r.out("rstd", {rows}, kDenseA, A);
       ops::add_layernorm_forward(a, b, gamma, beta, kLnEps, sum, y, mean, rstd);
       const Tensor dy = r.in("dy", {rows, cols});
       r.loss(y, dy);
       Tensor dx = r.grad("dx", a, kDenseX);
       r.gradient(dx, b);
       Tensor dgamma = r.grad("dgamma", gamma, kDenseA, Fill::start, A),
              dbeta = r.grad("dbeta", beta, kDenseA, Fill::start, A);
       ops::layernorm_backward(dy, sum, gamma, mean, rstd, dx, dgamma, dbeta);
     }},
    {"add_layernorm_branch_dropout",
     [](CaseRun& r) {
       // The residual block with the branch a = a0 + branch_bias (the output of a linear layer)
       // dropped on the way (ops::BranchDropout): y = LN(dropout(a) + b), and backward dx (the
       // residual's gradient), dbranch = dropout(dx) (the branch's) and its column sums, the
       // branch bias's gradient. Ragged sequences with random ids. As above, every sum must be
       // exact in bf16: p = 0.5 or 0.75 scales kept elements by exactly 2 or 4, a is on the 1/32
       // grid in [0.25, 1.25] and b on it in [-1, 1], so dropout(a) + b lies on that grid in
       // [-1, 6]. The bias gradient sums dbranch, which bf16 rounds: kDenseX.
       const std::vector<int32_t> lengths = ragged_lengths(r, 60);
       const ops::Sequences seqs = r.seqs(lengths, true);
       const int64_t rows = total(lengths), cols = r.width(300);
       auto grid = [](std::vector<double> v) {
         for (double& x : v) x = std::round(x * 32) / 32;
         return v;
       };
       const ops::BranchDropout drop{r.per_round({0.5, 0.75}), kKey, &seqs};
       Tensor a = r.in("a0", {rows, cols}, grid(r.uniform(rows * cols, 0.5, 1)));
       const Tensor branch_bias = r.in("branch_bias", {cols}, grid(r.uniform(cols, -0.25, 0.25)));
       ops::bias_add(a, branch_bias);
       const Tensor b = r.in("b", {rows, cols}, grid(r.uniform(rows * cols)));
       const Tensor gamma = r.in("gamma", {cols}, X, {0.5, 1.5}), beta = r.in("beta", {cols});
       Tensor sum = r.out("sum", {rows, cols}, kExact), y = r.out("y", {rows, cols}, kDenseX);
       Tensor mean = r.out("mean", {rows}, kDenseA, A), rstd = r.out("rstd", {rows}, kDenseA, A);
       ops::add_layernorm_forward(a, b, gamma, beta, kLnEps, sum, y, mean, rstd, &drop);
       const Tensor dy = r.in("dy", {rows, cols});
       r.loss(y, dy);
       Tensor dx = r.grad("dx", b, kDenseX), dbranch = r.grad("dbranch", a, kDenseX);
       Tensor dgamma = r.grad("dgamma", gamma, kDenseA, Fill::start, A),
              dbeta = r.grad("dbeta", beta, kDenseA, Fill::start, A),
              dbias = r.grad("dbias_branch", branch_bias, kDenseX, Fill::start, A);
       ops::layernorm_backward(dy, sum, gamma, mean, rstd, dx, dgamma, dbeta, &drop, &dbranch, &dbias);
       // sum written over the residual b.
       Tensor b_sum = r.in("b (sum in place)", {rows, cols}, r.values(b));
       Tensor y2 = r.out("y (sum over b)", {rows, cols}, kDenseX);
       Tensor mean2 = r.out("mean (sum over b)", {rows}, kDenseA, A),
              rstd2 = r.out("rstd (sum over b)", {rows}, kDenseA, A);
       ops::add_layernorm_forward(a, b_sum, gamma, beta, kLnEps, b_sum, y2, mean2, rstd2, &drop);
       r.result("sum over b", b_sum, kExact);
     }},
    // ---- GELU and dropout
    {"gelu_forward_backward",
     [](CaseRun& r) {
       const int64_t n = r.width(30000);
       const Tensor x = r.in("x", {n}, X, {-5, 5});
       Tensor y = r.out("y", {n}, kDenseX);
       ops::gelu_forward(x, y);
       const Tensor dy = r.in("dy", {n});
       r.loss(y, dy);
       Tensor dx = r.grad("dx", x, kDenseX);
       ops::gelu_backward(x, dy, dx);
       Tensor in_place = r.in("dy (dx in place)", {n}, r.values(dy));
       ops::gelu_backward(x, in_place, in_place);  // as the linear backward uses it
       r.result("dx in place over dy", in_place, kDenseX);
     }},
    {"dropout_forward_backward",
     [](CaseRun& r) {
       // Rows of ragged sequences with random ids (the kernels find each row's sequence and id,
       // empty sequences included); p = 0 copies; the backward pass regenerates the forward's
       // mask; y may alias x.
       const std::vector<int32_t> lengths = ragged_lengths(r, 60);
       const ops::Sequences seqs = r.seqs(lengths, true);
       const Shape shape = {total(lengths), r.width(300)};
       const Tensor x = r.in("x", shape);
       for (const double p : {0.0, 0.1, 0.5}) {
         const std::string tag = " p=" + std::to_string(p).substr(0, 3);
         Tensor y = r.out("y" + tag, shape, kDenseX);
         ops::dropout_forward(x, p, kKey, seqs, y);
         const Tensor dy = r.in("dy" + tag, shape);
         r.loss(y, dy);
         Tensor dx = r.grad("dx" + tag, x, kDenseX);
         ops::dropout_backward(dy, p, kKey, seqs, dx);
         Tensor in_place = r.in("x (y in place)" + tag, shape, r.values(x));
         ops::dropout_forward(in_place, p, kKey, seqs, in_place);
         r.result("y in place over x" + tag, in_place, kDenseX);
       }
     }},
    // ---- Attention
    {"attention", [](CaseRun& r) { attention_case(r, false, 0.0); }},
    {"attention_causal", [](CaseRun& r) { attention_case(r, true, 0.0); }},
    {"attention_dropout", [](CaseRun& r) { attention_case(r, false, 0.1); }},
    {"attention_causal_dropout", [](CaseRun& r) { attention_case(r, true, 0.1); }},
    {"attention_over_ranges", attention_over_ranges_case},
    // ---- Losses
    {"softmax_cross_entropy",
     [](CaseRun& r) {
       // A vocabulary padded past valid_cols (the padding logits large, so a leak into the
       // softmax shows), ignored rows, row weights; dlogits separate, then losses alone.
       const int64_t rows = r.size(2, 300), cols = r.width(800),
                     valid = r.size((cols + 1) / 2, cols);
       std::vector<double> lv = r.uniform(rows * cols, -4, 4);
       for (int64_t i = 0; i < rows; ++i)
         for (int64_t j = valid; j < cols; ++j) lv[i * cols + j] = 40;
       const Tensor logits = r.in("logits", {rows, cols}, lv);
       std::vector<int32_t> tv = r.ints(rows, 0, static_cast<int32_t>(valid - 1));
       tv[1] = tv[rows - 1] = kIgnore;
       const Tensor targets = r.ids(tv), weights = r.in("row_weights", {rows}, A, {0.1, 2});
       Tensor losses = r.out("losses", {rows}, kDenseA, A);
       Tensor dlogits = r.grad("dlogits", logits, kDenseX);
       ops::softmax_cross_entropy(logits, targets, kIgnore, losses, &dlogits, 0.7, valid, &weights);
       r.loss(losses, weights, 0.7);
       Tensor alone = r.out("losses without dlogits", {rows}, kDenseA, A);
       ops::softmax_cross_entropy(logits, targets, kIgnore, alone, nullptr, 0.7, valid);
     }},
    {"softmax_cross_entropy_in_place",
     [](CaseRun& r) {
       // The LM head's use: every column a class, the gradient written over the logits.
       const int64_t rows = r.size(2, 300), cols = r.width(800);
       Tensor logits = r.in("logits (dlogits in place)", {rows, cols}, X, {-4, 4});
       std::vector<int32_t> tv = r.ints(rows, 0, static_cast<int32_t>(cols - 1));
       tv[0] = kIgnore;
       const Tensor targets = r.ids(tv);
       Tensor losses = r.out("losses", {rows}, kDenseA, A);
       ops::softmax_cross_entropy(logits, targets, kIgnore, losses, &logits, 1.3);
       r.loss(losses, 1.3);
       r.result("dlogits", logits, kDenseX);
       r.gradient(logits, logits);
     }},
    {"mse_loss",
     [](CaseRun& r) {
       // Rows of k values in X with both gradients; rows of one value in A (a cosine against its
       // label); losses alone.
       const int64_t rows = r.size(1, 300), k = r.width(300);
       const Tensor a = r.in("a", {rows, k}), b = r.in("b", {rows, k});
       Tensor losses = r.out("losses", {rows}, kRowsA, A);
       Tensor da = r.grad("da", a, kRowsX), db = r.grad("db", b, kRowsX);
       ops::mse_loss(a, b, losses, &da, &db, 0.7);
       r.loss(losses, 0.7);
       const Tensor a1 = r.in("a (k=1, A)", {rows, 1}, A), b1 = r.in("b (k=1, A)", {rows, 1}, A);
       Tensor losses1 = r.out("losses (k=1)", {rows}, kRowsA, A);
       Tensor da1 = r.grad("da (k=1)", a1, kRowsA, Fill::garbage, A),
              db1 = r.grad("db (k=1)", b1, kRowsA, Fill::garbage, A);
       ops::mse_loss(a1, b1, losses1, &da1, &db1, 1.0);
       r.loss(losses1);
       Tensor alone = r.out("losses without gradients", {rows}, kRowsA, A);
       ops::mse_loss(a, b, alone);
     }},
    // ---- Rows
    {"gather_rows_scatter_rows",
     [](CaseRun& r) {
       // gather with distinct indices and its adjoint scatter (into a random start: the rows not
       // indexed are left as they are); gather with repeated indices.
       const int64_t n = r.size(1, 300), m = r.size(1, n), d = r.width(300);
       std::vector<int32_t> order(static_cast<size_t>(n));
       for (int32_t i = 0; i < n; ++i) order[i] = i;
       std::shuffle(order.begin(), order.end(),
                    std::mt19937(static_cast<uint32_t>(r.size(0, 1 << 30))));
       order.resize(static_cast<size_t>(m));
       const Tensor index = r.ids(order), src = r.in("src", {n, d});
       Tensor out = r.out("out", {m, d}, kExact);
       ops::gather_rows(src, index, out);
       const Tensor dout = r.in("dout", {m, d});
       r.loss(out, dout);
       Tensor dsrc = r.grad("dsrc (scatter)", src, kExact, Fill::start);
       ops::scatter_rows(dout, index, dsrc);
       const Tensor repeated = r.ids(r.ints(m, 0, static_cast<int32_t>(n - 1)));
       Tensor out_repeated = r.out("out (repeated indices)", {m, d}, kExact);
       ops::gather_rows(src, repeated, out_repeated);
     }},
    // ---- Sequence sums and the pooling head
    {"segment_sum_forward_backward",
     [](CaseRun& r) {
       // The backward pass overwrites dx (a copy of dout_b per token: exact) and accumulates onto
       // it (one addition, rounded to X); the loss counts twice.
       const std::vector<int32_t> lengths = ragged_lengths(r, 60);
       const int64_t tokens = total(lengths), d = r.width(300);
       const ops::Sequences seqs = r.seqs(lengths);
       const Tensor x = r.in("x", {tokens, d});
       Tensor out = r.out("out", {seqs.count(), d}, kRowsX);
       ops::segment_sum(x, seqs, out);
       const Tensor dout = r.in("dout", {seqs.count(), d});
       r.loss(out, dout, 2);
       Tensor dx = r.grad("dx", x, kExact),
              dx_sum = r.grad("dx (accumulate)", x, kRowsX, Fill::start);
       ops::segment_sum_backward(dout, seqs, dx);
       ops::segment_sum_backward(dout, seqs, dx_sum, true);
     }},
    {"pooling_forward_backward",
     [](CaseRun& r) {
       // One token's l is zero, so ‖l_t‖ ‖g_b‖ <= eps: a_t = 0 and the backward pass takes the eps
       // branch (the finite differences leave all-zero rows alone). dx accumulates (x also feeds
       // the pooling matrices), dl and dg are overwritten.
       const std::vector<int32_t> lengths = ragged_lengths(r, 60);
       const int64_t tokens = total(lengths), d = r.width(300);
       const ops::Sequences seqs = r.seqs(lengths);
       const int64_t zero_token = seqs.host[4] + 1;  // inside the longest sequence
       const Tensor x = r.in("x", {tokens, d});
       std::vector<double> lv = r.uniform(tokens * d);
       std::fill_n(lv.begin() + zero_token * d, d, 0.0);
       const Tensor l = r.in("l", {tokens, d}, lv), g = r.in("g", {seqs.count(), d});
       Tensor v = r.out("v", {seqs.count(), d}, kRowsX), a = r.out("a", {tokens}, kRowsA, A);
       ops::pooling_forward(x, l, g, seqs, kPoolingEps, v, a);
       const Tensor dv = r.in("dv", {seqs.count(), d});
       r.loss(v, dv);
       Tensor dx = r.grad("dx", x, kRowsX, Fill::start), dl = r.grad("dl", l, kPoolingGrads),
              dg = r.grad("dg", g, kPoolingGrads);
       ops::pooling_backward(dv, x, l, g, a, seqs, kPoolingEps, dx, dl, dg);
     }},
    {"cosine_forward_backward",
     [](CaseRun& r) {
       // One row of a is zero: the eps branch (its da is dout/eps b, compared against its row).
       const int64_t rows = r.size(6, 40), d = r.width(300);
       std::vector<double> av = r.uniform(rows * d);
       std::fill_n(av.begin() + 5 * d, d, 0.0);
       const Tensor a = r.in("a", {rows, d}, av), b = r.in("b", {rows, d});
       Tensor out = r.out("out", {rows}, kRowsA, A);
       ops::cosine_forward(a, b, kPoolingEps, out);
       const Tensor dout = r.in("dout", {rows}, A);
       r.loss(out, dout);
       Tensor da = r.grad("da", a, kRowsX), db = r.grad("db", b, kRowsX);
       ops::cosine_backward(dout, a, b, kPoolingEps, da, db);
     }},
    // ---- Optimisers and the gradient norm
    {"adamw_update",
     [](CaseRun& r) {
       ops::AdamW config;
       config.lr = 1e-2;  // the weight decay (lr wd p = 1e-3 p) and each update far above rounding
       config.weight_decay = 0.1;
       config.grad_scale = 0.5;
       optimizer_case(
           r, config,
           [](Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const ops::AdamW& c, Tensor* copy) {
             ops::adamw_update(p, g, m, v, c, copy);
           },
           adamw_definition);
     }},
    {"nadam_update",
     [](CaseRun& r) {
       ops::NAdam config;
       config.lr = 1e-2;
       config.weight_decay = 0.1;
       config.grad_scale = 0.5;
       config.decoupled_weight_decay = r.round() == 1;
       optimizer_case(
           r, config,
           [](Tensor& p, const Tensor& g, Tensor& m, Tensor& v, ops::NAdam c, Tensor* copy) {
             c.mu_product = ops::nadam_mu_product(c);
             ops::nadam_update(p, g, m, v, c, copy);
           },
           nadam_definition);
     }},
    {"sum_of_squares",
     [](CaseRun& r) {
       // More than the 64 spans of one CUDA launch, an empty tensor, one of many blocks, a view
       // one element into its buffer (no 16-byte packs).
       std::vector<Tensor> tensors;
       for (const int64_t n : {int64_t{1}, int64_t{0}, int64_t{1000}, r.size(4000, 5000),
                               (int64_t{1} << 17) + r.size(1, 7)})
         tensors.push_back(r.in("t" + std::to_string(tensors.size()), {n}));
       for (int64_t i = 0; i < 70; ++i)
         tensors.push_back(r.in("t" + std::to_string(tensors.size()), {r.size(1, 300)}));
       const Tensor buffer = r.in("buffer", {1001});
       tensors.push_back(buffer.slice(0, 1, 1001));
       std::vector<const Tensor*> pointers;
       for (const Tensor& t : tensors) pointers.push_back(&t);
       Tensor out = r.out("out", {1}, kSumOfSquares, A);
       ops::sum_of_squares(pointers, out);
       r.define(out, [&] {
         double s = 0;
         for (size_t i = 0; i + 1 < tensors.size(); ++i)
           for (double v : r.values(tensors[i])) s += v * v;
         const std::vector<double>& b = r.values(buffer);
         for (size_t i = 1; i < b.size(); ++i) s += b[i] * b[i];
         return std::vector<double>{s};
       });
     }},
};
constexpr int kCaseCount = static_cast<int>(sizeof(kCases) / sizeof(kCases[0]));
constexpr int kRounds = 2;

uint64_t seed_of(const Case& c, int round) {  // a hash of the name, then the round
  Fnv1a64 h;
  h.str(c.name);
  return h.value() + static_cast<uint64_t>(round);
}

bool print_margins() {
  const char* v = std::getenv("QARAC_BACKEND_OPS_MARGINS");
  return v && std::string(v) == "1";
}

// ---- Every case on every backend and dtype, against the CPU in f64 ------------------------------

struct Target {
  const char* name;
  Device device;
  DType x;
  // The backend that computes the run's host tensors instead of the CPU's, or null.
  const ops::Backend* (*host_backend)();
};
const ops::Backend* emulated_cuda() { return &ops::cuda_emulated_backend(); }
const Target kTargets[] = {{"cpu_f32", Device::cpu(), DType::f32, nullptr},
                           {"cuda_f32", Device::cuda(0), DType::f32, nullptr},
                           {"cuda_bf16", Device::cuda(0), DType::bf16, nullptr},
                           {"cuda_emulated_f32", Device::cpu(), DType::f32, emulated_cuda},
                           {"cuda_emulated_bf16", Device::cpu(), DType::bf16, emulated_cuda}};
constexpr int kTargetCount = static_cast<int>(sizeof(kTargets) / sizeof(kTargets[0]));

class BackendOps : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(BackendOps, MatchesCpuF64) {
  const Case& c = kCases[std::get<0>(GetParam())];
  const Target& target = kTargets[std::get<1>(GetParam())];
  const ops::Backend* backend =
      target.host_backend ? target.host_backend() : ops::find_backend(target.device, target.x);
  if (!backend) GTEST_SKIP() << "this build has no CUDA backend";
  if (target.device.is_cuda() && cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  ASSERT_TRUE(backend->computes_in(target.x))
      << backend->name() << " does not compute in " << dtype_name(target.x);
  const DType a = backend->accumulation_of(target.x);
  const bool bf16 = target.x == DType::bf16;
  for (int round = 0; round < kRounds; ++round) {
    const uint64_t seed = seed_of(c, round);
    CaseRun want(Placement{Device::cpu(), DType::f64, DType::f64, target.x, a}, seed, round);
    c.body(want);
    CaseRun got(Placement{target.device, target.x, a, target.x, a}, seed, round);
    if (target.host_backend) {
      const ops::HostBackendOverride on(*backend);
      c.body(got);
    } else {
      c.body(got);
    }
    SCOPED_TRACE("seed " + std::to_string(seed) + ", round " + std::to_string(round) + ": " +
                 got.description());
    ASSERT_EQ(got.outputs().size(), want.outputs().size());
    for (size_t i = 0; i < got.outputs().size(); ++i) {
      const CaseRun::Output& o = got.outputs()[i];
      const double margin =
          expect_within(host_values(o.tensor), host_values(want.outputs()[i].tensor),
                        o.tensor.shape(), bf16 ? o.bound.bf16 : o.bound.f32, o.name);
      if (print_margins())
        std::cout << c.name << " " << target.name << " round " << round << " " << o.name
                  << ": worst error " << margin << " of the bound\n";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Table, BackendOps,
                         ::testing::Combine(::testing::Range(0, kCaseCount),
                                            ::testing::Range(0, kTargetCount)),
                         [](const ::testing::TestParamInfo<std::tuple<int, int>>& param) {
                           return std::string(kCases[std::get<0>(param.param)].name) + "_" +
                                  kTargets[std::get<1>(param.param)].name;
                         });

// ---- The reference itself: finite differences and definitions, CPU f64 -------------------------

class CpuReference : public ::testing::TestWithParam<int> {};

TEST_P(CpuReference, AgreesWithFiniteDifferencesAndDefinitions) {
  const Case& c = kCases[GetParam()];
  const Placement f64{Device::cpu(), DType::f64, DType::f64, DType::f64, DType::f64, true};
  for (int round = 0; round < kRounds; ++round) {
    const uint64_t seed = seed_of(c, round);
    CaseRun base(f64, seed, round);
    c.body(base);
    SCOPED_TRACE("seed " + std::to_string(seed) + ", round " + std::to_string(round) + ": " +
                 base.description());
    ASSERT_TRUE(base.definitions() > 0 || !base.gradients().empty())
        << "the case checks its f64 results against neither a definition nor finite differences";
    ASSERT_EQ(base.gradients().empty(), base.losses() == 0)
        << "gradients need a loss to be the gradients of, and a loss needs gradients";
    // One check per input with gradients: move that input along u ~ N(0, 1), except on rows that
    // are all zero (degenerate points the case placed on purpose, such as a cosine's eps branch).
    std::vector<size_t> inputs;
    for (const CaseRun::Gradient& g : base.gradients())
      if (std::find(inputs.begin(), inputs.end(), g.input) == inputs.end())
        inputs.push_back(g.input);
    for (const size_t input : inputs) {
      const std::vector<double>& x = base.input_values(input);
      std::mt19937_64 rng(seed ^ (0x9e3779b97f4a7c15ull * (input + 1)));
      std::normal_distribution<double> normal;
      std::vector<double> u(x.size());
      for (double& e : u) e = normal(rng);
      const Shape& shape = base.input_shape(input);
      if (shape.size() >= 2 && shape[0] > 0) {
        const auto row = static_cast<std::ptrdiff_t>(x.size() / static_cast<size_t>(shape[0]));
        for (std::ptrdiff_t begin = 0; begin < static_cast<std::ptrdiff_t>(x.size()); begin += row)
          if (std::all_of(x.begin() + begin, x.begin() + begin + row,
                          [](double e) { return e == 0; }))
            std::fill(u.begin() + begin, u.begin() + begin + row, 0.0);
      }
      double analytic = 0, scale = 0;
      for (const CaseRun::Gradient& g : base.gradients()) {
        if (g.input != input) continue;
        const std::vector<double> gv = host_values(g.tensor);
        for (size_t i = 0; i < gv.size(); ++i) {
          analytic += gv[i] * u[i];
          scale += std::fabs(gv[i] * u[i]);
        }
      }
      CaseRun plus(f64, seed, round, {input, &u, kFdStep}),
          minus(f64, seed, round, {input, &u, -kFdStep});
      c.body(plus);
      c.body(minus);
      const double numeric = (plus.loss_value() - minus.loss_value()) / (2 * kFdStep);
      EXPECT_LE(std::fabs(numeric - analytic), kFdTol * scale)
          << "d loss / d " << base.input_name(input) << " along a random direction: the backward "
          << "ops give " << analytic << ", finite differences of the forward ops " << numeric
          << " (terms summing to " << scale << " in absolute value)";
      if (print_margins())
        std::cout << c.name << " cpu_f64 round " << round << " d/d " << base.input_name(input)
                  << ": worst error " << std::fabs(numeric - analytic) / (kFdTol * scale)
                  << " of the bound\n";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Table, CpuReference, ::testing::Range(0, kCaseCount),
                         [](const ::testing::TestParamInfo<int>& param) {
                           return std::string(kCases[param.param].name);
                         });

}  // namespace
