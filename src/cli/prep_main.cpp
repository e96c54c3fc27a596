// qarac-prep: raw datasets + a tokenizer -> one HDF5 task-stream file per task (layout in
// docs/data-format.md), and `qarac-prep tokenize`, a JSON-lines filter over the tokenizer.
//
//   qarac-prep --tokenizer DIR --out DIR [--text F]... [--wikiqa F]... [--avicenna F]...
//              [--snli F]... [--jsonl TASK:F]... [--encoding latin-1|utf-8] [--on-error fail|skip]
//              [--max-length N] [--too-long truncate|skip]
//   qarac-prep tokenize --tokenizer DIR [--special] [--decode]
//   qarac-prep info STREAM|DIR... [--verify]
//
// Every output is written under a temporary name; the files are renamed into place only after
// every task has been written, so a failed or interrupted (SIGINT, SIGTERM, SIGHUP) run leaves no
// output file, whole or half-written, and no temporary file.
#include <boost/program_options.hpp>

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <exception>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "cli/prep_info.h"
#include "cli/run_main.h"
#include "cli/version.h"
#include "core/log.h"
#include "core/progress.h"
#include "data/line_file.h"
#include "data/readers.h"
#include "data/shards.h"
#include "data/tokenize_lines.h"
#include "data/tokenizer.h"

namespace po = boost::program_options;
using namespace qarac;
using namespace qarac::data;

namespace {

// Examples tokenised together: large enough to keep every thread busy, small enough that the
// block's tokens stay a few MB.
constexpr size_t kBlock = 4096;

// SIGINT, SIGTERM or SIGHUP ends the run through an exception, so that the writers remove their
// temporary files (the default action left them behind for good): at the next example, or at once
// when a read waits on a pipe (the handlers do not restart reads). A second signal acts as if none
// were handled.
volatile std::sig_atomic_t g_interrupt = 0;
extern "C" void on_interrupt(int signal) { g_interrupt = signal; }

void check_interrupt() {
  if (g_interrupt != 0)
    throw InputError(qarac::detail::concat("interrupted by ", g_interrupt == SIGINT ? "SIGINT" : g_interrupt == SIGTERM ? "SIGTERM"
                                                                                                            : "SIGHUP",
                                    ": nothing was written (the temporary files are removed)"));
}

void handle_interrupts() {
  struct sigaction action {};
  action.sa_handler = on_interrupt;
  action.sa_flags = SA_RESETHAND;
  sigemptyset(&action.sa_mask);
  for (int signal : {SIGINT, SIGTERM, SIGHUP}) sigaction(signal, &action, nullptr);
  set_read_interrupt_check(check_interrupt);
  // The results are files: a log whose reader went away (`2>&1 | head`, a tee that died) must not
  // kill the run and leave its temporary files. The writes fail instead, and the run goes on; a
  // summary it could not print is then said in its exit status (check_standard_output).
  std::signal(SIGPIPE, SIG_IGN);
}

struct Settings {
  OnError on_error = OnError::fail;
  bool special = true;
  int64_t max_length = 512;
  bool truncate = true;
  int threads = 1;
  WriterOptions writer;
};

// Tokenises examples a block at a time on several threads and appends them, in input order, to
// the task's writer; the output does not depend on the thread count.
class StreamBuilder {
 public:
  StreamBuilder(const Tokenizer& tok, const Settings& settings, TaskStreamWriter& writer)
      : tok_(tok), settings_(settings), writer_(writer) {}

  void add(Example&& ex) {
    block_.push_back(std::move(ex));
    if (block_.size() == kBlock) flush();
  }

  // Tokenises and writes the pending examples, counting them (and those cut or dropped for
  // --max-length) in the current source. Candidates are held to --max-length like fields: they
  // are the answer encoder's input at evaluation as the answers are.
  void flush() {
    tokenise_block();
    for (size_t i = 0; i < block_.size(); ++i) {
      Tokenised& ids = ids_[i];
      bool too_long = false;
      for (const auto* texts : {&ids.fields, &ids.candidates})
        for (const auto& t : *texts) too_long |= static_cast<int64_t>(t.size()) > settings_.max_length;
      if (too_long && !settings_.truncate) {
        ++source_->skipped["longer than --max-length"];
        continue;
      }
      if (too_long) {
        for (auto* texts : {&ids.fields, &ids.candidates})
          for (auto& t : *texts) truncate_ids(t, settings_.max_length, tok_.eos_id());
        ++source_->truncated;
      }
      writer_.append(ids.fields, block_[i].label, ids.candidates);
      ++source_->examples;
    }
    block_.clear();
  }

