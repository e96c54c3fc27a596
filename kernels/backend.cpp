// The backend registry (which backends this build has, by device kind), the dtype rules every
// backend derives from its list of (X, A) pairs, and the optimiser coefficients the backends share.
#include "kernels/backend.h"

#include <algorithm>
#include <atomic>
#include <cmath>

namespace qarac::ops {

namespace {
std::atomic<uint64_t> dispatched{0};
const Backend* host_override = nullptr;
}  // namespace

uint64_t dispatched_ops() { return dispatched.load(std::memory_order_relaxed); }
void count_dispatch() { dispatched.fetch_add(1, std::memory_order_relaxed); }

const Backend* find_backend(Device device, DType dtype) {
  // Explicit calls rather than self-registering static objects: a static library's object file
  // that nothing references is left out of the link, registrar and all.
  switch (device.kind) {
    case Device::Kind::cpu:
      if (host_override && (host_override->computes_in(dtype) || host_override->accumulates_in(dtype)))
        return host_override;
      return &cpu_backend();
    case Device::Kind::cuda:
#ifdef QARAC_HAVE_CUDA
      return &cuda_backend();
#else
      return nullptr;
#endif
  }
  return nullptr;
}

HostBackendOverride::HostBackendOverride(const Backend& backend) {
  QARAC_CHECK(host_override == nullptr, "HostBackendOverride: another override is active");
  host_override = &backend;
}
HostBackendOverride::~HostBackendOverride() { host_override = nullptr; }

// ---- Dtype rules --------------------------------------------------------------------------------

bool Backend::computes_in(DType x) const {
  const std::vector<DTypePair>& pairs = dtypes();
  return std::any_of(pairs.begin(), pairs.end(),
                     [&](const DTypePair& p) { return p.compute == x; });
}

bool Backend::accumulates_in(DType a) const {
  const std::vector<DTypePair>& pairs = dtypes();
  return std::any_of(pairs.begin(), pairs.end(),
                     [&](const DTypePair& p) { return p.accumulation == a; });
}

bool Backend::is_pair(DType x, DType a) const {
  const std::vector<DTypePair>& pairs = dtypes();
  return std::any_of(pairs.begin(), pairs.end(),
                     [&](const DTypePair& p) { return p.compute == x && p.accumulation == a; });
}

DType Backend::accumulation_of(DType x) const {
  for (const DTypePair& p : dtypes())
    if (p.compute == x) return p.accumulation;
  QARAC_CHECK(false, name(), " ops do not compute in ", dtype_name(x));
  return x;
}

namespace {

// "f32", "f32 or f64", "f32, bf16 or f64", each dtype once, in the order of the list.
std::string join_names(const std::vector<DType>& dtypes) {
  std::vector<DType> unique;
  for (DType d : dtypes)
    if (std::find(unique.begin(), unique.end(), d) == unique.end()) unique.push_back(d);
  std::string s;
  for (size_t i = 0; i < unique.size(); ++i) {
    if (i > 0) s += i + 1 == unique.size() ? " or " : ", ";
    s += dtype_name(unique[i]);
  }
  return s;
}

}  // namespace

std::string Backend::compute_names() const {
  std::vector<DType> x;
  for (const DTypePair& p : dtypes()) x.push_back(p.compute);
  return join_names(x);
}

std::string Backend::accumulation_names() const {
  std::vector<DType> a;
  for (const DTypePair& p : dtypes()) a.push_back(p.accumulation);
  return join_names(a);
}

// ---- Optimiser coefficients ---------------------------------------------------------------------

AdamWCoefficients adamw_coefficients(const AdamW& config) {
  const double steps = static_cast<double>(config.step);
  return {1.0 - std::pow(config.beta1, steps), 1.0 - std::pow(config.beta2, steps)};
}

NAdamCoefficients nadam_coefficients(const NAdam& config) {
  const double mu = nadam_mu(config, config.step), mu_next = nadam_mu(config, config.step + 1);
  return {1.0 - std::pow(config.beta2, static_cast<double>(config.step)),
          config.lr * (1.0 - mu) / (1.0 - config.mu_product),
          config.lr * mu_next / (1.0 - config.mu_product * mu_next)};
}

std::vector<DecayRun> decay_runs(int64_t n, const std::vector<ElementRange>& no_decay) {
  std::vector<DecayRun> runs;
  int64_t at = 0;
  for (const ElementRange& r : no_decay) {
    if (r.begin > at) runs.push_back({at, r.begin, true});
    runs.push_back({r.begin, r.end, false});
    at = r.end;
  }
  if (n > at) runs.push_back({at, n, true});
  return runs;
}

}  // namespace qarac::ops
