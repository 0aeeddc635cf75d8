#!/usr/bin/env bash
# Training on the GPU machine (run from the repository root after tests/gpu/parity_gpu.sh has built the kernels):
#   OUT=/tmp/res bash tests/gpu/train_gpu.sh [ITERS]
# 1. benchmarks/bench_training.py: hrvmamba_small, batch 64, AMP bf16/fp16/none, CUDA kernels against the
#    reference operators -> $OUT/bench_training.json
# 2. hrvmamba_tiny on 400 synthetic images (configs/hrvmamba_tiny_synth.toml, batch 32, ITERS iterations,
#    default 1500), evaluated on the validation split -> $OUT/train_synth_log.jsonl, the weights in
#    /tmp/train_synth, then `ssmpose infer` on held-out synthetic images -> $OUT/infer_synth.json
# Needs opencv, pycocotools and tqdm on PYTHONPATH (../shared/hooks/gpu-wheels stages them).
set -euo pipefail
cd "$(dirname "$0")/../.."
iters=${1:-1500}
out=${OUT:-/tmp}
export PYTHONUNBUFFERED=1
export SSMPOSE_KERNELS_DIR="${SSMPOSE_GPU_BUILD:-/tmp/ssmpose-build-gpu}/lib" SSMPOSE_REQUIRE_CUDA=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 benchmarks/bench_training.py --model hrvmamba_small --batch 64 --amp bf16 fp16 none \
  --ops kernels reference --json "$out/bench_training.json" 2>&1 | tee "$out/bench_training.log"
python3 -m ssmpose.cli.main synth-data /tmp/synth --n 500 --val-fraction 0.2
python3 -m ssmpose.cli.main train configs/hrvmamba_tiny_synth.toml --data-root /tmp/synth --work-dir /tmp/train_synth \
  --max-iters "$iters" --set train.batch_size=32 --set data.workers=8 --set train.warmup_iters=100 \
  --set eval.interval=20 2>&1 | tail -3 | tee "$out/train_synth.log"
cp /tmp/train_synth/log.jsonl "$out/train_synth_log.jsonl"
python3 -m ssmpose.cli.main eval /tmp/train_synth/best.safetensors --ann /tmp/synth/annotations/val.json \
  --images /tmp/synth/images/val --json "$out/eval_synth.json"
python3 -m ssmpose.cli.main infer /tmp/train_synth/best.safetensors /tmp/synth/images/val \
  --ann /tmp/synth/annotations/val.json --out /tmp/infer_synth --flip-test
cp /tmp/infer_synth/results.json "$out/infer_synth.json"
