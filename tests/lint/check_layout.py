#!/usr/bin/env python3
"""The source tree's shape, checked (docs/architecture.md states it):

1. Layers. Every folder of src/ and kernels/ may include only its own headers and those of the
   layers below it, in the order of LAYERS; an include upwards fails with the file and line.
2. No include cycle between files (quoted project includes; a header reached through its own
   includes is a cycle even when #pragma once hides it from the compiler).
3. Size. No source file under src/ or kernels/ exceeds MAX_LINES lines, the attention kernels
   excepted (one op family whose forward and backward kernels belong together).

Usage: check_layout.py [REPO]   (default: the repository holding this script). Exit 1 on any
violation, listing each on one line; 0 with a one-line summary otherwise.
"""
import os
import re
import sys

# Lowest first: a folder may include only itself and the folders before it.
LAYERS = ["core", "kernels", "data", "model", "io", "parallel", "train", "cli"]
MAX_LINES = 600
SIZE_EXEMPT = {"kernels/cuda/attention.cu", "kernels/cpu/attention.cpp"}
SOURCE = re.compile(r"\.(h|cuh|cpp|cu)$")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def layer_of(path):
    """'src/train/loop.cpp' -> 'train'; 'kernels/cuda/gemm.cu' -> 'kernels'."""
    parts = path.split("/")
    return "kernels" if parts[0] == "kernels" else parts[1]


def resolve(target):
    """An include as written ("train/loop.h", "kernels/ops.h") -> its path in the repository."""
    return target if target.startswith("kernels/") else "src/" + target


def main():
    repo = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                           os.path.join(os.path.dirname(__file__), "..", ".."))
    files = {}
    for top in ("src", "kernels"):
        for folder, _, names in os.walk(os.path.join(repo, top)):
            for name in names:
                if SOURCE.search(name):
                    path = os.path.relpath(os.path.join(folder, name), repo)
                    with open(os.path.join(repo, path), encoding="utf-8") as f:
                        files[path] = f.read()

    problems = []
    graph = {}
    for path, text in sorted(files.items()):
        lines = text.count("\n")
        if lines > MAX_LINES and path not in SIZE_EXEMPT:
            problems.append(f"{path}: {lines} lines, more than {MAX_LINES}: split it by job")
        mine = LAYERS.index(layer_of(path))
        graph[path] = []
        for match in INCLUDE.finditer(text):
            target = resolve(match.group(1))
            if target not in files:
                continue  # a header of a library, or generated
            line = text.count("\n", 0, match.start()) + 1
            theirs = LAYERS.index(layer_of(target))
            if theirs > mine:
                problems.append(f"{path}:{line}: includes {match.group(1)}: layer "
                                f"'{layer_of(target)}' is above '{layer_of(path)}' "
                                f"(order: {' < '.join(LAYERS)})")
            graph[path].append(target)

    # Depth-first search; a grey node met again closes a cycle.
    state, stack = {}, []

    def visit(node):
        state[node] = "grey"
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == "grey":
                cycle = stack[stack.index(nxt):] + [nxt]
                problems.append("include cycle: " + " -> ".join(cycle))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "black"

    for node in sorted(graph):
        if node not in state:
            visit(node)

    for p in problems:
        print(p)
    edges = sum(len(v) for v in graph.values())
    if problems:
        print(f"check_layout: {len(problems)} problem(s) in {len(files)} files")
        return 1
    print(f"check_layout: {len(files)} files, {edges} project includes: layers "
          f"{' < '.join(LAYERS)} respected, no include cycle, none over {MAX_LINES} lines "
          f"(exempt: {', '.join(sorted(SIZE_EXEMPT))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
