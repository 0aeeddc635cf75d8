"""Training augmentations of the official top-down recipe (mmpose 1.x, as the HRVMamba configs use it):

RandomFlip (horizontal, 0.5) -> RandomHalfBody -> RandomBBoxTransform -> TopdownAffine (aspect fix, warp).

Each step is a pure function over numpy arrays for one instance: keypoints (K, 2) in image pixels, visibility
(K,) in {0, 1}, the box as centre (2,) and scale (w, h) (2,) in image pixels. Randomness comes only from the
`numpy.random.Generator` passed in, so a sample depends only on how its generator was seeded.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

import numpy as np

from .topdown import crop, warp_matrix


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the training augmentations; the defaults are mmpose's, as the official
    COCO configs use them (`RandomFlip(direction='horizontal')`, `RandomHalfBody()`, `RandomBBoxTransform()`)."""

    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_min_total: int = 9       # labelled keypoints needed before half-body is considered
    half_body_min_upper: int = 2
    half_body_min_lower: int = 3
    half_body_padding: float = 1.5
    upper_prioritized_prob: float = 0.7
    shift_factor: float = 0.16         # of the box scale, per axis
    shift_prob: float = 0.3
    scale_factor: Tuple[float, float] = (0.5, 1.5)
    scale_prob: float = 1.0
    rotate_factor: float = 80.0        # degrees
    rotate_prob: float = 0.6

    def __post_init__(self):
        for name in ("flip_prob", "half_body_prob", "upper_prioritized_prob", "shift_prob", "scale_prob",
                     "rotate_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be a probability in [0, 1], got {value}")
        low, high = self.scale_factor
        if not 0 < low <= high:
            raise ValueError(f"AugmentConfig.scale_factor must be (low, high) with 0 < low <= high, "
                             f"got {self.scale_factor}")

    @classmethod
    def none(cls) -> "AugmentConfig":
        """No augmentation (evaluation): every probability 0."""
        return cls(flip_prob=0.0, half_body_prob=0.0, shift_prob=0.0, scale_prob=0.0, rotate_prob=0.0)

    @classmethod
    def mpii(cls) -> "AugmentConfig":
        """mmpose's MPII recipe (td-hm_hrnet-w32_8xb64-210e_mpii-256x256): no half-body, no shift."""
        return replace(cls(), half_body_prob=0.0, shift_prob=0.0)


