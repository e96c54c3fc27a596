// What --version prints (version.h).
#include "cli/version.h"

#include <cstdio>
#include <cstring>

#include "cli/standard_output.h"
#include "core/error.h"
#include "kernels/cpu/gemm.h"
#include "parallel/versions.h"
// Generated at every build by cmake/QaracBuildInfo.cmake (the commit changes without a reconfigure).
#include "qarac_build_info.h"

namespace qarac::cli {

bool version_requested(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--version") == 0) return true;
  return false;
}

std::string version_text(const char* program) {
  const parallel::LibraryVersions libraries = parallel::library_versions();
  std::string text = std::string(program) + " " + QARAC_BUILD_VERSION + "\n";
  const auto line = [&text](const char* key, const std::string& value) {
    text += std::string(key) + std::string(14 - std::strlen(key), ' ') + value + "\n";
  };
  line("git commit", QARAC_BUILD_GIT_COMMIT);
  line("build", std::string(QARAC_BUILD_TYPE) + ", " + QARAC_BUILD_COMPILER);
#ifdef QARAC_HAVE_CUDA
  line("CUDA backend", std::string("on, architectures ") + QARAC_BUILD_CUDA_ARCHS);
#else
  line("CUDA backend", "off");
#endif
  line("CUDA runtime", libraries.cuda_runtime);
  line("CUDA driver", libraries.cuda_driver);
  line("NCCL", libraries.nccl);
  line("MPI", libraries.mpi);
  line("OpenBLAS", cpu::blas_kernels());
  return text;
}

int print_version(const char* program) {
  try {
    write_standard_output(version_text(program));
    return 0;
  } catch (const InputError& e) {
    std::fprintf(stderr, "%s: error: %s\n", program, e.what());
    return 2;
  }
}

}  // namespace qarac::cli
