// QARAC_CHECK_CUDA / QARAC_CHECK_CUBLAS: raise a qarac::Error naming the call,
// the library's own message, file, line and host. Only for translation units of the CUDA build.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "core/error.h"

#define QARAC_CHECK_CUDA(stmt)                                                                 \
  do {                                                                                         \
    const cudaError_t qarac_cuda_rc_ = (stmt);                                                 \
    if (qarac_cuda_rc_ != cudaSuccess)                                                         \
      ::qarac::detail::raise("CUDA", #stmt,                                                    \
                             ::qarac::detail::concat(cudaGetErrorName(qarac_cuda_rc_), ": ",   \
                                                     cudaGetErrorString(qarac_cuda_rc_)),      \
                             __FILE__, __LINE__);                                              \
  } while (0)

#define QARAC_CHECK_CUBLAS(stmt)                                                                  \
  do {                                                                                            \
    const cublasStatus_t qarac_cublas_rc_ = (stmt);                                               \
    if (qarac_cublas_rc_ != CUBLAS_STATUS_SUCCESS)                                                \
      ::qarac::detail::raise("cuBLAS", #stmt, cublasLtGetStatusString(qarac_cublas_rc_), __FILE__,  \
                             __LINE__);                                                           \
  } while (0)
