// Embedding lookup and its deterministic backward (CUDA). Pointers are device pointers.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qarac::cuda {

// out [n,d] = table[ids] (accumulate: +=); ids are trusted to lie in [0, vocab).
void embedding_forward(DType dtype, const int32_t* ids, int64_t n, const void* table, int64_t vocab,
                       int64_t d, void* out, bool accumulate);
// dtable [vocab,d] (grad_dtype) += Σ over rows i with ids[i] = v of dout[i]; each row's sum is
// taken in a fixed order (no atomics), so the result is the same bits on every run.
void embedding_backward(DType dtype, DType grad_dtype, const int32_t* ids, int64_t n,
                        const void* dout, int64_t vocab, int64_t d, void* dtable);

}  // namespace qarac::cuda
