// Core: tensors (views, copies, conversions), bf16 rounding, the Philox generator against its
// published known-answer vectors, the error checkers' messages, the hashes against fixed values,
// atomic file writes (success, and failures that leave the old file and no temporary file), and
// checksummed HDF5 files (round trip; a flipped byte, a truncation, a missing `complete`, another
// format or version refused with one line naming the file).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "core/atomic_file.h"
#include "core/check_hdf5.h"
#include "core/check_mpi.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/host_memory.h"
#include "core/log.h"
#include "core/memory.h"
#include "core/hdf5_checksummed.h"
#include "core/progress.h"
#include "core/rng.h"
#include "core/tensor.h"
#ifdef QARAC_HAVE_CUDA
#include "core/check_cuda.h"
#endif
#include "support/test_support.h"

using namespace qarac;
using test_support::expect_input_error;
using test_support::flip_byte;
using test_support::h5_dataset_offset;
namespace fs = std::filesystem;

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

// Views of one buffer that lie back to back join into one view without a copy; anything else
// (a gap, another buffer, a strided view, another dtype, the wrong order) does not.
TEST(Tensor, ViewsThatFollowEachOtherJoin) {
  std::vector<float> v(20);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  const Tensor flat = Tensor::from_vector(v, {20});
  const Tensor a = flat.slice(0, 0, 6).reshape({2, 3}), b = flat.slice(0, 6, 10), c = flat.slice(0, 10, 20);
  EXPECT_TRUE(b.follows(a));
  EXPECT_TRUE(c.follows(b));
  EXPECT_FALSE(a.follows(b));
  EXPECT_FALSE(c.follows(a));  // b lies between them
  EXPECT_FALSE(flat.slice(0, 7, 10).follows(a));
  EXPECT_FALSE(a.clone().follows(flat.slice(0, 0, 0)));
  EXPECT_FALSE(flat.reshape({4, 5}).slice(1, 0, 2).follows(a));  // strided
  EXPECT_FALSE(Tensor::zeros({4}, DType::f64).follows(Tensor::zeros({4}, DType::f64)));

  const Tensor joined = Tensor::join({a, b, c}, "test");
  EXPECT_EQ(joined.shape(), Shape{20});
  EXPECT_EQ(joined.raw(), flat.raw());
  EXPECT_EQ(joined.to_vector<float>(), v);
  EXPECT_EQ(Tensor::join({b}, "test").raw(), b.raw());
  try {
    Tensor::join({a, c}, "qkv weights");
    ADD_FAILURE() << "a join over a gap succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("qkv weights: f32[10] cpu (part 1) does not follow f32[2, 3] cpu"),
              std::string::npos)
        << e.what();
  }
}

// A warning about the files every rank reads alike is said once, by rank 0, not once per rank;
// a program without ranks says it.
TEST(Log, SharedWarningsAreSaidByRankZeroAlone) {
  for (const int rank : {-1, 0, 1, 3}) {
    SCOPED_TRACE(rank);
    log::set_rank(rank);
    testing::internal::CaptureStderr();
    log::warn_shared("base.safetensors: 16 tensors left unused");
    const std::string said = testing::internal::GetCapturedStderr();
    EXPECT_EQ(said.find("16 tensors left unused") != std::string::npos, rank <= 0) << said;
  }
  log::set_rank(-1);
}

// A long loop is said every interval with its count, share, rate and ETA (or count and rate
// when the total is unknown); within the interval, nothing.
TEST(Progress, SaysHowFarEveryInterval) {
  testing::internal::CaptureStderr();
  Progress quiet("quiet", "texts", 10);
  quiet.add(5);
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");

  testing::internal::CaptureStderr();
  Progress known("in.txt", "texts encoded", 10, 0);
  known.add(3);
  Progress unknown("data.tsv", "examples read", 0, 0);
  unknown.add(7);
  const std::string said = testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("in.txt: 3 of 10 texts encoded (30.0%), "), std::string::npos) << said;
  EXPECT_NE(said.find("/s, ETA "), std::string::npos) << said;
  EXPECT_NE(said.find("data.tsv: 7 examples read, "), std::string::npos) << said;
  EXPECT_EQ(known.done(), 3);

  EXPECT_EQ(duration_text(3725), "1h02m05s");
  EXPECT_EQ(duration_text(245), "4m05s");
  EXPECT_EQ(duration_text(6.4), "6s");
  EXPECT_EQ(duration_text(-1), "?");
  EXPECT_EQ(duration_text(1e300), "?");  // an ETA no int64 holds (its conversion was undefined)
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
  // The high halves count too: a seed's, a step's beyond the counter's 24 bits, an id's (an
  // example id's task and epoch: data::example_id) and an element's (hidden position 256 on).
  const RngKey seed_high{7 + (uint64_t{1} << 32), 3, 1}, step_high{7, 3 + (uint64_t{1} << 24), 1};
  const uint64_t id = 0x123456789ull, high = uint64_t{1} << 32;
  int same_step = 0, same_tensor = 0, same_id = 0, same_high = 0;
  double mean = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const uint64_t e = static_cast<uint64_t>(i);
    const float u = sequence_uniform01(a, id, e);
    ASSERT_GE(u, 0.f);
    ASSERT_LT(u, 1.f);
    mean += u;
    same_step += u == sequence_uniform01(b, id, e);
    same_tensor += u == sequence_uniform01(c, id, e);
    same_id += u == sequence_uniform01(a, id + 1, e);
    same_high += (u == sequence_uniform01(seed_high, id, e)) + (u == sequence_uniform01(step_high, id, e)) +
                 (u == sequence_uniform01(a, id + high, e)) + (u == sequence_uniform01(a, id, e + high));
  }
  // 24-bit values: a pair of independent draws is equal with probability 2^-24.
  EXPECT_NEAR(mean / n, 0.5, 0.01);  // 4.9 standard errors, 1/sqrt(12 n) = 0.002
  EXPECT_LT(same_step, 10);
  EXPECT_LT(same_tensor, 10);
  EXPECT_LT(same_id, 10);
  EXPECT_LT(same_high, 10);
  EXPECT_EQ(sequence_uniform01(a, id, 123), sequence_uniform01(RngKey{7, 3, 1}, id, 123));
}

