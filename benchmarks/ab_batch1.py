"""Batch-1 latency of several exported graphs on ort-cuda with the CUDA graph, each run in its own process, in
alternating rounds (A, B, A, B, ...), so that slow drifts of the machine show as differences between rounds rather
than between graphs (not a test: prints a table, writes JSON).

    python benchmarks/ab_batch1.py small_v6.onnx small_v7.onnx --rounds 2 --json ab.json

Each process: `runtimes.load(file, "ort-cuda")` with the CUDA graph and cuDNN's heuristic search, 10 warm-up runs,
then --runs timed runs of one random image already on the GPU (torch.cuda.synchronize after each); p50 and p90.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def measure(path: str, runs: int) -> dict:
    import numpy as np
    import torch

    from ssmpose import runtimes
    session = runtimes.load(path, "ort-cuda", cuda_options={"cudnn_conv_algo_search": "HEURISTIC",
                                                            "enable_cuda_graph": "1"})
    h, w = session.metadata["input_size"]
    images = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).cuda()
    for _ in range(10):
        session.run(images)
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(images)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"file": path, "p50_ms": statistics.median(times) * 1e3, "p90_ms": float(np.percentile(times, 90)) * 1e3,
            "runs": runs, "device": torch.cuda.get_device_name()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)   # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.files[0], args.runs)))
        return
    rows = []
    for round_index in range(args.rounds):
        for path in args.files:
            out = subprocess.run([sys.executable, __file__, "--one", "--runs", str(args.runs), path],
                                 capture_output=True, text=True, check=True).stdout
            row = dict(json.loads(out.strip().splitlines()[-1]), round=round_index + 1)
            rows.append(row)
            print(f"round {row['round']}  {Path(path).name:<50} p50 {row['p50_ms']:7.3f} ms  "
                  f"p90 {row['p90_ms']:7.3f} ms  ({row['device']})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
