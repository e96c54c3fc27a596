#!/usr/bin/env python3
"""Ports a source of kernels/cuda (a kernel file X.cu, a header X.cuh, backend.cpp) to host C++
for the CUDA emulator (cuda_emulator.h, emulated_libraries.h).

The port is mechanical, so that the tests run the kernels and the backend glue as written: CUDA's
headers, context.cuh and CUB give way to the emulator's (kernels/cuda/X.cuh -> X_emulated.h),
the namespace qarac::cuda becomes qarac::cuda_emulated (the real CUDA backend may be linked into
the same binary) and backend.cpp's cuda_backend() becomes cuda_emulated_backend(), inline-PTX
helpers (attention.cu's cp.async, ldmatrix, mma, ex2) are removed in favour of the emulator's,
__shared__ declarations become references into the emulated shared memory and
kernel<<<...>>>(args) becomes launch_kernel(...).named("kernel")(kernel, args).

Usage: port_kernel.py SOURCE OUT. When the source no longer has the shape this expects, it fails
with one line naming the file and what it did not find, and writes nothing.
"""
import os
import re
import sys

# The helpers between these two definitions are inline PTX; the emulator defines each of them.
PTX_FIRST = "__device__ __forceinline__ uint32_t shared_address"
PTX_END = "__device__ __forceinline__ uint32_t pack_bf16x2"
PTX_HELPERS = {"shared_address", "cp_async16", "cp_async_commit", "cp_async_wait", "ldmatrix_x4",
               "ldmatrix_x4_trans", "mma_bf16", "exp2_approx"}

# The includes each port drops or replaces; kernels/cuda/X.cuh becomes X_emulated.h.
INCLUDES = {
    '"kernels/cuda/context.cuh"': '#include "emulated_libraries.h"\n',
    "<cub/device/device_radix_sort.cuh>": '#include "emulated_libraries.h"\n',
    "<cuda_bf16.h>": "", "<cuda_runtime.h>": "", "<cublasLt.h>": "",
    '"core/check_cuda.h"': "", '"core/memory.h"': "",
}

# The constructs a source must contain (a construct not listed is still ported when present), so
# that a change of shape fails here rather than as a port that silently skips something; any
# __shared__, <<<, asm or __cvta left after the port fails it too.
EXPECTS = {
    "attention.cu": {"ptx", "dynamic_shared", "static_shared", "launch"},
    "backend.cpp": {"backend"},
    "context.cu": None,  # the real context and stream: emulated_libraries.cpp stands in for it
    "context.cuh": None,
}


class Mismatch(Exception):
    pass


def replace_once(src, old, new):
    if src.count(old) != 1:
        raise Mismatch(f"did not find exactly one '{old.strip()}'")
    return src.replace(old, new)


def static_shared(match):
    """__shared__ __align__(128) bf16_t sK[2][kTileH], sV[2][kTileH]; -> a reference to emulated shared
    memory per array."""
    align, typ, declarators = match.group(1), match.group(2), match.group(3)
    align = align or f"alignof({typ})"
    refs = []
    for declarator in declarators.split(","):
        array = re.fullmatch(r"\s*(\w+)((?:\[[^\]]+\])+)\s*", declarator)
        if array is None:
            raise Mismatch(f"did not find an array in the __shared__ declaration '{declarator.strip()}'")
        name, dims = array.groups()
        refs.append(f"{typ} (&{name}){dims} = *static_cast<{typ} (*){dims}>("
                    f"::emu::static_shared(sizeof({typ}{dims}), {align}));")
    return " ".join(refs)


def port(src, name):
    def include(match):
        target = match.group(1)
        if target in INCLUDES:
            return INCLUDES[target]
        own = re.fullmatch(r'"kernels/cuda/(\w+)\.cuh"', target)
        return f'#include "{own.group(1)}_emulated.h"\n' if own else match.group(0)
    src = re.sub(r'#include ([<"][^>"]+[>"])\n', include, src)
    src = '#include "cuda_emulator.h"\n' + src
    # Every block of the namespace: device_utils.cuh reopens it several times.
    opened, closed = src.count("namespace qarac::cuda {"), src.count("}  // namespace qarac::cuda\n")
    if opened == 0 or opened != closed:
        raise Mismatch(f"did not find matching 'namespace qarac::cuda {{' ({opened}) and "
                       f"'}}  // namespace qarac::cuda' ({closed}) lines")
    src = src.replace("namespace qarac::cuda {", "namespace qarac::cuda_emulated {")
    src = src.replace("}  // namespace qarac::cuda\n", "}  // namespace qarac::cuda_emulated\n")

    expects = EXPECTS.get(name, set())
    if "backend" in expects:
        src = replace_once(src, "const Backend& cuda_backend() {", "const Backend& cuda_emulated_backend() {")
        src = re.sub(r"\bcuda::", "cuda_emulated::", src)
    if "ptx" in expects:
        first, end = src.find(PTX_FIRST), src.find(PTX_END)
        if first < 0 or end < first:
            raise Mismatch(f"did not find the inline-PTX helpers from '{PTX_FIRST}' to '{PTX_END}'")
        region = src[first:end]
        found = set(re.findall(r"__device__ __forceinline__[^(]*?\b(\w+)\(", region))
        if found - PTX_HELPERS:
            raise Mismatch("did not find an emulation of the PTX helper(s) " + ", ".join(sorted(found - PTX_HELPERS)))
        src = src[:first] + src[end:]

    src, n = re.subn(r"extern __shared__ float (\w+)\[\];", r"float* \1 = ::emu::dynamic_shared();", src)
    if n == 0 and "dynamic_shared" in expects:
        raise Mismatch("did not find 'extern __shared__ float gen_smem[];'")
    src, n = re.subn(r"__shared__ (?:__align__\((\d+)\) )?(\w+) ([^;]+);", static_shared, src)
    if n == 0 and "static_shared" in expects:
        raise Mismatch("did not find a static __shared__ array")
    # The kernel's name may carry template arguments nested one deep (elementwise_kernel<kPack16<T>>).
    src, n = re.subn(r"([A-Za-z_][\w:]*(?:<(?:[^<>;]|<[^<>;]*>)*>)?)\s*<<<(.*?)>>>\(",
                     r'launch_kernel(\2).named("\1")(\1, ', src, flags=re.S)
    if n == 0 and "launch" in expects:
        raise Mismatch("did not find a kernel launch <<<...>>>")

    code = re.sub(r"//.*", "", src)
    for leftover in ("__shared__", "<<<", "asm", "__cvta"):
        if re.search(r"\b" + re.escape(leftover) if leftover[0].isalpha() else re.escape(leftover), code):
            raise Mismatch(f"did not find a way to port a remaining '{leftover}'")
    return src


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: port_kernel.py SOURCE OUT")
    path, out = sys.argv[1], sys.argv[2]
    name = os.path.basename(path)
    if not re.fullmatch(r"\w+\.(cu|cuh)|backend\.cpp", name) or EXPECTS.get(name, set()) is None:
        print(f"port_kernel.py: {path}: not a source it ports (kernels/cuda's .cu, .cuh and backend.cpp "
              "but context.cu and context.cuh)", file=sys.stderr)
        return 1
    with open(path, encoding="utf-8") as f:
        src = f.read()
    try:
        ported = port(src, name)
    except Mismatch as e:
        print(f"port_kernel.py: {path}: {e}: update tests/emulation/port_kernel.py", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(f"// Generated by tests/emulation/port_kernel.py from {path}; do not edit.\n")
        f.write(ported)
    return 0


if __name__ == "__main__":
    sys.exit(main())
