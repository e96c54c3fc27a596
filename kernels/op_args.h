// The argument checker of the op dispatcher (ops.cpp): the vocabulary in which every op states
// its contract (a compute tensor of a shape, an accumulation tensor, an index tensor, sequences
// over the rows of an activation), each check failing with a qarac::Error that names the op, the
// argument, its dtype and shape, and what was expected. The dtype rules are those of the backend
// registered for the tensors' device (kernels/backend.h).
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/backend.h"
#include "kernels/ops.h"

namespace qarac::ops::checks {

// What the reference tensor of a call holds: values in the compute dtype X (activations,
// weights), or values in the accumulation dtype A (master weights, moments, a norm).
enum class Role { compute, accumulation };

// How a tensor's elements may lie: contiguous, or also row-strided: 2-D with contiguous rows
// (column stride 1) that lie stride(0) >= size(1) elements apart, such as a column slice of a
// wider tensor (attention reads Q, K and V where one fused projection wrote them side by side).
enum class Layout { contiguous, row_strided };

// The arguments of one call, checked against a reference tensor that fixes the device, hence the
// backend, and X and A: the reference's dtype must be one the backend computes in (Role::compute;
// A is then the backend's A for it) or accumulates in (Role::accumulation; X = A). Every tensor
// must be defined and live on the reference's device, and be contiguous unless its check allows
// Layout::row_strided.
class Args {
 public:
  Args(const char* op, const char* name, const Tensor& ref, Role role = Role::compute,
       Layout ref_layout = Layout::contiguous)
      : op_(op), name_(name), ref_(ref), backend_(find_backend(ref.device(), ref.dtype())) {
    layout(name, ref, ref_layout);
    count_dispatch();
    // Only the CUDA kind can lack a backend: the CPU reference is always built.
    QARAC_CHECK(backend_, op, ": this build has no CUDA backend (", name, " is ", ref.str(), ")");
    const DType d = ref.dtype();
    if (role == Role::compute) {
      QARAC_CHECK(backend_->computes_in(d), op, ": ", name, " ", ref.str(), " has dtype ",
                  dtype_name(d), "; ", backend_->name(), " ops compute in ",
                  backend_->compute_names());
      x_ = d;
      a_ = backend_->accumulation_of(d);
    } else {
      QARAC_CHECK(backend_->accumulates_in(d), op, ": ", name, " ", ref.str(), " has dtype ",
                  dtype_name(d), "; ", backend_->name(), " ops accumulate in ",
                  backend_->accumulation_names());
      x_ = a_ = d;
    }
  }

  const Backend& backend() const { return *backend_; }
  DType a_dtype() const { return a_; }

