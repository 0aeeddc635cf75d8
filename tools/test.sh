#!/usr/bin/env bash
# Set up (tools/setup.sh) and run the whole test suite against the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
# Running the pytest script (not `python -m pytest`) keeps the source tree off sys.path, so the tests
# exercise the installed wheel with its compiled kernels. Two pytest-xdist workers by default (most of
# the time is single-threaded model tracing; tests/conftest.py keeps each module on one worker);
# SSMPOSE_TEST_WORKERS=0 runs in one process.
workers=${SSMPOSE_TEST_WORKERS:-2}
if [ "$workers" -gt 0 ]; then
  exec .venv/bin/pytest tests -q -n "$workers" --dist loadgroup "$@"
fi
exec .venv/bin/pytest tests -q "$@"
