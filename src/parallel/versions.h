// The versions of the libraries the communication and device layers run on, as the loaded
// libraries report them (what runs, not what the build compiled against). Safe before
// MPI_Init and without a GPU: `--version` of every program prints them.
#pragma once

#include <string>

namespace qarac::parallel {

struct LibraryVersions {
  std::string mpi;           // MPI_Get_library_version's first line and the MPI standard
  std::string nccl;          // "2.21.5", or why there is none
  std::string cuda_runtime;  // "12.4", or why there is none
  std::string cuda_driver;   // the newest CUDA the driver supports, or why there is none
};

LibraryVersions library_versions();

}  // namespace qarac::parallel
