// CPU embedding lookup (a gather of table rows by token id) and its gradient (a scatter-add).
#pragma once

#include <cstdint>

namespace qarac::cpu {

// out[i,:] = table[ids[i],:] (or += when `accumulate`), ids [n], table [vocab,dim], out [n,dim].
// An id outside [0, vocab) raises qarac::Error naming the row and the id, before any write.
template <class T>
void embedding_forward(const int32_t* ids, int64_t n, const T* table, int64_t vocab, int64_t dim,
                       T* out, bool accumulate);
// dtable[ids[i],:] += dout[i,:]; repeated ids sum. Ids are checked as in the forward pass.
template <class T>
void embedding_backward(const int32_t* ids, int64_t n, const T* dout, int64_t vocab, int64_t dim,
                        T* dtable);

}  // namespace qarac::cpu
