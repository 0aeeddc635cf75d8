"""Parity measures between a runtime's heatmaps and the torch fp32 reference (docs/runtimes.md, "Parity").

Pure arithmetic on arrays: no printing, no I/O, so reports can be saved, compared and replayed.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..training.codec import decode_heatmaps
from ..training.keypoints import COCO_SIGMAS

REL_FLOOR_FRACTION = 1e-3  # relative errors use max(|ref|, floor * max|ref|) as denominator


def tensor_errors(reference: np.ndarray, candidate: np.ndarray) -> dict:
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(candidate, dtype=np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"parity: output shapes differ: reference {ref.shape} vs candidate {got.shape}")
    diff = np.abs(got - ref)
    scale = float(np.abs(ref).max())
    floor = max(scale * REL_FLOOR_FRACTION, np.finfo(np.float64).tiny)
    cosine = float((ref * got).sum() / max(np.linalg.norm(ref) * np.linalg.norm(got), 1e-300))
    return {"max_abs_error": float(diff.max()), "mean_abs_error": float(diff.mean()),
            "max_rel_error": float((diff / np.maximum(np.abs(ref), floor)).max()), "cosine": cosine,
            "max_abs_reference": scale, "max_abs_error_over_max_ref": float(diff.max() / max(scale, 1e-300)),
            "finite": bool(np.isfinite(got).all())}


def keypoint_agreement(reference: np.ndarray, candidate: np.ndarray, input_size: Sequence[int],
                       sigmas: Optional[Sequence[float]] = None) -> dict:
    """Decoded keypoints: argmax agreement, displacement in input pixels, OKS of candidate vs reference
    (`sigmas`: the dataset's OKS sigmas, one per keypoint; default COCO's for 17 keypoints, else the mean
    COCO sigma for every keypoint)."""
    ref_kp, _ = decode_heatmaps(reference, input_size)
    got_kp, _ = decode_heatmaps(candidate, input_size)
    ref_idx = np.asarray(reference).reshape(*np.shape(reference)[:2], -1).argmax(-1)
    got_idx = np.asarray(candidate).reshape(*np.shape(candidate)[:2], -1).argmax(-1)
    displacement = np.linalg.norm(got_kp - ref_kp, axis=-1)
    # OKS with the whole input box as the object area (top-down crops are the person box).
    area = float(input_size[0] * input_size[1])
    count = ref_kp.shape[1]
    if sigmas is None:
        sigmas = COCO_SIGMAS if count == len(COCO_SIGMAS) else [float(np.mean(COCO_SIGMAS))] * count
    if len(sigmas) != count:
        raise ValueError(f"parity: {len(sigmas)} OKS sigmas for {count} keypoints")
    k = np.asarray(sigmas) * 2
    oks = np.exp(-(displacement ** 2) / (2 * area * k ** 2)).mean(-1)
    return {"argmax_agreement": float((ref_idx == got_idx).mean()),
            "mean_keypoint_displacement_px": float(displacement.mean()),
            "max_keypoint_displacement_px": float(displacement.max()),
            "mean_oks": float(oks.mean()), "min_oks": float(oks.min())}


def compare(reference: np.ndarray, candidate: np.ndarray, input_size: Sequence[int],
            sigmas: Optional[Sequence[float]] = None) -> dict:
    return {**tensor_errors(reference, candidate), **keypoint_agreement(reference, candidate, input_size, sigmas)}
