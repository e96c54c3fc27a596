// The op backends as a table. A Backend is one device kind's implementation of every op of ops.h:
// its virtual functions are the entry points, with the Tensor-level signatures of ops.h, and it
// states the dtypes it computes in. ops.cpp checks every argument once (layout, devices, shapes,
// and the dtypes asked of the tensors' backend) and then calls the entry, so an entry may assume
// that its arguments meet the contract of ops.h. Implementations: kernels/cpu/backend.cpp (the
// reference, in float or double) and kernels/cuda/backend.cpp (CUDA, in a build with
// QARAC_HAVE_CUDA); find_backend picks the one registered for a device.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/ops.h"

namespace qarac::ops {

// A compute dtype X and the accumulation dtype A that goes with it on a backend.
struct DTypePair {
  DType compute, accumulation;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // ---- Name and dtype rules ---------------------------------------------------------------------
  virtual const char* name() const = 0;  // "CPU", "CUDA": error messages say "<name> ops ..."
  // Every compute dtype X of the backend with its accumulation dtype A. All dtype rules of the
  // ops derive from this list:
  // - activations and weights are in an X; gradients of parameters, statistics, losses in its A;
  // - an optimiser's master weights, moments and gradients are in some A, and its param_copy
  //   (the model's compute copy) is in an X whose A is the master weights' dtype;
  // - sum_of_squares reads tensors of one X and writes out in that X's A.
  virtual const std::vector<DTypePair>& dtypes() const = 0;

  bool computes_in(DType x) const;
  bool accumulates_in(DType a) const;
  bool is_pair(DType x, DType a) const;  // x is an X of this backend and a its A
  DType accumulation_of(DType x) const;  // the A of compute dtype x (x must be one)
  // "f32 or f64": the X (or A) dtypes, for error messages.
  std::string compute_names() const;
  std::string accumulation_names() const;

  // ---- Entry points: the ops of ops.h, arguments already checked --------------------------------
  virtual void gemm(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b,
                    double alpha, double beta) const = 0;
  virtual void gemm_batched(const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b,
                            double alpha, double beta) const = 0;
  virtual void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
                              Activation act, Tensor* pre) const = 0;
  virtual void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx,
                               Tensor& dw, Tensor* dbias, const Tensor* input_gelu_pre,
                               bool accumulate_dx, Tensor* input_gelu_dbias) const = 0;

  virtual void bias_add(Tensor& y, const Tensor& bias) const = 0;
  virtual void bias_backward(const Tensor& dy, Tensor& dbias) const = 0;
  virtual void add(const Tensor& a, const Tensor& b, Tensor& out) const = 0;
  virtual void accumulate(Tensor& dst, const Tensor& src) const = 0;
  virtual void scale(Tensor& x, double factor) const = 0;

  virtual void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out,
                                 bool accumulate) const = 0;
  virtual void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) const = 0;

  virtual void layernorm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                 double eps, Tensor& y, Tensor& mean, Tensor& rstd) const = 0;
  virtual void add_layernorm_forward(const Tensor& a, const Tensor& b, const Tensor& gamma,
                                     const Tensor& beta, double eps, Tensor& sum, Tensor& y,
                                     Tensor& mean, Tensor& rstd,
                                     const BranchDropout* branch_dropout) const = 0;
  // dbranch is given exactly when branch_dropout is.
  virtual void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                  const Tensor& mean, const Tensor& rstd, Tensor& dx,
                                  Tensor& dgamma, Tensor& dbeta,
                                  const BranchDropout* branch_dropout, Tensor* dbranch,
                                  Tensor* dbias_branch) const = 0;

  virtual void gelu_forward(const Tensor& x, Tensor& y) const = 0;
  virtual void gelu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) const = 0;
  virtual void dropout_forward(const Tensor& x, double p, const RngKey& key,
                               const Sequences& seqs, Tensor& y) const = 0;
  virtual void dropout_backward(const Tensor& dy, double p, const RngKey& key,
                                const Sequences& seqs, Tensor& dx) const = 0;

  virtual void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Sequences& seqs, int64_t heads, bool causal,
                                 double dropout_p, const RngKey& dropout_key, Tensor& out,
                                 Tensor& lse) const = 0;
  virtual void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& out, const Tensor& lse,
                                  const Sequences& seqs, int64_t heads, bool causal,
                                  double dropout_p, const RngKey& dropout_key, Tensor& dq,
                                  Tensor& dk, Tensor& dv) const = 0;
  virtual void attention_over_ranges(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& ranges, int64_t heads, Tensor& out) const = 0;

  // valid_cols is resolved (never -1).
  virtual void softmax_cross_entropy(const Tensor& logits, const Tensor& targets,
                                     int32_t ignore_index, Tensor& losses, Tensor* dlogits,
                                     double dloss, int64_t valid_cols,
                                     const Tensor* row_weights) const = 0;
  virtual void mse_loss(const Tensor& a, const Tensor& b, Tensor& losses, Tensor* da, Tensor* db,
                        double dloss) const = 0;

  virtual void gather_rows(const Tensor& src, const Tensor& index, Tensor& out) const = 0;
  virtual void scatter_rows(const Tensor& src, const Tensor& index, Tensor& out) const = 0;

  virtual void segment_sum(const Tensor& x, const Sequences& seqs, Tensor& out) const = 0;
  virtual void segment_sum_backward(const Tensor& dout, const Sequences& seqs, Tensor& dx,
                                    bool accumulate) const = 0;
  virtual void pooling_forward(const Tensor& x, const Tensor& l, const Tensor& g,
                               const Sequences& seqs, double eps, Tensor& v, Tensor& a) const = 0;
  virtual void pooling_backward(const Tensor& dv, const Tensor& x, const Tensor& l, const Tensor& g,
                                const Tensor& a, const Sequences& seqs, double eps, Tensor& dx,
                                Tensor& dl, Tensor& dg) const = 0;
  virtual void cosine_forward(const Tensor& a, const Tensor& b, double eps, Tensor& out) const = 0;
  virtual void cosine_backward(const Tensor& dout, const Tensor& a, const Tensor& b, double eps,
                               Tensor& da, Tensor& db) const = 0;

  virtual void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                            const AdamW& config, Tensor* param_copy) const = 0;
  virtual void nadam_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                            const NAdam& config, Tensor* param_copy) const = 0;
  // No pointer of `tensors` is null, and they share one dtype.
  virtual void sum_of_squares(const std::vector<const Tensor*>& tensors, Tensor& out) const = 0;
};

