// Reading and writing the safetensors format (8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the raw little-endian data).
#pragma once

#include <map>
#include <string>

#include "core/tensor.h"

namespace qarac::io {

using Metadata = std::map<std::string, std::string>;

// Reads every tensor of `path` into CPU tensors. Stored dtypes F32, F64, BF16, I32 and I64 keep
// their dtype; F16 is widened to f32 (Tensor has no f16). Anything malformed (short file, header
// length beyond the file, bad JSON, unknown dtype, offsets outside the data or not matching
// shape × dtype size, overlapping tensors) raises qarac::InputError naming the file and the tensor.
TensorMap read_safetensors(const std::string& path, Metadata* metadata = nullptr);

// Writes `tensors` (any device; f32, f64, bf16, i32, i64) to `path` atomically
// (core/atomic_file.h): the data goes to a temporary file in the same folder, is fsynced, and is
// renamed over `path`.
void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const Metadata& metadata = {});

}  // namespace qarac::io
