"""The built-in main job: export a model in both ONNX forms and run it on every backend available here.

Prints (via the CLI) one table: backend, form, error against torch fp32, latency. The weights are seeded
random ones, with the zero-initialised offset/mask projections perturbed so that the deformable
sampling really moves (otherwise every runtime samples the plain 3x3 grid and the check is weaker).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from . import runtimes
from .demo import preprocess, render_figure
from .runtimes import parity
from .training.models import build_model


def demo_weights(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(name).eval()
    with torch.no_grad():
        for module_name, param in model.named_parameters():
            if ".conv2d.offset_mask." in module_name:
                param.normal_(0.0, 0.05)
    return model


def _timed(session, images, repeats: int) -> tuple:
    out = session.run(images)  # warm-up (and the output we compare)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(images)
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def run_deploy_demo(model_name: str = "hrvmamba_small", output_dir="outputs/demo", seed: int = 0,
                    repeats: int = 3, backends: Optional[List[str]] = None) -> dict:
    from .export import export_forms
    output_dir = Path(output_dir)
    model = demo_weights(model_name, seed)
    input_size = tuple(model.meta["input_size"])
    image, _ = render_figure(input_size)
    images = preprocess(image, model.meta).numpy()

    results = export_forms(model, {form: output_dir / f"{model_name}.{form}.onnx" for form in ("custom", "portable")})
    exports = {form: {"path": str(r.path), "seconds": r.seconds, "nodes": r.node_count, "bytes": r.size_bytes}
               for form, r in results.items()}

    available = runtimes.available_backends()
    reference_session = runtimes.load(model, "torch", device="cpu")
    reference, ref_latency = _timed(reference_session, images, repeats)
    candidates = [("torch", "eager, reference ops", dict(model=model, device="cpu", reference_ops=True))]
    if torch.cuda.is_available():
        candidates.append(("torch", "eager, CUDA", dict(model=model, device="cuda")))
    for backend in ("ort-cpu", "ort-cuda", "openvino"):
        for form in ("custom", "portable"):
            candidates.append((backend, form, dict(model=exports[form]["path"])))

    rows = [{"backend": "torch", "form": "eager, CPU kernels", "status": "ok", "latency_ms": ref_latency * 1e3,
             **parity.compare(reference, reference, input_size)}]
    for backend, form, options in candidates:
        if backends and backend not in backends:
            continue
        row = {"backend": backend, "form": form}
        if backend not in available:
            rows.append({**row, "status": "not installed"})
            continue
        try:
            session = runtimes.load(options.pop("model"), backend, **options)
            out, latency = _timed(session, images, repeats)
        except runtimes.BackendUnavailable as err:
            rows.append({**row, "status": f"unavailable: {err}"})
            continue
        rows.append({**row, "status": "ok", "latency_ms": latency * 1e3, **parity.compare(reference, out, input_size)})
    return {"model": model_name, "input_shape": list(images.shape), "exports": exports, "rows": rows,
            "weights": f"seeded random (seed {seed}), offset/mask projections perturbed"}
