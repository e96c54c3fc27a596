// The versions the loaded CUDA, NCCL and MPI libraries report (versions.h).
#include "parallel/versions.h"

#include <mpi.h>

#include <string>
#ifdef QARAC_HAVE_CUDA
#include <cuda_runtime_api.h>
#include <nccl.h>
#endif

namespace qarac::parallel {
namespace {

std::string mpi_version() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int length = 0;
  int major = 0, minor = 0;
  // Both are allowed before MPI_Init (MPI 3.0): --version starts no MPI.
  if (MPI_Get_library_version(text, &length) != MPI_SUCCESS || MPI_Get_version(&major, &minor) != MPI_SUCCESS)
    return "unknown (MPI_Get_library_version failed)";
  // MPICH reports several lines (version, date, configure options), aligned with tabs: its first
  // line names it; runs of blanks become one space.
  std::string library;
  for (int i = 0; i < length && text[i] != '\n' && text[i] != '\0'; ++i) {
    const bool blank = text[i] == ' ' || text[i] == '\t';
    if (!blank) library += text[i];
    else if (!library.empty() && library.back() != ' ') library += ' ';
  }
  if (!library.empty() && library.back() == ' ') library.pop_back();
  return library + " (MPI " + std::to_string(major) + "." + std::to_string(minor) + ")";
}

#ifdef QARAC_HAVE_CUDA
// CUDA and NCCL encode versions as one integer: CUDA 1000·major + 10·minor, NCCL (2.9 and later)
// 10000·major + 100·minor + patch.
std::string cuda_text(int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); }
#endif

}  // namespace

LibraryVersions library_versions() {
  LibraryVersions v;
  v.mpi = mpi_version();
#ifdef QARAC_HAVE_CUDA
  int runtime = 0, driver = 0, nccl = 0;
  v.cuda_runtime = cudaRuntimeGetVersion(&runtime) == cudaSuccess ? cuda_text(runtime) : "unknown";
  // 0 means no driver is installed (a build or login node).
  const cudaError_t status = cudaDriverGetVersion(&driver);
  v.cuda_driver = status != cudaSuccess ? std::string("unavailable (") + cudaGetErrorString(status) + ")"
                  : driver == 0         ? "none installed"
                                        : cuda_text(driver);
  if (ncclGetVersion(&nccl) == ncclSuccess)
    v.nccl = std::to_string(nccl / 10000) + "." + std::to_string(nccl % 10000 / 100) + "." + std::to_string(nccl % 100);
  else
    v.nccl = "unknown (ncclGetVersion failed)";
#else
  v.cuda_runtime = v.cuda_driver = v.nccl = "not compiled in (QARAC_CUDA=OFF or no nvcc at build time)";
#endif
  return v;
}

}  // namespace qarac::parallel
