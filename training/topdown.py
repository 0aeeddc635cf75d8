"""The top-down pose pipeline (DESIGN.md §6), one implementation for infer, eval, parity and training:

box (x, y, w, h) -> centre/scale (padding 1.25, the model's aspect ratio) -> affine crop (OpenCV)
-> BGR->RGB and mean/std -> any runtime session, batched -> optional flip test -> MSRA decode
-> inverse affine to image coordinates.

The geometry follows mmpose 1.x as the official HRVMamba configs use it (GetBBoxCenterScale, TopdownAffine
with the 3-point warp matrix, HeatmapHead flip test with shift_heatmap, MSRAHeatmap decode).

Video models (metadata `num_frames` T > 1) take clips (B, T, 3, H, W) and predict the centre frame (index
T // 2): the box of a person on the centre frame is cropped, with the same warp, from each of the T frames
(as PoseWarper, DCPose and GLSMamba do), and the flip test mirrors every frame. `frame_windows` turns a
stream of frames into such clips; a frame before the first or after the last repeats the nearest one.
"""
from __future__ import annotations

from collections import deque
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


def crop_clip(frames: Sequence[np.ndarray], center: np.ndarray, scale: np.ndarray, input_size: Tuple[int, int],
              rotation: float = 0.0) -> np.ndarray:
    """The crops (T, H, W, 3) of one box in each frame of a clip: one warp matrix, the centre frame's box, for
    every frame (the person's motion stays visible inside the fixed crop)."""
    h, w = input_size
    matrix = warp_matrix(center, scale, (w, h), rotation)
    return np.stack([cv2.warpAffine(frame, matrix, (w, h), flags=cv2.INTER_LINEAR) for frame in frames])


def frame_offsets(num_frames: int) -> range:
    """Offsets of a clip's frames from its centre frame (index num_frames // 2): -2..2 for 5 frames."""
    return range(-(num_frames // 2), num_frames - num_frames // 2)


def frame_windows(frames: Iterable[tuple], num_frames: int) -> Iterator[Tuple[object, List[np.ndarray]]]:
    """(key, frame) in time order -> (key, clip): the list of `num_frames` frames centred on that frame, for
    every frame, in order. A clip reaching before the first frame repeats the first, one reaching past the
    last repeats the last. The clip of a frame comes out once the frames after it have been read (a delay of
    num_frames - 1 - num_frames // 2 frames); at most num_frames frames are held."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    before, after = num_frames // 2, num_frames - 1 - num_frames // 2
    past: deque = deque(maxlen=before)    # frames before the next centre, the nearest last
    ahead: deque = deque()                # (key, frame): the next centre and the frames read after it

    def next_clip():
        key, centre = ahead.popleft()
        earlier = list(past)
        earlier = [earlier[0] if earlier else centre] * (before - len(earlier)) + earlier
        later = [frame for _, frame in ahead][:after]
        later += [later[-1] if later else centre] * (after - len(later))
        past.append(centre)
        return key, earlier + [centre] + later

    for item in frames:
        ahead.append(item)
        if len(ahead) > after:
            yield next_clip()
    while ahead:
        yield next_clip()


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
    num_frames: int = 1          # > 1: a video model, whose input is a clip of this many frames

    def __post_init__(self):
        if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"num_frames must be a positive integer, got {self.num_frames!r}")

    @property
    def center_frame(self) -> int:
        """Index of the predicted frame in a clip."""
        return self.num_frames // 2

    @property
    def input_shape(self) -> Tuple[int, ...]:
        """One model input without the batch: (3, H, W), or (T, 3, H, W) for a video model."""
        h, w = self.input_size
        return (3, h, w) if self.num_frames == 1 else (self.num_frames, 3, h, w)

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
        frames = meta.get("num_frames", 1)
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"{meta.get('model', 'the model')}: metadata num_frames must be a positive integer, "
                             f"got {frames!r}")
        return cls(input_size=tuple(int(v) for v in meta["input_size"]), mean=tuple(meta["mean"]),
                   std=tuple(meta["std"]), color_order=str(meta.get("color_order", "RGB")), num_keypoints=k,
                   flip_indices=tuple(flip_indices_from_pairs(meta.get("flip_pairs", []), k)),
                   keypoint_names=tuple(meta.get("keypoint_names", ())),
                   skeleton=tuple(tuple(p) for p in meta.get("skeleton", ())), num_frames=frames)

    def normalize(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 BGR crops (H, W, 3) -> float32 (B, 3, H, W), or clip crops (T, H, W, 3) -> (B, T, 3, H, W), in
        the model's colour order and normalisation."""
        batch = np.stack(crops_bgr).astype(np.float32)
        if self.color_order.upper() == "RGB":
            batch = batch[..., ::-1]
        batch = (batch - np.array(self.mean, dtype=np.float32)) / np.array(self.std, dtype=np.float32)
        return np.ascontiguousarray(np.moveaxis(batch, -1, -3))


def _check_bgr(key, image) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = None if image is None else (getattr(image, "shape", type(image).__name__), getattr(image, "dtype", ""))
        raise ValueError(f"{key}: expected an 8-bit BGR image (H, W, 3), got {got}")


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
    """Runs a runtime session (ssmpose.runtimes.load) over person boxes of images, or of clips for a video
    model: every box of the centre frame is cropped from each frame of its clip."""

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
        """Normalised crops (B, 3, H, W), or clips (B, T, 3, H, W) -> heatmaps (B, K, h, w), averaged with the
        flipped crops' (every frame mirrored) when flip testing."""
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

    def estimate(self, image, boxes: Optional[np.ndarray] = None,
                 box_scores: Optional[np.ndarray] = None) -> List[PoseInstance]:
        """Keypoints of every box in one BGR image (a clip of T images for a video model, the boxes on its
        centre frame); without boxes the whole image is one box."""
        return next(self.estimate_many([(None, image, boxes, box_scores)]))[1]

    def estimate_many(self, items: Iterable[tuple]) -> Iterator[Tuple[object, List[PoseInstance]]]:
        """items: (key, BGR image, boxes (N, 4) xywh or None, box scores (N,) or None); for a video model the
        image is a clip: a sequence of T frames in time order (a list or a (T, H, W, 3) array), the boxes
        those of its centre frame. Yields (key, instances) in input order; crops of consecutive images share
        batches."""
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

    def _prepare(self, key, image, boxes, scores) -> tuple:
        frames = self._frames(key, image)
        image = frames[self.config.center_frame]
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
            crops.append(crop(image, center, scale, (h, w)) if self.config.num_frames == 1
                         else crop_clip(frames, center, scale, (h, w)))
        return key, prepared, crops

    def _frames(self, key, image) -> list:
        """The frames of one input, checked: [image] for a single-image model, the clip's T frames else."""
        t = self.config.num_frames
        if t == 1:
            _check_bgr(key, image)
            return [image]
        if isinstance(image, np.ndarray) and image.ndim == 3:
            raise ValueError(f"{key}: {self.session.metadata.get('model', 'the model')} is a video model: it takes "
                             f"clips of {t} frames (a list of {t} images, or an array ({t}, H, W, 3)) centred on "
                             f"the predicted frame, got a single image {image.shape}")
        frames = list(image) if isinstance(image, (list, tuple, np.ndarray)) else None
        if frames is None or len(frames) != t:
            raise ValueError(f"{key}: {self.session.metadata.get('model', 'the model')} takes clips of {t} frames, "
                             f"got {type(image).__name__ if frames is None else f'{len(frames)} frames'}")
        for index, frame in enumerate(frames):
            _check_bgr(f"{key} frame {index} of the clip", frame)
        return frames

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