// Dropout's 16-bit decisions, eight per draw (core/rng.h): the threshold is round(p · 2^16), the
// kept fraction is 1 - threshold / 2^16 at every one of the 8 places of a group, and neighbours
// in a group decide independently (each takes its own 16 bits, not a shared word).
TEST(Philox, DropoutDecisionsKeepTheirRateAtEveryPlaceOfAGroup) {
  EXPECT_EQ(dropout_threshold(0.0), 0u);
  EXPECT_EQ(dropout_threshold(0.1), 6554u);  // 6553.6 rounded
  EXPECT_EQ(dropout_threshold(0.5), 32768u);
  EXPECT_EQ(dropout_keep_scale(32768u), 2.0);
  const RngKey key{11, 5, 9};
  const uint64_t id = 0xfeedbeefcafeull;
  const int64_t groups = 1 << 17;  // 2^20 decisions
  for (double p : {0.1, 0.5}) {
    const uint32_t threshold = dropout_threshold(p);
    const double keep = 1.0 - threshold / 65536.0;
    int64_t kept_at[kDropoutGroup] = {}, same_as_left = 0;
    for (int64_t g = 0; g < groups; ++g) {
      const uint32_t mask = dropout_group_mask(key, id, static_cast<uint64_t>(g) * 8, threshold);
      for (int k = 0; k < kDropoutGroup; ++k) {
        const bool kept = (mask >> k) & 1u;
        ASSERT_EQ(kept, dropout_kept(key, id, static_cast<uint64_t>(g) * 8 + k, threshold));
        kept_at[k] += kept;
        if (k > 0) same_as_left += kept == ((mask >> (k - 1)) & 1u);
      }
    }
    // Binomial: 5 standard deviations of a fraction over `groups` draws at each place.
    const double sd = std::sqrt(keep * (1 - keep) / groups);
    for (int k = 0; k < kDropoutGroup; ++k)
      EXPECT_NEAR(static_cast<double>(kept_at[k]) / groups, keep, 5 * sd) << "place " << k << ", p " << p;
    // Independent neighbours agree with probability keep² + (1-keep)²; a shared word would agree
    // far more often.
    const double agree = keep * keep + (1 - keep) * (1 - keep);
    const double pairs = 7.0 * groups;
    EXPECT_NEAR(same_as_left / pairs, agree, 5 * std::sqrt(agree * (1 - agree) / pairs)) << "p " << p;
  }
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
    expect_error_names(e.what(), {"MPI error", "MPI_Comm_rank", "test_core.cpp:"});
    // Open MPI names the class, MPICH describes it; either way on one line.
    const std::string what = e.what();
    EXPECT_TRUE(what.find("MPI_ERR_COMM") != std::string::npos || what.find("Invalid communicator") != std::string::npos)
        << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
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

// Host tensors beyond the physical memory (or a cgroup's limit) are refused before they are
// allocated: Linux would hand out the pages and its OOM killer end the process when they are
// touched, without a word.
TEST(Memory, HostTensorsBeyondTheHostMemoryAreOutOfMemory) {
  const HostMemoryLimit& host = host_memory_limit();
  const uint64_t limit = host.bytes;
  ASSERT_LT(limit, uint64_t{1} << 56) << "the host memory is unknown";
  try {
    const Buffer whole(limit + 1, Device::cpu());
    FAIL() << "no exception";
  } catch (const OutOfMemory& e) {
    expect_error_names(e.what(), {"out of memory on ", "held by this process's tensors already", host.source});
  }
  // Together: the second of two buffers of 60% each is refused, and the first given back, it fits.
  // Neither is touched, so only address space is taken.
  const uint64_t part = limit / 10 * 6;
  std::optional<Buffer> first;
  try {
    first.emplace(part, Device::cpu());
  } catch (const OutOfMemory& e) {
    GTEST_SKIP() << "this machine does not hand out 60% of its memory untouched (strict overcommit?): " << e.what();
  }
  try {
    const Buffer second(part, Device::cpu());
    FAIL() << "no exception";
  } catch (const OutOfMemory& e) {
    expect_error_names(e.what(), {"held by this process's tensors already", host.source});
  }
  first.reset();
  const Buffer again(part, Device::cpu());
  EXPECT_EQ(again.bytes(), part);
}

// The node's other ranks under the same limit (here: counters that stand for theirs): what their
// tensors hold at each moment leaves this process less room, this process's counter follows its
// own tensors, and ranks past the limit together are refused.
TEST(Memory, TheOtherRanksTensorsLeaveLessRoom) {
  const HostMemoryLimit& host = host_memory_limit();
  const uint64_t limit = host.bytes;
  ASSERT_LT(limit, uint64_t{1} << 56) << "the host memory is unknown";
  HostTensorCounter counters[4];  // this process is 1
  struct Reset {  // the sharing is the process's: later tests must not inherit it
    ~Reset() { share_host_tensor_counts(nullptr, 0, 0); }
  } reset;
  const uint64_t tenth = limit / 10, part = 4 * tenth;
  counters[0].bytes = 2 * tenth;
  counters[2].bytes = tenth;
  counters[3].bytes = tenth;
  share_host_tensor_counts(counters, 4, 1);
  EXPECT_EQ(counters[1].bytes.load(), host_tensor_bytes());
  try {
    const Buffer over(7 * tenth, Device::cpu());  // alone it would fit
    FAIL() << "no exception";
  } catch (const OutOfMemory& e) {
    expect_error_names(e.what(), {"held by this process's tensors already and ",
                                  " by the tensors of the 3 other ranks on this node", host.source});
  }
  EXPECT_EQ(counters[1].bytes.load(), host_tensor_bytes()) << "a refused tensor stays counted";
  std::optional<Buffer> fits;
  try {
    fits.emplace(part, Device::cpu());  // 40% beside their 40%, untouched
  } catch (const OutOfMemory& e) {
    GTEST_SKIP() << "this machine does not hand out 40% of its memory untouched (strict overcommit?): " << e.what();
  }
  EXPECT_EQ(counters[1].bytes.load(), host_tensor_bytes()) << "the tensor is not counted";
  // What the others allocate later counts as it comes (before: only what they held at the start).
  counters[3].bytes += tenth;
  EXPECT_THROW(Buffer(tenth * 3 / 2, Device::cpu()), OutOfMemory) << "their 50% and this 40% leave less than 15%";
  counters[3].bytes -= tenth;
  EXPECT_NO_THROW(Buffer(tenth * 3 / 2, Device::cpu()));
  fits.reset();
  EXPECT_EQ(counters[1].bytes.load(), host_tensor_bytes()) << "the freed tensor stays counted";
  EXPECT_EQ(check_shared_host_tensors(), host_tensor_bytes() + part);
  // Past the limit together: said with both figures.
  counters[0].bytes = limit;
  try {
    check_shared_host_tensors();
    FAIL() << "no exception";
  } catch (const OutOfMemory& e) {
    expect_error_names(e.what(), {"out of memory on ", "the tensors of its 4 ranks hold ", "(this one ", host.source,
                                  "fewer ranks per node hold less"});
  }
}

// Freed tensors' pages go back to the system when asked (after an evaluation, a restore): here
// blocks of 4 MiB, each below the mmap threshold that an 8 MiB block freed first raised, with a
// small live tensor after each, which keeps glibc from trimming the heap by itself. Their pages
// would otherwise stay resident, counted by a cgroup's limit though no tensor holds them.
TEST(Memory, FreedTensorsPagesAreReleased) {
#ifndef __GLIBC__
  GTEST_SKIP() << "the pages freed blocks keep are glibc's";
#elif defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer's allocator holds freed blocks in its quarantine, not glibc's heap";
#else
  const auto resident_mib = [] {
    std::ifstream statm("/proc/self/statm");
    long pages = 0, resident = 0;
    statm >> pages >> resident;
    return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1 << 20);
  };
  { const Tensor raise_threshold = Tensor::zeros({2 << 20}, DType::f32); }
  std::vector<Tensor> large, small;
  for (int i = 0; i < 40; ++i) {
    large.push_back(Tensor::zeros({1 << 20}, DType::f32));  // 4 MiB, every page touched
    small.push_back(Tensor::zeros({16}, DType::f32));
  }
  large.clear();
  const double before = resident_mib();
  release_free_host_memory();
  const double after = resident_mib();
  EXPECT_LT(after, before - 100) << "resident " << before << " MiB before the release, " << after << " after";
#endif
}

