#!/usr/bin/env python3
"""packaging/apptainer/qarac.def checked without Apptainer (not installed here): a parser of the
definition format (header keywords, %sections, stages) and the checks a build would fail on.

1. Every stage has a header (Bootstrap: docker, From: an image), a name, and only known sections;
   `%files from STAGE` names an earlier stage.
2. The build stage starts from a CUDA devel image, the final one from a CUDA runtime image.
3. Every {{ ARG }} has a default in an %arguments section.
4. Every %files source exists in the repository (the build runs from its root).
5. Every shell section (%post, %test, %environment, %runscript), arguments filled in with their
   defaults, passes `bash -n`.
6. %test runs --version of the four programs.

Usage: check_apptainer_def.py REPO. Exit 1 naming each problem, else 0 with a summary.
"""
import os
import re
import subprocess
import sys

SECTIONS = {"arguments", "setup", "files", "post", "environment", "runscript", "startscript",
            "test", "labels", "help", "apprun", "appinstall", "appenv", "apptest", "appfiles",
            "applabels", "apphelp"}
SHELL = ("post", "test", "environment", "runscript")
PROGRAMS = ("qarac-train", "qarac-prep", "qarac-parity", "qarac-bench")


def parse(text):
    """Stages: [{"header": {key: value}, "sections": [(name, argument, body lines)]}]."""
    stages, section = [], None
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"^(Bootstrap|From|Stage):\s*(.*?)\s*$", line)
        start = re.match(r"^%(\w+)\s*(.*?)\s*$", line)
        if header:
            if header.group(1) == "Bootstrap" or not stages:
                stages.append({"header": {}, "sections": [], "line": number})
                section = None
            stages[-1]["header"][header.group(1)] = header.group(2)
        elif start:
            if not stages:
                raise ValueError(f"line {number}: %{start.group(1)} before any Bootstrap header")
            section = (start.group(1), start.group(2), [])
            stages[-1]["sections"].append(section)
        elif section is not None:
            section[2].append(line)
        elif line.strip() and not line.lstrip().startswith("#"):
            raise ValueError(f"line {number}: '{line.strip()}' outside any section")
    return stages


def main():
    repo = sys.argv[1]
    path = os.path.join(repo, "packaging", "apptainer", "qarac.def")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    problems = []
    try:
        stages = parse(text)
    except ValueError as e:
        print(f"{path}: {e}")
        return 1

    defaults = {}
    for stage in stages:
        for name, _, body in stage["sections"]:
            if name == "arguments":
                for entry in body:
                    if entry.strip():
                        key, _, value = entry.strip().partition("=")
                        defaults[key] = value
    names = []
    for i, stage in enumerate(stages):
        h = stage["header"]
        where = f"stage {i + 1} (line {stage['line']})"
        if h.get("Bootstrap") != "docker" or not h.get("From"):
            problems.append(f"{where}: needs 'Bootstrap: docker' and 'From: IMAGE'")
        if not h.get("Stage"):
            problems.append(f"{where}: no 'Stage:' name")
        for name, argument, body in stage["sections"]:
            if name not in SECTIONS:
                problems.append(f"{where}: unknown section %{name}")
            if name == "files" and argument:
                source = re.fullmatch(r"from\s+(\S+)", argument)
                if not source or source.group(1) not in names:
                    problems.append(f"{where}: '%files {argument}' names no earlier stage")
            elif name == "files":
                for entry in body:
                    if entry.strip() and not os.path.exists(os.path.join(repo, entry.split()[0])):
                        problems.append(f"{where}: %files source '{entry.split()[0]}' is not in the repository")
            if name in SHELL:
                script = "\n".join(body)
                for arg in set(re.findall(r"\{\{\s*(\w+)\s*\}\}", script)):
                    if arg not in defaults:
                        problems.append(f"{where}: %{name} uses {{{{ {arg} }}}} without an %arguments default")
                script = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: defaults.get(m.group(1), "x"), script)
                check = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
                if check.returncode != 0:
                    problems.append(f"{where}: %{name} is not valid shell: {check.stderr.strip()}")
        names.append(h.get("Stage"))

    images = [s["header"].get("From", "") for s in stages]
    if len(stages) != 2 or not re.match(r"nvidia/cuda:[\d.]+-devel-", images[0]) or \
            not re.match(r"nvidia/cuda:[\d.]+-runtime-", images[-1]):
        problems.append(f"stages start from {images}: a CUDA devel image, then a CUDA runtime image expected")
    tests = [body for s in stages for name, _, body in s["sections"] if name == "test"]
    if not tests:
        problems.append("no %test section")
    else:
        test = "\n".join(tests[0])
        for program in PROGRAMS:
            if program not in test:
                problems.append(f"%test does not run {program} --version")
        if "--version" not in test:
            problems.append("%test runs no --version")

    for p in problems:
        print(f"{path}: {p}")
    if problems:
        return 1
    print(f"check_apptainer_def: {len(stages)} stages ({', '.join(n or '?' for n in names)}), "
          f"arguments {sorted(defaults)}, %test present; not built (no apptainer here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
