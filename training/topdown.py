"""The top-down pose pipeline (DESIGN.md §6), one implementation for infer, eval, parity and training:

box (x, y, w, h) -> centre/scale (padding 1.25, the model's aspect ratio) -> affine crop (OpenCV)
-> BGR->RGB and mean/std -> any runtime session, batched -> optional flip test -> MSRA decode
-> inverse affine to image coordinates.

The geometry follows mmpose 1.x as the official HRVMamba configs use it (GetBBoxCenterScale, TopdownAffine
with the 3-point warp matrix, HeatmapHead flip test with shift_heatmap, MSRAHeatmap decode).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .codec import decode_heatmaps, flip_heatmaps_back, flip_indices_from_pairs

BOX_PADDING = 1.25


def box_to_center_scale(box_xywh: Sequence[float], aspect_ratio: float,
                        padding: float = BOX_PADDING) -> Tuple[np.ndarray, np.ndarray]:
    """(x, y, w, h) -> centre (2,) and scale (w, h) (2,): padded, then widened or heightened to `aspect_ratio`
    (width / height of the model input)."""
    x, y, w, h = (float(v) for v in box_xywh)
    center = np.array([x + w * 0.5, y + h * 0.5])
    w, h = w * padding, h * padding
    if w > h * aspect_ratio:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, np.array([w, h])


def warp_matrix(center: np.ndarray, scale: np.ndarray, output_size: Tuple[int, int], rotation: float = 0.0,
                inverse: bool = False) -> np.ndarray:
    """2x3 affine matrix mapping the (rotated) box centre/scale onto an image of `output_size` (w, h);
    `inverse` maps back. Built from three point pairs as mmpose's get_warp_matrix: the centres, a point
    half a width left of each, and the points 90 degrees from those."""
    out_w, out_h = output_size
    angle = np.deg2rad(rotation)
    cos, sin = np.cos(angle), np.sin(angle)
    src_dir = np.array([-0.5 * scale[0] * cos, -0.5 * scale[0] * sin])
    src = np.stack([center, center + src_dir, center + src_dir + np.array([src_dir[1], -src_dir[0]])])
    dst_center = np.array([out_w * 0.5, out_h * 0.5])
    dst_dir = np.array([-0.5 * out_w, 0.0])
    dst = np.stack([dst_center, dst_center + dst_dir, dst_center + dst_dir + np.array([0.0, 0.5 * out_w])])
    if inverse:
        src, dst = dst, src
    return cv2.getAffineTransform(src.astype(np.float32), dst.astype(np.float32))


def crop(image: np.ndarray, center: np.ndarray, scale: np.ndarray, input_size: Tuple[int, int],
         rotation: float = 0.0) -> np.ndarray:
    """The model-input crop (H, W, 3) of `image` for one (rotated) box, bilinear, zero outside the image."""
    h, w = input_size
    return cv2.warpAffine(image, warp_matrix(center, scale, (w, h), rotation), (w, h), flags=cv2.INTER_LINEAR)


def to_image_coordinates(keypoints: np.ndarray, center: np.ndarray, scale: np.ndarray,
                         input_size: Tuple[int, int]) -> np.ndarray:
    """Keypoints (..., K, 2) in input pixels -> image pixels (mmpose's top-down inverse: the crop spans
    `scale` around `center`)."""
    h, w = input_size
    return keypoints / np.array([w, h]) * scale + center - 0.5 * scale


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline needs from a model: input size, normalisation, colour order, flip pairs."""

    input_size: Tuple[int, int]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    color_order: str
    num_keypoints: int
    flip_indices: Tuple[int, ...]
    keypoint_names: Tuple[str, ...] = ()
    skeleton: Tuple[Tuple[int, int], ...] = ()

    @classmethod
    def from_metadata(cls, meta: dict) -> "PipelineConfig":
        """From a model's `meta` or an exported file's metadata (the same keys)."""
        if meta.get("task", "pose") != "pose":
            raise ValueError(f"{meta.get('model', 'the model')} is a {meta.get('task')} model, not a pose model")
        missing = [key for key in ("input_size", "mean", "std", "num_keypoints") if key not in meta]
        if missing:
            raise ValueError(f"{meta.get('model', 'the model')}: its metadata lacks {', '.join(missing)}, so the "
                             f"pose pipeline cannot preprocess for it (re-export it with ssmpose export)")
        k = int(meta["num_keypoints"])
        return cls(input_size=tuple(int(v) for v in meta["input_size"]), mean=tuple(meta["mean"]),
                   std=tuple(meta["std"]), color_order=str(meta.get("color_order", "RGB")), num_keypoints=k,
                   flip_indices=tuple(flip_indices_from_pairs(meta.get("flip_pairs", []), k)),
                   keypoint_names=tuple(meta.get("keypoint_names", ())),
                   skeleton=tuple(tuple(p) for p in meta.get("skeleton", ())))

    def normalize(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 BGR crops (H, W, 3) -> float32 (B, 3, H, W) in the model's colour order and normalisation."""
        batch = np.stack(crops_bgr).astype(np.float32)
        if self.color_order.upper() == "RGB":
            batch = batch[..., ::-1]
        batch = (batch - np.array(self.mean, dtype=np.float32)) / np.array(self.std, dtype=np.float32)
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


@dataclass
class PoseInstance:
    """One person (or animal): its box and the estimated keypoints in image pixels."""

    box: np.ndarray          # (x, y, w, h)
    box_score: float
    keypoints: np.ndarray    # (K, 2)
    scores: np.ndarray       # (K,)

    def to_coco(self, image_id, category_id: int = 1) -> dict:
        """COCO keypoint results entry, scored as mmpose's CocoMetric does (metrics.rescore: the box score times
        the mean of the keypoint scores above 0.2); `bbox` and `bbox_score` are kept beside it."""
        from .metrics import rescore
        keypoints = np.concatenate([self.keypoints, self.scores[:, None]], axis=1)
        entry = {"image_id": image_id, "category_id": category_id,
                 "keypoints": [round(float(v), 3) for v in keypoints.ravel()], "score": float(self.box_score),
                 "bbox": [round(float(v), 2) for v in self.box]}
        return rescore([entry])[0]


class TopDownEstimator:
    """Runs a runtime session (ssmpose.runtimes.load) over person boxes of images."""

    def __init__(self, session, flip_test: bool = False, batch_size: int = 16, padding: float = BOX_PADDING):
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.session = session
        self.config = PipelineConfig.from_metadata(session.metadata)
        self.flip_test = flip_test
        self.batch_size = batch_size
        self.padding = padding
        fixed_batch = session.input_spec.shape[0]
        if fixed_batch is not None:  # a fixed-batch graph: feed exactly that many crops each time
            self.batch_size = int(fixed_batch)
        self._fixed_batch = fixed_batch

    def heatmaps(self, images: np.ndarray) -> np.ndarray:
        """Normalised crops (B, 3, H, W) -> heatmaps (B, K, h, w), averaged with the flipped crops' when
        flip testing."""
        out = self._run(images)
        if out.shape[1] != self.config.num_keypoints:
            raise ValueError(f"{self.session.metadata.get('model')}: the model outputs {out.shape[1]} heatmaps, "
                             f"its metadata says {self.config.num_keypoints} keypoints")
        if self.flip_test:
            flipped = self._run(np.ascontiguousarray(images[..., ::-1]))
            out = (out + flip_heatmaps_back(flipped, self.config.flip_indices)) * 0.5
        return out

    def _run(self, images: np.ndarray) -> np.ndarray:
        count = images.shape[0]
        if self._fixed_batch is not None and count < self._fixed_batch:
            pad = np.zeros((self._fixed_batch - count, *images.shape[1:]), dtype=images.dtype)
            images = np.concatenate([images, pad])
        return np.asarray(self.session.run(images), dtype=np.float32)[:count]

    def estimate(self, image: np.ndarray, boxes: Optional[np.ndarray] = None,
                 box_scores: Optional[np.ndarray] = None) -> List[PoseInstance]:
        """Keypoints of every box in one BGR image; without boxes the whole image is one box."""
        return next(self.estimate_many([(None, image, boxes, box_scores)]))[1]

    def estimate_many(self, items: Iterable[tuple]) -> Iterator[Tuple[object, List[PoseInstance]]]:
        """items: (key, BGR image, boxes (N, 4) xywh or None, box scores (N,) or None). Yields (key, instances)
        in input order; crops of consecutive images share batches."""
        pending: List[tuple] = []   # (key, [(box, score, center, scale)], crops)
        queued = 0
        for key, image, boxes, scores in items:
            entry = self._prepare(key, image, boxes, scores)
            pending.append(entry)
            queued += len(entry[1])
            if queued >= self.batch_size:
                yield from self._flush(pending)
                pending, queued = [], 0
        yield from self._flush(pending)

    def _prepare(self, key, image: np.ndarray, boxes, scores) -> tuple:
        if image is None or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{key}: expected an 8-bit BGR image (H, W, 3), got "
                             f"{None if image is None else (image.shape, image.dtype)}")
        h_img, w_img = image.shape[:2]
        if boxes is None:
            boxes = np.array([[0.0, 0.0, w_img, h_img]])
            scores = np.ones(1)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.ones(len(boxes)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
        h, w = self.config.input_size
        prepared, crops = [], []
        for box, score in zip(boxes, scores):
            center, scale = box_to_center_scale(box, w / h, self.padding)
            prepared.append((box, float(score), center, scale))
            crops.append(crop(image, center, scale, (h, w)))
        return key, prepared, crops

    def _flush(self, pending: List[tuple]) -> Iterator[Tuple[object, List[PoseInstance]]]:
        crops = [c for _, _, image_crops in pending for c in image_crops]
        keypoints = scores = None
        if crops:
            parts = []
            for start in range(0, len(crops), self.batch_size):
                parts.append(self.heatmaps(self.config.normalize(crops[start:start + self.batch_size])))
            keypoints, scores = decode_heatmaps(np.concatenate(parts), self.config.input_size)
        index = 0
        for key, prepared, _ in pending:
            instances = []
            for box, box_score, center, scale in prepared:
                kp = to_image_coordinates(keypoints[index], center, scale, self.config.input_size)
                instances.append(PoseInstance(box, box_score, kp, scores[index]))
                index += 1
            yield key, instances