// The peaks a run records per step: the most the host tensors held since the reset, this
// process's and, with the node's other ranks (counters standing for theirs), all of them together
// at this process's allocations; a reset starts again from what is held.
TEST(Memory, PeaksAreTheMostHeldSinceTheReset) {
  constexpr uint64_t kMiB = uint64_t{1} << 20;
  std::optional<Buffer> kept;
  kept.emplace(kMiB, Device::cpu());
  reset_memory_peaks();
  const uint64_t base = host_tensor_bytes();
  EXPECT_EQ(memory_peaks(Device::cpu()).host, base);
  {
    const Buffer a(3 * kMiB, Device::cpu());
    const Buffer b(2 * kMiB + 1, Device::cpu());  // rounded to 64 bytes
  }
  const Buffer c(kMiB, Device::cpu());
  MemoryPeaks peaks = memory_peaks(Device::cpu());
  EXPECT_EQ(peaks.host, base + 5 * kMiB + 64);
  EXPECT_EQ(peaks.node_host, peaks.host) << "no other rank";
  EXPECT_EQ(peaks.device, 0u);
  kept.reset();
  reset_memory_peaks();
  EXPECT_EQ(memory_peaks(Device::cpu()).host, base) << "what c holds in place of kept";

  HostTensorCounter counters[2];  // this process is 0
  struct Reset {
    ~Reset() { share_host_tensor_counts(nullptr, 0, 0); }
  } reset;
  counters[1].bytes = 7 * kMiB;
  share_host_tensor_counts(counters, 2, 0);
  reset_memory_peaks();
  EXPECT_EQ(memory_peaks(Device::cpu()).node_host, base + 7 * kMiB);
  { const Buffer d(kMiB, Device::cpu()); }
  counters[1].bytes = 9 * kMiB;  // the other rank's own peak, after this one's last allocation
  peaks = memory_peaks(Device::cpu());
  EXPECT_EQ(peaks.host, base + kMiB);
  EXPECT_EQ(peaks.node_host, base + 8 * kMiB) << "what this process saw at its allocation";
}

