"""What the tests of this folder share: where the repository, its sample data and the programs
are, and how a program is run (QARAC_BIN, the programs' folder, default build/src/cli;
QARAC_LD_LIBRARY_PATH, the programs' LD_LIBRARY_PATH, kept away from torch's)."""
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
BIN = Path(os.environ.get("QARAC_BIN", REPO / "build" / "src" / "cli"))


def run(*args):
    """Runs a program; its standard output, or a failed assertion with the end of its stderr."""
    env = dict(os.environ)
    if "QARAC_LD_LIBRARY_PATH" in env:
        env["LD_LIBRARY_PATH"] = env["QARAC_LD_LIBRARY_PATH"]
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"{args[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done.stdout
