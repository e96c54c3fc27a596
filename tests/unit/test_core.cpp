// Core: tensors (views, copies, conversions), bf16 rounding, the Philox generator against its
// published known-answer vectors, and the error checkers' messages.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <limits>

#include "core/check_hdf5.h"
#include "core/check_mpi.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#ifdef QARAC_HAVE_CUDA
#include "core/check_cuda.h"
#endif

using namespace qarac;

TEST(Tensor, ShapeViewsAndCopies) {
  std::vector<float> v(24);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  const Tensor t = Tensor::from_vector(v, {2, 3, 4});
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.size(-1), 4);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.str(), "f32[2, 3, 4] cpu");

  const Tensor r = t.reshape({-1, 4});
  EXPECT_EQ(r.shape(), (Shape{6, 4}));
  EXPECT_EQ(r.raw(), t.raw());  // a view, no copy

  const Tensor row = t.select(1);  // [3, 4], elements 12..23
  EXPECT_EQ(row.data<float>()[0], 12.f);

  const Tensor cols = r.slice(1, 1, 3);  // [6, 2], strided
  EXPECT_FALSE(cols.is_contiguous());
  const std::vector<float> c = cols.to_vector<float>();
  ASSERT_EQ(c.size(), 12u);
  EXPECT_EQ(c[0], 1.f);
  EXPECT_EQ(c[1], 2.f);
  EXPECT_EQ(c[2], 5.f);

  Tensor copy = t.clone();
  copy.data<float>()[0] = 100.f;
  EXPECT_EQ(t.data<float>()[0], 0.f);

  EXPECT_THROW(t.data<double>(), Error);
  EXPECT_THROW(t.reshape({5, 5}), Error);
  EXPECT_THROW(t.slice(0, 1, 3), Error);
  EXPECT_THROW(cols.reshape({12}), Error);
}