// What a Slurm job asked for: --mem, or --mem-per-cpu times the job's CPUs on the node, in MiB.
TEST(Memory, SlurmsMemoryRequestIsALimit) {
  const auto limit = [](std::map<std::string, std::string> env) {
    return slurm_memory_limit([&env](const char* name) -> const char* {
      const auto it = env.find(name);
      return it == env.end() ? nullptr : it->second.c_str();
    });
  };
  const std::optional<HostMemoryLimit> mem = limit({{"SLURM_MEM_PER_NODE", "2048"}});
  ASSERT_TRUE(mem);
  EXPECT_EQ(mem->bytes, uint64_t{2} << 30);
  EXPECT_EQ(mem->source, "that Slurm's --mem allows (SLURM_MEM_PER_NODE=2048)");
  const std::optional<HostMemoryLimit> per_cpu =
      limit({{"SLURM_MEM_PER_CPU", "1000"}, {"SLURM_CPUS_ON_NODE", "8"}});
  ASSERT_TRUE(per_cpu);
  EXPECT_EQ(per_cpu->bytes, uint64_t{8000} << 20);
  EXPECT_EQ(per_cpu->source, "that Slurm's --mem-per-cpu allows on this node's 8 CPUs (SLURM_MEM_PER_CPU=1000)");
  // --mem=0 is the node's whole memory; outside Slurm, or with values that are no counts: none.
  EXPECT_FALSE(limit({{"SLURM_MEM_PER_NODE", "0"}, {"SLURM_MEM_PER_CPU", "1000"}, {"SLURM_CPUS_ON_NODE", "8"}}));
  EXPECT_FALSE(limit({}));
  EXPECT_FALSE(limit({{"SLURM_MEM_PER_CPU", "1000"}}));
  for (const char* bad : {"2G", "-1", "", " 2048", "99999999999999999999", "17592186044416"}) {
    testing::internal::CaptureStderr();
    EXPECT_FALSE(limit({{"SLURM_MEM_PER_NODE", bad}})) << bad;
    const std::string said = testing::internal::GetCapturedStderr();
    // What is no count is said (a hand-set "2G" was ignored unsaid); the count too large to be a
    // size is the node's memory, which binds anyway.
    if (std::string(bad) != "17592186044416") {
      EXPECT_NE(said.find(std::string("SLURM_MEM_PER_NODE=") + bad + ": not a count of MiB"), std::string::npos) << said;
    }
  }
}

// The limits of a process's cgroups, read as Slurm's task/cgroup (v1) and systemd (v2) lay them
// out: the tightest along the group's ancestors binds, "max" and unlimited values do not.
TEST(Memory, CgroupLimitsAreTheTightestOfTheGroupAndItsAncestors) {
  const fs::path root = fs::temp_directory_path() / ("qarac-cgroup-" + std::to_string(getpid()));
  fs::remove_all(root);
  const auto limit_file = [&](const std::string& dir, const std::string& name, const std::string& value) {
    fs::create_directories(root.string() + dir);
    std::ofstream(root.string() + dir + "/" + name) << value << "\n";
  };
  const std::string unlimited = "9223372036854771712";
  limit_file("/cg/memory/slurm", "memory.limit_in_bytes", unlimited);
  limit_file("/cg/memory/slurm/uid_0/job_7", "memory.limit_in_bytes", "4294967296");
  limit_file("/cg/memory/slurm/uid_0/job_7/step_0", "memory.limit_in_bytes", "8589934592");
  limit_file("/cg/memory/slurm/uid_0/job_7/step_0/task_1", "memory.limit_in_bytes", unlimited);
  const std::string v1_mounts =
      "35 31 0:32 / /cg/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n"
      "36 31 0:33 / /cg/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct\n";
  const std::string v1_groups = "5:cpu,cpuacct:/slurm/uid_0/job_7\n4:memory:/slurm/uid_0/job_7/step_0/task_1\n0::/\n";
  std::optional<HostMemoryLimit> v1 = cgroup_memory_limit(v1_groups, v1_mounts, root.string());
  ASSERT_TRUE(v1.has_value());
  EXPECT_EQ(v1->bytes, uint64_t{4} << 30);
  EXPECT_EQ(v1->source, "that cgroup /slurm/uid_0/job_7 allows");

  // v2, mounted at the group itself (a container's view): "max" is no limit, the parent's is.
  limit_file("/cg2/system.slice", "memory.max", "2147483648");
  limit_file("/cg2/system.slice/job.scope", "memory.max", "max");
  const std::string v2_mounts = "41 23 0:38 /system.slice /cg2/system.slice rw,nosuid - cgroup2 cgroup2 rw\n";
  std::optional<HostMemoryLimit> v2 = cgroup_memory_limit("0::/system.slice/job.scope\n", v2_mounts, root.string());
  ASSERT_TRUE(v2.has_value());
  EXPECT_EQ(v2->bytes, uint64_t{2} << 30);
  EXPECT_EQ(v2->source, "that cgroup /system.slice allows");

  // No limit anywhere, a group outside the mount, unreadable values, no memory controller: none
  // (v1's "unlimited" is a number, 2^63 less a page, which the physical memory undercuts).
  limit_file("/cg2/system.slice", "memory.max", "max");
  EXPECT_FALSE(cgroup_memory_limit("0::/system.slice/job.scope\n", v2_mounts, root.string()));
  EXPECT_FALSE(cgroup_memory_limit("0::/user.slice\n", v2_mounts, root.string()));
  limit_file("/cg/memory/slurm/uid_0/job_7", "memory.limit_in_bytes", "4 GiB");
  limit_file("/cg/memory/slurm/uid_0/job_7/step_0", "memory.limit_in_bytes", "99999999999999999999999");
  v1 = cgroup_memory_limit(v1_groups, v1_mounts, root.string());
  ASSERT_TRUE(v1.has_value());
  EXPECT_EQ(std::to_string(v1->bytes), unlimited);
  EXPECT_FALSE(cgroup_memory_limit("5:cpu,cpuacct:/slurm/uid_0/job_7\n", v1_mounts, root.string()));
  EXPECT_FALSE(cgroup_memory_limit("", "", root.string()));
  fs::remove_all(root);
}

