// qarac-generate: text from vectors with a trained QARAC decoder export (issue 14), greedy.
//   qarac-generate --decoder EXPORT --vectors FILE.npy|.jsonl
//   qarac-generate --decoder EXPORT --encoder EXPORT --input TEXTS   (encode, then decode)
// Prints one JSON line per vector: {"tokens": [...], "text": "..."}, the new tokens after "<s>"
// up to (without) "</s>" or --max-tokens, as modeling_qarac.py's generate_from_vectors gives them.
#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/run_main.h"
#include "cli/sentence_vectors.h"
#include "cli/version.h"
#include "core/progress.h"
#include "io/qarac_export.h"
#include "model/generate.h"

namespace po = boost::program_options;
using namespace qarac;

int main(int argc, char** argv) {
  if (cli::version_requested(argc, argv)) return cli::print_version("qarac-generate");
  return cli::run_main("qarac-generate", [&] {
    std::string decoder_dir, vectors_path, encoder_dir, input, field, output, device_name;
    int64_t max_tokens = 32, batch = 64;
    po::options_description options(
        "qarac-generate --decoder EXPORT --vectors FILE\n"
        "qarac-generate --decoder EXPORT --encoder EXPORT --input TEXTS\n\n"
        "Greedy decoding of vectors (or of texts, encoded first) with a QARAC decoder export.\n\nOptions");
    options.add_options()
        ("help,h", "print this help")
        ("version", "print the version, the git commit and the libraries' versions, and exit")
        ("decoder", po::value(&decoder_dir), "the decoder export folder")
        ("vectors", po::value(&vectors_path), "vectors: .npy [N, d] (f32 or f64) or JSON lines ({\"vector\": [...]}); a vector whose decoding overflows float32 (a norm beyond about 1e19 does) is refused, naming its row (from 0)")
        ("encoder", po::value(&encoder_dir), "with --input: the encoder export that makes the vectors (usually answer_encoder)")
        ("input", po::value(&input), "texts: one per line, or JSON lines (.jsonl, .ndjson, .json), either gzip-compressed too (.gz); - reads standard input, one text per line")
        ("field", po::value(&field)->default_value("text"), "the text field of JSON lines")
        ("max-tokens", po::value(&max_tokens)->default_value(32), "new tokens at most per vector")
        ("batch", po::value(&batch)->default_value(64), "vectors decoded together (in f32 the last bits depend on the batch, whose size picks BLAS's kernels: a near-tie of two tokens can decode otherwise in another batch)")
        ("output", po::value(&output)->default_value("-"), "JSON lines file (.jsonl, .ndjson, .json); - : standard output")
        ("device", po::value(&device_name)->default_value("cpu"), "cpu or cuda");
    po::variables_map vm;
    if (!cli::parse_command_line(argc, argv, options, vm)) return 0;
    QARAC_INPUT_CHECK(!decoder_dir.empty(), "--decoder is required (see --help)");
    QARAC_INPUT_CHECK(vectors_path.empty() != input.empty(), "give --vectors or --input, one of them (see --help)");
    QARAC_INPUT_CHECK(input.empty() || !encoder_dir.empty(), "--input needs --encoder (see --help)");
    QARAC_INPUT_CHECK(vectors_path.empty() || (encoder_dir.empty() && vm["field"].defaulted()),
                      "--encoder and --field go with --input; --vectors are decoded as they are (see --help)");
    QARAC_INPUT_CHECK(vm["field"].defaulted() || cli::json_lines_input(input), "--field names a field of JSON lines; ",
                      input, " is read as one text per line");
    QARAC_INPUT_CHECK(output == "-" || cli::json_lines_input(output), "--output ", output,
                      ": qarac-generate writes JSON lines: a .jsonl, .ndjson or .json file, or - for standard output");
    QARAC_INPUT_CHECK(max_tokens >= 1, "--max-tokens must be at least 1, got ", max_tokens);
    QARAC_INPUT_CHECK(batch > 0, "--batch must be positive, got ", batch);
    const Device device = cli::parse_device(device_name);

    cli::check_output_spares(output, {vectors_path, input},
                             {{decoder_dir, "--decoder", "the decoder"}, {encoder_dir, "--encoder", "the encoder"}});
    io::LoadedModel<Decoder> decoder = io::load_decoder_export(decoder_dir, DType::f32, device);
    // The last step reads "<s>" and the tokens before the last: max_tokens in all.
    QARAC_INPUT_CHECK(max_tokens <= decoder.config.max_tokens(), "--max-tokens ", max_tokens, ": ", decoder_dir,
                      " reads ", decoder.config.max_tokens(), " tokens at most (max_position_embeddings ",
                      decoder.config.max_position_embeddings, "), so ", decoder.config.max_tokens(),
                      " new tokens at most");
    cli::Vectors vectors;
    if (vectors_path.empty()) {
      cli::Encoder encoder = io::load_encoder_export(encoder_dir, DType::f32, device);
      // Texts encoded with one vocabulary and decoded with another would read as other words.
      QARAC_INPUT_CHECK(encoder.tokenizer.hash() == decoder.tokenizer.hash(), encoder_dir, " and ", decoder_dir,
                        " carry different tokenizers");
      vectors = cli::encode_texts(encoder, input, field, batch, device);
    } else {
      vectors = cli::read_vectors(vectors_path);
    }
    QARAC_INPUT_CHECK(vectors.rows == 0 || vectors.cols == decoder.config.hidden_size,
                      vectors_path.empty() ? encoder_dir : vectors_path, ": vectors of size ", vectors.cols,
                      ", the decoder's hidden size is ", decoder.config.hidden_size);
    std::string text;
    Progress progress(decoder_dir, "vectors decoded", vectors.rows);
    for (int64_t begin = 0; begin < vectors.rows; begin += batch) {
      const int64_t n = std::min(batch, vectors.rows - begin);
      const std::vector<float> part(vectors.values.begin() + begin * vectors.cols,
                                    vectors.values.begin() + (begin + n) * vectors.cols);
      const Tensor v = Tensor::from_vector(part, {n, vectors.cols}, device);
      const std::vector<std::vector<int32_t>> prefixes(static_cast<size_t>(n), {decoder.tokenizer.bos_id()});
      std::vector<std::vector<int32_t>> decoded;
      try {  // the vectors numbered as the rows of the input
        decoded = greedy_decode(*decoder.model, v, prefixes, max_tokens, decoder.tokenizer.eos_id(), nullptr, begin);
      } catch (const InputError& e) {
        throw InputError(detail::concat(decoder_dir, ": decoding ", vectors_path.empty() ? input : vectors_path,
                                        ": ", e.what()));
      }
      for (const std::vector<int32_t>& tokens : decoded) {
        const nlohmann::json line = {{"tokens", tokens}, {"text", decoder.tokenizer.decode(tokens, true)}};
        // Decoded bytes may cut a UTF-8 character: replaced, not refused, in the JSON text.
        text += line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
      }
      progress.add(n);
    }
    cli::write_text(output, text);
    return 0;
  }, "a smaller --batch or --max-tokens needs less (unless the decoder's own weights do not fit)");
}
