// Training checkpoints and Hugging Face export: bit-exact round trips of the whole state (a
// classifier, bf16 compute copies, the QARAC models), bit-exact resume of a training run with
// dropout (AdamW and NAdam), keep-last-N, damaged files (truncated, a flipped byte anywhere,
// unfinished, not HDF5) skipped by find_latest_checkpoint with a warning and refused by
// load_checkpoint with one line, writers killed at random moments, and the export layout of the
// QARAC models read back through io::read_hf_roberta.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "support/test_support.h"
#include "io/export_files.h"
#include "io/hf_checkpoint.h"
#include "io/hf_export.h"
#include "model/init.h"
#include "model/qarac.h"
#include "train/checkpoint.h"
#include "train/sequence_classifier.h"

using namespace qarac;
using qarac::test_support::expect_input_error;
using qarac::test_support::flip_byte;
using qarac::test_support::h5_dataset_offset;
namespace fs = std::filesystem;

namespace {

// Same shape, dtype and bytes.
::testing::AssertionResult same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype())
    return ::testing::AssertionFailure() << a.str() << " vs " << b.str();
  const Tensor x = a.to(Device::cpu()), y = b.to(Device::cpu());
  if (x.nbytes() != 0 && std::memcmp(x.raw(), y.raw(), x.nbytes()) != 0)  // an empty tensor has no buffer
    return ::testing::AssertionFailure() << a.str() << ": the bytes differ";
  return ::testing::AssertionSuccess();
}

// A second moment to save: the squares of `x` (a checkpoint refuses negative second moments,
// which are means of squares).
Tensor squares(const Tensor& x) {
  std::vector<double> v = x.to(DType::f64).to_vector<double>();
  for (double& e : v) e *= e;
  return Tensor::from_vector(v, x.shape()).to(x.dtype());
}

void expect_same_state(const Optimizer& a, const Optimizer& b) {
  const ParameterList& pa = a.parameters();
  const ParameterList& pb = b.parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_TRUE(same_bits(pa[i]->master, pb[i]->master)) << pa[i]->name;
    EXPECT_TRUE(same_bits(pa[i]->value, pb[i]->value)) << pa[i]->name;
    EXPECT_TRUE(same_bits(a.first_moments()[i], b.first_moments()[i])) << pa[i]->name;
    EXPECT_TRUE(same_bits(a.second_moments()[i], b.second_moments()[i])) << pa[i]->name;
  }
  EXPECT_EQ(a.steps(), b.steps());
}

RobertaConfig tiny_config() {
  RobertaConfig c;
  c.vocab_size = 40;
  c.hidden_size = 16;
  c.num_layers = 2;
  c.num_heads = 2;
  c.intermediate_size = 32;
  c.max_position_embeddings = 20;
  c.hidden_dropout = 0.1;
  c.attention_dropout = 0.1;
  return c;
}

// A classifier and its optimizer, initialised from `init_seed`.
struct TrainingRun {
  SequenceClassifier model;
  Optimizer optimizer;

  TrainingRun(uint64_t init_seed, OptimizerKind kind = OptimizerKind::adamw, int64_t labels = 3)
      : model(tiny_config(), labels, DType::f32, Device::cpu()),
        optimizer(model.parameters(), config(kind)) {
    init_normal(model.parameters(), 0.02, init_seed);
  }

  static OptimizerConfig config(OptimizerKind kind) {
    OptimizerConfig c;
    c.kind = kind;
    return c;
  }

  // Steps [begin, end) of a training run with dropout: the data, the dropout masks and the
  // learning rate are functions of the step and the seed only, as in qarac-train.
  void train(int64_t begin, int64_t end, uint64_t seed) {
    for (int64_t step = begin; step < end; ++step) {
      std::mt19937 gen(static_cast<uint32_t>(1000 + step));
      std::uniform_int_distribution<int32_t> token(3, 39), length(2, 9), label(0, 2);
      std::vector<std::vector<int32_t>> seqs(3);
      std::vector<int32_t> labels;
      for (auto& s : seqs) {
        s.resize(static_cast<size_t>(length(gen)));
        for (int32_t& t : s) t = token(gen);
        labels.push_back(label(gen));
      }
      const TokenBatch batch = TokenBatch::from_sequences(seqs, 1, Device::cpu());
      ForwardOptions options;
      options.training = true;
      options.seed = seed;
      options.step = static_cast<uint64_t>(step);
      zero_grads(model.parameters());
      model.forward_backward(batch, Tensor::from_vector(labels, {3}), options);
      optimizer.step(2e-3 / (1.0 + 0.1 * static_cast<double>(step)), 1.0);
    }
  }
};

TrainingState state_at(int64_t step) {
  TrainingState s;
  s.step = step;
  s.seed = 0xF00DCAFEDEADBEEFull;  // above 2^63: the seed is unsigned
  s.cursor.step = step;
  // Checksums above 2^63: stored as the bits of an i64.
  s.cursor.tasks = {{data::Task::consistency, 2, 17, 0xFEEDFACECAFEBEEFull}, {data::Task::encode_decode, 0, 3, 42}};
  s.config = "[train]\nlr = 2e-3\nname = \"résumé\"\n\n[model]\nshare_encoder_base = false\n";
  return s;
}

// Whether a name (without folder) is a checkpoint's, not a temporary folder's.
bool is_checkpoint_name(const std::string& name) {
  return name.rfind("step-", 0) == 0 && name.size() == 15 && name.find('.') == std::string::npos;
}

// The file of the one part save_checkpoint writes by default.
std::string part_file(const std::string& checkpoint) { return checkpoint + "/model.h5"; }

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::replace(name.begin(), name.end(), '/', '_');  // parameterised: "ResumeIsBitExact/adamw"
    dir_ = fs::temp_directory_path() /
           ("qarac_test_ckpt_" + std::to_string(::getpid()) + "_" + name);
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string dir() const { return dir_.string(); }
  std::set<std::string> entries() const {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.insert(e.path().filename().string());
    return names;
  }

  fs::path dir_;
};

