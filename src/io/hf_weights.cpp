// Single-file and sharded safetensors weights of a Hugging Face directory.
#include "io/hf_weights.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "core/atomic_file.h"
#include "core/error.h"

namespace qarac::io {
namespace {

namespace fs = std::filesystem;

TensorMap read_sharded(const fs::path& index_path) {
  const std::string index = index_path.string();
  std::ifstream in(index_path);
  QARAC_INPUT_CHECK(in.good(), index, ": cannot read");
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  QARAC_INPUT_CHECK(!j.is_discarded() && j.is_object(), index, ": not a JSON object");
  QARAC_INPUT_CHECK(j.contains("weight_map") && j["weight_map"].is_object(), index,
                    ": no \"weight_map\" object (tensor name -> shard file)");
  std::map<std::string, std::set<std::string>> shards;  // file -> the tensors it should hold
  for (const auto& [name, file] : j["weight_map"].items()) {
    QARAC_INPUT_CHECK(file.is_string(), index, ": weight_map[\"", printable(name),
                      "\"] is not a file name");
    const std::string f = file.get<std::string>();
    // A shard lies beside the index: a path elsewhere would read files the user never gave.
    QARAC_INPUT_CHECK(!f.empty() && fs::path(f).filename() == f, index, ": shard '",
                      printable(f), "' is not a file name in the model's folder");
    shards[f].insert(name);
  }
  QARAC_INPUT_CHECK(!shards.empty(), index, ": the weight_map is empty");
  TensorMap out;
  for (const auto& [file, names] : shards) {
    const fs::path path = index_path.parent_path() / file;
    std::error_code ec;
    QARAC_INPUT_CHECK(fs::is_regular_file(path, ec), index, ": shard ", file, " is missing");
    for (auto& [name, tensor] : read_safetensors(path.string())) {
      QARAC_INPUT_CHECK(names.count(name), path.string(), ": tensor '", printable(name),
                        "' is not the index's for this shard");
      QARAC_INPUT_CHECK(out.emplace(name, std::move(tensor)).second, path.string(), ": tensor '",
                        printable(name), "' is stored in two shards");
    }
  }
  for (const auto& [file, names] : shards)
    for (const std::string& name : names)
      QARAC_INPUT_CHECK(out.count(name), index, ": tensor '", printable(name), "' is not in ",
                        file);
  return out;
}

}  // namespace

TensorMap read_hf_weights(const std::string& dir, std::string* source) {
  const fs::path root(dir);
  std::error_code ec;
  const fs::path single = root / "model.safetensors", index = root / "model.safetensors.index.json";
  check_input_file(single.string());  // a directory or a pipe there is not "missing"
  check_input_file(index.string());
  const fs::path& used = fs::is_regular_file(single, ec) ? single : index;
  if (source) *source = used.string();
  if (used == single) return read_safetensors(single.string());
  if (fs::is_regular_file(index, ec)) return read_sharded(index);
  QARAC_INPUT_CHECK(!fs::exists(root / "pytorch_model.bin", ec), dir,
                    ": found pytorch_model.bin, which is not read: convert it to safetensors first",
                    " (transformers: model.save_pretrained(dir, safe_serialization=True))");
  QARAC_INPUT_CHECK(false, dir, ": model.safetensors is missing (a Hugging Face model directory",
                    " needs config.json and model.safetensors or model.safetensors.index.json)");
  return {};
}

// The first NaN or infinity, by the bits each dtype stores it with.
void require_finite(const Tensor& t, const std::string& name, const std::string& source) {
  const int64_t n = t.numel();
  int64_t at = -1;
  // The element pointer once, not per element: a checked data<T>() call per element took longer
  // than the test itself over a base's hundreds of millions of weights.
  switch (t.dtype()) {
    case DType::f32: {
      const float* x = t.data<float>();
      for (int64_t i = 0; at < 0 && i < n; ++i)
        if (!std::isfinite(x[i])) at = i;
      break;
    }
    case DType::f64: {
      const double* x = t.data<double>();
      for (int64_t i = 0; at < 0 && i < n; ++i)
        if (!std::isfinite(x[i])) at = i;
      break;
    }
    case DType::bf16: {  // all exponent bits set: infinity or NaN
      const bf16* x = t.data<bf16>();
      for (int64_t i = 0; at < 0 && i < n; ++i)
        if ((x[i].bits & 0x7f80u) == 0x7f80u) at = i;
      break;
    }
    case DType::i32:
    case DType::i64: break;
  }
  QARAC_INPUT_CHECK(at < 0, source, ": tensor '", printable(name), "' holds a non-finite value (NaN or infinity) at element ",
                    at);
}

}  // namespace qarac::io
