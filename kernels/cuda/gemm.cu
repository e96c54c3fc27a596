// GEMMs and dense layers on cuBLASLt. Every product accumulates in f32 (CUBLAS_COMPUTE_32F): bf16
// inputs run on the tensor cores with f32 accumulation, f32 inputs in true f32 (not the TF32
// mode, whose 10-bit mantissa would make the f32 parity checks meaningless).
//
// Row-major operands through a column-major library: a row-major [R, C] matrix is, in the same
// memory, a column-major [C, R] one, its transpose. So the row-major C = op(A)·op(B) is computed
// as the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLASLt's "A" is our b and its "B" is our a, with the
// same transpose flags, and its m, n are our n, m.
//
// Epilogues. The linear layers use CUBLASLT_EPILOGUE_BIAS (bias[out] added to every row, on
// cuBLASLt's column-major rows, which are our columns). The GELU epilogues
// (CUBLASLT_EPILOGUE_GELU_AUX_BIAS, CUBLASLT_EPILOGUE_DGELU) are not used: cuBLASLt's GELU is the
// tanh approximation (which is why PyTorch's fused _addmm_activation(use_gelu=True) is the tanh
// GELU on CUDA), and it differs from RoBERTa's erf GELU by up to ~4e-4, which would break parity
// with Hugging Face and the CPU reference. The
// GELU therefore runs as its own kernel over the GEMM's output (gelu.cu): forward, GEMM + bias
// epilogue writes pre, then y = gelu(pre); backward, GEMM writes dy·w into dx, then
// dx ⊙= gelu'(pre) in place. That costs one extra read and write of a [rows, out] bf16 matrix
// per call. Where the heuristic offers no algorithm with the bias epilogue for a case (unusual
// alignment), the plain GEMM runs and elementwise.cu's bias_add follows.
// Bias gradients never use the BGRAD epilogues, which overwrite rather than accumulate:
// elementwise.cu's bias_backward adds them, deterministically.
//
// Determinism and accuracy of split-K: the heuristic may only pick algorithms that either do not
// split K or reduce the split parts in f32 in a separate pass (CUBLASLT_REDUCTION_SCHEME_
// COMPUTE_TYPE). The INPLACE and OUTPUT_TYPE schemes sum partial products in the output type,
// which for a bf16 output would round every partial to 8 bits and undo the f32 accumulation.
//
// Algorithm cache. The heuristic query costs far more than the GEMM launch for the model's small
// and mid-sized shapes, and a training step calls the same few shapes every step, so the chosen
// algorithm is cached per (device, dtypes, transposes, sizes, epilogue, operand alignments).
// Descriptors and layouts are still created per call: host-only, microseconds, no device work.
// With ragged batches the token count T changes every step, and exact sizes would miss the cache
// in every GEMM of every step. So the sizes that are no operand's leading dimension (m unless
// trans_a, k when trans_a and not trans_b: where T sits in the linear layers' three GEMMs) are
// rounded up to a multiple of kBucket, for the key and for the heuristic's query: an algorithm
// is chosen once per bucket, from the bucket's largest shape, whatever T came first (so a resumed
// run chooses what the uninterrupted one did), and runs every T of the bucket. The leading
// dimensions stay exact, so the strides the algorithm was chosen for are the real ones. Should
// cuBLASLt refuse that algorithm for a smaller size, the exact size is queried and cached too.
#include "kernels/cuda/gemm.cuh"

#include <array>
#include <map>

#include "kernels/cuda/context.cuh"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/gelu.cuh"

namespace qarac::cuda {
namespace {

// ---- cuBLASLt objects ---------------------------------------------------------------------------

// Owns one cuBLASLt descriptor; destroyed on scope exit (errors ignored: a destructor must not
// throw, and a failed destroy leaves nothing to recover).
template <class H, cublasStatus_t (*Destroy)(H)>
class LtObject {
 public:
  LtObject() = default;
  LtObject(const LtObject&) = delete;
  LtObject& operator=(const LtObject&) = delete;
  ~LtObject() {
    if (handle_) Destroy(handle_);
  }
  H* out() { return &handle_; }
  H get() const { return handle_; }