// ---- Round trips and resume --------------------------------------------------------------------

TEST_F(CheckpointTest, RoundTripIsBitExact) {
  TrainingRun a(1);
  a.train(0, 2, 42);  // moments and step away from their initial values
  const TrainingState saved = state_at(2);
  const std::string path = save_checkpoint(dir(), a.optimizer, saved, 3);
  EXPECT_EQ(path, checkpoint_path(dir(), 2));
  EXPECT_EQ(fs::path(path).filename().string(), "step-0000000002");
  EXPECT_EQ(entries(), std::set<std::string>{"step-0000000002"}) << "a temporary folder was left";
  EXPECT_TRUE(fs::is_regular_file(part_file(path)));

  TrainingRun b(2);                          // other weights: the load must overwrite every one
  for (Parameter* p : b.model.parameters())  // gradients left over from before the load
    p->grad.copy_(Tensor::from_vector(
        std::vector<float>(static_cast<size_t>(p->grad.numel()), 1.0f), p->grad.shape()));
  const TrainingState loaded = load_checkpoint(path, b.optimizer);
  expect_same_state(a.optimizer, b.optimizer);
  EXPECT_EQ(b.optimizer.steps(), 2);
  EXPECT_EQ(loaded.step, saved.step);
  EXPECT_EQ(loaded.seed, saved.seed);
  EXPECT_EQ(loaded.config, saved.config);
  EXPECT_EQ(loaded.cursor.step, saved.cursor.step);
  ASSERT_EQ(loaded.cursor.tasks.size(), saved.cursor.tasks.size());
  for (size_t i = 0; i < saved.cursor.tasks.size(); ++i) {
    const data::TaskCursor& x = saved.cursor.tasks[i];
    const data::TaskCursor& y = loaded.cursor.tasks[i];
    EXPECT_EQ(x.task, y.task);
    EXPECT_EQ(x.epoch, y.epoch);
    EXPECT_EQ(x.position, y.position);
    EXPECT_EQ(x.stream_checksum, y.stream_checksum);
  }
  for (const Parameter* p : b.model.parameters())
    for (float g : p->grad.to_vector<float>())
      ASSERT_EQ(g, 0.0f) << p->name << ": gradients not zeroed";
}

TEST_F(CheckpointTest, EmptyConfigAndCursorRoundTrip) {
  TrainingRun a(1);
  TrainingState saved;
  saved.step = 0;
  const std::string path = save_checkpoint(dir(), a.optimizer, saved, 1);
  TrainingRun b(2);
  const TrainingState loaded = load_checkpoint(path, b.optimizer);
  expect_same_state(a.optimizer, b.optimizer);
  EXPECT_EQ(loaded.config, "");
  EXPECT_TRUE(loaded.cursor.tasks.empty());
}

// A checkpoint in parts (the trainer's model groups, each written by one holder): any process
// holding some of them loads just those, whatever held them when it was written; a part missing
// makes the whole checkpoint invalid.
TEST_F(CheckpointTest, PartsLoadIntoAnyHolderAndAreAllRequired) {
  TrainingRun a(1);
  a.train(0, 2, 42);
  const ParameterList& all = a.optimizer.parameters();
  const size_t half = all.size() / 2;
  const auto middle = all.begin() + static_cast<std::ptrdiff_t>(half);
  const std::vector<CheckpointPart> parts = {{"first", ParameterList(all.begin(), middle)},
                                             {"second", ParameterList(middle, all.end())}};
  const std::string path = save_checkpoint(dir(), a.optimizer, state_at(2), 2, parts);
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(path)) files.insert(e.path().filename().string());
  EXPECT_EQ(files, (std::set<std::string>{"first.h5", "second.h5"}));

  // A process holding only the second part's parameters.
  TrainingRun b(2);
  const ParameterList b_all = b.model.parameters();
  const ParameterList held(b_all.begin() + static_cast<std::ptrdiff_t>(half), b_all.end());
  Optimizer second(held, TrainingRun::config(OptimizerKind::adamw));
  const TrainingState state = load_checkpoint(path, second, {}, {{"second", held}});
  EXPECT_EQ(state.step, 2);
  EXPECT_EQ(second.steps(), 2);
  for (size_t i = 0; i < held.size(); ++i) {
    EXPECT_TRUE(same_bits(held[i]->master, all[half + i]->master)) << held[i]->name;
    EXPECT_TRUE(same_bits(second.first_moments()[i], a.optimizer.first_moments()[half + i])) << held[i]->name;
    EXPECT_TRUE(same_bits(second.second_moments()[i], a.optimizer.second_moments()[half + i])) << held[i]->name;
  }
  // The first part's parameters are not the second part's.
  expect_input_error([&] { load_checkpoint(path, second, {}, {{"first", held}}); }, {"first.h5", "lacks parameter"});

  fs::remove(fs::path(path) / "first.h5");
  expect_input_error([&] { verify_checkpoint(path); }, {"first.h5", "part 'first' is missing"});
  // The only checkpoint refused: the run stops rather than start over (and delete it in rotation).
  ::testing::internal::CaptureStderr();
  expect_input_error([&] { find_latest_checkpoint(dir()); },
                     {dir() + ": none of its 1 checkpoints can be resumed", "the run stops"});
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("part 'first' is missing"), std::string::npos);
}

