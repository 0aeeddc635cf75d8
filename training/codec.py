"""MSRA heatmap codec: Gaussian targets for training and argmax decoding with the quarter-pixel shift."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch


def decode_heatmaps(heatmaps: torch.Tensor, input_size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """(B, K, h, w) heatmaps -> keypoints (B, K, 2) as (x, y) in input pixels, and scores (B, K).

    The maximum is refined by a quarter pixel towards the larger neighbour (mmpose MSRAHeatmap decode),
    then scaled from heatmap to input resolution.
    """
    hm = heatmaps.detach().float().cpu().numpy()
    b, k, h, w = hm.shape
    flat = hm.reshape(b, k, -1)
    index = flat.argmax(-1)
    scores = np.take_along_axis(flat, index[..., None], -1)[..., 0]
    xs = (index % w).astype(np.float64)
    ys = (index // w).astype(np.float64)
    bi, ki = np.meshgrid(np.arange(b), np.arange(k), indexing="ij")
    xi, yi = xs.astype(int), ys.astype(int)
    inner_x = (xi > 0) & (xi < w - 1)
    inner_y = (yi > 0) & (yi < h - 1)
    dx = hm[bi, ki, yi, np.clip(xi + 1, 0, w - 1)] - hm[bi, ki, yi, np.clip(xi - 1, 0, w - 1)]
    dy = hm[bi, ki, np.clip(yi + 1, 0, h - 1), xi] - hm[bi, ki, np.clip(yi - 1, 0, h - 1), xi]
    xs += np.where(inner_x, np.sign(dx) * 0.25, 0.0)
    ys += np.where(inner_y, np.sign(dy) * 0.25, 0.0)
    scale_y, scale_x = input_size[0] / h, input_size[1] / w
    keypoints = np.stack([xs * scale_x, ys * scale_y], axis=-1)
    return keypoints, scores


def encode_heatmaps(keypoints: np.ndarray, visible: np.ndarray, input_size: Tuple[int, int],
                    heatmap_size: Tuple[int, int], sigma: float) -> Tuple[np.ndarray, np.ndarray]:
    """Keypoints (K, 2) in input pixels -> Gaussian heatmaps (K, h, w) and per-keypoint target weights."""
    h, w = heatmap_size
    stride_y, stride_x = input_size[0] / h, input_size[1] / w
    k = keypoints.shape[0]
    heatmaps = np.zeros((k, h, w), dtype=np.float32)
    weights = np.asarray(visible, dtype=np.float32).copy()
    yy, xx = np.mgrid[0:h, 0:w]
    radius = 3 * sigma
    for i in range(k):
        if weights[i] <= 0:
            continue
        mx, my = int(keypoints[i, 0] / stride_x + 0.5), int(keypoints[i, 1] / stride_y + 0.5)
        if mx - radius >= w or my - radius >= h or mx + radius < 0 or my + radius < 0:
            weights[i] = 0.0
            continue
        heatmaps[i] = np.exp(-((xx - mx) ** 2 + (yy - my) ** 2) / (2 * sigma ** 2))
        heatmaps[i][(np.abs(xx - mx) > radius) | (np.abs(yy - my) > radius)] = 0.0
    return heatmaps, weights
