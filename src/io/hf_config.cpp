// Hugging Face config.json <-> RobertaConfig. Reading refuses anything this implementation would
// silently compute differently (another activation, relative positions, another architecture),
// because a model that loads but computes something else is worse than a clear error.
#include "io/hf_config.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/rng.h"
#include "data/json_brief.h"

namespace qarac::io {
namespace {

using json = nlohmann::json;

// Architectures that share RoBERTa's weights and computation (XLM-R and CamemBERT reuse the
// RoBERTa modules in transformers, with the same "roberta." weight names), and QARAC-MT's own
// exports, whose base is a RoBERTa under those names (their heads are extra tensors).
constexpr const char* kModelTypes[] = {"roberta", "xlm-roberta", "camembert", "qarac_encoder", "qarac_decoder"};

// A config.json is a few hundred bytes; a file past this is not one, and is refused before it is
// read into memory.
constexpr uintmax_t kMaxConfigBytes = uintmax_t{16} << 20;

// The largest size of each kind taken. Every size is bounded before anything multiplies or
// allocates it, so that a corrupt or hostile config is refused at once instead of costing
// gigabytes (or overflowing a product) first. The bounds sit far above every public RoBERTa-like
// model (XLM-R XXL: vocabulary 250k, hidden 4096, 48 layers, intermediate 16384).
struct SizeLimit {
  const char* key;
  int64_t RobertaConfig::*field;
  int64_t max;
};
constexpr SizeLimit kSizeLimits[] = {
    {"vocab_size", &RobertaConfig::vocab_size, int64_t{1} << 24},  // the tokenizer's own bound on ids
    {"hidden_size", &RobertaConfig::hidden_size, int64_t{1} << 16},
    {"num_hidden_layers", &RobertaConfig::num_layers, int64_t{1} << 10},
    {"num_attention_heads", &RobertaConfig::num_heads, int64_t{1} << 16},
    {"intermediate_size", &RobertaConfig::intermediate_size, int64_t{1} << 18},
    {"max_position_embeddings", &RobertaConfig::max_position_embeddings, int64_t{1} << 20},
    {"type_vocab_size", &RobertaConfig::type_vocab_size, int64_t{1} << 10},
};
// Parameters of the whole encoder: 2^36 (a quarter of a terabyte in f32) is beyond any node.
constexpr int64_t kMaxParameters = int64_t{1} << 36;

// The encoder's parameter count, or -1 when it overflows. Each size is bounded already, so only
// the sums of products can grow large; every step is checked all the same.
int64_t parameter_count(const RobertaConfig& c) {
  const int64_t h = c.hidden_size, i = c.intermediate_size;
  int64_t tables = 0, per_layer = 0, layers = 0, total = 0;
  const bool overflow =
      __builtin_mul_overflow(c.vocab_size + c.max_position_embeddings + c.type_vocab_size + 2, h, &tables) ||
      __builtin_mul_overflow(4 * h + 2 * i + 9, h, &per_layer) || __builtin_add_overflow(per_layer, i, &per_layer) ||
      __builtin_mul_overflow(per_layer, c.num_layers, &layers) || __builtin_add_overflow(tables, layers, &total);
  return overflow ? -1 : total;
}

// "string \"32\"", "float 32.5": what a mistyped value was, for the message (a structured one by
// its kind and size when long or deep: data/json_brief.h).
std::string describe(const json& v) {
  const char* type = v.is_number_integer() ? "integer"
                     : v.is_number_float() ? "float"
                                           : v.type_name();
  const std::string brief = data::json_brief(v);
  if (v.is_structured() && brief.rfind("an ", 0) == 0) return brief;  // already "an array of ..."
  return std::string(type) + " " + brief;
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

  void get(const char* key, bool& out) const {
    if (const json* v = find(key, false)) {
      QARAC_INPUT_CHECK(v->is_boolean(), path_, ": key '", key, "' must be true or false, found ",
                        describe(*v));
      out = v->get<bool>();
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

RobertaConfig read_hf_config(const std::string& path, bool* is_decoder, bool* tie_word_embeddings) {
  check_input_file(path);
  std::ifstream in(path);
  QARAC_INPUT_CHECK(in, path, ": cannot open for reading (", std::strerror(errno), ")");
  std::error_code ec;
  const uintmax_t bytes = std::filesystem::file_size(path, ec);
  QARAC_INPUT_CHECK(ec || bytes <= kMaxConfigBytes, path, ": ", bytes, " bytes, more than a config.json ever has (",
                    kMaxConfigBytes >> 20, " MiB)");
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
                      "' is not supported (only roberta, xlm-roberta, camembert, qarac_encoder, qarac_decoder)");
  }

  RobertaConfig c;
  // A key config.json leaves out takes transformers' default (RobertaConfig's, XLM-R's and
  // CamemBERT's alike), not the RoBERTa checkpoints' values RobertaConfig starts from: the model
  // must compute what transformers computes from the same folder.
  c.layer_norm_eps = 1e-12;
  c.type_vocab_size = 2;
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
  if (is_decoder) {
    *is_decoder = false;
    reader.get("is_decoder", *is_decoder);
  }
  if (tie_word_embeddings) {
    *tie_word_embeddings = true;
    reader.get("tie_word_embeddings", *tie_word_embeddings);
  }

  QARAC_INPUT_CHECK(c.hidden_act == "gelu", path, ": hidden_act '", printable(c.hidden_act),
                    "' is not supported (only 'gelu', the erf form)");
  std::string position_type = "absolute";
  reader.get("position_embedding_type", position_type);
  QARAC_INPUT_CHECK(position_type == "absolute", path, ": position_embedding_type '",
                    printable(position_type), "' is not supported (only 'absolute')");

  for (const SizeLimit& limit : kSizeLimits) {
    const int64_t value = c.*limit.field;
    QARAC_INPUT_CHECK(value > 0, path, ": key '", limit.key, "' must be positive, found ", value);
    QARAC_INPUT_CHECK(value <= limit.max, path, ": key '", limit.key, "' is ", value, ", more than the ", limit.max,
                      " this implementation takes");
  }
  const int64_t parameters = parameter_count(c);
  QARAC_INPUT_CHECK(parameters >= 0 && parameters <= kMaxParameters, path, ": the sizes make an encoder of more than ",
                    kMaxParameters, " parameters");
  QARAC_INPUT_CHECK(c.hidden_size % c.num_heads == 0, path, ": hidden_size ", c.hidden_size,
                    " is not divisible by num_attention_heads ", c.num_heads);
  QARAC_INPUT_CHECK(c.layer_norm_eps > 0 && std::isfinite(c.layer_norm_eps), path,
                    ": layer_norm_eps must be positive and finite, found ", c.layer_norm_eps);
  // An epsilon that float32 holds as 0 leaves a constant row's variance 0 and its normalisation NaN.
  QARAC_INPUT_CHECK(static_cast<float>(c.layer_norm_eps) > 0, path, ": layer_norm_eps ", c.layer_norm_eps,
                    " is 0 in float32, in which the models compute (RoBERTa's is 1e-05)");
  const std::pair<const char*, double> dropouts[] = {
      {"hidden_dropout_prob", c.hidden_dropout},
      {"attention_probs_dropout_prob", c.attention_dropout},
  };
  for (const auto& [key, p] : dropouts) {
    QARAC_INPUT_CHECK(p >= 0 && p < kDropoutBelow, path, ": key '", key,
                      "' must be in [0, 1) (below 1 - 2^-17, the 16-bit dropout draws), found ", p);
    QARAC_INPUT_CHECK(p == 0 || p >= kDropoutSmallest, path, ": key '", key, "' is ", p,
                      ", which rounds to 0 in the 16-bit dropout draws and would drop nothing (0 or at least 2^-17, ",
                      kDropoutSmallest, ")");
  }
  // The special tokens index the embedding table (the pad id also anchors the positions).
  const std::pair<const char*, int32_t> ids[] = {{"pad_token_id", c.pad_token_id},
                                                 {"bos_token_id", c.bos_token_id},
                                                 {"eos_token_id", c.eos_token_id}};
  for (const auto& [key, id] : ids)
    QARAC_INPUT_CHECK(id >= 0 && id < c.vocab_size, path, ": key '", key, "' is ", id,
                      ", outside the vocabulary [0, ", c.vocab_size, ")");
  // RoBERTa numbers positions from pad_token_id + 1.
  QARAC_INPUT_CHECK(c.pad_token_id < c.max_position_embeddings - 1, path, ": pad_token_id ", c.pad_token_id,
                    " leaves no position below max_position_embeddings ", c.max_position_embeddings,
                    " (positions are numbered from pad_token_id + 1)");
  return c;
}

namespace {

// Every key read_hf_config reads.
nlohmann::ordered_json model_fields(const RobertaConfig& c) {
  nlohmann::ordered_json j;
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
  return j;
}

}  // namespace

bool hf_config_sets(const std::string& path, const char* key) {
  std::ifstream in(path);
  const json root = json::parse(in, nullptr, false);
  return root.is_object() && root.contains(key);
}

std::string model_fields_json(const RobertaConfig& config) { return model_fields(config).dump(); }

std::vector<std::string> model_field_changes(const std::string& was, const std::string& now) {
  const nlohmann::json a = nlohmann::json::parse(was, nullptr, false), b = nlohmann::json::parse(now, nullptr, false);
  if (!a.is_object() || !b.is_object()) return {"(unreadable) " + was + " -> " + now};
  std::vector<std::string> changes;
  for (const auto& [key, value] : b.items()) {
    const auto it = a.find(key);
    if (it == a.end() || *it != value)
      changes.push_back(key + " " + (it == a.end() ? "(none)" : it->dump()) + " -> " + value.dump());
  }
  for (const auto& [key, value] : a.items())
    if (!b.contains(key)) changes.push_back(key + " " + value.dump() + " -> (none)");
  return changes;
}

void write_hf_config(const std::string& path, const RobertaConfig& c, const HfConfigOptions& options) {
  // The model's fields, and what transformers needs to pick the classes.
  nlohmann::ordered_json j;
  j["architectures"] = nlohmann::ordered_json::array({options.architecture});
  j["model_type"] = options.model_type;
  j.update(model_fields(c));
  j["torch_dtype"] = "float32";  // export_hf_model stores every tensor as f32, whatever the run's dtype
  j["position_embedding_type"] = "absolute";
  j["is_decoder"] = options.is_decoder;
  j["tie_word_embeddings"] = options.tie_word_embeddings;
  const std::string text = j.dump(2) + "\n";

  AtomicFile file(path);
  file.write(text.data(), text.size());
  file.commit();
}

}  // namespace qarac::io
