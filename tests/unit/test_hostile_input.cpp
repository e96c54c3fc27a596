// Broken and hostile input to the data, io and core layers (issue 12): every case once ended in a
// silent misread, an internal error, a crash or an allocation of what a few bytes claimed; each
// must now be a one-line InputError naming the file (and the line, dataset, tensor or option).
#include <gtest/gtest.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/hash.h"
#include "core/hdf5_seal.h"
#include "data/loader.h"
#include "data/readers.h"
#include "data/shards.h"
#include "data/tokenize_lines.h"
#include "data/tokenizer.h"
#include "io/hf_checkpoint.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using namespace qarac;
using namespace qarac::data;
using qarac::test_support::copy_without_seal;
using qarac::test_support::expect_input_error;
using qarac::test_support::run_command;
using json = nlohmann::json;

namespace {

const std::string kSample = QARAC_SAMPLE_DIR "/";
const std::string kPrep = QARAC_PREP_EXE;
const std::string kParity = QARAC_PARITY_EXE;
const std::string kBench = QARAC_BENCH_EXE;
const fs::path kTinyDev = fs::path(QARAC_GOLDEN_DIR) / "tiny_dev";

// A fresh folder per test, removed after it.
class Hostile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qarac_hostile_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// ---- Hashes ----------------------------------------------------------------------------------

// The task-stream checksum hashes datasets a block at a time: the pieces must hash as the whole.
TEST(Hash64Pieces, HashLikeTheWholeWhateverTheCuts) {
  std::vector<unsigned char> bytes(150);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(i * 37 + 11);
  for (size_t n = 0; n <= bytes.size(); n += 7)
    for (size_t a = 0; a <= n; a += 3)
      for (size_t b = a; b <= n; b += 5) {
        Hash64 h;
        h.bytes(bytes.data(), a);
        h.bytes(bytes.data() + a, b - a);
        h.bytes(bytes.data() + b, n - b);
        ASSERT_EQ(h.value(), hash64(bytes.data(), n)) << n << " cut at " << a << ", " << b;
      }
}

// ---- Line input ------------------------------------------------------------------------------

// Before: opening a FIFO waited for a writer for good (a tokenizer, a config.json, a weights or
// reference file); a link to a device read until memory ran out.
TEST_F(Hostile, InputFilesThatArePipesOrDevicesAreRefusedUnopened) {
  const std::string fifo = path("pipe");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const std::string refused = ": not a regular file (a pipe, a device or a socket): give the file itself";
  expect_input_error([&] { Tokenizer::from_json(fifo); }, {fifo + refused});
  expect_input_error([&] { io::read_safetensors(fifo); }, {fifo + refused});
  expect_input_error([&] { io::read_hf_config(fifo); }, {fifo + refused});
  fs::create_symlink("/dev/zero", dir_ / "zeros");
  expect_input_error([&] { Tokenizer::from_json(path("zeros")); }, {path("zeros") + refused});
  // In a model folder: "config.json is missing" was said of a folder or a pipe of that name.
  fs::create_directories(dir_ / "model" / "config.json");
  expect_input_error([&] { io::read_hf_roberta(path("model")); }, {path("model/config.json") + ": is a directory"});
}

// Before: POSIX getline took any length, and a line of a binary file given by mistake was read
// whole. Now a line past 64 MiB is refused, naming the file and the line.
TEST_F(Hostile, AnOverlongLineIsRefusedNamingTheLine) {
  const std::string file = path("corpus.txt");
  {
    std::ofstream out(file, std::ios::binary);
    out << "a short line\n" << std::string((size_t{64} << 20) + 1, 'x') << "\nmore\n";
  }
  expect_input_error([&] { read_examples(file, Format::text, Encoding::utf8, OnError::skip, [](Example&&) {}); },
                     {file + ":2: the line is longer than 64 MiB"});
}

// Before: a UTF-16 file (no mark) read as UTF-8 gave a NUL token after every letter, and an empty
// text or JSON-lines file was a run of 0 examples; a stray quote in a CSV read the rest of the
// file into memory as one record.
TEST_F(Hostile, TextThatIsNoTextIsRefused) {
  const std::string utf16 = path("utf16.txt");
  std::ofstream(utf16, std::ios::binary) << std::string("a\0b\0\n\0", 6);
  expect_input_error([&] { read_examples(utf16, Format::text, Encoding::utf8, OnError::fail, [](Example&&) {}); },
                     {utf16 + ":1: NUL byte: byte 1 after 'a' is 0x00", "a UTF-16 file?"});
  std::ofstream(path("marked.txt"), std::ios::binary) << "\xff\xfe" << std::string("a\0\n\0", 4);
  expect_input_error(
      [&] { read_examples(path("marked.txt"), Format::text, Encoding::utf8, OnError::fail, [](Example&&) {}); },
      {"invalid UTF-8: byte 0 (0xff)", "a UTF-16 byte-order mark"});
  for (const auto& [name, format] : {std::pair{"empty.txt", Format::text}, std::pair{"empty.jsonl", Format::snli_jsonl}}) {
    std::ofstream(path(name)).close();
    expect_input_error([&, format = format] { read_examples(path(name), format, Encoding::utf8, OnError::skip, [](Example&&) {}); },
                       {path(name) + ":1: empty file"});
  }
  const std::string csv = path("stray.csv");
  {
    std::ofstream out(csv, std::ios::binary);
    out << "Premise 1,Premise 2,Syllogistic relation,Conclusion\r\n\"All a are b,x,yes,c\r\n";
    for (int i = 0; i < 1500; ++i) out << "All a are b,All b are c,yes,All a are c\r\n";
  }
  int64_t examples = 0;
  const ReadStats stats = read_examples(csv, Format::avicenna, Encoding::latin1, OnError::skip, [&](Example&&) { ++examples; });
  EXPECT_EQ(stats.skipped.at("malformed: unterminated quote"), 1);
  EXPECT_EQ(examples, 500) << "the lines after the bound are read again";
}

// Before: getline failing for memory returned -1, taken as the end of the file: the rest of the
// file was dropped and the run went on ("2 lines, 2 examples", exit 0). The child process reads
// a 40 MiB line with 24 MiB of address space to spare.
TEST_F(Hostile, RunningOutOfMemoryMidLineIsAnErrorNotTheEnd) {
#ifdef __SANITIZE_ADDRESS__
  GTEST_SKIP() << "AddressSanitizer's operator new ends the process instead of throwing std::bad_alloc";
#endif
  const std::string file = path("corpus.txt");
  {
    std::ofstream out(file, std::ios::binary);
    out << "first\n" << std::string(size_t{40} << 20, 'y') << "\nlast\n";
  }
  const std::string result = test_support::in_child([&] {
    int64_t examples = 0;
    read_examples(file, Format::text, Encoding::utf8, OnError::skip, [&](Example&&) { ++examples; });
    return "no error after " + std::to_string(examples) + " examples";
  }, size_t{24} << 20);
  EXPECT_EQ(result.rfind("input error: " + file + ":2: out of memory after ", 0), 0u) << result;
}

// ---- Task streams ----------------------------------------------------------------------------

// A stream of `n` examples of one field, ids drawn from `seed`, in chunks of 64 tokens.
void write_stream(const std::string& path, int64_t n, uint32_t seed, int compression = 4) {
  std::mt19937 rng(seed);
  WriterOptions options;
  options.chunk_tokens = 64;
  options.chunk_examples = 16;
  options.compression = compression;
  TaskStreamWriter w(path, Task::encode_decode, options);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<int32_t> ids(1 + rng() % 20);
    for (int32_t& id : ids) id = static_cast<int32_t>(rng() % 500);
    w.append({ids});
  }
  StreamInfo info;
  info.tokenizer_hash = "test-hash";
  w.finish(info);
  w.publish();
}

