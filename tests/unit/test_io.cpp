// Unit tests of src/io: safetensors round trips, F16 widening, the golden tiny_dev checkpoint,
// config.json reading and writing, parameter assignment, and one-line errors for bad input
// (every bad file is crafted at run time in a temporary folder).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "support/test_support.h"
#include "io/hf_checkpoint.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "model/roberta.h"

namespace fs = std::filesystem;
using namespace qarac;
using qarac::test_support::expect_input_error;
using namespace qarac::io;

namespace {

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A safetensors file from its parts; `claimed_header_bytes` replaces the true header length to
// make the header lie.
std::string safetensors_bytes(const std::string& header, const std::string& data,
                              std::optional<uint64_t> claimed_header_bytes = std::nullopt) {
  const uint64_t n = claimed_header_bytes.value_or(header.size());
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

std::string golden_dir() { return std::string(QARAC_GOLDEN_DIR) + "/tiny_dev"; }

// The dump is part of the source tree (tests/golden/data): its absence is a failure, not a skip.
#define REQUIRE_GOLDEN()                                       \
  ASSERT_TRUE(fs::exists(golden_dir() + "/model.safetensors")) \
      << "golden dump " << golden_dir() << " is missing from the source tree"

class IoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("qarac_test_io_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Names of the entries of the temporary folder (to see that no temporary file is left).
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_))
      names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  // A file with one tensor "w" described by `entry` (a JSON object) and `data_bytes` of data.
  std::string write_one(const std::string& name, const std::string& entry, size_t data_bytes) {
    const std::string p = path(name);
    write_bytes(p, safetensors_bytes("{\"w\":" + entry + "}", std::string(data_bytes, '\0')));
    return p;
  }

  fs::path dir_;
};

// ---- safetensors: round trips and reading

TEST_F(IoTest, RoundTripEveryDtypeAndMetadata) {
  TensorMap in;
  in["a.f32"] = Tensor::from_vector<float>({1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f}, {2, 3});
  in["b.f64"] = Tensor::from_vector<double>({3.141592653589793, -1e300}, {2});
  in["c.bf16"] = Tensor::from_vector<bf16>({bf16(1.0f), bf16(-0.5f), bf16(3.0e38f)}, {3, 1});
  in["d.i32"] = Tensor::from_vector<int32_t>({7, -8, 2147483647}, {1, 3});
  in["e.i64"] = Tensor::from_vector<int64_t>({-9000000000000LL, 42}, {2});
  in["f.scalar"] = Tensor::from_vector<float>({2.5f}, {});
  in["g.empty"] = Tensor::empty({0, 4}, DType::f32);
  // A non-contiguous view (columns 1..2 of a 3x3): written as its own contiguous values.
  const Tensor square = Tensor::from_vector<float>({0, 1, 2, 3, 4, 5, 6, 7, 8}, {3, 3});
  in["h.view"] = square.slice(1, 1, 3);
  const Metadata meta_in = {{"format", "pt"}, {"note", "written by test_io"}};

  const std::string p = path("round.safetensors");
  write_safetensors(p, in, meta_in);
  EXPECT_EQ(entries(), std::vector<std::string>{"round.safetensors"})
      << "a temporary file was left";

  // The header length is a multiple of 8 (the data section stays aligned).
  const std::string raw = read_bytes(p);
  uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, raw.data(), 8);
  EXPECT_EQ(header_bytes % 8, 0u);

  Metadata meta_out;
  const TensorMap out = read_safetensors(p, &meta_out);
  EXPECT_EQ(meta_out, meta_in);
  ASSERT_EQ(out.size(), in.size());
  for (const auto& [name, t] : in) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(out.count(name));
    EXPECT_EQ(out.at(name).shape(), t.shape());
    EXPECT_EQ(out.at(name).dtype(), t.dtype());
  }
  EXPECT_EQ(out.at("a.f32").to_vector<float>(), in.at("a.f32").to_vector<float>());
  EXPECT_EQ(out.at("b.f64").to_vector<double>(), in.at("b.f64").to_vector<double>());
  const auto bf_out = out.at("c.bf16").to_vector<bf16>();
  const auto bf_in = in.at("c.bf16").to_vector<bf16>();
  for (size_t i = 0; i < bf_in.size(); ++i) EXPECT_EQ(bf_out[i].bits, bf_in[i].bits);
  EXPECT_EQ(out.at("d.i32").to_vector<int32_t>(), in.at("d.i32").to_vector<int32_t>());
  EXPECT_EQ(out.at("e.i64").to_vector<int64_t>(), in.at("e.i64").to_vector<int64_t>());
  EXPECT_EQ(out.at("f.scalar").to_vector<float>(), std::vector<float>{2.5f});
  EXPECT_EQ(out.at("g.empty").numel(), 0);
  EXPECT_EQ(out.at("h.view").to_vector<float>(), (std::vector<float>{1, 2, 4, 5, 7, 8}));

  // Writing again replaces the file atomically and still leaves no temporary file.
  write_safetensors(p, {{"only", Tensor::from_vector<float>({1.0f}, {1})}});
  EXPECT_EQ(read_safetensors(p).size(), 1u);
  EXPECT_EQ(entries(), std::vector<std::string>{"round.safetensors"});
}

