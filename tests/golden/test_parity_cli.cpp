// qarac-parity as a user meets it: a reference dump that lacks a tensor makes it exit 1 and name
// the tensor; a directory that is not a dump makes it exit 2 with one line naming the file.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include "support/test_support.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;

namespace {

qarac::test_support::CliResult run_parity(const std::string& args) {
  return qarac::test_support::run_command(std::string(QARAC_PARITY_BIN) + " " + args);
}

fs::path scratch_dir(const char* name) {
  const fs::path dir = fs::temp_directory_path() / (std::string("qarac-parity-") + name + "-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

const fs::path kTinyDev = fs::path(QARAC_GOLDEN_DIR) / "tiny_dev";

}  // namespace

TEST(ParityCli, MissingReferenceTensorFails) {
  const fs::path dir = scratch_dir("missing");
  fs::copy_file(kTinyDev / "config.json", dir / "config.json");
  fs::copy_file(kTinyDev / "model.safetensors", dir / "model.safetensors");
  qarac::TensorMap expected = qarac::io::read_safetensors((kTinyDev / "expected.safetensors").string());
  ASSERT_EQ(expected.erase("grad.encoder.layer.1.output.LayerNorm.bias"), 1u);
  qarac::io::write_safetensors((dir / "expected.safetensors").string(), expected);

  const qarac::test_support::CliResult r = run_parity(dir.string());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("grad.encoder.layer.1.output.LayerNorm.bias"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("MISSING"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("FAIL: 1 failed"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

// A NaN in a comparison is a failure, not an error of 0 (std::max would drop it). The weights
// are finite (non-finite ones are refused on loading) but one layer's are near float's largest:
// its f32 sums overflow, and the LayerNorm after it makes NaN of the infinities.
TEST(ParityCli, ANonFiniteResultFailsTheComparison) {
  const fs::path dir = scratch_dir("nan");
  fs::copy_file(kTinyDev / "config.json", dir / "config.json");
  fs::copy_file(kTinyDev / "expected.safetensors", dir / "expected.safetensors");
  qarac::TensorMap weights = qarac::io::read_safetensors((kTinyDev / "model.safetensors").string());
  qarac::Tensor& w = weights.at("roberta.encoder.layer.1.output.dense.weight");
  for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = 3e38f;
  qarac::io::write_safetensors((dir / "model.safetensors").string(), weights);

  const qarac::test_support::CliResult r = run_parity(dir.string() + " --dtype f32");
  EXPECT_EQ(r.code, 1) << r.output;
  // The output states are NaN wherever they are not finite: their row must fail.
  const size_t row = r.output.find("\nlast_hidden_state ");
  ASSERT_NE(row, std::string::npos) << r.output;
  const std::string line = r.output.substr(row + 1, r.output.find('\n', row + 1) - row - 1);
  EXPECT_NE(line.find("nan"), std::string::npos) << line;
  EXPECT_NE(line.find("FAIL"), std::string::npos) << line;
  fs::remove_all(dir);
}

// A NaN in the reference is a damaged dump: one line naming the file and the tensor, exit 2, not
// a failure of the backend (before: "FAIL: 1 failed").
TEST(ParityCli, ANanInTheReferenceIsAnInputError) {
  const fs::path dir = scratch_dir("nan-reference");
  fs::copy_file(kTinyDev / "config.json", dir / "config.json");
  fs::copy_file(kTinyDev / "model.safetensors", dir / "model.safetensors");
  qarac::TensorMap expected = qarac::io::read_safetensors((kTinyDev / "expected.safetensors").string());
  expected.at("last_hidden_state").data<double>()[5] = std::nan("");
  qarac::io::write_safetensors((dir / "expected.safetensors").string(), expected);

  const qarac::test_support::CliResult r = run_parity(dir.string() + " --dtype f64 --tolerance 1e-10");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("expected.safetensors: tensor 'last_hidden_state' holds a non-finite value"),
            std::string::npos) << r.output;
  EXPECT_EQ(r.output.find('\n'), r.output.size() - 1) << r.output;  // exactly one line
  fs::remove_all(dir);
}

TEST(ParityCli, NotADumpIsAOneLineInputError) {
  const fs::path dir = scratch_dir("empty");
  const qarac::test_support::CliResult r = run_parity(dir.string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("qarac-parity: error:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("config.json"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find('\n'), r.output.size() - 1) << r.output;  // exactly one line
  fs::remove_all(dir);
}

TEST(ParityCli, UnknownOptionIsAUsageError) {
  const qarac::test_support::CliResult r = run_parity("--no-such-option");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("see --help"), std::string::npos) << r.output;
}
