#!/usr/bin/env python3
"""Ports a CUDA source of kernels/cuda (attention.cu, dropout.cu, their headers, device_utils.cuh)
to host C++ for the CUDA emulator (cuda_emulator.h).

The port is mechanical, so that the tests run the kernels as written: the CUDA headers give way
to the emulator and to the ports of the other sources (attention.cuh -> attention_emulated.h,
dropout.cuh -> dropout_emulated.h, device_utils.cuh -> device_utils_emulated.h),
the namespace qarac::cuda becomes qarac::cuda_emulated (the real CUDA backend may be linked into
the same binary), inline-PTX helpers (attention.cu's cp.async, ldmatrix, mma, ex2) are removed in
favour of the emulator's, __shared__ declarations become references into the emulated shared
memory and kernel<<<...>>>(args) becomes launch_kernel(...)(kernel, args).

Usage: port_kernel.py KERNEL OUT. When the source no longer has the shape this expects (KERNELS),
it fails with one line naming the file and what it did not find, and writes nothing.
"""
import os
import re
import sys

# The helpers between these two definitions are inline PTX; the emulator defines each of them.
PTX_FIRST = "__device__ __forceinline__ uint32_t shared_address"
PTX_END = "__device__ __forceinline__ uint32_t pack_bf16x2"
PTX_HELPERS = {"shared_address", "cp_async16", "cp_async_commit", "cp_async_wait", "ldmatrix_x4",
               "ldmatrix_x4_trans", "mma_bf16", "exp2_approx"}

# Per source: its #include lines and what replaces each, and which of the ported constructs it
# must contain (a construct a source does not list is still ported when present).
KERNELS = {
    "attention.cu": {
        "includes": {"kernels/cuda/attention.cuh": '#include "cuda_emulator.h"\n#include "attention_emulated.h"\n',
                     "core/memory.h": "", "kernels/cuda/context.cuh": "",
                     "kernels/cuda/device_utils.cuh": '#include "device_utils_emulated.h"\n'},
        "expects": {"ptx", "dynamic_shared", "static_shared", "launch"},
    },
    "dropout.cu": {
        "includes": {"kernels/cuda/dropout.cuh": '#include "cuda_emulator.h"\n#include "dropout_emulated.h"\n',
                     "kernels/cuda/context.cuh": "",
                     "kernels/cuda/device_utils.cuh": '#include "device_utils_emulated.h"\n'},
        "expects": {"launch"},
    },
    # The headers declare what the tests call: the same functions, in the emulated namespace.
    "attention.cuh": {"includes": {}, "expects": set()},
    "dropout.cuh": {"includes": {}, "expects": set()},
    "device_utils.cuh": {
        "includes": {"<cuda_bf16.h>": '#include "cuda_emulator.h"\n', "<cuda_runtime.h>": "",
                     "core/check_cuda.h": ""},
        "expects": {"launch"},
    },
}


class Mismatch(Exception):
    pass


def replace_once(src, old, new):
    if src.count(old) != 1:
        raise Mismatch(f"did not find exactly one '{old.strip()}'")
    return src.replace(old, new)


def static_shared(match):
    """__shared__ __align__(128) bf16_t sK[2][kTileH]; -> a reference to emulated shared memory."""
    align, typ, name, dims = match.group(1), match.group(2), match.group(3), match.group(4)
    align = align or f"alignof({typ})"
    return (f"{typ} (&{name}){dims} = *static_cast<{typ} (*){dims}>("
            f"::emu::static_shared(sizeof({typ}{dims}), {align}));")


def port(src, kernel):
    for header, replacement in kernel["includes"].items():
        quoted = header if header.startswith("<") else f'"{header}"'
        src = replace_once(src, f"#include {quoted}\n", replacement)
    # Every block of the namespace: device_utils.cuh reopens it several times.
    opened, closed = src.count("namespace qarac::cuda {"), src.count("}  // namespace qarac::cuda\n")
    if opened == 0 or opened != closed:
        raise Mismatch(f"did not find matching 'namespace qarac::cuda {{' ({opened}) and "
                       f"'}}  // namespace qarac::cuda' ({closed}) lines")
    src = src.replace("namespace qarac::cuda {", "namespace qarac::cuda_emulated {")
    src = src.replace("}  // namespace qarac::cuda\n", "}  // namespace qarac::cuda_emulated\n")

    expects = kernel["expects"]
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
    src, n = re.subn(r"__shared__ (?:__align__\((\d+)\) )?(\w+) (\w+)((?:\[\w+\])+);", static_shared, src)
    if n == 0 and "static_shared" in expects:
        raise Mismatch("did not find a static __shared__ array")
    # The kernel's name may carry template arguments nested one deep (elementwise_kernel<kPack16<T>>).
    src, n = re.subn(r"([A-Za-z_][\w:]*(?:<(?:[^<>;]|<[^<>;]*>)*>)?)<<<(.*?)>>>\(", r"launch_kernel(\2)(\1, ",
                     src, flags=re.S)
    if n == 0 and "launch" in expects:
        raise Mismatch("did not find a kernel launch <<<...>>>")

    code = re.sub(r"//.*", "", src)
    for leftover in ("__shared__", "<<<", "asm", "__cvta"):
        if re.search(r"\b" + re.escape(leftover) if leftover[0].isalpha() else re.escape(leftover), code):
            raise Mismatch(f"did not find a way to port a remaining '{leftover}'")
    return src


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: port_kernel.py KERNEL OUT")
    path, out = sys.argv[1], sys.argv[2]
    kernel = KERNELS.get(os.path.basename(path))
    if kernel is None:
        print(f"port_kernel.py: {path}: not one of the sources it ports ({', '.join(KERNELS)})", file=sys.stderr)
        return 1
    with open(path, encoding="utf-8") as f:
        src = f.read()
    try:
        ported = port(src, kernel)
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
