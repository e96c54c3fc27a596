// A GoogleTest fixture for tests that run qarac-train as a user would: a random tiny RoBERTa
// base and the sample data prepared by qarac-prep, made once per suite, and a small valid
// configuration for every key a test leaves out. The test target defines QARAC_TRAIN_EXE,
// QARAC_PREP_EXE and QARAC_SAMPLE_DIR.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "support/test_support.h"
#include "support/training_fixtures.h"

namespace qarac::test_support {

inline const std::string kSample = std::string(QARAC_SAMPLE_DIR) + "/";

class TrainCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new TempDir("cli");
    write_tiny_base(root_->path / "base", kSample + "tokenizer");
    const CliResult prep = prepare_sample_data(QARAC_PREP_EXE, kSample, root_->path / "data");
    ASSERT_EQ(prep.code, 0) << prep.output;
  }
  static void TearDownTestSuite() {
    delete root_;
    root_ = nullptr;
  }

  static std::filesystem::path root() { return root_->path; }
  // qarac-train with `args` and a small valid configuration for every key `args` leaves out (a
  // key may appear once), writing to `output`; `env` goes before the command (VAR=value ...).
  static CliResult train(const std::filesystem::path& output, const std::string& args, const std::string& env = "") {
    return run_command(train_command(output, args, env));
  }
  // The shell command train() runs.
  static std::string train_command(const std::filesystem::path& output, const std::string& args,
                                   const std::string& env = "") {
    const std::vector<std::pair<std::string, std::string>> defaults = {
        {"output", output.string()}, {"model.base", (root() / "base").string()},
        {"data.dir", (root() / "data").string()}, {"task.ed.batch", "8"},
        {"task.qa.batch", "8"}, {"task.rs.batch", "8"}, {"task.cs.batch", "8"},
        {"optimizer.warmup", "1"}, {"optimizer.lr", "1e-3"}, {"train.log_every", "1"}};
    std::string command = env + " " + std::string(QARAC_TRAIN_EXE) + " " + args;
    for (const auto& [key, value] : defaults)
      if (args.find("--" + key + " ") == std::string::npos && args.find("--" + key + "=") == std::string::npos)
        command += " --" + key + " " + value;
    return command;
  }
  // Exit 2, exactly one line naming every one of `parts`, and no output directory.
  static void expect_usage_error(const std::string& args, std::initializer_list<std::string> parts) {
    SCOPED_TRACE(args);
    const std::filesystem::path out = root() / "never";
    const CliResult r = train(out, args);
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_EQ(r.output.find("qarac-train: error: "), 0u) << r.output;
    EXPECT_EQ(r.output.find('\n'), r.output.size() - 1) << r.output;  // exactly one line
    for (const std::string& p : parts) EXPECT_NE(r.output.find(p), std::string::npos) << p << ": " << r.output;
    EXPECT_FALSE(std::filesystem::exists(out)) << "the output directory was created";
  }

  inline static TempDir* root_ = nullptr;
};

}  // namespace qarac::test_support
