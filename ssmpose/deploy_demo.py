"""The built-in main job: export a model in both ONNX forms and run it on every backend available here.

Prints (via the CLI) one table: backend, form, error against torch fp32, latency. The inputs are person crops
of the real COCO samples (../shared/data/coco, or $SSMPOSE_SHARED/data/coco) cut by the top-down pipeline,
or the figure the project draws when the samples are not there; an overlay of one sample image is written
beside the exports. The weights are seeded random ones, with the zero-initialised offset/mask projections
perturbed so that the deformable sampling really moves (otherwise every runtime samples the plain 3x3 grid
and the check is weaker).
"""
from __future__ import annotations

import os
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


SAMPLE_CROPS = 2


def find_coco_samples() -> Optional[Path]:
    """The COCO sample folder (images + test_coco.json): $SSMPOSE_SHARED/data/coco, else ../shared/data/coco
    from the current folder or from the source checkout."""
    roots = [os.environ.get("SSMPOSE_SHARED"), Path.cwd().parent / "shared",
             Path(__file__).resolve().parents[2] / "shared"]
    for root in roots:
        if root and (Path(root) / "data" / "coco" / "test_coco.json").is_file():
            return Path(root) / "data" / "coco"
    return None


def demo_inputs(model, samples: Optional[Path]) -> tuple:
    """(normalised crops, description): COCO sample persons when available, else the drawn figure."""
    if samples is not None:
        from .parity_check import image_inputs
        from .training.topdown import PipelineConfig
        crops = image_inputs(PipelineConfig.from_metadata(model.meta), samples, samples / "test_coco.json",
                             max_crops=SAMPLE_CROPS)
        return crops.images, f"{len(crops.images)} person crops of the COCO samples in {samples}"
    image, _ = render_figure(tuple(model.meta["input_size"]))
    return preprocess(image, model.meta).numpy(), "the figure ssmpose draws (COCO samples not found)"


def write_overlay(session, samples: Path, output: Path) -> Path:
    """The whole pipeline on the first COCO sample image (ground-truth boxes), drawn."""
    import cv2

    from .draw import draw_instances
    from .training.annotations import CocoKeypoints
    from .training.topdown import TopDownEstimator
    annotations = CocoKeypoints(samples / "test_coco.json")
    image_info = next(img for img in annotations.images.values() if (samples / img["file_name"]).is_file())
    image = cv2.imread(str(samples / image_info["file_name"]), cv2.IMREAD_COLOR)
    boxes = annotations.ground_truth_boxes(image_info)
    estimator = TopDownEstimator(session, flip_test=True)
    instances = estimator.estimate(image, boxes.boxes, boxes.scores)
    output.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(output), draw_instances(image, instances, estimator.config.skeleton, score_threshold=0.0))
    return output


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
    samples = find_coco_samples()
    images, inputs = demo_inputs(model, samples)

    results = export_forms(model, {form: output_dir / f"{model_name}.{form}.onnx" for form in ("custom", "portable")})
    exports = {form: {"path": str(r.path), "seconds": r.seconds, "nodes": r.node_count, "bytes": r.size_bytes}
               for form, r in results.items()}

    available = runtimes.available_backends()
    reference_session = runtimes.load(model, "torch", device="cpu")
    reference, ref_latency = _timed(reference_session, images, repeats)
    overlay = str(write_overlay(reference_session, samples, output_dir / f"{model_name}_overlay.jpg")) if samples else None
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
    return {"model": model_name, "input_shape": list(images.shape), "inputs": inputs, "overlay": overlay,
            "exports": exports, "rows": rows,
            "weights": f"seeded random (seed {seed}), offset/mask projections perturbed"}