// Mixed precision: the compute copy (bf16) is restored as the master rounded to it, the bits
// the optimizer's update writes.
TEST_F(CheckpointTest, Bf16ComputeCopyIsRestored) {
  auto make = [](std::vector<Parameter>& storage) {
    storage.resize(2);
    storage[0].allocate("w", {5, 7}, DType::bf16, Device::cpu());
    storage[1].allocate("b", {7}, DType::bf16, Device::cpu());
    ParameterList list;
    for (Parameter& p : storage) list.push_back(&p);
    return list;
  };
  std::vector<Parameter> a_params, b_params;
  const ParameterList a_list = make(a_params), b_list = make(b_params);
  std::mt19937 gen(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (Parameter* p : a_list) {
    std::vector<float> values(static_cast<size_t>(p->value.numel()));
    for (float& x : values) x = normal(gen);
    p->assign(Tensor::from_vector(values, p->value.shape()));
  }
  ASSERT_NE(a_list[0]->master.raw(), a_list[0]->value.raw());
  Optimizer a(a_list, TrainingRun::config(OptimizerKind::adamw));
  a.first_moments()[0].copy_(a_list[0]->master);
  a.second_moments()[1].copy_(squares(a_list[1]->master));
  a.set_steps(7);
  const std::string path = save_checkpoint(dir(), a, state_at(7), 1);

  Optimizer b(b_list, TrainingRun::config(OptimizerKind::adamw));
  load_checkpoint(path, b);
  expect_same_state(a, b);
}

class ResumeTest : public CheckpointTest, public ::testing::WithParamInterface<OptimizerKind> {};

// N steps straight and N/2 + save + fresh objects + load + N/2 end in the same bits.
TEST_P(ResumeTest, ResumeIsBitExact) {
  constexpr int64_t kSteps = 6;
  constexpr uint64_t kSeed = 99;
  TrainingRun straight(1, GetParam());
  straight.train(0, kSteps, kSeed);

  std::string path;
  {
    TrainingRun first(1, GetParam());
    first.train(0, kSteps / 2, kSeed);
    TrainingState state = state_at(kSteps / 2);
    state.seed = kSeed;
    path = save_checkpoint(dir(), first.optimizer, state, 2);
  }
  TrainingRun resumed(7, GetParam());  // other initial weights, fresh moments
  const TrainingState state = load_checkpoint(path, resumed.optimizer);
  ASSERT_EQ(state.step, kSteps / 2);
  resumed.train(state.step, kSteps, state.seed);
  expect_same_state(straight.optimizer, resumed.optimizer);

  // The comparison means something: training moved the weights after the resume point.
  TrainingRun half(1, GetParam());
  half.train(0, kSteps / 2, kSeed);
  EXPECT_FALSE(
      same_bits(half.optimizer.parameters()[0]->master, resumed.optimizer.parameters()[0]->master));
}

INSTANTIATE_TEST_SUITE_P(Optimizers, ResumeTest,
                         ::testing::Values(OptimizerKind::adamw, OptimizerKind::nadam),
                         [](const auto& p) { return std::string(optimizer_name(p.param)); });

// ---- The folder: keep-last-N, temporary files, latest ------------------------------------------

TEST_F(CheckpointTest, KeepsTheLastN) {
  TrainingRun a(1);
  for (int64_t step = 1; step <= 5; ++step) save_checkpoint(dir(), a.optimizer, state_at(step), 2);
  EXPECT_EQ(entries(),
            (std::set<std::string>{"step-0000000004", "step-0000000005"}));
  EXPECT_EQ(find_latest_checkpoint(dir()), checkpoint_path(dir(), 5));

  // A later step than the one written (another run's) is not this write's to delete.
  save_checkpoint(dir(), a.optimizer, state_at(9), 0);
  save_checkpoint(dir(), a.optimizer, state_at(6), 1);
  EXPECT_EQ(entries(),
            (std::set<std::string>{"step-0000000006", "step-0000000009"}));
  EXPECT_EQ(find_latest_checkpoint(dir()), checkpoint_path(dir(), 9));

  // 0 keeps everything.
  for (int64_t step = 10; step <= 12; ++step)
    save_checkpoint(dir(), a.optimizer, state_at(step), 0);
  EXPECT_EQ(entries().size(), 5u);
}

// A checkpoint that failed for lack of space says what checkpoint.keep asks of the disk (room for
// keep + 1 while the newest is written, the oldest removed only then), the newest's size and the
// room free; any other failure is left as it is. Before, the line said only "No space left on
// device", though keep 1 needed room for two checkpoints.
TEST_F(CheckpointTest, AFullDiskSaysWhatCheckpointKeepNeeds) {
  const std::string full = dir() + "/step-0000000006.tmp/decoder.h5: file write failed: " + std::strerror(ENOSPC);
  const std::string needs = "needs room for 3 checkpoints while the newest is written (the oldest is removed only "
                            "once the newest is complete): ";
  const auto starts = [](const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; };
  // No checkpoint yet: no size to give.
  const std::string first = with_space_needed(full, dir(), 2);
  EXPECT_TRUE(starts(first, full + "; checkpoint.keep 2 " + needs + dir() + " has ")) << first;
  EXPECT_EQ(first.substr(first.size() - 5), " free") << first;
  const auto file_of = [](const std::string& path, uintmax_t bytes) {
    std::ofstream(path).close();
    fs::resize_file(path, bytes);
  };
  for (int64_t step : {2, 4}) fs::create_directories(checkpoint_path(dir(), step));
  fs::create_directories(checkpoint_path(dir(), 6) + ".tmp");
  file_of(checkpoint_path(dir(), 2) + "/model.h5", 5u << 20);
  file_of(checkpoint_path(dir(), 4) + "/model.h5", 3u << 20);
  file_of(checkpoint_path(dir(), 4) + "/decoder.h5", 1u << 19);
  file_of(checkpoint_path(dir(), 6) + ".tmp/decoder.h5", 1u << 20);
  // The newest complete one's size.
  const std::string noted = with_space_needed(full, dir(), 2);
  EXPECT_TRUE(starts(noted, full + "; checkpoint.keep 2 " + needs + "one takes 3.5 MiB, and " + dir() + " has "))
      << noted;
  const std::string quota = dir() + "/step-0000000006.tmp/model.h5: " + std::strerror(EDQUOT);
  const std::string all = with_space_needed(quota, dir(), 0);
  EXPECT_TRUE(starts(all, quota + "; checkpoint.keep 0 keeps every checkpoint: one takes 3.5 MiB, and ")) << all;
  const std::string other = dir() + "/step-0000000006.tmp/model.h5: " + std::strerror(EFBIG);
  EXPECT_EQ(with_space_needed(other, dir(), 1), other);
}

// A checkpoint folder that cannot be deleted (here a file made immutable; on a cluster another
// user's file or a snapshot) is said once, for what it is. Before: a warning at every later
// checkpoint, which called a complete checkpoint being deleted "unfinished".
TEST_F(CheckpointTest, AFolderThatCannotBeRemovedIsSaidOnce) {
  TrainingRun a(1);
  save_checkpoint(dir(), a.optimizer, state_at(1), 1);
  const std::string stuck = part_file(checkpoint_path(dir(), 1));
  if (std::system(("chattr +i '" + stuck + "' 2>/dev/null").c_str()) != 0)
    GTEST_SKIP() << "chattr +i is not available here (it makes a file that even root cannot delete)";
  ::testing::internal::CaptureStderr();
  for (int64_t step = 2; step <= 5; ++step) save_checkpoint(dir(), a.optimizer, state_at(step), 1);
  const std::string said = ::testing::internal::GetCapturedStderr();
  const std::string moved = checkpoint_path(dir(), 1) + ".del/" + fs::path(stuck).filename().string();
  EXPECT_EQ(std::system(("chattr -i '" + moved + "'").c_str()), 0);
  size_t count = 0;
  for (size_t at = said.find("cannot remove"); at != std::string::npos; at = said.find("cannot remove", at + 1)) ++count;
  EXPECT_EQ(count, 1u) << said;
  EXPECT_NE(said.find("cannot remove old checkpoint " + checkpoint_path(dir(), 1) + ".del: "),
            std::string::npos)
      << said;
  EXPECT_EQ(said.find("unfinished"), std::string::npos) << said;
}

TEST_F(CheckpointTest, UnfinishedWritesAreIgnoredAndCleanedUp) {
  TrainingRun a(1);
  const std::string stale = checkpoint_path(dir(), 3) + ".tmp";
  const std::string deleting = checkpoint_path(dir(), 1) + ".del";
  const std::string ahead = checkpoint_path(dir(), 9) + ".tmp";
  for (const std::string& folder : {stale, deleting, ahead}) {
    fs::create_directories(folder);
    std::ofstream(folder + "/model.h5") << "half a checkpoint";
  }
  std::ofstream(dir_ / "notes.txt") << "not a checkpoint";
  EXPECT_EQ(find_latest_checkpoint(dir()), std::nullopt);
  EXPECT_EQ(find_latest_checkpoint((dir_ / "missing").string()), std::nullopt);

  save_checkpoint(dir(), a.optimizer, state_at(5), 2);
  EXPECT_FALSE(fs::exists(stale)) << "the temporary folder of a write that died stays";
  EXPECT_FALSE(fs::exists(deleting)) << "the folder of a deletion that died stays";
  EXPECT_TRUE(fs::exists(ahead));
  EXPECT_TRUE(fs::exists(dir_ / "notes.txt"));
  EXPECT_EQ(find_latest_checkpoint(dir()), checkpoint_path(dir(), 5));
}

// ---- Damaged files
// -------------------------------------------------------------------------------

// What a write that died before its file was sealed leaves: the user block as HDF5 made it.
void unseal(const std::string& path) {
  std::fstream(path, std::ios::in | std::ios::out | std::ios::binary) << std::string(512, '\0');
}

// Before the seal (core/hdf5_checksummed.h), one flipped bit in the metadata at the end of a part
// file crashed HDF5 inside H5Lvisit (SIGSEGV): --resume died without naming the file. Each such
// flip is now a refusal naming it.
TEST_F(CheckpointTest, DamagedMetadataIsRefusedNotACrash) {
  TrainingRun a(1);
  a.train(0, 1, 5);
  save_checkpoint(dir(), a.optimizer, state_at(1), 0);
  const std::string path = checkpoint_path(dir(), 1), file = part_file(path);
  const std::string pristine = (dir_ / "pristine.h5").string();
  fs::copy_file(file, pristine);
  const auto size = static_cast<int64_t>(fs::file_size(file));
  for (int64_t back = 40; back <= 3000 && back < size - 512; back += 37) {
    fs::copy_file(pristine, file, fs::copy_options::overwrite_existing);
    flip_byte(file, static_cast<uint64_t>(size - back));
    expect_input_error([&] { verify_checkpoint(path); }, {file, "corrupt"});
  }
}

TEST_F(CheckpointTest, DamagedFilesAreSkippedAndRefused) {
  TrainingRun a(1);
  a.train(0, 1, 5);
  for (int64_t step = 1; step <= 7; ++step) save_checkpoint(dir(), a.optimizer, state_at(step), 0);
  const std::string weight = "parameters/" + a.optimizer.parameters()[3]->name;
  struct Damage {
    int64_t step;
    std::vector<std::string> why;  // words of the message
  };
  const std::vector<Damage> damages = {
      {7, {"truncated"}},
      {6, {"checksum mismatch", "corrupt"}},  // a parameter's byte
      {5, {"checksum mismatch", "corrupt"}},  // the config text's byte
      {4, {"incomplete", "not sealed"}},
      {3, {"not an HDF5 file"}},
      {2, {"not an HDF5 file"}},  // empty
  };
  const auto file = [&](int64_t step) { return part_file(checkpoint_path(dir(), step)); };
  fs::resize_file(file(7), fs::file_size(file(7)) - 100);
  flip_byte(file(6), h5_dataset_offset(file(6), weight.c_str()) + 5);
  flip_byte(file(5), h5_dataset_offset(file(5), "config") + 3);
  unseal(file(4));
  std::ofstream(file(3)) << "[train]\nthis is an INI file, not a checkpoint\n";
  std::ofstream(file(2)).close();

  ::testing::internal::CaptureStderr();
  const std::optional<std::string> latest = find_latest_checkpoint(dir());
  const std::string warnings = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(latest, checkpoint_path(dir(), 1));
  for (const Damage& d : damages) {
    const std::string path = checkpoint_path(dir(), d.step);
    EXPECT_NE(warnings.find("skipping checkpoint " + path), std::string::npos) << warnings;
    std::vector<std::string> parts = d.why;
    parts.push_back(path);
    for (const std::string& why : d.why)
      EXPECT_NE(warnings.find(why), std::string::npos) << "'" << why << "' not in: " << warnings;
    expect_input_error([&] { verify_checkpoint(path); }, parts);
    TrainingRun b(2);
    expect_input_error([&] { load_checkpoint(path, b.optimizer); }, parts);
    // A refused load leaves the optimizer as it was.
    TrainingRun fresh(2);
    expect_same_state(fresh.optimizer, b.optimizer);
  }
  EXPECT_EQ(std::count(warnings.begin(), warnings.end(), '\n'), static_cast<long>(damages.size()));
}

// Any truncation, from the superblock to the last byte, is refused.
TEST_F(CheckpointTest, EveryTruncationIsRefused) {
  TrainingRun a(1);
  const std::string path = part_file(save_checkpoint(dir(), a.optimizer, state_at(1), 1));
  const std::string copy = part_file((dir_ / "copy").string());
  fs::create_directories(dir_ / "copy");
  const uint64_t size = fs::file_size(path);
  for (const uint64_t keep :
       {uint64_t{0}, uint64_t{7}, uint64_t{100}, size / 3, size / 2, size - 8, size - 1}) {
    fs::copy_file(path, copy, fs::copy_options::overwrite_existing);
    fs::resize_file(copy, keep);
    expect_input_error([&] { verify_checkpoint((dir_ / "copy").string()); }, {copy});
  }
}

// A byte flipped anywhere in a file, data or HDF5 metadata, is refused or lands in bytes nothing
// reads (unused space): a load never returns a state that differs from the one saved. Every
// third byte of a small checkpoint (about 9 KB; every byte passes too, in four times the time).
TEST_F(CheckpointTest, AnyFlippedByteIsRefusedOrHarmless) {
  auto make = [](std::vector<Parameter>& storage) {
    storage.resize(3);
    ParameterList list;
    for (size_t i = 0; i < storage.size(); ++i) {
      storage[i].allocate("layer." + std::to_string(i) + ".weight", {7, 5}, DType::f32,
                          Device::cpu());
      list.push_back(&storage[i]);
    }
    return list;
  };
  std::vector<Parameter> saved_params;
  const ParameterList saved_list = make(saved_params);
  for (size_t i = 0; i < saved_params.size(); ++i)
    for (int64_t k = 0; k < 35; ++k)
      saved_params[i].master.data<float>()[k] =
          0.1f * static_cast<float>(k) + static_cast<float>(i);
  Optimizer saved(saved_list, TrainingRun::config(OptimizerKind::adamw));
  saved.first_moments()[1].copy_(saved_params[2].master);
  saved.set_steps(4);
  const TrainingState state = state_at(4);
  const std::string path = part_file(save_checkpoint(dir(), saved, state, 1));
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), {});
  const std::string damaged_folder = (dir_ / "damaged").string(), damaged = part_file(damaged_folder);
  fs::create_directories(damaged_folder);

  int refused = 0;
  for (size_t pos = 0; pos < bytes.size(); pos += 3) {
    std::string copy = bytes;
    copy[pos] = static_cast<char>(copy[pos] ^ 0x04);
    std::ofstream(damaged, std::ios::binary)
        .write(copy.data(), static_cast<std::streamsize>(copy.size()));
    std::vector<Parameter> params;
    Optimizer loaded(make(params), TrainingRun::config(OptimizerKind::adamw));
    try {
      const TrainingState got = load_checkpoint(damaged_folder, loaded);
      expect_same_state(saved, loaded);
      EXPECT_EQ(got.config, state.config) << "byte " << pos;
      EXPECT_EQ(got.seed, state.seed) << "byte " << pos;
      EXPECT_EQ(got.cursor.tasks[0].position, state.cursor.tasks[0].position) << "byte " << pos;
      if (::testing::Test::HasFailure()) FAIL() << "byte " << pos << " changed the state silently";
    } catch (const InputError& e) {
      ++refused;
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  }
  EXPECT_GT(refused, static_cast<int>(bytes.size() / 3 / 2)) << "most bytes are read";
}

