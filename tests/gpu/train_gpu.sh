#!/usr/bin/env bash
# Training on the GPU machine, run from the repository root with the CUDA libraries in SSMPOSE_KERNELS_DIR (or
# built by tests/gpu/parity_gpu.sh into /tmp/ssmpose-build-gpu):
#   OUT=/tmp/res bash tests/gpu/train_gpu.sh synth [EPOCHS]   # tiny on synthetic data, then eval and infer
#   OUT=/tmp/res bash tests/gpu/train_gpu.sh bench            # throughput table (run it alone on the GPU)
# synth: hrvmamba_tiny on 800 synthetic images (640 train / 160 val; configs/hrvmamba_tiny_synth.toml, batch 32,
#   EPOCHS epochs, default 25), evaluated every 10 epochs -> $OUT/train_synth_log.jsonl, the weights in
#   /tmp/train_synth, `ssmpose eval` -> $OUT/eval_synth.json, `ssmpose infer` -> $OUT/infer_synth.json
# bench: benchmarks/bench_training.py, hrvmamba_small, batch 64, AMP bf16/fp16/none, CUDA kernels against the
#   reference operators -> $OUT/bench_training.json
# Needs opencv, pycocotools and tqdm on PYTHONPATH (../shared/hooks/gpu-wheels stages them).
set -euo pipefail
cd "$(dirname "$0")/../.."
step=${1:?usage: train_gpu.sh synth [EPOCHS] | bench}
out=${OUT:-/tmp}
export PYTHONUNBUFFERED=1
export SSMPOSE_KERNELS_DIR="${SSMPOSE_KERNELS_DIR:-${SSMPOSE_GPU_BUILD:-/tmp/ssmpose-build-gpu}/lib}" SSMPOSE_REQUIRE_CUDA=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
case "$step" in
  bench)
    python3 benchmarks/bench_training.py --model hrvmamba_small --batch 64 --amp bf16 fp16 none \
      --ops kernels reference --json "$out/bench_training.json" 2>&1 | tee "$out/bench_training.log" ;;
  synth)
    epochs=${2:-25}
    python3 -m ssmpose.cli.main synth-data /tmp/synth --n 800 --val-fraction 0.2
    python3 -m ssmpose.cli.main train configs/hrvmamba_tiny_synth.toml --data-root /tmp/synth \
      --work-dir /tmp/train_synth --set train.epochs="$epochs" \
      --set "train.milestones=[$((epochs * 7 / 10)), $((epochs * 9 / 10))]" --set train.batch_size=32 \
      --set data.workers=8 --set train.warmup_iters=100 --set eval.interval=10 --set checkpoint.interval=10 \
      > "$out/train_synth.log" 2>&1
    cp /tmp/train_synth/log.jsonl "$out/train_synth_log.jsonl"
    python3 -m ssmpose.cli.main eval /tmp/train_synth/best.safetensors --ann /tmp/synth/annotations/val.json \
      --images /tmp/synth/images/val --json "$out/eval_synth.json" > "$out/eval_synth.log" 2>&1
    python3 -m ssmpose.cli.main infer /tmp/train_synth/best.safetensors /tmp/synth/images/val \
      --ann /tmp/synth/annotations/val.json --out /tmp/infer_synth --flip-test > "$out/infer_synth.log" 2>&1
    cp /tmp/infer_synth/results.json "$out/infer_synth.json"
    ls -la /tmp/train_synth > "$out/train_synth_files.txt" ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