// Runs `fn` on the file `path` opened read-write with HDF5, then seals the file again: the seal
// refuses any changed byte (ADamagedStreamNeverReachesHdf5), and these tests read the checks
// below it, which files written before seals rely on.
template <class Fn>
void edit_h5(const std::string& path, Fn fn) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  fn(file);
  ASSERT_GE(H5Fclose(file), 0);
  seal_hdf5_file(path);
}

void write_element(hid_t file, const char* dataset, hid_t type, int64_t index, const void* value) {
  const hid_t dset = H5Dopen2(file, dataset, H5P_DEFAULT);
  const hid_t space = H5Dget_space(dset);
  const hsize_t start = static_cast<hsize_t>(index), one = 1;
  H5Sselect_hyperslab(space, H5S_SELECT_SET, &start, nullptr, &one, nullptr);
  const hid_t mem = H5Screate_simple(1, &one, nullptr);
  EXPECT_GE(H5Dwrite(dset, type, mem, space, H5P_DEFAULT, value), 0);
  H5Sclose(mem);
  H5Sclose(space);
  H5Dclose(dset);
}

LoaderOptions options_for(const fs::path& dir) {
  LoaderOptions o;
  o.data_dir = dir.string();
  o.global_batch = 4;
  return o;
}

const RankPlan kEncodeDecode = [] {
  RankPlan p;
  p.tasks = {{Task::encode_decode, 0, 1}};
  return p;
}();

// Before: nothing covered a stream's content; a flipped token went into training unnoticed.
TEST_F(Hostile, AStreamWhoseContentChangedIsRefused) {
  const std::string file = path("encode_decode.h5");
  write_stream(file, 100, 1);
  const StreamContents clean = TaskStreamFile(file).read_all();
  EXPECT_NE(TaskStreamFile(file).info().checksum, 0u);
  EXPECT_EQ(clean.checksum, TaskStreamFile(file).info().checksum);

  // verify(), a block at a time, checks what read_all() checks.
  EXPECT_EQ(TaskStreamFile(file).verify(), clean.checksum);

  const int32_t other = clean.fields[0].tokens[70] + 1;
  edit_h5(file, [&](hid_t f) { write_element(f, "fields/text/tokens", H5T_NATIVE_INT32, 70, &other); });
  expect_input_error([&] { Loader(kEncodeDecode, options_for(dir_)); }, {file, "checksum mismatch", "damaged"});
  expect_input_error([&] { TaskStreamFile(file).verify(); }, {file, "checksum mismatch", "damaged"});

  // A stream of a qarac-prep before checksums (no attribute) loads, with its checksum computed.
  write_stream(file, 100, 1);
  edit_h5(file, [](hid_t f) { EXPECT_GE(H5Adelete(f, "checksum"), 0); });
  EXPECT_EQ(TaskStreamFile(file).info().checksum, 0u);
  EXPECT_EQ(TaskStreamFile(file).read_all().checksum, clean.checksum);
}