// ---- Hashes ----------------------------------------------------------------------------------

// Stored in files (checkpoint checksums, tokenizer hashes in task streams): the values are frozen.
TEST(Hash, ValuesAreFrozen) {
  std::string bytes;
  for (int i = 0; i < 100; ++i) bytes += static_cast<char>(i * 7 + 3);
  EXPECT_EQ(hash64(bytes.data(), 0), 0x7b8a1f9e82fc1d69ull);
  EXPECT_EQ(hash64(bytes.data(), 8), 0xcc409c1bc1bc07dfull);
  EXPECT_EQ(hash64(bytes.data(), 33), 0x26f995f4f9109272ull);  // lanes, a word and a tail byte
  EXPECT_EQ(hash64(bytes.data(), 100), 0x652ce3dc2152f5f9ull);
  // FNV-1a's published test vectors.
  Fnv1a64 empty, a, foobar;
  a.bytes("a", 1);
  foobar.bytes("foobar", 6);
  EXPECT_EQ(empty.hex(), "fnv1a64:cbf29ce484222325");
  EXPECT_EQ(a.value(), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(foobar.hex(), "fnv1a64:85944171f73967e8");
  // Integers go in little-endian, strings with their length first.
  Fnv1a64 word, word_bytes, text, text_bytes;
  word.u64(0x0102030405060708ull);
  word_bytes.bytes("\x08\x07\x06\x05\x04\x03\x02\x01", 8);
  EXPECT_EQ(word.value(), word_bytes.value());
  text.str("ab");
  text_bytes.u64(2);
  text_bytes.bytes("ab", 2);
  EXPECT_EQ(text.value(), text_bytes.value());
}

TEST(Hash, EveryFlippedBitChangesHash64) {
  std::vector<unsigned char> bytes(75);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(i * 31 + 1);
  const uint64_t clean = hash64(bytes.data(), bytes.size());
  std::set<uint64_t> seen = {clean};
  for (size_t i = 0; i < bytes.size(); ++i)
    for (int bit = 0; bit < 8; ++bit) {
      bytes[i] ^= static_cast<unsigned char>(1 << bit);
      EXPECT_TRUE(seen.insert(hash64(bytes.data(), bytes.size())).second) << "byte " << i << " bit " << bit;
      bytes[i] ^= static_cast<unsigned char>(1 << bit);
    }
  EXPECT_NE(hash64(bytes.data(), 74), clean);  // the length counts too
}

// ---- Files -----------------------------------------------------------------------------------

class FileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("qarac_test_core_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::set<std::string> entries() const {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.insert(e.path().filename().string());
    return names;
  }
  static std::string read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  static void write(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
  }

  fs::path dir_;
};

TEST_F(FileTest, AtomicWriteReplacesTheFileWhole) {
  const std::string p = path("a.bin");
  write(p, "old");
  {
    AtomicFile file(p);
    EXPECT_EQ(file.temp_path(), p + kTempFileMarker + std::to_string(::getpid()));
    file.write("new ", 4);
    EXPECT_EQ(read(p), "old") << "the target changes only at commit";
    file.write("bytes", 5);
    file.commit();
  }
  EXPECT_EQ(read(p), "new bytes");
  EXPECT_EQ(entries(), std::set<std::string>{"a.bin"}) << "a temporary file was left";

  // A library that writes to a path (HDF5): the bytes are its, the commit is the helper's.
  const std::string q = path("b.bin");
  {
    AtomicFile file(q, AtomicFile::by_path);
    // Created empty, as this process's own file, for the library to open and truncate.
    EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(file.temp_path())));
    EXPECT_EQ(fs::file_size(file.temp_path()), 0u);
    write(file.temp_path(), "written by a library");
    file.sync();  // as qarac-prep does for every stream before it commits any
    EXPECT_FALSE(fs::exists(q));
    file.commit();
  }
  EXPECT_EQ(read(q), "written by a library");
  EXPECT_EQ(entries(), (std::set<std::string>{"a.bin", "b.bin"}));
}

