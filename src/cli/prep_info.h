// `qarac-prep info`: what task-stream files hold, for whoever chooses a run's lengths and batches.
#pragma once

namespace qarac::cli {

// `qarac-prep info STREAM|DIR... [--verify]`; argv[0] is "info". Returns the exit status.
int prep_info(int argc, char** argv);

}  // namespace qarac::cli