TEST_F(CheckpointTest, LoadRefusesAnotherModel) {
  TrainingRun a(1);
  const std::string path = save_checkpoint(dir(), a.optimizer, state_at(1), 1);
  auto refuses = [&](Optimizer& optimizer, const std::vector<std::string>& parts,
                     const ConfigCheck& check = {}) {
    // Snapshot, refused load, nothing changed.
    std::vector<Tensor> before;
    for (const Parameter* p : optimizer.parameters()) before.push_back(p->master.clone());
    std::vector<std::string> all = parts;
    all.push_back(path);
    expect_input_error([&] { load_checkpoint(path, optimizer, check); }, all);
    for (size_t i = 0; i < before.size(); ++i)
      EXPECT_TRUE(same_bits(before[i], optimizer.parameters()[i]->master));
  };

  TrainingRun other_labels(2, OptimizerKind::adamw, 5);  // the classifier's weight is [16, 5]
  refuses(other_labels.optimizer,
          {"parameter 'classifier.weight'", "in the checkpoint, the model's is"});

  TrainingRun b(2);
  ParameterList fewer = b.model.parameters();
  const std::string dropped = fewer.back()->name;
  fewer.pop_back();
  Optimizer subset(fewer, TrainingRun::config(OptimizerKind::adamw));
  refuses(subset, {"holds parameter '" + dropped + "'", "the model does not have"});

  Parameter extra;
  extra.allocate("extra.weight", {4, 4}, DType::f32, Device::cpu());
  ParameterList more = b.model.parameters();
  more.push_back(&extra);
  Optimizer superset(more, TrainingRun::config(OptimizerKind::adamw));
  refuses(superset, {"lacks parameter 'extra.weight'"});

  TrainingRun nadam(2, OptimizerKind::nadam);
  refuses(nadam.optimizer, {"optimizer is adamw", "nadam"});

  std::string seen;
  refuses(b.optimizer, {"does not fit this run's configuration", "hidden_size 16 != 32"},
          [&](const std::string& saved) {
            seen = saved;
            return std::string("hidden_size 16 != 32");
          });
  EXPECT_EQ(seen, state_at(1).config);
  EXPECT_NO_THROW(
      load_checkpoint(path, b.optimizer, [](const std::string&) { return std::string(); }));
}