 private:
  H handle_ = nullptr;
};
using MatmulDesc = LtObject<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using Layout = LtObject<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
using Preference = LtObject<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>;

cudaDataType_t lt_type(DType t) {
  if (t == DType::f32) return CUDA_R_32F;
  QARAC_CHECK(t == DType::bf16, "gemm: dtype ", dtype_name(t), " has no CUDA GEMM (f32 or bf16)");
  return CUDA_R_16BF;
}

// A column-major [rows, cols] layout with leading dimension ld, repeated `batch` times `stride`
// elements apart.
void make_layout(Layout& layout, cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld,
                 int64_t batch, int64_t stride) {
  QARAC_CHECK_CUBLAS(cublasLtMatrixLayoutCreate(layout.out(), type, static_cast<uint64_t>(rows),
                                                static_cast<uint64_t>(cols), ld));
  if (batch == 1) return;
  const int32_t count = static_cast<int32_t>(batch);
  QARAC_CHECK_CUBLAS(cublasLtMatrixLayoutSetAttribute(
      layout.get(), CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
  QARAC_CHECK_CUBLAS(cublasLtMatrixLayoutSetAttribute(
      layout.get(), CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
}

// The alignment in bytes (a power of two, at most the 256 cuBLASLt assumes by default) that holds
// for every matrix of a batch: that of the base pointer and of the stride between matrices.
uint32_t alignment(const void* p, int64_t batch, int64_t stride_bytes) {
  uintptr_t bits = reinterpret_cast<uintptr_t>(p);
  if (batch > 1) bits |= static_cast<uintptr_t>(stride_bytes);
  uint32_t align = 256;
  while (align > 1 && bits % align != 0) align /= 2;
  return align;
}

// ---- One product ----------------------------------------------------------------------------

// c [batch][m, n] = alpha op(a) op(b) + beta c, row-major, with bias [n] added to every row when
// `bias` is set (c's dtype; only without batching).
struct Product {
  DType ab, c;
  bool trans_a, trans_b;
  int64_t batch, m, n, k;
  const void* bias;
};

struct CachedAlgo {
  bool found;
  cublasLtMatmulAlgo_t algo;
};
using AlgoKey = std::array<int64_t, 14>;

std::map<AlgoKey, CachedAlgo>& algo_cache() {
  static std::map<AlgoKey, CachedAlgo> cache;  // one host thread per rank, like the context
  return cache;
}

// Per exact problem whose bucket's algorithm it runs: whether cublasLtMatmulAlgoCheck accepted
// that algorithm for its exact layouts, within the workspace (asked once per size).
std::map<AlgoKey, bool>& bucket_fits() {
  static std::map<AlgoKey, bool> verdicts;
  return verdicts;
}

constexpr int64_t kBucket = 64;

// p with its sizes that are no leading dimension rounded up to a multiple of kBucket (see the
// algorithm cache above); p itself when batched, where every size enters the batch strides.
Product bucketed(const Product& p) {
  if (p.batch != 1) return p;
  Product q = p;
  const auto round_up = [](int64_t x) { return ceil_div(x, kBucket) * kBucket; };
  if (!p.trans_a) q.m = round_up(p.m);
  if (p.trans_a && !p.trans_b) q.k = round_up(p.k);
  return q;
}

// cuBLASLt's operands of p (column-major): A_lt = our b, B_lt = our a, D = cᵀ [n, m]. The leading
// dimensions are the row-major widths: those of `ld`'s sizes (p itself, or the p a bucket stands
// for, whose leading dimensions are the same).
struct Layouts {
  Layout a, b, d;
  Layouts(const Product& p, const Product& ld) {
    const cudaDataType_t ab_type = lt_type(p.ab), c_type = lt_type(p.c);
    if (p.trans_b)  // b stored [n, k] row-major = [k, n] column-major, transposed
      make_layout(a, ab_type, p.k, p.n, ld.k, p.batch, p.k * p.n);
    else  // b stored [k, n] row-major = [n, k] column-major
      make_layout(a, ab_type, p.n, p.k, ld.n, p.batch, p.k * p.n);
    if (p.trans_a)  // a stored [k, m] row-major = [m, k] column-major, transposed
      make_layout(b, ab_type, p.m, p.k, ld.m, p.batch, p.m * p.k);
    else  // a stored [m, k] row-major = [k, m] column-major
      make_layout(b, ab_type, p.k, p.m, ld.k, p.batch, p.m * p.k);
    make_layout(d, c_type, p.n, p.m, ld.n, p.batch, p.m * p.n);
  }
};

// The operands' alignments in bytes, as the heuristic is told them: A_lt (our b), B_lt (our a),
// D (and C, the same buffer), the bias.
struct Alignments {
  uint32_t a, b, d, bias;
};

AlgoKey algo_key(const Product& q, const Alignments& align) {
  return {context().device, static_cast<int64_t>(q.ab), static_cast<int64_t>(q.c), q.trans_a,
          q.trans_b, q.batch, q.m, q.n, q.k, q.bias != nullptr, align.a, align.b, align.d,
          align.bias};
}

// The cached algorithm for problem q (p or its bucket), asking the heuristic on a miss.
const CachedAlgo& find_algo(const Product& p, const Product& q, cublasLtMatmulDesc_t desc,
                            const Alignments& align) {
  Context& ctx = context();
  const AlgoKey key = algo_key(q, align);
  auto found = algo_cache().find(key);
  if (found != algo_cache().end()) return found->second;
  const Layouts lt(q, p);
  Preference pref;
  QARAC_CHECK_CUBLAS(cublasLtMatmulPreferenceCreate(pref.out()));
  const uint64_t workspace = ctx.workspace_bytes;
  const uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
  QARAC_CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(
      pref.get(), CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace)));
  QARAC_CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(
      pref.get(), CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reduction, sizeof(reduction)));
  QARAC_CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(
      pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align.a, sizeof(align.a)));
  QARAC_CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(
      pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align.b, sizeof(align.b)));
  // beta = 0 or not, C and D are the same buffer.
  QARAC_CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(
      pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align.d, sizeof(align.d)));
  QARAC_CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(
      pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align.d, sizeof(align.d)));
  cublasLtMatmulHeuristicResult_t result = {};
  int returned = 0;
  // NOT_SUPPORTED (rather than zero results) is how some versions answer an impossible case.
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      ctx.lt, desc, lt.a.get(), lt.b.get(), lt.d.get(), lt.d.get(), pref.get(), 1, &result, &returned);
  if (status != CUBLAS_STATUS_NOT_SUPPORTED) QARAC_CHECK_CUBLAS(status);
  const bool ok =
      status == CUBLAS_STATUS_SUCCESS && returned > 0 && result.state == CUBLAS_STATUS_SUCCESS;
  return algo_cache().emplace(key, CachedAlgo{ok, result.algo}).first->second;
}

