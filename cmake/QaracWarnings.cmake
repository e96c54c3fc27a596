# Warning flags shared by every QARAC-MT target (C++ only; nvcc gets its own below).
add_library(qarac_warnings INTERFACE)
target_compile_options(qarac_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wshadow -Wnon-virtual-dtor -Wno-unused-parameter>
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall --expt-relaxed-constexpr>)
