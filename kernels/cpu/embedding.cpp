// CPU embeddings: row copies between the table and token-major activations. All ids are checked
// first, so a bad id leaves the outputs (in particular an accumulated gradient) untouched.
#include "kernels/cpu/embedding.h"

#include "core/error.h"

namespace qarac::cpu {
namespace {

void check_ids(const char* op, const int32_t* ids, int64_t n, int64_t vocab) {
  for (int64_t i = 0; i < n; ++i)
    QARAC_CHECK(ids[i] >= 0 && ids[i] < vocab, op, ": row ", i, " has id ", ids[i],
                " outside the table's [0, ", vocab, ")");
}

}  // namespace

template <class T>
void embedding_forward(const int32_t* ids, int64_t n, const T* table, int64_t vocab, int64_t dim,
                       T* out, bool accumulate) {
  check_ids("embedding_forward", ids, n, vocab);
  for (int64_t i = 0; i < n; ++i) {
    const T* src = table + ids[i] * dim;
    T* dst = out + i * dim;
    if (accumulate) {
      for (int64_t c = 0; c < dim; ++c) dst[c] += src[c];
    } else {
      for (int64_t c = 0; c < dim; ++c) dst[c] = src[c];
    }
  }
}

template <class T>
void embedding_backward(const int32_t* ids, int64_t n, const T* dout, int64_t vocab, int64_t dim,
                        T* dtable) {
  check_ids("embedding_backward", ids, n, vocab);
  for (int64_t i = 0; i < n; ++i) {
    const T* src = dout + i * dim;
    T* dst = dtable + ids[i] * dim;
    for (int64_t c = 0; c < dim; ++c) dst[c] += src[c];
  }
}

template void embedding_forward<float>(const int32_t*, int64_t, const float*, int64_t, int64_t,
                                       float*, bool);
template void embedding_forward<double>(const int32_t*, int64_t, const double*, int64_t, int64_t,
                                        double*, bool);
template void embedding_backward<float>(const int32_t*, int64_t, const float*, int64_t, int64_t,
                                        float*);
template void embedding_backward<double>(const int32_t*, int64_t, const double*, int64_t, int64_t,
                                         double*);

}  // namespace qarac::cpu
