// CPU row gather and scatter: pure data movement between token-major activations, used by the
// decoder to prepend the slot-0 vector to every sequence of a packed batch and to drop it again.
#pragma once

#include <cstdint>

namespace qarac::cpu {

// out[i,:] = src[index[i],:] for i < m; src [n, dim], out [m, dim]. An index outside [0, n)
// raises qarac::Error naming the row, before any write.
template <class T>
void gather_rows(const T* src, int64_t n, const int32_t* index, int64_t m, int64_t dim, T* out);
// out[index[i],:] = src[i,:] for i < m; src [m, dim], out [n, dim]; the other rows of out are
// left as they are. Indices outside [0, n) or repeated raise qarac::Error before any write.
template <class T>
void scatter_rows(const T* src, int64_t m, const int32_t* index, int64_t n, int64_t dim, T* out);

}  // namespace qarac::cpu
