"""Whole-model throughput and parity on the GPU machine (not a test: prints tables, writes JSON).

For each model: exports the custom and portable forms (fp32 and fp16) with the same seeded weights, then
  - parity of ort-cuda (custom, portable; fp32, fp16; batch 1 and 64) against PyTorch CUDA fp32, and
    whether every node runs on the CUDA execution provider,
  - images/s at batch 1/32/128 for torch-reference, torch (CUDA kernels), ort-cuda custom, ort-cuda portable.

    python benchmarks/bench_models.py --models hrvmamba_small hrvmamba_base --out /tmp/bench
    python benchmarks/bench_models.py --forms          # PyTorch rows only (no onnxruntime-gpu needed)

It stops at once when the CUDA kernel library cannot be loaded: "torch" rows must not silently measure
the reference operators.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ssmpose import load_checkpoint, runtimes
from ssmpose.custom_ops import kernel_library
from ssmpose.deploy_demo import demo_weights
from ssmpose.export import export_model
from ssmpose.runtimes import parity
from ssmpose.runtimes.benchmark import benchmark_session


def export_all(model, name, out_dir: Path, forms, dtypes) -> dict:
    """Export each (form, dtype) unless the file is already in out_dir (e.g. exported on another machine
    from the same seeded weights)."""
    files = {}
    for form in forms:
        for dtype in dtypes:
            path = out_dir / f"{name}.{form}.{'fp16' if dtype == 'float16' else 'fp32'}.onnx"
            if not path.exists():
                t = time.perf_counter()
                export_model(model, path, form=form, fp16=dtype == "float16")
                print(f"exported {path.name} in {time.perf_counter() - t:.1f}s", flush=True)
            files[(form, dtype)] = path
    return files


def measure(session, label, dtype, name, batches, repeats) -> list:
    rows = []
    for batch in batches:
        try:
            r = benchmark_session(session, batch, repeats=repeats, on_device=True)
        except Exception as err:  # e.g. out of memory (torch's RuntimeError, ONNX Runtime's own exceptions)
            print(f"{name} {label} {dtype} b={batch}: failed: {type(err).__name__}: {str(err).splitlines()[0]}",
                  flush=True)
            torch.cuda.empty_cache()
            continue
        rows.append({"model": name, "runtime": label, "dtype": dtype, **r})
        print(f"throughput {name:<15} {label:<18} {dtype:<7} b={batch:<4} {r['images_per_s']:9.1f} img/s "
              f"({r['median_s'] * 1e3:.2f} ms)" + (f", in {r['slices']} slices" if r["slices"] > 1 else ""),
              flush=True)
    return rows


ORT_VARIANTS = {"default": {}, "nhwc": {"prefer_nhwc": "1"}, "graph": {"enable_cuda_graph": "1"},
                "nhwc-graph": {"prefer_nhwc": "1", "enable_cuda_graph": "1"}}


def run_model(model, name, files, batches, repeats, reference_batches, result, save, parity_batches=(1, 64),
              ort_variants=("default",), variant_files=("custom.fp16",)) -> None:
    """Appends parity and throughput rows to result["parity"] / result["throughput"], calling save() after
    each session, so a run cut short still leaves what it measured."""
    h, w = model.meta["input_size"]
    torch.backends.cudnn.allow_tf32 = False   # fp32 reference without TF32 convolutions
    reference = runtimes.load(model, "torch", device="cuda")
    inputs = {b: torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(b)).cuda() for b in parity_batches}
    expected = {b: reference.run(x).float().cpu().numpy() for b, x in inputs.items()}
    parity_rows, rows = result["parity"], result["throughput"]
    for (form, dtype), path in files.items():
        tag = f"{form}.{'fp16' if dtype == 'float16' else 'fp32'}"
        for variant in ort_variants:
            if variant != "default" and tag not in variant_files:
                continue
            try:
                session = runtimes.load(str(path), "ort-cuda", cuda_options=ORT_VARIANTS[variant])
                placement = session.node_placement()
                for b, x in inputs.items():
                    row = {"model": name, "form": form, "dtype": dtype, "variant": variant, "batch": b,
                           "placement": placement,
                           **parity.compare(expected[b], session.run(x).float().cpu().numpy(), (h, w))}
                    parity_rows.append(row)
                    print(f"parity {name} {form:<8} {variant:<10} {dtype:<7} b={b:<3} max_abs/max_ref "
                          f"{row['max_abs_error_over_max_ref']:.2e} mean_disp "
                          f"{row['mean_keypoint_displacement_px']:.3f}px argmax {row['argmax_agreement']:.4f}"
                          f" all_on_cuda={placement['all_on_requested']} {placement['providers']}", flush=True)
            except Exception as err:  # an EP option this build lacks, a capture failure: report, go on
                print(f"ort-cuda {form} {dtype} {variant}: failed: {type(err).__name__}: {str(err)[:300]}", flush=True)
                continue
            label = f"ort-cuda {form}" + ("" if variant == "default" else f" ({variant})")
            rows += measure(session, label, dtype, name, batches, repeats)
            save()
            del session
    torch.backends.cudnn.allow_tf32 = True    # PyTorch's default for the eager timings
    rows += measure(reference, "torch", "float32", name, batches, repeats)
    rows += measure(runtimes.load(model, "torch", device="cuda", dtype="float16"), "torch", "float16", name,
                    batches, repeats)
    save()
    rows += measure(runtimes.load(model, "torch", device="cuda", reference_ops=True), "torch-reference",
                    "float32", name, reference_batches, max(3, repeats // 2))
    save()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["hrvmamba_small", "hrvmamba_base"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32, 128])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="/tmp/bench_models", help="exported graphs (reused when present)")
    parser.add_argument("--json", default=None, help="results, rewritten after each session "
                                                     "(default: OUT/bench_models.json)")
    parser.add_argument("--forms", nargs="*", default=["custom", "portable"],
                        help="ONNX forms to run on ort-cuda; none (an empty list): PyTorch rows only")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    parser.add_argument("--reference-batch", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--ort-variants", nargs="+", default=["default"], choices=list(ORT_VARIANTS),
                        help="CUDA EP option sets to time (parity is checked for each)")
    parser.add_argument("--ort-variant-files", nargs="+", default=["custom.fp16"],
                        help="graphs (form.fp32|fp16) that get the non-default variants")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="load <dir>/<model>.safetensors instead of the seeded demo weights (seeded "
                             "initialisation differs between torch versions, so graphs exported on another "
                             "machine need the weights they were exported from)")
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kernel_library.cuda_library() is None:
        # "torch" would silently mean the reference operators; a throughput table must not mix the two
        raise SystemExit(f"the CUDA kernel library is not available ({kernel_library.unavailable_reason('cuda')}); "
                         "set SSMPOSE_KERNELS_DIR to a build of it (tests/gpu/run_all.sh does)")
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "parity": [], "throughput": []}
    if args.forms:
        import onnxruntime
        result["onnxruntime"] = onnxruntime.__version__

    json_path = Path(args.json) if args.json else out_dir / "bench_models.json"

    def save():
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2, default=str)

    for name in args.models:
        checkpoint = Path(args.checkpoint_dir) / f"{name}.safetensors" if args.checkpoint_dir else None
        model = load_checkpoint(checkpoint).eval() if checkpoint else demo_weights(name)
        files = export_all(model, name, out_dir, args.forms, args.dtypes)
        run_model(model, name, files, args.batch, args.repeats, args.reference_batch, result, save,
                  ort_variants=args.ort_variants, variant_files=args.ort_variant_files)
    print(json.dumps({"device": result["device"], "onnxruntime": result.get("onnxruntime")}))


if __name__ == "__main__":
    main()