// A checkpoint whose checksum holds but whose contents no run can go on from is refused on load,
// naming the dataset, with the optimizer untouched: non-finite weights or moments, a negative
// second moment, an optimizer ahead of the run, a step count beyond any run (NAdam's product
// over every past step would spin), a negative data cursor.
TEST_F(CheckpointTest, LoadRefusesStatesNoRunCanReach) {
  auto refused = [&](const std::string& what, const std::function<void(Optimizer&, TrainingState&)>& spoil,
                     std::initializer_list<std::string> parts) {
    SCOPED_TRACE(what);
    const fs::path folder = fs::path(dir()) / what;
    TrainingRun a(1);
    TrainingState state = state_at(3);
    a.optimizer.set_steps(3);
    spoil(a.optimizer, state);
    const std::string path = save_checkpoint(folder.string(), a.optimizer, state, 1);
    TrainingRun b(2);
    const Tensor before = b.model.parameters()[0]->master.clone();
    std::vector<std::string> all = parts;
    all.push_back(path);
    expect_input_error([&] { load_checkpoint(path, b.optimizer); }, all);
    EXPECT_TRUE(same_bits(before, b.model.parameters()[0]->master));
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto set = [](Tensor& t, int64_t i, double x) { t.data<float>()[i] = static_cast<float>(x); };
  refused("nan_weight", [&](Optimizer& o, TrainingState&) { set(o.parameters()[2]->master, 5, nan); },
          {"'parameters/" + TrainingRun(1).model.parameters()[2]->name + "' element 5 is nan"});
  refused("inf_moment", [&](Optimizer& o, TrainingState&) { set(o.first_moments()[0], 0, INFINITY); },
          {"'optimizer/m/", "element 0 is inf"});
  refused("negative_v", [&](Optimizer& o, TrainingState&) { set(o.second_moments()[1], 3, -1e-3); },
          {"'optimizer/v/", "element 3 is -0.001", ">= 0"});
  refused("optimizer_ahead", [](Optimizer& o, TrainingState&) { o.set_steps(4); }, {"optimizer steps 4"});
  refused("huge_step", [](Optimizer&, TrainingState& s) { s.step = 1000000000000000; }, {"step 1000000000000000"});
  refused("negative_epoch", [](Optimizer&, TrainingState& s) { s.cursor.tasks[0].epoch = -1; },
          {"a negative data cursor"});
}

// ---- Crash safety ------------------------------------------------------------------------------

// A child process writes checkpoints in a loop and is SIGKILLed at a random moment, again and
// again, each time resuming from the latest: no file under a checkpoint name may ever fail to
// load, and the latest always holds the state its name says.
TEST_F(CheckpointTest, KilledWritersNeverLeaveABadCheckpoint) {
  // About 6 MB per checkpoint, so that a write takes long enough to be interrupted midway.
  std::vector<Parameter> storage(8);
  ParameterList params;
  for (size_t i = 0; i < storage.size(); ++i) {
    storage[i].allocate("layer." + std::to_string(i) + ".weight", {256, 256}, DType::f32,
                        Device::cpu());
    params.push_back(&storage[i]);
  }
  Optimizer optimizer(params, TrainingRun::config(OptimizerKind::adamw));
  std::mt19937 gen(2024);
  // Kills within 80 ms; while no write has finished (a slow disk), later ones come later, so
  // that some rounds check a finished checkpoint.
  int max_delay_us = 80000;
  int interrupted = 0, checked = 0;
  for (int round = 0; round < 10 || (checked == 0 && round < 20); ++round) {
    std::optional<std::string> latest = find_latest_checkpoint(dir());
    int64_t start = 0;
    if (latest) start = load_checkpoint(*latest, optimizer).step + 1;
    std::cout.flush();
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      // The weights carry the step, so a file's contents can be checked against its name.
      try {
        for (int64_t step = start;; ++step) {
          storage[0].master.data<float>()[0] = static_cast<float>(step);
          save_checkpoint(dir(), optimizer, state_at(step), 3);
        }
      } catch (...) {
      }
      ::_exit(1);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(0, max_delay_us)(gen)));
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the writer stopped on its own (status " << status << ")";

    bool temporary = false;  // a folder of an unfinished write or deletion
    for (const auto& e : fs::directory_iterator(dir_)) {
      const std::string name = e.path().filename().string();
      if (is_checkpoint_name(name))
        EXPECT_NO_THROW(verify_checkpoint(e.path().string())) << name << " after round " << round;
      else
        temporary = true;
    }
    interrupted += temporary;
    latest = find_latest_checkpoint(dir());
    if (!latest) {
      max_delay_us = std::min(2 * max_delay_us, 5000000);
      continue;
    }
    ++checked;
    const TrainingState state = load_checkpoint(*latest, optimizer);
    EXPECT_EQ(*latest, checkpoint_path(dir(), state.step));
    EXPECT_EQ(storage[0].master.data<float>()[0], static_cast<float>(state.step));
    EXPECT_EQ(state.config, state_at(state.step).config);
  }
  EXPECT_GT(checked, 0) << "no round found a finished checkpoint: nothing was loaded and checked";
  // Not asserted (timing): how many kills landed inside a write.
  std::cout << "[          ] " << interrupted << " kills left a temporary folder; " << checked
            << " rounds loaded the latest checkpoint\n";

  // The next finished write removes what the dead ones left (their temporary folders are of its
  // step or earlier ones) and the checkpoints beyond keep_last.
  const std::optional<std::string> latest = find_latest_checkpoint(dir());
  const int64_t next = latest ? load_checkpoint(*latest, optimizer).step + 1 : 0;
  save_checkpoint(dir(), optimizer, state_at(next), 3);
  int checkpoints = 0;
  for (const auto& e : fs::directory_iterator(dir_)) {
    EXPECT_TRUE(is_checkpoint_name(e.path().filename().string())) << e.path();
    ++checkpoints;
  }
  EXPECT_LE(checkpoints, 3);
}

