// Batched sentence vectors with an encoder export (sentence_vectors.h).
#include "cli/sentence_vectors.h"

#include <algorithm>
#include <cmath>

#include "core/progress.h"

namespace qarac::cli {

Vectors encode(Encoder& encoder, const std::vector<std::vector<int32_t>>& sequences, int64_t batch, Device device) {
  Vectors out;
  out.cols = encoder.config.hidden_size;
  SentenceEncoder::Activations acts;
  Progress progress(encoder.dir, "texts encoded", static_cast<int64_t>(sequences.size()));
  for (size_t begin = 0; begin < sequences.size(); begin += static_cast<size_t>(batch)) {
    const size_t end = std::min(sequences.size(), begin + static_cast<size_t>(batch));
    const std::vector<std::vector<int32_t>> part(sequences.begin() + static_cast<std::ptrdiff_t>(begin),
                                                 sequences.begin() + static_cast<std::ptrdiff_t>(end));
    const TokenBatch tokens = TokenBatch::from_sequences(part, encoder.config.pad_token_id, device);
    const Tensor& v = encoder.model->forward(tokens, ForwardOptions{}, acts);
    const std::vector<float> host = v.to(Device::cpu()).to(DType::f32).to_vector<float>();
    // A NaN written as a vector is no vector (and "-nan" is no JSON).
    const auto bad = std::find_if(host.begin(), host.end(), [](float x) { return !std::isfinite(x); });
    QARAC_INPUT_CHECK(bad == host.end(), encoder.dir, ": the vector of text ",
                      begin + static_cast<size_t>(bad - host.begin()) / static_cast<size_t>(out.cols) + 1,
                      " is not finite (NaN or infinity): the model's weights overflow in a forward pass");
    out.values.insert(out.values.end(), host.begin(), host.end());
    progress.add(static_cast<int64_t>(end - begin));
  }
  out.rows = static_cast<int64_t>(sequences.size());
  return out;
}

Vectors encode_texts(Encoder& encoder, const std::string& path, const std::string& field, int64_t batch,
                     Device device) {
  return encode(encoder, tokenize_texts(encoder.tokenizer, read_texts(path, field), encoder.config.max_tokens(), path),
                batch, device);
}

}  // namespace qarac::cli
