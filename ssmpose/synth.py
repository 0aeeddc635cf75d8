"""Synthetic COCO-format keypoint data: drawn stick figures with known keypoints, so training, eval and demos run
end to end without downloading COCO.

The figure design (what a model can learn to tell apart):
- every figure faces the camera, so the person's left side is on the image's right, as in most of COCO;
- left limbs and left head marks (eye, ear) are warm (OpenCV hue 0-15: red to orange), right ones cool (hue
  100-120: azure to blue), all strongly saturated; the torso is green-ish (hue 35-85) or grey, the head pale
  (saturation <= 50), the nose a dark dot;
- body joints are brighter, dark-outlined discs on the darker limbs; the eyes, ears and nose are marks on the
  head ellipse, centred on their keypoints.
Images are BGR uint8 (OpenCV order). Visibility: 2 when the keypoint's own mark is what shows on the 3x3 pixels
around it, 1 when it lies in the image but is (partly) covered, by a figure drawn in front or by another part of
the same figure, 0 with x = y = 0 when it falls outside the image. Every mark has a radius of 2.5 px at least.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .training.keypoints import COCO_KEYPOINTS, COCO_SKELETON

LEFT_HUES = (0.0, 15.0)
RIGHT_HUES = (100.0, 120.0)
TORSO_HUES = (35.0, 85.0)
MARKER_FILE = "synth_info.json"
GENERATOR = "ssmpose.synth"
JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95,
               # full-resolution colour: 4:2:0 subsampling would bleed the few-pixel eye and ear marks
               cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
MIN_LABELLED = 6          # a placed figure keeps at least this many keypoints inside the image
MAX_BOX_IOU = 0.4         # figures may overlap, but not hide each other wholesale
_SHIFT = 4                # cv2 fractional bits: points are drawn to 1/16 px
_BODY = 17                # label offset of a figure's limbs, torso and head (0-16 are its keypoint marks)
_LABEL_STRIDE = 18

BGR = Tuple[int, int, int]


@dataclass(frozen=True)
class FigureStyle:
    left_limb: BGR
    right_limb: BGR
    left_joint: BGR
    right_joint: BGR
    torso: BGR
    head: BGR
    nose: BGR
    outline: BGR
    limb_width: int
    joint_radius: float


def random_pose(rng: np.random.Generator, height: float, center: Sequence[float] = (0.0, 0.0),
                aspect: float = 1.0) -> np.ndarray:
    """(17, 2) COCO keypoints (x, y) of a front-facing figure about `height` px from head top to ankles, with
    random limb angles in human-like ranges; x is stretched by `aspect`, the keypoint box is centred on `center`."""
    def unit(deg):
        a = np.deg2rad(deg)
        return np.array([np.sin(a), -np.cos(a)])  # 0 deg points up, positive turns towards image right

    def limb(start, up, side, angle, length):
        # `angle` in degrees from the frame's "down", positive away from the body on the figure's `side`
        a = np.deg2rad(angle)
        right = np.array([-up[1], up[0]])
        return start + length * (np.cos(a) * -up + np.sin(a) * side * right)

    kp = np.zeros((17, 2))
    hip = np.zeros(2)
    lean = rng.uniform(-20, 20)
    up = unit(lean)
    right = np.array([-up[1], up[0]])            # image right for an upright torso: the person's left
    neck = hip + rng.uniform(0.28, 0.34) * up
    turn = rng.uniform(0.7, 1.0)                 # a slightly turned body looks narrower
    shoulder, hip_half = rng.uniform(0.09, 0.13) * turn, rng.uniform(0.06, 0.09) * turn
    kp[5], kp[6] = neck + shoulder * right, neck - shoulder * right
    kp[11], kp[12] = hip + hip_half * right, hip - hip_half * right

    for side, (s, e, w) in ((1, (5, 7, 9)), (-1, (6, 8, 10))):
        upper = rng.uniform(-30, 170)
        kp[e] = limb(kp[s], up, side, upper, rng.uniform(0.15, 0.19) * rng.uniform(0.6, 1.0))
        kp[w] = limb(kp[e], up, side, upper + rng.uniform(-150, 150), rng.uniform(0.13, 0.17) * rng.uniform(0.6, 1.0))

    vertical = np.array([0.0, -1.0])             # legs hang from the hips in the image's frame
    for side, (h, k, a) in ((1, (11, 13, 15)), (-1, (12, 14, 16))):
        thigh = rng.uniform(45, 100) if rng.random() < 0.15 else rng.uniform(-15, 45)
        bend = rng.uniform(-110, 110) if rng.random() < 0.2 else rng.uniform(-30, 30)
        kp[k] = limb(kp[h], vertical, side, thigh, rng.uniform(0.21, 0.25) * rng.uniform(0.75, 1.0))
        kp[a] = limb(kp[k], vertical, side, thigh + bend, rng.uniform(0.20, 0.24) * rng.uniform(0.75, 1.0))

    head_up = unit(lean + rng.uniform(-25, 25))
    head_right = np.array([-head_up[1], head_up[0]])
    radius = rng.uniform(0.065, 0.08)
    centre = neck + rng.uniform(0.10, 0.13) * head_up
    yaw = rng.uniform(-0.25, 0.25) * radius * head_right    # looking a little sideways moves the face, not the ears
    kp[0] = centre - 0.3 * radius * head_up + yaw
    kp[1] = centre + 0.15 * radius * head_up + 0.42 * radius * head_right + yaw
    kp[2] = centre + 0.15 * radius * head_up - 0.42 * radius * head_right + yaw
    kp[3], kp[4] = centre + radius * head_right, centre - radius * head_right

    kp[:, 0] *= aspect
    kp *= height
    return kp - (kp.min(0) + kp.max(0)) / 2 + np.asarray(center, dtype=np.float64)


def _hsv(h: float, s: float, v: float) -> BGR:
    pixel = np.uint8([[[round(h) % 180, round(s), round(v)]]])
    return tuple(int(c) for c in cv2.cvtColor(pixel, cv2.COLOR_HSV2BGR)[0, 0])


def random_style(rng: np.random.Generator, height: float) -> FigureStyle:
    """Colours within the documented families, and line widths for a figure `height` px tall."""
    left_hue, right_hue = rng.uniform(*LEFT_HUES), rng.uniform(*RIGHT_HUES)
    limb_s, limb_v = rng.uniform(170, 255), rng.uniform(120, 200)
    joint_s, joint_v = rng.uniform(200, 255), rng.uniform(225, 255)
    torso_s = 0.0 if rng.random() < 0.25 else rng.uniform(60, 200)
    return FigureStyle(
        left_limb=_hsv(left_hue, limb_s, limb_v), right_limb=_hsv(right_hue, limb_s, limb_v),
        left_joint=_hsv(left_hue, joint_s, joint_v), right_joint=_hsv(right_hue, joint_s, joint_v),
        torso=_hsv(rng.uniform(*TORSO_HUES), torso_s, rng.uniform(70, 220)),
        head=_hsv(rng.uniform(0, 180), rng.uniform(0, 50), rng.uniform(185, 245)),
        nose=_hsv(rng.uniform(0, 180), rng.uniform(0, 120), rng.uniform(15, 60)),
        outline=_hsv(0, 0, rng.uniform(0, 40)),
        limb_width=max(2, int(round(0.035 * height))), joint_radius=max(3.0, 0.025 * height))


class _Painter:
    """Draws each primitive on the image (anti-aliased) and, with the same geometry, on an optional label map
    (aliased, so every pixel holds exactly one label); tracks the drawn extent."""

    def __init__(self, image, labels, base):
        self.image, self.labels, self.base = image, labels, base
        self.lo, self.hi = np.full(2, np.inf), np.full(2, -np.inf)

    def _grow(self, point, half):
        self.lo = np.minimum(self.lo, np.asarray(point) - half - 0.5)   # +0.5: the anti-aliased rim
        self.hi = np.maximum(self.hi, np.asarray(point) + half + 0.5)

    def _both(self, draw, color, part):
        draw(self.image, color, cv2.LINE_AA)
        if self.labels is not None:
            draw(self.labels, (self.base + part,), cv2.LINE_8)

    def line(self, a, b, color, width, part=_BODY):
        self._both(lambda img, c, t: cv2.line(img, _fixed(a), _fixed(b), c, width, t, _SHIFT), color, part)
        self._grow(a, width / 2)
        self._grow(b, width / 2)

    def disc(self, centre, radius, color, part, outline=None):
        r = int(round(radius * (1 << _SHIFT)))
        self._both(lambda img, c, t: cv2.circle(img, _fixed(centre), r, c, -1, t, _SHIFT), color, part)
        if outline is not None:
            cv2.circle(self.image, _fixed(centre), r, outline, 1, cv2.LINE_AA, _SHIFT)
        self._grow(centre, radius)

    def ellipse(self, centre, axes, angle, color, part=_BODY):
        size = tuple(int(round(a * (1 << _SHIFT))) for a in axes)
        self._both(lambda img, c, t: cv2.ellipse(img, _fixed(centre), size, angle, 0, 360, c, -1, t, _SHIFT),
                   color, part)
        a, b, t = axes[0], axes[1], np.deg2rad(angle)
        half = np.array([np.hypot(a * np.cos(t), b * np.sin(t)), np.hypot(a * np.sin(t), b * np.cos(t))])
        self._grow(centre, half)

    def polygon(self, points, color, part=_BODY):
        pts = np.array([_fixed(p) for p in points], dtype=np.int32)
        self._both(lambda img, c, t: cv2.fillPoly(img, [pts], c, t, _SHIFT), color, part)
        for p in points:
            self._grow(p, 0.0)


def _fixed(point) -> Tuple[int, int]:
    return int(round(point[0] * (1 << _SHIFT))), int(round(point[1] * (1 << _SHIFT)))


def draw_figure(image: np.ndarray, keypoints: np.ndarray, style: FigureStyle, labels: Optional[np.ndarray] = None,
                label: int = 1) -> np.ndarray:
    """Draw one figure with its 17 keypoints (x, y) on the BGR `image` in place. When `labels` (uint16, HxW) is
    given, the same shapes go there too: keypoint k's mark as `label + k`, the rest of the figure as `label + 17`.
    Returns the drawn extent (x0, y0, x1, y1), including parts outside the image."""
    kp = np.asarray(keypoints, dtype=np.float64)
    paint = _Painter(image, labels, label)
    width, radius = style.limb_width, style.joint_radius
    sides = ((style.left_limb, style.left_joint, (11, 13, 15), (5, 7, 9)),
             (style.right_limb, style.right_joint, (12, 14, 16), (6, 8, 10)))
    for limb_color, _, leg, _ in sides:
        paint.line(kp[leg[0]], kp[leg[1]], limb_color, width)
        paint.line(kp[leg[1]], kp[leg[2]], limb_color, width)
    paint.polygon(kp[[5, 6, 12, 11]], style.torso)
    for _, joint_color, leg, _ in sides:
        for k in leg:
            paint.disc(kp[k], radius, joint_color, k, style.outline)

    ears = kp[3] - kp[4]
    head_radius = max(np.hypot(*ears) / 2, 2.0)
    head_centre = (kp[3] + kp[4]) / 2
    paint.line((kp[5] + kp[6]) / 2, head_centre, style.head, width)
    for limb_color, joint_color, _, arm in sides:
        paint.line(kp[arm[0]], kp[arm[1]], limb_color, width)
        paint.line(kp[arm[1]], kp[arm[2]], limb_color, width)
        for k in arm:
            paint.disc(kp[k], radius, joint_color, k, style.outline)

    paint.ellipse(head_centre, (head_radius, 1.2 * head_radius), np.rad2deg(np.arctan2(ears[1], ears[0])), style.head)
    paint.disc(kp[3], max(2.5, 0.28 * head_radius), style.left_joint, 3)
    paint.disc(kp[4], max(2.5, 0.28 * head_radius), style.right_joint, 4)
    paint.disc(kp[1], max(2.5, 0.2 * head_radius), style.left_limb, 1)
    paint.disc(kp[2], max(2.5, 0.2 * head_radius), style.right_limb, 2)
    paint.disc(kp[0], max(2.5, 0.16 * head_radius), style.nose, 0)
    return np.concatenate([paint.lo, paint.hi])


def random_background(rng: np.random.Generator, image_size: Tuple[int, int]) -> np.ndarray:
    """A BGR image: a linear gradient between two random colours, blotchy and fine noise, and 0-6 distractor
    shapes (rectangles, discs, ellipses, lines, triangles)."""
    h, w = image_size
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * np.float32(np.cos(angle)) + yy * np.float32(np.sin(angle))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    image = c0 + t[..., None] * (c1 - c0)
    blotches = rng.standard_normal((h // 32 + 2, w // 32 + 2, 3), dtype=np.float32) * np.float32(rng.uniform(0, 25))
    image += cv2.resize(blotches, (w, h), interpolation=cv2.INTER_CUBIC)
    image += rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(rng.uniform(0, 10))
    image = np.clip(image, 0, 255).astype(np.uint8)

    side = min(h, w)
    for _ in range(rng.integers(0, 7)):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        size = int(rng.uniform(0.03, 0.3) * side) + 1
        fill = -1 if rng.random() < 0.6 else int(rng.integers(1, 6))
        kind = rng.integers(0, 5)
        if kind == 0:
            cv2.rectangle(image, centre, (centre[0] + size, centre[1] + int(rng.uniform(0.3, 2) * size)),
                          color, fill, cv2.LINE_AA)
        elif kind == 1:
            cv2.circle(image, centre, size // 2 + 1, color, fill, cv2.LINE_AA)
        elif kind == 2:
            cv2.ellipse(image, centre, (size, int(rng.uniform(0.2, 1) * size) + 1), float(rng.uniform(0, 180)),
                        0, 360, color, fill, cv2.LINE_AA)
        elif kind == 3:
            end = (centre[0] + int(rng.integers(-size, size + 1)), centre[1] + int(rng.integers(-size, size + 1)))
            cv2.line(image, centre, end, color, int(rng.integers(2, 12)), cv2.LINE_AA)
        else:
            pts = (np.array(centre) + rng.integers(-size, size + 1, (3, 2))).astype(np.int32)
            cv2.fillPoly(image, [pts], color, cv2.LINE_AA)
    return image


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
    union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
    return float(inter / union) if union > 0 else 0.0


def _inside(keypoints: np.ndarray, image_size: Tuple[int, int]) -> np.ndarray:
    h, w = image_size
    x, y = keypoints[:, 0], keypoints[:, 1]
    return (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)


def place_figures(rng: np.random.Generator, image_size: Tuple[int, int]) -> List[Tuple[np.ndarray, FigureStyle]]:
    """1-3 figures (keypoints, style) of random size, aspect and position, some reaching out of the image or
    overlapping another; ordered far (small) to near (large), the drawing order."""
    h, w = image_size
    figures, boxes = [], []
    for height in np.sort(rng.uniform(0.3, 0.85, rng.integers(1, 4)) * h):
        pose = random_pose(rng, height, (0.0, 0.0), rng.uniform(0.8, 1.25))
        half = pose.max(0)
        # about 30 % of the figures may hang up to 80 % of their half size over an edge
        margin = half * (0.2 if rng.random() < 0.3 else 1.0)
        lo, hi = margin, np.array([w - 1, h - 1]) - margin
        for _ in range(30):
            centre = np.where(lo < hi, rng.uniform(lo, np.maximum(hi, lo)), np.array([w - 1, h - 1]) / 2)
            kp = pose + centre
            box = np.concatenate([kp.min(0), kp.max(0)])
            if _inside(kp, image_size).sum() >= MIN_LABELLED and all(_box_iou(box, b) < MAX_BOX_IOU for b in boxes):
                break
        else:
            if figures:
                continue
            kp = pose + np.array([w - 1, h - 1]) / 2
            box = np.concatenate([kp.min(0), kp.max(0)])
        figures.append((kp, random_style(rng, height)))
        boxes.append(box)
    return figures


def draw_scene(image: np.ndarray, figures: Sequence[Tuple[np.ndarray, FigureStyle]]) -> List[dict]:
    """Draw the figures in order on `image` (in place) and label them: per figure {"keypoints": (17, 3) x, y, v,
    "bbox": [x, y, w, h]}. Keypoints are rounded to 0.01 px before drawing, so marks and labels agree; the box
    is the drawn figure's extent clipped to the image."""
    h, w = image.shape[:2]
    labels = np.zeros((h, w), np.uint16)
    drawn = []
    for i, (keypoints, style) in enumerate(figures):
        kp = np.round(np.asarray(keypoints, dtype=np.float64), 2)
        extent = draw_figure(image, kp, style, labels, 1 + i * _LABEL_STRIDE)
        drawn.append((kp, extent))

    instances = []
    for i, (kp, extent) in enumerate(drawn):
        inside = _inside(kp, (h, w))
        out = np.zeros((17, 3))
        for k in np.flatnonzero(inside):
            x, y = int(round(kp[k, 0])), int(round(kp[k, 1]))
            # visible when the mark fills the 3x3 pixels around the keypoint, not just a sliver of them
            shows = np.all(labels[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] == 1 + i * _LABEL_STRIDE + k)
            out[k] = (kp[k, 0], kp[k, 1], 2 if shows else 1)
        x0, y0 = np.clip(extent[:2], 0, [w - 1, h - 1])
        x1, y1 = np.clip(extent[2:], 0, [w - 1, h - 1])
        instances.append({"keypoints": out, "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]})
    return instances


def render_sample(rng: np.random.Generator, image_size: Tuple[int, int] = (480, 640)) -> Tuple[np.ndarray, List[dict]]:
    """One synthetic image (BGR uint8, HxW = image_size) and its instances (see `draw_scene`)."""
    image = random_background(rng, image_size)
    return image, draw_scene(image, place_figures(rng, image_size))


def coco_category() -> dict:
    """The COCO 'person' keypoint category: 17 names and the 1-based skeleton."""
    return {"supercategory": "person", "id": 1, "name": "person", "keypoints": list(COCO_KEYPOINTS),
            "skeleton": [[a + 1, b + 1] for a, b in COCO_SKELETON]}


def _coco_annotation(instance: dict, ann_id: int, image_id: int) -> dict:
    keypoints = []
    for x, y, v in instance["keypoints"]:
        keypoints += [round(float(x), 2), round(float(y), 2), int(v)] if v > 0 else [0, 0, 0]
    x, y, w, h = instance["bbox"]
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": [x, y, w, h], "area": round(w * h, 2),
            "iscrowd": 0, "num_keypoints": int((instance["keypoints"][:, 2] > 0).sum()), "keypoints": keypoints}


def _validate(n, val_fraction, seed, image_size) -> Tuple[int, int]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (one image per split at least), got {n!r}")
    if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width), got {image_size!r}") from None
    if h < 64 or w < 64:
        raise ValueError(f"image_size must be at least 64 x 64 (height, width), got {image_size!r}")
    return h, w