TEST_F(IoTest, F16IsWidenedToF32Exactly) {
  const std::vector<uint16_t> bits = {
      0x3c00,  // 1
      0xc000,  // -2
      0x0001,  // smallest subnormal 2^-24
      0x03ff,  // largest subnormal 1023·2^-24
      0x0400,  // smallest normal 2^-14
      0x7bff,  // largest finite 65504
      0x7c00,  // +inf
      0xfc00,  // -inf
      0x7e00,  // NaN
      0x8000,  // -0
      0x3555,  // 0.333251953125
  };
  std::string data(bits.size() * 2, '\0');
  std::memcpy(data.data(), bits.data(), data.size());
  const std::string header = "{\"h\":{\"dtype\":\"F16\",\"shape\":[11],\"data_offsets\":[0,22]}}";
  const std::string p = path("half.safetensors");
  write_bytes(p, safetensors_bytes(header, data));

  const TensorMap t = read_safetensors(p);
  ASSERT_EQ(t.at("h").dtype(), DType::f32);
  const std::vector<float> v = t.at("h").to_vector<float>();
  EXPECT_EQ(v[0], 1.0f);
  EXPECT_EQ(v[1], -2.0f);
  EXPECT_EQ(v[2], std::ldexp(1.0f, -24));
  EXPECT_EQ(v[3], std::ldexp(1023.0f, -24));
  EXPECT_EQ(v[4], std::ldexp(1.0f, -14));
  EXPECT_EQ(v[5], 65504.0f);
  EXPECT_EQ(v[6], std::numeric_limits<float>::infinity());
  EXPECT_EQ(v[7], -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(v[8]));
  EXPECT_EQ(v[9], 0.0f);
  EXPECT_TRUE(std::signbit(v[9]));
  EXPECT_EQ(v[10], 0.333251953125f);
}

TEST_F(IoTest, GoldenModelReads) {
  REQUIRE_GOLDEN();
  Metadata meta;
  const TensorMap t = read_safetensors(golden_dir() + "/model.safetensors", &meta);
  EXPECT_EQ(t.size(), 42u);
  EXPECT_EQ(meta.at("format"), "pt");
  EXPECT_EQ(t.at("roberta.embeddings.word_embeddings.weight").shape(), (Shape{101, 32}));
  EXPECT_EQ(t.at("roberta.embeddings.position_embeddings.weight").shape(), (Shape{14, 32}));
  EXPECT_EQ(t.at("roberta.encoder.layer.1.intermediate.dense.weight").shape(), (Shape{64, 32}));
  EXPECT_EQ(t.at("roberta.encoder.layer.1.output.dense.weight").shape(), (Shape{32, 64}));
  EXPECT_EQ(t.at("lm_head.bias").shape(), (Shape{101}));
  for (const auto& [name, tensor] : t) EXPECT_EQ(tensor.dtype(), DType::f32) << name;
}

