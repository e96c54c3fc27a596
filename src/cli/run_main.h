// How QARAC-MT programs turn errors into exit codes: usage and input errors (bad options,
// unreadable or malformed files) exit 2 with one line; internal errors exit 1. A program's own
// statuses (qarac-train: 3 communication, 4 replicas, 75 stopped) are what its body returns.
#pragma once

#include <boost/program_options.hpp>

#include <cstdio>
#include <exception>

#include "core/error.h"

namespace qarac::cli {

template <class Body>
int run_main(const char* program, Body&& body) {
  try {
    return body();
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
