# Warning flags shared by every QARAC-MT target: g++ for C++, nvcc's own and its host compiler's
# for CUDA. QARAC_WERROR turns both into errors (CI-style builds; off by default so that a newer
# compiler's new warning does not break a user's build).
add_library(qarac_warnings INTERFACE)
target_compile_options(qarac_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wshadow -Wnon-virtual-dtor -Wno-unused-parameter>
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wno-unused-parameter --expt-relaxed-constexpr
                             -Wreorder -Wdefault-stream-launch -Wext-lambda-captures-this>)
if(QARAC_WERROR)
  target_compile_options(qarac_warnings INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-Werror>
    $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Werror>)
endif()