TEST_F(IoTest, ReadHfRobertaGolden) {
  REQUIRE_GOLDEN();
  const HfRoberta m = read_hf_roberta(golden_dir());
  EXPECT_EQ(m.config.hidden_size, 32);
  EXPECT_EQ(m.config.num_layers, 2);
  EXPECT_EQ(m.config.num_heads, 4);
  EXPECT_EQ(m.config.intermediate_size, 64);
  EXPECT_EQ(m.config.vocab_size, 101);
  EXPECT_EQ(m.config.max_position_embeddings, 14);
  EXPECT_EQ(m.config.type_vocab_size, 1);
  EXPECT_DOUBLE_EQ(m.config.layer_norm_eps, 1e-5);
  EXPECT_EQ(m.config.pad_token_id, 1);
  EXPECT_EQ(m.config.hidden_act, "gelu");

  // 5 embedding tensors + 16 per layer, without the "roberta." prefix.
  EXPECT_EQ(m.encoder.size(), 5u + 16u * 2u);
  EXPECT_TRUE(m.encoder.count("embeddings.word_embeddings.weight"));
  EXPECT_TRUE(m.encoder.count("encoder.layer.1.attention.self.query.weight"));
  std::vector<std::string> head;
  for (const auto& [name, t] : m.lm_head) head.push_back(name);
  EXPECT_EQ(head, (std::vector<std::string>{"bias", "dense.bias", "dense.weight", "layer_norm.bias",
                                            "layer_norm.weight"}));

  // Parameters shaped like the checkpoint load it, converted to the parameter's dtype.
  std::vector<Parameter> storage(m.encoder.size());
  ParameterList params;
  size_t i = 0;
  for (const auto& [name, t] : m.encoder) {
    storage[i].allocate(name, t.shape(),
                        name == "embeddings.LayerNorm.weight" ? DType::bf16 : DType::f32,
                        Device::cpu());
    params.push_back(&storage[i++]);
  }
  assign_parameters(params, m.encoder, m.dir);
  for (const Parameter* p : params) {
    if (p->value.dtype() != DType::f32) continue;
    EXPECT_EQ(p->value.to_vector<float>(), m.encoder.at(p->name).to_vector<float>()) << p->name;
  }
  for (const Parameter* p : params) {
    if (p->value.dtype() != DType::bf16) continue;
    const std::vector<float> expect = m.encoder.at(p->name).to_vector<float>();
    const std::vector<bf16> got = p->value.to_vector<bf16>();
    for (size_t k = 0; k < expect.size(); ++k) EXPECT_EQ(got[k].bits, bf16(expect[k]).bits);
  }
}

TEST_F(IoTest, GoldenLoadsIntoRobertaEncoder) {
  REQUIRE_GOLDEN();
  const HfRoberta m = read_hf_roberta(golden_dir());
  RobertaEncoder encoder(m.config, DType::f32, Device::cpu());
  const ParameterList params = encoder.parameters();
  EXPECT_EQ(params.size(), m.encoder.size());  // every tensor has its parameter, and back
  assign_parameters(params, m.encoder, m.dir);
  for (const Parameter* p : params)
    EXPECT_EQ(p->value.to_vector<float>(), m.encoder.at(p->name).to_vector<float>()) << p->name;
}

TEST_F(IoTest, ReadHfRobertaBareNamesAndSkippedTensors) {
  // A RobertaModel export: bare names, a pooler to skip, no lm_head.
  const RobertaConfig c = [] {
    RobertaConfig r;
    r.vocab_size = 10;
    r.hidden_size = 4;
    r.num_layers = 1;
    r.num_heads = 2;
    r.intermediate_size = 8;
    r.max_position_embeddings = 6;
    return r;
  }();
  write_hf_config(path("config.json"), c);
  RobertaEncoder encoder(c, DType::f32, Device::cpu());
  TensorMap tensors = {{"pooler.dense.weight", Tensor::zeros({4, 4}, DType::f32)},
                       {"embeddings.position_ids", Tensor::zeros({1, 6}, DType::i64)}};
  for (const Parameter* p : encoder.parameters()) tensors.emplace(p->name, Tensor::zeros(p->value.shape(), DType::f32));
  write_safetensors(path("model.safetensors"), tensors);
  const HfRoberta m = read_hf_roberta(dir_.string());
  EXPECT_EQ(m.encoder.size(), encoder.parameters().size());
  EXPECT_TRUE(m.encoder.count("embeddings.word_embeddings.weight"));
  EXPECT_TRUE(m.lm_head.empty());
  EXPECT_EQ(m.config.hidden_size, 4);
}

