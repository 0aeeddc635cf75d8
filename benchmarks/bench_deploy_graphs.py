"""Whole model on one GPU: how the exported graph's variants compare (not a test: prints tables, writes JSON).

Variants of the fp16 graph of one model, all exported from the same weights:
  - custom v1 (op domain 1, opset 18): the default before issue 15's work;
  - custom v2 (SelectiveScan2D, opset 20 with one-node Gelu): the default now;
  - custom v3 (as v2, every LayerNorm as the project's ssmpose::LayerNorm kernel);
  - custom v4 (as v3, residual Add + LayerNorm as ssmpose::AddLayerNorm and each LPU convolution chain as
    ssmpose::MultiKernelDepthwiseConv);
  - portable forms with each scan lowering (PORTABLE below).
For each: node count of the file and of ONNX Runtime's optimised CUDA graph, images/s and p50/p90 latency at
each batch size (with and without the CUDA graph for the custom forms), and the output against the first
variant's on the same input. Eager PyTorch fp16 (old and new default paths) in the same run. Optionally a
kernel profile of one variant (`--profile-batch`, `--profile-variant`).

    python benchmarks/bench_deploy_graphs.py --export-only --onnx-dir DIR     # anywhere (CPU is fine)
    python benchmarks/bench_deploy_graphs.py --onnx-dir DIR --batch 1 32 128 --json out.json   # on the GPU
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from ssmpose.custom_ops import ops
from ssmpose.deploy_demo import demo_weights
from ssmpose.export import export_model

CUSTOM = {  # name: (op_version, opset)
    "custom v1": (1, 18),
    "custom v2": (2, 20),
    "custom v3": (3, 20),
    "custom v4": (4, 20),
    "custom v5": (5, 20),
    "custom v6": (6, 20),
    "custom v7": (7, 20),
}
PORTABLE = {  # name: (scan lowering, chunk size)
    "portable matrix T32": ("matrix", 32),
    "portable matrix T16": ("matrix", 16),
    "portable doubling T64": ("doubling", 64),
    "portable halving T64": ("halving", 64),
}


def file_name(model: str, variant: str) -> str:
    return f"{model}.{variant.replace(' ', '_')}.fp16.onnx"


def export_variants(model_name: str, out_dir: Path, variants) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    model = demo_weights(model_name)
    files = {}
    for variant in variants:
        path = out_dir / file_name(model_name, variant)
        if not path.exists():
            t = time.perf_counter()
            if variant in CUSTOM:
                version, opset = CUSTOM[variant]
                export_model(model, path, form="custom", fp16=True, op_version=version, opset=opset)
            else:
                lowering, chunk = PORTABLE[variant]
                export_model(model, path, form="portable", fp16=True, scan_lowering=lowering, chunk_size=chunk)
            print(f"exported {path.name} in {time.perf_counter() - t:.0f} s", flush=True)
        files[variant] = path
    return files


def node_counts(path: Path, providers, library) -> dict:
    """Nodes of the file and of ONNX Runtime's optimised graph for these providers (after its fusions)."""
    import onnxruntime as ort
    counts = {"file": len(onnx.load(str(path), load_external_data=False).graph.node)}
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        if library:
            options.register_custom_ops_library(library)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=providers)
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
        counts["ort_optimized"] = len(optimized.graph.node)
        counts["ort_optimized_ops"] = dict(collections.Counter(n.op_type for n in optimized.graph.node).most_common())
    return counts


