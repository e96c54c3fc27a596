// The files of an export beyond the weights: tokenizer files (copied, the two small JSON files
// written when the source lacks them), modeling_qarac.py with config.json's auto_map (and the
// encoders' sentence-transformers files), and the model card.
#include "io/export_files.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "data/tokenizer.h"

namespace qarac::io {

extern const char* const kModelingQaracPy;  // modeling_qarac_py.cpp, generated

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

void write_text(const fs::path& path, const std::string& text) {
  AtomicFile file(path.string());
  file.write(text.data(), text.size());
  file.commit();
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  QARAC_INPUT_CHECK(in.good(), path.string(), ": cannot read");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// RobertaTokenizer(Fast)'s special tokens; <mask> absorbs the space before it, as in roberta-base.
json special_tokens() {
  return {{"bos_token", "<s>"},   {"eos_token", "</s>"}, {"unk_token", "<unk>"},
          {"sep_token", "</s>"},  {"pad_token", "<pad>"}, {"cls_token", "<s>"},
          {"mask_token", {{"content", "<mask>"}, {"lstrip", true}, {"rstrip", false},
                          {"normalized", false}, {"single_word", false}}}};
}

bool is_encoder(const std::string& model) {
  return model == "question_encoder" || model == "answer_encoder";
}

// A YAML double-quoted scalar: JSON's string escapes are valid there.
std::string yaml_string(const std::string& s) { return json(s).dump(); }

std::string number(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", x);
  return buf;
}

}  // namespace

void write_tokenizer_files(const std::string& dir, const ExportExtras& extras,
                           int64_t max_positions) {
  if (extras.tokenizer_dir.empty()) return;
  const fs::path from(extras.tokenizer_dir), to(dir);
  std::error_code ec;
  const bool has_json = fs::is_regular_file(from / "tokenizer.json", ec);
  const bool has_bpe = fs::is_regular_file(from / "vocab.json", ec) &&
                       fs::is_regular_file(from / "merges.txt", ec);
  QARAC_INPUT_CHECK(has_json || has_bpe, extras.tokenizer_dir,
                    ": no tokenizer.json nor vocab.json + merges.txt to export with the model");
  for (const char* file : {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                           "special_tokens_map.json"})
    if (fs::is_regular_file(from / file, ec)) write_text(to / file, read_text(from / file));
  if (!fs::exists(to / "special_tokens_map.json", ec))
    write_text(to / "special_tokens_map.json", special_tokens().dump(2) + "\n");
  // transformers' AutoTokenizer takes the class from tokenizer_config.json, or else from
  // config.json's model_type, which is QARAC's own: a copied file without the class gets it.
  if (fs::exists(to / "tokenizer_config.json", ec)) {
    json config = json::parse(read_text(to / "tokenizer_config.json"), nullptr, /*allow_exceptions=*/false);
    if (config.is_object() && !config.contains("tokenizer_class")) {
      config["tokenizer_class"] = "RobertaTokenizer";
      write_text(to / "tokenizer_config.json", config.dump(2) + "\n");
    }
  } else {
    json config = special_tokens();
    config["tokenizer_class"] = "RobertaTokenizer";
    config["add_prefix_space"] = false;
    config["errors"] = "replace";
    config["trim_offsets"] = true;
    // Two positions are taken by the padding index and the one below it (RoBERTa's offset).
    config["model_max_length"] = max_positions - 2;
    write_text(to / "tokenizer_config.json", config.dump(2) + "\n");
  }
  if (!extras.tokenizer_hash.empty()) {
    const std::string hash = data::Tokenizer::from_dir(dir).hash();
    QARAC_INPUT_CHECK(hash == extras.tokenizer_hash, extras.tokenizer_dir, ": its tokenizer (",
                      hash, ") is not the one the task streams were made with (",
                      extras.tokenizer_hash, "): give the data's tokenizer");
  }
}

std::optional<QaracClasses> qarac_classes(const std::string& model) {
  if (is_encoder(model)) return QaracClasses{"qarac_encoder", "QaracEncoderConfig", "QaracEncoderModel"};
  if (model == "decoder") return QaracClasses{"qarac_decoder", "QaracDecoderConfig", "QaracDecoderModel"};
  return std::nullopt;
}

void write_qarac_code(const std::string& dir, const std::string& model) {
  const std::optional<QaracClasses> classes = qarac_classes(model);
  if (!classes) return;
  const fs::path root(dir);
  write_text(root / "modeling_qarac.py", kModelingQaracPy);
  const fs::path config_path = root / "config.json";
  json config = json::parse(read_text(config_path));
  // AutoModel only: the decoder generates from a vector (generate_from_vectors), not as a causal
  // LM's generate() or the text-generation pipeline would drive it, so AutoModelForCausalLM fails.
  config["auto_map"] = {{"AutoConfig", "modeling_qarac." + classes->config_class},
                        {"AutoModel", "modeling_qarac." + classes->model_class}};
  write_text(config_path, config.dump(2) + "\n");
  if (!is_encoder(model)) return;
  // sentence-transformers (6.3 tested) takes the vector from the module's output named here; without these
  // files it mean-pools last_hidden_state. Texts are cut to the positions, as qarac-embed cuts them.
  const json modules = json::array(
      {{{"idx", 0}, {"name", "0"}, {"path", ""}, {"type", "sentence_transformers.models.Transformer"}}});
  write_text(root / "modules.json", modules.dump(2) + "\n");
  const int64_t max_tokens =
      config.at("max_position_embeddings").get<int64_t>() - config.at("pad_token_id").get<int64_t>() - 1;
  const json sentence_config = {
      {"max_seq_length", max_tokens},
      {"transformer_task", "feature-extraction"},
      {"modality_config", {{"text", {{"method", "forward"}, {"method_output_name", "pooler_output"}}}}},
      {"module_output_name", "sentence_embedding"}};
  write_text(root / "sentence_bert_config.json", sentence_config.dump(2) + "\n");
}

void write_model_card(const std::string& dir, const std::string& model, const ModelCard& card) {
  const bool encoder = is_encoder(model), decoder = model == "decoder";
  std::ostringstream md;
  md << "---\nlibrary_name: transformers\n";
  if (!card.base_model.empty()) md << "base_model: " << yaml_string(card.base_model) << "\n";
  md << "language: en\ntags:\n- qarac\n- roberta\n- qarac-mt\n";
  if (encoder) md << "- sentence-embeddings\npipeline_tag: feature-extraction\n";
  if (decoder) md << "- text-generation\n";  // from vectors: no pipeline of transformers' drives it
  if (model == "base") md << "- fill-mask\npipeline_tag: fill-mask\n";
  md << "---\n\n# QARAC " << model << "\n\nTrained with QARAC-MT (docs/design.md §2)";
  if (!card.base_path.empty()) md << " from `" << card.base_path << "`";
  md << ".";
  // The snippets run as they are from the export's folder (tests/python/test_hf_export.py runs
  // them); texts past the model's positions are cut, as qarac-embed cuts them.
  if (encoder) {
    md << " A sentence encoder: RoBERTa and the QARAC global attention pooling head.\n\n"
          "```python\nfrom transformers import AutoModel, AutoTokenizer\n"
          "path = \".\"  # this folder, or its id on the Hub\n"
          "tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)\n"
          "model = AutoModel.from_pretrained(path, trust_remote_code=True)\n"
          "batch = tok([\"a sentence\"], padding=True, truncation=True, return_tensors=\"pt\")\n"
          "vectors = model(**batch).pooler_output\n```\n\n"
          "config.json names the model type `qarac_encoder`, so `AutoModel` without "
          "`trust_remote_code=True` refuses it. `RobertaModel.from_pretrained(path)` loads the base "
          "alone, without the head: its `pooler_output` and any mean of its hidden states are not the "
          "QARAC vector. With sentence-transformers (tested: 6.3), `SentenceTransformer(path, "
          "trust_remote_code=True).encode(texts)` gives the QARAC vectors (modules.json and "
          "sentence_bert_config.json name `pooler_output`); a version that does not read those "
          "files mean-pools the hidden states instead: use `pooler_output` as above.\n"
          "From the command line: `qarac-embed --model path`.\n";
  } else if (decoder) {
    md << " The decoder: a causal RoBERTa, two head layers that see the vector in slot 0, and "
          "the LM head. It decodes the vectors of the answer encoder exported with it.\n\n"
          "```python\nfrom transformers import AutoModel, AutoTokenizer\n"
          "path = \".\"  # this folder, or its id on the Hub\n"
          "encoder_path = \"../answer_encoder\"  # the answer encoder of the same run\n"
          "tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)\n"
          "decoder = AutoModel.from_pretrained(path, trust_remote_code=True)\n"
          "encoder = AutoModel.from_pretrained(encoder_path, trust_remote_code=True)\n"
          "batch = tok([\"a sentence\"], padding=True, truncation=True, return_tensors=\"pt\")\n"
          "vectors = encoder(**batch).pooler_output\n"
          "ids = decoder.generate_from_vectors(vectors, max_new_tokens=32)  # token ids per vector\n"
          "print([tok.decode(i, skip_special_tokens=True) for i in ids])\n"
          "print(decoder.generate_from_text([\"a sentence\"], encoder, tok))  # the same, from text\n"
          "```\n\n"
          "config.json names the model type `qarac_decoder`, so `AutoModel` and "
          "`AutoModelForCausalLM` refuse it without `trust_remote_code=True` (and "
          "`AutoModelForCausalLM` with it: `generate()` would not see the vector).\n"
          "From the command line: `qarac-generate --decoder path`.\n";
  } else {
    md << " A pre-trained RoBERTa base with its masked-LM head (RobertaForMaskedLM): the "
          "starting point of a QARAC fine-tuning.\n";
  }
  // The raw files in the text, not in the metadata's `datasets:`, which the Hub reads as dataset
  // ids: a file name is none, and the file's format does not say which dataset it holds.
  if (!card.datasets.empty()) {
    md << "\n## Training data\n\nThe task streams were prepared (qarac-prep) from:";
    for (size_t i = 0; i < card.datasets.size(); ++i) md << (i ? ", `" : " `") << card.datasets[i] << "`";
    md << ".\n";
  }
  if (!card.config_ini.empty())
    md << "\n## Training configuration\n\n```ini\n" << card.config_ini << "```\n";
  if (!card.plan.empty()) md << "\n## Task plan\n\n```\n" << card.plan << "```\n";
  if (!card.metrics.empty()) {
    md << "\n## Held-out metrics at step " << card.metrics_step << "\n\n| metric | value |\n|---|---|\n";
    for (const auto& [name, value] : card.metrics)
      if (name.find(".confusion.") == std::string::npos)
        md << "| " << name << " | " << number(value) << " |\n";
  }
  const auto forgetting = card.metrics.find("forgetting.mlm_loss");
  if (card.forgetting_first && forgetting != card.metrics.end())
    md << "\n## Forgetting\n\nforgetting.mlm_loss (the answer encoder's base under the base's "
          "own MLM head, held-out text): "
       << number(*card.forgetting_first) << " at the first evaluation (step " << card.forgetting_first_step << "), "
       << number(forgetting->second) << " at step " << card.metrics_step << ".\n";
  write_text(fs::path(dir) / "README.md", md.str());
}

}  // namespace qarac::io