// Before: a stream's bytes reached HDF5 unchecked, and damage to HDF5's metadata can crash the
// library (it did for checkpoints). Now any byte changed past the seal, a truncation, or a write
// that never sealed the file is refused in one line naming it before HDF5 opens the file; a
// stream of a qarac-prep before seals is read as it was.
TEST_F(Hostile, ADamagedStreamNeverReachesHdf5) {
  silence_hdf5_stack_printing();
  const std::string file = path("encode_decode.h5"), pristine = path("pristine.h5");
  write_stream(file, 100, 6);
  fs::copy_file(file, pristine);
  const auto size = fs::file_size(file);
  int flips = 0;
  for (uint64_t at = kHdf5SealBytes; at < size; at += 7, ++flips) {
    SCOPED_TRACE("byte " + std::to_string(at));
    fs::copy_file(pristine, file, fs::copy_options::overwrite_existing);
    test_support::flip_byte(file, at);
    expect_input_error([&] { TaskStreamFile{file}; }, {file, "whole-file checksum mismatch", "(rerun qarac-prep)"});
  }
  EXPECT_GT(flips, 1000);
  expect_input_error([&] { Loader(kEncodeDecode, options_for(dir_)); }, {file, "whole-file checksum mismatch"});
  // The seal's own padding is checked too (before: bytes after its text could change unseen).
  fs::copy_file(pristine, file, fs::copy_options::overwrite_existing);
  test_support::flip_byte(file, 100);
  expect_input_error([&] { TaskStreamFile{file}; }, {file, "its seal is damaged", "rerun qarac-prep"});

  fs::copy_file(pristine, file, fs::copy_options::overwrite_existing);
  fs::resize_file(file, size - 100);
  expect_input_error([&] { TaskStreamFile{file}; }, {file, "its seal says", "truncated"});
  // A qarac-prep that died between the last write and the seal left the user block as HDF5 made it.
  fs::copy_file(pristine, file, fs::copy_options::overwrite_existing);
  std::fstream(file, std::ios::in | std::ios::out | std::ios::binary) << std::string(kHdf5SealBytes, '\0');
  expect_input_error([&] { TaskStreamFile{file}; }, {file, "incomplete task stream", "not sealed"});

  // A file found whole is not hashed again by this process while it stays as it was; changed,
  // it is checked again. (Settled: the check keeps only files last changed over a second before,
  // by mtime and ctime, which no tool sets back.)
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  EXPECT_NO_THROW(TaskStreamFile{pristine});
  const std::string changed = path("changed.h5");
  fs::copy_file(pristine, changed);
  test_support::flip_byte(pristine, size / 2);
  expect_input_error([&] { TaskStreamFile{pristine}; }, {pristine, "whole-file checksum mismatch"});
  fs::rename(changed, pristine);  // back as it was, under a new identity

  const std::string legacy = path("legacy.h5");
  copy_without_seal(pristine, legacy);
  const TaskStreamFile old(legacy);
  EXPECT_EQ(old.info().checksum, TaskStreamFile(pristine).info().checksum);
  EXPECT_EQ(old.read_all().checksum, old.info().checksum);

  // Not files: a folder, and a FIFO, whose open would wait for a writer.
  const std::string fifo = path("fifo.h5"), folder = path("folder.h5");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  fs::create_directory(folder);
  expect_input_error([&] { TaskStreamFile{fifo}; }, {fifo, "not a task stream (a device, FIFO or socket)"});
  expect_input_error([&] { TaskStreamFile{folder}; }, {folder, "not a task stream (a directory)"});
}

// Before: a chunk that does not inflate was an internal error (exit 1) naming no file.
TEST_F(Hostile, ACorruptCompressedChunkIsAnInputError) {
  const std::string file = path("encode_decode.h5");
  write_stream(file, 100, 2);
  edit_h5(file, [](hid_t f) {
    const hid_t dset = H5Dopen2(f, "fields/text/tokens", H5P_DEFAULT);
    const std::vector<unsigned char> garbage(120, 0xA5);
    const hsize_t offset = 64;  // the second chunk
    EXPECT_GE(H5Dwrite_chunk(dset, H5P_DEFAULT, 0, &offset, garbage.size(), garbage.data()), 0);
    H5Dclose(dset);
  });
  expect_input_error([&] { TaskStreamFile(file).read_field(0, 0, 100); }, {file, "cannot read 'fields/text/tokens'"});
  expect_input_error([&] { Loader(kEncodeDecode, options_for(dir_)); }, {file, "'fields/text/tokens'"});
}

// Before: a dataset's extent was trusted, and unwritten chunks read as zeros: a header of a few
// bytes had the loader allocate 4 TiB of tokens.
TEST_F(Hostile, ExtentsBeyondTheBytesStoredAreRefused) {
  const std::string file = path("encode_decode.h5");
  write_stream(file, 100, 3);
  const int64_t huge = int64_t{1} << 40;
  edit_h5(file, [&](hid_t f) {
    const hid_t dset = H5Dopen2(f, "fields/text/tokens", H5P_DEFAULT);
    const hsize_t size = static_cast<hsize_t>(huge);
    EXPECT_GE(H5Dset_extent(dset, &size), 0);
    H5Dclose(dset);
    write_element(f, "fields/text/offsets", H5T_NATIVE_INT64, 100, &huge);
  });
  expect_input_error([&] { TaskStreamFile{file}; }, {file, "'fields/text/tokens' claims 1099511627776 elements"});
}

