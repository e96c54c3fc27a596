// Hugging Face config.json <-> RobertaConfig. Reading refuses anything this implementation would
// silently compute differently (another activation, relative positions, another architecture),
// because a model that loads but computes something else is worse than a clear error.
#include "io/hf_config.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"

namespace qarac::io {
namespace {

using json = nlohmann::json;

// Architectures that share RoBERTa's weights and computation (XLM-R and CamemBERT reuse the
// RoBERTa modules in transformers, with the same "roberta." weight names).
constexpr const char* kModelTypes[] = {"roberta", "xlm-roberta", "camembert"};

// "string \"32\"", "float 32.5": what a mistyped value was, for the message.
std::string describe(const json& v) {
  const char* type = v.is_number_integer() ? "integer"
                     : v.is_number_float() ? "float"
                                           : v.type_name();
  std::string text = v.dump();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return std::string(type) + " " + printable(text);
}

class ConfigReader {
 public:
  ConfigReader(const std::string& path, const json& root) : path_(path), root_(root) {}

  // A missing key or a null value means "use the default" unless the key is required.
  const json* find(const char* key, bool required) const {
    const auto it = root_.find(key);
    const bool present = it != root_.end() && !it->is_null();
    QARAC_INPUT_CHECK(present || !required, path_, ": required key '", key, "' is missing");
    return present ? &*it : nullptr;
  }

  void get(const char* key, int64_t& out, bool required = false) const {
    if (const json* v = find(key, required)) {
      QARAC_INPUT_CHECK(v->is_number_integer(), path_, ": key '", key,
                        "' must be an integer, found ", describe(*v));
      QARAC_INPUT_CHECK(
          !v->is_number_unsigned() ||
              v->get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
          path_, ": key '", key, "' is too large: ", v->dump());
      out = v->get<int64_t>();
    }
  }

  void get(const char* key, int32_t& out) const {
    int64_t wide = out;
    get(key, wide);
    QARAC_INPUT_CHECK(
        wide >= std::numeric_limits<int32_t>::min() && wide <= std::numeric_limits<int32_t>::max(),
        path_, ": key '", key, "' is out of range: ", wide);
    out = static_cast<int32_t>(wide);
  }

  void get(const char* key, double& out) const {
    if (const json* v = find(key, false)) {
      QARAC_INPUT_CHECK(v->is_number(), path_, ": key '", key, "' must be a number, found ",
                        describe(*v));
      out = v->get<double>();
    }
  }

  void get(const char* key, std::string& out) const {
    if (const json* v = find(key, false)) {
      QARAC_INPUT_CHECK(v->is_string(), path_, ": key '", key, "' must be a string, found ",
                        describe(*v));
      out = v->get<std::string>();
    }
  }