def measure(session, label, batches, repeats, rows, **context) -> None:
    import torch

    from ssmpose.runtimes.benchmark import benchmark_session
    for batch in batches:
        try:
            r = benchmark_session(session, batch, repeats=repeats, on_device=True)
        except Exception as err:  # out of memory, a capture failure: report it and go on
            print(f"{label} b={batch}: failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}", flush=True)
            torch.cuda.empty_cache()
            continue
        rows.append({"runtime": label, **context, **r})
        print(f"{label:<44} b={batch:<4} {r['images_per_s']:9.1f} img/s  p50 {r['p50_s'] * 1e3:8.2f} ms  "
              f"p90 {r['p90_s'] * 1e3:8.2f} ms" + (f"  ({r['slices']} slices)" if r["slices"] > 1 else ""),
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hrvmamba_small")
    parser.add_argument("--onnx-dir", default="/tmp/bench_deploy_graphs")
    parser.add_argument("--variants", nargs="+", default=list(CUSTOM) + list(PORTABLE),
                        choices=list(CUSTOM) + list(PORTABLE), metavar="VARIANT")
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32, 128])
    parser.add_argument("--portable-batch", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-eager", action="store_true")
    parser.add_argument("--no-cuda-graph", action="store_true", help="skip the CUDA-graph rows")
    parser.add_argument("--profile-batch", type=int, default=0, help="kernel profile at this batch size")
    parser.add_argument("--profile-variant", default="custom v2", choices=list(CUSTOM) + list(PORTABLE))
    parser.add_argument("--cudnn-search", default="EXHAUSTIVE", choices=["EXHAUSTIVE", "HEURISTIC", "DEFAULT"],
                        help="ORT's cudnn_conv_algo_search for every session (HEURISTIC creates sessions in seconds "
                             "instead of minutes)")
    parser.add_argument("--cuda-option", action="append", default=[], metavar="KEY=VALUE",
                        help="one more CUDA execution provider option for every ONNX Runtime session (repeatable), "
                             "e.g. prefer_nhwc=1")
    parser.add_argument("--json", default=None)
    parser.add_argument("--export-only", action="store_true")
    args = parser.parse_args()
    extra_options = {}
    for item in args.cuda_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--cuda-option takes KEY=VALUE, got {item!r}")
        extra_options[key] = value
    files = export_variants(args.model, Path(args.onnx_dir), args.variants)
    if args.export_only:
        return

    import torch

    from ssmpose import runtimes
    from ssmpose.custom_ops.ort_library import ort_library_path
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model,
              "cudnn_conv_algo_search": args.cudnn_search, "cuda_options": extra_options,
              "rows": [], "nodes": {}, "outputs_vs": {}}
    import onnxruntime
    result["onnxruntime"] = onnxruntime.__version__
    rows = result["rows"]
    if not args.no_eager:
        model = demo_weights(args.model)
        eager = runtimes.load(model, "torch", device="cuda", dtype="float16")
        with ops.scan_2d(False):
            measure(eager, "torch fp16, v1 path", args.batch, args.repeats, rows)
        measure(eager, "torch fp16, SelectiveScan2D", args.batch, args.repeats, rows)
        del eager
        torch.cuda.empty_cache()
    h, w = demo_weights(args.model).meta["input_size"]
    probe = torch.randn(4, 3, h, w, generator=torch.Generator().manual_seed(0)).cuda()
    library = str(ort_library_path())
    reference = None
    for variant, path in files.items():
        custom = variant in CUSTOM
        cuda_options = {"cudnn_conv_algo_search": args.cudnn_search, **extra_options}
        result["nodes"][variant] = node_counts(path, [("CUDAExecutionProvider", cuda_options)],
                                               library if custom else None)
        print(f"{variant}: {result['nodes'][variant]['file']} nodes in the file, "
              f"{result['nodes'][variant]['ort_optimized']} after ORT's CUDA optimisations", flush=True)
        session = runtimes.load(str(path), "ort-cuda", cuda_options=cuda_options)
        out = session.run(probe).float().cpu().numpy()
        if reference is None:
            reference, result["outputs_vs"]["reference_variant"] = out, variant
        scale = float(np.abs(reference).max())
        result["outputs_vs"][variant] = {"max_abs_over_max": float(np.abs(out - reference).max()) / scale,
                                           "argmax_agreement": float(np.mean(
                                               out.reshape(*out.shape[:2], -1).argmax(-1)
                                               == reference.reshape(*out.shape[:2], -1).argmax(-1)))}
        print(f"{variant}: against {result['outputs_vs']['reference_variant']} {result['outputs_vs'][variant]}",
              flush=True)
        measure(session, f"ort-cuda {variant}", args.batch if custom else args.portable_batch, args.repeats, rows,
                variant=variant, cuda_graph=False)
        if args.profile_batch and variant == args.profile_variant:
            from profile_models import print_profile, profile_session
            images = torch.randn(args.profile_batch, 3, h, w).cuda()
            result["profile"] = profile_session(session, images, iterations=5)
            print_profile(f"ort-cuda {variant}", result["profile"], args.profile_batch)
        del session
        if custom and not args.no_cuda_graph:
            session = runtimes.load(str(path), "ort-cuda", cuda_options={**cuda_options, "enable_cuda_graph": "1"})
            measure(session, f"ort-cuda {variant} + CUDA graph", args.batch, args.repeats, rows, variant=variant,
                    cuda_graph=True)
            del session
        torch.cuda.empty_cache()
        if args.json:  # after every variant, so that a run cut short keeps what it measured
            Path(args.json).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
