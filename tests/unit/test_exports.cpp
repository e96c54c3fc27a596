// Exports people can use (issue 14): the files beside the weights (tokenizer, model card,
// modeling_qarac.py and auto_map), reading an export back into the models, sharded safetensors
// bases, the vector files, and qarac-embed / qarac-generate against the models in process
// (qarac-embed --rank against the evaluator). tests/python/test_hf_export.py checks the same
// exports with transformers.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <fcntl.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "cli/vector_files.h"
#include "data/readers.h"
#include "io/hf_checkpoint.h"
#include "io/hf_export.h"
#include "io/qarac_export.h"
#include "io/safetensors.h"
#include "model/generate.h"
#include "model/init.h"
#include "support/test_support.h"
#include "support/training_fixtures.h"
#include "train/evaluation.h"
#include "train/export_card.h"

using namespace qarac;
using namespace qarac::test_support;
namespace fs = std::filesystem;

namespace {

const std::string kSample = QARAC_SAMPLE_DIR "/";
const std::string kTokenizer = kSample + "tokenizer";

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

nlohmann::json read_json(const fs::path& path) { return nlohmann::json::parse(read_file(path)); }

// Three tiny QARAC models over the sample tokenizer's vocabulary, heads and bases random.
struct Models {
  data::Tokenizer tokenizer = data::Tokenizer::from_dir(kTokenizer);
  QaracConfig config;
  std::unique_ptr<QaracModels> models;
  Models() {
    config.base.vocab_size = static_cast<int64_t>(tokenizer.vocab_size());
    config.base.hidden_size = 16;
    config.base.num_layers = 1;
    config.base.num_heads = 2;
    config.base.intermediate_size = 32;
    config.base.max_position_embeddings = 130;
    config.init_std = 0.3;
    RobertaEncoder base(config.base, DType::f32, Device::cpu());
    init_normal(base.parameters(), 0.3, 11);
    models = std::make_unique<QaracModels>(config, io::master_tensors(base.parameters()), DType::f32,
                                           Device::cpu());
  }
  std::string export_model(const std::string& dir, const std::string& model,
                           const io::ExportExtras& extras) {
    return io::export_hf_model(dir + "/export", model, config.base,
                               io::master_tensors(models->model_parameters(model)), extras);
  }
  io::ExportExtras extras() const {
    io::ExportExtras e;
    e.tokenizer_dir = kTokenizer;
    e.tokenizer_hash = tokenizer.hash();
    io::ModelCard card;
    card.base_model = "org/tiny-base";
    card.base_path = "/models/tiny-base";
    card.datasets = {"WikiQA-train.tsv", "snli_1.0_train.jsonl"};
    card.config_ini = "[train]\nsteps = 3\n";
    card.plan = "task plan\n";
    card.metrics = {{"qa.selection_accuracy", 0.25}, {"cs.confusion.neutral.neutral", 3}, {"forgetting.mlm_loss", 7.25}};
    card.metrics_step = 4;
    card.forgetting_first = 7.5;
    card.forgetting_first_step = 0;
    e.card = card;
    return e;
  }
};

const std::vector<std::string> kTexts = {"The cat sat on the mat.", "Where is Paris?",
                                         "A longer sentence, with punctuation; and more words."};

std::vector<std::vector<int32_t>> encode_all(const data::Tokenizer& t, const std::vector<std::string>& texts) {
  std::vector<std::vector<int32_t>> out;
  for (const std::string& s : texts) out.push_back(t.encode(s));
  return out;
}

std::vector<float> host(const Tensor& t) { return t.to(DType::f32).to_vector<float>(); }

class ExportsTest : public ::testing::Test {
 protected:
  TempDir tmp_{"exports"};
  Models m_;
};

// Every export carries the tokenizer (the two small JSON files written, as the sample has none),
// the model card, and for the QARAC models modeling_qarac.py and auto_map.
TEST_F(ExportsTest, ExportCarriesTokenizerCardAndCode) {
  for (const char* model : {"question_encoder", "answer_encoder", "decoder"}) {
    SCOPED_TRACE(model);
    const fs::path out = m_.export_model(tmp_.str(), model, m_.extras());
    for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt",
                          "special_tokens_map.json", "tokenizer_config.json", "README.md", "modeling_qarac.py"})
      EXPECT_TRUE(fs::is_regular_file(out / f)) << f;
    EXPECT_EQ(read_file(out / "tokenizer.json"), read_file(fs::path(kTokenizer) / "tokenizer.json"));
    EXPECT_EQ(data::Tokenizer::from_dir(out.string()).hash(), m_.tokenizer.hash());
    const nlohmann::json tc = read_json(out / "tokenizer_config.json");
    EXPECT_EQ(tc.at("tokenizer_class"), "RobertaTokenizer");
    EXPECT_EQ(tc.at("model_max_length"), 128);
    EXPECT_EQ(tc.at("mask_token").at("lstrip"), true);
    EXPECT_EQ(read_json(out / "special_tokens_map.json").at("pad_token"), "<pad>");

    EXPECT_EQ(read_file(out / "modeling_qarac.py"), read_file(QARAC_SOURCE_DIR "/src/io/modeling_qarac.py"));
    const nlohmann::json config = read_json(out / "config.json");
    const bool decoder = std::string(model) == "decoder";
    const std::string kind = decoder ? "Decoder" : "Encoder";
    // A model type of their own: transformers refuses them without trust_remote_code instead of
    // loading a plain RoBERTa that ignores the heads.
    EXPECT_EQ(config.at("model_type"), decoder ? "qarac_decoder" : "qarac_encoder");
    EXPECT_EQ(config.at("architectures"), nlohmann::json::array({"Qarac" + kind + "Model"}));
    EXPECT_EQ(config.at("auto_map"), (nlohmann::json{{"AutoConfig", "modeling_qarac.Qarac" + kind + "Config"},
                                                     {"AutoModel", "modeling_qarac.Qarac" + kind + "Model"}}));
    EXPECT_EQ(config.at("torch_dtype"), "float32");
    EXPECT_EQ(read_file(out / "README.md").find("pipeline_tag: text-generation"), std::string::npos);
    // sentence-transformers takes pooler_output, cut to the tokenizer's 128 tokens.
    EXPECT_EQ(fs::exists(out / "modules.json"), !decoder);
    if (!decoder) {
      EXPECT_EQ(read_json(out / "modules.json").at(0).at("type"), "sentence_transformers.models.Transformer");
      const nlohmann::json st = read_json(out / "sentence_bert_config.json");
      EXPECT_EQ(st.at("max_seq_length"), 128);
      EXPECT_EQ(st.at("modality_config").at("text").at("method_output_name"), "pooler_output");
      EXPECT_EQ(st.at("module_output_name"), "sentence_embedding");
    }

    const std::string card = read_file(out / "README.md");
    EXPECT_EQ(card.rfind("---\nlibrary_name: transformers\nbase_model: \"org/tiny-base\"\nlanguage: en\n"
                         "tags:\n- qarac\n- roberta\n", 0), 0u) << card;
    EXPECT_EQ(card.find("datasets:"), std::string::npos);  // the Hub reads dataset ids there, not file names
    for (const char* part : {"prepared (qarac-prep) from: `WikiQA-train.tsv`, `snli_1.0_train.jsonl`.\n",
                             "```ini\n[train]\nsteps = 3\n```", "from `/models/tiny-base`.", "task plan",
                             "## Held-out metrics at step 4\n", "| qa.selection_accuracy | 0.25 |",
                             "7.5 at the first evaluation (step 0), 7.25 at step 4.", "path = \".\"",
                             "truncation=True"})
      EXPECT_NE(card.find(part), std::string::npos) << part;
    EXPECT_EQ(card.find("confusion"), std::string::npos);
  }
  // A pre-trained base gets the tokenizer and card, not the QARAC code.
  RobertaEncoder base(m_.config.base, DType::f32, Device::cpu());
  const fs::path out = io::export_hf_model(tmp_.str() + "/export", "base", m_.config.base,
                                           io::master_tensors(base.parameters()), m_.extras());
  EXPECT_TRUE(fs::is_regular_file(out / "tokenizer.json"));
  EXPECT_FALSE(fs::exists(out / "modeling_qarac.py"));
  EXPECT_FALSE(fs::exists(out / "modules.json"));
  const nlohmann::json config = read_json(out / "config.json");
  EXPECT_FALSE(config.contains("auto_map"));
  EXPECT_EQ(config.at("model_type"), "roberta");  // AutoModelForMaskedLM loads it
  EXPECT_EQ(config.at("architectures"), nlohmann::json::array({"RobertaForMaskedLM"}));
}

