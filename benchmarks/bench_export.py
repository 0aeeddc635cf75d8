"""ONNX export on CPU: export time, file size and node count per model and form, and ONNX Runtime CPU latency
of the exported graphs against PyTorch eager (not a test: prints a markdown table, writes JSON).

Each (model, input size) is traced once; the custom form, the portable form with the default scan lowering
(matrix) and the portable form with the doubling lowering come from that one trace. Export time = the
shared trace + that form's own steps (what `ssmpose export` takes for the form alone).

    python benchmarks/bench_export.py --models hrvmamba_tiny hrvmamba_small hrvmamba_base --out /tmp/bench_export
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def _latency(run, repeats: int, budget_s: float):
    run()  # warm-up (allocations, ORT arena)
    times = []
    start = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), len(times)


def main():
    import onnxruntime as ort

    import ssmpose
    from ssmpose.custom_ops.ort_library import ort_library_path
    from ssmpose.custom_ops.portable import check_scan_options
    from ssmpose.export import exporter
    from ssmpose.export.metadata import build_metadata, write_metadata

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["hrvmamba_tiny", "hrvmamba_small", "hrvmamba_base"])
    parser.add_argument("--sizes", nargs="+", default=["256x192", "384x288"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="/tmp/bench_export")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    library = ort_library_path()
    rows = []
    for name in args.models:
        for size_text in args.sizes:
            size = exporter.parse_input_size(size_text)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = ssmpose.build_model(name, input_size=size).eval()
            stages = {}
            t = time.perf_counter()
            traced = exporter._trace(model, size, "dynamic", False, 18, "heatmaps", stages)
            trace_s = time.perf_counter() - t
            variants = [("custom", "matrix"), ("portable", "matrix"), ("portable", "doubling")]
            images = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
            with torch.no_grad():
                eager_s, eager_min, eager_n = _latency(lambda: model(torch.from_numpy(images)), args.repeats, 60)
            for i, (form, lowering) in enumerate(variants):
                ir_model = traced if i == len(variants) - 1 else exporter._copy_ir(traced)
                form_stages = {}
                t = time.perf_counter()
                chunk = check_scan_options(None, lowering) if form == "portable" else None
                proto = exporter._finish(ir_model, form, chunk or 32, lowering, form_stages)
                exporter._normalise(proto, name, form, 18)
                write_metadata(proto, build_metadata(model.meta, input_size=size, batch="dynamic", form=form, opset=18,
                                                     dtype="float32", io_dtype="float32", chunk_size=chunk,
                                                     scan_lowering=lowering if form == "portable" else None,
                                                     input_name="images", output_name="heatmaps"))
                path = out / f"{name}_{size[0]}x{size[1]}_{form}{'_' + lowering if form == 'portable' else ''}.onnx"
                path.write_bytes(proto.SerializeToString(deterministic=True))
                export_s = trace_s + time.perf_counter() - t
                options = ort.SessionOptions()
                options.intra_op_num_threads = args.threads
                options.log_severity_level = 3
                if form == "custom":
                    if library is None:
                        continue
                    options.register_custom_ops_library(str(library))
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                ort_s, ort_min, ort_n = _latency(lambda: session.run(None, {"images": images}), args.repeats, 60)
                got = session.run(None, {"images": images})[0]
                with torch.no_grad():
                    ref = model(torch.from_numpy(images)).numpy()
                row = {"model": name, "input_size": f"{size[0]}x{size[1]}", "form": form,
                       "scan_lowering": lowering if form == "portable" else None, "chunk_size": chunk,
                       "export_s": round(export_s, 1), "trace_s": round(trace_s, 1),
                       "size_mb": round(path.stat().st_size / 1e6, 1), "nodes": len(proto.graph.node),
                       "ort_cpu_ms": round(ort_s * 1e3, 1), "ort_cpu_min_ms": round(ort_min * 1e3, 1), "ort_runs": ort_n,
                       "torch_eager_ms": round(eager_s * 1e3, 1), "torch_eager_min_ms": round(eager_min * 1e3, 1),
                       "torch_runs": eager_n,
                       "max_abs_err_rel": float(np.abs(got - ref).max() / np.abs(ref).max())}
                rows.append(row)
                print(json.dumps(row), flush=True)
                del session
            del traced
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print("\n| model | input | form | export (s) | size (MB) | nodes | ORT CPU ms (median/min) | PyTorch eager ms "
          "(median/min) | max err / max|hm| |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        form = r["form"] + (f" ({r['scan_lowering']}, T={r['chunk_size']})" if r["scan_lowering"] else "")
        print(f"| {r['model']} | {r['input_size']} | {form} | {r['export_s']} | {r['size_mb']} | {r['nodes']} | "
              f"{r['ort_cpu_ms']} / {r['ort_cpu_min_ms']} | {r['torch_eager_ms']} / {r['torch_eager_min_ms']} | "
              f"{r['max_abs_err_rel']:.1e} |")


if __name__ == "__main__":
    main()
