// The CUDA dropout kernel (kernels/cuda/dropout.cu, ported by port_kernel.py) on the CUDA emulator
// (cuda_emulator.h) against the CPU reference (cpu::dropout_rows), bit for bit: in f32 the kernel
// gives the CPU's bits, in bf16 the CPU's f32 result on the same bf16 inputs rounded to bf16 (as
// CudaRuntime.DropoutMatchesCpuBitForBit expects). Ragged batches with empty and length-1
// sequences, the 16-byte packed path and the scalar one (odd widths, misaligned rows), p = 0 (a
// copy), in place and not, keys with every word in use.
#include <gtest/gtest.h>

#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "cuda_emulator.h"
#include "dropout_emulated.h"
#include "kernels/cpu/dropout.h"

namespace qarac {
namespace {

// High bits in every word of the key: Philox takes seed, step and tensor whole.
const RngKey kKey{0x9E3779B97F4A7C15ull, (uint64_t{1} << 33) + 17, (1u << 16) + 5};
const RngKey kOtherKey{1234, 7, 0xFFFFFFF0u};

struct Case {
  std::string name;
  std::vector<int32_t> lengths;
  int64_t cols;
  double p;
  DType dtype;
  bool in_place;
  // x and y start one element past a 16-byte boundary: the scalar path even when cols is a
  // multiple of the pack (emulated device memory is otherwise 16-byte aligned, as cudaMalloc's).
  bool misaligned;
  RngKey key;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// The stored bits of x in dtype (bf16: rounded to nearest even).
uint32_t bits_of(float x, DType dtype) {
  if (dtype == DType::bf16) return bf16(x).bits;
  uint32_t u;
  memcpy(&u, &x, 4);
  return u;
}

void check(const Case& c) {
  std::vector<int32_t> offsets{0};
  for (int32_t n : c.lengths) offsets.push_back(offsets.back() + n);
  const int64_t rows = offsets.back(), batch = static_cast<int64_t>(c.lengths.size()), n = rows * c.cols;
  std::mt19937 rng(static_cast<uint32_t>(c.key.seed ^ static_cast<uint64_t>(c.cols)));
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = c.dtype == DType::bf16 ? static_cast<float>(bf16(dist(rng))) : dist(rng);
  std::vector<uint64_t> ids(static_cast<size_t>(batch));
  for (uint64_t& id : ids) id = (static_cast<uint64_t>(rng()) << 32) | rng();

  std::vector<float> want(static_cast<size_t>(n));
  cpu::dropout_rows<float>(x.data(), want.data(), offsets.data(), ids.data(), batch, c.cols, c.p, c.key);

  // Each buffer ends against the emulator's guard page, so a read or write past it faults.
  const size_t size = c.dtype == DType::bf16 ? 2 : 4, shift = c.misaligned ? size : 0;
  emu::DeviceMemory x_dev(static_cast<size_t>(n) * size + shift), y_dev(static_cast<size_t>(n) * size + shift);
  emu::DeviceMemory offsets_dev(offsets.size() * sizeof(int32_t)), ids_dev(ids.size() * sizeof(uint64_t));
  auto* xp = static_cast<char*>(x_dev.data()) + shift;
  auto* yp = c.in_place ? xp : static_cast<char*>(y_dev.data()) + shift;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = bits_of(x[static_cast<size_t>(i)], c.dtype);
    memcpy(xp + i * static_cast<int64_t>(size), &b, size);  // little-endian: bf16 is the low half
  }
  memcpy(offsets_dev.data(), offsets.data(), offsets.size() * sizeof(int32_t));
  memcpy(ids_dev.data(), ids.data(), ids.size() * sizeof(uint64_t));

  emu::set_schedule_seed(c.key.seed);
  cuda_emulated::dropout(c.dtype, xp, yp, rows, c.cols, static_cast<const int32_t*>(offsets_dev.data()),
                         static_cast<const uint64_t*>(ids_dev.data()), batch, c.p, c.key);

