"""Whole model, SelectiveScan (domain version 1) against SelectiveScan2D (version 2), in one run on one GPU
(not a test: prints a table, writes JSON).

Rows: eager PyTorch fp16 with the version-1 path and inside `ops.scan_2d()`, and ONNX Runtime CUDA custom
fp16 graphs exported with op_version 1 and 2 (with and without the CUDA graph), at each batch size:
images/s and p50/p90 latency (host copies excluded). The two ONNX graphs come from the same weights, so
their outputs are compared with each other on the same input.

    python benchmarks/bench_scan_2d.py --model hrvmamba_small --onnx-dir DIR --batch 1 32 128 --json out.json

DIR holds MODEL.custom.fp16.v1.onnx and MODEL.custom.fp16.v2.onnx; missing files are exported here
(`--export-only` makes them and stops, e.g. on a machine without a GPU).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ssmpose import runtimes
from ssmpose.custom_ops import ops
from ssmpose.deploy_demo import demo_weights
from ssmpose.export import export_model
from ssmpose.runtimes.benchmark import benchmark_session


def graphs(name: str, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for version in (1, 2):
        path = out_dir / f"{name}.custom.fp16.v{version}.onnx"
        if not path.exists():
            export_model(demo_weights(name), path, form="custom", fp16=True, op_version=version)
        files[version] = path
    return files


def measure(session, label, batches, repeats, rows, scan_2d=False) -> None:
    for batch in batches:
        try:
            with ops.scan_2d(scan_2d):
                r = benchmark_session(session, batch, repeats=repeats, on_device=True)
        except Exception as err:  # out of memory, a capture failure: report and go on
            print(f"{label} b={batch}: failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}", flush=True)
            torch.cuda.empty_cache()
            continue
        rows.append({"runtime": label, **r})
        print(f"{label:<34} b={batch:<4} {r['images_per_s']:9.1f} img/s  p50 {r['p50_s'] * 1e3:8.2f} ms  "
              f"p90 {r['p90_s'] * 1e3:8.2f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hrvmamba_small")
    parser.add_argument("--onnx-dir", default="/tmp/bench_scan_2d")
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32, 128])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default=None)
    parser.add_argument("--export-only", action="store_true")
    args = parser.parse_args()
    files = graphs(args.model, Path(args.onnx_dir))
    if args.export_only:
        print({k: str(v) for k, v in files.items()})
        return
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model, "rows": []}
    rows = result["rows"]
    model = demo_weights(args.model)
    eager = runtimes.load(model, "torch", device="cuda", dtype="float16")
    measure(eager, "torch fp16 (v1 path)", args.batch, args.repeats, rows)
    measure(eager, "torch fp16 (SelectiveScan2D)", args.batch, args.repeats, rows, scan_2d=True)
    del eager
    h, w = model.meta["input_size"]
    probe = torch.randn(4, 3, h, w, generator=torch.Generator().manual_seed(0)).cuda()
    outputs = {}
    for variant, options in (("", {}), (" + CUDA graph", {"enable_cuda_graph": "1"})):
        for version, path in files.items():
            session = runtimes.load(str(path), "ort-cuda", cuda_options=options)
            label = f"ort-cuda custom fp16 v{version}{variant}"
            if not options:
                outputs[version] = session.run(probe).float().cpu().numpy()
                nodes = session.node_placement()
                result[f"v{version}_placement"] = nodes
            measure(session, label, args.batch, args.repeats, rows)
            del session
    scale = float(np.abs(outputs[1]).max())
    result["v2_vs_v1_max_abs_over_max"] = float(np.abs(outputs[2] - outputs[1]).max()) / scale
    print(f"ort-cuda fp16: v2 against v1 on the same input, max abs / max = {result['v2_vs_v1_max_abs_over_max']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
