// qarac-embed: sentence vectors from a trained QARAC encoder export (issue 14), and WikiQA's
// answer selection from the command line.
//   qarac-embed --model EXPORT --input FILE [--field text] [--output FILE.npy|.h5|.jsonl]
//   qarac-embed --rank STREAM|WIKIQA.tsv|QA.jsonl --question-encoder EXPORT --answer-encoder EXPORT
// --rank reads a question_answering task stream with candidates (qarac-prep's output, as the
// evaluation reads it), a WikiQA TSV or QA JSON lines (qarac-prep --jsonl qa:), and prints qa.selection_accuracy, _mrr, _map, _chance and _questions computed
// by the evaluation's own code (train/evaluation.h), so the figures are the evaluator's.
#include <algorithm>
#include <string>
#include <vector>

#include "cli/run_main.h"
#include "cli/sentence_vectors.h"
#include "cli/version.h"
#include "data/line_file.h"
#include "data/readers.h"
#include "data/shards.h"
#include "io/qarac_export.h"
#include "train/evaluation.h"

namespace po = boost::program_options;
using namespace qarac;

namespace {

using cli::Encoder;

std::vector<std::vector<int32_t>> sequences(const data::Ragged& r) {
  std::vector<std::vector<int32_t>> out;
  for (int64_t i = 0; i < r.count(); ++i) out.emplace_back(r.begin(i), r.begin(i) + r.length(i));
  return out;
}

void check_tokenizer(const Encoder& e, const data::StreamInfo& info, const std::string& stream) {
  QARAC_INPUT_CHECK(info.tokenizer_hash.empty() || e.tokenizer.hash() == info.tokenizer_hash, stream,
                    ": made with tokenizer ", info.tokenizer_hash, ", but ", e.dir, " carries ",
                    e.tokenizer.hash());
}

// What --rank ranks: the first n examples' question and answer ids and their candidates.
struct Ranked {
  std::vector<std::vector<int32_t>> questions, answers;
  data::Candidates candidates;
};

// InputError unless `ids` fits the encoders' positions; `where` names the sequence. A stream was
// made with too large a --max-length; a raw file's sentence is cut only by making a stream of it.
void check_fits(const std::vector<int32_t>& ids, const Encoder& encoder, const std::string& where, bool raw = false) {
  const int64_t max_tokens = encoder.config.max_tokens();
  QARAC_INPUT_CHECK(static_cast<int64_t>(ids.size()) <= max_tokens, where, " has ", ids.size(),
                    " tokens, more than the ", max_tokens, " ", encoder.dir, " reads (",
                    raw ? "qarac-prep with --max-length " : "prepare it with qarac-prep --max-length ",
                    max_tokens, raw ? " cuts it: rank that stream)" : ")");
}

Ranked from_stream(const std::string& stream, const Encoder& question, const Encoder& answer,
                   int64_t max_examples) {
  const data::TaskStreamFile file(stream);
  file.check_holds(data::Task::question_answering, "--rank ranks WikiQA's answers");
  QARAC_INPUT_CHECK(file.has_candidates(), stream,
                    ": no candidate sentences (WikiQA's Label 0 rows, kept by qarac-prep)");
  check_tokenizer(question, file.info(), stream);
  check_tokenizer(answer, file.info(), stream);
  file.verify();  // the stream's checksum: the examples below are read in part, which checks none
  const int64_t n = max_examples > 0 ? std::min(max_examples, file.examples()) : file.examples();
  Ranked r{sequences(file.read_field(0, 0, n)), sequences(file.read_field(1, 0, n)), file.read_candidates(0, n)};
  for (size_t i = 0; i < r.questions.size(); ++i) {
    check_fits(r.questions[i], question, stream + ": example " + std::to_string(i) + "'s question");
    check_fits(r.answers[i], answer, stream + ": example " + std::to_string(i) + "'s answer");
  }
  const data::Ragged& s = r.candidates.sentences;
  for (int64_t i = 0; i < s.count(); ++i)
    check_fits(std::vector<int32_t>(s.begin(i), s.begin(i) + s.length(i)), answer,
               stream + ": candidate sentence " + std::to_string(i));
  return r;
}

// A WikiQA TSV or QA JSON lines read as qarac-prep reads them, tokenised by the encoders'
// tokenizer (qarac-prep's --max-length truncation is not applied: a sentence too long for the
// model that reads it is refused).
Ranked from_raw(const std::string& path, data::Format format, const Encoder& question, const Encoder& answer,
                int64_t max_examples) {
  Ranked r;
  r.candidates.offsets = {0};
  r.candidates.sentences.offsets = {0};
  const data::Tokenizer& t = question.tokenizer;
  // A sentence too long for the encoders is refused here (qarac-prep --max-length cuts them).
  // Malformed rows end the ranking, as they end qarac-prep (its default --on-error fail); rows past
  // the --max-examples ranked are not read.
  struct Enough {};
  try {
    data::read_examples(path, format, data::default_encoding(format), data::OnError::fail, [&](data::Example&& e) {
      const std::string where = path + ": the question of line " + std::to_string(e.line);
      r.questions.push_back(t.encode(e.fields[0]));
      check_fits(r.questions.back(), question, where, true);
      r.answers.push_back(t.encode(e.fields[1]));
      check_fits(r.answers.back(), answer, where + ", its answer,", true);
      data::Ragged& s = r.candidates.sentences;
      for (const std::string& c : e.candidates) {
        const size_t begin = s.tokens.size();
        t.encode_append(c, s.tokens);
        check_fits(std::vector<int32_t>(s.tokens.begin() + static_cast<std::ptrdiff_t>(begin), s.tokens.end()), answer,
                   where + ", a candidate sentence of it,", true);
        s.offsets.push_back(static_cast<int64_t>(s.tokens.size()));
      }
      r.candidates.offsets.push_back(s.count());
      if (max_examples > 0 && static_cast<int64_t>(r.questions.size()) == max_examples) throw Enough{};
    });
  } catch (const Enough&) {
  }
  return r;
}

int rank(const std::string& source, const std::string& question_dir, const std::string& answer_dir,
         int64_t max_examples, int64_t batch, Device device) {
  Encoder question = io::load_encoder_export(question_dir, DType::f32, device);
  Encoder answer = io::load_encoder_export(answer_dir, DType::f32, device);
  QARAC_INPUT_CHECK(question.tokenizer.hash() == answer.tokenizer.hash(), question_dir, " and ", answer_dir,
                    " carry different tokenizers");
  const std::string unzipped = data::without_gz_suffix(source);  // a gzip file is read as its text
  auto ends_with = [&](const std::string& ext) {
    return unzipped.size() > ext.size() && unzipped.compare(unzipped.size() - ext.size(), ext.size(), ext) == 0;
  };
  const Ranked r = ends_with(".tsv")     ? from_raw(source, data::Format::wikiqa, question, answer, max_examples)
                   : ends_with(".jsonl") ? from_raw(source, data::Format::qa_jsonl, question, answer, max_examples)
                                         : from_stream(source, question, answer, max_examples);
  const auto n = static_cast<int64_t>(r.questions.size());
  QARAC_INPUT_CHECK(n > 0, source, ": holds no examples to rank");
  QARAC_INPUT_CHECK(r.candidates.sentences.count() > 0, source, ": none of the first ", n,
                    " examples has candidate sentences");
  // In passes of `batch` sentences, as the evaluation with eval.batch = batch encodes them.
  const cli::Vectors q = cli::encode(question, r.questions, batch, device);
  const cli::Vectors a = cli::encode(answer, r.answers, batch, device);
  EvalResult result;
  add_selection_metrics(*answer.model, r.candidates, r.questions, q.values, a.values, n,
                        static_cast<size_t>(q.cols), answer.config, device, PassSize{batch, 0}, result);
  cli::write_text("-", metric_lines(result));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (cli::version_requested(argc, argv)) return cli::print_version("qarac-embed");
  return cli::run_main("qarac-embed", [&] {
    std::string model, input, field, output, rank_source, question_dir, answer_dir, device_name;
    int64_t batch = 64, max_examples = 256;
    po::options_description options(
        "qarac-embed --model EXPORT --input FILE [--output FILE]\n"
        "qarac-embed --rank STREAM|WIKIQA.tsv|QA.jsonl --question-encoder EXPORT --answer-encoder EXPORT\n\n"
        "Sentence vectors of a QARAC encoder export (question_encoder or answer_encoder), or\n"
        "WikiQA answer selection as the training's evaluation computes it.\n\nOptions");
    options.add_options()
        ("help,h", "print this help")
        ("version", "print the version, the git commit and the libraries' versions, and exit")
        ("model", po::value(&model), "an encoder export folder (config.json, model.safetensors, tokenizer)")
        ("input", po::value(&input), "texts: one per line, or JSON lines (.jsonl, .ndjson, .json), either gzip-compressed too (.gz); - reads standard input, one text per line")
        ("field", po::value(&field)->default_value("text"), "the text field of JSON lines")
        ("output", po::value(&output)->default_value("-"), ".npy, .h5 (dataset \"vectors\") or JSON lines (.jsonl, .ndjson, .json); - : JSON lines on standard output")
        ("batch", po::value(&batch)->default_value(64), "sentences per forward pass (--rank: as qarac-train's eval.batch; in f32 the vectors' last bits depend on the batch, whose size picks BLAS's kernels)")
        ("rank", po::value(&rank_source), "a question_answering task stream with candidates (qarac-prep's output), a WikiQA .tsv or QA JSON lines (.jsonl, as qarac-prep --jsonl qa: reads them): print the answer-selection metrics")
        ("question-encoder", po::value(&question_dir), "--rank: the question encoder export")
        ("answer-encoder", po::value(&answer_dir), "--rank: the answer encoder export")
        ("max-examples", po::value(&max_examples)->default_value(256), "--rank: the first N examples (qarac-train's eval.examples); 0: all")
        ("device", po::value(&device_name)->default_value("cpu"), "cpu or cuda");
    po::variables_map vm;
    if (!cli::parse_command_line(argc, argv, options, vm)) return 0;
    QARAC_INPUT_CHECK(batch > 0, "--batch must be positive, got ", batch);
    QARAC_INPUT_CHECK(max_examples >= 0, "--max-examples must not be negative, got ", max_examples);
    const Device device = cli::parse_device(device_name);
    if (!rank_source.empty()) {
      QARAC_INPUT_CHECK(!question_dir.empty() && !answer_dir.empty(),
                        "--rank needs --question-encoder and --answer-encoder (see --help)");
      QARAC_INPUT_CHECK(model.empty() && input.empty() && output == "-" && vm["field"].defaulted(),
                        "--rank prints the answer-selection metrics; --model, --input, --output and --field ",
                        "go without it");
      return rank(rank_source, question_dir, answer_dir, max_examples, batch, device);
    }
    QARAC_INPUT_CHECK(!model.empty() && !input.empty(), "give --model and --input, or --rank (see --help)");
    QARAC_INPUT_CHECK(question_dir.empty() && answer_dir.empty() && vm["max-examples"].defaulted(),
                      "--question-encoder, --answer-encoder and --max-examples go with --rank");
    QARAC_INPUT_CHECK(vm["field"].defaulted() || cli::json_lines_input(input), "--field names a field of JSON lines; ",
                      input, " is read as one text per line");
    cli::check_output_spares(output, {input}, {{model, "--model", "the model"}});
    Encoder encoder = io::load_encoder_export(model, DType::f32, device);
    cli::write_vectors(output, cli::encode_texts(encoder, input, field, batch, device));
    return 0;
  }, "a smaller --batch needs less");
}
