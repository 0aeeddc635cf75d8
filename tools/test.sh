#!/usr/bin/env bash
# Set up (tools/setup.sh) and run the whole test suite against the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
# Running the pytest script (not `python -m pytest`) keeps the source tree off sys.path, so the tests
# exercise the installed wheel with its compiled kernels.
exec .venv/bin/pytest tests -q "$@"
