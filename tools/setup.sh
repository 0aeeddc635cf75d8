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
# OpenVINO before the package: the OpenVINO extension (libssmpose_ov) is compiled against the installed wheel's
# headers and CMake config, the release that will load it.
openvino_req=$(.venv/bin/python -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['openvino'][0])")
.venv/bin/python -m pip install -q --disable-pip-version-check "$openvino_req"
openvino_cmake=$(.venv/bin/python -c "import openvino, os; print(os.path.join(os.path.dirname(openvino.__file__), 'cmake'))")
.venv/bin/python -m pip install -q --disable-pip-version-check ".[test]" \
  --config-settings=cmake.define.OpenVINO_DIR="$openvino_cmake"
.venv/bin/python - <<'PY'
import ssmpose
from ssmpose.custom_ops import kernel_library as kl
from ssmpose.custom_ops import openvino_library as ovl
print(f"ssmpose {ssmpose.__version__} installed in .venv; CPU kernels: "
      f"{'yes' if kl.cpu_library() else 'no (' + kl.unavailable_reason('cpu') + ')'}; OpenVINO extension: "
      f"{'yes' if ovl.openvino_library_path() else 'no (' + ovl.unavailable_reason() + ')'}")
PY
