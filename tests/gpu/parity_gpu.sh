#!/usr/bin/env bash
# `ssmpose parity` on the GPU machine: torch (CUDA) and ort-cuda custom + portable, fp32 and fp16, on the crops
# of the COCO sample persons, against torch fp32 on the CPU. Run from the repository root:
#   OUT=/tmp/res bash tests/gpu/parity_gpu.sh DATA_DIR [MODEL]
# DATA_DIR holds test_coco.json and its images (a copy of ../shared/data/coco carried to the machine);
# MODEL defaults to hrvmamba_small with seeded weights whose DCNv4 offset/mask projections are perturbed
# (so that the deformable sampling moves off the grid). Needs onnxruntime-gpu, opencv, pycocotools and tqdm on
# PYTHONPATH (../shared/hooks/gpu-wheels stages them). Writes $OUT/parity_<model>[_no_tf32].json and logs.
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:?usage: parity_gpu.sh DATA_DIR [MODEL]}
model=${2:-hrvmamba_small}
out=${OUT:-/tmp}
export PYTHONUNBUFFERED=1
if [ -z "${SSMPOSE_KERNELS_DIR:-}" ]; then   # libraries prebuilt elsewhere (for sm_90) may be given instead
  build_dir=${SSMPOSE_GPU_BUILD:-/tmp/ssmpose-build-gpu}
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
  cmake --build "$build_dir" -j"$(nproc)" >/dev/null
  export SSMPOSE_KERNELS_DIR="$build_dir/lib"
fi
export SSMPOSE_REQUIRE_CUDA=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
checkpoint=/tmp/parity_${model}.safetensors
python3 -c "
import sys, ssmpose
from ssmpose.deploy_demo import demo_weights
ssmpose.save_checkpoint(demo_weights(sys.argv[1]), sys.argv[2])" "$model" "$checkpoint"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$out/gpu_name.txt"
common=(parity "$checkpoint" --backends torch,ort-cuda --forms custom,portable --fp16 --inputs "$data"
        --ann "$data/test_coco.json" --export-dir /tmp/parity_exports)
python3 -m ssmpose.cli.main "${common[@]}" --json "$out/parity_${model}.json" 2>&1 | tee "$out/parity_${model}.log" || true
python3 -m ssmpose.cli.main "${common[@]}" --backends ort-cuda --cuda-option use_tf32=0 \
  --json "$out/parity_${model}_no_tf32.json" 2>&1 | tee "$out/parity_${model}_no_tf32.log" || true
