// Fuzz target: a Hugging Face model folder as --model.base reads it (io/hf_checkpoint.h): a
// config.json and a model.safetensors. The first two bytes give the length of the config; the
// config follows, the safetensors file is the rest. Also reads the safetensors file alone and
// the config alone. Seed: tests/golden/data/tiny_dev (tests/fuzz/run.sh makes it).
#include "fuzz_support.h"
#include "io/hf_checkpoint.h"
#include "io/hf_config.h"
#include "io/safetensors.h"

using namespace qarac;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t config_bytes = std::min<size_t>(data[0] | (data[1] << 8), size - 2);
  const auto dir = fuzz::scratch() / "model";
  std::filesystem::create_directories(dir);
  fuzz::write_file(dir / "config.json", data + 2, config_bytes);
  fuzz::write_file(dir / "model.safetensors", data + 2 + config_bytes, size - 2 - config_bytes);
  fuzz::expect_only_input_errors([&] { io::read_hf_config((dir / "config.json").string()); });
  fuzz::expect_only_input_errors([&] {
    io::Metadata metadata;
    for (const auto& [name, t] : io::read_safetensors((dir / "model.safetensors").string(), &metadata))
      if (!t.defined() || t.numel() < 0) std::abort();
  });
  fuzz::expect_only_input_errors([&] {
    const io::HfRoberta model = io::read_hf_roberta(dir.string());
    // What the trainer does next: every size it allocates is one the file backs.
    if (model.config.vocab_size * model.config.hidden_size !=
        model.encoder.at("embeddings.word_embeddings.weight").numel())
      std::abort();
  });
  return 0;
}