// Before: a resumed run took any stream whose size fitted the cursor.
TEST_F(Hostile, ACursorOfAnotherStreamIsRefused) {
  fs::create_directories(dir_ / "a");
  fs::create_directories(dir_ / "b");
  write_stream((dir_ / "a" / "encode_decode.h5").string(), 100, 4);
  write_stream((dir_ / "b" / "encode_decode.h5").string(), 100, 5);  // the same size, other examples
  Loader a(kEncodeDecode, options_for(dir_ / "a"));
  a.next();
  const LoaderCursor cursor = a.cursor();
  ASSERT_EQ(cursor.tasks.size(), 1u);
  EXPECT_EQ(cursor.tasks[0].stream_checksum, TaskStreamFile((dir_ / "a" / "encode_decode.h5").string()).info().checksum);
  Loader b(kEncodeDecode, options_for(dir_ / "b"));
  expect_input_error([&] { b.restore(cursor); },
                     {(dir_ / "b" / "encode_decode.h5").string(),
                      "the checkpoint was made with another task stream (checksum 0x"});
  Loader same(kEncodeDecode, options_for(dir_ / "a"));
  EXPECT_NO_THROW(same.restore(cursor));
  LoaderCursor unknown = cursor;  // a checkpoint from before the checksum
  unknown.tasks[0].stream_checksum = 0;
  EXPECT_NO_THROW(b.restore(unknown));
}

TEST_F(Hostile, TokenIdsBeyondTheModelsVocabularyAreRefused) {
  write_stream(path("encode_decode.h5"), 50, 6);
  LoaderOptions o = options_for(dir_);
  o.vocab_size = 100;  // the stream's ids go up to 499
  expect_input_error([&] { Loader(kEncodeDecode, o); }, {path("encode_decode.h5"), "outside the model's vocabulary of 100"});
  // A vocabulary of V holds ids 0 to V - 1: the largest id itself is one too many.
  const int32_t largest = TaskStreamFile(path("encode_decode.h5")).read_all().max_token;
  o.vocab_size = largest;
  expect_input_error([&] { Loader(kEncodeDecode, o); },
                     {"token id " + std::to_string(largest) + " is outside the model's vocabulary of " +
                      std::to_string(largest) + " ids"});
  o.vocab_size = largest + 1;
  EXPECT_NO_THROW(Loader(kEncodeDecode, o));
}

// Before: found when its batch came up (hours into a run), by a message naming no file.
TEST_F(Hostile, SequencesLongerThanTheModelReadsAreRefusedAtTheStart) {
  write_stream(path("encode_decode.h5"), 50, 6);  // 1 to 20 tokens each
  LoaderOptions o = options_for(dir_);
  o.max_tokens = 10;
  expect_input_error([&] { Loader(kEncodeDecode, o); },
                     {path("encode_decode.h5"), "'s text has", "tokens, more than the 10 the model reads",
                      "rerun qarac-prep with --max-length 10"});
  o.too_long_remedy = "or raise the positions";
  expect_input_error([&] { Loader(kEncodeDecode, o); }, {"the model reads (or raise the positions)"});
  o.max_tokens = 20;
  EXPECT_NO_THROW(Loader(kEncodeDecode, o));
}

// ---- Tokenizer files -------------------------------------------------------------------------

json sample_tokenizer() {
  std::ifstream in(kSample + "tokenizer/tokenizer.json");
  return json::parse(in);
}

// Before: accepted, and id 5000 went into every task stream (item 9).
TEST_F(Hostile, APostProcessorIdOutsideTheVocabularyIsRefused) {
  json j = sample_tokenizer();
  j["post_processor"]["cls"] = {"<s>", 5000};
  const std::string file = path("tokenizer.json");
  write_text(file, j.dump());
  expect_input_error([&] { Tokenizer::from_json(file); }, {file, "post_processor: id 5000 is not in the vocabulary"});
}

// Before: one token of id 10^7 sized the id tables at 10^7 entries (about 1 GB).
TEST_F(Hostile, FewTokensWithHugeIdsAreRefused) {
  json j = sample_tokenizer();
  j["added_tokens"].push_back({{"id", 10000000}, {"content", "<far>"}, {"special", true}});
  const std::string file = path("tokenizer.json");
  write_text(file, j.dump());
  expect_input_error([&] { Tokenizer::from_json(file); }, {file, "ids reach 10000000"});
}