// ---- Hugging Face export -----------------------------------------------------------------------

std::set<std::string> folder_entries(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

// config.json holds the keys transformers' RobertaConfig reads, with the model's values.
void expect_hf_config(const fs::path& dir, const RobertaConfig& config) {
  std::ifstream in(dir / "config.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  // The QARAC models are of their own types (modeling_qarac.py); the decoder's base is causal.
  const bool decoder = dir.filename() == "decoder";
  EXPECT_EQ(j.at("model_type"), decoder ? "qarac_decoder" : "qarac_encoder");
  EXPECT_EQ(j.at("architectures"), nlohmann::json::array({decoder ? "QaracDecoderModel" : "QaracEncoderModel"}));
  EXPECT_EQ(j.at("is_decoder"), decoder);
  EXPECT_EQ(j.at("vocab_size"), config.vocab_size);
  EXPECT_EQ(j.at("hidden_size"), config.hidden_size);
  EXPECT_EQ(j.at("num_hidden_layers"), config.num_layers);
  EXPECT_EQ(j.at("num_attention_heads"), config.num_heads);
  EXPECT_EQ(j.at("intermediate_size"), config.intermediate_size);
  EXPECT_EQ(j.at("max_position_embeddings"), config.max_position_embeddings);
  EXPECT_EQ(j.at("type_vocab_size"), config.type_vocab_size);
  EXPECT_EQ(j.at("layer_norm_eps"), config.layer_norm_eps);
  EXPECT_EQ(j.at("pad_token_id"), config.pad_token_id);
  EXPECT_EQ(j.at("bos_token_id"), config.bos_token_id);
  EXPECT_EQ(j.at("eos_token_id"), config.eos_token_id);
  EXPECT_EQ(j.at("hidden_act"), "gelu");
  EXPECT_EQ(j.at("position_embedding_type"), "absolute");
}

// The three QARAC models, each exported and read back: the RoBERTa part under transformers'
// names loads as a base model with the same weights, the heads keep their names (the decoder's
// LM head under qarac_lm_head.), the LM head has the checkpoint's vocabulary (40), not the padded
// one (64).
TEST_F(CheckpointTest, QaracModelsExportInTheHfLayoutAndReadBack) {
  const RobertaConfig config = tiny_config();
  RobertaEncoder pretrained(config, DType::f32, Device::cpu());
  init_normal(pretrained.parameters(), 0.5, 8);
  QaracConfig qc;
  qc.base = config;
  qc.vocab_multiple = 64;
  QaracModels models(qc, io::master_tensors(pretrained.parameters()), DType::f32, Device::cpu());

  for (const char* model : {"question_encoder", "answer_encoder", "decoder"}) {
    SCOPED_TRACE(model);
    const ParameterList params = models.model_parameters(model);
    const std::string out =
        io::export_hf_model(dir() + "/export", model, models.config().base, io::master_tensors(params));
    EXPECT_EQ(out, (dir_ / "export" / model).string());
    // Without a tokenizer or card, the weights, the config and the QARAC modeling code (and the
    // encoders' sentence-transformers files).
    std::set<std::string> files = {"config.json", "model.safetensors", "modeling_qarac.py"};
    if (std::string(model) != "decoder") files.insert({"modules.json", "sentence_bert_config.json"});
    EXPECT_EQ(folder_entries(out), files);
    expect_hf_config(out, config);

    io::Metadata metadata;
    const TensorMap stored =
        io::read_safetensors((fs::path(out) / "model.safetensors").string(), &metadata);
    EXPECT_EQ(metadata["format"], "pt");  // transformers refuses safetensors without it
    // The decoder's LM head is stored under its own prefix (io/export_files.h), so that a plain
    // RobertaForCausalLM finds none of it.
    const bool decoder = std::string(model) == "decoder";
    auto stored_name = [&](const std::string& name) {
      return decoder && name.rfind("lm_head.", 0) == 0 ? io::kDecoderHeadPrefix + name.substr(8) : name;
    };
    std::set<std::string> expected, names;
    for (const Parameter* p : params) expected.insert(stored_name(p->name));
    for (const auto& [name, t] : stored) {
      names.insert(name);
      EXPECT_EQ(t.dtype(), DType::f32) << name;
    }
    EXPECT_EQ(names, expected);
    for (const char* name :
         {"roberta.embeddings.word_embeddings.weight",
          "roberta.embeddings.position_embeddings.weight",
          "roberta.embeddings.token_type_embeddings.weight", "roberta.embeddings.LayerNorm.weight",
          "roberta.embeddings.LayerNorm.bias",
          "roberta.encoder.layer.0.attention.self.query.weight",
          "roberta.encoder.layer.1.output.LayerNorm.bias"})
      EXPECT_TRUE(stored.count(name)) << name;
    if (decoder) {
      EXPECT_EQ(stored.at("qarac_lm_head.decoder.weight").shape(),
                (Shape{config.vocab_size, config.hidden_size}));
      EXPECT_EQ(stored.at("qarac_lm_head.bias").shape(), (Shape{config.vocab_size}));
      EXPECT_TRUE(stored.count("decoder_layers.1.output.LayerNorm.weight"));
    } else {
      EXPECT_TRUE(stored.count("pooling.global_projection.weight"));
      EXPECT_TRUE(stored.count("pooling.local_projection.weight"));
    }
    for (const Parameter* p : params)
      EXPECT_TRUE(same_bits(stored.at(stored_name(p->name)), p->master)) << p->name;

    // As a base model: "roberta." stripped, the heads set aside, the weights the same.
    const io::HfRoberta hf = io::read_hf_roberta(out);
    EXPECT_EQ(hf.config.vocab_size, config.vocab_size);
    RobertaEncoder fresh(hf.config, DType::f32, Device::cpu());
    io::assign_parameters(fresh.parameters(), hf.encoder, out);
    for (const Parameter* p : fresh.parameters())
      EXPECT_TRUE(same_bits(p->master, stored.at("roberta." + p->name))) << p->name;
  }
  EXPECT_EQ(folder_entries(dir_ / "export"),
            (std::set<std::string>{"answer_encoder", "decoder", "question_encoder"}))
      << "a temporary folder was left";
}

// The QARAC models' whole parameter list (a shared encoder base, the LM head's views of its
// padded storage) round-trips bit-exactly into models initialised differently.
TEST_F(CheckpointTest, QaracModelsRoundTrip) {
  const RobertaConfig config = tiny_config();
  RobertaEncoder pretrained(config, DType::f32, Device::cpu());
  init_normal(pretrained.parameters(), 0.5, 8);
  const TensorMap base = io::master_tensors(pretrained.parameters());
  QaracConfig qc;
  qc.base = config;
  qc.share_encoder_base = true;
  QaracModels saved_models(qc, base, DType::f32, Device::cpu());
  Optimizer saved(saved_models.parameters(), TrainingRun::config(OptimizerKind::adamw));
  for (size_t i = 0; i < saved.parameters().size(); ++i) {
    saved.first_moments()[i].copy_(saved.parameters()[i]->master);
    saved.second_moments()[i].copy_(squares(saved.parameters()[i]->master));
  }
  saved.set_steps(11);
  const std::string path = save_checkpoint(dir(), saved, state_at(11), 1);

  qc.init_seed = 2;
  QaracModels loaded_models(qc, base, DType::f32, Device::cpu());
  Optimizer loaded(loaded_models.parameters(), TrainingRun::config(OptimizerKind::adamw));
  int differ = 0;
  for (size_t i = 0; i < saved.parameters().size(); ++i)
    differ += !same_bits(saved.parameters()[i]->master, loaded.parameters()[i]->master);
  EXPECT_GT(differ, 0) << "the heads start out different";
  load_checkpoint(path, loaded);
  expect_same_state(saved, loaded);
}

// A base given with bare names gets the "roberta." prefix; exporting again replaces the folder
// as a whole; a vocabulary-sized tensor of another size (a padded head, a wrong config) is
// refused rather than exported as a model transformers would misread.
TEST_F(CheckpointTest, ExportPrefixesABareBaseAndReplacesTheFolder) {
  const RobertaConfig config = tiny_config();
  RobertaEncoder encoder(config, DType::f32, Device::cpu());
  init_normal(encoder.parameters(), 0.5, 8);
  TensorMap tensors = io::master_tensors(encoder.parameters());
  tensors["pooling.global_projection.weight"] =
      Tensor::zeros({config.hidden_size, config.hidden_size}, DType::f64);
  const std::string out = io::export_hf_model(dir() + "/export", "answer_encoder", config, tensors);
  const TensorMap stored = io::read_safetensors((fs::path(out) / "model.safetensors").string());
  EXPECT_EQ(stored.size(), tensors.size());
  for (const Parameter* p : encoder.parameters())
    EXPECT_TRUE(same_bits(stored.at("roberta." + p->name), p->master)) << p->name;
  EXPECT_EQ(stored.at("pooling.global_projection.weight").dtype(), DType::f32);

  Parameter* word = encoder.parameters().front();
  word->assign(Tensor::zeros(word->value.shape(), DType::f32));
  io::export_hf_model(dir() + "/export", "answer_encoder", config, io::master_tensors(encoder.parameters()));
  EXPECT_EQ(folder_entries(dir_ / "export"), std::set<std::string>{"answer_encoder"});
  const TensorMap again = io::read_safetensors((fs::path(out) / "model.safetensors").string());
  EXPECT_FALSE(again.count("pooling.global_projection.weight"));
  EXPECT_TRUE(
      same_bits(again.at("roberta." + word->name), Tensor::zeros(word->value.shape(), DType::f32)));

  tensors["lm_head.decoder.weight"] = Tensor::zeros({64, config.hidden_size}, DType::f32);
  EXPECT_THROW(io::export_hf_model(dir() + "/export", "decoder", config, tensors), Error);
  RobertaConfig smaller = config;
  smaller.vocab_size = 30;
  EXPECT_THROW(io::export_hf_model(dir() + "/export", "answer_encoder", smaller,
                                   io::master_tensors(encoder.parameters())),
               Error);
  EXPECT_TRUE(same_bits(io::read_safetensors((fs::path(out) / "model.safetensors").string())
                            .at("roberta." + word->name),
                        Tensor::zeros(word->value.shape(), DType::f32)))
      << "a refused export changed the previous one";
}

TEST_F(CheckpointTest, MasterTensorsAreCopies) {
  Parameter p;
  p.allocate("w", {2, 3}, DType::f32, Device::cpu());
  const TensorMap map = io::master_tensors({&p});
  p.master.data<float>()[0] = 5.0f;
  EXPECT_EQ(map.at("w").data<float>()[0], 0.0f);
}

}  // namespace
