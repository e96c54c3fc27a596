#!/usr/bin/env python3
"""qarac-train's throughput from a run's metrics.jsonl (issue 16: the end-to-end figure beside
qarac-bench's), over the step lines after the first --skip (start-up, cuBLASLt's first choices):

  end to end   tokens / wall time between step lines (elapsed_s): data loading, metrics,
               checkpoints and evaluations taken between those steps included
  step         tokens / Σ step_time_s
  compute      tokens / Σ compute_time_s (forward, backward, update; what qarac-bench times)
  data, comm   mean data_time_s and comm_wait_s per step
  outside      wall time outside the steps (checkpoints, evaluations, metrics), and its largest
               gap between two step lines (a checkpoint or an evaluation)

  train_throughput.py METRICS_JSONL [--skip K] [--json]
Exit 1 with one line when the file has fewer than K + 2 step lines.
"""
import argparse
import json
import sys


def steps_of(path):
    lines = []
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
            if "global_tokens" in line and not line.get("eval"):
                lines.append(line)
    return lines


def throughput(lines, skip):
    """Figures over lines[skip + 1:]; the wall time starts at line skip's elapsed_s."""
    first, measured = lines[skip], lines[skip + 1:]
    tokens = sum(l["global_tokens"] for l in measured)
    examples = sum(l["global_examples"] for l in measured)
    wall = measured[-1]["elapsed_s"] - first["elapsed_s"]
    step = sum(l["step_time_s"] for l in measured)
    compute = sum(l["compute_time_s"] for l in measured)
    n = len(measured)
    gaps = [(b["elapsed_s"] - a["elapsed_s"] - b["step_time_s"], a["step"])
            for a, b in zip([first] + measured, measured)]
    largest = max(gaps)
    return {"first_step": measured[0]["step"], "last_step": measured[-1]["step"], "steps": n,
            "tokens_per_step": tokens / n, "examples_per_step": examples / n,
            "end_to_end_tokens_per_s": tokens / wall, "end_to_end_examples_per_s": examples / wall,
            "step_tokens_per_s": tokens / step, "compute_tokens_per_s": tokens / compute,
            "wall_ms_per_step": 1e3 * wall / n, "step_ms": 1e3 * step / n, "compute_ms": 1e3 * compute / n,
            "data_ms": 1e3 * sum(l["data_time_s"] for l in measured) / n,
            "comm_wait_ms": 1e3 * sum(l["comm_wait_s"] for l in measured) / n,
            "outside_ms": 1e3 * (wall - step), "largest_gap_ms": 1e3 * largest[0], "largest_gap_after_step": largest[1]}


def main(argv=None):
    p = argparse.ArgumentParser(description="qarac-train's throughput from metrics.jsonl.")
    p.add_argument("metrics", help="a run's metrics.jsonl")
    p.add_argument("--skip", type=int, default=5, help="first step lines left out (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON")
    a = p.parse_args(argv)
    try:
        lines = steps_of(a.metrics)
    except (OSError, ValueError) as e:
        print(f"train_throughput.py: {e}", file=sys.stderr)
        return 1
    if a.skip < 0 or len(lines) < a.skip + 2:
        print(f"train_throughput.py: {a.metrics}: {len(lines)} step lines, need at least --skip + 2 = {a.skip + 2}",
              file=sys.stderr)
        return 1
    try:
        t = throughput(lines, a.skip)
    except KeyError as e:
        print(f"train_throughput.py: {a.metrics}: a step line lacks {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(t, indent=1))
    else:
        print(f"steps {t['first_step']}-{t['last_step']}: {t['end_to_end_tokens_per_s']:.0f} tokens/s, "
              f"{t['end_to_end_examples_per_s']:.1f} examples/s end to end ({t['wall_ms_per_step']:.2f} ms/step); "
              f"step {t['step_ms']:.2f} ms ({t['step_tokens_per_s']:.0f} tokens/s), compute {t['compute_ms']:.2f} ms "
              f"({t['compute_tokens_per_s']:.0f} tokens/s), data {t['data_ms']:.2f} ms, comm wait "
              f"{t['comm_wait_ms']:.2f} ms; outside the steps {t['outside_ms']:.0f} ms (the most "
              f"{t['largest_gap_ms']:.0f} ms after step {t['largest_gap_after_step']}); {t['tokens_per_step']:.0f} tokens/step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
