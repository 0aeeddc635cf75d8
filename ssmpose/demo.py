"""The built-in default job: build a model with seeded weights, run it on an image the project draws itself."""
from __future__ import annotations

import time
from typing import Optional, Tuple

import numpy as np
import torch

from .training.codec import decode_heatmaps
from .training.models import build_model

# A standing figure in a 192x256 (W x H) frame, COCO keypoint order, (x, y) pixels.
FIGURE_KEYPOINTS = np.array([
    (96, 40), (102, 34), (90, 34), (110, 38), (82, 38), (122, 72), (70, 72), (132, 108), (60, 108),
    (138, 142), (54, 142), (112, 140), (80, 140), (114, 188), (78, 188), (116, 234), (76, 234)], dtype=np.float64)
LIMBS = ((5, 7), (7, 9), (6, 8), (8, 10), (5, 6), (5, 11), (6, 12), (11, 12), (11, 13), (13, 15), (12, 14),
         (14, 16), (0, 5), (0, 6))


def render_figure(input_size: Tuple[int, int] = (256, 192)) -> Tuple[np.ndarray, np.ndarray]:
    """Draw a stick figure on a gradient background: returns (RGB uint8 image HxWx3, keypoints (17, 2))."""
    h, w = input_size
    keypoints = FIGURE_KEYPOINTS * np.array([w / 192, h / 256])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    image = np.stack([40 + 60 * yy / h, 60 + 40 * xx / w, np.full_like(xx, 90.0)], axis=-1)
    thickness = 3.0 * w / 192
    for a, b in LIMBS:
        pa, pb = keypoints[a], keypoints[b]
        seg = pb - pa
        t = np.clip(((xx - pa[0]) * seg[0] + (yy - pa[1]) * seg[1]) / max(seg @ seg, 1e-9), 0, 1)
        dist = np.hypot(xx - (pa[0] + t * seg[0]), yy - (pa[1] + t * seg[1]))
        image[dist <= thickness] = (230, 200, 170)
    head = np.hypot(xx - keypoints[0, 0], yy - keypoints[0, 1]) <= 14 * w / 192
    image[head] = (240, 210, 180)
    return image.clip(0, 255).astype(np.uint8), keypoints


def preprocess(image_rgb: np.ndarray, meta: dict) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> normalised float tensor (1, 3, H, W), through the pose pipeline's normalisation;
    for a video model a still clip (1, T, 3, H, W): the image in each of its T frames."""
    from .training.topdown import PipelineConfig
    config = PipelineConfig.from_metadata(meta)
    bgr = np.ascontiguousarray(image_rgb[..., ::-1])
    return torch.from_numpy(config.normalize([bgr if config.num_frames == 1 else np.stack([bgr] * config.num_frames)]))


def run_demo(model_name: str = "hrvmamba_small", seed: int = 0, repeats: int = 3,
             checkpoint: Optional[str] = None) -> dict:
    """Build (or load) the model, run it on the rendered figure and report shapes, keypoints and timing."""
    torch.manual_seed(seed)
    if checkpoint:
        from .checkpoint import load_checkpoint
        model = load_checkpoint(checkpoint, model_name)
    else:
        model = build_model(model_name).eval()
    image, truth = render_figure(tuple(model.meta["input_size"]))
    x = preprocess(image, model.meta)
    timings = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            heatmaps = model(x)
            timings.append(time.perf_counter() - start)
    keypoints, scores = decode_heatmaps(heatmaps, model.meta["input_size"])
    return {
        "model": model.name, "weights": checkpoint or f"seeded random (seed {seed})",
        "input_shape": list(x.shape), "heatmap_shape": list(heatmaps.shape),
        "keypoint_names": model.meta["keypoint_names"], "keypoints": keypoints[0].tolist(),
        "scores": scores[0].tolist(), "drawn_keypoints": truth.tolist(),
        "latency_ms_median": float(np.median(timings) * 1e3), "repeats": repeats,
        "device": "cpu", "threads": torch.get_num_threads(),
    }
