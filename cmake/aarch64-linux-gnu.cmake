# Cross-build for aarch64 Linux (Grace Hopper, Graviton) from an x86-64 Debian machine, tests run
# under qemu-user. The arm64 libraries come unpacked into a sysroot (QARAC_SYSROOT, default
# /opt/arm64-sysroot), not installed: docs/architecture.md §4 lists the steps.
#   cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DQARAC_CUDA=OFF
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

if(DEFINED ENV{QARAC_SYSROOT})
  set(QARAC_SYSROOT "$ENV{QARAC_SYSROOT}")
elseif(NOT QARAC_SYSROOT)
  set(QARAC_SYSROOT /opt/arm64-sysroot)
endif()
set(CMAKE_SYSROOT "${QARAC_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH "${QARAC_SYSROOT}")
# Programs (python3, the compilers) are the host's; libraries, headers and packages the target's.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# ctest and gtest_discover_tests run the test programs through this.
set(CMAKE_CROSSCOMPILING_EMULATOR "qemu-aarch64;-L;${QARAC_SYSROOT}")

# The host's mpicc, h5cc and pkg-config files would give the host's paths: find the target's MPI
# and HDF5 by their files, and pkg-config's modules in the sysroot.
set(ENV{PKG_CONFIG_LIBDIR} "${QARAC_SYSROOT}/usr/lib/aarch64-linux-gnu/pkgconfig:${QARAC_SYSROOT}/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_SYSROOT_DIR} "${QARAC_SYSROOT}")
set(MPI_ASSUME_NO_BUILTIN_MPI TRUE)
set(MPI_SKIP_COMPILER_WRAPPER TRUE)
set(MPI_C_HEADER_DIR "${QARAC_SYSROOT}/usr/lib/aarch64-linux-gnu/openmpi/include" CACHE PATH "")
set(MPI_C_LIB_NAMES mpi CACHE STRING "")
set(MPI_mpi_LIBRARY "${QARAC_SYSROOT}/usr/lib/aarch64-linux-gnu/libmpi.so" CACHE FILEPATH "")
set(HDF5_ROOT /usr/lib/aarch64-linux-gnu/hdf5/serial)