// Runs the product; false (and nothing queued) only when p.bias is set and no algorithm supports
// the bias epilogue for this case, so the caller can add the bias itself.
bool matmul(const Product& p, float alpha, const void* a, const void* b, float beta, void* c) {
  const size_t ab_size = dtype_size(p.ab), c_size = dtype_size(p.c);
  MatmulDesc desc;
  QARAC_CHECK_CUBLAS(cublasLtMatmulDescCreate(desc.out(), CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const int32_t op_a = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int32_t op_b = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  QARAC_CHECK_CUBLAS(
      cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  QARAC_CHECK_CUBLAS(
      cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  if (p.bias) {
    // The bias has D's type (the default of CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE); the heuristic
    // reads the pointer's alignment from the descriptor.
    const uint32_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    QARAC_CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                      &epilogue, sizeof(epilogue)));
    QARAC_CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                      &p.bias, sizeof(p.bias)));
  }

  const Alignments align{alignment(b, p.batch, p.k * p.n * static_cast<int64_t>(ab_size)),
                         alignment(a, p.batch, p.m * p.k * static_cast<int64_t>(ab_size)),
                         alignment(c, p.batch, p.m * p.n * static_cast<int64_t>(c_size)),
                         p.bias ? alignment(p.bias, 1, 0) : 0u};
  const Product bucket = bucketed(p);
  const Layouts lt(p, p);
  Context& ctx = context();
  const auto run = [&](const CachedAlgo& algo) {
    return cublasLtMatmul(ctx.lt, desc.get(), &alpha, b, lt.a.get(), a, lt.b.get(), &beta, c,
                          lt.d.get(), c, lt.d.get(), &algo.algo, ctx.workspace,
                          ctx.workspace_bytes, ctx.stream);
  };
  // The bucket's algorithm, unless the exact size already needed one of its own. The heuristic
  // chose it for the bucket's largest size: cuBLASLt checks it against the exact layouts first
  // (an algorithm that fails cublasLtMatmulAlgoCheck will not run, and the check tells the
  // workspace this size needs); one that passes may still be refused when it runs.
  const bool padded = bucket.m != p.m || bucket.k != p.k;
  const AlgoKey exact_key = algo_key(p, align);
  if (padded && algo_cache().count(exact_key) == 0) {
    const CachedAlgo& shared = find_algo(p, bucket, desc.get(), align);
    auto verdict = bucket_fits().find(exact_key);
    if (shared.found && verdict == bucket_fits().end()) {
      cublasLtMatmulHeuristicResult_t check = {};
      const cublasStatus_t status = cublasLtMatmulAlgoCheck(ctx.lt, desc.get(), lt.a.get(), lt.b.get(), lt.d.get(),
                                                            lt.d.get(), &shared.algo, &check);
      const bool fits = status == CUBLAS_STATUS_SUCCESS && check.workspaceSize <= ctx.workspace_bytes;
      verdict = bucket_fits().emplace(exact_key, fits).first;
    }
    if (shared.found && verdict->second) {
      const cublasStatus_t status = run(shared);
      if (status == CUBLAS_STATUS_SUCCESS) return true;
      if (status != CUBLAS_STATUS_NOT_SUPPORTED && status != CUBLAS_STATUS_INVALID_VALUE)
        QARAC_CHECK_CUBLAS(status);
    }
  }
  const CachedAlgo& exact = find_algo(p, p, desc.get(), align);
  if (!exact.found) {
    if (p.bias) return false;
    QARAC_CHECK(false, "gemm: cuBLASLt has no algorithm for ", dtype_name(p.ab), " -> ",
                dtype_name(p.c), " batch ", p.batch, ", m ", p.m, ", n ", p.n, ", k ", p.k,
                ", trans_a ", p.trans_a, ", trans_b ", p.trans_b, " (alignments ", align.a, "/",
                align.b, "/", align.d, " bytes)");
  }
  QARAC_CHECK_CUBLAS(run(exact));
  return true;
}