// The backend this build registers for the device's kind, or null: a CUDA device in a build
// without QARAC_HAVE_CUDA. `dtype`, the dtype of the call's reference tensor, matters only under a
// HostBackendOverride.
const Backend* find_backend(Device device, DType dtype);

// For tests: while an instance lives, ops on host tensors of a dtype `backend` computes or
// accumulates in run on `backend` instead of the CPU reference, and the others (the host's own
// f64 arithmetic) stay on the CPU. tests/emulation runs the CUDA backend's own source this way,
// on host memory under a CUDA emulator. Not thread-safe, and instances do not nest.
class HostBackendOverride {
 public:
  explicit HostBackendOverride(const Backend& backend);
  ~HostBackendOverride();
  HostBackendOverride(const HostBackendOverride&) = delete;
  HostBackendOverride& operator=(const HostBackendOverride&) = delete;
};

// The ops dispatched in this process so far: every ops.h call, each one kernel or library launch
// on CUDA or a few (linear_backward: two GEMMs and the bias gradient). qarac-bench prints them
// per step: what a step pays in launches. Args (op_args.h) counts each call.
uint64_t dispatched_ops();
void count_dispatch();

// The implementations; find_backend is their registry and only caller.
const Backend& cpu_backend();   // kernels/cpu/backend.cpp
const Backend& cuda_backend();  // kernels/cuda/backend.cpp, only with QARAC_HAVE_CUDA

// ---- Host-side coefficients every backend's optimiser step shares ----------------------------
// One step's bias corrections and NAdam step coefficients, formed once on the host in double from
// the configuration (ops.h), so every backend applies the same constants.
struct AdamWCoefficients {
  double bias_correction1, bias_correction2;  // 1 - β^step
};
AdamWCoefficients adamw_coefficients(const AdamW& config);
struct NAdamCoefficients {
  double bias_correction2;  // 1 - β2^t
  double grad_coef;         // lr (1 - μ_t) / (1 - Π_t)
  double momentum_coef;     // lr μ_{t+1} / (1 - Π_{t+1})
};
NAdamCoefficients nadam_coefficients(const NAdam& config);
// [0, n) cut where the weight decay starts or stops applying (at the bounds of `no_decay`, checked
// by the op): the runs each backend updates with one decay, in order, none empty.
struct DecayRun {
  int64_t begin, end;
  bool decays;
};
std::vector<DecayRun> decay_runs(int64_t n, const std::vector<ElementRange>& no_decay);

}  // namespace qarac::ops
