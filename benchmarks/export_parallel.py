"""Export the benchmark graphs (seeded demo weights) in parallel processes, one per (model, form, dtype).

A single export is mostly single-threaded Python (about 60-90 s per graph), so a many-core machine
exports all of them in about the time of one. Files already present are kept. Names follow
benchmarks/bench_models.py: {model}.{form}.{fp32|fp16}.onnx.

    python benchmarks/export_parallel.py --models hrvmamba_small hrvmamba_base --out /tmp/bench_models
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path


def export_one(name: str, form: str, dtype: str, path: str, threads: int) -> tuple:
    import torch
    torch.set_num_threads(threads)
    from ssmpose.deploy_demo import demo_weights
    from ssmpose.export import export_model
    start = time.perf_counter()
    export_model(demo_weights(name), path, form=form, fp16=dtype == "float16")
    return path, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["hrvmamba_small", "hrvmamba_base"])
    parser.add_argument("--forms", nargs="+", default=["custom", "portable"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    parser.add_argument("--out", default="/tmp/bench_models")
    parser.add_argument("--jobs", type=int, default=0, help="processes (default: CPU cores / 2)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = []
    for name in args.models:
        for form in args.forms:
            for dtype in args.dtypes:
                path = out / f"{name}.{form}.{'fp16' if dtype == 'float16' else 'fp32'}.onnx"
                if not path.exists():
                    todo.append((name, form, dtype, str(path)))
    jobs = args.jobs or max(1, (os.cpu_count() or 2) // 2)
    threads = max(1, (os.cpu_count() or 2) // max(1, min(jobs, len(todo) or 1)))
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(export_one, *job, threads) for job in todo]
        for future in as_completed(futures):
            path, seconds = future.result()
            print(f"exported {Path(path).name} in {seconds:.1f}s", flush=True)
    print(f"{len(todo)} exports in {time.perf_counter() - start:.1f}s wall", flush=True)


if __name__ == "__main__":
    main()
