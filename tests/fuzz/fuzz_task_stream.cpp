// Fuzz target: task-stream files as the loader and the evaluation read them (data/shards.h,
// data/loader.h), by structure-aware mutation. HDF5 itself is not hardened against arbitrary bytes
// (a corrupt B-tree or object header can crash it inside the library), so the bytes do not go to
// HDF5 as a file: they are a recipe. A valid stream is written with TaskStreamWriter (the task,
// the examples, the chunking and compression from the bytes), then changed through the HDF5 API
// the way damage or a hostile writer would: attributes set to other values and types or deleted,
// elements of datasets overwritten, extents changed, links deleted, datasets replaced by others
// of another type or rank, raw chunks replaced by arbitrary bytes (what a flipped bit in a deflated
// chunk is), and the file is sealed again (core/hdf5_seal.h), or its seal would refuse it
// first. Every file HDF5 writes is well-formed HDF5; what our layer makes of its content is what
// is tested. The reads: open, read_all, ranges of fields, labels and candidates, and the
// loader over a few steps with a cursor restored.
#include <hdf5.h>

#include "core/hdf5_seal.h"
#include "data/loader.h"
#include "data/shards.h"
#include "fuzz_support.h"

using namespace qarac;
using namespace qarac::data;

namespace {

std::vector<int32_t> ids(fuzz::Bytes& b, size_t max_len) {
  std::vector<int32_t> out(b.below(max_len));
  for (int32_t& id : out) id = b.u8() % 8 == 0 ? static_cast<int32_t>(b.u32()) : b.u8();
  return out;
}

void write_stream(fuzz::Bytes& b, Task task, const std::string& path) {
  WriterOptions options;
  options.chunk_tokens = 1 + static_cast<int64_t>(b.below(63));
  options.chunk_examples = 1 + static_cast<int64_t>(b.below(15));
  options.compression = b.u8() % 2 ? 4 : 0;
  TaskStreamWriter w(path, task, options);
  const size_t n = b.below(40);
  for (size_t i = 0; i < n; ++i) {
    std::vector<std::vector<int32_t>> fields;
    for (size_t f = 0; f < task_fields(task).size(); ++f) fields.push_back(ids(b, 12));
    std::vector<std::vector<int32_t>> candidates;
    if (task == Task::question_answering)
      for (size_t c = b.below(3); c > 0; --c) candidates.push_back(ids(b, 6));
    w.append(fields, static_cast<int8_t>(static_cast<int>(b.u8() % 3) - 1), candidates);
  }
  StreamInfo info;
  info.tokenizer_hash = "fnv1a64:0123456789abcdef";
  info.created_by = "fuzz";
  info.max_length = 12;
  for (size_t s = b.below(2); s > 0; --s) {
    SourceInfo src;
    src.path = "in.txt";
    src.format = "text";
    src.lines = b.u8();
    src.skipped["blank line"] = b.u8();
    info.sources.push_back(src);
  }
  w.finish(info);
  w.publish();
}

const char* const kDatasets[] = {
    "fields/text/tokens",       "fields/text/offsets",        "fields/question/tokens", "fields/question/offsets",
    "fields/answer/tokens",     "fields/premise0/offsets",    "fields/statement1/tokens", "labels",
    "candidates/tokens",        "candidates/offsets",         "candidates/example_offsets", "sources/path",
    "sources/lines",            "sources/candidates",         "skipped/source",         "skipped/count",
    "skipped/reason",           "fields",                     "candidates",             "sources"};
const char* const kAttributes[] = {"format",         "version",    "task",       "examples",     "tokenizer_hash",
                                   "special_tokens", "max_length", "created_by", "qarac_version", "checksum"};
const char* const kTexts[] = {"qarac-task-stream", "encode_decode", "question_answering", "reasoning", "consistency", "",
                              "x"};

template <class Pick>
const char* pick(fuzz::Bytes& b, const Pick& list) {
  return list[b.u8() % (sizeof list / sizeof list[0])];
}

void set_int_attr(hid_t file, const char* name, hid_t type, int64_t value) {
  H5Adelete(file, name);
  const hid_t space = H5Screate(H5S_SCALAR);
  const hid_t attr = H5Acreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(attr, H5T_NATIVE_INT64, &value);
  H5Aclose(attr);
  H5Sclose(space);
}

void set_text_attr(hid_t file, const char* name, const std::string& text) {
  H5Adelete(file, name);
  const hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, std::max<size_t>(text.size(), 1));
  const hid_t space = H5Screate(H5S_SCALAR);
  const hid_t attr = H5Acreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  std::string padded = text;
  padded.resize(std::max<size_t>(text.size(), 1), '\0');
  H5Awrite(attr, type, padded.data());
  H5Aclose(attr);
  H5Sclose(space);
  H5Tclose(type);
}