// What a run gives its exports: the tokenizer, the card's base (a Hub id from the Hugging Face
// cache's folder names), the last evaluation with its step and forgetting.mlm_loss first; a metric
// that was not finite (null in metrics.jsonl) is NaN, not an earlier evaluation's value.
TEST_F(ExportsTest, ExportExtrasFromTheRun) {
  TrainConfig c;
  c.base = tmp_.str() + "/hub/models--FacebookAI--roberta-base/snapshots/0123abc";
  c.eval_tokenizer = kTokenizer;
  c.output = tmp_.str();
  c.data_dir = tmp_.str();  // no task streams: no datasets, no hash
  std::ofstream(tmp_.path / "metrics.jsonl")
      << R"({"step": 0, "eval": true, "forgetting.mlm_loss": 7.5, "qa.loss": 2})" "\n"
      << R"({"step": 1, "loss": 3.0})" "\n"
      << R"({"step": 2, "eval": true, "forgetting.mlm_loss": 7.25, "qa.loss": 1})" "\n"
      << R"({"step": 3, "eval": true, "forgetting.mlm_loss": null, "qa.loss": 0.5})" "\n"
      << R"({"step": 4, "eval": tr)";  // a line cut short by a killed run
  EXPECT_TRUE(training_data_note(c).datasets.empty());
  // The data as the run read it at its start (by now data.dir may be prepared again, or gone).
  const io::ExportExtras e = export_extras(c, "the plan\n", {"fnv1a64:00000000000000ab", {"a.csv", "b.txt"}});
  EXPECT_EQ(e.tokenizer_hash, "fnv1a64:00000000000000ab");
  EXPECT_EQ(e.card->datasets, (std::vector<std::string>{"a.csv", "b.txt"}));
  EXPECT_EQ(e.tokenizer_dir, kTokenizer);
  ASSERT_TRUE(e.card);
  EXPECT_EQ(e.card->base_model, "FacebookAI/roberta-base");
  EXPECT_EQ(e.card->base_path, c.base);
  EXPECT_EQ(e.card->plan, "the plan\n");
  EXPECT_NE(e.card->config_ini.find("[model]"), std::string::npos);
  EXPECT_EQ(e.card->metrics_step, 3);
  EXPECT_EQ(e.card->metrics.size(), 2u);
  EXPECT_TRUE(std::isnan(e.card->metrics.at("forgetting.mlm_loss")));
  EXPECT_EQ(e.card->metrics.at("qa.loss"), 0.5);
  EXPECT_EQ(e.card->forgetting_first, 7.5);
  EXPECT_EQ(e.card->forgetting_first_step, 0);
  io::write_model_card(tmp_.str(), "answer_encoder", *e.card);
  const std::string card = read_file(tmp_.path / "README.md");
  for (const char* part : {"## Held-out metrics at step 3\n", "| forgetting.mlm_loss | nan |",
                           "7.5 at the first evaluation (step 0), nan at step 3."})
    EXPECT_NE(card.find(part), std::string::npos) << part << "\n" << card;
  c.base = tmp_.str();
  EXPECT_EQ(export_extras(c, "", {}).card->base_model, "");
}

// A base's tokenizer_config.json is kept, with the tokenizer's class added when it names none:
// AutoTokenizer would look for it through config.json's model_type, QARAC's own (the sample's
// tokenizer has no such file, for which one is written).
TEST_F(ExportsTest, ATokenizerConfigWithoutItsClassGetsIt) {
  const fs::path tokenizer = tmp_.path / "tokenizer";
  fs::copy(kTokenizer, tokenizer, fs::copy_options::recursive);
  std::ofstream(tokenizer / "tokenizer_config.json") << R"({"model_max_length": 512})";
  io::ExportExtras e = m_.extras();
  e.tokenizer_dir = tokenizer.string();
  const fs::path out = m_.export_model(tmp_.str(), "answer_encoder", e);
  EXPECT_EQ(read_json(out / "tokenizer_config.json"),
            (nlohmann::json{{"model_max_length", 512}, {"tokenizer_class", "RobertaTokenizer"}}));
  std::ofstream(tokenizer / "tokenizer_config.json") << R"({"tokenizer_class": "RobertaTokenizerFast"})";
  EXPECT_EQ(read_json(fs::path(m_.export_model(tmp_.str(), "answer_encoder", e)) / "tokenizer_config.json")
                .at("tokenizer_class"),
            "RobertaTokenizerFast");
}

// A tokenizer other than the data's is refused, and the export is not made.
TEST_F(ExportsTest, TokenizerOfOtherDataIsRefused) {
  io::ExportExtras e = m_.extras();
  e.tokenizer_hash = "fnv1a64:0000000000000000";
  expect_input_error([&] { m_.export_model(tmp_.str(), "answer_encoder", e); },
                     {kTokenizer, "is not the one the task streams were made with"});
  EXPECT_FALSE(fs::exists(tmp_.path / "export" / "answer_encoder"));
  e.tokenizer_dir = tmp_.str();
  expect_input_error([&] { m_.export_model(tmp_.str(), "answer_encoder", e); },
                     {tmp_.str(), "no tokenizer.json nor vocab.json + merges.txt"});
}

// An export read back computes what the models computed: the same vectors, the same tokens.
TEST_F(ExportsTest, ExportsReadBackIntoTheModels) {
  const auto ids = encode_all(m_.tokenizer, kTexts);
  const TokenBatch batch = TokenBatch::from_sequences(ids, m_.config.base.pad_token_id, Device::cpu());
  SentenceEncoder::Activations a, b, c, d;
  const std::vector<float> questions = host(m_.models->question_encoder().forward(batch, {}, c));
  auto question_encoder = io::load_encoder_export(m_.export_model(tmp_.str(), "question_encoder", m_.extras()),
                                                  DType::f32, Device::cpu());
  EXPECT_EQ(host(question_encoder.model->forward(batch, {}, d)), questions);
  const std::vector<float> expected = host(m_.models->answer_encoder().forward(batch, {}, a));
  auto loaded = io::load_encoder_export(m_.export_model(tmp_.str(), "answer_encoder", m_.extras()),
                                        DType::f32, Device::cpu());
  EXPECT_EQ(host(loaded.model->forward(batch, {}, b)), expected);
  EXPECT_NE(questions, expected) << "the two encoders' exports are told apart";

  Tensor v = Tensor::from_vector(expected, {3, m_.config.base.hidden_size});
  const std::vector<std::vector<int32_t>> start(3, {m_.tokenizer.bos_id()});
  const auto tokens = greedy_decode(m_.models->decoder(), v, start, 6, m_.tokenizer.eos_id());
  auto decoder = io::load_decoder_export(m_.export_model(tmp_.str(), "decoder", m_.extras()), DType::f32,
                                         Device::cpu());
  EXPECT_EQ(greedy_decode(*decoder.model, v, start, 6, m_.tokenizer.eos_id()), tokens);
  // Without a stop token every sequence takes all the steps; with steps of its own, each takes
  // its steps, the first tokens of the same decoding (a sequence's do not depend on when the
  // others stop).
  const auto all = greedy_decode(*decoder.model, v, start, 6);
  for (const auto& t : all) EXPECT_EQ(t.size(), 6u);
  const std::vector<int64_t> steps = {2, 0, 5};
  const auto some = greedy_decode(*decoder.model, v, start, steps);
  for (size_t i = 0; i < 3; ++i)
    EXPECT_EQ(some[i], std::vector<int32_t>(all[i].begin(), all[i].begin() + steps[i])) << i;
}

