// Loading exports into SentenceEncoder and Decoder, or all three into QaracModels: the export's
// names are QaracModels::model_parameters' (model/qarac.h), the decoder's head under "lm_head.";
// without the "roberta." prefix they are the models' own.
#include "io/qarac_export.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/atomic_file.h"
#include "io/export_files.h"
#include "io/hf_checkpoint.h"
#include "io/hf_config.h"
#include "io/hf_weights.h"

namespace qarac::io {
namespace {

namespace fs = std::filesystem;

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// The export's tensors by their QaracModels::model_parameters name, its config and tokenizer. The config says which
// model it is ("is_decoder"), so the other kind is refused before its weights are read; a weight
// that is not finite is refused, naming it.
template <class Model>
LoadedModel<Model> read_export(const std::string& dir, bool decoder, TensorMap& tensors, std::string& source,
                               bool* tie_word_embeddings = nullptr) {
  std::error_code ec;
  QARAC_INPUT_CHECK(fs::is_directory(dir, ec), dir, ": is not a directory (expected a QARAC export",
                    " with config.json, model.safetensors and the tokenizer files)");
  const fs::path config = fs::path(dir) / "config.json";
  check_input_file(config.string());  // a directory or a pipe is no config.json
  QARAC_INPUT_CHECK(fs::is_regular_file(config, ec), dir, ": config.json is missing");
  bool is_decoder = false;
  const RobertaConfig model_config = read_hf_config(config.string(), &is_decoder, tie_word_embeddings);
  QARAC_INPUT_CHECK(is_decoder == decoder, dir, ": is ",
                    is_decoder ? "a decoder export" : "an encoder export or a plain RoBERTa",
                    " (config.json: \"is_decoder\": ", is_decoder ? "true" : "false", "); ",
                    decoder ? "the decoder export is needed here"
                            : "an encoder export (question_encoder or answer_encoder) is needed here; "
                              "qarac-generate decodes with a decoder");
  LoadedModel<Model> out{dir, model_config, data::Tokenizer::from_dir(dir), {}};
  const std::string head_prefix = kDecoderHeadPrefix;
  for (auto& [name, tensor] : read_hf_weights(dir, &source)) {
    require_finite(tensor, name, source);
    // The decoder's head under its export name (io/export_files.h); an export written before it
    // had one holds "lm_head.*", the model's own names.
    std::string key = decoder && starts_with(name, head_prefix) ? "lm_head." + name.substr(head_prefix.size()) : name;
    tensors.emplace(std::move(key), std::move(tensor));
  }
  QARAC_INPUT_CHECK(static_cast<int64_t>(out.tokenizer.vocab_size()) == out.config.vocab_size, dir,
                    ": the tokenizer has ", out.tokenizer.vocab_size(), " tokens, the model ",
                    out.config.vocab_size);
  return out;
}

// The tensors under the names of a bare SentenceEncoder's or Decoder's parameters.
TensorMap without_base_prefix(TensorMap&& tensors) {
  TensorMap out;
  for (auto& [name, tensor] : tensors)
    out.emplace(starts_with(name, "roberta.") ? name.substr(8) : name, std::move(tensor));
  return out;
}

// config.json says which matrix the decoder's head outputs through (`tied`), as transformers reads
// it: a missing head matrix must not fall back to the embeddings unnoticed, nor a stored one be
// ignored.
void check_head_matrix(const TensorMap& tensors, bool tied, const std::string& source) {
  const bool stored = tensors.count("lm_head.decoder.weight") > 0;
  QARAC_INPUT_CHECK(tied || stored, source, ": tensor '", kDecoderHeadPrefix, "decoder.weight' is missing (config.json: "
                    "\"tie_word_embeddings\": false)");
  QARAC_INPUT_CHECK(!tied || !stored, source, ": holds '", kDecoderHeadPrefix, "decoder.weight', but config.json ties the LM head "
                    "to the word embeddings (\"tie_word_embeddings\" true or absent): which one is meant?");
}

// InputError unless `b` (of `b_dir`) is a model of the same size and vocabulary as `a`.
void check_same_sizes(const RobertaConfig& a, const std::string& a_dir, const RobertaConfig& b,
                      const std::string& b_dir) {
  auto describe = [](const RobertaConfig& c) {
    return detail::concat("vocabulary ", c.vocab_size, ", hidden ", c.hidden_size, ", layers ", c.num_layers,
                          ", heads ", c.num_heads, ", ffn ", c.intermediate_size, ", positions ",
                          c.max_position_embeddings, ", layer_norm_eps ", c.layer_norm_eps, ", pad ", c.pad_token_id);
  };
  QARAC_INPUT_CHECK(describe(a) == describe(b), b_dir, " is not of the size of ", a_dir, " (", describe(b),
                    " against ", describe(a), "): the three exports must come from one run");
}

// What an export's model card (README.md, io/export_files.h) says of its run rather than of the
// model: its sections, from the first "## " heading on (the training data and configuration, the
// task plan, the held-out metrics at the step exported), which the three exports of one export/
// or best/ share. "" when the folder has no card or the card no section.
std::string card_sections(const std::string& dir) {
  std::ifstream in(fs::path(dir) / "README.md", std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  const std::string card = text.str();
  const size_t at = card.find("\n## ");
  return at == std::string::npos ? "" : card.substr(at);
}

}  // namespace

LoadedModel<SentenceEncoder> load_encoder_export(const std::string& dir, DType dtype, Device device) {
  TensorMap tensors;
  std::string source;
  LoadedModel<SentenceEncoder> out = read_export<SentenceEncoder>(dir, false, tensors, source);
  auto base = std::make_shared<RobertaEncoder>(out.config, dtype, device);
  out.model = std::make_unique<SentenceEncoder>(base, fs::path(dir).filename().string());
  assign_parameters(out.model->parameters(), without_base_prefix(std::move(tensors)), source);
  return out;
}

LoadedModel<Decoder> load_decoder_export(const std::string& dir, DType dtype, Device device) {
  TensorMap tensors;
  std::string source;
  bool tied = true;
  LoadedModel<Decoder> out = read_export<Decoder>(dir, true, tensors, source, &tied);
  check_head_matrix(tensors, tied, source);
  out.model = std::make_unique<Decoder>(out.config, tied, /*vocab_multiple=*/64, dtype, device,
                                        /*dropout_stream=*/0);
  assign_parameters(out.model->parameters(), without_base_prefix(std::move(tensors)), source);
  return out;
}

LoadedQarac load_qarac_exports(const std::string& dir, DType dtype, Device device) {
  std::error_code ec;
  QARAC_INPUT_CHECK(fs::is_directory(dir, ec), dir, fs::exists(dir, ec) ? ": is not a directory" : ": does not exist",
                    " (expected a run's export/ or best/ folder: question_encoder/, answer_encoder/ and decoder/; a ",
                    "run writes export/ at its end, and best/, under eval.best, at its first evaluation)");
  struct Part {
    std::string dir, source;
    TensorMap tensors;
  };
  auto part = [&](const char* model) { return Part{(fs::path(dir) / model).string(), {}, {}}; };
  Part qe = part("question_encoder"), ae = part("answer_encoder"), d = part("decoder");
  for (const Part* p : {&qe, &ae, &d})
    QARAC_INPUT_CHECK(fs::exists(p->dir, ec), dir, ": has no ", fs::path(p->dir).filename().string(),
                      "/ (expected a run's export/ or best/ folder: question_encoder/, answer_encoder/ and decoder/)");
  bool tied = true;
  const auto q = read_export<SentenceEncoder>(qe.dir, false, qe.tensors, qe.source);
  auto a = read_export<SentenceEncoder>(ae.dir, false, ae.tensors, ae.source);
  const auto dec = read_export<Decoder>(d.dir, true, d.tensors, d.source, &tied);
  check_head_matrix(d.tensors, tied, d.source);
  check_same_sizes(a.config, ae.dir, q.config, qe.dir);
  check_same_sizes(a.config, ae.dir, dec.config, d.dir);
  for (const auto* other : {&q.tokenizer, &dec.tokenizer})
    QARAC_INPUT_CHECK(other->hash() == a.tokenizer.hash(), dir, ": its exports carry different tokenizers (",
                      q.tokenizer.hash(), ", ", a.tokenizer.hash(), ", ", dec.tokenizer.hash(),
                      "): the three exports must come from one run");
  // Sizes and tokenizers alike, two runs' exports (a folder put together by hand, or best/ read
  // while the run replaced it) still differ in their cards: other settings or another step.
  const std::string sections = card_sections(ae.dir);
  for (const Part* p : {&qe, &d}) {
    const std::string other = card_sections(p->dir);
    QARAC_INPUT_CHECK(sections.empty() || other.empty() || other == sections, dir, ": ", p->dir, "/README.md and ",
                      ae.dir, "/README.md describe other runs or steps (their training configuration or held-out ",
                      "metrics differ): the three exports must come from one run's export/ or best/");
  }

  QaracConfig config;
  config.base = a.config;
  config.tie_lm_head = tied;
  config.base_source = ae.source;
  // Built from the answer encoder's base, then every model's own weights replace it and the heads.
  TensorMap base;
  for (const auto& [name, tensor] : ae.tensors)
    if (starts_with(name, "roberta.")) base.emplace(name.substr(8), tensor);
  LoadedQarac out{dir, std::move(a.tokenizer), std::make_unique<QaracModels>(config, base, dtype, device)};
  base.clear();
  for (Part* p : {&qe, &ae, &d})
    assign_parameters(out.models->model_parameters(fs::path(p->dir).filename().string()), p->tensors, p->source);
  return out;
}

}  // namespace qarac::io
