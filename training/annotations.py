"""Reading the box sources of the top-down pipeline: COCO-format keypoint annotations (ground-truth boxes),
COCO detection results (person boxes with scores) and MMPose's MPII JSON (centre/scale per person).

Every reader validates the file and raises ValueError naming the file and what is wrong with it.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

MPII_PIXEL_STD = 200.0


def read_json(path) -> object:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a JSON file: {err}") from None


@dataclass
class ImageBoxes:
    """The boxes of one image: (N, 4) xywh, scores (N,), and the annotation ids they came from (if any)."""

    image_id: object
    file_name: str
    boxes: np.ndarray
    scores: np.ndarray
    width: Optional[int] = None
    height: Optional[int] = None
    extra: Dict = field(default_factory=dict)


class CocoKeypoints:
    """A COCO-format keypoint annotation file (COCO, AP-10K, CrowdPose, AIC, OCHuman, PoseTrack18 frames)."""

    def __init__(self, source, name: str = None):
        from_file = isinstance(source, (str, Path))
        data = read_json(source) if from_file else source
        self.name = name or (str(source) if from_file else "annotations")
        problem = coco_format_problem(data)
        if problem:
            raise ValueError(f"{self.name} is not a COCO keypoint annotation file: {problem}")
        self.data = data
        self.images = {img["id"]: img for img in data["images"]}
        self.by_file = {Path(img["file_name"]).name: img for img in data["images"]}
        self.category = next(c for c in data["categories"] if c.get("keypoints"))
        self.annotations = defaultdict(list)
        for ann in data["annotations"]:
            self.annotations[ann["image_id"]].append(ann)

    @property
    def keypoint_names(self) -> List[str]:
        return list(self.category["keypoints"])

    def image_for_file(self, file_name: str) -> Optional[dict]:
        return self.by_file.get(Path(file_name).name)

    def ground_truth_boxes(self, image: dict) -> ImageBoxes:
        """Boxes of the image's annotations (crowd and empty boxes left out), clipped to the image as mmpose's
        CocoDataset does; score 1."""
        w_img, h_img = image.get("width"), image.get("height")
        boxes = []
        for ann in self.annotations.get(image["id"], []):
            if ann.get("iscrowd", 0) or "bbox" not in ann:
                continue
            corners = clip_box(ann["bbox"], w_img, h_img)
            if corners is not None:
                x1, y1, x2, y2 = corners
                boxes.append((x1, y1, x2 - x1, y2 - y1))
        array = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        return ImageBoxes(image["id"], image["file_name"], array, np.ones(len(array)), w_img, h_img)


def clip_box(box_xywh, width: Optional[int], height: Optional[int]) -> Optional[tuple]:
    """(x, y, w, h) -> corners (x1, y1, x2, y2) clipped to the image as mmpose's CocoDataset does ([0, W-1],
    [0, H-1]; unclipped when the size is unknown); None when nothing of positive area remains."""
    x, y, w, h = (float(v) for v in box_xywh)
    x1, y1, x2, y2 = x, y, x + w, y + h
    if width and height:
        x1, x2 = np.clip([x1, x2], 0, width - 1)
        y1, y2 = np.clip([y1, y2], 0, height - 1)
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def coco_format_problem(data) -> Optional[str]:
    """Why `data` is not COCO keypoint annotations, or None when it is."""
    if not isinstance(data, dict):
        return f"expected a JSON object with images/annotations/categories, got a JSON {type(data).__name__}"
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        return f"missing the list(s) {', '.join(missing)}"
    if not any(isinstance(c, dict) and c.get("keypoints") for c in data["categories"]):
        return "no category lists keypoint names ('keypoints'), so it holds no keypoint annotations"
    bad = next((img for img in data["images"] if not {"id", "file_name"} <= set(img)), None)
    if bad is not None:
        return f"an image entry lacks 'id' or 'file_name': {json.dumps(bad)[:120]}"
    return None


def read_detections(path, annotations: Optional[CocoKeypoints] = None, category_id: int = 1,
                    score_threshold: float = 0.0) -> Dict[object, ImageBoxes]:
    """COCO detection results ([{image_id, category_id, bbox: [x, y, w, h], score}]) -> boxes per image id.

    File names come from `annotations` when given, else from COCO's naming (image id 785 ->
    000000000785.jpg)."""
    data = read_json(path)
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise ValueError(f"{path} is not a COCO detection results file: expected a JSON list of "
                         f"{{image_id, category_id, bbox, score}} objects")
    per_image = defaultdict(list)
    for i, det in enumerate(data):
        if not {"image_id", "bbox", "score"} <= set(det) or len(det["bbox"]) != 4:
            raise ValueError(f"{path}: detection {i} lacks image_id, a 4-number bbox or score: "
                             f"{json.dumps(det)[:120]}")
        if det.get("category_id", category_id) != category_id or det["score"] < score_threshold:
            continue
        per_image[det["image_id"]].append(det)
    result = {}
    for image_id, dets in per_image.items():
        if annotations is not None:
            image = annotations.images.get(image_id)
            if image is None:
                continue
            file_name, width, height = image["file_name"], image.get("width"), image.get("height")
        else:
            file_name, width, height = _coco_file_name(image_id), None, None
        boxes = np.array([d["bbox"] for d in dets], dtype=np.float64)
        result[image_id] = ImageBoxes(image_id, file_name, boxes, np.array([d["score"] for d in dets]), width, height)
    return result


def _coco_file_name(image_id) -> str:
    try:
        return f"{int(image_id):012d}.jpg"
    except (TypeError, ValueError):
        return str(image_id)


def is_mpii_format(data) -> bool:
    return (isinstance(data, list) and bool(data) and all(isinstance(d, dict) for d in data)
            and all({"joints", "joints_vis", "image", "center", "scale"} <= set(d) for d in data))


def mpii_boxes(entries: List[dict]) -> List[ImageBoxes]:
    """MPII JSON entries -> one box per entry (in file order), from MMPose's reading of centre/scale: scale is
    in units of 200 px, the centre moves down by 15 of those units' 200ths and by -1 (MATLAB indexing). The
    square box of side `scale` then goes through the same padding and aspect fix as any other box."""
    out = []
    for i, entry in enumerate(entries):
        side = float(entry["scale"]) * MPII_PIXEL_STD
        cx, cy = (float(v) for v in entry["center"])
        if cx != -1:
            cy += 15.0 / MPII_PIXEL_STD * side
        cx, cy = cx - 1.0, cy - 1.0
        box = np.array([[cx - side / 2, cy - side / 2, side, side]])
        out.append(ImageBoxes(i, entry["image"], box, np.ones(1), extra={"entry": i}))
    return out
