"""MSRA heatmap codec of the official configs (mmpose `MSRAHeatmap`, unbiased=False): Gaussian targets for
training, argmax decoding with the quarter-pixel refinement, and the flip-test heatmap flip.

Coordinates are (x, y) in input-image pixels; heatmaps are (..., K, h, w) at `heatmap_size` = input / 4.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def _as_numpy(heatmaps) -> np.ndarray:
    if hasattr(heatmaps, "detach"):  # a torch tensor
        heatmaps = heatmaps.detach().float().cpu().numpy()
    return np.asarray(heatmaps, dtype=np.float32)


def decode_heatmaps(heatmaps, input_size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """(B, K, h, w) heatmaps (numpy or torch) -> keypoints (B, K, 2) as (x, y) in input pixels, scores (B, K).

    As mmpose's MSRAHeatmap.decode: the argmax location (a keypoint whose maximum is <= 0 gets location -1),
    moved a quarter heatmap pixel towards the larger neighbour along x when 1 < x < w-1 and y > 0, and along y
    when 1 < y < h-1 and x > 0 (mmpose's bounds, which also skip column/row 1), then scaled by input / heatmap
    size.
    """
    hm = _as_numpy(heatmaps)
    if hm.ndim != 4:
        raise ValueError(f"decode_heatmaps: expected heatmaps of shape (B, K, h, w), got {hm.shape}")
    b, k, h, w = hm.shape
    flat = hm.reshape(b, k, h * w)
    index = flat.argmax(-1)
    scores = np.take_along_axis(flat, index[..., None], -1)[..., 0]
    xi, yi = index % w, index // w
    bi, ki = np.meshgrid(np.arange(b), np.arange(k), indexing="ij")
    dx = hm[bi, ki, yi, np.minimum(xi + 1, w - 1)] - hm[bi, ki, yi, np.maximum(xi - 1, 0)]
    dy = hm[bi, ki, np.minimum(yi + 1, h - 1), xi] - hm[bi, ki, np.maximum(yi - 1, 0), xi]
    xs = xi + np.where((xi > 1) & (xi < w - 1) & (yi > 0), np.sign(dx) * 0.25, 0.0)
    ys = yi + np.where((yi > 1) & (yi < h - 1) & (xi > 0), np.sign(dy) * 0.25, 0.0)
    keypoints = np.stack([xs, ys], axis=-1).astype(np.float64)
    keypoints[scores <= 0] = -1.0
    keypoints *= np.array([input_size[1] / w, input_size[0] / h])
    return keypoints, scores.astype(np.float32)


def flip_heatmaps_back(heatmaps, flip_indices: Sequence[int], shift: bool = True) -> np.ndarray:
    """Heatmaps of a horizontally flipped crop -> heatmaps of the original crop (mmpose flip_mode 'heatmap'):
    mirror along x, swap left/right keypoint channels, and with `shift` move them one pixel right (the official
    configs' shift_heatmap=True, which re-aligns the mirrored pixel grid)."""
    hm = _as_numpy(heatmaps)
    if hm.shape[1] != len(flip_indices):
        raise ValueError(f"flip test: the heatmaps have {hm.shape[1]} keypoint channels but the flip pairs "
                         f"describe {len(flip_indices)} keypoints")
    flipped = hm[:, list(flip_indices), :, ::-1].copy()
    if shift:
        flipped[..., 1:] = flipped[..., :-1].copy()
    return flipped


def flip_indices_from_pairs(flip_pairs: Sequence[Sequence[int]], num_keypoints: int) -> list:
    """[(left, right), ...] -> index of each keypoint's mirror (itself when unpaired)."""
    indices = list(range(num_keypoints))
    for a, b in flip_pairs:
        if not (0 <= a < num_keypoints and 0 <= b < num_keypoints):
            raise ValueError(f"flip pair ({a}, {b}) is out of range for {num_keypoints} keypoints")
        indices[a], indices[b] = b, a
    return indices


def encode_heatmaps(keypoints: np.ndarray, visible: np.ndarray, input_size: Tuple[int, int],
                    heatmap_size: Tuple[int, int], sigma: float) -> Tuple[np.ndarray, np.ndarray]:
    """Keypoints (K, 2) in input pixels -> Gaussian heatmaps (K, h, w) and per-keypoint target weights.

    As mmpose's generate_gaussian_heatmaps: the Gaussian is centred on the rounded heatmap location and cut
    at 3 sigma; a keypoint whose 3-sigma square lies entirely outside the heatmap gets weight 0.
    """
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
        if mx - radius >= w or my - radius >= h or mx + radius + 1 < 0 or my + radius + 1 < 0:
            weights[i] = 0.0
            continue
        heatmaps[i] = np.exp(-((xx - mx) ** 2 + (yy - my) ** 2) / (2 * sigma ** 2))
        heatmaps[i][(np.abs(xx - mx) > radius) | (np.abs(yy - my) > radius)] = 0.0
    return heatmaps, weights
