// How QARAC-MT programs turn errors into exit codes: usage and input errors (bad options,
// unreadable or malformed files) and a lack of memory exit 2 with one line; internal errors exit
// 1. A program's own statuses (qarac-train: 3 communication, 4 replicas, 75 stopped) are what its
// body returns.
#pragma once

#include <boost/program_options.hpp>

#include <csignal>
#include <cstdio>
#include <exception>
#include <new>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "cli/standard_output.h"
#include "core/error.h"

namespace qarac::cli {

// An InputError for a word of the command line with a line break (a path): every message that
// quotes a word stays one line, as qarac-train's.
inline void refuse_line_breaks(int argc, const char* const argv[]) {
  for (int i = 1; i < argc; ++i)
    QARAC_INPUT_CHECK(std::string_view(argv[i]).find('\n') == std::string_view::npos, "command-line argument '",
                      printable(argv[i]), "' holds a line break");
}

// Parses the command line into `vm` against `options` and notifies it; false after printing the
// options for --help (the program then exits 0). A word that is no option's value is refused:
// Boost would drop it without a word (an output path given without --output), unless
// `positional` names the option such words are values of.
inline bool parse_command_line(int argc, const char* const argv[],
                               const boost::program_options::options_description& options,
                               boost::program_options::variables_map& vm,
                               const boost::program_options::positional_options_description& positional = {}) {
  namespace po = boost::program_options;
  refuse_line_breaks(argc, argv);
  // Without guessing: an abbreviation is an unknown option, not the option it begins.
  po::command_line_parser parser(argc, argv);
  parser.options(options).style(po::command_line_style::default_style & ~po::command_line_style::allow_guessing);
  if (positional.max_total_count() > 0) parser.positional(positional);  // else: Boost's own error
  const po::parsed_options parsed = parser.run();
  // Without `positional`, a word that is no option's value is a positional one: refused too.
  const std::vector<std::string> stray = po::collect_unrecognized(
      parsed.options, positional.max_total_count() > 0 ? po::exclude_positional : po::include_positional);
  QARAC_INPUT_CHECK(stray.empty(), "unexpected argument '", stray.empty() ? "" : stray.front(),
                    "': options are --NAME VALUE (see --help)");
  po::store(parsed, vm);
  if (vm.count("help")) {
    std::ostringstream text;
    text << options << "\n";
    write_standard_output(text.str());
    return false;
  }
  boost::program_options::notify(vm);
  return true;
}

// `out_of_memory_hint`: what of the program's settings needs less memory, said after an
// OutOfMemory (a tensor's allocation) or a std::bad_alloc (any other).
template <class Body>
int run_main(const char* program, Body&& body, const char* out_of_memory_hint = nullptr) {
  const auto out_of_memory = [&](const std::string& what) {
    std::fprintf(stderr, "%s: error: %s%s%s\n", program, what.c_str(), out_of_memory_hint ? "; " : "",
                 out_of_memory_hint ? out_of_memory_hint : "");
    return 2;
  };
  // A file-size limit (ulimit -f) fails the write that would pass it (EFBIG), which the program
  // says in one line as it does a full disk, leaving no temporary file; SIGXFSZ's default would
  // kill it unsaid, its temporary files left behind.
  std::signal(SIGXFSZ, SIG_IGN);
  try {
    const int code = body();
    if (code == 0) check_standard_output();
    return code;
  } catch (const OutOfMemory& e) {
    return out_of_memory(e.what());
  } catch (const std::bad_alloc&) {
    return out_of_memory("out of memory on " + hostname() + ": an allocation outside the tensors failed");
  } catch (const boost::program_options::error& e) {
    std::fprintf(stderr, "%s: error: %s (see --help)\n", program, e.what());
    return 2;
  } catch (const InputError& e) {
    std::fprintf(stderr, "%s: error: %s\n", program, e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: internal error: %s\n", program, e.what());
    return 1;
  }
}

}  // namespace qarac::cli
