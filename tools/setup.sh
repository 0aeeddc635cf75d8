#!/usr/bin/env bash
# Set up a working environment from a fresh clone: .venv with PyTorch and ssmpose (kernels compiled by the
# package build: CPU always, CUDA when nvcc is found). Re-running refreshes the ssmpose install.
#   SSMPOSE_TORCH  pip requirement for PyTorch (default torch==2.13.0; the CPU wheel on the project machines)
#   PYTHON         interpreter to create the venv with (default python3.11, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "${SSMPOSE_TORCH:-torch==2.13.0}"
.venv/bin/python -m pip install -q --disable-pip-version-check ".[test]"
.venv/bin/python - <<'PY'
import ssmpose
from ssmpose.custom_ops import kernel_library as kl
print(f"ssmpose {ssmpose.__version__} installed in .venv; CPU kernels: "
      f"{'yes' if kl.cpu_library() else 'no (' + kl.unavailable_reason('cpu') + ')'}")
PY
