"""Overlays: boxes, skeletons and keypoint scores drawn on BGR images with OpenCV."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

BOX_COLOR = (0, 200, 255)
LIMB_COLOR = (255, 160, 0)
KEYPOINT_COLOR = (0, 0, 255)
TEXT_COLOR = (255, 255, 255)


def draw_instances(image: np.ndarray, instances, skeleton: Sequence[Sequence[int]], score_threshold: float = 0.3,
                   show_scores: bool = True) -> np.ndarray:
    """A copy of `image` with each instance's box, the limbs whose two keypoints score above the threshold,
    and those keypoints with their scores."""
    canvas = image.copy()
    scale = max(canvas.shape[:2]) / 640.0
    thickness = max(1, int(round(2 * scale)))
    radius = max(2, int(round(3 * scale)))
    font_scale = 0.35 * max(scale, 0.6)
    for inst in instances:
        x, y, w, h = (int(round(v)) for v in inst.box)
        cv2.rectangle(canvas, (x, y), (x + w, y + h), BOX_COLOR, thickness)
        visible = inst.scores > score_threshold
        points = [tuple(int(round(c)) for c in p) for p in inst.keypoints]
        for a, b in skeleton:
            if a < len(points) and b < len(points) and visible[a] and visible[b]:
                cv2.line(canvas, points[a], points[b], LIMB_COLOR, thickness, cv2.LINE_AA)
        for point, score, show in zip(points, inst.scores, visible):
            if not show:
                continue
            cv2.circle(canvas, point, radius, KEYPOINT_COLOR, -1, cv2.LINE_AA)
            if show_scores:
                cv2.putText(canvas, f"{score:.2f}", (point[0] + radius, point[1] - radius), cv2.FONT_HERSHEY_SIMPLEX,
                            font_scale, TEXT_COLOR, 1, cv2.LINE_AA)
    return canvas