hsize_t extent(hid_t dset) {
  const hid_t space = H5Dget_space(dset);
  hsize_t n = 0;
  if (H5Sget_simple_extent_ndims(space) == 1) H5Sget_simple_extent_dims(space, &n, nullptr);
  H5Sclose(space);
  return n;
}

void mutate(fuzz::Bytes& b, hid_t file) {
  switch (b.u8() % 9) {
    case 0: {  // an integer attribute to another value (any attribute: a string one becomes an integer)
      const char* name = pick(b, kAttributes);
      set_int_attr(file, name, b.u8() % 2 ? H5T_STD_I64LE : H5T_STD_U8LE, static_cast<int64_t>(b.u64()));
      break;
    }
    case 1: {  // a text attribute to another text
      const char* name = pick(b, kAttributes);
      set_text_attr(file, name, b.u8() % 2 ? std::string(pick(b, kTexts)) : std::string(b.below(20), 'a' + b.u8() % 26));
      break;
    }
    case 2: H5Adelete(file, pick(b, kAttributes)); break;
    case 3: {  // one element of a dataset
      const hid_t dset = H5Dopen2(file, pick(b, kDatasets), H5P_DEFAULT);
      if (dset < 0) break;
      const hsize_t n = extent(dset);
      if (n > 0) {
        const hsize_t at = b.u32() % n, one = 1;
        const int64_t value = b.u8() % 2 ? static_cast<int64_t>(b.u64()) : static_cast<int64_t>(b.u8()) - 128;
        const hid_t space = H5Dget_space(dset);
        H5Sselect_hyperslab(space, H5S_SELECT_SET, &at, nullptr, &one, nullptr);
        const hid_t mem = H5Screate_simple(1, &one, nullptr);
        H5Dwrite(dset, H5T_NATIVE_INT64, mem, space, H5P_DEFAULT, &value);
        H5Sclose(mem);
        H5Sclose(space);
      }
      H5Dclose(dset);
      break;
    }
    case 4: {  // another extent of an extendible dataset (unwritten chunks read as zeros)
      const hid_t dset = H5Dopen2(file, pick(b, kDatasets), H5P_DEFAULT);
      if (dset < 0) break;
      const hsize_t size = b.u8() % 4 == 0 ? (hsize_t{1} << (20 + b.below(40))) : b.below(80);
      // Shrinking a huge extent has HDF5 visit every chunk position it drops (hours with chunks of
      // one element): the recipe's cost, not the reader's, so such an input keeps its extent.
      if (size >= extent(dset) || extent(dset) <= (hsize_t{1} << 20)) H5Dset_extent(dset, &size);
      H5Dclose(dset);
      break;
    }
    case 5: H5Ldelete(file, pick(b, kDatasets), H5P_DEFAULT); break;
    case 6: {  // a dataset replaced by one of another type or rank
      const char* name = pick(b, kDatasets);
      if (H5Ldelete(file, name, H5P_DEFAULT) < 0) break;
      const hsize_t dims[2] = {b.below(6), 1 + b.below(2)};
      const int rank = 1 + b.u8() % 2;
      const hid_t types[] = {H5T_IEEE_F64LE, H5T_STD_I8LE, H5T_STD_U64BE, H5T_STD_I32LE};
      const hid_t space = H5Screate_simple(rank, dims, nullptr);
      const hid_t dset = H5Dcreate2(file, name, types[b.u8() % 4], space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      std::vector<int64_t> values(dims[0] * dims[1]);
      for (int64_t& v : values) v = static_cast<int64_t>(b.u8()) - 2;
      if (!values.empty()) H5Dwrite(dset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data());
      H5Dclose(dset);
      H5Sclose(space);
      break;
    }
    case 7: {  // a raw chunk replaced by arbitrary bytes, its filters applied or not
      const hid_t dset = H5Dopen2(file, pick(b, kDatasets), H5P_DEFAULT);
      if (dset < 0) break;
      const hid_t dcpl = H5Dget_create_plist(dset);
      hsize_t chunk = 0;
      if (H5Pget_layout(dcpl) == H5D_CHUNKED && H5Pget_chunk(dcpl, 1, &chunk) == 1 && extent(dset) > 0) {
        const hsize_t offset = (b.u32() % extent(dset)) / chunk * chunk;
        std::vector<uint8_t> raw(b.below(80));
        for (uint8_t& c : raw) c = b.u8();
        if (!raw.empty()) H5Dwrite_chunk(dset, H5P_DEFAULT, b.u8() % 2, &offset, raw.size(), raw.data());
      }
      H5Pclose(dcpl);
      H5Dclose(dset);
      break;
    }
    case 8: {  // an attribute of two elements instead of one
      const char* name = pick(b, kAttributes);
      H5Adelete(file, name);
      const hsize_t two = 2;
      const hid_t space = H5Screate_simple(1, &two, nullptr);
      const hid_t attr = H5Acreate2(file, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
      const int64_t values[2] = {1, 2};
      H5Awrite(attr, H5T_NATIVE_INT64, values);
      H5Aclose(attr);
      H5Sclose(space);
      break;
    }
  }
}

void read_everything(const std::string& path, const std::string& dir, Task task, fuzz::Bytes& b) {
  {
    const TaskStreamFile file(path);
    const int64_t n = file.examples();
    file.read_all();
    const int64_t begin = n ? static_cast<int64_t>(b.u32() % static_cast<uint32_t>(n)) : 0;
    const int64_t end = begin + static_cast<int64_t>(b.below(static_cast<size_t>(n - begin)));
    for (int f = 0; f < static_cast<int>(task_fields(file.task()).size()); ++f) file.read_field(f, begin, end);
    if (task_has_label(file.task())) file.read_labels(begin, end);
    if (file.has_candidates()) file.read_candidates(begin, end);
  }
  RankPlan plan;
  plan.tasks = {{task, 0, 1 + static_cast<int>(b.below(3))}};
  LoaderOptions options;
  options.data_dir = dir;
  options.global_batch = 1 + static_cast<int64_t>(b.below(7));
  options.vocab_size = b.u8() % 2 ? 256 : 0;
  Loader loader(plan, options);
  for (size_t s = b.below(4); s > 0; --s)
    for (const TaskBatch& batch : loader.next().tasks) batch.split(static_cast<int64_t>(b.below(30)));
  LoaderCursor cursor = loader.cursor();
  if (b.u8() % 2) cursor.tasks[0].position = static_cast<int64_t>(b.u64() >> 1);
  if (b.u8() % 2) cursor.tasks[0].epoch = static_cast<int64_t>(b.u64() >> b.below(63));
  if (b.u8() % 2) cursor.tasks[0].stream_checksum = b.u64();
  loader.restore(cursor);
  loader.next();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  silence_hdf5_stack_printing();
  fuzz::Bytes b(data, size);
  const Task task = static_cast<Task>(b.u8() % kQaracTaskCount);  // the tasks with streams of their own
  const std::string dir = (fuzz::scratch() / "streams").string();
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/" + task_name(task) + ".h5";
  write_stream(b, task, path);
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (file < 0) std::abort();
  for (size_t m = b.below(6); m > 0; --m) mutate(b, file);
  H5Fclose(file);
  // The seal would refuse any edit: made again, so that what lies below it is what is fuzzed.
  // (Drawing no byte for it keeps the recipes of tests/fuzz/regressions as they were.)
  seal_hdf5_file(path);
  fuzz::expect_only_input_errors([&] { read_everything(path, dir, task, b); });
  return 0;
}
