// Loading a Hugging Face RoBERTa directory (single or sharded safetensors, io/hf_weights.h) and
// copying its tensors into the model's parameters: the names are mapped once here, and every
// mismatch with the model is refused before any parameter is written.
#include "io/hf_checkpoint.h"

#include <cmath>
#include <filesystem>
#include <limits>
#include <set>
#include <vector>

#include "core/atomic_file.h"
#include "core/log.h"
#include "io/hf_config.h"
#include "io/hf_weights.h"

namespace qarac::io {
namespace {

namespace fs = std::filesystem;

// "a, b, c, d, e, ...": enough to recognise a set of names in one log or error line.
std::string name_list(const std::vector<std::string>& names) {
  constexpr size_t kShown = 5;
  std::string out;
  for (size_t i = 0; i < names.size() && i < kShown; ++i)
    out += (i ? ", " : "") + printable(names[i]);
  return names.size() > kShown ? out + ", ..." : out;
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// Refuses a directory without config.json.
void require_config(const fs::path& dir) {
  check_input_file((dir / "config.json").string());  // a directory or a pipe is no config.json
  std::error_code ec;
  QARAC_INPUT_CHECK(fs::is_regular_file(dir / "config.json", ec), dir.string(),
                    ": config.json is missing (a Hugging Face model directory needs config.json",
                    " and model.safetensors)");
}

// The sizes of config.json that decide how much the model allocates, checked against the tensors
// the weights file really holds before anyone allocates them: the embedding tables fix the
// vocabulary, positions, token types and width, and every layer up to num_hidden_layers must be
// there. A config that lies about its sizes then costs no more memory than the file it came with.
void check_config_against_weights(const RobertaConfig& c, const TensorMap& encoder, const std::string& config,
                                  const std::string& weights) {
  const int64_t h = c.hidden_size;
  const std::pair<const char*, Shape> tables[] = {
      {"embeddings.word_embeddings.weight", {c.vocab_size, h}},
      {"embeddings.position_embeddings.weight", {c.max_position_embeddings, h}},
      {"embeddings.token_type_embeddings.weight", {c.type_vocab_size, h}},
      {"embeddings.LayerNorm.weight", {h}},
  };
  for (const auto& [name, shape] : tables) {
    const auto it = encoder.find(name);
    QARAC_INPUT_CHECK(it != encoder.end(), weights, ": tensor '", name, "' is missing (expected shape ",
                      shape_str(shape), " from ", config, ")");
    QARAC_INPUT_CHECK(it->second.shape() == shape, config, ": its sizes make '", name, "' ", shape_str(shape),
                      ", but ", weights, " holds ", shape_str(it->second.shape()));
  }
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    const std::string name = "encoder.layer." + std::to_string(layer) + ".intermediate.dense.weight";
    const auto it = encoder.find(name);
    QARAC_INPUT_CHECK(it != encoder.end(), config, ": num_hidden_layers is ", c.num_layers, ", but ", weights,
                      " has no '", name, "'");
    QARAC_INPUT_CHECK(it->second.shape() == Shape({c.intermediate_size, h}), config, ": its sizes make '", name,
                      "' ", shape_str({c.intermediate_size, h}), ", but ", weights, " holds ",
                      shape_str(it->second.shape()));
  }
}

}  // namespace

HfRoberta read_hf_roberta(const std::string& dir) {
  const fs::path root(dir);
  std::error_code ec;
  QARAC_INPUT_CHECK(fs::is_directory(root, ec), dir, ": is not a directory (expected a Hugging",
                    " Face model directory with config.json and model.safetensors)");
  require_config(root);

  HfRoberta model;
  model.dir = dir;
  bool is_decoder = false, tied_head = true;
  model.config = read_hf_config((root / "config.json").string(), &is_decoder, &tied_head);
  const std::string& weights = model.weights;
  std::vector<std::string> skipped;
  // A NaN or an infinity in a starting point poisons the first step; it is refused here, naming
  // the tensor, rather than found by the trainer as a non-finite gradient.
  auto finite = [&](const std::string& stored_name, Tensor&& tensor) {
    require_finite(tensor, stored_name, weights);
    return std::move(tensor);
  };
  for (auto& [stored_name, tensor] : read_hf_weights(dir, &model.weights)) {
    std::string name = stored_name;
    if (starts_with(name, "roberta.")) name.erase(0, 8);
    if (starts_with(name, "lm_head.")) {
      model.lm_head.emplace(name.substr(8), finite(stored_name, std::move(tensor)));
    } else if ((starts_with(name, "embeddings.") || starts_with(name, "encoder.")) &&
               // Index buffers that older transformers versions saved beside the weights.
               name != "embeddings.position_ids" && name != "embeddings.token_type_ids") {
      model.encoder.emplace(std::move(name), finite(stored_name, std::move(tensor)));
    } else {
      skipped.push_back(stored_name);
    }
  }
  QARAC_INPUT_CHECK(
      !model.encoder.empty(), weights, ": no RoBERTa encoder tensors (expected",
      " names like 'roberta.embeddings.word_embeddings.weight'); found only: ", name_list(skipped));
  check_config_against_weights(model.config, model.encoder, (root / "config.json").string(), weights);

  // A decoder (a QARAC decoder export: is_decoder, its layers beyond the encoder's) read as an
  // encoder loses what made it one: allowed, as Hugging Face allows it, but not in a quiet line.
  if (is_decoder)
    log::warn(dir, ": config.json says is_decoder, but it is read as an encoder (bidirectional)",
              skipped.empty() ? "" : detail::concat(", without its ", skipped.size(), " other tensors"));
  // The MLM heads built from lm_head output through the word embeddings; an untied head's own
  // matrix (lm_head.decoder.weight, or a fresh one where it is missing) is what transformers
  // multiplies by, so loading the rest of it would compute another head. It is set aside whole.
  if (!tied_head && !model.lm_head.empty()) {
    log::warn_shared(dir, ": config.json says tie_word_embeddings false, but the MLM heads here output through the "
                     "word embeddings: its lm_head is not used (no rehearsal, no forgetting monitor)");
    model.lm_head.clear();
  }
  if (!skipped.empty())
    log::info(weights, ": skipped ", skipped.size(),
              " tensors that are neither encoder nor lm_head: ", name_list(skipped));
  return model;
}

void assign_parameters(const ParameterList& params, const TensorMap& tensors,
                       const std::string& source) {
  // Every parameter is checked before any is written, so a refused checkpoint leaves the model as
  // it was.
  std::vector<std::string> missing;
  const Parameter* first_missing = nullptr;
  for (const Parameter* p : params) {
    const auto it = tensors.find(p->name);
    if (it == tensors.end()) {
      if (!first_missing) first_missing = p;
      missing.push_back(p->name);
      continue;
    }
    const Tensor& t = it->second;
    QARAC_INPUT_CHECK(t.shape() == p->value.shape(), source, ": tensor '", printable(p->name),
                      "' has shape ", shape_str(t.shape()), ", expected ",
                      shape_str(p->value.shape()));
    QARAC_INPUT_CHECK(is_floating(t.dtype()), source, ": tensor '", printable(p->name),
                      "' has dtype ", dtype_name(t.dtype()), ", expected a floating type");
    // An F64 weight finite there but beyond float32's range would become an infinity, later said
    // to be "not finite" though the file holds a number.
    if (t.dtype() == DType::f64 && p->master.dtype() != DType::f64) {
      const Tensor host = t.to(Device::cpu());
      const double* x = host.data<double>();
      for (int64_t i = 0; i < host.numel(); ++i)
        QARAC_INPUT_CHECK(!std::isfinite(x[i]) || std::fabs(x[i]) <= std::numeric_limits<float>::max(), source,
                          ": tensor '",
                          printable(p->name), "' holds ", x[i], " at element ", i, ", beyond float32's range (",
                          std::numeric_limits<float>::max(), "), in which the models compute");
    }
  }
  QARAC_INPUT_CHECK(!first_missing, source, ": tensor '", printable(first_missing->name),
                    "' is missing (expected shape ", shape_str(first_missing->value.shape()), ")",
                    missing.size() > 1 ? detail::concat("; ", missing.size(),
                                                        " missing in all: ", name_list(missing))
                                       : std::string());

  std::set<std::string> used;
  for (Parameter* p : params) {
    const Tensor& t = tensors.at(p->name);
    p->assign(t);
    used.insert(p->name);
  }
  std::vector<std::string> unused;
  for (const auto& [name, t] : tensors)
    if (!used.count(name)) unused.push_back(name);
  if (!unused.empty())
    log::warn_shared(source, ": ", unused.size(),
              " tensors match no parameter and were not loaded: ", name_list(unused));
}

}  // namespace qarac::io