def truncated_normal(rng: np.random.Generator, size: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    """`size` standard normal draws restricted to [low, high], by rejection (scipy's truncnorm distribution)."""
    if not low < high:
        raise ValueError(f"truncated_normal: need low < high, got [{low}, {high}]")
    out = np.empty(size)
    filled = 0
    while filled < size:
        draw = rng.standard_normal(2 * (size - filled) + 8)
        kept = draw[(draw >= low) & (draw <= high)][:size - filled]
        out[filled:filled + len(kept)] = kept
        filled += len(kept)
    return out


def random_flip(image: np.ndarray, keypoints: np.ndarray, visible: np.ndarray, center: np.ndarray,
                flip_indices: Sequence[int], rng: np.random.Generator, config: AugmentConfig
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """Mirror the whole image with probability `config.flip_prob` (mmpose RandomFlip, horizontal).

    Pixel column x moves to w - 1 - x, and so do the keypoints and the box centre; left/right keypoints (and
    their visibility) swap through `flip_indices`. Returns (image, keypoints, visible, center, flipped)."""
    if rng.random() >= config.flip_prob:
        return image, keypoints, visible, center, False
    width = image.shape[1]
    index = list(flip_indices)
    if len(index) != len(keypoints):
        raise ValueError(f"random_flip: {len(index)} flip indices for {len(keypoints)} keypoints")
    keypoints = keypoints[index].copy()
    keypoints[:, 0] = width - 1 - keypoints[:, 0]
    center = np.array([width - 1 - center[0], center[1]], dtype=np.float64)
    return np.ascontiguousarray(image[:, ::-1]), keypoints, visible[index].copy(), center, True


def random_half_body(keypoints: np.ndarray, visible: np.ndarray, center: np.ndarray, scale: np.ndarray,
                     upper_ids: Sequence[int], lower_ids: Sequence[int], rng: np.random.Generator,
                     config: AugmentConfig) -> Tuple[np.ndarray, np.ndarray, Optional[list]]:
    """Replace the box by the box of the upper or the lower body (mmpose RandomHalfBody).

    Considered only when at least `half_body_min_total` keypoints are labelled, then applied with probability
    `half_body_prob`. The upper half is preferred with probability `upper_prioritized_prob`; a half with fewer
    labelled keypoints than its minimum (2 upper, 3 lower) gives way to the other, and when both fall short
    nothing changes. The new box: centre = mean of the chosen keypoints, scale = their extent x padding (1.5);
    its aspect ratio is fixed later, at the warp. Returns (center, scale, chosen keypoint ids or None)."""
    labelled = visible > 0
    if labelled.sum() < config.half_body_min_total or rng.random() >= config.half_body_prob:
        return center, scale, None
    upper = [i for i in upper_ids if labelled[i]]
    lower = [i for i in lower_ids if labelled[i]]
    prefer_upper = rng.random() < config.upper_prioritized_prob
    upper_ok, lower_ok = len(upper) >= config.half_body_min_upper, len(lower) >= config.half_body_min_lower
    if not (upper_ok or lower_ok):
        return center, scale, None
    chosen = upper if upper_ok and (prefer_upper or not lower_ok) else lower
    points = keypoints[chosen]
    extent = points.max(axis=0) - points.min(axis=0)
    if not extent.any():  # all chosen keypoints on one spot: no box to crop, keep the full one
        return center, scale, None
    return points.mean(axis=0).astype(np.float64), extent * config.half_body_padding, chosen


def random_box_transform(center: np.ndarray, scale: np.ndarray, rng: np.random.Generator,
                         config: AugmentConfig) -> Tuple[np.ndarray, np.ndarray, float]:
    """Randomly shift, resize and rotate the box (mmpose RandomBBoxTransform).

    Four truncated normal draws v in [-1, 1]: the shift is v[:2] x shift_factor x scale (probability
    shift_prob), the resize factor v[2] x (high - low) / 2 + (high + low) / 2 (probability scale_prob, else 1),
    the rotation v[3] x rotate_factor degrees (probability rotate_prob, else 0). Returns (center, scale,
    rotation in degrees)."""
    v = truncated_normal(rng, 4)
    shifted, resized, rotated = rng.random(3) < (config.shift_prob, config.scale_prob, config.rotate_prob)
    low, high = config.scale_factor
    offset = v[:2] * config.shift_factor if shifted else np.zeros(2)
    factor = v[2] * (high - low) * 0.5 + (high + low) * 0.5 if resized else 1.0
    rotation = float(v[3] * config.rotate_factor) if rotated else 0.0
    return center + offset * scale, scale * factor, rotation


def fix_aspect_ratio(scale: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """Widen or heighten a box scale (w, h) to `aspect_ratio` = w / h (mmpose TopdownAffine._fix_aspect_ratio)."""
    w, h = float(scale[0]), float(scale[1])
    if w > h * aspect_ratio:
        return np.array([w, w / aspect_ratio])
    return np.array([h * aspect_ratio, h])


def affine_sample(image: np.ndarray, keypoints: np.ndarray, visible: np.ndarray, center: np.ndarray,
                  scale: np.ndarray, rotation: float, input_size: Tuple[int, int]
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model-input crop of the (rotated) box and the keypoints in its pixels (mmpose TopdownAffine).

    The scale is first fixed to the input's aspect ratio; image and keypoints go through the same warp matrix
    (bilinear, zero outside the image). Visibility is returned unchanged, as in mmpose: a keypoint that leaves
    the crop gets weight 0 from the heatmap encoder. input_size is (H, W). Returns (crop, keypoints, visible)."""
    h, w = input_size
    center, scale = np.asarray(center, dtype=np.float64), fix_aspect_ratio(scale, w / h)
    matrix = warp_matrix(center, scale, (w, h), rotation)
    moved = np.asarray(keypoints, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]
    return crop(image, center, scale, input_size, rotation), moved, np.asarray(visible).copy()
