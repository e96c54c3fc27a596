// Writing onto a full file system (issue 12, item 1): a tiny tmpfs is mounted and filled by
// qarac-prep and by the core writers that checkpoints use (the checksummed HDF5 file, AtomicFile).
// Each must fail with one line naming the file, exit (or throw) cleanly, never crash, not even at
// exit, and leave no temporary file. Mounting needs root (or CAP_SYS_ADMIN): without it those
// tests skip, saying so. A file-size limit, which needs no mount, fails writes alike.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/hdf5_checksummed.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using namespace qarac;
using qarac::test_support::in_child;
using qarac::test_support::run_command;

namespace {

const std::string kPrep = QARAC_PREP_EXE;
const std::string kSample = QARAC_SAMPLE_DIR "/";

// A tmpfs of a few KiB mounted on a fresh folder, unmounted (and the folder removed) at the end.
class DiskFullTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qarac_disk_full_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Mounts a tmpfs of `size` ("64k") on the folder, emptying it; false (after GTEST_SKIP) when
  // this process may not mount.
  bool mount_tmpfs(const std::string& size) {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
    mounted_ = false;
    const std::string options = "size=" + size;
    if (::mount("tmpfs", dir_.c_str(), "tmpfs", 0, options.c_str()) != 0) {
      const int err = errno;
      skip_reason_ = std::strerror(err);
      if (err == EPERM || err == EACCES) return false;
      ADD_FAILURE() << "mount tmpfs on " << dir_ << ": " << std::strerror(err);
      return false;
    }
    mounted_ = true;
    return true;
  }

  // Every entry of the folder, recursively (temporary files must be gone).
  std::vector<std::string> leftovers() const {
    std::vector<std::string> names;
    for (const auto& e : fs::recursive_directory_iterator(dir_))
      if (!e.is_directory()) names.push_back(e.path().string());
    return names;
  }

  fs::path dir_;
  bool mounted_ = false;
  std::string skip_reason_;
};

#define MOUNT_OR_SKIP(size)                                                                    \
  if (!mount_tmpfs(size)) {                                                                    \
    if (HasFailure()) return;                                                                  \
    GTEST_SKIP() << "cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): " << skip_reason_;  \
  }

// One line on stderr, no line but it: the error names a file of the output folder and `cause`.
void expect_one_line_naming(const std::string& output, const std::string& folder,
                            const std::string& cause = "No space left on device") {
  std::vector<std::string> lines;
  size_t begin = 0;
  while (begin < output.size()) {
    const size_t end = std::min(output.find('\n', begin), output.size());
    const std::string line = output.substr(begin, end - begin);
    if (line.find(" info]") == std::string::npos) lines.push_back(line);
    begin = end + 1;
  }
  ASSERT_EQ(lines.size(), 1u) << output;
  EXPECT_EQ(lines[0].rfind("qarac-prep: error: " + folder, 0), 0u) << lines[0];
  EXPECT_NE(lines[0].find(cause), std::string::npos) << lines[0];
}

// qarac-prep filling the disk at every stage: creating a file, storing chunks (small chunks are
// stored while examples come, large ones at the end of each task's stream), closing, and the
// second task's file after the first fit.
TEST_F(DiskFullTest, PrepFailsWithOneLineAndLeavesNothing) {
  const std::string inputs = " --text " + kSample + "corpus_train.txt --wikiqa " + kSample +
                             "WikiQA-train.tsv --avicenna " + kSample + "Avicenna_Train.csv --snli " + kSample +
                             "snli_1.0_train.jsonl --compression 0";
  for (const char* size : {"8k", "40k", "160k", "400k"})
    for (const char* chunks : {"", " --chunk-tokens 256"}) {
      MOUNT_OR_SKIP(size);
      const std::string out = (dir_ / "out").string();
      const auto r = run_command(kPrep + " --tokenizer " + kSample + "tokenizer --out " + out + inputs + chunks);
      SCOPED_TRACE(std::string("tmpfs of ") + size + chunks);
      EXPECT_EQ(r.code, 2) << "a crash or another status: " << r.output;
      expect_one_line_naming(r.output, out + "/");
      EXPECT_EQ(leftovers(), std::vector<std::string>{}) << "temporary files were left";
    }
}

