#!/usr/bin/env python3
"""Issue 16's must-show figures from one run.sh call's benchmark outputs, against their goals.

    goals.py LOGDIR

LOGDIR holds what run.sh's bench and torch stages saved, one file per run (names below):
qarac-bench's "ms/step, tokens/s real, ..., N% of the measured bf16 GEMM peak" and
torch_qarac_baseline.py's "ms/step" line. Prints one line per goal:

    goal|met or not met or no figure|measured against the target

A goal whose runs are missing (a stage skipped at the deadline, a failed run) is "no figure",
never met. The exit status is 0 either way: a goal is a figure to read, not a test.
"""
import os
import re
import sys

# The files run.sh writes: qarac-bench of the RoBERTa-base classifier step and the QARAC step,
# and PyTorch's QARAC step (tests/device/torch_qarac_baseline.py, the baseline).
FULL = "bench_S128_B64"
RAGGED = "bench_S128_B64_ragged"
DROPOUT = "bench_S128_B64_dropout"
LARGE = "bench_S128_B256"
QARAC = "bench_qarac_B64"
TORCH_QARAC = "torch_qarac_B64"


def figures(logdir, name):
    """{'ms': ..., 'real': ..., 'peak_share': ...} of the file's figures line, or None."""
    path = os.path.join(logdir, name)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    ms = re.search(r"([0-9.]+) ms/step", text)
    if not ms:
        return None
    out = {"ms": float(ms.group(1))}
    real = re.search(r"([0-9.]+) tokens/s real", text)
    if real:
        out["real"] = float(real.group(1))
    share = re.search(r"([0-9.]+)% of the measured bf16 GEMM peak", text)
    if share:
        out["peak_share"] = float(share.group(1))
    return out


def goals(logdir):
    """(goal, verdict, detail) per goal of the issue, in its order."""
    full, ragged, dropout, large = (figures(logdir, n) for n in (FULL, RAGGED, DROPOUT, LARGE))
    qarac, torch = figures(logdir, QARAC), figures(logdir, TORCH_QARAC)
    rows = []

    def row(goal, measured, target, met):
        if measured is None:
            rows.append((goal, "no figure", f"target {target}"))
        else:
            rows.append((goal, "met" if met else "not met", f"{measured} against {target}"))

    for goal, run, least in (("S=128 B=64 share of the GEMM peak", full, 50),
                             ("S=128 B=256 share of the GEMM peak", large, 60)):
        share = run.get("peak_share") if run else None
        row(goal, None if share is None else f"{share:.1f}%", f">= {least}%", share is not None and share >= least)
    if full and ragged and "real" in full and "real" in ragged:
        ratio = ragged["real"] / full["real"]
        row("ragged S=128 B=64 real tokens/s over full lengths'", f"{ratio:.3f}", ">= 0.950", ratio >= 0.95)
    else:
        row("ragged S=128 B=64 real tokens/s over full lengths'", None, ">= 0.950", False)
    if full and dropout and "real" in full and "real" in dropout:
        ratio = dropout["real"] / full["real"]
        row("dropout 0.1 S=128 B=64 tokens/s over without", f"{ratio:.3f}", ">= 0.900", ratio >= 0.90)
    else:
        row("dropout 0.1 S=128 B=64 tokens/s over without", None, ">= 0.900", False)
    if qarac and torch:
        speedup = torch["ms"] / qarac["ms"]
        row("QARAC step B=64 against PyTorch", f"{speedup:.2f}x ({torch['ms']:.2f} / {qarac['ms']:.2f} ms)",
            ">= 10x", speedup >= 10)
    else:
        row("QARAC step B=64 against PyTorch", None, ">= 10x", False)
    return rows


def main():
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.exit("goals.py: usage: goals.py LOGDIR (the folder of run.sh's bench and torch outputs)")
    for goal, verdict, detail in goals(sys.argv[1]):
        print(f"{goal}|{verdict}|{detail}")


if __name__ == "__main__":
    main()