// Before: `tokenize --decode` of an id in a gap between ids was an internal error (exit 1).
TEST_F(Hostile, DecodingAnIdInAVocabularyGapIsAnInputError) {
  json j = sample_tokenizer();
  j["added_tokens"].push_back({{"id", 1600}, {"content", "<extra>"}, {"special", true}});  // 1500..1599 unused
  write_text(path("tokenizer.json"), j.dump());
  const Tokenizer tok = Tokenizer::from_dir(dir_.string());
  EXPECT_FALSE(tok.has_id(1550));
  EXPECT_TRUE(tok.has_id(1600));
  expect_input_error([&] { tokenize_line(tok, "[5, 1550]", {false, true}, "stdin", 3); },
                     {"stdin:3: 1550 is an unused id of the vocabulary (no token has it)"});
  expect_input_error([&] { tokenize_line(tok, "[5, 1601]", {false, true}, "stdin", 3); },
                     {"stdin:3: 1601 is not an id of the vocabulary (ids 0 to 1600)"});
  write_text(path("ids.jsonl"), "[5]\n[1550]\n");
  const auto r = run_command(kPrep + " tokenize --decode --tokenizer " + dir_.string() + " < " + path("ids.jsonl"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("qarac-prep tokenize: error: stdin:2: 1550 is an unused id"), std::string::npos) << r.output;
}

// Before: a tokenizer without its post-processor (tokenizers' ByteLevelBPETokenizer saves none)
// made streams without <s> ... </s> that said they held them; qarac-train refused them later.
TEST_F(Hostile, PrepRefusesATokenizerThatAddsNoSpecialTokens) {
  json j = sample_tokenizer();
  j["post_processor"] = nullptr;
  write_text(path("tokenizer.json"), j.dump());
  const std::string prep = kPrep + " --tokenizer " + dir_.string() + " --text " + kSample + "corpus_heldout.txt --out ";
  auto r = run_command(prep + path("with"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("adds no <s> ... </s> around a text"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(path("with")));
  r = run_command(prep + path("without") + " --no-special");
  EXPECT_EQ(r.code, 0) << r.output;
}

// Before: qarac-prep exited 0 when its closing summary could not be written. It now says so and
// exits 2; the streams, published before the summary, are whole.
TEST_F(Hostile, PrepSaysWhenItsSummaryCannotBeWritten) {
  const std::string out = path("out");
  const auto r = run_command("(" + kPrep + " --tokenizer " + kSample + "tokenizer --text " + kSample +
                             "corpus_heldout.txt --out " + out + " > /dev/full)");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("qarac-prep: error: standard output: write failed: No space left on device"),
            std::string::npos)
      << r.output;
  EXPECT_NO_THROW(TaskStreamFile(out + "/encode_decode.h5"));
}

// A word of the command line with a line break (a path) is refused in one line, as qarac-train
// does: before, qarac-prep wrote into such a folder and its summary broke across lines.
TEST_F(Hostile, AnArgumentWithALineBreakIsRefusedInOneLine) {
  const std::string out = path("two") + "\nlines";
  const auto r = run_command(kPrep + " --tokenizer " + kSample + "tokenizer --text " + kSample +
                             "corpus_heldout.txt --out \"$(printf '" + path("two") + "\\nlines')\"");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(r.output, "qarac-prep: error: command-line argument '" + path("two") + "\\x0alines' holds a line break\n");
  EXPECT_FALSE(fs::exists(out));
}

// Before: qarac-prep renamed its streams into place one by one, and a run killed between two
// renames (the OOM killer, a power loss) left streams of two preparations, which training took
// as one. The folder is now marked while streams are renamed: readers refuse a marked folder,
// and a later qarac-prep clears the mark only if it writes every stream the stopped one named.
TEST_F(Hostile, AStoppedPublishIsNotTakenForOnePreparation) {
  const std::string out = path("data"), marker = out + "/" + kPublishingMarker;
  const std::string prep = kPrep + " --tokenizer " + kSample + "tokenizer --out " + out;
  // A temporary file that a killed run left (no handler runs on SIGKILL) is said, not removed:
  // its writer may be a live run on another node of a shared file system.
  fs::create_directories(out);
  std::ofstream(out + "/reasoning.h5.tmp.999") << "partial";
  const auto first = run_command(prep + " --text " + kSample + "corpus_heldout.txt");
  ASSERT_EQ(first.code, 0) << first.output;
  EXPECT_NE(first.output.find("temporary files of a qarac-prep that was stopped or still runs elsewhere: "
                              "reasoning.h5.tmp.999"),
            std::string::npos)
      << first.output;
  EXPECT_TRUE(fs::exists(out + "/reasoning.h5.tmp.999"));
  EXPECT_FALSE(fs::exists(marker));  // gone once every stream is in place
  // What a run killed after its first rename leaves (written as publish_streams writes it).
  std::ofstream(marker) << "qarac-prep (pid 1) publishing:\nencode_decode.h5\nreasoning.h5\n";
  expect_input_error([&] { Loader(kEncodeDecode, options_for(out)); },
                     {marker, "stopped while publishing its streams here (encode_decode.h5, reasoning.h5)", "rerun it"});
  // A run that writes only some of them leaves the folder as it is.
  auto r = run_command(prep + " --text " + kSample + "corpus_heldout.txt");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("this run does not write reasoning.h5: rerun that one"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(marker));
  // One that writes all of them makes it whole.
  r = run_command(prep + " --text " + kSample + "corpus_heldout.txt --avicenna " + kSample + "Avicenna_Test.csv");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(fs::exists(marker));
  EXPECT_NO_THROW(Loader(kEncodeDecode, options_for(out)));
}

// A FIFO at the publishing mark (another member of a group that shares the data folder, or a
// slip) held qarac-prep, and every run reading the folder, in its open for good: refused now.
TEST_F(Hostile, AFifoAtThePublishingMarkIsNotWaitedOn) {
  const std::string out = path("fifo-mark"), marker = out + "/" + kPublishingMarker;
  fs::create_directories(out);
  ASSERT_EQ(::mkfifo(marker.c_str(), 0600), 0);
  const auto r = run_command("timeout -s KILL 60 " + kPrep + " --tokenizer " + kSample + "tokenizer --out " + out +
                             " --text " + kSample + "corpus_heldout.txt");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(marker + ": not a regular file"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::is_fifo(marker));
}

// Before: a log whose reader went away killed qarac-prep with SIGPIPE (exit 141, no word) and left
// its temporary files. The run now goes on and publishes its streams; only its summary is lost.
TEST_F(Hostile, PrepOutlivesAClosedLogPipe) {
  const std::string out = path("out"), status = path("status");
  const auto r = run_command("(" + kPrep + " --tokenizer " + kSample + "tokenizer --text " + kSample +
                             "corpus_heldout.txt --out " + out + " 2>&1; echo $? > " + status + ") | true");
  std::ifstream in(status);
  int code = -1;
  in >> code;
  EXPECT_EQ(code, 2) << r.output;  // standard output: write failed (the summary)
  EXPECT_NO_THROW(TaskStreamFile(out + "/encode_decode.h5"));
  for (const auto& entry : fs::directory_iterator(out))
    EXPECT_EQ(entry.path().filename().string().find(".tmp."), std::string::npos) << entry.path();
}

// Before: SIGINT or SIGTERM left <task>.h5.tmp.<pid> behind for good, and later a signal ended a
// run waiting on a quiet pipe only when the next line came. The input is a FIFO, so the signal
// comes mid-run whatever the machine's speed: qarac-prep has opened it (and installed its
// handlers), read a first line, and waits for more, which never come while the writer holds it.
TEST_F(Hostile, AnInterruptedPrepLeavesNoTemporaryFile) {
  const std::string fifo = path("in.txt"), out = path("out"), log = path("prep.log");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::FILE* err = std::freopen(log.c_str(), "w", stderr);
    if (err == nullptr) ::_exit(99);
    const std::string tokenizer = kSample + "tokenizer";
    ::execl(kPrep.c_str(), kPrep.c_str(), "--tokenizer", tokenizer.c_str(), "--out", out.c_str(), "--text", fifo.c_str(),
            static_cast<char*>(nullptr));
    ::_exit(98);
  }
  std::ofstream writer(fifo);  // opens once qarac-prep has opened its end
  writer << "the first line of a text\n" << std::flush;
  ::usleep(300000);
  ASSERT_EQ(::kill(pid, SIGINT), 0);
  int status = 0;
  pid_t waited = 0;
  for (int i = 0; i < 200 && waited == 0; ++i) {  // 20 s at most, then the run is stuck
    waited = ::waitpid(pid, &status, WNOHANG);
    if (waited == 0) ::usleep(100000);
  }
  if (waited == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    FAIL() << "qarac-prep still waited on its quiet input 20 s after SIGINT";
  }
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Ended by the signal once the files are removed, as its default action ends a program: a shell
  // sees 130 (before: exit 2, an input error to a job script).
  ASSERT_TRUE(WIFSIGNALED(status)) << text;
  EXPECT_EQ(WTERMSIG(status), SIGINT) << text;
  EXPECT_NE(text.find("interrupted by SIGINT: nothing was written"), std::string::npos) << text;
  // Not even the output directory, which it created.
  std::vector<std::string> left;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(out, ec)) left.push_back(entry.path().filename().string());
  EXPECT_TRUE(left.empty()) << left.front();
  EXPECT_FALSE(fs::exists(out));
}

