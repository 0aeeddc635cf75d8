"""Where the GPU time of one whole-model forward goes (not a test: prints tables, writes JSON).

Runs each configuration a few times under torch.profiler (CUPTI sees every CUDA kernel of the process,
ONNX Runtime's included), then sums kernel time by category (convolution, GEMM, normalisation, layout
copies, element-wise, scan, deform, resize) and lists the heaviest kernels.

    python benchmarks/profile_models.py --model hrvmamba_small --onnx-dir /tmp/bench_models --batch 128
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ssmpose import runtimes
from ssmpose.deploy_demo import demo_weights

# First match wins; kernel names of cuDNN, cuBLAS, CUTLASS, PyTorch and ONNX Runtime.
CATEGORIES = [
    ("scan", r"scan_fwd|scan_bwd|selective_scan|scan2d_"),
    ("deform", r"deform_"),
    ("resize", r"upsample|[Rr]esize|interpolat"),
    ("layout copy", r"[Tt]ranspose|nchwToNhwc|nhwcToNchw|nchw|nhwc|copy_kernel|[Cc]oncat|[Ss]lice|[Ss]plit|"
                    r"[Gg]ather|cat_|CatArray|Memcpy|memcpy|flip"),
    ("convolution", r"conv|cudnn|fprop|implicit|winograd|xmma|depthwise|Conv"),
    ("gemm", r"gemm|Gemm|cublas|cutlass|sm90_|sm80_|ampere_|MatMul|matmul|splitK"),
    ("normalisation", r"[Ll]ayer[Nn]orm|layer_norm|batch_norm|BatchNorm|welford|Normaliz"),
    ("reduction", r"reduce|Reduce|mean|sum_kernel"),
    ("element-wise", r"elementwise|Elementwise|ElementWise|vectorized|unrolled|Cast|Gelu|Erf|Sigmoid|"
                     r"Silu|Relu|Add|Mul|Div|exp|neg"),
]


def category(kernel_name: str) -> str:
    for label, pattern in CATEGORIES:
        if re.search(pattern, kernel_name):
            return label
    return "other"


def profile_session(session, images, iterations: int) -> dict:
    for _ in range(3):
        session.run(images)
    torch.cuda.synchronize()
    walls = []
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iterations):
            start = time.perf_counter()
            session.run(images)
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - start)
    kernels = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = kernels[event.name]
            entry[0] += event.device_time / 1e3 / iterations   # ms per forward
            entry[1] += 1
    by_category = defaultdict(float)
    for name, (ms, _) in kernels.items():
        by_category[category(name)] += ms
    gpu_ms = sum(by_category.values())
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:25]
    return {"wall_ms": statistics.median(walls) * 1e3, "gpu_kernel_ms": gpu_ms,
            "kernels_per_forward": sum(n for _, n in kernels.values()) / iterations,
            "categories_ms": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
            "top_kernels": [{"name": n[:110], "ms": ms, "calls": c / iterations} for n, (ms, c) in top]}


def print_profile(label: str, r: dict, batch: int) -> None:
    print(f"\n== {label}: wall {r['wall_ms']:.2f} ms ({batch / r['wall_ms'] * 1e3:.0f} img/s), "
          f"GPU kernels {r['gpu_kernel_ms']:.2f} ms, {r['kernels_per_forward']:.0f} kernels/forward", flush=True)
    for name, ms in r["categories_ms"].items():
        print(f"   {name:<14} {ms:8.2f} ms  {ms / max(r['gpu_kernel_ms'], 1e-9) * 100:5.1f}%")
    for k in r["top_kernels"]:
        print(f"     {k['ms']:7.2f} ms  x{k['calls']:<4.0f} {k['name']}")


def configurations(model_name: str, onnx_dir: Path, which):
    model = demo_weights(model_name)
    for dtype in ("float32", "float16"):
        if f"torch-{dtype}" in which:
            yield f"torch eager {dtype}", lambda d=dtype: runtimes.load(model, "torch", device="cuda", dtype=d)
        if f"torch-cl-{dtype}" in which:
            yield f"torch eager channels_last {dtype}", lambda d=dtype: runtimes.load(
                model, "torch", device="cuda", dtype=d, channels_last=True)
    variants = {"ort": {}, "ort-nhwc": {"prefer_nhwc": "1"}, "ort-graph": {"enable_cuda_graph": "1"},
                "ort-nhwc-graph": {"prefer_nhwc": "1", "enable_cuda_graph": "1"}}
    for form in ("custom", "portable"):
        for tag in ("fp32", "fp16"):
            path = onnx_dir / f"{model_name}.{form}.{tag}.onnx"
            for variant, options in variants.items():
                if f"{variant}-{form}-{tag}" in which and path.exists():
                    yield f"ort-cuda {form} {tag} {options or 'default'}", \
                        lambda p=path, o=options: runtimes.load(str(p), "ort-cuda", cuda_options=o)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hrvmamba_small")
    parser.add_argument("--onnx-dir", default="/tmp/bench_models")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--which", nargs="+", default=["torch-float32", "torch-float16", "ort-custom-fp16",
                                                       "ort-nhwc-custom-fp16", "ort-graph-custom-fp16"])
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    results = {"device": torch.cuda.get_device_name(), "model": args.model, "batch": args.batch, "runs": {}}
    for label, make in configurations(args.model, Path(args.onnx_dir), set(args.which)):
        try:
            session = make()
            h, w = session.metadata["input_size"]
            images = torch.randn(args.batch, 3, h, w, device="cuda")
            r = profile_session(session, images, args.iterations)
        except Exception as err:  # report and go on with the next configuration
            print(f"\n== {label}: failed: {type(err).__name__}: {str(err)[:400]}", flush=True)
            results["runs"][label] = {"error": str(err)[:2000]}
            continue
        print_profile(label, r, args.batch)
        results["runs"][label] = r
        del session
        torch.cuda.empty_cache()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