TEST_F(IoTest, ReadHfRobertaSetsAsideAnUntiedHead) {
  // A RobertaForMaskedLM saved with tie_word_embeddings false: transformers outputs through
  // lm_head.decoder.weight, which the tied MLM heads here have no place for.
  RobertaConfig c;
  c.vocab_size = 10;
  c.hidden_size = 4;
  c.num_layers = 1;
  c.num_heads = 2;
  c.intermediate_size = 8;
  c.max_position_embeddings = 6;
  RobertaEncoder encoder(c, DType::f32, Device::cpu());
  TensorMap tensors = {{"lm_head.dense.weight", Tensor::zeros({4, 4}, DType::f32)},
                       {"lm_head.dense.bias", Tensor::zeros({4}, DType::f32)},
                       {"lm_head.layer_norm.weight", Tensor::zeros({4}, DType::f32)},
                       {"lm_head.layer_norm.bias", Tensor::zeros({4}, DType::f32)},
                       {"lm_head.decoder.weight", Tensor::zeros({10, 4}, DType::f32)},
                       {"lm_head.bias", Tensor::zeros({10}, DType::f32)}};
  for (const Parameter* p : encoder.parameters())
    tensors.emplace("roberta." + p->name, Tensor::zeros(p->value.shape(), DType::f32));
  write_safetensors(path("model.safetensors"), tensors);
  HfConfigOptions options;
  write_hf_config(path("config.json"), c, options);
  EXPECT_EQ(read_hf_roberta(dir_.string()).lm_head.size(), 6u);  // tied: transformers ignores decoder.weight too
  options.tie_word_embeddings = false;
  write_hf_config(path("config.json"), c, options);
  const HfRoberta m = read_hf_roberta(dir_.string());
  EXPECT_TRUE(m.lm_head.empty());
  EXPECT_EQ(m.encoder.size(), encoder.parameters().size());
}

TEST_F(IoTest, ReadHfRobertaWithoutEncoderTensors) {
  // A BERT checkpoint: its "bert." names are not RoBERTa's.
  write_hf_config(path("config.json"), RobertaConfig{});
  write_safetensors(path("model.safetensors"), {{"bert.embeddings.word_embeddings.weight",
                                                 Tensor::zeros({2, 2}, DType::f32)}});
  expect_input_error([&] { read_hf_roberta(dir_.string()); },
                     {path("model.safetensors"), "no RoBERTa encoder tensors",
                      "bert.embeddings.word_embeddings.weight"});
}

// ---- safetensors: bad input

TEST_F(IoTest, TruncatedFile) {
  const std::string p = path("cut.safetensors");
  TensorMap t;
  t["a"] = Tensor::zeros({64}, DType::f32);
  t["b"] = Tensor::zeros({64}, DType::f32);
  write_safetensors(p, t);
  const std::string whole = read_bytes(p);
  write_bytes(p, whole.substr(0, whole.size() - 200));
  expect_input_error(
      [&] { read_safetensors(p); },
      {p, "tensor 'b'", "ends at byte 512", "data section has only 312 bytes", "truncated"});
}

TEST_F(IoTest, TruncatedGoldenFile) {
  REQUIRE_GOLDEN();
  const std::string whole = read_bytes(golden_dir() + "/model.safetensors");
  const std::string p = path("half.safetensors");
  write_bytes(p, whole.substr(0, whole.size() / 2));
  expect_input_error([&] { read_safetensors(p); }, {p, "ends at byte", "data section has only"});
}

TEST_F(IoTest, HeaderLengthBeyondFile) {
  const std::string p = path("lies.safetensors");
  write_bytes(p, safetensors_bytes("{}", "", 1000));
  expect_input_error([&] { read_safetensors(p); },
                     {p, "header length 1000", "exceeds the 2 bytes"});
  write_bytes(p, safetensors_bytes("{}", "", uint64_t{1} << 40));
  expect_input_error([&] { read_safetensors(p); }, {p, "header length", "absurd"});
}

