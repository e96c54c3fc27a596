// Helpers internal to src/io: quoting of file contents in messages. (Atomic file writes are
// core's: core/atomic_file.h.)
#pragma once

#include <string>

namespace qarac::io {

// Text from a file (names, values) with control characters escaped as \xNN, so that an error
// message quoting it stays on one line.
std::string printable(const std::string& text);

}  // namespace qarac::io
