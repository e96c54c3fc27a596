// QARAC_CHECK_MPI: raise a qarac::Error naming the MPI call, MPI's message, file, line and host.
// Communicators must use MPI_ERRORS_RETURN for the check to see an error at all.
#pragma once

#include <mpi.h>

#include "core/error.h"

namespace qarac::detail {
inline std::string mpi_error_string(int code) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, msg, &len) != MPI_SUCCESS) return "MPI error code " + std::to_string(code);
  // MPICH's messages span lines (a class, then the call stack): errors are one line.
  std::string text(msg, static_cast<size_t>(len));
  for (size_t at; (at = text.find('\n')) != std::string::npos;) text.replace(at, 1, "; ");
  return text;
}
}  // namespace qarac::detail

#define QARAC_CHECK_MPI(stmt)                                                                \
  do {                                                                                       \
    const int qarac_mpi_rc_ = (stmt);                                                        \
    if (qarac_mpi_rc_ != MPI_SUCCESS)                                                        \
      ::qarac::detail::raise("MPI", #stmt, ::qarac::detail::mpi_error_string(qarac_mpi_rc_), \
                             __FILE__, __LINE__);                                            \
  } while (0)