TEST_F(IoTest, OffsetsBeyondData) {
  const std::string p =
      write_one("beyond.safetensors", R"({"dtype":"F32","shape":[4],"data_offsets":[8,24]})", 16);
  expect_input_error([&] { read_safetensors(p); },
                     {p, "tensor 'w'", "ends at byte 24", "data section has only 16 bytes"});
}

TEST_F(IoTest, OffsetsInconsistentWithShape) {
  const std::string p =
      write_one("shape.safetensors", R"({"dtype":"F32","shape":[2,3],"data_offsets":[0,20]})", 24);
  expect_input_error([&] { read_safetensors(p); },
                     {p, "tensor 'w'", "hold 20 bytes", "shape [2, 3] of F32 needs 24"});
  const std::string q =
      write_one("overflow.safetensors",
                R"({"dtype":"F64","shape":[4294967296,4294967296,2],"data_offsets":[0,8]})", 8);
  expect_input_error([&] { read_safetensors(q); }, {q, "tensor 'w'", "more than 2^63"});
  // Empty, but dimensions whose product overflows before the 0 (signed overflow for any code
  // that multiplies them in order).
  const std::string z = write_one(
      "zero.safetensors", R"({"dtype":"F32","shape":[1099511627776,1099511627776,0],"data_offsets":[0,0]})", 0);
  expect_input_error([&] { read_safetensors(z); }, {z, "tensor 'w'", "more than 2^63"});
  const std::string r = write_one(
      "rank.safetensors", R"({"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]})", 4);
  expect_input_error([&] { read_safetensors(r); }, {r, "tensor 'w'", "shape has 9 dimensions, more than 8"});
}

TEST_F(IoTest, UnknownDtype) {
  const std::string p =
      write_one("dtype.safetensors", R"({"dtype":"Q7","shape":[1],"data_offsets":[0,4]})", 4);
  expect_input_error([&] { read_safetensors(p); },
                     {p, "tensor 'w'", "dtype 'Q7' is not supported"});
}

TEST_F(IoTest, InvalidJsonHeader) {
  const std::string p = path("json.safetensors");
  write_bytes(p, safetensors_bytes("{\"w\": {\"dtype\":\n", ""));
  expect_input_error([&] { read_safetensors(p); }, {p, "header is not valid JSON"});
  write_bytes(p, safetensors_bytes("[1, 2]  ", ""));
  expect_input_error([&] { read_safetensors(p); }, {p, "expected a JSON object"});
}

TEST_F(IoTest, MalformedEntries) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"shape":[1],"data_offsets":[0,4]})", "has no 'dtype'"},
      {R"({"dtype":"F32","data_offsets":[0,4]})", "has no 'shape'"},
      {R"({"dtype":"F32","shape":[1]})", "has no 'data_offsets'"},
      {R"({"dtype":32,"shape":[1],"data_offsets":[0,4]})", "dtype is 32, expected a string"},
      {R"({"dtype":"F32","shape":"1","data_offsets":[0,4]})", "expected an array"},
      {R"({"dtype":"F32","shape":[1.5],"data_offsets":[0,4]})", "expected integers"},
      {R"({"dtype":"F32","shape":[-1],"data_offsets":[0,4]})", "negative dimension"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[0]})", "expected [begin, end]"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})", "expected [begin, end]"},
      {R"({"dtype":"F32","shape":[0],"data_offsets":[4,0]})", "ends before it begins"},
      {R"([1])", "expected an object"},
  };
  for (const auto& [entry, words] : cases) {
    SCOPED_TRACE(entry);
    const std::string p = write_one("entry.safetensors", entry, 4);
    expect_input_error([&] { read_safetensors(p); }, {p, "tensor 'w'", words});
  }
}

TEST_F(IoTest, OverlappingTensors) {
  const std::string p = path("overlap.safetensors");
  write_bytes(p, safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                   R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                   std::string(12, '\0')));
  expect_input_error([&] { read_safetensors(p); }, {p, "'a' [0, 8)", "'b' [4, 12)", "overlap"});
}

