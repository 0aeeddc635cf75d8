"""CPU inference of one model on every CPU runtime: PyTorch eager (the CPU kernels), ONNX Runtime CPU and
OpenVINO CPU, each on the custom form (at the default op version and at op version 7) and the portable form (not
a test: prints a table, writes JSON).

    python benchmarks/bench_cpu_runtimes.py --model hrvmamba_small --batch 1 8 --json out.json
    python benchmarks/bench_cpu_runtimes.py --rows ort-cpu:portable openvino:portable --export-dir DIR

The exports (seeded weights, `deploy_demo.demo_weights`) are written to --export-dir and reused when present.
Every row also reports its heatmap error against PyTorch on the timed batch, so a fast row that computes
something else shows up.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from ssmpose import runtimes
from ssmpose.deploy_demo import demo_weights
from ssmpose.export import export_model
from ssmpose.runtimes.benchmark import benchmark_session

# Forms: "custom" (the default op version), "custom-vN" (the custom form at op version N), "portable".
ROWS = [("torch", "eager"), ("ort-cpu", "custom"), ("ort-cpu", "custom-v7"), ("ort-cpu", "portable"),
        ("openvino", "custom"), ("openvino", "custom-v7"), ("openvino", "portable")]


def exported(model, form: str, export_dir: Path) -> Path:
    h, w = model.meta["input_size"]
    path = export_dir / f"{model.meta['model']}_{h}x{w}_{form}.onnx"
    if not path.is_file():
        if form.startswith("custom-v"):
            export_model(model, path, form="custom", op_version=int(form[len("custom-v"):]))
        else:
            export_model(model, path, form=form)
    return path


def heatmap_error(session, reference, batch: int) -> float:
    h, w = reference.meta["input_size"]
    images = np.random.default_rng(1).standard_normal((batch, 3, h, w)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images)).numpy()
    return float(np.abs(session.run(images) - expected).max() / np.abs(expected).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hrvmamba_small")
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--export-dir", default="outputs/bench_cpu_runtimes")
    row_names = [f"{backend}:{form}" for backend, form in ROWS]
    parser.add_argument("--rows", nargs="+", default=row_names, choices=row_names, help="only these backend:form rows")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    export_dir = Path(args.export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    model = demo_weights(args.model).eval()
    rows = []
    print(f"{args.model}, CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    print(f"{'backend':<10} {'form':<9} {'batch':>5} {'median ms':>10} {'img/s':>8} {'err/max|ref|':>13}")
    for backend, form in (row.split(":") for row in args.rows):
        source = model if backend == "torch" else str(exported(model, form, export_dir))
        options = {"device": "cpu"} if backend == "torch" else {}
        session = runtimes.load(source, backend, **options)
        for batch in args.batch:
            result = benchmark_session(session, batch, repeats=args.repeats, warmup=1)
            error = heatmap_error(session, model, batch)
            row = {"model": args.model, "backend": backend, "form": form, "batch": batch,
                   "median_ms": result["median_s"] * 1e3, "images_per_s": result["images_per_s"],
                   "error_over_max_ref": error}
            rows.append(row)
            print(f"{backend:<10} {form:<9} {batch:>5} {row['median_ms']:>10.1f} {row['images_per_s']:>8.2f} "
                  f"{error:>13.2e}")
        del session
    if args.json:
        Path(args.json).write_text(json.dumps({"device": platform.processor() or platform.machine(),
                                               "cores": os.cpu_count(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
