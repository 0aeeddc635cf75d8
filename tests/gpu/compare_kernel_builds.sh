#!/usr/bin/env bash
# Whole-model timings of several builds of the CUDA kernel library, in one job on the GPU machine: the builds
# take turns (ROUNDS rounds), so that drift shows, and benchmarks/compare_runs.py prints the table. Run from the
# repository root:
#   OUT=/tmp/res bash tests/gpu/compare_kernel_builds.sh ONNX_DIR NAME=LIB_DIR [NAME=LIB_DIR ...]
# ONNX_DIR holds the graphs of `benchmarks/bench_deploy_graphs.py --export-only` (export them anywhere, the CPU is
# fine). Each LIB_DIR holds a libssmpose_kernels_cuda.so, for example one built with compile options by
#   python3 -c "import sys; sys.path.insert(0, 'tests/gpu'); import check_cuda_kernels as c; \
#               c.build_library('LIB_DIR', 'sm_90', ['SSM_DW_SMALL_GRIDS=0'])"
# libssmpose_ort.so and libssmpose_kernels.so are copied beside it from BASE_LIBS (default: the CMake build of
# tests/gpu/parity_gpu.sh in $SSMPOSE_GPU_BUILD or /tmp/ssmpose-build-gpu, built here for sm_90 if missing),
# because the ORT library loads the CUDA kernels from its own folder. Environment: ROUNDS (2), BATCHES ("1 32 128"),
# VARIANT ("custom v4"), CUDNN_SEARCH (HEURISTIC), PROFILE_BATCH (unset: no kernel profile; else a profile of
# the last build at that batch). Needs onnxruntime-gpu on PYTHONPATH (../shared/hooks/gpu-wheels stages it).
# Writes $OUT/<name>_<round>.json / .txt, $OUT/compare.txt and, with PROFILE_BATCH, $OUT/profile.json / .txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
onnx_dir=${1:?usage: compare_kernel_builds.sh ONNX_DIR NAME=LIB_DIR [NAME=LIB_DIR ...]}
shift
[ $# -ge 1 ] || { echo "name at least one NAME=LIB_DIR" >&2; exit 2; }
out=${OUT:-/tmp}
build_dir=${SSMPOSE_GPU_BUILD:-/tmp/ssmpose-build-gpu}
base=${BASE_LIBS:-$build_dir/lib}
rounds=${ROUNDS:-2}
read -r -a batches <<< "${BATCHES:-1 32 128}"
variant=${VARIANT:-custom v4}
export PYTHONUNBUFFERED=1 SSMPOSE_REQUIRE_CUDA=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
if [ -z "${BASE_LIBS:-}" ] && [ ! -f "$base/libssmpose_ort.so" ]; then
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
  cmake --build "$build_dir" -j"$(nproc)" >/dev/null
fi
for f in libssmpose_ort.so libssmpose_kernels.so; do
  [ -f "$base/$f" ] || { echo "no $base/$f (set BASE_LIBS to the folder of the built libraries)" >&2; exit 2; }
done
names=()
dirs=()
for pair in "$@"; do
  name=${pair%%=*} dir=${pair#*=}
  if [ "$name" = "$pair" ] || [ ! -f "$dir/libssmpose_kernels_cuda.so" ]; then
    echo "expected NAME=LIB_DIR with LIB_DIR/libssmpose_kernels_cuda.so, got '$pair'" >&2
    exit 2
  fi
  cp "$base/libssmpose_ort.so" "$base/libssmpose_kernels.so" "$dir/"
  names+=("$name")
  dirs+=("$dir")
done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
runs=()
for ((r = 1; r <= rounds; r++)); do
  for i in "${!names[@]}"; do
    tag="${names[$i]}_$r"
    SSMPOSE_KERNELS_DIR="${dirs[$i]}" timeout 900 python3 benchmarks/bench_deploy_graphs.py --onnx-dir "$onnx_dir" \
      --variants "$variant" --batch "${batches[@]}" --cudnn-search "${CUDNN_SEARCH:-HEURISTIC}" --no-eager \
      --json "$out/$tag.json" > "$out/$tag.txt" 2>&1
    echo "$tag done $(date +%T)"
    runs+=("${names[$i]}=$out/$tag.json")
  done
done
python3 benchmarks/compare_runs.py "${runs[@]}" | tee "$out/compare.txt"
if [ -n "${PROFILE_BATCH:-}" ]; then
  last=$((${#names[@]} - 1))
  SSMPOSE_KERNELS_DIR="${dirs[$last]}" timeout 900 python3 benchmarks/bench_deploy_graphs.py --onnx-dir "$onnx_dir" \
    --variants "$variant" --batch "$PROFILE_BATCH" --no-cuda-graph --cudnn-search "${CUDNN_SEARCH:-HEURISTIC}" \
    --no-eager --profile-batch "$PROFILE_BATCH" --profile-variant "$variant" --json "$out/profile.json" \
    > "$out/profile.txt" 2>&1
  echo "profile of ${names[$last]} at batch $PROFILE_BATCH: $out/profile.txt"
fi