// Exports whose weights would give garbage without a word are refused, naming the tensor: a NaN,
// a decoder head matrix missing while config.json unties it (it would fall back to the
// embeddings), or stored while config.json ties it. A tensor the model has no parameter for is
// said.
TEST_F(ExportsTest, ExportsWithUnusableWeightsAreRefused) {
  const fs::path dec = m_.export_model(tmp_.str(), "decoder", m_.extras());
  const std::string weights = (dec / "model.safetensors").string();
  const std::string original = (tmp_.path / "original.safetensors").string();
  fs::copy_file(weights, original);
  // The head under a name of its own: RobertaForCausalLM finds none of its head's weights there.
  const TensorMap stored = io::read_safetensors(original);
  ASSERT_TRUE(stored.count("qarac_lm_head.decoder.weight")) << "the fixture's decoder head is untied";
  for (const auto& [name, t] : stored) EXPECT_NE(name.rfind("lm_head.", 0), 0u) << name;
  const auto rewrite = [&](const std::function<void(TensorMap&)>& edit) {
    TensorMap t = io::read_safetensors(original);  // its own tensors: edits reach no other map
    edit(t);
    io::write_safetensors(weights, t);
  };
  rewrite([](TensorMap& t) { t.at("qarac_lm_head.bias").data<float>()[3] = std::nanf(""); });
  expect_input_error([&] { io::load_decoder_export(dec.string(), DType::f32, Device::cpu()); },
                     {weights, "tensor 'qarac_lm_head.bias' holds a non-finite value (NaN or infinity) at element 3"});
  rewrite([](TensorMap& t) { t.erase("qarac_lm_head.decoder.weight"); });
  expect_input_error([&] { io::load_decoder_export(dec.string(), DType::f32, Device::cpu()); },
                     {weights, "tensor 'qarac_lm_head.decoder.weight' is missing (config.json: \"tie_word_embeddings\": false)"});
  rewrite([](TensorMap& t) { t.emplace("extra.weight", Tensor::zeros({2}, DType::f32)); });
  ::testing::internal::CaptureStderr();
  io::load_decoder_export(dec.string(), DType::f32, Device::cpu());
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find(weights + ": 1 tensors match no parameter and were not loaded: extra.weight"), std::string::npos)
      << log;
  fs::copy_file(original, weights, fs::copy_options::overwrite_existing);
  std::string config = read_file(dec / "config.json");
  const size_t at = config.find("\"tie_word_embeddings\": false");
  ASSERT_NE(at, std::string::npos) << config;
  config.replace(at, std::strlen("\"tie_word_embeddings\": false"), "\"tie_word_embeddings\": true");
  std::ofstream((dec / "config.json").string()) << config;
  expect_input_error([&] { io::load_decoder_export(dec.string(), DType::f32, Device::cpu()); },
                     {weights, "holds 'qarac_lm_head.decoder.weight', but config.json ties the LM head"});
}

// Finite weights that overflow in a forward pass (a LayerNorm weight of 1e30) give no output:
// qarac-embed refuses the vector, naming the text, and writes nothing (it wrote -nan, which no
// JSON reader takes); qarac-generate refuses the scores, naming the rows (it decoded NaN as
// tokens 0).
TEST_F(ExportsTest, OutputsThatAreNotFiniteAreRefused) {
  const std::string ae = m_.export_model(tmp_.str() + "/a", "answer_encoder", m_.extras());
  const std::string dec = m_.export_model(tmp_.str() + "/d", "decoder", m_.extras());
  const std::string texts = (tmp_.path / "texts.txt").string(), vectors = (tmp_.path / "v.npy").string();
  std::ofstream(texts) << "the river\nflows into the sea\n";
  CliResult r = run_command(std::string(QARAC_EMBED_EXE) + " --model " + ae + " --input " + texts + " --output " + vectors);
  ASSERT_EQ(r.code, 0) << r.output;
  const auto overflow = [](const std::string& dir) {
    TensorMap tensors = io::read_safetensors(dir + "/model.safetensors");
    int scaled = 0;
    for (auto& [name, w] : tensors)
      if (name.find("embeddings.LayerNorm.weight") != std::string::npos) {
        w = Tensor::from_vector(std::vector<float>(static_cast<size_t>(w.numel()), 1e30f), w.shape());
        ++scaled;
      }
    EXPECT_EQ(scaled, 1) << dir;
    io::write_safetensors(dir + "/model.safetensors", tensors);
  };
  overflow(ae);
  overflow(dec);
  const std::string out = (tmp_.path / "out.jsonl").string();
  r = run_command(std::string(QARAC_EMBED_EXE) + " --model " + ae + " --input " + texts + " --output " + out);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(ae + ": the vector of text 1 is not finite (NaN or infinity)"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out));
  r = run_command(std::string(QARAC_GENERATE_EXE) + " --decoder " + dec + " --vectors " + vectors);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(dec + ": decoding " + vectors +
                          ": greedy decoding: the decoder's scores for vector 0 are not finite"),
            std::string::npos)
      << r.output;
}

// A finite vector whose squares overflow float32 is refused, naming its row: the LayerNorm of
// the decoder's slot row summed squares past float32's range, took r = 1/sqrt(inf) = 0 and gave β
// whatever the vector (before: row 4, its entries 1e20, decoded to six <s>, an empty text, without
// a word, as every vector of norm above about 1e19 did). Row 3, its entries 1e15, decodes as row 2,
// 1e10 (attention all on the vector), and rows after a refused one are in later batches.
TEST_F(ExportsTest, VectorsThatOverflowAreRefusedNamingTheRow) {
  const std::string dec = m_.export_model(tmp_.str() + "/d", "decoder", m_.extras());
  cli::Vectors vectors;
  vectors.cols = m_.config.base.hidden_size;
  for (const float scale : {1.0f, 1.0f, 1e10f, 1e15f, 1e20f}) {
    for (int64_t k = 0; k < vectors.cols; ++k) vectors.values.push_back(scale * std::sin(1.0f + static_cast<float>(k)));
    ++vectors.rows;
  }
  const std::string npy = (tmp_.path / "v.npy").string(), out = (tmp_.path / "out.jsonl").string();
  cli::write_vectors(npy, vectors);
  const std::string generate = std::string(QARAC_GENERATE_EXE) + " --decoder " + dec + " --vectors " + npy +
                               " --max-tokens 6 --batch 2 --output " + out;
  CliResult r = run_command(generate);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("qarac-generate: error: " + dec + ": decoding " + npy +
                          ": greedy decoding: the decoder's scores for vector 4 are not finite (NaN or infinity) "
                          "at its token 1: its weights or the vector overflow in a forward pass\n"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(out));
  vectors.values.resize(static_cast<size_t>(4 * vectors.cols));
  vectors.rows = 4;
  cli::write_vectors(npy, vectors);
  r = run_command(generate);
  ASSERT_EQ(r.code, 0) << r.output;
  std::ifstream lines(out);
  std::vector<nlohmann::json> decoded;
  for (std::string line; std::getline(lines, line);) decoded.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(decoded.size(), 4u);
  EXPECT_EQ(decoded[3], decoded[2]);
  EXPECT_EQ(decoded[1], decoded[0]);
  EXPECT_NE(decoded[2].at("text"), "");
}

