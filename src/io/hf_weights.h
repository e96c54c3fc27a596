// The weights of a Hugging Face model directory: model.safetensors, or the shards that
// model.safetensors.index.json lists (how transformers saves models over its shard size).
#pragma once

#include <string>

#include "io/safetensors.h"

namespace qarac::io {

// Every tensor of DIR's weights, by stored name; `source` is set to what the messages should
// name (the file, or the index). InputError, one line naming the file: no weights (with
// "convert it to safetensors first" when only pytorch_model.bin is there), an index that is not
// JSON or lacks its weight_map, a shard outside DIR or missing, a tensor the index places in a
// shard that does not hold it, or one stored in two shards.
TensorMap read_hf_weights(const std::string& dir, std::string* source = nullptr);

// InputError naming `source` and the tensor `name` when the floating tensor `t` (on the CPU) holds
// a NaN or an infinity: weights that would make every output garbage without a word.
void require_finite(const Tensor& t, const std::string& name, const std::string& source);

}  // namespace qarac::io
