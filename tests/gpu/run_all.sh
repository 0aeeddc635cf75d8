#!/usr/bin/env bash
# Everything that needs the GPU machine (run from the repository root):
#   bash tests/gpu/run_all.sh [--no-checks] [--bench] [--models] [--profile]
#   (default)    build the kernel libraries with CMake (sm_90) into $SSMPOSE_GPU_BUILD (default
#                /tmp/ssmpose-build-gpu: outside the checkout, so a warm machine keeps it between calls),
#                run the standalone CUDA kernel checks (check_cuda_kernels.py) and the pytest GPU tests
#                (test_cuda_ops.py)
#   --no-checks  skip the checks (the build is incremental)
#   --bench      kernel micro-benchmarks: benchmarks/bench_ops.py -> $OUT/bench_ops_cuda.json
#   --models     whole-model parity and throughput, ONNX Runtime CUDA EP included (needs onnxruntime-gpu on
#                PYTHONPATH): benchmarks/bench_models.py -> $OUT/bench_models.json, rewritten after each
#                session so a run cut short keeps what it measured (extra arguments in
#                SSMPOSE_BENCH_ARGS). The graphs are exported first, in parallel, into /tmp/bench_models.
#   --profile    where the GPU time of a forward goes (torch eager, ort-cuda variants; batch 128):
#                benchmarks/profile_models.py -> $OUT/profile_<model>.json (configurations in SSMPOSE_PROFILE_ARGS)
# --models for both models takes longer than one 10-minute call of the lent GPU machine: start it detached,
#   mkdir -p /tmp/res; OUT=/tmp/res setsid nohup bash tests/gpu/run_all.sh --no-checks --models > /tmp/res.log 2>&1 < /dev/null &
# and collect /tmp/res from later calls while the machine stays warm (the JSON is rewritten after each session).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
checks=1 bench=0 models=0 profile=0
for arg in "$@"; do
  case "$arg" in
    --no-checks) checks=0 ;;
    --bench) bench=1 ;;
    --models) models=1 ;;
    --profile) profile=1 ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done
command -v cmake >/dev/null || { echo "cmake is required on the GPU machine" >&2; exit 1; }
build_dir=${SSMPOSE_GPU_BUILD:-/tmp/ssmpose-build-gpu}
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
cmake --build "$build_dir" -j"$(nproc)" >/dev/null
export SSMPOSE_KERNELS_DIR="$build_dir/lib"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export SSMPOSE_REQUIRE_CUDA=1
out=${OUT:-/tmp}
if [ "$checks" = 1 ]; then
  python3 tests/gpu/check_cuda_kernels.py --lib-dir "$SSMPOSE_KERNELS_DIR" --no-bench
  python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_cuda_ops.py
fi
if [ "$bench" = 1 ]; then
  python3 benchmarks/bench_ops.py --device cuda --batch 1 32 128 --dtype float32 float16 --backward \
    --reference-max-batch 32 --json "$out/bench_ops_cuda.json"
fi
models_list=${SSMPOSE_MODELS:-hrvmamba_small hrvmamba_base}
if [ "$models" = 1 ] || [ "$profile" = 1 ]; then
  python3 -c "import onnxruntime as o; p = o.get_available_providers(); assert 'CUDAExecutionProvider' in p, p"
  python3 benchmarks/export_parallel.py --models $models_list --out /tmp/bench_models
fi
if [ "$profile" = 1 ]; then
  for m in $models_list; do
    python3 benchmarks/profile_models.py --model "$m" --onnx-dir /tmp/bench_models --json "$out/profile_$m.json" \
      ${SSMPOSE_PROFILE_ARGS:-}
  done
fi
if [ "$models" = 1 ]; then
  python3 benchmarks/bench_models.py --models $models_list --out /tmp/bench_models --json "$out/bench_models.json" \
    ${SSMPOSE_BENCH_ARGS:-}
fi
