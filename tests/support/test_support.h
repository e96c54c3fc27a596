// Helpers shared by the test programs: the one-line input-error check, running a program of the
// project as a user would (its exit status and everything it printed), and the tensors of the
// CUDA-against-CPU tests.
#pragma once

#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <array>
#include <cstdio>
#include <random>
#include <exception>
#include <fstream>
#include <functional>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace qarac::test_support {

// Runs `fn` and checks that it throws a qarac::InputError whose message is one line holding
// every string of `parts` (the file name and the words that name the problem).
inline void expect_input_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const InputError& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << "message spans lines: " << message;
    for (const std::string& part : parts)
      EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected qarac::InputError, got another exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "expected qarac::InputError, nothing was thrown";
}

struct CliResult {
  int code = -1;  // the exit status; -1 when the program did not exit normally
  std::string output;  // stdout and stderr together
};

// Runs `command` through the shell.
inline CliResult run_command(const std::string& command) {
  CliResult r;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  const int status = pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// The whole content of the file at `path`; "" when there is none.
inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// ---- Tensors for the CUDA-against-CPU tests ---------------------------------------------------

// f32 values uniform in [lo, hi), on the CPU.
// What `body` returns when run in a forked child: "input error: <message>" for an InputError,
// "other: <what>" for another exception, and the child's end when it dies. The child exits
// through exit(), so that what runs at exit (HDF5's handlers among them) runs too. With
// `extra_bytes`, its address space may grow only that much beyond its start: a test that a
// program fails in one line when memory runs out, without taking the machine's.
inline std::string in_child(const std::function<std::string()>& body, size_t extra_bytes = 0) {
  int fds[2];
  if (::pipe(fds) != 0) return "other: no pipe";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    std::string result;
    try {
      if (extra_bytes > 0) {
        long pages = 0;
        if (std::FILE* statm = std::fopen("/proc/self/statm", "r")) {
          if (std::fscanf(statm, "%ld", &pages) != 1) pages = 0;
          std::fclose(statm);
        }
        const rlim_t limit = static_cast<rlim_t>(pages) * static_cast<rlim_t>(::sysconf(_SC_PAGESIZE)) + extra_bytes;
        const rlimit rl{limit, limit};
        if (pages == 0 || ::setrlimit(RLIMIT_AS, &rl) != 0) throw std::runtime_error("cannot limit memory");
      }
      result = body();
    } catch (const InputError& e) {
      result = std::string("input error: ") + e.what();
    } catch (const std::exception& e) {
      result = std::string("other: ") + e.what();
    }
    (void)!::write(fds[1], result.data(), result.size());
    ::close(fds[1]);
    std::exit(0);
  }
  ::close(fds[1]);
  std::string result;
  char buf[512];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) result.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return "the child died (signal " + std::to_string(WIFSIGNALED(status) ? WTERMSIG(status) : 0) + ") after: " + result;
  return result;
}

// `text` gzip-compressed, one member, as gzip(1) writes it (callers link ZLIB::ZLIB).
inline std::string gzipped(const std::string& text) {
  z_stream z{};
  EXPECT_EQ(deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&z, static_cast<uLong>(text.size())), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data()));
  z.avail_in = static_cast<uInt>(text.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

inline Tensor uniform(const Shape& shape, std::mt19937& rng, float lo = -1, float hi = 1) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = dist(rng);
  return Tensor::from_vector(v, shape);
}
// The f32 values the GPU computes with when t is stored in `dtype`: t, or t rounded to bf16.
inline Tensor as_seen(const Tensor& t, DType dtype) {
  return dtype == DType::bf16 ? t.to(DType::bf16).to(DType::f32) : t;
}
// t (CPU f32) stored in `dtype` on the first GPU.
inline Tensor on_gpu(const Tensor& t, DType dtype) { return t.to(dtype).to(Device::cuda(0)); }
// Any tensor's values as f32 on the CPU.
inline Tensor on_cpu(const Tensor& t) { return t.to(Device::cpu()).to(DType::f32); }

// ---- Damaging files on purpose ----------------------------------------------------------------

// The file offset of the data of contiguous dataset `dataset` of the HDF5 file `path`.
inline uint64_t h5_dataset_offset(const std::string& path, const char* dataset) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t dset = H5Dopen2(file, dataset, H5P_DEFAULT);
  const haddr_t offset = H5Dget_offset(dset);
  H5Dclose(dset);
  H5Fclose(file);
  EXPECT_NE(offset, HADDR_UNDEF) << path << ": " << dataset;
  return offset;
}

// Flips one bit of byte `offset` of `path` in place.
inline void flip_byte(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  const char c = static_cast<char>(f.get());
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(static_cast<char>(c ^ 0x10));
}

// What a qarac-prep before seals wrote: the same objects and root attributes, in a file without
// a user block, which starts with the HDF5 signature.
inline void copy_without_seal(const std::string& from, const std::string& to) {
  const hid_t src = H5Fopen(from.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(src, 0);
  hid_t dst = H5Fcreate(to.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(dst, 0);
  for (const char* object : {"fields", "sources", "skipped"})
    EXPECT_GE(H5Ocopy(src, object, dst, object, H5P_DEFAULT, H5P_DEFAULT), 0) << object;
  const auto copy_attribute = [](hid_t loc, const char* name, const H5A_info_t*, void* into) -> herr_t {
    const hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    const hid_t type = H5Aget_type(a), space = H5Aget_space(a);
    std::vector<char> value(H5Aget_storage_size(a));
    herr_t status = H5Aread(a, type, value.data());
    const hid_t b = H5Acreate2(*static_cast<hid_t*>(into), name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (status >= 0) status = H5Awrite(b, type, value.data());
    H5Aclose(b);
    H5Sclose(space);
    H5Tclose(type);
    H5Aclose(a);
    return status;
  };
  hsize_t index = 0;
  EXPECT_GE(H5Aiterate2(src, H5_INDEX_NAME, H5_ITER_INC, &index, copy_attribute, &dst), 0);
  H5Fclose(dst);
  H5Fclose(src);
}

}  // namespace qarac::test_support
