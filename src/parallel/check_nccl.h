// QARAC_CHECK_NCCL: raises a qarac::Error naming the call, NCCL's own message and its last error
// text, file, line and host (core/error.h). Only the parallel layer talks to NCCL, so only it
// links NCCL; translation units of the CUDA build only.
#pragma once

#include <nccl.h>

#include "core/error.h"

#define QARAC_CHECK_NCCL(stmt)                                                                  \
  do {                                                                                          \
    const ncclResult_t qarac_nccl_rc_ = (stmt);                                                 \
    if (qarac_nccl_rc_ != ncclSuccess)                                                          \
      ::qarac::detail::raise("NCCL", #stmt,                                                     \
                             ::qarac::detail::concat(ncclGetErrorString(qarac_nccl_rc_), "; ",  \
                                                     ncclGetLastError(nullptr)),                \
                             __FILE__, __LINE__);                                               \
  } while (0)
