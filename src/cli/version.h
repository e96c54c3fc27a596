// `--version` of every QARAC-MT program: what was built (version, git commit, build type,
// compiler, CUDA architectures) and what it runs on (CUDA runtime and driver, NCCL, MPI), so that
// a cluster job's log or a bug report says exactly which build and libraries ran.
#pragma once

#include <string>

namespace qarac::cli {

// True when an argument is exactly --version. Each main asks before anything else, so that the
// answer needs neither MPI start-up, a GPU nor otherwise valid options.
bool version_requested(int argc, char** argv);

// The report, one "key  value" line each, the first "<program> <version>".
std::string version_text(const char* program);

// Writes version_text to stdout; returns the exit status: 0, or 2 (said on stderr) when standard
// output could not take it all.
int print_version(const char* program);

}  // namespace qarac::cli
