#!/usr/bin/env python3
"""GPU time of a training step per kernel family, from an Nsight Systems profile (issue 16).

Input: the CSV that `nsys stats --report cuda_gpu_kern_sum --format csv` prints (older nsys:
gpukernsum), optionally followed by cuda_gpu_mem_time_sum's table (memset/memcpy), as saved
from nsys's standard output (its "Processing ..." lines are skipped); or a .nsys-rep / .sqlite
profile, on which this script runs `nsys stats` itself (--save-csv keeps that CSV for --compare).
Each kernel goes to the first family whose pattern its name matches (FAMILIES); the rest are
"other", and the most expensive of them are listed so the patterns can be refined.

  breakdown.py PROFILE [--steps N] [--step-ms MS] [--json] [--kernels] [--top K] [--save-csv FILE]
                       [--nsys PATH]
  breakdown.py --compare BEFORE AFTER [--steps N] [--steps-after M] [--json] [--kernels]

--steps: the steps the profile holds (tests/device/breakdown.sh captures qarac-bench's timed
steps alone), the divisor of "per step". Times are sums of kernel durations: with one stream
that is the GPU's busy time; NCCL kernels on their own stream overlap the others. --step-ms: the
step's wall time (qarac-bench's ms/step in the profiled run): the table adds the share of it the
GPU was idle, waiting for launches the host did not issue in time or for a host sync (what CUDA
Graphs or fewer launches would win; nsys's tracing adds about a microsecond per API call to it).
Exit 0; 1 with one line when an input holds no kernel table or nsys fails; 2 on bad usage.
"""
import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys

# (family, pattern): the first match wins, so the names of our templated kernels' ops (which
# also contain "elementwise_kernel") come before the generic elementwise family, and the
# libraries' GEMM names after our own kernels. Our kernel names: kernels/cuda/*.cu.
FAMILIES = [
    ("NCCL", r"nccl"),
    ("memset", r"^\[CUDA memset"),
    ("memcpy", r"^\[CUDA memcpy"),
    ("attention", r"attention_"),
    ("layernorm", r"layernorm_"),
    # The GELU backward fused with the previous layer's bias gradient (column_sums_partial_kernel
    # of a GeluBackwardElement) counts as GELU.
    ("GELU", r"Gelu\w*Op|gelu"),
    ("bias gradients", r"bias_grad_|column_sums_"),
    ("dropout", r"dropout_"),
    # Softmax cross-entropy (the softmax is inside its kernel), the MSE and row-cosine objectives.
    ("loss", r"cross_entropy_|softmax|mse_kernel|cosine_(forward|backward)_kernel"),
    # The embedding gradient sorts token ids with CUB's radix sort, QARAC-MT's only CUB call.
    ("embedding", r"embedding_|iota_kernel|DeviceRadixSort|\bcub::"),
    ("pooling", r"pooling_|segment_(sum|broadcast)_kernel"),
    # moment_update_kernel; MomentUpdateOp in profiles from before it (the fixtures' "before").
    ("optimizer", r"moment_update|MomentUpdateOp|adamw|nadam"),
    ("reductions", r"sum_of_squares|sum_partials"),
    ("gather/scatter", r"RowsOp"),
    ("elementwise", r"elementwise_kernel|BiasAddOp|\bAddOp|ScaleOp"),
    # cuBLAS/cuBLASLt/CUTLASS: sm90_xmma_gemm_*, nvjet_*, cutlass*, ampere_*gemm*, and cuBLASLt's
    # split-K reduction and epilogue kernels.
    ("GEMM", r"gemm|gemv|xmma|cutlass|nvjet|cublas|splitK|^(sm\d+|ampere|hopper|blackwell)_"),
]
OTHER = "other"
TOTAL = "total"
_COMPILED = [(family, re.compile(pattern, re.IGNORECASE)) for family, pattern in FAMILIES]
_UNITS_NS = {"ns": 1.0, "us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9}


class BreakdownError(Exception):
    pass


def family_of(name):
    for family, pattern in _COMPILED:
        if pattern.search(name):
            return family
    return OTHER


def _columns(header):
    """Indices of the name, total-time and count columns of an nsys stats header, and the
    total time's unit in ns; None when the line is not such a header. Names across nsys
    versions: "Total Time (ns)" (or "Total Time"), "Instances", "Count" or "Operations", "Name"
    or "Operation"."""
    name = total = count = None
    unit = 1.0
    for i, field in enumerate(header):
        key = field.strip().lower()
        if key in ("name", "operation"):
            name = i
        elif key.startswith("total time"):
            total = i
            m = re.search(r"\((\w+|µs)\)", key)
            if m and m.group(1) in _UNITS_NS:
                unit = _UNITS_NS[m.group(1)]
        elif key in ("instances", "count", "calls", "operations"):
            count = i
    if name is None or total is None:
        return None
    return name, total, count, unit


def _number(text):
    return float(text.strip().replace(",", "").replace("_", ""))


def parse_stats(text, source):
    """{name: [ns, launches]} over every nsys stats table in the text; a kernel table is
    required, a memory-operation table optional."""
    rows = {}
    kernel_table = False
    columns = None
    for line in text.splitlines():
        fields = next(csv.reader([line])) if line.strip() else []
        if columns is not None:
            name, total, count, unit = columns
            try:
                if len(fields) != width:
                    raise ValueError
                ns = _number(fields[total]) * unit
                launches = _number(fields[count]) if count is not None else 0.0
            except ValueError:
                columns = None  # the table ended
            else:
                entry = rows.setdefault(fields[name], [0.0, 0.0])
                entry[0] += ns
                entry[1] += launches
                continue
        found = _columns(fields) if fields else None
        if found:
            columns, width = found, len(fields)
            kernel_table = kernel_table or fields[found[0]].strip().lower() == "name"
    if not kernel_table:
        raise BreakdownError(f"{source}: no CUDA kernel table (the CSV of nsys stats --report cuda_gpu_kern_sum)")
    return rows


def find_nsys():
    found = shutil.which("nsys")
    if found:
        return found
    for root in ("/usr/local/cuda/bin", "/opt/nvidia/nsight-systems"):
        if os.path.isfile(os.path.join(root, "nsys")):
            return os.path.join(root, "nsys")
        if os.path.isdir(root):
            for version in sorted(os.listdir(root), reverse=True):
                path = os.path.join(root, version, "bin", "nsys")
                if os.path.isfile(path):
                    return path
    raise BreakdownError("nsys (Nsight Systems) not found on PATH, in /usr/local/cuda/bin or /opt/nvidia/nsight-systems")


def run_nsys_stats(profile, nsys=None):
    """The kernel and memory-operation tables of a profile, as CSV text: the current report
    names first, then those of nsys before 2022 (gpukernsum, gpumemtimesum). A .nsys-rep is
    exported again (--force-export): nsys would otherwise read a stale .sqlite left beside it."""
    nsys = nsys or find_nsys()
    export = [] if profile.endswith(".sqlite") else ["--force-export=true"]
    last = ""
    for reports in ("cuda_gpu_kern_sum,cuda_gpu_mem_time_sum", "gpukernsum,gpumemtimesum"):
        cmd = [nsys, "stats", "--report", reports, "--format", "csv", "--output", "-", *export, profile]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
        try:
            parse_stats(proc.stdout, profile)
            return proc.stdout
        except BreakdownError:
            lines = [l for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
            last = lines[-1].strip() if lines else f"exit status {proc.returncode}"
    raise BreakdownError(f"nsys stats {profile}: no kernel table ({last})")


def load(path, save_csv=None, nsys=None):
    if not os.path.isfile(path):
        raise BreakdownError(f"{path}: no such file")
    if path.endswith(".csv"):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    else:
        text = run_nsys_stats(path, nsys)
        if save_csv:
            with open(save_csv, "w", encoding="utf-8") as f:
                f.write(text)
    return parse_stats(text, path)


def breakdown(rows, steps, top, step_ms=None):
    """The families present, most expensive first (then other, total), with their times and
    launches; the unmatched names, most expensive first; every kernel with its family; with the
    step's wall time, the GPU's busy and idle time per step."""
    gpu_ns = sum(ns for ns, _ in rows.values()) or 1.0
    sums = {family: [0.0, 0.0, 0] for family, _ in FAMILIES + [(OTHER, None)]}
    kernels = []
    for name, (ns, launches) in rows.items():
        family = family_of(name)
        s = sums[family]
        s[0] += ns
        s[1] += launches
        s[2] += 1
        kernels.append({"name": name, "family": family, "ms": ns / 1e6, "launches": launches})
    kernels.sort(key=lambda k: -k["ms"])

    def entry(family, ns, launches, count):
        return {"family": family, "ms": ns / 1e6, "ms_per_step": ns / 1e6 / steps,
                "percent": 100.0 * ns / gpu_ns, "launches_per_step": launches / steps, "kernels": count}

    named = sorted((f for f, _ in FAMILIES if sums[f][2] > 0), key=lambda f: -sums[f][0])
    families = [entry(f, *sums[f]) for f in named + ([OTHER] if sums[OTHER][2] else [])]
    families.append(entry(TOTAL, sum(s[0] for s in sums.values()), sum(s[1] for s in sums.values()), len(rows)))
    unmatched = [k for k in kernels if k["family"] == OTHER][:top]
    out = {"steps": steps, "families": families, "unmatched": unmatched, "kernels": kernels}
    if step_ms is not None:
        busy = families[-1]["ms_per_step"]
        out["wall"] = {"step_ms": step_ms, "busy_ms": busy, "idle_ms": max(step_ms - busy, 0.0),
                       "idle_percent": 100.0 * max(step_ms - busy, 0.0) / step_ms}
    return out


def short(name, width=110):
    return name if len(name) <= width else name[: width - 3] + "..."


def print_table(title, b, kernels=False, out=sys.stdout):
    print(f"{title}: {b['steps']} profiled step(s)", file=out)
    print(f"  {'family':<16} {'total ms':>10} {'ms/step':>9} {'% GPU':>7} {'launches/step':>14}", file=out)
    for f in b["families"]:
        print(f"  {f['family']:<16} {f['ms']:10.3f} {f['ms_per_step']:9.3f} {f['percent']:6.1f}% "
              f"{f['launches_per_step']:14.1f}", file=out)
    if "wall" in b:
        w = b["wall"]
        print(f"  GPU busy {w['busy_ms']:.3f} of the step's {w['step_ms']:.3f} ms: idle {w['idle_ms']:.3f} ms "
              f"({w['idle_percent']:.1f}%, waiting for launches or a host sync)", file=out)
    if b["unmatched"]:
        print(f"  unmatched kernels (top {len(b['unmatched'])} of family {OTHER}):", file=out)
        for k in b["unmatched"]:
            print(f"    {k['ms'] / b['steps']:9.3f} ms/step {k['launches'] / b['steps']:8.1f} launches/step  "
                  f"{short(k['name'])}", file=out)
    if kernels:
        print("  kernels:", file=out)
        for k in b["kernels"]:
            print(f"    {k['ms'] / b['steps']:9.3f} ms/step {k['launches'] / b['steps']:8.1f} launches/step  "
                  f"{k['family']:<14} {short(k['name'])}", file=out)


def difference(before, after):
    """Per family (in either profile): ms/step and launches/step before, after, and after − before."""
    b = {f["family"]: f for f in before["families"]}
    a = {f["family"]: f for f in after["families"]}
    order = [f["family"] for f in before["families"]]
    order += [f for f in (x["family"] for x in after["families"]) if f not in b]
    order.remove(TOTAL)
    order.append(TOTAL)
    zero = {"ms_per_step": 0.0, "launches_per_step": 0.0}
    rows = []
    for family in order:
        x, y = b.get(family, zero), a.get(family, zero)
        rows.append({"family": family,
                     "before_ms_per_step": x["ms_per_step"], "after_ms_per_step": y["ms_per_step"],
                     "delta_ms_per_step": y["ms_per_step"] - x["ms_per_step"],
                     "before_launches_per_step": x["launches_per_step"],
                     "after_launches_per_step": y["launches_per_step"],
                     "delta_launches_per_step": y["launches_per_step"] - x["launches_per_step"]})
    return rows


def print_difference(rows, out=sys.stdout):
    print("difference (after - before), per step:", file=out)
    print(f"  {'family':<16} {'before ms':>10} {'after ms':>10} {'delta ms':>10} {'delta %':>8} "
          f"{'launches':>16}", file=out)
    for r in rows:
        before = r["before_ms_per_step"]
        pct = f"{100.0 * r['delta_ms_per_step'] / before:+7.1f}%" if before > 0 else f"{'new':>8}"
        launches = f"{r['before_launches_per_step']:.0f} -> {r['after_launches_per_step']:.0f}"
        print(f"  {r['family']:<16} {before:10.3f} {r['after_ms_per_step']:10.3f} "
              f"{r['delta_ms_per_step']:+10.3f} {pct} {launches:>16}", file=out)


def positive(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def positive_ms(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive time in ms, got {text}")
    return value


def main(argv=None):
    p = argparse.ArgumentParser(description="GPU time per kernel family from an Nsight Systems profile.")
    p.add_argument("profile", nargs="?", help="nsys stats CSV, or a .nsys-rep/.sqlite profile")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="two profiles: both tables and the difference")
    p.add_argument("--steps", type=positive, default=1, help="steps the profile holds (BEFORE's with --compare)")
    p.add_argument("--steps-after", type=positive, help="steps AFTER holds (default: --steps)")
    p.add_argument("--step-ms", type=positive_ms, help="the step's wall time (ms): adds the GPU's idle share")
    p.add_argument("--top", type=int, default=10, help="unmatched kernel names listed (default 10)")
    p.add_argument("--kernels", action="store_true", help="also list every kernel with its family")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--save-csv", metavar="FILE", help="keep the CSV nsys stats printed for a .nsys-rep/.sqlite input")
    p.add_argument("--nsys", metavar="PATH", help="nsys (default: on PATH, in /usr/local/cuda/bin or /opt/nvidia/nsight-systems)")
    a = p.parse_args(argv)
    if (a.profile is None) == (a.compare is None):
        p.error("give one PROFILE or --compare BEFORE AFTER")
    if a.compare and a.step_ms:
        p.error("--step-ms goes with one PROFILE")
    try:
        if a.compare:
            before = breakdown(load(a.compare[0], nsys=a.nsys), a.steps, a.top)
            after = breakdown(load(a.compare[1], nsys=a.nsys), a.steps_after or a.steps, a.top)
            diff = difference(before, after)
            if a.json:
                json.dump({"before": before, "after": after, "difference": diff}, sys.stdout, indent=1)
                print()
            else:
                print_table(f"before ({a.compare[0]})", before, a.kernels)
                print_table(f"after ({a.compare[1]})", after, a.kernels)
                print_difference(diff)
        else:
            b = breakdown(load(a.profile, a.save_csv, a.nsys), a.steps, a.top, a.step_ms)
            if a.json:
                json.dump(b, sys.stdout, indent=1)
                print()
            else:
                print_table(f"GPU time per kernel family ({a.profile})", b, a.kernels)
    except BreakdownError as e:
        print(f"breakdown.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
