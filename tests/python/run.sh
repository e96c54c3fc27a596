#!/usr/bin/env bash
# Runs Python tests (pytest) that check the programs against transformers and torch; exits 77,
# which ctest reports as skipped, with the reason when a module they need is not installed.
#   tests/python/run.sh [TEST_FILE.py ...] [pytest options]   (default: every tests/python/test_*.py)
# A test file names the modules it needs in a line "# needs: MODULE ...".
# Environment: QARAC_PYTHON (default python3), QARAC_BIN (the programs' folder),
# QARAC_TEST_DEVICE (cpu or cuda), QARAC_LD_LIBRARY_PATH (the programs' libraries only).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
python=${QARAC_PYTHON:-python3}
files=() options=()
for arg in "$@"; do
  case $arg in
    *.py) files+=("$arg") ;;
    *) options+=("$arg") ;;
  esac
done
[ ${#files[@]} -gt 0 ] || files=(tests/python/test_*.py)
read -r -a needs <<< "pytest $(sed -n 's/^# needs: //p' "${files[@]}" | tr '\n' ' ')"
if ! command -v "$python" > /dev/null; then
  echo "skipped: no Python interpreter '$python' (QARAC_PYTHON)"
  exit 77
fi
if ! missing=$("$python" - "${needs[@]}" <<'PY'
import importlib.util, sys
gone = sorted({m for m in sys.argv[1:] if importlib.util.find_spec(m) is None})
print(" ".join(gone)); sys.exit(1 if gone else 0)
PY
); then
  echo "skipped: $python lacks $missing (pip install $missing)"
  exit 77
fi
exec "$python" -m pytest -q -p no:cacheprovider "${options[@]}" "${files[@]}"
