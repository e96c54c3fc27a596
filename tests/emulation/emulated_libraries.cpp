// The host emulation of the cuBLASLt and CUB calls and of the context (emulated_libraries.h).
#include "emulated_libraries.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

struct cublasLtMatrixLayoutOpaque_t {
  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;
  int32_t batch = 1;
  int64_t stride = 0;
};
struct cublasLtMatmulDescOpaque_t {
  int32_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
  uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
};
struct cublasLtMatmulPreferenceOpaque_t {
  uint32_t align[4] = {256, 256, 256, 256};  // A, B, C, D: cuBLASLt's default assumption
  uint32_t reduction_mask = ~0u;
};

namespace {

uint64_t queries = 0, refused = 0;
emu::AlgorithmRule rule = emu::AlgorithmRule::any_size;

// Whether `algo` was chosen for other sizes than these layouts' (D's rows and columns, op(A)'s
// inner size), where the rule binds an algorithm to its own.
bool other_sizes(const cublasLtMatmulAlgo_t* algo, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a,
                 cublasLtMatrixLayout_t d) {
  const uint64_t k = desc->trans_a == CUBLAS_OP_T ? a->rows : a->cols;
  return rule != emu::AlgorithmRule::any_size &&
         (algo->data[4] != d->rows || algo->data[5] != d->cols || algo->data[6] != k);
}

// Copies an attribute's value after checking its size, as the library does.
template <class T>
cublasStatus_t set(T& field, const void* buf, size_t bytes) {
  if (buf == nullptr || bytes != sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
  memcpy(&field, buf, sizeof(T));
  return CUBLAS_STATUS_SUCCESS;
}

float load(cudaDataType_t type, const void* base, int64_t i) {
  if (type == CUDA_R_32F) return static_cast<const float*>(base)[i];
  return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
}
void store(cudaDataType_t type, void* base, int64_t i, float v) {
  if (type == CUDA_R_32F)
    static_cast<float*>(base)[i] = v;
  else
    static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v);
}

bool aligned(const void* p, uint64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Element (i, j) of the column-major matrix `batch` of a layout.
int64_t at(const cublasLtMatrixLayoutOpaque_t& l, int64_t batch, int64_t i, int64_t j) {
  return batch * l.stride + j * l.ld + i;
}

}  // namespace

const char* cublasLtGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "unknown cuBLAS status";
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType_t type,
                                          uint64_t rows, uint64_t cols, int64_t ld) {
  if (type != CUDA_R_32F && type != CUDA_R_16BF) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (ld < static_cast<int64_t>(std::max<uint64_t>(rows, 1))) return CUBLAS_STATUS_INVALID_VALUE;
  *layout = new cublasLtMatrixLayoutOpaque_t{type, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t layout,
                                                cublasLtMatrixLayoutAttribute_t attr,
                                                const void* buf, size_t bytes) {
  switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: return set(layout->batch, buf, bytes);
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: return set(layout->stride, buf, bytes);
  }
  return CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete layout;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                        cudaDataType_t scale) {
  if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  *desc = new cublasLtMatmulDescOpaque_t;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                              cublasLtMatmulDescAttributes_t attr, const void* buf,
                                              size_t bytes) {
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA: return set(desc->trans_a, buf, bytes);
    case CUBLASLT_MATMUL_DESC_TRANSB: return set(desc->trans_b, buf, bytes);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return set(desc->epilogue, buf, bytes);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return set(desc->bias, buf, bytes);
  }
  return CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete desc;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  *pref = new cublasLtMatmulPreferenceOpaque_t;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr,
                                                    const void* buf, size_t bytes) {
  uint64_t workspace = 0;
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: return set(workspace, buf, bytes);
    case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK: return set(pref->reduction_mask, buf, bytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: return set(pref->align[0], buf, bytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: return set(pref->align[1], buf, bytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: return set(pref->align[2], buf, bytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: return set(pref->align[3], buf, bytes);
  }
  return CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete pref;
  return CUBLAS_STATUS_SUCCESS;
}

// Every case has an algorithm (the one loop of cublasLtMatmul), which carries the promised
// alignments; a zero alignment or one that is not a power of two is the caller's error.
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t,
                                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t* results,
                                              int* returned) {
  ++queries;
  if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
  for (const uint32_t bytes : pref->align)
    if (bytes == 0 || (bytes & (bytes - 1)) != 0) return CUBLAS_STATUS_INVALID_VALUE;
  results[0] = {};
  for (int i = 0; i < 4; ++i) results[0].algo.data[i] = pref->align[i];
  const bool ta = desc->trans_a == CUBLAS_OP_T;
  results[0].algo.data[4] = d->rows;
  results[0].algo.data[5] = d->cols;
  results[0].algo.data[6] = ta ? a->rows : a->cols;
  results[0].state = CUBLAS_STATUS_SUCCESS;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}

// The run's refusal of other sizes, said beforehand unless the rule keeps the check quiet; no
// workspace (the emulated product needs none).
cublasStatus_t cublasLtMatmulAlgoCheck(cublasLtHandle_t, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a,
                                       cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t d,
                                       const cublasLtMatmulAlgo_t* algo, cublasLtMatmulHeuristicResult_t* result) {
  if (algo == nullptr || result == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *result = {};
  result->algo = *algo;
  result->state = CUBLAS_STATUS_SUCCESS;
  if (rule == emu::AlgorithmRule::chosen_size && other_sizes(algo, desc, a, d)) return CUBLAS_STATUS_INVALID_VALUE;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t desc, const void* alpha_p,
                              const void* a, cublasLtMatrixLayout_t la, const void* b,
                              cublasLtMatrixLayout_t lb, const void* beta_p, const void* c,
                              cublasLtMatrixLayout_t lc, void* d, cublasLtMatrixLayout_t ld,
                              const cublasLtMatmulAlgo_t* algo, void*, size_t, cudaStream_t) {
  emu::count_launch("cublasLtMatmul");
  if (algo == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  const bool ta = desc->trans_a == CUBLAS_OP_T, tb = desc->trans_b == CUBLAS_OP_T;
  const int64_t m = static_cast<int64_t>(ld->rows), n = static_cast<int64_t>(ld->cols);
  const int64_t k = static_cast<int64_t>(ta ? la->rows : la->cols);
  const bool shapes = (ta ? la->cols : la->rows) == ld->rows && (tb ? lb->rows : lb->cols) == ld->cols &&
                      (tb ? lb->cols : lb->rows) == static_cast<uint64_t>(k) && lc->rows == ld->rows &&
                      lc->cols == ld->cols && lc->type == ld->type && la->type == lb->type &&
                      la->batch == ld->batch && lb->batch == ld->batch && lc->batch == ld->batch;
  if (!shapes) return CUBLAS_STATUS_INVALID_VALUE;
  const void* operands[4] = {a, b, c, d};
  for (int i = 0; i < 4; ++i)
    if (!aligned(operands[i], algo->data[i])) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (other_sizes(algo, desc, la, ld)) {
    ++refused;
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  const bool bias = desc->epilogue == CUBLASLT_EPILOGUE_BIAS;
  if (!bias && desc->epilogue != CUBLASLT_EPILOGUE_DEFAULT) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (bias && (desc->bias == nullptr || ld->batch != 1)) return CUBLAS_STATUS_INVALID_VALUE;
  const float alpha = *static_cast<const float*>(alpha_p), beta = *static_cast<const float*>(beta_p);
  std::vector<float> out(static_cast<size_t>(m));
  for (int64_t batch = 0; batch < ld->batch; ++batch)
    for (int64_t j = 0; j < n; ++j) {
      // A column of D at a time, C read whole before D is written: C and D may be one buffer.
      for (int64_t i = 0; i < m; ++i) {
        float sum = 0.f;
        for (int64_t p = 0; p < k; ++p)
          sum += load(la->type, a, ta ? at(*la, batch, p, i) : at(*la, batch, i, p)) *
                 load(lb->type, b, tb ? at(*lb, batch, j, p) : at(*lb, batch, p, j));
        float v = alpha * sum;
        if (beta != 0.f) v += beta * load(lc->type, c, at(*lc, batch, i, j));
        if (bias) v += load(ld->type, desc->bias, i);
        out[static_cast<size_t>(i)] = v;
      }
      for (int64_t i = 0; i < m; ++i) store(ld->type, d, at(*ld, batch, i, j), out[static_cast<size_t>(i)]);
    }
  return CUBLAS_STATUS_SUCCESS;
}

cudaError_t cub::DeviceRadixSort::SortPairs(void* temp, size_t& temp_bytes, const uint32_t* keys_in,
                                            uint32_t* keys_out, const int32_t* values_in,
                                            int32_t* values_out, int items, int begin_bit,
                                            int end_bit, cudaStream_t) {
  const size_t needed = 256 + static_cast<size_t>(items) * 8;
  if (temp == nullptr) {
    temp_bytes = needed;
    return cudaSuccess;
  }
  if (temp_bytes < needed || items < 0 || begin_bit < 0 || end_bit > 32 || begin_bit >= end_bit)
    return 1;  // cudaErrorInvalidValue
  memset(temp, 0xFF, temp_bytes);  // what the library leaves there is nobody's to read
  const uint32_t mask = end_bit - begin_bit == 32 ? ~0u : ((1u << (end_bit - begin_bit)) - 1) << begin_bit;
  std::vector<int> order(static_cast<size_t>(items));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int x, int y) { return (keys_in[x] & mask) < (keys_in[y] & mask); });
  for (int i = 0; i < items; ++i) {
    keys_out[i] = keys_in[order[static_cast<size_t>(i)]];
    values_out[i] = values_in[order[static_cast<size_t>(i)]];
  }
  return cudaSuccess;
}

uint64_t emu::heuristic_queries() { return queries; }
void emu::set_algorithm_rule(AlgorithmRule r) { rule = r; }
uint64_t emu::refused_runs() { return refused; }

namespace qarac::cuda_emulated {

Context& context() {
  static Context ctx;
  return ctx;
}

}  // namespace qarac::cuda_emulated
