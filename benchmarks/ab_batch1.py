"""Batch-1 latency of several exported graphs, each run in its own process, in alternating rounds (A, B, A, B, ...),
so that slow drifts of the machine show as differences between rounds rather than between graphs (not a test:
prints a table, writes JSON).

    python benchmarks/ab_batch1.py small_v6.onnx small_v7.onnx --rounds 2 --json ab.json      # ort-cuda
    python benchmarks/ab_batch1.py small_v6.onnx small_v7.onnx --backend ort-cpu --runs 10

Each process: `runtimes.load(file, backend)` (ort-cuda: with the CUDA graph and cuDNN's heuristic search), 10
warm-up runs, then --runs timed runs of one random image (on the GPU for ort-cuda, with torch.cuda.synchronize after
each run); p50 and p90.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def measure(path: str, backend: str, runs: int) -> dict:
    import platform

    import numpy as np
    import torch

    from ssmpose import runtimes
    on_gpu = backend == "ort-cuda"
    options = {"cuda_options": {"cudnn_conv_algo_search": "HEURISTIC", "enable_cuda_graph": "1"}} if on_gpu else {}
    session = runtimes.load(path, backend, **options)
    h, w = session.metadata["input_size"]
    images = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    images = images.cuda() if on_gpu else images.numpy()

    def run_once():
        session.run(images)
        if on_gpu:
            torch.cuda.synchronize()

    for _ in range(10):
        run_once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    device = torch.cuda.get_device_name() if on_gpu else (platform.processor() or platform.machine())
    return {"file": path, "backend": backend, "p50_ms": statistics.median(times) * 1e3,
            "p90_ms": float(np.percentile(times, 90)) * 1e3, "runs": runs, "device": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--backend", default="ort-cuda", help="a runtimes.load backend (default ort-cuda)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)   # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.files[0], args.backend, args.runs)))
        return
    rows = []
    for round_index in range(args.rounds):
        for path in args.files:
            out = subprocess.run([sys.executable, __file__, "--one", "--runs", str(args.runs), "--backend",
                                  args.backend, path], capture_output=True, text=True, check=True).stdout
            row = dict(json.loads(out.strip().splitlines()[-1]), round=round_index + 1)
            rows.append(row)
            print(f"round {row['round']}  {Path(path).name:<50} p50 {row['p50_ms']:7.3f} ms  "
                  f"p90 {row['p90_ms']:7.3f} ms  ({row['device']})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