 private:
  const std::string& path_;
  const json& root_;
};

}  // namespace

RobertaConfig read_hf_config(const std::string& path) {
  std::ifstream in(path);
  QARAC_INPUT_CHECK(in, path, ": cannot open for reading (", std::strerror(errno), ")");
  json root;
  try {
    root = json::parse(in);
  } catch (const json::parse_error& e) {
    throw InputError(detail::concat(path, ": not valid JSON (", printable(e.what()), ")"));
  }
  QARAC_INPUT_CHECK(root.is_object(), path, ": expected a JSON object, found ", describe(root));

  const ConfigReader reader(path, root);
  std::string model_type;
  reader.get("model_type", model_type);
  if (!model_type.empty()) {
    bool known = false;
    for (const char* t : kModelTypes) known = known || model_type == t;
    QARAC_INPUT_CHECK(known, path, ": model_type '", printable(model_type),
                      "' is not supported (only roberta, xlm-roberta, camembert)");
  }

  RobertaConfig c;
  reader.get("vocab_size", c.vocab_size, true);
  reader.get("hidden_size", c.hidden_size, true);
  reader.get("num_hidden_layers", c.num_layers, true);
  reader.get("num_attention_heads", c.num_heads, true);
  reader.get("intermediate_size", c.intermediate_size, true);
  reader.get("max_position_embeddings", c.max_position_embeddings, true);
  reader.get("type_vocab_size", c.type_vocab_size);
  reader.get("layer_norm_eps", c.layer_norm_eps);
  reader.get("hidden_dropout_prob", c.hidden_dropout);
  reader.get("attention_probs_dropout_prob", c.attention_dropout);
  reader.get("pad_token_id", c.pad_token_id);
  reader.get("bos_token_id", c.bos_token_id);
  reader.get("eos_token_id", c.eos_token_id);
  reader.get("hidden_act", c.hidden_act);

  QARAC_INPUT_CHECK(c.hidden_act == "gelu", path, ": hidden_act '", printable(c.hidden_act),
                    "' is not supported (only 'gelu', the erf form)");
  std::string position_type = "absolute";
  reader.get("position_embedding_type", position_type);
  QARAC_INPUT_CHECK(position_type == "absolute", path, ": position_embedding_type '",
                    printable(position_type), "' is not supported (only 'absolute')");

  const std::pair<const char*, int64_t> sizes[] = {
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"num_hidden_layers", c.num_layers},
      {"num_attention_heads", c.num_heads},
      {"intermediate_size", c.intermediate_size},
      {"max_position_embeddings", c.max_position_embeddings},
      {"type_vocab_size", c.type_vocab_size},
  };
  for (const auto& [key, value] : sizes)
    QARAC_INPUT_CHECK(value > 0, path, ": key '", key, "' must be positive, found ", value);
  QARAC_INPUT_CHECK(c.hidden_size % c.num_heads == 0, path, ": hidden_size ", c.hidden_size,
                    " is not divisible by num_attention_heads ", c.num_heads);
  QARAC_INPUT_CHECK(c.layer_norm_eps > 0, path, ": layer_norm_eps must be positive, found ",
                    c.layer_norm_eps);
  const std::pair<const char*, double> dropouts[] = {
      {"hidden_dropout_prob", c.hidden_dropout},
      {"attention_probs_dropout_prob", c.attention_dropout},
  };
  for (const auto& [key, p] : dropouts)
    QARAC_INPUT_CHECK(p >= 0 && p < 1, path, ": key '", key, "' must be in [0, 1), found ", p);
  // The special tokens index the embedding table (the pad id also anchors the positions).
  const std::pair<const char*, int32_t> ids[] = {{"pad_token_id", c.pad_token_id},
                                                 {"bos_token_id", c.bos_token_id},
                                                 {"eos_token_id", c.eos_token_id}};
  for (const auto& [key, id] : ids)
    QARAC_INPUT_CHECK(id >= 0 && id < c.vocab_size, path, ": key '", key, "' is ", id,
                      ", outside the vocabulary [0, ", c.vocab_size, ")");
  return c;
}

void write_hf_config(const std::string& path, const RobertaConfig& c, const HfConfigOptions& options) {
  // Every key read_hf_config reads, plus what transformers needs to pick the classes.
  nlohmann::ordered_json j;
  j["architectures"] = nlohmann::ordered_json::array({options.architecture});
  j["model_type"] = "roberta";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["intermediate_size"] = c.intermediate_size;
  j["hidden_act"] = c.hidden_act;
  j["hidden_dropout_prob"] = c.hidden_dropout;
  j["attention_probs_dropout_prob"] = c.attention_dropout;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["type_vocab_size"] = c.type_vocab_size;
  j["layer_norm_eps"] = c.layer_norm_eps;
  j["pad_token_id"] = c.pad_token_id;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_id;
  j["position_embedding_type"] = "absolute";
  j["is_decoder"] = options.is_decoder;
  j["tie_word_embeddings"] = options.tie_word_embeddings;
  const std::string text = j.dump(2) + "\n";

  AtomicFile file(path);
  file.write(text.data(), text.size());
  file.commit();
}

}  // namespace qarac::io
