#!/usr/bin/env python3
"""The list side of tests/mutation/run.sh: parses mutations.txt, applies one mutation to a tree,
checks that every mutation still applies, and prints the table of a run's results.

  mutate.py ids LIST [ID...]         the ids to run, in list order (all, or those given)
  mutate.py file LIST ID             the file a mutation changes
  mutate.py check LIST TREE          every mutation's text occurs exactly once in TREE
  mutate.py apply LIST TREE ID       applies the mutation to TREE (exit 3: its text is not there once)
  mutate.py report LIST RESULTS      the table of RESULTS (run.sh's results.tsv) and the score
  mutate.py sync SOURCE TREE         makes TREE a copy of SOURCE (no build*/, runs/, .git/), writing
                                     only the files whose content differs, so that their mtimes
                                     alone move on and the build of TREE stays incremental
"""
import filecmp
import os
import shutil
import sys

FIELDS = ("file", "find", "replace", "what", "equivalent")


def unescape(text):
    """'\\n' is a line break and '\\\\' a backslash; nothing else is special."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "n\\":
            out.append("\n" if text[i + 1] == "n" else "\\")
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse(path):
    mutations, current = [], None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            if line.startswith("["):
                close = line.index("]")
                current = {"id": line[1:close], "name": line[close + 1:].strip(), "line": number}
                mutations.append(current)
                continue
            key, sep, value = line.partition(":")
            if current is None or not sep or key not in FIELDS:
                sys.exit(f"{path}:{number}: expected '[ID] name' or one of {', '.join(FIELDS)}")
            current[key] = unescape(value[1:] if value.startswith(" ") else value)
    ids = [m["id"] for m in mutations]
    for m in mutations:
        for key in ("file", "find", "replace", "what"):
            if key not in m:
                sys.exit(f"{path}:{m['line']}: mutation {m['id']} has no '{key}:'")
        if ids.count(m["id"]) > 1:
            sys.exit(f"{path}: mutation id {m['id']} appears twice")
    return mutations


def by_id(mutations, wanted):
    for m in mutations:
        if m["id"] == wanted:
            return m
    sys.exit(f"no mutation {wanted}")


def occurrences(tree, m):
    try:
        with open(f"{tree}/{m['file']}", encoding="utf-8") as f:
            return f.read().count(m["find"])
    except FileNotFoundError:
        return -1


def apply(tree, m):
    path = f"{tree}/{m['file']}"
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.count(m["find"]) != 1:
        print(f"{m['id']}: the text to replace occurs {text.count(m['find'])} times in {m['file']}")
        sys.exit(3)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(m["find"], m["replace"]))


def report(mutations, results_path):
    results = {}
    with open(results_path, encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) >= 6:
                results[cols[0]] = cols  # the last line of an id wins (a rerun)
    rows, counts = [], {}
    for m in mutations:
        if m["id"] not in results:
            continue
        _, status, killed_by, build_s, test_s, stage = results[m["id"]][:6]
        if status == "survived" and "equivalent" in m:
            status = "equivalent"
        counts[status] = counts.get(status, 0) + 1
        detail = killed_by if status == "killed" else m.get("equivalent", "") if status == "equivalent" else ""
        rows.append((m["id"], m["name"], m["file"], status, stage, detail, build_s, test_s))
    widths = [max(len(str(r[i])) for r in rows + [("id", "mutation", "file", "result", "stage", "", "", "")])
              for i in range(5)]
    header = ("id", "mutation", "file", "result", "stage")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  killed by / why equivalent")
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
    scored = counts.get("killed", 0) + counts.get("survived", 0)
    total_s = sum(float(r[6]) + float(r[7]) for r in rows)
    print()
    print(", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"; {len(rows)} run in {total_s / 60:.0f} min")
    if scored:
        print(f"score: {counts.get('killed', 0)}/{scored} killed of the mutations that build and change behaviour"
              f" ({100.0 * counts.get('killed', 0) / scored:.0f}%)")
    survivors = [r[0] for r in rows if r[3] == "survived"]
    if survivors:
        print("survived: " + " ".join(survivors))


def sync(source, tree):
    def skipped(rel):
        top = rel.split(os.sep)[0]
        return top.startswith("build") or top in ("runs", ".git")

    wanted = set()
    for root, dirs, files in os.walk(source):
        rel_root = os.path.relpath(root, source)
        dirs[:] = [d for d in dirs if not skipped(os.path.normpath(os.path.join(rel_root, d)))]
        os.makedirs(os.path.join(tree, rel_root), exist_ok=True)
        for name in files:
            rel = os.path.normpath(os.path.join(rel_root, name))
            wanted.add(rel)
            src, dst = os.path.join(source, rel), os.path.join(tree, rel)
            if os.path.islink(src):
                if not (os.path.islink(dst) and os.readlink(src) == os.readlink(dst)):
                    if os.path.lexists(dst):
                        os.remove(dst)
                    os.symlink(os.readlink(src), dst)
                continue
            if os.path.islink(dst):
                os.remove(dst)
            if not os.path.exists(dst) or not filecmp.cmp(src, dst, shallow=False):
                shutil.copyfile(src, dst)
                shutil.copymode(src, dst)
    for root, dirs, files in os.walk(tree, topdown=False):
        rel_root = os.path.relpath(root, tree)
        if rel_root != "." and skipped(rel_root):
            continue
        for name in files:
            rel = os.path.normpath(os.path.join(rel_root, name))
            if rel not in wanted and not skipped(rel):
                os.remove(os.path.join(root, name))


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    if argv[1] == "sync":
        sync(argv[2], argv[3])
        return
    command, mutations = argv[1], parse(argv[2])
    if command == "ids":
        wanted = argv[3:]
        for w in wanted:
            by_id(mutations, w)
        print("\n".join(m["id"] for m in mutations if not wanted or m["id"] in wanted))
    elif command == "file":
        print(by_id(mutations, argv[3])["file"])
    elif command == "check":
        bad = [(m, occurrences(argv[3], m)) for m in mutations]
        bad = [(m, n) for m, n in bad if n != 1]
        for m, n in bad:
            where = "missing file" if n < 0 else f"text found {n} times"
            print(f"{m['id']} ({m['file']}): {where}")
        print(f"{len(mutations) - len(bad)} of {len(mutations)} mutations apply")
        sys.exit(1 if bad else 0)
    elif command == "apply":
        apply(argv[3], by_id(mutations, argv[4]))
    elif command == "report":
        report(mutations, argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