// c = alpha op(a) op(b) + beta c including the degenerate cases cuBLASLt does not take: nothing
// to compute, or k = 0 (op(a) op(b) = 0, so c = beta c).
void product(const Product& p, double alpha, const void* a, const void* b, double beta, void* c) {
  QARAC_CHECK(p.batch >= 0 && p.m >= 0 && p.n >= 0 && p.k >= 0, "gemm: negative size (batch ",
              p.batch, ", m ", p.m, ", n ", p.n, ", k ", p.k, ")");
  QARAC_CHECK(p.c == p.ab || (p.ab == DType::bf16 && p.c == DType::f32), "gemm: ",
              dtype_name(p.ab), " inputs cannot write a ", dtype_name(p.c), " output");
  QARAC_CHECK(p.batch <= INT32_MAX, "gemm: batch ", p.batch, " exceeds cuBLASLt's int32 count");
  const int64_t outputs = p.batch * p.m * p.n;
  if (outputs == 0) return;
  if (p.k == 0) {
    if (beta == 0)
      QARAC_CHECK_CUDA(cudaMemsetAsync(c, 0, static_cast<size_t>(outputs) * dtype_size(p.c),
                                       stream()));
    else if (beta != 1)
      scale(p.c, c, beta, outputs);
    if (p.bias) bias_add(p.c, c, p.bias, p.m, p.n);
    return;
  }
  if (matmul(p, static_cast<float>(alpha), a, b, static_cast<float>(beta), c)) return;
  Product plain = p;
  plain.bias = nullptr;
  matmul(plain, static_cast<float>(alpha), a, b, static_cast<float>(beta), c);
  bias_add(p.c, c, p.bias, p.m, p.n);
}

}  // namespace

void gemm(DType ab, DType c_dtype, bool trans_a, bool trans_b, int64_t batch, int64_t m, int64_t n,
          int64_t k, double alpha, const void* a, const void* b, double beta, void* c) {
  product({ab, c_dtype, trans_a, trans_b, batch, m, n, k, nullptr}, alpha, a, b, beta, c);
}

void linear_forward(DType dtype, int64_t rows, int64_t in, int64_t out, const void* x,
                    const void* w, const void* bias, void* y, bool gelu, void* pre) {
  // z = x · wᵀ + bias goes to pre when it is kept, else to y, which GELU then overwrites in place.
  void* z = gelu && pre ? pre : y;
  product({dtype, dtype, false, true, 1, rows, out, in, bias}, 1.0, x, w, 0.0, z);
  if (gelu) gelu_forward(dtype, z, y, rows * out);
}

void linear_backward_input(DType dtype, int64_t rows, int64_t in, int64_t out, const void* dy,
                           const void* w, void* dx, const void* gelu_pre, bool accumulate,
                           float* gelu_dbias) {
  QARAC_CHECK(!(gelu_pre && accumulate),
              "linear_backward: accumulate_dx cannot be combined with input_gelu_pre");
  QARAC_CHECK(gelu_pre || !gelu_dbias, "linear_backward: input_gelu_dbias needs input_gelu_pre");
  product({dtype, dtype, false, false, 1, rows, in, out, nullptr}, 1.0, dy, w,
          accumulate ? 1.0 : 0.0, dx);
  // d loss / d pre = (dy · w) ⊙ gelu'(pre), in place over dx (rounded once to the dtype between).
  if (gelu_dbias)
    gelu_backward_bias(dtype, gelu_pre, dx, dx, rows, in, gelu_dbias);
  else if (gelu_pre)
    gelu_backward(dtype, gelu_pre, dx, dx, rows * in);
}

void linear_backward_weight(DType dtype, DType grad_dtype, int64_t rows, int64_t in, int64_t out,
                            const void* x, const void* dy, void* dw, void* dbias) {
  // dw [out, in] += dyᵀ [out, rows] · x [rows, in]: K = rows, the tokens of the batch.
  product({dtype, grad_dtype, true, false, 1, out, in, rows, nullptr}, 1.0, dy, x, 1.0, dw);
  if (dbias) bias_backward(dtype, grad_dtype, dy, dbias, rows, out);
}

}  // namespace qarac::cuda
