"""Training throughput of a model step (forward, MSE loss, backward, AdamW step) on random images and heatmap
targets: images/s and peak memory, with the compiled kernels against the reference operators, per AMP mode.

    python benchmarks/bench_training.py --model hrvmamba_small --batch 64 --amp bf16 fp16 none --json out.json

Data loading is left out (it is the same for every row); the step is the trainer's own (training.trainer).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import ssmpose
from ssmpose.custom_ops import ops
from ssmpose.training.trainer import keypoint_mse_loss

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def measure(model_name: str, batch: int, amp: str, reference_ops: bool, device: str, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = ssmpose.build_model(model_name).to(device).train()
    h, w = model.meta["input_size"]
    k = model.meta["num_keypoints"]
    images = torch.randn(batch, 3, h, w, device=device)
    targets = torch.rand(batch, k, h // 4, w // 4, device=device)
    weights = torch.ones(batch, k, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = AMP_DTYPES[amp]
    scaler = torch.amp.GradScaler(device) if amp == "fp16" else None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    with ops.force_reference(reference_ops):
        for step in range(warmup + steps):
            start = time.perf_counter()
            with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                out = model(images)
            loss = keypoint_mse_loss(out, targets, weights)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            if step >= warmup:
                times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"model": model_name, "batch": batch, "amp": amp, "ops": "reference" if reference_ops else "kernels",
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "median_step_s": median,
            "images_per_s": batch / median, "steps": steps,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None,
            "loss_finite": bool(torch.isfinite(loss).item())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hrvmamba_small")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--amp", nargs="+", default=["bf16", "fp16", "none"], choices=list(AMP_DTYPES))
    parser.add_argument("--ops", nargs="+", default=["kernels", "reference"], choices=["kernels", "reference"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    print(f"{'model':<16} {'batch':>5} {'amp':>5} {'ops':>10} {'step ms':>9} {'img/s':>8} {'peak GiB':>9}")
    for amp in args.amp:
        for kind in args.ops:
            try:
                row = measure(args.model, args.batch, amp, kind == "reference", args.device, args.steps, args.warmup)
            except torch.OutOfMemoryError as err:
                row = {"model": args.model, "batch": args.batch, "amp": amp, "ops": kind, "error": str(err)[:200]}
                print(f"{args.model:<16} {args.batch:>5} {amp:>5} {kind:>10} out of memory")
                rows.append(row)
                continue
            rows.append(row)
            peak = "-" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f}"
            print(f"{args.model:<16} {args.batch:>5} {amp:>5} {kind:>10} {row['median_step_s'] * 1e3:>9.1f} "
                  f"{row['images_per_s']:>8.1f} {peak:>9}")
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(rows, f, indent=2)
            if args.device == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
