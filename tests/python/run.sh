#!/usr/bin/env bash
# Runs the Python tests (pytest) of the exports with transformers and torch; exits 77, which
# ctest reports as skipped, with the reason when they are not installed.
#   tests/python/run.sh [pytest options]
# Environment: QARAC_PYTHON (default python3), QARAC_BIN (the programs' folder),
# QARAC_TEST_DEVICE (cpu or cuda), QARAC_LD_LIBRARY_PATH (the programs' libraries only).
set -uo pipefail
cd "$(dirname "$0")/../.."
python=${QARAC_PYTHON:-python3}
if ! missing=$("$python" -c '
import importlib.util, sys
gone = [m for m in ("torch", "transformers", "pytest", "numpy") if importlib.util.find_spec(m) is None]
print(" ".join(gone)); sys.exit(1 if gone else 0)' 2>&1); then
  echo "skipped: $python lacks ${missing:-a working interpreter} (pip install torch transformers pytest numpy)"
  exit 77
fi
exec "$python" -m pytest -q -p no:cacheprovider tests/python "$@"