TEST_F(IoTest, BadMetadata) {
  const std::string p = path("meta.safetensors");
  write_bytes(p, safetensors_bytes(R"({"__metadata__":{"format":3}})", ""));
  expect_input_error([&] { read_safetensors(p); },
                     {p, "__metadata__ 'format'", "expected a string"});
}

TEST_F(IoTest, NameWithNewlineStaysOneLine) {
  const std::string p =
      write_one("nl.safetensors", R"({"dtype":"F32","shape":[1],"data_offsets":[0,8]})", 8);
  std::string bytes = read_bytes(p);
  bytes.replace(bytes.find("\"w\""), 3, "\"a\\nb\"");  // the JSON escape \n: a name with a newline
  uint64_t n = bytes.size() - 8 - 8;
  std::memcpy(bytes.data(), &n, 8);
  write_bytes(p, bytes);
  expect_input_error([&] { read_safetensors(p); }, {p, "tensor 'a\\x0ab'"});
}

TEST_F(IoTest, ShortAndMissingFiles) {
  const std::string p = path("short.safetensors");
  write_bytes(p, "abc");
  expect_input_error([&] { read_safetensors(p); }, {p, "3 bytes", "too short"});
  const std::string none = path("none.safetensors");
  expect_input_error([&] { read_safetensors(none); }, {none, "cannot open", "No such file"});
  expect_input_error([&] { read_safetensors(dir_.string()); }, {dir_.string(), "is a directory"});
}

// ---- safetensors: atomic writes

TEST_F(IoTest, WriteIntoMissingDirectoryFails) {
  const std::string p = path("no/such/dir/x.safetensors");
  expect_input_error(
      [&] {
        write_safetensors(p, {{"a", Tensor::zeros({2}, DType::f32)}});
      },
      {p, "cannot create the temporary file", "No such file"});
  EXPECT_TRUE(entries().empty());
}

TEST_F(IoTest, AFolderTargetIsRefusedAndLeavesNothing) {
  // The target is a directory: refused before any byte is written (AtomicFile; a rename that
  // fails later removes its temporary file too, FileTest.FailedAtomicWrites...), and nothing
  // stays behind.
  fs::create_directory(dir_ / "target");
  const std::string p = path("target");
  expect_input_error(
      [&] {
        write_safetensors(p, {{"a", Tensor::zeros({2}, DType::f32)}});
      },
      {p, "not a regular file (a directory)"});
  EXPECT_EQ(entries(), std::vector<std::string>{"target"});
}

// ---- parameters

class AssignTest : public IoTest {
 protected:
  void SetUp() override {
    IoTest::SetUp();
    w.allocate("encoder.layer.0.attention.self.query.weight", {3, 2}, DType::f32, Device::cpu());
    b.allocate("encoder.layer.0.attention.self.query.bias", {3}, DType::f32, Device::cpu());
    tensors[w.name] = Tensor::from_vector<double>({1, 2, 3, 4, 5, 6}, {3, 2});
    tensors[b.name] = Tensor::from_vector<float>({7, 8, 9}, {3});
  }
  Parameter w, b;
  TensorMap tensors;
};