// Before: a value nested 10^5 deep crashed qarac-prep (exit 139) when its error message dumped
// it, one recursion per level. Quoted by kind and size instead; a short one as written.
TEST_F(Hostile, DeeplyNestedJsonValuesAreQuotedByTheirKind) {
  const Tokenizer tok = Tokenizer::from_dir(kSample + "tokenizer");
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  expect_input_error([&] { tokenize_line(tok, "[" + deep + "]", {false, true}, "stdin", 1); },
                     {"stdin:1: an array of 1 element, nested more than 16 deep is not an id"});
  expect_input_error([&] { tokenize_line(tok, "[[1, 2]]", {false, true}, "stdin", 1); },
                     {"stdin:1: [1,2] is not an id"});
  write_text(path("deep.jsonl"), "{\"gold_label\": " + deep + ", \"sentence1\": \"a\", \"sentence2\": \"b\"}\n");
  expect_input_error(
      [&] { read_examples(path("deep.jsonl"), Format::snli_jsonl, Encoding::utf8, OnError::fail, [](Example&&) {}); },
      {path("deep.jsonl") + ":1", "an array of 1 element, nested more than 16 deep"});
}

// ---- Hugging Face files ----------------------------------------------------------------------

std::string config_with(const std::string& key, const json& value) {
  std::ifstream in(kTinyDev / "config.json");
  json j = json::parse(in);
  j[key] = value;
  return j.dump();
}

// Before: 2^63-1 overflowed the products of the sizes; 2·10^7 cost 5 GB and 30 s before the
// shape error.
TEST_F(Hostile, ConfigSizesAreBoundedBeforeAnythingUsesThem) {
  const std::string file = path("config.json");
  write_text(file, config_with("vocab_size", std::numeric_limits<int64_t>::max()));
  expect_input_error([&] { io::read_hf_config(file); }, {file, "'vocab_size' is 9223372036854775807, more than"});
  write_text(file, config_with("vocab_size", 20000000));
  expect_input_error([&] { io::read_hf_config(file); }, {file, "'vocab_size' is 20000000, more than the 16777216"});
  json j = json::parse(config_with("hidden_size", 65536));
  j["intermediate_size"] = 262144;
  j["num_hidden_layers"] = 1024;
  j["num_attention_heads"] = 16;
  write_text(file, j.dump());
  expect_input_error([&] { io::read_hf_config(file); }, {file, "the sizes make an encoder of more than"});
}

