// The CUDA backend's op table (kernels/cuda/backend.cpp, ported by port_kernel.py) over the ported
// kernels on the CUDA emulator: its "device pointers" are host pointers, so it computes host
// tensors. Tests run the ops on it under ops::HostBackendOverride (kernels/backend.h).
#pragma once

#include "kernels/backend.h"

namespace qarac::ops {

const Backend& cuda_emulated_backend();

}  // namespace qarac::ops