// What is written is checked, after the conversion to float32: an f64 run's weight past float32's
// range, finite in f64, is refused naming the tensor, and no export is left.
TEST_F(ExportsTest, WeightsBeyondFloat32AreRefused) {
  TensorMap tensors = io::master_tensors(m_.models->model_parameters("answer_encoder"));
  Tensor wide = tensors.at("pooling.global_projection.weight").to(DType::f64);
  wide.data<double>()[5] = 1e39;
  tensors["pooling.global_projection.weight"] = wide;
  expect_input_error([&] { io::export_hf_model(tmp_.str() + "/export", "answer_encoder", m_.config.base, tensors); },
                     {"export of answer_encoder (float32): tensor 'pooling.global_projection.weight' holds a "
                      "non-finite value (NaN or infinity) at element 5"});
  EXPECT_FALSE(fs::exists(tmp_.path / "export" / "answer_encoder"));
  wide.data<double>()[5] = 1e38;  // within float32's range
  io::export_hf_model(tmp_.str() + "/export", "answer_encoder", m_.config.base, tensors);
  EXPECT_TRUE(fs::exists(tmp_.path / "export" / "answer_encoder" / "model.safetensors"));
}

// A base saved in shards (model.safetensors.index.json) reads as the single file does.
TEST_F(ExportsTest, ShardedSafetensorsLoad) {
  const fs::path single = tmp_.path / "single", sharded = tmp_.path / "sharded";
  write_tiny_base(single, kTokenizer);
  fs::create_directories(sharded);
  fs::copy_file(single / "config.json", sharded / "config.json");
  const TensorMap all = io::read_safetensors((single / "model.safetensors").string());
  TensorMap part[2];
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  int i = 0;
  for (const auto& [name, t] : all) {
    const int shard = i++ % 2;
    part[shard].emplace(name, t);
    index["weight_map"][name] = "model-0000" + std::to_string(shard + 1) + "-of-00002.safetensors";
  }
  for (int s = 0; s < 2; ++s)
    io::write_safetensors((sharded / ("model-0000" + std::to_string(s + 1) + "-of-00002.safetensors")).string(),
                          part[s]);
  std::ofstream(sharded / "model.safetensors.index.json") << index.dump();
  const io::HfRoberta a = io::read_hf_roberta(single.string()), b = io::read_hf_roberta(sharded.string());
  ASSERT_EQ(a.encoder.size(), b.encoder.size());
  for (const auto& [name, t] : a.encoder) EXPECT_EQ(host(t), host(b.encoder.at(name))) << name;
  EXPECT_EQ(a.lm_head.size(), b.lm_head.size());

  const std::string idx = (sharded / "model.safetensors.index.json").string();
  const std::string moved = index["weight_map"].begin().value();
  index["weight_map"][index["weight_map"].begin().key()] = moved == "model-00001-of-00002.safetensors"
                                                               ? "model-00002-of-00002.safetensors"
                                                               : "model-00001-of-00002.safetensors";
  std::ofstream(idx) << index.dump();
  expect_input_error([&] { io::read_hf_roberta(sharded.string()); }, {"is not the index's for this shard"});
  std::ofstream(idx) << R"({"weight_map": {"x": "../model.safetensors"}})";
  expect_input_error([&] { io::read_hf_roberta(sharded.string()); }, {idx, "is not a file name in the model's folder"});
  std::ofstream(idx) << R"({"weight_map": {"x": "gone.safetensors"}})";
  expect_input_error([&] { io::read_hf_roberta(sharded.string()); }, {idx, "shard gone.safetensors is missing"});
  std::ofstream(idx) << "not json";
  expect_input_error([&] { io::read_hf_roberta(sharded.string()); }, {idx, "not a JSON object"});
  fs::remove(idx);
  std::ofstream(sharded / "pytorch_model.bin") << "x";
  expect_input_error([&] { io::read_hf_roberta(sharded.string()); },
                     {sharded.string(), "pytorch_model.bin", "convert it to safetensors first"});
}

// io::write_folder, which export/ and best/ are written with: the new set whole, or after a
// failure (a full disk) the old one as it was, and no temporary folder either way.
TEST_F(ExportsTest, WriteFolderReplacesTheWholeSetOrNothing) {
  const fs::path set = tmp_.path / "set";
  const auto write = [](const fs::path& dir, const std::vector<std::string>& names, const std::string& text) {
    fs::create_directories(dir);
    for (const std::string& name : names) std::ofstream(dir / name) << text;
  };
  io::write_folder(set, [&](const fs::path& temp) { write(temp, {"a", "b"}, "1"); });
  EXPECT_EQ(read_file(set / "a") + read_file(set / "b"), "11");
  expect_input_error([&] {
    io::write_folder(set, [&](const fs::path& temp) {
      write(temp, {"a"}, "2");
      throw InputError("model.safetensors: No space left on device");
    });
  }, {"No space left on device"});
  EXPECT_EQ(read_file(set / "a") + read_file(set / "b"), "11");
  EXPECT_FALSE(fs::exists(tmp_.path / "set.tmp"));
  io::write_folder(set, [&](const fs::path& temp) { write(temp, {"a"}, "3"); });
  EXPECT_EQ(read_file(set / "a"), "3");
  EXPECT_FALSE(fs::exists(set / "b")) << "a file of the old set was kept";
  EXPECT_FALSE(fs::exists(tmp_.path / "set.tmp"));
  // A link (an export kept on another disk) is written through, and stays a link.
  const fs::path link = tmp_.path / "link";
  fs::create_directory_symlink(set, link);
  io::write_folder(link, [&](const fs::path& temp) { write(temp, {"a"}, "4"); });
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_EQ(read_file(set / "a"), "4");
  // A link that cannot be followed is refused (its empty resolution made "./.tmp" the temporary
  // folder, in the working directory).
  fs::create_symlink(tmp_.path / "loop_b", tmp_.path / "loop_a");
  fs::create_symlink(tmp_.path / "loop_a", tmp_.path / "loop_b");
  bool written = false;
  expect_input_error([&] { io::write_folder(tmp_.path / "loop_a", [&](const fs::path&) { written = true; }); },
                     {(tmp_.path / "loop_a").string() + ": a link that cannot be followed"});
  EXPECT_FALSE(written);
}

// A link's target is replaced whole: one that holds anything but models and the set's own entries
// (a folder of the user's that another member of a shared run directory linked export/ to, or a
// slip) is refused, and kept. Before, its contents were swapped out and deleted.
TEST_F(ExportsTest, WriteFolderKeepsWhatALinkedFolderHoldsBesideModels) {
  const fs::path mine = tmp_.path / "projects", link = tmp_.path / "export";
  fs::create_directories(mine / "paper");
  std::ofstream(mine / "paper" / "results.csv") << "kept";
  fs::create_directory_symlink(mine, link);
  bool written = false;
  const auto write = [&](const fs::path& temp) {
    fs::create_directories(temp / "decoder");
    std::ofstream(temp / "decoder" / "config.json") << "{}";
    written = true;
  };
  expect_input_error([&] { io::write_folder(link, write); },
                     {link.string() + " links to " + mine.string(), "which holds paper", "would delete it"});
  EXPECT_TRUE(written);
  EXPECT_EQ(read_file(mine / "paper" / "results.csv"), "kept");
  EXPECT_FALSE(fs::exists(tmp_.path / "projects.tmp"));
  // Models of an earlier set (other names too) and the set's own entries are replaced.
  fs::remove_all(mine / "paper");
  fs::create_directories(mine / "encoder");
  std::ofstream(mine / "encoder" / "config.json") << "{}";
  std::ofstream(mine / "decoder") << "an earlier set's file";
  io::write_folder(link, write);
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_EQ(read_file(mine / "decoder" / "config.json"), "{}");
  EXPECT_FALSE(fs::exists(mine / "encoder"));
  // A link to a file is no folder to replace.
  fs::remove(link);
  std::ofstream(tmp_.path / "file.txt") << "kept";
  fs::create_symlink(tmp_.path / "file.txt", link);
  expect_input_error([&] { io::write_folder(link, write); }, {link.string() + " links to ", "Not a directory"});
  EXPECT_EQ(read_file(tmp_.path / "file.txt"), "kept");
}