def _prepare(out: Path) -> None:
    """Make `out` ready: create it, or clear the files of an earlier synthetic dataset; refuse anything else."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        marker = out / MARKER_FILE
        try:
            earlier = json.loads(marker.read_text()).get("generator") == GENERATOR
        except (OSError, ValueError, AttributeError):
            earlier = False
        if not earlier:
            raise ValueError(f"{out} is not empty and holds no earlier synthetic dataset (no valid {MARKER_FILE}); "
                             f"choose an empty or new folder")
        for split in ("train", "val"):
            shutil.rmtree(out / "images" / split, ignore_errors=True)
            (out / "annotations" / f"{split}.json").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def make_synthetic_dataset(out_dir, n: int = 200, val_fraction: float = 0.2, seed: int = 0,
                           image_size: Tuple[int, int] = (480, 640)) -> dict:
    """Write n images of drawn figures with COCO person-keypoint annotations: out_dir/images/{train,val}/*.jpg and
    out_dir/annotations/{train,val}.json. Image i is drawn from its own generator seeded by (seed, i), so a seed
    always gives the same files. Returns the paths and the image and instance counts per split."""
    h, w = _validate(n, val_fraction, seed, image_size)
    out = Path(out_dir)
    _prepare(out)
    # written first, so that an interrupted run can be overwritten too
    (out / MARKER_FILE).write_text(json.dumps({"generator": GENERATOR, "n": int(n), "val_fraction": val_fraction,
                                               "seed": int(seed), "image_size": [h, w]}, indent=2) + "\n")
    n_val = min(n - 1, max(1, int(n * val_fraction + 0.5)))  # rounded half up
    splits = {"train": range(0, n - n_val), "val": range(n - n_val, n)}
    summary = {"out_dir": str(out), "seed": int(seed), "image_size": [h, w], "splits": {}}
    ann_id = 1
    for split, indices in splits.items():
        image_dir, ann_path = out / "images" / split, out / "annotations" / f"{split}.json"
        image_dir.mkdir(parents=True, exist_ok=True)
        ann_path.parent.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in indices:
            image, instances = render_sample(np.random.default_rng([int(seed), i]), (h, w))
            image_id, file_name = i + 1, f"{i + 1:06d}.jpg"
            if not cv2.imwrite(str(image_dir / file_name), image, JPEG_PARAMS):
                raise OSError(f"could not write {image_dir / file_name}")
            images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
            for instance in instances:
                annotations.append(_coco_annotation(instance, ann_id, image_id))
                ann_id += 1
        coco = {"info": {"description": "ssmpose synthetic stick figures", "seed": int(seed)}, "licenses": [],
                "images": images, "annotations": annotations, "categories": [coco_category()]}
        ann_path.write_text(json.dumps(coco, separators=(",", ":")))
        summary["splits"][split] = {"images": len(images), "instances": len(annotations),
                                    "annotations": str(ann_path), "image_dir": str(image_dir)}
    return summary


def move_figures(rng: np.random.Generator, figures: Sequence[Tuple[np.ndarray, FigureStyle]], frames: int,
                 image_size: Tuple[int, int]) -> List[List[Tuple[np.ndarray, FigureStyle]]]:
    """The figures of one scene through `frames` frames: placed as given on the centre frame (frames // 2),
    each drifts at its own constant velocity (up to 2 % of the image height a frame) while its limbs move
    linearly towards a displaced pose (each body keypoint up to about 4 % of the figure's height over the
    clip; the head's five keypoints move together, so it keeps its shape). Returns per frame the
    (keypoints, style) list, in drawing order."""
    h = image_size[0]
    centre = frames // 2
    paths = []
    for keypoints, style in figures:
        height = float(np.ptp(keypoints[:, 1]))
        velocity = rng.uniform(-0.02, 0.02, 2) * h
        displacement = np.clip(rng.normal(0.0, 0.02, (17, 2)), -0.04, 0.04) * height
        displacement[:5] = displacement[0]
        paths.append((keypoints, style, velocity, displacement))
    return [[(kp + velocity * (t - centre) + displacement * (t - centre) / max(frames - 1, 1), style)
             for kp, style, velocity, displacement in paths] for t in range(frames)]


def make_synthetic_video_dataset(out_dir, n: int = 40, frames: int = 5, val_fraction: float = 0.2, seed: int = 0,
                                 image_size: Tuple[int, int] = (480, 640)) -> dict:
    """Write n short videos of `frames` frames each, moving drawn figures on a still background, in the
    PoseTrack18 layout: out_dir/images/{train,val}/<video>/<frame>.jpg (000001/000000.jpg ...) and
    out_dir/annotations/{train,val}.json in COCO format, every frame annotated, with PoseTrack's video fields
    (`vid_id`, `frame_id` = 10000 x (1000000 + video) + frame, `nframes`, `is_labeled`) by which video models
    find each frame's neighbours. Video i is drawn from its own generator seeded by (seed, i)."""
    h, w = _validate(n, val_fraction, seed, image_size)
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or not 2 <= frames <= 9999:
        raise ValueError(f"frames must be an integer from 2 to 9999 (frames a video), got {frames!r}")
    out = Path(out_dir)
    _prepare(out)
    (out / MARKER_FILE).write_text(json.dumps({"generator": GENERATOR, "n": int(n), "frames": int(frames),
                                               "val_fraction": val_fraction, "seed": int(seed),
                                               "image_size": [h, w]}, indent=2) + "\n")
    n_val = min(n - 1, max(1, int(n * val_fraction + 0.5)))
    splits = {"train": range(0, n - n_val), "val": range(n - n_val, n)}
    summary = {"out_dir": str(out), "seed": int(seed), "image_size": [h, w], "frames": int(frames), "splits": {}}
    ann_id = 1
    for split, indices in splits.items():
        image_dir, ann_path = out / "images" / split, out / "annotations" / f"{split}.json"
        ann_path.parent.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in indices:
            rng = np.random.default_rng([int(seed), i])
            background = random_background(rng, (h, w))
            video = f"{i + 1:06d}"
            (image_dir / video).mkdir(parents=True, exist_ok=True)
            for t, figures in enumerate(move_figures(rng, place_figures(rng, (h, w)), int(frames), (h, w))):
                image = background.copy()
                instances = draw_scene(image, figures)
                file_name = f"{video}/{t:06d}.jpg"
                if not cv2.imwrite(str(image_dir / file_name), image, JPEG_PARAMS):
                    raise OSError(f"could not write {image_dir / file_name}")
                image_id = 10000 * (1000000 + i + 1) + t
                images.append({"id": image_id, "file_name": file_name, "width": w, "height": h, "vid_id": video,
                               "frame_id": image_id, "nframes": int(frames), "is_labeled": True})
                for instance in instances:
                    annotation = _coco_annotation(instance, ann_id, image_id)
                    if annotation["num_keypoints"]:
                        annotations.append(annotation)
                        ann_id += 1
        coco = {"info": {"description": "ssmpose synthetic stick-figure videos", "seed": int(seed)},
                "licenses": [], "images": images, "annotations": annotations, "categories": [coco_category()]}
        ann_path.write_text(json.dumps(coco, separators=(",", ":")))
        summary["splits"][split] = {"videos": len(indices), "images": len(images), "instances": len(annotations),
                                    "annotations": str(ann_path), "image_dir": str(image_dir)}
    return summary
