// CPU row gather and scatter. The indices are checked in full before any row moves, so a bad
// index leaves the output as it was.
#include "kernels/cpu/rows.h"

#include <algorithm>
#include <vector>

#include "core/error.h"

namespace qarac::cpu {
namespace {

void check_index(const char* op, const int32_t* index, int64_t m, int64_t n) {
  for (int64_t i = 0; i < m; ++i)
    QARAC_CHECK(index[i] >= 0 && index[i] < n, op, ": index[", i, "] = ", index[i],
                " is outside [0, ", n, ")");
}

}  // namespace

template <class T>
void gather_rows(const T* src, int64_t n, const int32_t* index, int64_t m, int64_t dim, T* out) {
  check_index("gather_rows", index, m, n);
  for (int64_t i = 0; i < m; ++i)
    std::copy(src + index[i] * dim, src + (index[i] + 1) * dim, out + i * dim);
}

template <class T>
void scatter_rows(const T* src, int64_t m, const int32_t* index, int64_t n, int64_t dim, T* out) {
  check_index("scatter_rows", index, m, n);
  // Two sources for one row would make the result depend on the order of the writes.
  std::vector<bool> seen(static_cast<size_t>(n), false);
  for (int64_t i = 0; i < m; ++i) {
    QARAC_CHECK(!seen[static_cast<size_t>(index[i])], "scatter_rows: index[", i, "] = ", index[i],
                " repeats an earlier index; each row of out takes at most one source row");
    seen[static_cast<size_t>(index[i])] = true;
  }
  for (int64_t i = 0; i < m; ++i)
    std::copy(src + i * dim, src + (i + 1) * dim, out + index[i] * dim);
}

template void gather_rows<float>(const float*, int64_t, const int32_t*, int64_t, int64_t, float*);
template void gather_rows<double>(const double*, int64_t, const int32_t*, int64_t, int64_t,
                                  double*);
template void scatter_rows<float>(const float*, int64_t, const int32_t*, int64_t, int64_t, float*);
template void scatter_rows<double>(const double*, int64_t, const int32_t*, int64_t, int64_t,
                                   double*);

}  // namespace qarac::cpu