TEST_F(AssignTest, ConvertsAndCopies) {
  tensors["pooler.dense.weight"] = Tensor::zeros({2, 2}, DType::f32);  // unused: a warning only
  assign_parameters({&w, &b}, tensors, "model.safetensors");
  EXPECT_EQ(w.value.to_vector<float>(), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(b.value.to_vector<float>(), (std::vector<float>{7, 8, 9}));
}

TEST_F(AssignTest, MissingTensor) {
  tensors.erase(b.name);
  expect_input_error(
      [&] {
        assign_parameters({&w, &b}, tensors, "ckpt/model.safetensors");
      },
      {"ckpt/model.safetensors", "tensor '" + b.name + "' is missing", "expected shape [3]"});
}

TEST_F(AssignTest, SeveralMissingAreCounted) {
  tensors.clear();
  expect_input_error(
      [&] {
        assign_parameters({&w, &b}, tensors, "ckpt/model.safetensors");
      },
      {"tensor '" + w.name + "' is missing", "2 missing in all"});
}

TEST_F(AssignTest, WrongShapeLeavesParametersUntouched) {
  tensors[b.name] = Tensor::zeros({4}, DType::f32);
  expect_input_error(
      [&] {
        assign_parameters({&w, &b}, tensors, "ckpt/model.safetensors");
      },
      {"ckpt/model.safetensors", "tensor '" + b.name + "' has shape [4], expected [3]"});
  EXPECT_EQ(w.value.to_vector<float>(), std::vector<float>(6, 0.0f));
}

// An F64 weight beyond float32's range is said as the number it is, before any parameter is
// written (before: it became an infinity, reported as "not finite").
TEST_F(AssignTest, Float64BeyondFloat32IsNamed) {
  tensors[w.name] = Tensor::from_vector<double>({1, 2, 3, 1e300, 5, 6}, {3, 2});
  expect_input_error([&] { assign_parameters({&w, &b}, tensors, "ckpt/model.safetensors"); },
                     {"ckpt/model.safetensors", "tensor '" + w.name + "' holds 1e+300 at element 3, beyond float32's range"});
  EXPECT_EQ(w.value.to_vector<float>(), std::vector<float>(6, 0.0f));
}

TEST_F(AssignTest, IntegerTensor) {
  tensors[b.name] = Tensor::from_vector<int64_t>({1, 2, 3}, {3});
  expect_input_error(
      [&] {
        assign_parameters({&w, &b}, tensors, "ckpt/model.safetensors");
      },
      {"ckpt/model.safetensors",
       "tensor '" + b.name + "' has dtype i64, expected a floating type"});
}

// ---- config.json

class ConfigTest : public IoTest {
 protected:
  // A valid tiny config whose JSON text has `from` replaced by `to` (a key changed or removed).
  std::string write_config(const std::string& name, const std::string& from,
                           const std::string& to) {
    std::string text = R"({"model_type": "roberta", "vocab_size": 101, "hidden_size": 32,
      "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
      "max_position_embeddings": 14, "hidden_act": "gelu", "layer_norm_eps": 1e-05})";
    if (!from.empty()) {
      const size_t at = text.find(from);
      EXPECT_NE(at, std::string::npos) << from;
      text.replace(at, from.size(), to);
    }
    const std::string p = path(name);
    write_bytes(p, text);
    return p;
  }
};

TEST_F(ConfigTest, ReadsDefaultsAndRoundTrips) {
  const RobertaConfig c = read_hf_config(write_config("config.json", "", ""));
  EXPECT_EQ(c.vocab_size, 101);
  // transformers' defaults, not RoBERTa's values: a hand-written config.json that leaves them out
  // computes there with these.
  EXPECT_EQ(c.type_vocab_size, 2);
  EXPECT_DOUBLE_EQ(read_hf_config(write_config("no-eps.json", R"(, "layer_norm_eps": 1e-05)", "")).layer_norm_eps,
                   1e-12);
  EXPECT_EQ(c.pad_token_id, 1);
  EXPECT_DOUBLE_EQ(c.hidden_dropout, 0.1);

  RobertaConfig d = c;
  d.hidden_dropout = 0.0;
  d.attention_dropout = 0.25;
  d.layer_norm_eps = 1e-6;
  d.type_vocab_size = 1;
  write_hf_config(path("written.json"), d);
  const RobertaConfig e = read_hf_config(path("written.json"));
  EXPECT_EQ(e.hidden_size, d.hidden_size);
  EXPECT_EQ(e.num_layers, d.num_layers);
  EXPECT_EQ(e.num_heads, d.num_heads);
  EXPECT_EQ(e.intermediate_size, d.intermediate_size);
  EXPECT_EQ(e.max_position_embeddings, d.max_position_embeddings);
  EXPECT_EQ(e.eos_token_id, d.eos_token_id);
  EXPECT_DOUBLE_EQ(e.attention_dropout, 0.25);
  EXPECT_DOUBLE_EQ(e.layer_norm_eps, 1e-6);
  EXPECT_EQ(e.type_vocab_size, 1);
  const std::string text = read_bytes(path("written.json"));
  EXPECT_NE(text.find("\"RobertaForMaskedLM\""), std::string::npos);
  EXPECT_NE(text.find("\"position_embedding_type\": \"absolute\""), std::string::npos);
  EXPECT_NE(text.find("\"tie_word_embeddings\": true"), std::string::npos);
}