  int64_t bad = 0, first_bad = -1, dropped = 0, input_changed = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t got = 0, in = 0;
    memcpy(&got, yp + i * static_cast<int64_t>(size), size);
    memcpy(&in, xp + i * static_cast<int64_t>(size), size);
    const float w = want[static_cast<size_t>(i)], xi = x[static_cast<size_t>(i)];
    if (got != bits_of(w, c.dtype) && bad++ == 0) first_bad = i;
    if (!c.in_place && in != bits_of(xi, c.dtype)) ++input_changed;
    if (w == 0.f && xi != 0.f) ++dropped;
  }
  if (bad > 0) {
    uint32_t got = 0;
    memcpy(&got, yp + first_bad * static_cast<int64_t>(size), size);
    ADD_FAILURE() << c.name << ": " << bad << " of " << n << " elements differ from the CPU reference; first at row "
                  << first_bad / c.cols << ", column " << first_bad % c.cols << ": got bits 0x" << std::hex << got
                  << ", want 0x" << bits_of(want[static_cast<size_t>(first_bad)], c.dtype) << std::dec << " ("
                  << want[static_cast<size_t>(first_bad)] << ")";
  }
  EXPECT_EQ(input_changed, 0) << c.name << ": the kernel wrote " << input_changed << " elements of its input";
  // The comparison means something only if the reference drops some elements and keeps others.
  if (c.p > 0 && n >= 1000) {
    EXPECT_GT(dropped, 0) << c.name << ": the reference dropped nothing";
    EXPECT_LT(dropped, n) << c.name << ": the reference dropped everything";
  }
}

class DropoutEmulated : public ::testing::TestWithParam<Case> {};

TEST_P(DropoutEmulated, MatchesCpuBitForBit) {
  const Case& c = GetParam();
  try {
    check(c);
  } catch (const Error& e) {
    ADD_FAILURE() << c.name << ": " << e.what();
  }
}

// 167 rows (more than the 32 blocks grid_for gives the emulated device: blocks take several rows),
// empty sequences first, last and between, a length-1 one.
const std::vector<int32_t> kRagged = {0, 37, 1, 0, 120, 9, 0};
const std::vector<int32_t> kShort = {1, 0, 5};

constexpr DType kBf16 = DType::bf16, kF32 = DType::f32;

// Name, lengths, cols, p, dtype, in place, misaligned, key. Packed widths: cols a multiple of 4
// (f32) or 8 (bf16); 1028 f32 and 2056 bf16 columns are 257 packs, one more than the 256 threads.
const Case kCases[] = {
    {"F32Packed", kRagged, 768, 0.1, kF32, false, false, kKey},
    {"F32PackedManyColumnsInPlace", kRagged, 1028, 0.5, kF32, true, false, kKey},
    {"F32ScalarOddCols", kRagged, 301, 0.1, kF32, false, false, kOtherKey},
    {"F32ScalarInPlace", kShort, 37, 0.5, kF32, true, false, kKey},
    {"F32MisalignedScalarInPlace", kRagged, 64, 0.5, kF32, true, true, kKey},
    {"F32OneColumn", kShort, 1, 0.5, kF32, false, false, kOtherKey},
    {"F32Copy", kRagged, 768, 0.0, kF32, false, false, kKey},
    {"F32CopyInPlace", kRagged, 301, 0.0, kF32, true, false, kKey},
    // No rows: no launch (the emulator refuses an empty grid, as CUDA does) and no access (the
    // empty buffers end at the guard page).
    {"F32NoRows", {0, 0}, 16, 0.1, kF32, false, false, kKey},
    {"Bf16Packed", kRagged, 768, 0.1, kBf16, false, false, kKey},
    {"Bf16PackedManyColumnsInPlace", kRagged, 2056, 0.5, kBf16, true, false, kOtherKey},
    {"Bf16OnePackPerRow", {1, 1, 0, 2}, 8, 0.5, kBf16, false, false, kKey},
    {"Bf16ScalarOddCols", kRagged, 301, 0.5, kBf16, false, false, kKey},
    {"Bf16MisalignedScalar", kRagged, 768, 0.1, kBf16, false, true, kOtherKey},
    {"Bf16Copy", kRagged, 301, 0.0, kBf16, false, false, kKey},
};

std::string case_name(const ::testing::TestParamInfo<Case>& param) { return param.param.name; }
INSTANTIATE_TEST_SUITE_P(Cases, DropoutEmulated, ::testing::ValuesIn(kCases), case_name);

}  // namespace
}  // namespace qarac