TEST(Tensor, DtypeConversions) {
  const Tensor d = Tensor::from_vector(std::vector<double>{1.5, -2.25, 1e-3}, {3});
  const std::vector<float> f = d.to(DType::f32).to_vector<float>();
  EXPECT_FLOAT_EQ(f[1], -2.25f);
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{0, 7, 100}, {3});
  EXPECT_EQ(ids.to(DType::i32).to_vector<int32_t>()[2], 100);
  EXPECT_THROW(ids.to(DType::f32), Error);  // integer -> float is refused, not silently cast
  const std::vector<bf16> b = d.to(DType::bf16).to_vector<bf16>();
  EXPECT_EQ(static_cast<float>(b[0]), 1.5f);
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(bf16(1.0f).bits, 0x3f80);
  // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties go to the even one, 1.
  EXPECT_EQ(bf16(1.0f + 1.0f / 256).bits, 0x3f80);
  // 1 + 3·2^-8 lies between 1 + 2^-7 (odd) and 1 + 2^-6 (even): ties go up to the even one.
  EXPECT_EQ(bf16(1.0f + 3.0f / 256).bits, 0x3f82);
  EXPECT_EQ(bf16(1.0f + 1.5f / 256).bits, 0x3f81);  // above the tie: rounds up
  EXPECT_TRUE(std::isnan(static_cast<float>(bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(static_cast<float>(bf16(std::numeric_limits<float>::infinity()))));
}

// Known-answer vectors of Philox-4x32-10 published with Random123 (kat_vectors).
TEST(Philox, KnownAnswers) {
  const Philox4x32 zero = philox4x32_10({{0, 0, 0, 0}}, 0, 0);
  EXPECT_EQ(zero.c[0], 0x6627e8d5u);
  EXPECT_EQ(zero.c[1], 0xe169c58du);
  EXPECT_EQ(zero.c[2], 0xbc57ac4cu);
  EXPECT_EQ(zero.c[3], 0x9b00dbd8u);
  const Philox4x32 ones = philox4x32_10({{~0u, ~0u, ~0u, ~0u}}, ~0u, ~0u);
  EXPECT_EQ(ones.c[0], 0x408f276du);
  EXPECT_EQ(ones.c[1], 0x41c83b0eu);
  EXPECT_EQ(ones.c[2], 0xa20bc7c6u);
  EXPECT_EQ(ones.c[3], 0x6d5451fdu);
  const Philox4x32 pi = philox4x32_10({{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
                                      0xa4093822u, 0x299f31d0u);
  EXPECT_EQ(pi.c[0], 0xd16cfe09u);
  EXPECT_EQ(pi.c[1], 0x94fdccebu);
  EXPECT_EQ(pi.c[2], 0x5001e420u);
  EXPECT_EQ(pi.c[3], 0x24126ea1u);
}

TEST(Philox, UniformStreamsAreDistinctAndUniform) {
  const RngKey a{7, 3, 1}, b{7, 4, 1}, c{7, 3, 2};
  int same_step = 0, same_tensor = 0;
  double mean = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const float u = uniform01(a, static_cast<uint64_t>(i));
    ASSERT_GE(u, 0.f);
    ASSERT_LT(u, 1.f);
    mean += u;
    same_step += u == uniform01(b, static_cast<uint64_t>(i));
    same_tensor += u == uniform01(c, static_cast<uint64_t>(i));
  }
  EXPECT_NEAR(mean / n, 0.5, 0.01);  // 3.5 standard errors of 1/sqrt(12 n)
  EXPECT_LT(same_step, 10);
  EXPECT_LT(same_tensor, 10);
  EXPECT_EQ(uniform01(a, 123), uniform01(RngKey{7, 3, 1}, 123));
}

// The checkers' messages name the library, the statement, the reason, file:line and the host.
void expect_error_names(const std::string& what, const std::vector<std::string>& parts) {
  for (const std::string& p : parts) EXPECT_NE(what.find(p), std::string::npos) << "'" << p << "' not in: " << what;
  EXPECT_EQ(what.find('\n'), std::string::npos) << what;
}

TEST(Errors, CheckNamesConditionFileLineAndHost) {
  try {
    const int n = -3;
    QARAC_CHECK(n > 0, "n must be positive, got ", n);
    FAIL() << "no exception";
  } catch (const Error& e) {
    expect_error_names(e.what(), {"n > 0", "n must be positive, got -3", "test_core.cpp:", hostname()});
  }
}

TEST(Errors, Hdf5CheckReportsTheLibraryMessage) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // no stack dump on stderr
  try {
    QARAC_CHECK_HDF5(H5Fopen("/nonexistent/qarac.h5", H5F_ACC_RDONLY, H5P_DEFAULT));
    FAIL() << "no exception";
  } catch (const Error& e) {
    expect_error_names(e.what(), {"HDF5 error", "H5Fopen", "test_core.cpp:", hostname()});
  }
}

// A real failing MPI call (an invalid communicator) with errors returned instead of aborting.
TEST(Errors, MpiCheckReportsTheLibraryMessage) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) MPI_Init(nullptr, nullptr);  // singleton: no mpirun needed
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int rank = -1;
  try {
    QARAC_CHECK_MPI(MPI_Comm_rank(MPI_COMM_NULL, &rank));
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    expect_error_names(e.what(), {"MPI error", "MPI_Comm_rank", "MPI_ERR_COMM", "test_core.cpp:"});
  }
  MPI_Finalize();
}

#ifdef QARAC_HAVE_CUDA
TEST(Errors, CudaCheckReportsTheLibraryMessage) {
  try {
    QARAC_CHECK_CUDA(cudaErrorInvalidValue);
    FAIL() << "no exception";
  } catch (const Error& e) {
    expect_error_names(e.what(), {"CUDA error", "cudaErrorInvalidValue", "test_core.cpp:"});
  }
}

TEST(Memory, CudaAllocationFailsClearlyWithoutGpu) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present: nothing to check here";
  try {
    Tensor::empty({4}, DType::f32, Device::cuda(0));
    FAIL() << "no exception";
  } catch (const Error& e) {
    expect_error_names(e.what(), {"a CUDA allocation on cuda:0", "0 CUDA devices are visible"});
  }
}
#endif