// A file-size limit (ulimit -f, as batch systems and shells set one) fails the write that would
// pass it: qarac-prep says so as it does a full disk, and leaves nothing. Before, SIGXFSZ killed
// it unsaid, leaving its temporary files. Creating a file, its first chunks, a later task's file;
// needs no mount, so it runs everywhere.
TEST_F(DiskFullTest, PrepPastAFileSizeLimitFailsWithOneLineAndLeavesNothing) {
  const std::string inputs = " --text " + kSample + "corpus_train.txt --wikiqa " + kSample +
                             "WikiQA-train.tsv --avicenna " + kSample + "Avicenna_Train.csv --snli " + kSample +
                             "snli_1.0_train.jsonl --compression 0";
  for (const char* blocks : {"1", "64", "2048"}) {  // of 512 bytes (/bin/sh's ulimit -f)
    const std::string out = (dir_ / "out").string();
    const auto r = run_command("ulimit -f " + std::string(blocks) + " && exec " + kPrep + " --tokenizer " + kSample +
                               "tokenizer --out " + out + inputs);
    SCOPED_TRACE(std::string("ulimit -f ") + blocks);
    EXPECT_EQ(r.code, 2) << "killed, or another status: " << r.output;
    expect_one_line_naming(r.output, out + "/", "File too large");
    EXPECT_EQ(leftovers(), std::vector<std::string>{}) << "temporary files were left";
  }
}

void expect_ok_one_line(const std::string& result, const std::string& names) {
  EXPECT_EQ(result.rfind("input error: ", 0), 0u) << result;
  EXPECT_EQ(result.find('\n'), std::string::npos) << result;
  EXPECT_NE(result.find(names), std::string::npos) << result;
  EXPECT_NE(result.find("No space left on device"), std::string::npos) << result;
}

// What a checkpoint part does (train/checkpoint.cpp): a checksummed HDF5 file written under an
// AtomicFile's temporary name, then committed. Tensors of 64 KiB fill a tmpfs of 8 to 160 KiB at
// the first dataset, at a later one, or only when the file is closed.
TEST_F(DiskFullTest, ChecksummedFileFailsWithOneLineAndLeavesNothing) {
  const H5FileKind kind{"qarac-test", 1, "test file"};
  for (const char* size : {"8k", "100k", "160k"}) {
    MOUNT_OR_SKIP(size);
    SCOPED_TRACE(std::string("tmpfs of ") + size);
    const std::string path = (dir_ / "part.h5").string();
    expect_ok_one_line(in_child([&] {
                         AtomicFile file(path, AtomicFile::by_path);
                         {
                           ChecksummedH5Writer w(file.temp_path(), kind);
                           for (int i = 0; i < 4; ++i)
                             w.write("parameters/w" + std::to_string(i), Tensor::zeros({128, 128}, DType::f32));
                           w.finish();
                         }
                         file.commit();
                         return std::string("no exception");
                       }),
                       path + kTempFileMarker);
    EXPECT_EQ(leftovers(), std::vector<std::string>{}) << "temporary files were left";
  }
}

// AtomicFile's own writes (safetensors, config.json of an export): buffered bytes fail at the
// write, the flush or the fsync; each names the file.
TEST_F(DiskFullTest, AtomicFileFailsWithOneLineAndLeavesNothing) {
  for (const size_t bytes : {size_t{1} << 12, size_t{1} << 20}) {
    MOUNT_OR_SKIP("16k");
    const std::string path = (dir_ / "model.safetensors").string();
    const std::vector<char> data(bytes, 'x');
    expect_ok_one_line(in_child([&] {
                         AtomicFile file(path);
                         for (int i = 0; i < 8; ++i) file.write(data.data(), data.size());
                         file.commit();
                         return std::string("no exception");
                       }),
                       path);
    EXPECT_EQ(leftovers(), std::vector<std::string>{}) << "temporary files were left";
  }
}

}  // namespace