// Before: a deeply nested value crashed every program that loads a base or an export (exit 139):
// a mistyped config.json value was dumped whole into its message, and each safetensors header
// entry's messages were made whether its checks failed or not, so a deep value in a key nobody
// reads crashed too.
TEST_F(Hostile, DeeplyNestedValuesInABasesFilesAreQuotedByTheirKind) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  const std::string config = path("config.json");
  std::string text = config_with("hidden_size", "DEEP");  // spliced in: dumping it would recurse here
  text.replace(text.find("\"DEEP\""), 6, deep);
  write_text(config, text);
  expect_input_error([&] { io::read_hf_config(config); },
                     {config, "must be an integer, found an array of 1 element, nested more than 16 deep"});
  const std::string header = "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4], \"extra\": " +
                             deep + "}}";
  std::string file(8, '\0');
  for (size_t b = 0; b < 8; ++b) file[b] = static_cast<char>((header.size() >> (8 * b)) & 0xff);
  write_text(path("deep.safetensors"), file + header + std::string(4, '\0'));
  EXPECT_EQ(io::read_safetensors(path("deep.safetensors")).at("w").numel(), 1);
}

// Dropout probabilities outside [0, 1), or so close to 1 that the 16-bit draws drop everything,
// are refused when the config is read, not at the first training step.
TEST_F(Hostile, ConfigDropoutMustBeAProbabilityTheDrawsCanTake) {
  const std::string file = path("config.json");
  for (const double p : {-0.1, 1.0, 0.999999}) {
    write_text(file, config_with("attention_probs_dropout_prob", p));
    expect_input_error([&] { io::read_hf_config(file); },
                       {file, "'attention_probs_dropout_prob' must be in [0, 1)"});
  }
  write_text(file, config_with("hidden_dropout_prob", 0.99999));  // 65535 of 65536: still a draw
  EXPECT_NEAR(io::read_hf_config(file).hidden_dropout, 0.99999, 1e-12);
  // Positive, but 0 in the draws: the model would train without the dropout its config asks for.
  write_text(file, config_with("hidden_dropout_prob", 1e-9));
  expect_input_error([&] { io::read_hf_config(file); }, {file, "'hidden_dropout_prob' is 1e-09", "drop nothing"});
  write_text(file, config_with("hidden_dropout_prob", 0x1p-17));  // the smallest that rounds to 1 of 65536
  EXPECT_EQ(io::read_hf_config(file).hidden_dropout, 0x1p-17);
}

// The weights a config's sizes describe must be in the file before any model is allocated.
TEST_F(Hostile, ConfigSizesMustMatchTheWeightsFile) {
  fs::copy_file(kTinyDev / "model.safetensors", dir_ / "model.safetensors");
  write_text(path("config.json"), config_with("vocab_size", 200));
  expect_input_error([&] { io::read_hf_roberta(dir_.string()); },
                     {path("config.json"), "'embeddings.word_embeddings.weight' [200, 32]", "holds [101, 32]"});
  write_text(path("config.json"), config_with("num_hidden_layers", 3));
  expect_input_error([&] { io::read_hf_roberta(dir_.string()); },
                     {path("config.json"), "num_hidden_layers is 3", "'encoder.layer.2.intermediate.dense.weight'"});
}

// Before: a NaN weight of --model.base was found only at step 1, as a non-finite gradient.
TEST_F(Hostile, NonFiniteWeightsAreRefusedAtLoad) {
  fs::copy_file(kTinyDev / "config.json", dir_ / "config.json");
  io::Metadata metadata;
  TensorMap tensors = io::read_safetensors((kTinyDev / "model.safetensors").string(), &metadata);
  std::string name;
  for (auto& [n, t] : tensors)
    if (n.find("layer.1.output.dense.weight") != std::string::npos) {
      name = n;
      t = t.to(DType::f32).clone();
      t.data<float>()[5] = std::nanf("");
    }
  ASSERT_FALSE(name.empty());
  io::write_safetensors(path("model.safetensors"), tensors, metadata);
  expect_input_error([&] { io::read_hf_roberta(dir_.string()); },
                     {path("model.safetensors"), "'" + name + "'", "non-finite value", "element 5"});
}

// ---- The programs' options and inputs --------------------------------------------------------

// Before: an HDF5 error (HDF5 caps a chunk at 2^32 elements), reported as internal.
TEST_F(Hostile, PrepRefusesChunksBeyondTheLimit) {
  const auto r = run_command(kPrep + " --tokenizer " + kSample + "tokenizer --out " + path("out") + " --text " +
                             kSample + "corpus_train.txt --chunk-tokens 4294967296");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("qarac-prep: error: --chunk-tokens must be in [1, 16777216], got 4294967296"),
            std::string::npos) << r.output;
}