TEST_F(ConfigTest, GoldenConfig) {
  REQUIRE_GOLDEN();
  const RobertaConfig c = read_hf_config(golden_dir() + "/config.json");
  EXPECT_EQ(c.hidden_size, 32);
  EXPECT_DOUBLE_EQ(c.hidden_dropout, 0.0);
}

TEST_F(ConfigTest, UnsupportedActivation) {
  const std::string p =
      write_config("config.json", R"("hidden_act": "gelu")", R"("hidden_act": "relu")");
  expect_input_error([&] { read_hf_config(p); },
                     {p, "hidden_act 'relu' is not supported (only 'gelu', the erf form)"});
  const std::string q =
      write_config("new.json", R"("hidden_act": "gelu")", R"("hidden_act": "gelu_new")");
  expect_input_error([&] { read_hf_config(q); }, {q, "hidden_act 'gelu_new' is not supported"});
}

TEST_F(ConfigTest, MissingRequiredKey) {
  const std::string p = write_config("config.json", R"("hidden_size": 32,)", "");
  expect_input_error([&] { read_hf_config(p); }, {p, "required key 'hidden_size' is missing"});
}

TEST_F(ConfigTest, WrongType) {
  const std::string p =
      write_config("config.json", R"("hidden_size": 32)", R"("hidden_size": "32")");
  expect_input_error([&] { read_hf_config(p); },
                     {p, "key 'hidden_size' must be an integer, found string \"32\""});
  const std::string q =
      write_config("eps.json", R"("layer_norm_eps": 1e-05)", R"("layer_norm_eps": "small")");
  expect_input_error([&] { read_hf_config(q); }, {q, "key 'layer_norm_eps' must be a number"});
}

TEST_F(ConfigTest, InvalidJson) {
  const std::string p = path("config.json");
  write_bytes(p, "{\"hidden_size\": 32,\n\"vocab_size\": }");
  expect_input_error([&] { read_hf_config(p); }, {p, "not valid JSON"});
  const std::string none = path("absent.json");
  expect_input_error([&] { read_hf_config(none); }, {none, "cannot open"});
}

TEST_F(ConfigTest, InconsistentValues) {
  const std::string p =
      write_config("heads.json", R"("num_attention_heads": 4)", R"("num_attention_heads": 5)");
  expect_input_error([&] { read_hf_config(p); },
                     {p, "hidden_size 32 is not divisible by num_attention_heads 5"});
  const std::string q =
      write_config("zero.json", R"("num_hidden_layers": 2)", R"("num_hidden_layers": 0)");
  expect_input_error([&] { read_hf_config(q); }, {q, "'num_hidden_layers' must be positive"});
  const std::string r =
      write_config("bert.json", R"("model_type": "roberta")", R"("model_type": "bert")");
  expect_input_error([&] { read_hf_config(r); }, {r, "model_type 'bert' is not supported"});
  const std::string s =
      write_config("rel.json", R"("layer_norm_eps")",
                   R"("position_embedding_type": "relative_key", "layer_norm_eps")");
  expect_input_error([&] { read_hf_config(s); },
                     {s, "position_embedding_type 'relative_key' is not supported"});
  const std::string t = write_config("tiny-eps.json", R"("layer_norm_eps": 1e-05)", R"("layer_norm_eps": 1e-50)");
  expect_input_error([&] { read_hf_config(t); }, {t, "layer_norm_eps 1e-50 is 0 in float32"});
}

TEST_F(ConfigTest, CheckpointDirectoryWithoutFiles) {
  expect_input_error([&] { read_hf_roberta(dir_.string()); },
                     {dir_.string(), "config.json is missing"});
  write_config("config.json", "", "");
  expect_input_error([&] { read_hf_roberta(dir_.string()); },
                     {dir_.string(), "model.safetensors is missing"});
  write_bytes(path("pytorch_model.bin"), "x");
  expect_input_error([&] { read_hf_roberta(dir_.string()); }, {"convert it to safetensors"});
}

}  // namespace
