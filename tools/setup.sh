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
# TensorRT's public headers, for compiling the plugin library (libssmpose_trt) where no TensorRT is installed:
# the kernel-lens wheel ships TensorRT 10.14's headers; only they are used, at build time. A real install wins:
# TENSORRT_ROOT=/path/to/TensorRT bash tools/setup.sh
trt_define=()
if [ -n "${TENSORRT_ROOT:-}" ]; then
  trt_define=(--config-settings=cmake.define.TENSORRT_ROOT="$TENSORRT_ROOT")
else
  trt_headers=build/third_party/kernel_lens/kernel_lens/include/tensorrt
  if [ ! -f "$trt_headers/NvInferRuntime.h" ]; then
    .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps kernel-lens==2.0.1 -d build/third_party
    .venv/bin/python -m zipfile -e build/third_party/kernel_lens-2.0.1-py3-none-any.whl build/third_party/kernel_lens
  fi
  trt_define=(--config-settings=cmake.define.SSMPOSE_TENSORRT_INCLUDE_DIR="$PWD/$trt_headers")
fi
.venv/bin/python -m pip install -q --disable-pip-version-check ".[test]" \
  --config-settings=cmake.define.OpenVINO_DIR="$openvino_cmake" "${trt_define[@]}"
.venv/bin/python - <<'PY'
import ssmpose
from ssmpose.custom_ops import kernel_library as kl
from ssmpose.custom_ops import openvino_library as ovl
print(f"ssmpose {ssmpose.__version__} installed in .venv; CPU kernels: "
      f"{'yes' if kl.cpu_library() else 'no (' + kl.unavailable_reason('cpu') + ')'}; OpenVINO extension: "
      f"{'yes' if ovl.openvino_library_path() else 'no (' + ovl.unavailable_reason() + ')'}")
PY
