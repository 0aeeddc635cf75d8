#!/usr/bin/env bash
# Set up (tools/setup.sh) and run the test suite against the installed package.
#   bash tools/test.sh           the CI suite: every test not marked `slow`
#   bash tools/test.sh --slow    the second, optional target: only the `slow` cases (full-size models, the demo, the long
#                                fuzz runs; ~35 min on 2 cores, 15 of them the two sanitized OpenVINO fuzz runs)
#   bash tools/test.sh --all     both
# Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
selection=(-m "not slow")
case "${1:-}" in
  --slow) selection=(-m slow); shift ;;
  --all) selection=(); shift ;;
esac
bash tools/setup.sh
# Running the pytest script (not `python -m pytest`) keeps the source tree off sys.path, so the tests
# exercise the installed wheel with its compiled kernels.
exec .venv/bin/pytest tests -q "${selection[@]}" "$@"