// A set the user made read-only (chmod -R a-w export, to keep it) is swapped out all the same, and
// its folder then cannot be removed. Before, that was silent: it stayed as "<folder>.tmp", and the
// next write failed there, at the end of its run, on a path the user never named. Now the swap
// says so, and the start of the next run (remove_unfinished_folder) refuses. Run by another user
// (root removes anything), in a child.
TEST_F(ExportsTest, ASetThatCannotBeRemovedIsSaid) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root, to run the writes as another user";
  const fs::path home = tmp_.path / "nobody", set = home / "export", log = tmp_.path / "stderr.txt";
  fs::create_directories(home);
  ASSERT_EQ(::chown(home.c_str(), 65534, 65534), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ::dup2(fd, 2) < 0 || ::setgroups(0, nullptr) != 0 || ::setresgid(65534, 65534, 65534) != 0 ||
        ::setresuid(65534, 65534, 65534) != 0)
      ::_exit(10);
    const auto write = [](const fs::path& temp) {
      fs::create_directories(temp / "decoder");
      std::ofstream(temp / "decoder" / "config.json") << "{}";
    };
    try {
      io::write_folder(set, write);
      if (::chmod((set / "decoder").c_str(), 0555) != 0) ::_exit(11);
      io::write_folder(set, write);  // swapped in; the old set stays, read-only, as export.tmp
      if (!fs::exists(home / "export.tmp" / "decoder" / "config.json")) ::_exit(12);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      ::_exit(13);
    }
    try {
      io::remove_unfinished_folder(set);
    } catch (const InputError& e) {
      std::fprintf(stderr, "refused: %s\n", e.what());
      ::_exit(0);
    }
    ::_exit(14);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  const std::string said = read_file(log);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status << ": " << said;
  EXPECT_NE(said.find(set.string() + ": the previous one, swapped out to " + (home / "export.tmp").string() +
                      ", cannot be removed (Permission denied)"),
            std::string::npos)
      << said;
  EXPECT_NE(said.find("refused: " + (home / "export.tmp").string() + ": cannot remove what an earlier write of " +
                      set.string() + " left there (Permission denied): remove it"),
            std::string::npos)
      << said;
}

// .npy and JSON lines read back what was written; .h5 is written.
TEST_F(ExportsTest, VectorFilesRoundTrip) {
  cli::Vectors v;
  v.rows = 2;
  v.cols = 3;
  v.values = {1.0f, -2.5f, 3.14159274f, 1e-30f, 0.1f, -0.0f};
  for (const char* name : {"v.npy", "v.jsonl"}) {
    const std::string path = (tmp_.path / name).string();
    cli::write_vectors(path, v);
    const cli::Vectors r = cli::read_vectors(path);
    EXPECT_EQ(r.rows, 2);
    EXPECT_EQ(r.cols, 3);
    EXPECT_EQ(r.values, v.values) << name;
  }
  EXPECT_EQ(fs::file_size(tmp_.path / "v.npy") % 64, 24u);  // header padded to 64, then 6 floats
  cli::write_vectors((tmp_.path / "v.h5").string(), v);
  EXPECT_TRUE(fs::is_regular_file(tmp_.path / "v.h5"));
  std::ofstream(tmp_.path / "bad.jsonl") << "[1, 2]\n[1]\n";
  expect_input_error([&] { cli::read_vectors((tmp_.path / "bad.jsonl").string()); },
                     {"bad.jsonl:2", "1 numbers, the first vector has 2"});
  // Non-finite vectors would decode to garbage: refused, naming where.
  std::ofstream(tmp_.path / "big.jsonl") << "[1, 2]\n[1e39, 0]\n";
  expect_input_error([&] { cli::read_vectors((tmp_.path / "big.jsonl").string()); },
                     {"big.jsonl:2", "1e+39 is beyond the float range"});
  // f64 .npy (numpy's default) beyond float's range: infinite, so refused (its conversion to
  // float was undefined behaviour); and a file cut inside its header.
  {
    std::string header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2), }";
    header.resize(128 - 10 - 1, ' ');  // the data 64-byte aligned, as numpy writes it
    header += '\n';
    std::ofstream out(tmp_.path / "big.npy", std::ios::binary);
    out.write("\x93NUMPY\x01\x00", 8);
    out.put(static_cast<char>(header.size())).put(0) << header;
    const double values[2] = {0.5, -1e300};
    out.write(reinterpret_cast<const char*>(values), sizeof values);
  }
  expect_input_error([&] { cli::read_vectors((tmp_.path / "big.npy").string()); },
                     {"big.npy: row 0 (from 0) has -inf at column 1", "must be finite"});
  fs::resize_file(tmp_.path / "big.npy", 40);
  expect_input_error([&] { cli::read_vectors((tmp_.path / "big.npy").string()); },
                     {"big.npy: truncated in its header (30 of 118 bytes)"});
  v.values[4] = std::nanf("");
  cli::write_vectors((tmp_.path / "nan.npy").string(), v);
  expect_input_error([&] { cli::read_vectors((tmp_.path / "nan.npy").string()); },
                     {"nan.npy: row 1 (from 0) has nan at column 1", "must be finite"});
  std::ofstream(tmp_.path / "t.jsonl") << "{\"text\": \"a\"}\n\"b\"\n{\"other\": 1}\n";
  expect_input_error([&] { cli::read_texts((tmp_.path / "t.jsonl").string(), "text"); },
                     {"t.jsonl:3", "no string field \"text\""});
  // Gzip files are read as their text, in the format of the name before ".gz".
  std::ofstream(tmp_.path / "t.jsonl.gz", std::ios::binary) << gzipped("{\"text\": \"a\"}\n\"b\"\n");
  EXPECT_EQ(cli::read_texts((tmp_.path / "t.jsonl.gz").string(), "text"), (std::vector<std::string>{"a", "b"}));
  std::ofstream(tmp_.path / "t.txt.gz", std::ios::binary) << gzipped("\"a\"\n");
  EXPECT_EQ(cli::read_texts((tmp_.path / "t.txt.gz").string(), "text"), std::vector<std::string>{"\"a\""});
}

