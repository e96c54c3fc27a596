#include "core/memory.h"

#include <cstdlib>
#include <cstring>

#include "core/error.h"
#ifdef QARAC_HAVE_CUDA
#include <cuda_runtime.h>

#include "core/check_cuda.h"
#endif

namespace qarac {

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

bool cuda_compiled() {
#ifdef QARAC_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef QARAC_HAVE_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: not an error for the caller, just no GPU
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

namespace {
constexpr size_t kHostAlignment = 64;  // a cache line; also what AVX-512 loads like

#ifndef QARAC_HAVE_CUDA
[[noreturn]] void no_cuda(const char* what) {
  QARAC_CHECK(false, what, " needs the CUDA backend, which this build does not have (QARAC_CUDA=OFF)");
}
#endif
}  // namespace

Buffer::Buffer(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  if (bytes == 0) return;
  if (device.is_cpu()) {
    const size_t rounded = (bytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
    data_ = std::aligned_alloc(kHostAlignment, rounded);
    QARAC_CHECK(data_ != nullptr, "host allocation of ", bytes, " bytes failed");
    return;
  }
#ifdef QARAC_HAVE_CUDA
  QARAC_CHECK_CUDA(cudaSetDevice(device.index));
  QARAC_CHECK_CUDA(cudaMalloc(&data_, bytes));
#else
  no_cuda("a CUDA allocation");
#endif
}

Buffer::~Buffer() {
  if (!data_) return;
  if (device_.is_cpu()) {
    std::free(data_);
  } else {
#ifdef QARAC_HAVE_CUDA
    cudaFree(data_);  // a destructor must not throw; a failing free leaves nothing to recover
#endif
  }
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef QARAC_HAVE_CUDA
  QARAC_CHECK_CUDA(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
#else
  no_cuda("a device copy");
#endif
}

void zero_bytes(void* dst, Device device, size_t bytes) {
  if (bytes == 0) return;
  if (device.is_cpu()) {
    std::memset(dst, 0, bytes);
    return;
  }
#ifdef QARAC_HAVE_CUDA
  QARAC_CHECK_CUDA(cudaSetDevice(device.index));
  QARAC_CHECK_CUDA(cudaMemset(dst, 0, bytes));
#else
  no_cuda("a device memset");
#endif
}

}  // namespace qarac