TEST_F(FileTest, FailedAtomicWritesLeaveTheOldFileAndNoTemporaryFile) {
  const std::string p = path("a.bin");
  write(p, "old");
  {
    AtomicFile file(p);
    file.write("half of the new", 15);
  }  // a throw before commit
  EXPECT_EQ(read(p), "old");
  EXPECT_EQ(entries(), std::set<std::string>{"a.bin"});

  // No folder for the temporary file.
  const std::string missing = path("no/such/dir/x.bin");
  expect_input_error([&] { AtomicFile file(missing); },
                     {missing, "cannot create the temporary file", missing + ".tmp.", "No such file"});

  // The rename fails (a folder took the target's name since): the temporary file is removed, the
  // folder stays.
  const std::string folder = path("target");
  expect_input_error(
      [&] {
        AtomicFile file(folder);
        file.write("x", 1);
        fs::create_directory(folder);
        file.commit();
      },
      {folder, "cannot rename the temporary file", "Is a directory"});
  EXPECT_EQ(entries(), (std::set<std::string>{"a.bin", "target"}));
  EXPECT_TRUE(fs::is_directory(folder));

  // by_path, but the library removed the file instead of writing it.
  const std::string never = path("never.bin");
  expect_input_error(
      [&] {
        AtomicFile file(never, AtomicFile::by_path);
        fs::remove(file.temp_path());
        file.commit();
      },
      {never, "fsync of", "No such file"});
  EXPECT_EQ(entries(), (std::set<std::string>{"a.bin", "target"}));
}

// A target that is no regular file is refused before anything is written: the rename would put a
// file in place of a folder, a device (/dev/null) or a FIFO (a pipe to a reader).
TEST_F(FileTest, AtomicWritesRefuseTargetsThatAreNoRegularFile) {
  fs::create_directory(dir_ / "folder");
  const std::string fifo = path("fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  expect_input_error([&] { AtomicFile file(path("folder")); }, {path("folder"), "not a regular file (a directory)"});
  expect_input_error([&] { AtomicFile file(fifo, AtomicFile::by_path); }, {fifo, "not a regular file (a device, FIFO"});
  EXPECT_TRUE(fs::is_fifo(fifo));
  EXPECT_EQ(entries(), (std::set<std::string>{"fifo", "folder"}));
  // A symbolic link is followed: its target is written, the link stays (and one to a FIFO is
  // refused as the FIFO is).
  write(path("target.bin"), "old");
  fs::create_symlink("target.bin", dir_ / "link");
  {
    AtomicFile file(path("link"));
    EXPECT_EQ(file.path(), path("target.bin"));
    file.write("new", 3);
    file.commit();
  }
  EXPECT_TRUE(fs::is_symlink(dir_ / "link"));
  EXPECT_EQ(read(path("target.bin")), "new");
  fs::create_symlink("fifo", dir_ / "to-fifo");
  // Named as given and as followed: the target alone may not say which path led there.
  expect_input_error([&] { AtomicFile file(path("to-fifo")); },
                     {path("to-fifo") + " (a link to " + fifo + "): not a regular file"});
}

// The temporary file's name is predictable ("<path>.tmp.<pid>"): in a folder that other users may
// write (a group's run directories), one of them can put a link there to a file of the writer's.
// Before, fopen followed it: the writer truncated and filled the link's target, then renamed the
// link over `path`. The temporary file is now always a new file of the writer's own.
TEST_F(FileTest, AtomicWritesNeverWriteThroughAnEntryUnderTheTemporaryName) {
  const std::string victim = path("victim.txt"), p = path("a.bin");
  write(victim, "another file of the user's");
  const std::string temp = p + kTempFileMarker + std::to_string(::getpid());
  fs::create_symlink(victim, temp);
  {
    AtomicFile file(p);
    file.write("new", 3);
    file.commit();
  }
  EXPECT_EQ(read(victim), "another file of the user's");
  EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(p)));
  EXPECT_EQ(read(p), "new");
  // The same for a library's file (HDF5 opens temp_path() itself), and for a killed writer's file
  // of the same pid: removed, not reused.
  const std::string q = path("b.bin");
  fs::create_symlink(victim, q + kTempFileMarker + std::to_string(::getpid()));
  {
    AtomicFile file(q, AtomicFile::by_path);
    EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(file.temp_path())));
    write(file.temp_path(), "written by a library");
    file.commit();
  }
  EXPECT_EQ(read(victim), "another file of the user's");
  EXPECT_EQ(read(q), "written by a library");
  write(temp, "a killed writer's half");
  {
    AtomicFile file(p);
    file.write("newer", 5);
    file.commit();
  }
  EXPECT_EQ(read(p), "newer");
  EXPECT_EQ(entries(), (std::set<std::string>{"a.bin", "b.bin", "victim.txt"}));
}

// AtomicFile follows links by reading them, which the kernel's protected_symlinks does not see: a
// link that another user put in /tmp (sticky, writable by all) to a file of this user's led the
// write there (qarac-embed --output /tmp/v.npy replaced ~/.myrc). Such a link is refused now, as
// the kernel refuses to follow it; this user's own links there are followed.
TEST_F(FileTest, AtomicWritesFollowNoOtherUsersLinkInASharedStickyFolder) {
  const fs::path tmp = dir_ / "tmp";
  fs::create_directory(tmp);
  ASSERT_EQ(::chmod(tmp.c_str(), 01777), 0);
  const std::string victim = path("victim.txt");
  write(victim, "kept");
  fs::create_symlink(victim, tmp / "mine.npy");
  {
    AtomicFile file((tmp / "mine.npy").string());
    EXPECT_EQ(file.path(), victim);
  }
  fs::create_symlink(victim, tmp / "theirs.npy");
  if (::lchown((tmp / "theirs.npy").c_str(), ::geteuid() + 4242, static_cast<gid_t>(-1)) != 0)
    GTEST_SKIP() << "cannot give a link to another user (not root)";
  expect_input_error([&] { AtomicFile file((tmp / "theirs.npy").string()); },
                     {(tmp / "theirs.npy").string(), "a link of another user's", "not followed"});
  EXPECT_EQ(read(victim), "kept");
  // Not sticky (a folder whose users trust each other): followed, as the kernel does.
  ASSERT_EQ(::chmod(tmp.c_str(), 0777), 0);
  AtomicFile file((tmp / "theirs.npy").string());
  EXPECT_EQ(file.path(), victim);
}