  // A tensor of X, optionally of a given shape.
  void compute(const char* name, const Tensor& t) const { expect_dtype(name, t, x_, "compute"); }
  void compute(const char* name, const Tensor& t, const Shape& shape,
               Layout how = Layout::contiguous) const {
    expect_dtype(name, t, x_, "compute", how);
    expect_shape(name, t, shape);
  }
  // A tensor of X of a given shape, row-strided like `first` (named first_name), the first of a
  // group of views that one kernel addresses with one row stride: t must have first's.
  void compute_rows(const char* name, const Tensor& t, const Shape& shape, const char* first_name,
                    const Tensor& first) const {
    compute(name, t, shape, Layout::row_strided);
    const int64_t mine = t.strides()[0], theirs = first.strides()[0];
    QARAC_CHECK(mine == theirs, op_, ": ", name, " ", t.str(), " has row stride ", mine, " but ",
                first_name, " has ", theirs, "; ", name, " and ", first_name,
                " must share one row stride");
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
  void rank(const char* name, const Tensor& t, int dims, Layout how = Layout::contiguous) const {
    layout(name, t, how);
    QARAC_CHECK(t.dim() == dims, op_, ": ", name, " ", t.str(), " must have ", dims, " dimensions");
  }
  void positive_eps(double eps) const {
    QARAC_CHECK(eps > 0, op_, ": eps ", eps, " must be positive");
  }

  // The sequences of a packed batch whose activations `name` have `rows` rows: offsets from 0,
  // non-decreasing, ending at rows; max_len the longest length; the offsets tensor i32 [B+1] and
  // the ids tensor i64 [B] on the reference's device (on the CPU also equal to their host
  // copies, which the CPU backend reads).
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
    if (ref_.device().is_cpu()) {
      const int32_t* o = s.offsets.data<int32_t>();
      for (int64_t b = 0; b <= s.count(); ++b)
        QARAC_CHECK(o[b] == s.host[b], op_, ": seqs.offsets[", b, "] = ", o[b],
                    " differs from seqs.host[", b, "] = ", s.host[b]);
    }
    QARAC_CHECK(static_cast<int64_t>(s.host_ids.size()) == s.count(), op_, ": seqs has ",
                s.host_ids.size(), " ids (seqs.host_ids) for ", s.count(), " sequences");
    layout("seqs.ids", s.ids);
    same_device("seqs.ids", s.ids);
    QARAC_CHECK(s.ids.dtype() == DType::i64, op_, ": seqs.ids ", s.ids.str(), " must be i64");
    expect_shape("seqs.ids", s.ids, {s.count()});
    if (ref_.device().is_cpu()) {
      const int64_t* ids = s.ids.data<int64_t>();
      for (int64_t b = 0; b < s.count(); ++b)
        QARAC_CHECK(static_cast<uint64_t>(ids[b]) == s.host_ids[b], op_, ": seqs.ids[", b, "] = ",
                    static_cast<uint64_t>(ids[b]), " differs from seqs.host_ids[", b,
                    "] = ", s.host_ids[b]);
    }
  }

 private:
  void layout(const char* name, const Tensor& t, Layout how = Layout::contiguous) const {
    QARAC_CHECK(t.defined(), op_, ": ", name, " is undefined");
    if (t.is_contiguous()) return;
    QARAC_CHECK(how == Layout::row_strided, op_, ": ", name, " ", t.str(), " is not contiguous");
    const Shape& s = t.strides();
    QARAC_CHECK(t.dim() == 2 && s[1] == 1 && s[0] >= t.size(1), op_, ": ", name, " ", t.str(),
                " with strides ", shape_str(s),
                " is neither contiguous nor row-strided (2-D, column stride 1, row stride >= the "
                "row length)");
  }
  void same_device(const char* name, const Tensor& t) const {
    QARAC_CHECK(t.device() == ref_.device(), op_, ": ", name, " ", t.str(),
                " is not on the device of ", name_, " ", ref_.str());
  }
  void expect_dtype(const char* name, const Tensor& t, DType want, const char* which,
                    Layout how = Layout::contiguous) const {
    layout(name, t, how);
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
  const Backend* backend_;
  DType x_, a_;
};

// p in [0, 1), and below 1 - 2^-17, where the 16-bit draws (core/rng.h) would drop everything.
inline void check_probability(const char* op, double p) {
  QARAC_CHECK(p >= 0 && p < 1, op, ": dropout probability ", p, " is outside [0, 1)");
  QARAC_CHECK(p < kDropoutBelow, op, ": dropout probability ", p,
              " rounds to 1 in the 16-bit draws (core/rng.h); use less than 1 - 2^-17");
}

// A size that a dropout element index (core/rng.h) holds in `bits` bits: at most 2^bits.
inline void draw_limit(const char* op, const char* what, int64_t value, int bits) {
  QARAC_CHECK(value <= (int64_t{1} << bits), op, ": ", what, " is ", value,
              "; dropout draws address at most 2^", bits, " = ", int64_t{1} << bits,
              " (core/rng.h, sequence_draw)");
}

}  // namespace qarac::ops::checks
