#!/usr/bin/env bash
# The CUDA kernels under NVIDIA compute-sanitizer (issue 17; docs/reliability.md). Run from the repository root on
# the GPU machine:
#   bash tests/gpu/compute_sanitizer.sh [tool ...]        default tools: memcheck racecheck initcheck synccheck
# Builds the kernel libraries (CUDA, sm_90, with -lineinfo so reports name source lines) into
# $SSMPOSE_SANITIZER_GPU_BUILD (default /tmp/ssmpose-build-gpu-sanitize), then, under each tool:
#   1. tests/gpu/check_cuda_kernels.py --quick --no-bench: every operator, forward and backward, float32 / float16 /
#      bfloat16, small shapes, and the bad-argument checks (status codes, no launch);
#   2. memcheck only: the pytest GPU tests (tests/gpu/test_cuda_ops.py) with the torch ops on CUDA.
# A tool's report makes the script fail (--error-exitcode); logs go to $OUT/compute_sanitizer_<tool>_<step>.log.
# What has run so far: docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
command -v cmake >/dev/null || { echo "cmake is required" >&2; exit 1; }
sanitizer=$(command -v compute-sanitizer || true)
if [ -z "$sanitizer" ]; then
  for candidate in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    [ -x "$candidate" ] && sanitizer=$candidate && break
  done
fi
[ -n "$sanitizer" ] || { echo "compute-sanitizer not found (CUDA toolkit)" >&2; exit 1; }
tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(memcheck racecheck initcheck synccheck)
build_dir=${SSMPOSE_SANITIZER_GPU_BUILD:-/tmp/ssmpose-build-gpu-sanitize}
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_CUDA_FLAGS="-lineinfo" >/dev/null
cmake --build "$build_dir" -j"$(nproc)" >/dev/null
[ -f "$build_dir/lib/libssmpose_kernels_cuda.so" ] || { echo "libssmpose_kernels_cuda.so was not built" >&2; exit 1; }
export SSMPOSE_KERNELS_DIR="$build_dir/lib"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export SSMPOSE_REQUIRE_CUDA=1
out=${OUT:-/tmp}
mkdir -p "$out"
status=0
run() {  # run <tool> <step> <command...>
  local tool=$1 step=$2; shift 2
  local log="$out/compute_sanitizer_${tool}_${step}.log"
  echo "== compute-sanitizer --tool $tool: $step"
  if "$sanitizer" --tool "$tool" --error-exitcode 99 --target-processes all --print-limit 50 "$@" >"$log" 2>&1; then
    echo "   clean ($(grep -c 'ERROR SUMMARY: 0 errors' "$log" || true) process summaries with 0 errors)"
  else
    echo "   FAILED (exit $?): $log"; tail -40 "$log"; status=1
  fi
}
for tool in "${tools[@]}"; do
  run "$tool" check_cuda_kernels python3 tests/gpu/check_cuda_kernels.py --lib-dir "$build_dir/lib" --quick --no-bench
  if [ "$tool" = memcheck ]; then
    run "$tool" test_cuda_ops python3 -m pytest tests/gpu/test_cuda_ops.py -q -x -p no:cacheprovider
  fi
done
exit $status