// AtomicFile::replace: a link at the target is replaced by the file, its target left as it was
// (a run directory's own files: run_dir.h), dangling or not; a folder is still refused.
TEST_F(FileTest, AtomicWritesReplaceALinkWhenAskedTo) {
  const std::string victim = path("victim.txt");
  write(victim, "kept");
  fs::create_symlink(victim, dir_ / "config.ini");
  fs::create_symlink(path("never-created"), dir_ / "dangling");
  for (const char* name : {"config.ini", "dangling"}) {
    AtomicFile file(path(name), AtomicFile::stream, AtomicFile::replace);
    EXPECT_EQ(file.path(), path(name));
    file.write("run", 3);
    file.commit();
    EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(path(name)))) << name;
    EXPECT_EQ(read(path(name)), "run");
  }
  EXPECT_EQ(read(victim), "kept");
  EXPECT_FALSE(fs::exists(path("never-created")));
  fs::create_directory(dir_ / "folder");
  expect_input_error([&] { AtomicFile file(path("folder"), AtomicFile::stream, AtomicFile::replace); },
                     {path("folder"), "not a regular file (a directory)"});
}

// ---- Checksummed HDF5 files ------------------------------------------------------------------

constexpr H5FileKind kTestKind = {"qarac-test-file", 3, "test file"};

class ChecksummedH5Test : public FileTest {
 protected:
  // A file with text, scalars, a vector and a matrix, written as checkpoints are.
  std::string make(const std::string& name, const H5FileKind& kind = kTestKind) {
    const std::string p = path(name);
    AtomicFile file(p, AtomicFile::by_path);
    {
      ChecksummedH5Writer w(file.temp_path(), kind);
      w.write_text("notes", "résumé");
      w.write_i64("counters/step", 42);
      w.write_u64("counters/seed", 0xF00DCAFEDEADBEEFull);
      w.write_vector("cursor", std::vector<int32_t>{3, -1, 7});
      w.write("weights/w", Tensor::from_vector(std::vector<float>{1.5f, -2.f, 0.25f, 8.f, 0.f, -0.5f}, {2, 3}));
      w.finish();
    }
    file.commit();
    return p;
  }
  static H5Contents read_all(const std::string& p, const H5FileKind& kind = kTestKind) {
    ChecksummedH5Reader reader(p, kind);
    return reader.read([](const std::string&, const Shape&) { return true; });
  }
};

TEST_F(ChecksummedH5Test, RoundTrip) {
  const std::string p = make("a.h5");
  EXPECT_EQ(entries(), std::set<std::string>{"a.h5"});
  const H5Contents c = read_all(p);
  ASSERT_EQ(c.size(), 5u);
  EXPECT_TRUE(c.at("notes").is_text);
  EXPECT_EQ(c.at("notes").text, "résumé");
  EXPECT_EQ(c.at("counters/step").values.data<int64_t>()[0], 42);
  EXPECT_EQ(static_cast<uint64_t>(c.at("counters/seed").values.data<int64_t>()[0]), 0xF00DCAFEDEADBEEFull);
  EXPECT_EQ(c.at("cursor").values.to_vector<int32_t>(), (std::vector<int32_t>{3, -1, 7}));
  const H5Dataset& w = c.at("weights/w");
  EXPECT_EQ(w.dtype, DType::f32);
  EXPECT_EQ(w.shape, (Shape{2, 3}));
  EXPECT_EQ(w.values.to_vector<float>(), (std::vector<float>{1.5f, -2.f, 0.25f, 8.f, 0.f, -0.5f}));

  // keep() declines the big datasets: read and checked all the same, their values not returned.
  ChecksummedH5Reader reader(p, kTestKind);
  const H5Contents shapes = reader.read([](const std::string&, const Shape& shape) { return shape_numel(shape) <= 1; });
  EXPECT_FALSE(shapes.at("weights/w").values.defined());
  EXPECT_EQ(shapes.at("weights/w").shape, (Shape{2, 3}));
  EXPECT_TRUE(shapes.at("counters/step").values.defined());
}