// qarac-embed and qarac-generate give what the models give in process; --rank gives the
// evaluator's figures on a WikiQA stream.
TEST_F(ExportsTest, ProgramsMatchTheModels) {
  const std::string qe = m_.export_model(tmp_.str(), "question_encoder", m_.extras());
  const std::string ae = m_.export_model(tmp_.str(), "answer_encoder", m_.extras());
  const std::string dec = m_.export_model(tmp_.str(), "decoder", m_.extras());
  const fs::path texts = tmp_.path / "texts.jsonl";
  {
    std::ofstream out(texts);
    for (const std::string& t : kTexts) out << nlohmann::json{{"sentence", t}}.dump() << "\n";
  }
  const std::string npy = (tmp_.path / "v.npy").string();
  CliResult r = run_command(std::string(QARAC_EMBED_EXE) + " --model " + ae + " --input " + texts.string() +
                            " --field sentence --output " + npy);
  ASSERT_EQ(r.code, 0) << r.output;
  SentenceEncoder::Activations acts;
  const auto ids = encode_all(m_.tokenizer, kTexts);
  const std::vector<float> expected = host(m_.models->answer_encoder().forward(
      TokenBatch::from_sequences(ids, m_.config.base.pad_token_id, Device::cpu()), {}, acts));
  EXPECT_EQ(cli::read_vectors(npy).values, expected);

  r = run_command(std::string(QARAC_GENERATE_EXE) + " --decoder " + dec + " --vectors " + npy + " --max-tokens 5");
  ASSERT_EQ(r.code, 0) << r.output;
  const Tensor v = Tensor::from_vector(expected, {3, m_.config.base.hidden_size});
  const auto tokens = greedy_decode(m_.models->decoder(), v, std::vector<std::vector<int32_t>>(3, {0}), 5,
                                    m_.tokenizer.eos_id());
  std::istringstream lines(r.output);
  std::string line;
  for (const auto& t : tokens) {
    ASSERT_TRUE(std::getline(lines, line));
    const nlohmann::json j = nlohmann::json::parse(line);
    EXPECT_EQ(j.at("tokens").get<std::vector<int32_t>>(), t);
    EXPECT_EQ(j.at("text"), m_.tokenizer.decode(t, true));
  }
  // From text: the encoder's vectors, then the same decoding.
  r = run_command(std::string(QARAC_GENERATE_EXE) + " --decoder " + dec + " --encoder " + ae + " --input " +
                  texts.string() + " --field sentence --max-tokens 5");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(nlohmann::json::parse(r.output.substr(0, r.output.find('\n'))).at("tokens").get<std::vector<int32_t>>(),
            tokens[0]);

  // --rank on the sample's WikiQA dev set, against the evaluator on the same stream.
  const fs::path stream = tmp_.path / "qa";
  r = run_command(std::string(QARAC_PREP_EXE) + " --tokenizer " + kTokenizer + " --out " + stream.string() +
                  " --max-length 128 --wikiqa " + kSample + "WikiQA-dev.tsv");
  ASSERT_EQ(r.code, 0) << r.output;
  EvalOptions options;
  options.data_dir = stream.string();
  QaracEvaluator evaluator(options);
  const EvalResult eval = evaluator.evaluate({*m_.models, {}});
  // The stream, the TSV itself (read and tokenised as qarac-prep does: no example of the sample
  // needs truncating), and the same examples as QA JSON lines (qarac-prep --jsonl qa:).
  const std::string jsonl = (tmp_.path / "qa.jsonl").string();
  {
    std::ofstream out(jsonl);
    data::read_examples(kSample + "WikiQA-dev.tsv", data::Format::wikiqa, data::Encoding::utf8, data::OnError::fail,
                        [&](data::Example&& e) {
                          out << nlohmann::json{{"question", e.fields[0]}, {"answer", e.fields[1]},
                                                {"candidates", e.candidates}}.dump() << "\n";
                        });
  }
  for (const std::string& source : {(stream / "question_answering.h5").string(), kSample + "WikiQA-dev.tsv", jsonl}) {
    r = run_command(std::string(QARAC_EMBED_EXE) + " --rank " + source + " --question-encoder " + qe +
                    " --answer-encoder " + ae);
    ASSERT_EQ(r.code, 0) << r.output;
    for (const char* metric : {"qa.selection_accuracy", "qa.selection_mrr", "qa.selection_questions"}) {
      char expected_line[96];
      const double x = eval.metrics.at(metric);  // a count printed as a whole number
      const bool count = std::string(metric) == "qa.selection_questions";
      std::snprintf(expected_line, sizeof expected_line, count ? "%s %.0f\n" : "%s %.6f\n", metric, x);
      EXPECT_NE(r.output.find(expected_line), std::string::npos) << source << ": " << expected_line << " in\n"
                                                                 << r.output;
    }
  }

  // A TSV is read as qarac-prep reads it: a malformed row ends the ranking (before: skipped, with
  // metrics of the rest), and a file of no example says so.
  const std::string sample_tsv = read_file(kSample + "WikiQA-dev.tsv");
  const std::string header = sample_tsv.substr(0, sample_tsv.find('\n') + 1);
  std::ofstream(tmp_.path / "bad.tsv") << sample_tsv << "Q9\tq\tD9\tt\tD9-0\ts\tyes\n";
  std::ofstream(tmp_.path / "empty.tsv") << header;
  for (const auto& [file, message] : std::vector<std::pair<std::string, std::string>>{
           {"bad.tsv", "bad.tsv:" + std::to_string(std::count(sample_tsv.begin(), sample_tsv.end(), '\n') + 1) + ": "},
           {"empty.tsv", "empty.tsv: holds no examples to rank"}}) {
    r = run_command(std::string(QARAC_EMBED_EXE) + " --rank " + (tmp_.path / file).string() + " --question-encoder " +
                    qe + " --answer-encoder " + ae);
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find(message), std::string::npos) << message << " in\n" << r.output;
  }

  // Usage errors: one line, exit 2.
  for (const std::string& args : {std::string(" --model ") + ae, std::string(" --model ") + ae + " --input x --device tpu",
                                  std::string(" --rank x --question-encoder ") + qe}) {
    r = run_command(std::string(QARAC_EMBED_EXE) + args);
    EXPECT_EQ(r.code, 2) << args << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  }
  r = run_command(std::string(QARAC_GENERATE_EXE) + " --decoder " + dec + " --vectors " + npy + " --input x");
  EXPECT_EQ(r.code, 2) << r.output;
  // An export of the other kind is named as such, before its weights are read.
  r = run_command(std::string(QARAC_GENERATE_EXE) + " --decoder " + ae + " --vectors " + npy);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(ae + ": is an encoder export or a plain RoBERTa (config.json: \"is_decoder\": false); the "
                          "decoder export is needed here"),
            std::string::npos)
      << r.output;
  r = run_command(std::string(QARAC_EMBED_EXE) + " --model " + dec + " --input " + texts.string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(dec + ": is a decoder export"), std::string::npos) << r.output;

  // Empty lines of a text file are skipped, and said: the rows no longer follow the lines.
  const fs::path gaps = tmp_.path / "gaps.txt";
  std::ofstream(gaps) << kTexts[0] << "\n\n" << kTexts[1] << "\n\n";
  r = run_command(std::string(QARAC_EMBED_EXE) + " --model " + ae + " --input " + gaps.string() + " --output " + npy);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(cli::read_vectors(npy).rows, 2);
  EXPECT_NE(r.output.find("gaps.txt: 2 empty lines skipped (the first: line 2): the output has a row per non-empty line"),
            std::string::npos)
      << r.output;
  // No text at all: an empty array, and said.
  const fs::path none = tmp_.path / "none.txt";
  std::ofstream(none) << "\n";
  r = run_command(std::string(QARAC_EMBED_EXE) + " --model " + ae + " --input " + none.string() + " --output " + npy);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(cli::read_vectors(npy).rows, 0);
  EXPECT_NE(r.output.find("none.txt: holds no text: the output has no rows"), std::string::npos) << r.output;

  // A text longer than the position table is cut (keeping </s>), and said; its vector is that of
  // the cut ids.
  std::string words;
  for (int i = 0; i < 2 * m_.config.base.max_position_embeddings; ++i) words += " word";
  const fs::path longer = tmp_.path / "long.txt";
  std::ofstream(longer) << kTexts[0] << "\n" << words << "\n";
  r = run_command(std::string(QARAC_EMBED_EXE) + " --model " + ae + " --input " + longer.string() + " --output " + npy);
  ASSERT_EQ(r.code, 0) << r.output;
  const int64_t max_tokens = m_.config.base.max_tokens();
  EXPECT_NE(r.output.find("long.txt: 1 of 2 texts cut to the model's " + std::to_string(max_tokens) +
                          " tokens (the first: text 2)"),
            std::string::npos)
      << r.output;
  std::vector<int32_t> cut = m_.tokenizer.encode(words);
  data::truncate_ids(cut, max_tokens, m_.tokenizer.eos_id());
  EXPECT_EQ(cut.back(), m_.tokenizer.eos_id());
  SentenceEncoder::Activations cut_acts;  // the batch qarac-embed forms: the same bits
  const std::vector<float> cut_vectors = host(m_.models->answer_encoder().forward(
      TokenBatch::from_sequences({m_.tokenizer.encode(kTexts[0]), cut}, m_.config.base.pad_token_id, Device::cpu()),
      {}, cut_acts));
  EXPECT_EQ(cli::read_vectors(npy).values, cut_vectors);
}