// Before: the output directory stayed behind, empty.
TEST_F(Hostile, PrepRemovesTheOutputDirectoryItCreatedWhenItFails) {
  const auto r = run_command(kPrep + " --tokenizer " + kSample + "tokenizer --out " + path("out/deep/er") +
                             " --text " + path("nonexistent.txt"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(path("nonexistent.txt") + ": cannot open"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(path("out"))) << "a folder it created is left";
  EXPECT_TRUE(fs::exists(dir_)) << "a folder it did not create was removed";
  // A dangling link on the way is the user's (a purged scratch folder), not a folder it made.
  fs::create_symlink(path("purged"), dir_ / "data");
  const auto linked = run_command(kPrep + " --tokenizer " + kSample + "tokenizer --out " + path("data/streams") +
                                  " --text " + path("nonexistent.txt"));
  EXPECT_EQ(linked.code, 2) << linked.output;
  EXPECT_TRUE(fs::is_symlink(dir_ / "data")) << "the user's link was removed";
}

// Before: internal errors (exit 1) for each.
TEST_F(Hostile, ParityRefusesBadDumpsAndOptionsWithOneLine) {
  for (const char* f : {"config.json", "model.safetensors"}) fs::copy_file(kTinyDev / f, dir_ / f);
  TensorMap expected = io::read_safetensors((kTinyDev / "expected.safetensors").string());
  expected["R"] = Tensor::zeros(expected["R"].shape(), DType::i64);
  io::write_safetensors(path("expected.safetensors"), expected);
  auto one_error_line = [](const std::string& command, const std::string& message) {
    const auto r = run_command(command);
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("qarac-parity: error: " + message + "\n"), std::string::npos) << r.output;
  };
  one_error_line(kParity + " " + dir_.string(),
                 path("expected.safetensors") + ": tensor 'R' has dtype i64, expected a floating type");
  one_error_line(kParity + " " + kTinyDev.string() + " --dtype bf16",
                 "--dtype bf16 needs --device cuda (the CPU backend computes in f32 or f64)");
  one_error_line(kParity + " " + kTinyDev.string() + " --device cuda --dtype f64",
                 "--dtype f64 needs --device cpu (the CUDA backend computes in f32 or bf16)");
  one_error_line(kParity + " " + kTinyDev.string() + " --tolerance 1e-310",
                 "--tolerance must be a positive normal number, got 1e-310");
  // A dump whose mask marks no token (before: an internal error in the backward pass).
  expected = io::read_safetensors((kTinyDev / "expected.safetensors").string());
  expected["attention_mask"] = Tensor::zeros(expected["attention_mask"].shape(), expected["attention_mask"].dtype());
  io::write_safetensors(path("expected.safetensors"), expected);
  one_error_line(kParity + " " + dir_.string(),
                 path("expected.safetensors") + ": attention_mask marks no real token (input_ids i64[3, 12] cpu)");
  // Before: compared as a numeric failure (exit 1), or passed with the states of another shape,
  // or failed after printing part of the table.
  const TensorMap good = io::read_safetensors((kTinyDev / "expected.safetensors").string());
  expected = good;
  Tensor hole = expected["attention_mask"].to(DType::i64).clone();
  hole.data<int64_t>()[0] = 0;
  expected["attention_mask"] = hole;
  io::write_safetensors(path("expected.safetensors"), expected);
  one_error_line(kParity + " " + dir_.string(), path("expected.safetensors") +
                                                    ": attention_mask row 0 has a 1 at position 1 after a 0 "
                                                    "(padding must be trailing)");
  expected = good;
  const Shape states = expected["last_hidden_state"].shape();
  expected["last_hidden_state"] = expected["last_hidden_state"].reshape({states[0] * states[1], states[2]});
  io::write_safetensors(path("expected.safetensors"), expected);
  one_error_line(kParity + " " + dir_.string(), path("expected.safetensors") + ": last_hidden_state has shape [" +
                                                    std::to_string(states[0] * states[1]) + ", 32], expected [B, S, d] = [3, 12, 32]");
  expected = good;
  expected.erase("R");
  io::write_safetensors(path("expected.safetensors"), expected);
  one_error_line(kParity + " " + dir_.string(), path("expected.safetensors") + ": tensor 'R' is missing");
  EXPECT_EQ(run_command(kParity + " " + dir_.string()).output.find("max_abs_err"), std::string::npos)
      << "a table before the error";
}

// Before: undefined behaviour (a token or label range drawn from [3, 2] or [0, -1]), a negative
// FFN size, or an internal error (bf16 on the CPU backend).
TEST_F(Hostile, BenchRefusesSizesItCannotRunWithOneLine) {
  for (const auto& [options, message] : std::vector<std::pair<std::string, std::string>>{
           {"--vocab 3", "--vocab must be at least 4, got 3"},
           {"--workload classifier --labels 0", "--labels must be at least 1, got 0"},
           {"--ffn -5", "--ffn must be at least 0, got -5"},
           {"--warmup -1", "--warmup must be at least 0, got -1"},
           {"--heads 0", "--heads must be at least 1, got 0"},
           {"--vocab 4294967296", "--vocab must be at most 2147483647 (token ids are int32), got 4294967296"},
           {"--dtype bf16", "--dtype bf16 needs --device cuda (the benchmark computes in f32 on the CPU)"},
           {"--preset base --hidden 32", "--preset base sets --hidden: give one or the other"}}) {
    const auto r = run_command(kBench + " " + options);
    EXPECT_EQ(r.code, 2) << options << "\n" << r.output;
    EXPECT_NE(r.output.find("qarac-bench: error: " + message + "\n"), std::string::npos) << r.output;
  }
}

}  // namespace