TEST_F(ChecksummedH5Test, DamageIsRefusedWithOneLineNamingTheFile) {
  silence_hdf5_stack_printing();
  const std::string flipped_data = make("flipped_data.h5");
  flip_byte(flipped_data, h5_dataset_offset(flipped_data, "weights/w") + 5);
  expect_input_error([&] { read_all(flipped_data); }, {flipped_data, "checksum mismatch", "corrupt"});

  const std::string flipped_text = make("flipped_text.h5");
  flip_byte(flipped_text, h5_dataset_offset(flipped_text, "notes") + 1);
  expect_input_error([&] { read_all(flipped_text); }, {flipped_text, "checksum mismatch"});

  const std::string truncated = make("truncated.h5");
  fs::resize_file(truncated, fs::file_size(truncated) - 100);
  expect_input_error([&] { read_all(truncated); }, {truncated, "truncated"});
  const std::string empty = make("empty.h5");
  fs::resize_file(empty, 0);
  expect_input_error([&] { read_all(empty); }, {empty, "not an HDF5 file"});

  // A write that died before finish() left its user block as HDF5 made it: zeros, no seal.
  const std::string unfinished = make("unfinished.h5");
  std::fstream(unfinished, std::ios::in | std::ios::out | std::ios::binary) << std::string(512, '\0');
  expect_input_error([&] { read_all(unfinished); }, {unfinished, "incomplete test file", "not sealed"});
  // The seal itself damaged: its hash, its first word.
  const std::string seal_hash = make("seal_hash.h5");
  flip_byte(seal_hash, 30);
  expect_input_error([&] { read_all(seal_hash); }, {seal_hash, "corrupt"});  // a mismatch, or no longer a number
  const std::string seal_word = make("seal_word.h5");
  flip_byte(seal_word, 0);
  expect_input_error([&] { read_all(seal_word); }, {seal_word, "not a test file", "damaged"});
  // A file changed with HDF5 after it was sealed (an attribute deleted).
  const std::string edited = make("edited.h5");
  const hid_t file = H5Fopen(edited.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  EXPECT_GE(H5Adelete(file, "complete"), 0);
  H5Fclose(file);
  expect_input_error([&] { read_all(edited); }, {edited, "checksum mismatch"});

  const std::string missing = path("missing.h5");
  expect_input_error([&] { read_all(missing); }, {missing, "cannot open", "No such file"});
}

// Before the seal, one flipped bit in the metadata at the end of a checkpoint crashed HDF5
// (SIGSEGV in H5Lvisit) in 10 of 13 places tried. Every byte of the file's metadata, flipped, is
// now one line naming the file; HDF5 never parses the damage.
TEST_F(ChecksummedH5Test, DamagedMetadataNeverReachesHdf5) {
  const std::string p = make("a.h5");
  const std::string pristine = path("pristine.h5");
  fs::copy_file(p, pristine);
  const auto size = static_cast<int64_t>(fs::file_size(p));
  const uint64_t data = h5_dataset_offset(p, "weights/w");
  int flips = 0;
  for (int64_t at = 512; at < size; ++at) {
    if (static_cast<uint64_t>(at) >= data && static_cast<uint64_t>(at) < data + 24) continue;  // the data's bytes
    fs::copy_file(pristine, p, fs::copy_options::overwrite_existing);
    flip_byte(p, static_cast<uint64_t>(at));
    expect_input_error([&] { read_all(p); }, {p, "whole-file checksum mismatch"});
    ++flips;
  }
  EXPECT_GT(flips, 1000);
}

// Files written before seals start with the HDF5 signature: read as they were, with the checks of
// their own attributes and checksum.
TEST_F(ChecksummedH5Test, UnsealedFilesOfEarlierBuildsAreRead) {
  const auto legacy = [&](const std::string& name, bool complete) {
    const std::string p = path(name);
    const hid_t file = H5Fcreate(p.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    const hid_t scalar = H5Screate(H5S_SCALAR);
    const hid_t text = H5Tcopy(H5T_C_S1);
    H5Tset_size(text, std::strlen(kTestKind.format));
    hid_t attr = H5Acreate2(file, "format", text, scalar, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attr, text, kTestKind.format);
    H5Aclose(attr);
    const auto write_i64 = [&](const char* key, hid_t type, const void* value) {
      const hid_t a = H5Acreate2(file, key, type, scalar, H5P_DEFAULT, H5P_DEFAULT);
      H5Awrite(a, type == H5T_STD_U64LE ? H5T_NATIVE_UINT64 : H5T_NATIVE_INT64, value);
      H5Aclose(a);
    };
    const int64_t version = kTestKind.version, one = 1;
    const uint64_t sum = hash64(nullptr, 0);  // no dataset: the checksum of no words
    write_i64("version", H5T_STD_I64LE, &version);
    write_i64("checksum", H5T_STD_U64LE, &sum);
    if (complete) write_i64("complete", H5T_STD_I64LE, &one);
    H5Tclose(text);
    H5Sclose(scalar);
    H5Fclose(file);
    return p;
  };
  // Read, with a warning that it is not sealed, once per file.
  const std::string old = legacy("old.h5", true);
  testing::internal::CaptureStderr();
  EXPECT_TRUE(read_all(old).empty());
  EXPECT_TRUE(read_all(old).empty());
  const std::string said = testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find(old + ": a test file of an earlier build, without a seal: read as before"), std::string::npos)
      << said;
  EXPECT_EQ(said.find("without a seal"), said.rfind("without a seal")) << said;
  const std::string unfinished = legacy("old_unfinished.h5", false);
  expect_input_error([&] { read_all(unfinished); }, {unfinished, "incomplete test file", "'complete'"});
}

TEST_F(ChecksummedH5Test, AnotherFormatOrVersionIsRefused) {
  const std::string p = make("a.h5");
  expect_input_error([&] { read_all(p, {"qarac-other", 3, "sample file"}); },
                     {p, "not a sample file (format 'qarac-test-file')"});
  expect_input_error([&] { read_all(p, {"qarac-test-file", 4, "test file"}); },
                     {p, "test file version 3, this build reads 4"});
}