  // The file the next examples come from; flush() before changing it.
  void set_source(SourceInfo* source) { source_ = source; }

 private:
  void tokenise_block() {
    ids_.assign(block_.size(), {});
    const size_t n = block_.size();
    const size_t threads = std::min<size_t>(static_cast<size_t>(settings_.threads), (n + 63) / 64);
    auto work = [&](size_t t) {
      for (size_t i = t; i < n; i += threads) {
        for (const std::string& text : block_[i].fields)
          ids_[i].fields.push_back(tok_.encode(text, settings_.special));
        for (const std::string& text : block_[i].candidates)
          ids_[i].candidates.push_back(tok_.encode(text, settings_.special));
      }
    };
    if (threads <= 1) {
      if (n > 0) work(0);
      return;
    }
    // Exceptions cannot cross a thread: each worker keeps its own and the first is rethrown.
    std::vector<std::exception_ptr> errors(threads);
    auto share = [&](size_t t) {
      try {
        work(t);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    };
    std::vector<std::thread> pool;
    try {
      for (size_t t = 0; t < threads; ++t) pool.emplace_back(share, t);
    } catch (const std::system_error&) {
      // Out of threads (ulimit -u, a container's pids limit): this one does the shares of those
      // that did not start (the output is the same), rather than end the run.
    }
    for (size_t t = pool.size(); t < threads; ++t) share(t);
    for (std::thread& th : pool) th.join();
    for (const std::exception_ptr& e : errors)
      if (e) std::rethrow_exception(e);
  }

  // The token ids of one example's fields and candidates.
  struct Tokenised {
    std::vector<std::vector<int32_t>> fields, candidates;
  };

  const Tokenizer& tok_;
  const Settings& settings_;
  TaskStreamWriter& writer_;
  SourceInfo* source_ = nullptr;
  std::vector<Example> block_;
  std::vector<Tokenised> ids_;
};

struct Input {
  Format format;
  std::string path;
  Encoding encoding;
};

std::string skipped_summary(const std::map<std::string, int64_t>& skipped) {
  std::string out;
  for (const auto& [reason, count] : skipped)
    out += (out.empty() ? "" : ", ") + reason + " " + std::to_string(count);
  return out.empty() ? "none" : out;
}

int build(int argc, char** argv) {
  std::string tokenizer_dir, out_dir, encoding, on_error, too_long;
  std::vector<std::string> text, wikiqa, avicenna, snli, jsonl;
  Settings settings;
  bool no_special = false;
  po::options_description options(
      "qarac-prep --tokenizer DIR --out DIR [inputs] [options]\n"
      "qarac-prep tokenize --tokenizer DIR [--special] [--decode]   (see tokenize --help)\n"
      "qarac-prep info STREAM|DIR... [--verify]   what streams hold (see info --help)\n\n"
      "Tokenises raw datasets into one HDF5 task-stream file per task in --out:\n"
      "encode_decode.h5 (--text), question_answering.h5 (--wikiqa), reasoning.h5\n"
      "(--avicenna), consistency.h5 (--snli), or any of them from JSON lines (--jsonl).\n"
      "Each input option may be repeated; a task's files are concatenated in the order\n"
      "given; gzip-compressed files (.gz) are read as their text. Formats and layout:\n"
      "docs/data-format.md.\n\nOptions");
  options.add_options()
      ("help,h", "print this help")
      ("version", "print the version, the git commit and the libraries' versions, and exit")
      ("tokenizer", po::value(&tokenizer_dir)->required(),
       "tokenizer directory: tokenizer.json, or vocab.json + merges.txt")
      ("out", po::value(&out_dir)->required(), "output directory (created if missing)")
      ("text", po::value(&text)->composing(), "plain text, one document per line")
      ("wikiqa", po::value(&wikiqa)->composing(),
       "WikiQA TSV; pairs with Label 1 are kept, with their question's Label 0 sentences as "
       "candidates")
      ("avicenna", po::value(&avicenna)->composing(),
       "Avicenna CSV; rows with Syllogistic relation = yes are kept")
      ("snli", po::value(&snli)->composing(),
       "SNLI 1.0: .jsonl, the .txt tab export or the .csv export; gold label '-' is skipped")
      ("jsonl", po::value(&jsonl)->composing(),
       "TASK:FILE, your own data for a task (ed, qa, rs, cs): one JSON object per line with the "
       "task's fields, ed {text}, qa {question, answer, candidates (optional array)}, rs {premise0, "
       "premise1, conclusion}, cs {statement0, statement1, label: entailment|neutral|contradiction}")
      ("encoding", po::value(&encoding),
       "latin-1 or utf-8, of every input (default: latin-1 for --avicenna, as the dataset is "
       "distributed; utf-8 for the others). Read as latin-1, a C1 control byte (0x80-0x9F) is "
       "malformed, and a file that looks like UTF-8 is warned about")
      ("on-error", po::value(&on_error)->default_value("fail"),
       "malformed records: fail (error naming file:line) or skip (count them in the metadata)")
      ("max-length", po::value(&settings.max_length)->default_value(512),
       "longest field in tokens, <s> and </s> included (RoBERTa: 512)")
      ("too-long", po::value(&too_long)->default_value("truncate"),
       "longer fields: truncate (keeping </s>) or skip the example")
      ("no-special", po::bool_switch(&no_special), "do not wrap fields in <s> ... </s>")
      ("threads", po::value(&settings.threads)->default_value(static_cast<int>(
                      std::max(1u, std::thread::hardware_concurrency()))),
       "threads that tokenise, and that compress the chunks of each stream")
      ("compression", po::value(&settings.writer.compression)->default_value(4),
       "deflate level 0..9 (0: none)")
      ("chunk-tokens", po::value(&settings.writer.chunk_tokens)->default_value(1 << 16),
       "HDF5 chunk length of the token arrays");
  po::variables_map vm;
  if (!cli::parse_command_line(argc, argv, options, vm)) return 0;
  settings.on_error = on_error_from_name(on_error);
  // One encoding for every input: a run that mixes encodings is rare, and its tasks can be
  // prepared by two runs into the same --out.
  const std::optional<Encoding> run_encoding =
      vm.count("encoding") ? std::optional<Encoding>(encoding_from_name(encoding)) : std::nullopt;
  settings.special = !no_special;
  QARAC_INPUT_CHECK(too_long == "truncate" || too_long == "skip",
                    "--too-long must be truncate or skip, got '", too_long, "'");
  settings.truncate = too_long == "truncate";
  QARAC_INPUT_CHECK(settings.max_length >= (settings.special ? 3 : 1), "--max-length must be at least ",
                    settings.special ? "3 (<s>, a token, </s>)" : "1", ", got ", settings.max_length);
  QARAC_INPUT_CHECK(settings.threads >= 1, "--threads must be at least 1, got ", settings.threads);
  settings.writer.threads = settings.threads;
  QARAC_INPUT_CHECK(settings.writer.chunk_tokens >= 1 && settings.writer.chunk_tokens <= kMaxChunkElements,
                    "--chunk-tokens must be in [1, ", kMaxChunkElements, "], got ", settings.writer.chunk_tokens);
  QARAC_INPUT_CHECK(settings.writer.compression >= 0 && settings.writer.compression <= 9,
                    "--compression must be in [0, 9], got ", settings.writer.compression);

  std::map<Task, std::vector<Input>> inputs;
  auto add = [&](Format format, const std::string& path) {
    inputs[task_of(format)].push_back({format, path, run_encoding.value_or(default_encoding(format))});
  };
  for (const std::string& p : text) add(Format::text, p);
  for (const std::string& p : wikiqa) add(Format::wikiqa, p);
  for (const std::string& p : avicenna) add(Format::avicenna, p);
  for (const std::string& p : snli) add(snli_format_of(p), p);
  for (const std::string& spec : jsonl) {
    const size_t colon = spec.find(':');
    QARAC_INPUT_CHECK(colon != std::string::npos && colon + 1 < spec.size(), "--jsonl ", spec,
                      ": expected TASK:FILE, e.g. qa:my_questions.jsonl");
    Format format;
    try {
      format = jsonl_format_of(task_from_name(spec.substr(0, colon)));
    } catch (const InputError& e) {
      throw InputError("--jsonl " + spec + ": " + e.what());
    }
    add(format, spec.substr(colon + 1));
  }
  QARAC_INPUT_CHECK(!inputs.empty(), "no input: give --text, --wikiqa, --avicenna, --snli or --jsonl");

  handle_interrupts();
  const Tokenizer tok = Tokenizer::from_dir(tokenizer_dir);
  // The streams say they hold <s> ... </s> (what the models read); a tokenizer without its
  // post-processor (one trained with tokenizers' ByteLevelBPETokenizer) adds neither.
  if (settings.special) {
    const std::vector<int32_t> probe = tok.encode("a", true);
    QARAC_INPUT_CHECK(probe.size() >= 2 && probe.front() == tok.bos_id() && probe.back() == tok.eos_id(), "--tokenizer ",
                      tokenizer_dir, ": adds no <s> ... </s> around a text (tokenizer.json has no post_processor), "
                      "which the QARAC models read: give RoBERTa's processing, or pass --no-special for streams "
                      "without them");
  }
  std::error_code ec;
  // A run that fails removes the folders it created (--out and its missing parents, the deepest
  // first), those it left nothing in.
  struct RemovedIfLeftEmpty {
    std::vector<std::filesystem::path> folders;
    ~RemovedIfLeftEmpty() {
      std::error_code ec;  // a folder that is not empty stays, and so do those above it
      if (std::uncaught_exceptions() > 0)
        for (const std::filesystem::path& folder : folders)
          if (std::filesystem::symlink_status(folder, ec).type() == std::filesystem::file_type::directory)
            std::filesystem::remove(folder, ec);
    }
  } created;
  // Only what is not there at all (a dangling link is there: it is the user's).
  for (std::filesystem::path p = std::filesystem::absolute(out_dir, ec); !ec; p = p.parent_path()) {
    std::error_code missing;  // set for a path that is not there, which is what is looked for
    if (std::filesystem::symlink_status(p, missing).type() != std::filesystem::file_type::not_found) break;
    created.folders.push_back(p);
  }
  std::filesystem::create_directories(out_dir, ec);
  QARAC_INPUT_CHECK(!ec, out_dir, ": cannot create the output directory: ", ec.message());
  // What a killed run leaves behind (SIGKILL: no handler removes them), said rather than removed:
  // on a shared file system the writer may be a live run on another node.
  std::string leftovers;
  for (const auto& entry : std::filesystem::directory_iterator(out_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.find(std::string(".h5") + kTempFileMarker) != std::string::npos)
      leftovers += (leftovers.empty() ? "" : ", ") + name;
  }
  if (!leftovers.empty())
    log::warn(out_dir, ": temporary files of a qarac-prep that was stopped or still runs elsewhere: ", leftovers,
              " (remove them once no qarac-prep writes here)");
  // An earlier run that stopped while publishing left streams of two preparations here: this run
  // makes the folder whole again only if it writes every stream that one was publishing.
  if (const std::optional<std::vector<std::string>> earlier = unfinished_publish(out_dir)) {
    std::string missing;
    for (const std::string& name : *earlier) {
      const bool mine = std::any_of(inputs.begin(), inputs.end(),
                                    [&](const auto& input) { return name == std::string(task_name(input.first)) + ".h5"; });
      if (!mine) missing += (missing.empty() ? "" : ", ") + name;
    }
    QARAC_INPUT_CHECK(missing.empty() && !earlier->empty(), out_dir, "/", kPublishingMarker,
                      ": an earlier qarac-prep stopped while publishing its streams here, and this run does not write ",
                      missing.empty() ? std::string("the ones it does not name") : missing,
                      ": rerun that one (or remove this file to keep the folder as it is)");
  }

  const auto start = std::chrono::steady_clock::now();
  int64_t total_examples = 0;
  std::vector<std::unique_ptr<TaskStreamWriter>> writers;
  std::vector<Task> written;
  for (const auto& [task, files] : inputs) {
    const std::string path = out_dir + "/" + task_name(task) + ".h5";
    writers.push_back(std::make_unique<TaskStreamWriter>(path, task, settings.writer));
    TaskStreamWriter& writer = *writers.back();
    StreamInfo info;
    info.tokenizer_hash = tok.hash();
    info.special_tokens = settings.special;
    info.max_length = settings.max_length;
    info.created_by = "qarac-prep";
    StreamBuilder builder(tok, settings, writer);
    for (const Input& in : files) {
      info.sources.emplace_back();
      SourceInfo& src = info.sources.back();
      builder.set_source(&src);
      Progress progress(in.path, "examples read", 0);
      const ReadStats stats = read_examples(in.path, in.format, in.encoding, settings.on_error, [&](Example&& ex) {
        check_interrupt();
        builder.add(std::move(ex));
        progress.add(1);
      });
      builder.flush();
      src.path = in.path;
      src.format = format_name(in.format);
      src.lines = stats.lines;
      src.candidates = stats.candidates;
      for (const auto& [reason, count] : stats.skipped) src.skipped[reason] += count;
      log::info(in.path, ": ", src.lines, " lines, ", src.examples, " examples",
                src.truncated ? qarac::detail::concat(" (", src.truncated, " truncated)") : std::string(),
                src.candidates ? qarac::detail::concat(", ", src.candidates, " candidate sentences")
                               : std::string(),
                ", skipped: ", skipped_summary(src.skipped));
      // On screen, not only in the counts: a model trained on cut examples learns from half of
      // them (a too small --max-length for the data truncates every long example).
      if (src.truncated > 0)
        log::warn(in.path, ": ", src.truncated, " of ", src.examples, " examples (",
                  100 * src.truncated / std::max<int64_t>(src.examples, 1), "%) have a field cut to --max-length ",
                  settings.max_length, " tokens (raise it, or --too-long skip drops them)");
    }
    check_interrupt();
    if (writer.examples() == 0) {
      std::string read;  // each input with what it skipped
      for (size_t i = 0; i < files.size(); ++i)
        read += (i ? "; " : "") + files[i].path + " (skipped: " + skipped_summary(info.sources[i].skipped) + ")";
      QARAC_INPUT_CHECK(false, task_name(task), ": no examples in its inputs: ", read);
    }
    writer.finish(info);
    total_examples += writer.examples();
    written.push_back(task);
  }
  publish_streams(out_dir, writers);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Read back what was written: the summary comes from the files, and a file that does not open
  // is reported now rather than by the training job.
  for (const Task task : written) {
    const TaskStreamFile check(out_dir + "/" + task_name(task) + ".h5");
    std::string tokens;
    for (size_t f = 0; f < check.info().field_tokens.size(); ++f)
      tokens += qarac::detail::concat(f ? ", " : "", task_fields(check.task())[f], " ",
                               check.info().field_tokens[f]);
    if (check.has_candidates())
      tokens += qarac::detail::concat("; candidates: ", check.info().candidates, " sentences, ",
                                      check.info().candidate_tokens, " tokens");
    std::printf("%s: %lld examples (tokens: %s) -> %s\n", task_name(check.task()),
                static_cast<long long>(check.examples()), tokens.c_str(), check.path().c_str());
  }
  std::printf("%lld examples in %.2f s (%.0f examples/s), tokenizer %s\n",
              static_cast<long long>(total_examples), seconds, total_examples / seconds,
              tok.hash().c_str());
  return 0;
}

// One JSON value per input line -> one per output line, flushed line by line so that another
// program can drive it as a co-process.
int tokenize(int argc, char** argv) {
  std::string tokenizer_dir;
  bool special = false, decode = false;
  po::options_description options(
      "qarac-prep tokenize --tokenizer DIR [--special] [--decode]\n\n"
      "Reads one JSON string per line on stdin and writes the JSON array of its token ids per\n"
      "line on stdout; with --decode, reads arrays of ids and writes strings (bytes that are\n"
      "not valid UTF-8 become U+FFFD, as in Hugging Face).\n\nOptions");
  options.add_options()
      ("help,h", "print this help")
      ("tokenizer", po::value(&tokenizer_dir)->required(),
       "tokenizer directory: tokenizer.json, or vocab.json + merges.txt")
      ("special", po::bool_switch(&special),
       "encode: wrap in <s> ... </s>; decode: keep special tokens in the text")
      ("decode", po::bool_switch(&decode), "ids -> text");
  po::variables_map vm;
  if (!cli::parse_command_line(argc, argv, options, vm)) return 0;
  const Tokenizer tok = Tokenizer::from_dir(tokenizer_dir);

  // Read with the readers' line input: a read error or an over-long line is an error naming the
  // line, never an early end of the input.
  LineFile in(0, "stdin");
  std::string line;
  while (in.next(line)) {
    std::cout << tokenize_line(tok, line, {special, decode}, "stdin", in.line_no()) << std::endl;
    QARAC_INPUT_CHECK(std::cout, "standard output: write failed after line ", in.line_no());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (cli::version_requested(argc, argv)) return cli::print_version("qarac-prep");
  const std::string command = argc > 1 && (std::string(argv[1]) == "tokenize" || std::string(argv[1]) == "info")
                                  ? argv[1] : "";
  const std::string program = command.empty() ? "qarac-prep" : "qarac-prep " + command;
  const int code = cli::run_main(program.c_str(), [&] {
    if (command == "tokenize") return tokenize(argc - 1, argv + 1);
    if (command == "info") return cli::prep_info(argc - 1, argv + 1);
    return build(argc, argv);
  });
  // Interrupted: with the temporary files removed and the line printed, the run ends as the
  // signal's default action ends it, so that a shell loop or a job script sees an interruption
  // (status 130 for SIGINT) and not an input error.
  if (code != 0 && g_interrupt != 0) {
    std::signal(g_interrupt, SIG_DFL);
    std::raise(g_interrupt);
  }
  return code;
}
