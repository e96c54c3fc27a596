// Fuzz target: a training checkpoint as a resumed run reads it (train/checkpoint.h:
// verify_checkpoint, then load_checkpoint into an optimizer of one parameter). Structure-aware,
// for the reason fuzz_task_stream.cpp gives (HDF5 is not hardened against arbitrary bytes): the
// bytes are a recipe. A part file is written with the checksummed writer (core/hdf5_checksummed.h),
// so that its checksum holds and the schema beyond it is reached: every dataset of the schema is
// left out, given another type, shape or value, or written as it should be, and datasets of other
// names are added. Then, as damage would, the root attributes (format, version, complete,
// checksum) may be changed or deleted, a dataset deleted, or a byte of a dataset's data flipped:
// the file's seal then refuses it before HDF5 reads it (the unit tests check the attributes
// themselves on files without a seal, as earlier builds wrote them).
#include <hdf5.h>

#include <fstream>
#include <functional>
#include <limits>

#include "core/hdf5_checksummed.h"
#include "fuzz_support.h"
#include "train/checkpoint.h"

using namespace qarac;

namespace {

Tensor floats(fuzz::Bytes& b, const Shape& shape, DType dtype) {
  std::vector<double> v(static_cast<size_t>(shape_numel(shape)));
  for (double& x : v) x = b.u8() % 16 == 0 ? std::numeric_limits<double>::infinity() : b.u8() / 7.0 - 10;
  return Tensor::from_vector(v, shape).to(dtype);
}

Shape some_shape(fuzz::Bytes& b) {
  Shape s(b.below(3));
  for (int64_t& d : s) d = static_cast<int64_t>(b.below(4));
  return s;
}

// The largest optimizer step count written. Found by this target: load_checkpoint of a step count
// near 2^62 did not return (Optimizer::set_steps multiplies the NAdam schedule once per step); a
// checkpoint now holds at most 1e9 steps, which still takes seconds, too slow for fuzzing.
constexpr int64_t kMaxOptimizerSteps = int64_t{1} << 20;

// One dataset of the schema: as it should be (most of the time), or something else.
void entry(fuzz::Bytes& b, ChecksummedH5Writer& w, const std::string& name, const std::function<void()>& proper) {
  switch (b.u8() % 10) {
    case 0: return;  // left out
    case 1: w.write_text(name, std::string(b.below(6), 'a' + b.u8() % 26)); return;
    case 2: {
      const int64_t value = static_cast<int64_t>(b.u64());
      w.write_i64(name, name == "optimizer/steps" ? value % kMaxOptimizerSteps : value);
      return;
    }
    case 3: w.write(name, floats(b, some_shape(b), b.u8() % 2 ? DType::f32 : DType::f64)); return;
    case 4: w.write_vector<int32_t>(name, {static_cast<int32_t>(b.u32()), -1}); return;
    case 5: w.write_u64(name, b.u64()); return;
    default: proper();
  }
}

void write_part(fuzz::Bytes& b, const std::string& path) {
  ChecksummedH5Writer w(path, {kCheckpointFormat, kCheckpointVersion, "checkpoint"});
  const size_t tasks = b.below(5);
  const std::vector<std::pair<const char*, std::function<void()>>> schema = {
      {"config", [&] { w.write_text("config", "[train]\nseed = 1\n"); }},
      {"checkpoint/parts", [&] { w.write_text("checkpoint/parts", b.u8() % 4 ? "model\n" : "model\nother\n"); }},
      {"state/step", [&] { w.write_i64("state/step", static_cast<int64_t>(b.u64() >> b.below(63))); }},
      {"state/seed", [&] { w.write_u64("state/seed", b.u64()); }},
      {"optimizer/kind", [&] { w.write_text("optimizer/kind", b.u8() % 4 ? "adamw" : "nadam"); }},
      {"optimizer/steps", [&] { w.write_i64("optimizer/steps", static_cast<int64_t>(b.u64() % kMaxOptimizerSteps)); }},
      {"parameters/w", [&] { w.write("parameters/w", floats(b, b.u8() % 4 ? Shape{2, 3} : some_shape(b), DType::f32)); }},
      {"optimizer/m/w", [&] { w.write("optimizer/m/w", floats(b, {2, 3}, b.u8() % 4 ? DType::f32 : DType::f64)); }},
      {"optimizer/v/w", [&] { w.write("optimizer/v/w", floats(b, {2, 3}, DType::f32)); }},
      {"loader/step", [&] { w.write_i64("loader/step", static_cast<int64_t>(b.u64() >> b.below(63))); }},
      {"loader/task", [&] {
         std::vector<int32_t> t(tasks);
         for (int32_t& x : t) x = b.u8() % 8 == 0 ? static_cast<int32_t>(b.u32()) : b.u8() % 4;
         w.write_vector("loader/task", t);
       }},
      {"loader/epoch", [&] {
         std::vector<int64_t> e(tasks + (b.u8() % 8 == 0));
         for (int64_t& x : e) x = static_cast<int64_t>(b.u64() >> b.below(63));
         w.write_vector("loader/epoch", e);
       }},
      {"loader/position", [&] {
         std::vector<int64_t> p(tasks);
         for (int64_t& x : p) x = static_cast<int64_t>(b.u64() >> b.below(63));
         w.write_vector("loader/position", p);
       }},
  };
  for (const auto& [name, proper] : schema) entry(b, w, name, proper);
  const char* extras[] = {"parameters/x", "optimizer/m/x", "parameters/w/deeper", "loader/other", "state", "other"};
  for (size_t e = b.below(2); e > 0; --e) entry(b, w, extras[b.u8() % 6], [] {});
  w.finish();
}

void damage(fuzz::Bytes& b, const std::string& path) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (file < 0) std::abort();
  const char* attrs[] = {"format", "version", "complete", "checksum"};
  const char* name = attrs[b.u8() % 4];
  haddr_t flip_at = HADDR_UNDEF;
  switch (b.u8() % 4) {
    case 0: H5Adelete(file, name); break;
    case 1: {
      H5Adelete(file, name);
      const int64_t value = b.u8() % 2 ? static_cast<int64_t>(b.u64()) : b.u8() % 3;
      const hid_t space = H5Screate(H5S_SCALAR);
      const hid_t attr = H5Acreate2(file, name, b.u8() % 2 ? H5T_STD_I64LE : H5T_IEEE_F64LE, space, H5P_DEFAULT,
                                    H5P_DEFAULT);
      H5Awrite(attr, H5T_NATIVE_INT64, &value);
      H5Aclose(attr);
      H5Sclose(space);
      break;
    }
    case 2: {
      const char* datasets[] = {"parameters/w", "loader/task", "state/step", "config"};
      H5Ldelete(file, datasets[b.u8() % 4], H5P_DEFAULT);
      break;
    }
    case 3: {
      const hid_t dset = H5Dopen2(file, "parameters/w", H5P_DEFAULT);
      if (dset >= 0) {
        flip_at = H5Dget_offset(dset);
        H5Dclose(dset);
      }
      break;
    }
  }
  H5Fclose(file);
  if (flip_at != HADDR_UNDEF) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(flip_at));
    f.put(static_cast<char>(b.u8() | 1));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  silence_hdf5_stack_printing();
  fuzz::Bytes b(data, size);
  const std::string dir = (fuzz::scratch() / "run").string();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  const std::string folder = checkpoint_path(dir, static_cast<int64_t>(b.below(3)));
  std::filesystem::create_directories(folder);
  const std::string part = folder + "/model.h5";
  try {
    write_part(b, part);
  } catch (const InputError&) {
    return 0;  // a recipe the writer refuses: a dataset below another ("parameters/w/deeper")
  }
  if (b.u8() % 4 == 0) damage(b, part);

  static Parameter w;
  static Optimizer optimizer = [] {
    w.allocate("w", {2, 3}, DType::f32, Device::cpu());
    return Optimizer({&w}, OptimizerConfig{});
  }();
  fuzz::expect_only_input_errors([&] { verify_checkpoint(folder); });
  fuzz::expect_only_input_errors([&] { load_checkpoint(folder, optimizer); });
  fuzz::expect_only_input_errors([&] { find_latest_checkpoint(dir); });
  return 0;
}