// Before: an element nested 10^5 deep in a JSON-lines vector file crashed qarac-generate (exit
// 139) when its message dumped it; one beyond the float range is quoted as the number it is; a
// file of one array of vectors is told how vector files are read.
TEST_F(ExportsTest, JsonVectorElementsAreQuotedByTheirKind) {
  const std::string file = (tmp_.path / "deep.jsonl").string();
  std::ofstream(file) << "[1, " << std::string(100000, '[') << std::string(100000, ']') << "]\n";
  expect_input_error([&] { cli::read_vectors(file); },
                     {file + ":1: an array of 1 element, nested more than 16 deep is not a number"});
  std::ofstream(file) << "{\"vector\": [1, 1e39]}\n";
  expect_input_error([&] { cli::read_vectors(file); }, {file + ":1: 1e+39 is beyond the float range"});
  // A file of one array of vectors: how the file is read is said.
  std::ofstream(file) << "[[1, 2], [3, 4]]\n";
  expect_input_error([&] { cli::read_vectors(file); },
                     {file + ":1: [1,2] is not a number", "one vector per line, not one array of them"});
}

// --rank on a WikiQA TSV holds each sentence to the encoder that reads it: the answers and their
// candidates to the answer encoder (before: to the question encoder, whose position table may be
// longer, so the answer encoder failed later with the model's message, naming no line).
TEST_F(ExportsTest, RankHoldsAnswersToTheAnswerEncoder) {
  const std::string qe = m_.export_model(tmp_.str() + "/q", "question_encoder", m_.extras());
  const std::string ae = m_.export_model(tmp_.str() + "/a", "answer_encoder", m_.extras());
  // The answer encoder cut to 10 tokens: its position table to 12 rows (RoBERTa's 2 reserved).
  const std::string weights = ae + "/model.safetensors";
  TensorMap tensors = io::read_safetensors(weights);
  for (auto& [name, tensor] : tensors)
    if (name.find("position_embeddings") != std::string::npos) tensor = tensor.slice(0, 0, 12);
  io::write_safetensors(weights, tensors);
  nlohmann::json config = nlohmann::json::parse(std::ifstream(ae + "/config.json"));
  config["max_position_embeddings"] = 12;
  std::ofstream(ae + "/config.json") << config.dump();
  const std::string tsv = (tmp_.path / "qa.tsv").string();
  std::ofstream(tsv) << "QuestionID\tQuestion\tDocumentID\tDocumentTitle\tSentenceID\tSentence\tLabel\n"
                     << "Q1\twhere\tD1\tT\tD1-0\tthe river flows into the sea far away in the south of the land\t1\n"
                     << "Q1\twhere\tD1\tT\tD1-1\tit freezes\t0\n";
  const CliResult r = run_command(std::string(QARAC_EMBED_EXE) + " --rank " + tsv + " --question-encoder " + qe +
                                  " --answer-encoder " + ae);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(tsv + ": the question of line 2, its answer,"), std::string::npos) << r.output;
}

// --rank ranks per question, as the evaluator: a WikiQA question's two answers (two examples) are
// ranked together. The encoders' pooling heads zero: every vector is 0, each Label 0 sentence ties
// with the answers and ranks before them, Q1's first answer 2nd, Q2's 4th (before: per answer,
// 3 examples ranked 2, 2 and 4, MRR and chance 0.416667).
TEST_F(ExportsTest, RankRanksEachQuestionOnce) {
  for (SentenceEncoder* encoder : {&m_.models->question_encoder(), &m_.models->answer_encoder()})
    for (Parameter* p : encoder->head_parameters()) p->assign(Tensor::zeros(p->value.shape(), DType::f32));
  const std::string qe = m_.export_model(tmp_.str() + "/q", "question_encoder", m_.extras());
  const std::string ae = m_.export_model(tmp_.str() + "/a", "answer_encoder", m_.extras());
  const std::string tsv = (tmp_.path / "qa.tsv").string();
  std::ofstream(tsv) << "QuestionID\tQuestion\tDocumentID\tDocumentTitle\tSentenceID\tSentence\tLabel\n"
                     << "Q1\twhere\tD1\tT\tD1-0\tinto the sea\t1\n"
                     << "Q1\twhere\tD1\tT\tD1-1\tit freezes\t0\n"
                     << "Q1\twhere\tD1\tT\tD1-2\tto the south\t1\n"
                     << "Q2\twho\tD2\tT\tD2-0\ta king\t0\n"
                     << "Q2\twho\tD2\tT\tD2-1\ta poet\t1\n"
                     << "Q2\twho\tD2\tT\tD2-2\tin May\t0\n"
                     << "Q2\twho\tD2\tT\tD2-3\tred\t0\n";
  const CliResult r = run_command(std::string(QARAC_EMBED_EXE) + " --rank " + tsv + " --question-encoder " + qe +
                                  " --answer-encoder " + ae);
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* line : {"qa.selection_accuracy 0.000000\n", "qa.selection_chance 0.458333\n",
                           "qa.selection_mrr 0.375000\n", "qa.selection_questions 2\n"})
    EXPECT_NE(r.output.find(line), std::string::npos) << line << " in\n" << r.output;
}

// A .npy header whose shape is more than the file holds (a product that wraps around 2^64 read out
// of bounds), or a number no file could hold, is one line naming the file, before any allocation.
TEST_F(ExportsTest, NpyShapesBeyondTheFileAreRefused) {
  const auto npy = [&](const std::string& name, const std::string& shape, size_t data_bytes) {
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + shape + "), }";
    header.append(64 - (10 + header.size() + 1) % 64, ' ');
    header += '\n';
    std::string bytes = std::string("\x93NUMPY\x01\x00", 8) + char(header.size() & 0xff) + char(header.size() >> 8);
    bytes += header + std::string(data_bytes, '\0');
    const std::string path = (tmp_.path / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  };
  // 2^24 · 2^40 elements is 2^64: 0 after wrapping.
  const std::string wraps = npy("wraps.npy", "16777216, 1099511627776", 256);
  expect_input_error([&] { cli::read_vectors(wraps); },
                     {wraps + ": the shape (16777216, 1099511627776) needs more than the 256 data bytes there (truncated)"});
  const std::string huge = npy("huge.npy", "99999999999999999999, 64", 0);
  expect_input_error([&] { cli::read_vectors(huge); }, {huge + ": a dimension of 99999999999999999999"});
  const std::string fits = npy("fits.npy", "0001, 64", 256);  // leading zeros are NumPy's too
  EXPECT_EQ(cli::read_vectors(fits).rows, 1);
  // From a pipe, which cannot tell its size: read as the data comes.
  const std::string fifo = (tmp_.path / "pipe.npy").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  std::thread writer([&] { std::ofstream(fifo, std::ios::binary) << std::ifstream(fits, std::ios::binary).rdbuf(); });
  const cli::Vectors piped = cli::read_vectors(fifo);
  writer.join();
  EXPECT_EQ(piped.rows, 1);
  EXPECT_EQ(piped.cols, 64);
  // The header quoted in a message without its padding and newline: one line.
  const std::string other = (tmp_.path / "other.npy").string();
  {
    std::string bytes = std::string("\x93NUMPY\x01\x00\x76\x00", 10) + "{'descr': '<i4', 'fortran_order': False, 'shape': (1, 1), }";
    bytes.append(128 - 1 - bytes.size(), ' ');
    std::ofstream(other, std::ios::binary) << bytes << '\n' << std::string(4, '\0');
  }
  try {
    cli::read_vectors(other);
    ADD_FAILURE() << "an i4 array was read";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), other + ": the array's dtype is not little-endian f32 or f64: {'descr': '<i4', "
                                             "'fortran_order': False, 'shape': (1, 1), }");
  }
}

