#!/usr/bin/env bash
# Everything that needs the GPU machine, in one call (run from the repository root):
#   bash tests/gpu/run_all.sh [--bench]
# 1. builds the kernel libraries with CMake (CPU + CUDA, sm_90 only to save time) into build-gpu/,
# 2. runs the standalone CUDA kernel checks (tests/gpu/check_cuda_kernels.py),
# 3. runs the pytest GPU tests (tests/gpu/test_cuda_ops.py) against the source tree,
# 4. with --bench, runs benchmarks/bench_ops.py on CUDA and writes $OUT/bench_ops_cuda.json when $OUT is set.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
if command -v cmake >/dev/null; then
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
  cmake --build build-gpu -j"$(nproc)" >/dev/null
else
  echo "cmake is required on the GPU machine" >&2; exit 1
fi
export SSMPOSE_KERNELS_DIR="$PWD/build-gpu/lib"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export SSMPOSE_REQUIRE_CUDA=1
python3 tests/gpu/check_cuda_kernels.py --lib-dir "$SSMPOSE_KERNELS_DIR"
python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_ops.py
if [ "${1:-}" = "--bench" ]; then
  python3 benchmarks/bench_ops.py --device cuda --batch 1 32 128 --dtype float32 float16 --backward \
    --reference-max-batch 32 --json "${OUT:-/tmp}/bench_ops_cuda.json"
fi
