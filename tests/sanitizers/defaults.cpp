// The sanitizers' defaults of every program of a QARAC_SANITIZE=address build (CMakeLists.txt
// adds this file to each): set in the programs, not the environment, so that they hold under
// ctest, the test discovery of the build, mpirun's ranks and the scripts that start programs.
// ASAN_OPTIONS and LSAN_OPTIONS still override them.
extern "C" {

// Whole stacks at every allocation: the suppressions match Open MPI's leaks by the library that
// calls its dlclose'd components, frames the frame-pointer unwinder cannot reach.
const char* __asan_default_options() { return "fast_unwind_on_malloc=0"; }

// The suppressions of third-party leaks; print_suppressions=0 keeps their summary out of the
// output that tests compare (one line of error, nothing after it).
const char* __lsan_default_options() { return "suppressions=" QARAC_LSAN_SUPPRESSIONS ":print_suppressions=0"; }

}  // extern "C"
