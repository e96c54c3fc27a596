// Loading exports into SentenceEncoder and Decoder: the export's names without the "roberta."
// prefix are the models' own parameter names (model/qarac.h), the decoder's head under "lm_head.".
#include "io/qarac_export.h"

#include <filesystem>

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

// The export's tensors by model parameter name, its config and tokenizer. The config says which
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
    std::string key = starts_with(name, "roberta.") ? name.substr(8) : name;
    // The decoder's head under its export name (io/export_files.h); an export written before it
    // had one holds "lm_head.*", the model's own names.
    if (decoder && starts_with(key, head_prefix)) key = "lm_head." + key.substr(head_prefix.size());
    tensors.emplace(std::move(key), std::move(tensor));
  }
  QARAC_INPUT_CHECK(static_cast<int64_t>(out.tokenizer.vocab_size()) == out.config.vocab_size, dir,
                    ": the tokenizer has ", out.tokenizer.vocab_size(), " tokens, the model ",
                    out.config.vocab_size);
  return out;
}

}  // namespace

LoadedModel<SentenceEncoder> load_encoder_export(const std::string& dir, DType dtype, Device device) {
  TensorMap tensors;
  std::string source;
  LoadedModel<SentenceEncoder> out = read_export<SentenceEncoder>(dir, false, tensors, source);
  auto base = std::make_shared<RobertaEncoder>(out.config, dtype, device);
  out.model = std::make_unique<SentenceEncoder>(base, fs::path(dir).filename().string());
  assign_parameters(out.model->parameters(), tensors, source);
  return out;
}

LoadedModel<Decoder> load_decoder_export(const std::string& dir, DType dtype, Device device) {
  TensorMap tensors;
  std::string source;
  bool tied = true;
  LoadedModel<Decoder> out = read_export<Decoder>(dir, true, tensors, source, &tied);
  // config.json says which matrix the head outputs through, as transformers reads it: a missing
  // head matrix must not fall back to the embeddings unnoticed, nor a stored one be ignored.
  const bool stored = tensors.count("lm_head.decoder.weight") > 0;
  QARAC_INPUT_CHECK(tied || stored, source, ": tensor '", kDecoderHeadPrefix, "decoder.weight' is missing (config.json: "
                    "\"tie_word_embeddings\": false)");
  QARAC_INPUT_CHECK(!tied || !stored, source, ": holds '", kDecoderHeadPrefix, "decoder.weight', but config.json ties the LM head "
                    "to the word embeddings (\"tie_word_embeddings\" true or absent): which one is meant?");
  out.model = std::make_unique<Decoder>(out.config, tied, /*vocab_multiple=*/64, dtype, device,
                                        /*dropout_stream=*/0);
  assign_parameters(out.model->parameters(), tensors, source);
  return out;
}

}  // namespace qarac::io
