// What kernels/cuda takes from CUDA's libraries and from context.cuh, on the host, for the CUDA
// emulator (cuda_emulator.h): the cuBLASLt calls of gemm.cu, CUB's radix sort of embedding.cu,
// and the context (device, stream, cuBLASLt handle and workspace). port_kernel.py puts this header
// where a source includes kernels/cuda/context.cuh or CUB.
//
// The cuBLASLt subset is written from NVIDIA's documentation of the calls, not from gemm.cu, and
// checks what the documentation asks of its caller: a matmul computes
//   D = alpha op(A) op(B) + beta C (+ bias[i] on row i of D with CUBLASLT_EPILOGUE_BIAS),
// column-major, each layout [rows, cols] with leading dimension ld >= rows and op(A) [m, k],
// op(B) [k, n], C and D [m, n] (batched: the same count for all, matrices `stride` elements
// apart), in f32 from bf16 or f32 operands; the call fails with CUBLAS_STATUS_INVALID_VALUE when
// the shapes disagree, and with CUBLAS_STATUS_NOT_SUPPORTED when an operand's address breaks an
// alignment promised in the preference the algorithm was chosen with (the hardware would read
// misaligned vectors). Every output is a plain f32 sum in k order, then one rounding to D's type.
// An algorithm from the heuristic runs any problem by default; under emu::set_algorithm_rule it
// runs only the sizes it was chosen for, the most the documentation promises, and
// cublasLtMatmulAlgoCheck says so beforehand, or (the documentation allows it) says nothing.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda_emulator.h"

// ---- cuBLASLt -----------------------------------------------------------------------------------

enum cublasStatus_t {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
const char* cublasLtGetStatusString(cublasStatus_t status);

enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68 };
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasLtEpilogue_t : uint32_t { CUBLASLT_EPILOGUE_DEFAULT = 1, CUBLASLT_EPILOGUE_BIAS = 4 };
enum cublasLtReductionScheme_t : uint32_t {
  CUBLASLT_REDUCTION_SCHEME_NONE = 0,
  CUBLASLT_REDUCTION_SCHEME_INPLACE = 1,
  CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE = 2,
  CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE = 4,
};
enum cublasLtMatrixLayoutAttribute_t {
  CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5,
  CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6,
};
enum cublasLtMatmulDescAttributes_t {
  CUBLASLT_MATMUL_DESC_TRANSA = 3,
  CUBLASLT_MATMUL_DESC_TRANSB = 4,
  CUBLASLT_MATMUL_DESC_EPILOGUE = 7,
  CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,
};
enum cublasLtMatmulPreferenceAttributes_t {
  CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK = 3,
  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 9,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 10,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 11,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 12,
};

struct cublasLtContext;
struct cublasLtMatrixLayoutOpaque_t;
struct cublasLtMatmulDescOpaque_t;
struct cublasLtMatmulPreferenceOpaque_t;
using cublasLtHandle_t = cublasLtContext*;
using cublasLtMatrixLayout_t = cublasLtMatrixLayoutOpaque_t*;
using cublasLtMatmulDesc_t = cublasLtMatmulDescOpaque_t*;
using cublasLtMatmulPreference_t = cublasLtMatmulPreferenceOpaque_t*;
// The emulation keeps the alignments the algorithm was chosen for (A, B, C, D, in bytes), then
// the m, n, k of the query.
struct cublasLtMatmulAlgo_t {
  uint64_t data[8];
};
struct cublasLtMatmulHeuristicResult_t {
  cublasLtMatmulAlgo_t algo;
  size_t workspaceSize;
  cublasStatus_t state;
  float wavesCount;
  int reserved[4];
};

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType_t type,
                                          uint64_t rows, uint64_t cols, int64_t ld);
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t layout,
                                                cublasLtMatrixLayoutAttribute_t attr,
                                                const void* buf, size_t bytes);
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout);
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                        cudaDataType_t scale);
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                              cublasLtMatmulDescAttributes_t attr, const void* buf,
                                              size_t bytes);
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc);
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref);
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr,
                                                    const void* buf, size_t bytes);
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref);
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t* results,
                                              int* returned);
cublasStatus_t cublasLtMatmulAlgoCheck(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                       cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                       cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                       const cublasLtMatmulAlgo_t* algo, cublasLtMatmulHeuristicResult_t* result);
cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha,
                              const void* a, cublasLtMatrixLayout_t a_layout, const void* b,
                              cublasLtMatrixLayout_t b_layout, const void* beta, const void* c,
                              cublasLtMatrixLayout_t c_layout, void* d,
                              cublasLtMatrixLayout_t d_layout, const cublasLtMatmulAlgo_t* algo,
                              void* workspace, size_t workspace_bytes, cudaStream_t stream);

#undef QARAC_CHECK_CUBLAS
#define QARAC_CHECK_CUBLAS(stmt)                                                                \
  do {                                                                                          \
    const cublasStatus_t qarac_cublas_rc_ = (stmt);                                             \
    if (qarac_cublas_rc_ != CUBLAS_STATUS_SUCCESS)                                              \
      throw ::qarac::Error(std::string("emulated cuBLASLt: ") + #stmt + ": " +                  \
                           cublasLtGetStatusString(qarac_cublas_rc_));                          \
  } while (0)

namespace emu {
// The cublasLtMatmulAlgoGetHeuristic calls so far (the algorithm cache's misses).
uint64_t heuristic_queries();
// What an algorithm runs: any size (the default); only the sizes of its query, which
// cublasLtMatmulAlgoCheck refuses (CUBLAS_STATUS_INVALID_VALUE) and cublasLtMatmul too
// (CUBLAS_STATUS_NOT_SUPPORTED); or only those, with a check that accepts it all the same ("success
// doesn't fully guarantee the algo will run", cublasLt.h).
enum class AlgorithmRule { any_size, chosen_size, chosen_size_unchecked };
void set_algorithm_rule(AlgorithmRule rule);
// The cublasLtMatmul calls refused an algorithm for its sizes so far.
uint64_t refused_runs();
}  // namespace emu

// ---- CUB ----------------------------------------------------------------------------------------

namespace cub {
struct DeviceRadixSort {
  // Sorts the pairs by bits [begin_bit, end_bit) of the keys, stably. With temp null, only sets
  // temp_bytes; otherwise temp must hold temp_bytes bytes, which the emulation writes over.
  static cudaError_t SortPairs(void* temp, size_t& temp_bytes, const uint32_t* keys_in,
                               uint32_t* keys_out, const int32_t* values_in, int32_t* values_out,
                               int items, int begin_bit, int end_bit, cudaStream_t stream);
};
}  // namespace cub

// ---- kernels/cuda/context.cuh -------------------------------------------------------------------

namespace qarac::cuda_emulated {

struct Context {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};
Context& context();
inline cudaStream_t stream() { return context().stream; }

}  // namespace qarac::cuda_emulated