// The programs' outputs under a hostile user: standard output that cannot be written, an output
// that is a device, options that would be ignored, a stray word, more new tokens than the
// decoder's positions.
TEST_F(ExportsTest, ProgramsRefuseWhatTheyWouldLoseOrIgnore) {
  const std::string ae = m_.export_model(tmp_.str(), "answer_encoder", m_.extras());
  const std::string dec = m_.export_model(tmp_.str(), "decoder", m_.extras());
  const fs::path texts = tmp_.path / "texts.txt";
  std::ofstream(texts) << "\xEF\xBB\xBF" << kTexts[0] << "\n" << kTexts[1] << "\n";
  const std::string embed = std::string(QARAC_EMBED_EXE) + " --model " + ae + " --input " + texts.string();
  const auto expect_refused = [](const CliResult& r, const std::string& text) {
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
    EXPECT_NE(r.output.find(text), std::string::npos) << r.output;
  };
  // A full device on standard output, and standard output closed (in a subshell: the error goes
  // to run_command's pipe).
  expect_refused(run_command("(" + embed + " > /dev/full)"), "standard output: write failed: No space left on device");
  expect_refused(run_command("(" + embed + " >&-)"), "standard output: write failed: Bad file descriptor");
  // A FIFO is not replaced by a file.
  const std::string fifo = (tmp_.path / "fifo.jsonl").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  expect_refused(run_command(embed + " --output " + fifo), fifo + ": not a regular file");
  EXPECT_TRUE(fs::is_fifo(fifo));
  // An output path given without --output.
  const std::string stray = (tmp_.path / "out.npy").string();
  expect_refused(run_command(embed + " " + stray), "unexpected argument '" + stray + "'");
  EXPECT_FALSE(fs::exists(stray));
  expect_refused(run_command(embed + " --rank x --question-encoder " + ae + " --answer-encoder " + ae),
                 "--model, --input, --output and --field go without it");
  // --field reads a field of JSON lines: with plain text it would be ignored.
  expect_refused(run_command(embed + " --field sentence"), "--field names a field of JSON lines; " + texts.string() +
                                                               " is read as one text per line");
  // A byte-order mark is not text: the first row is that of the text without it.
  const std::string npy = (tmp_.path / "v.npy").string();
  const std::string plain = (tmp_.path / "plain.txt").string();
  std::ofstream(plain) << kTexts[0] << "\n" << kTexts[1] << "\n";
  CliResult r = run_command(embed + " --output " + npy);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::vector<float> with_bom = cli::read_vectors(npy).values;
  r = run_command(std::string(QARAC_EMBED_EXE) + " --model " + ae + " --input " + plain + " --output " + npy);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(with_bom, cli::read_vectors(npy).values);

  const std::string generate = std::string(QARAC_GENERATE_EXE) + " --decoder " + dec + " --vectors " + npy;
  expect_refused(run_command(generate + " --encoder " + ae), "--encoder and --field go with --input");
  expect_refused(run_command(generate + " --field sentence"), "--encoder and --field go with --input");
  expect_refused(run_command(generate + " --output v2.npy"), "--output v2.npy: qarac-generate writes JSON lines");
  const int64_t max_tokens = m_.config.base.max_tokens();
  expect_refused(run_command(generate + " --max-tokens " + std::to_string(max_tokens + 1)),
                 "--max-tokens " + std::to_string(max_tokens + 1) + ": " + dec + " reads " +
                     std::to_string(max_tokens) + " tokens at most");
  r = run_command(generate + " --max-tokens " + std::to_string(max_tokens));
  EXPECT_EQ(r.code, 0) << r.output;
  expect_refused(run_command(generate + " --max-tokens 0"), "--max-tokens must be at least 1, got 0");

  // An output that is an input, by another name too, or lies in a model folder: refused, the
  // file unharmed (before: overwritten, exit 0).
  const std::string vectors_jsonl = (tmp_.path / "vectors.jsonl").string();
  r = run_command(embed + " --output " + vectors_jsonl);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string texts_before = read_file(texts.string());
  expect_refused(run_command(embed + " --output " + texts.string()),
                 "--output " + texts.string() + " is the input " + texts.string());
  fs::create_symlink(texts, tmp_.path / "link.jsonl");
  expect_refused(run_command(embed + " --output " + (tmp_.path / "link.jsonl").string()), "is the input");
  EXPECT_EQ(read_file(texts.string()), texts_before);
  const std::string vectors_before = read_file(vectors_jsonl);
  expect_refused(run_command(std::string(QARAC_GENERATE_EXE) + " --decoder " + dec + " --vectors " + vectors_jsonl +
                             " --output " + vectors_jsonl),
                 "is the input " + vectors_jsonl);
  EXPECT_EQ(read_file(vectors_jsonl), vectors_before);
  // Each folder named as the option that gave it (qarac-eval's --data was "the model folder").
  expect_refused(run_command(generate + " --output " + dec + "/config.json"),
                 "--output " + dec + "/config.json is inside the --decoder folder " + dec +
                     ": writing it would damage the decoder");
  expect_refused(run_command(std::string(QARAC_GENERATE_EXE) + " --decoder " + dec + " --encoder " + ae + " --input " +
                             texts.string() + " --output " + ae + "/texts.jsonl"),
                 "is inside the --encoder folder " + ae + ": writing it would damage the encoder");
  expect_refused(run_command(embed + " --output " + ae + "/vectors.npy"),
                 "is inside the --model folder " + ae + ": writing it would damage the model");
  // An encoder and a decoder of different vocabularies: the texts would decode as other words.
  const fs::path other_dec = tmp_.path / "other_decoder";
  fs::copy(dec, other_dec);
  nlohmann::json tokenizer = read_json(other_dec / "tokenizer.json");
  nlohmann::json& vocab = tokenizer["model"]["vocab"];
  const auto first = vocab.begin(), second = std::next(vocab.begin());
  const nlohmann::json swapped = first.value();
  first.value() = second.value();
  second.value() = swapped;
  std::ofstream(other_dec / "tokenizer.json") << tokenizer.dump();
  expect_refused(run_command(std::string(QARAC_GENERATE_EXE) + " --decoder " + other_dec.string() + " --encoder " +
                             ae + " --input " + texts.string()),
                 ae + " and " + other_dec.string() + " carry different tokenizers");
  // A NUL byte after a JSON line's object: refused (before: the parser stopped there, and what
  // followed was dropped unsaid).
  std::ofstream(tmp_.path / "nul.jsonl") << std::string("{\"text\": \"a\"}\0{\"text\": \"b\"}\n", 28);
  expect_refused(run_command(std::string(QARAC_EMBED_EXE) + " --model " + ae + " --input " +
                             (tmp_.path / "nul.jsonl").string()),
                 (tmp_.path / "nul.jsonl").string() + ":1: a NUL byte at byte 13");
  // Texts that are no text: refused as qarac-prep refuses them.
  std::ofstream(tmp_.path / "bad.txt") << "abc\xff def\n";
  expect_refused(run_command(std::string(QARAC_EMBED_EXE) + " --model " + ae + " --input " +
                             (tmp_.path / "bad.txt").string()),
                 (tmp_.path / "bad.txt").string() + ":1: invalid UTF-8 at byte 3");
  // JSON lines by any case of the extension (before: .JSONL embedded each line's JSON text).
  std::ofstream(tmp_.path / "upper.JSONL") << nlohmann::json{{"text", kTexts[0]}}.dump() << "\n";
  std::ofstream(tmp_.path / "plain_one.txt") << kTexts[0] << "\n";
  const std::string upper_npy = (tmp_.path / "upper.NPY").string(), plain_npy = (tmp_.path / "plain.npy").string();
  r = run_command(std::string(QARAC_EMBED_EXE) + " --model " + ae + " --input " + (tmp_.path / "upper.JSONL").string() +
                  " --output " + upper_npy);
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_command(std::string(QARAC_EMBED_EXE) + " --model " + ae + " --input " +
                  (tmp_.path / "plain_one.txt").string() + " --output " + plain_npy);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(cli::read_vectors(upper_npy).values, cli::read_vectors(plain_npy).values);
}

}  // namespace
