"""The top-down training dataset: one sample per person (or animal) instance of a COCO-format keypoint file
(any keypoint count) or of MMPose's MPII JSON, prepared as the official recipe does (mmpose 1.x):

box -> centre/scale (padding 1.25) -> RandomFlip -> RandomHalfBody -> RandomBBoxTransform
-> TopdownAffine -> MSRA heatmaps (sigma 2, 1/4 of the input) -> normalised image tensor.

Which instances are kept follows mmpose's BaseCocoStyleDataset: no crowd, a box with positive width and
height after clipping to the image, at least one labelled keypoint. Malformed entries are skipped and listed
in `problems`, so one bad annotation does not stop a training run.

For video models (`num_frames` T > 1) a sample is a clip: the annotated frame and its neighbours
(datasets.video_frame_paths, PoseTrack18 layout), every frame through the same flip and the same (augmented)
box, as mmpose's PoseTrack18VideoDataset pipelines do; the targets are the annotated (centre) frame's.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .annotations import clip_box, coco_format_problem, mpii_boxes, read_json
from .codec import encode_heatmaps
from .datasets import DatasetInfo, dataset_for_category, dataset_info, match_dataset, video_frame_paths
from .keypoints import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from .topdown import BOX_PADDING, PipelineConfig, crop_clip
from .transforms import (AugmentConfig, affine_sample, fix_aspect_ratio, random_box_transform, random_flip,
                         random_half_body)

# Upper- and lower-body keypoint ids for RandomHalfBody: the 'type' of each keypoint in MMPose's dataset
# metainfo (configs/_base_/datasets/<name>.py). AP-10K's list is MMPose's as written there: R_F_Paw (10) is
# 'lower' while L_F_Paw (7) is 'upper'.
BODY_HALVES: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {
    "coco": (tuple(range(0, 11)), tuple(range(11, 17))),
    "ochuman": (tuple(range(0, 11)), tuple(range(11, 17))),
    "mpii": (tuple(range(7, 16)), tuple(range(0, 7))),
    "ap10k": ((0, 1, 2, 3, 5, 6, 7, 8, 9), (4, 10, 11, 12, 13, 14, 15, 16)),
    "crowdpose": ((0, 1, 2, 3, 4, 5, 12, 13), (6, 7, 8, 9, 10, 11)),
    "aic": ((0, 1, 2, 3, 4, 5, 12, 13), (6, 7, 8, 9, 10, 11)),
    "posetrack18": (tuple(range(0, 11)), tuple(range(11, 17))),
}


def body_halves(info: DatasetInfo) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(upper ids, lower ids) of a dataset, by its name or, for a description of its own, by the registered
    dataset with the same keypoint names; ((), ()) when unknown (half-body then never applies)."""
    if info.name in BODY_HALVES and len(sum(BODY_HALVES[info.name], ())) == info.num_keypoints:
        return BODY_HALVES[info.name]
    registered = match_dataset(info.keypoint_names)
    if registered is not None and registered.name in BODY_HALVES:
        return BODY_HALVES[registered.name]
    return (), ()


@dataclass(frozen=True)
class Instance:
    """One kept annotation: the padded box as centre/scale (before the aspect fix) and its keypoints."""

    ann_id: object
    image_path: Path
    center: np.ndarray      # (2,)
    scale: np.ndarray       # (2,) w, h
    keypoints: np.ndarray   # (K, 2) image pixels
    visible: np.ndarray     # (K,) 0 or 1
    frame_paths: Tuple[Path, ...] = ()   # video models: the clip's frames in time order (image_path in the centre)


class TopDownDataset(Dataset):
    """Samples of a keypoint annotation file for top-down heatmap training.

    `__getitem__(i)` returns `image` float32 (3, H, W) normalised in `color_order` (a clip (T, 3, H, W) when
    `num_frames` T > 1), `heatmaps` float32 (K, H/4, W/4) and `weights` float32 (K,) of the annotated frame,
    and `index`. Its randomness is a generator seeded from (seed, epoch, i): a sample does not depend on the
    worker or on the order of the calls.
    """

    def __init__(self, ann_file, image_dir, input_size: Tuple[int, int] = (256, 192), sigma: float = 2.0,
                 mean: Sequence[float] = IMAGENET_MEAN_RGB, std: Sequence[float] = IMAGENET_STD_RGB,
                 color_order: str = "RGB", augment: Optional[AugmentConfig] = None, seed: int = 0,
                 dataset: Union[str, DatasetInfo, None] = None, padding: float = BOX_PADDING,
                 num_frames: int = 1):
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
        h, w = (int(v) for v in input_size)
        if h <= 0 or w <= 0 or h % 4 or w % 4:
            raise ValueError(f"input_size (H, W) must be positive multiples of 4 (heatmaps are 1/4), got {input_size}")
        if color_order.upper() not in ("RGB", "BGR"):
            raise ValueError(f"color_order must be 'RGB' or 'BGR', got {color_order!r}")
        if not (isinstance(seed, int) and seed >= 0):
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.input_size = (h, w)
        self.heatmap_size = (h // 4, w // 4)
        self.sigma = float(sigma)
        self.augment = augment
        self.seed = seed
        self.padding = float(padding)
        self.num_frames = num_frames
        self.replaced_frames = 0     # video models: neighbour frames missing from image_dir, replaced
        self.epoch = 0
        self.problems: List[str] = []
        self.skipped: Counter = Counter()

        data = read_json(self.ann_file)
        if isinstance(data, list):
            if num_frames > 1:
                raise ValueError(f"{self.ann_file} is MPII JSON (single images); a video model of {num_frames} "
                                 f"frames needs video annotations (PoseTrack18 layout)")
            self.info = _resolve_info(dataset, "mpii", None, self.ann_file)
            self.instances = self._mpii_instances(data)
        else:
            problem = coco_format_problem(data)
            if problem:
                raise ValueError(f"{self.ann_file} is neither MMPose MPII JSON (a list of entries) nor a COCO "
                                 f"keypoint annotation file: {problem}")
            category = next(c for c in data["categories"] if isinstance(c, dict) and c.get("keypoints"))
            self.info = _resolve_info(dataset, None, category, self.ann_file)
            self.instances = self._coco_instances(data)
        if not self.instances:
            raise ValueError(f"{self.ann_file}: no usable instance; "
                             f"{'; '.join(self.problems[:5]) or 'every annotation is a crowd'}")
        self.upper_ids, self.lower_ids = body_halves(self.info)
        if augment is not None and augment.half_body_prob > 0 and not self.upper_ids:
            warnings.warn(f"dataset {self.info.name!r}: no upper/lower body keypoint lists are known, so the "
                          f"half-body augmentation is off", stacklevel=2)
        if self.replaced_frames:
            warnings.warn(f"{self.ann_file}: {self.replaced_frames} neighbour frame(s) of the annotated frames are "
                          f"not in {self.image_dir} and were replaced by the nearest existing frame", stacklevel=2)
        self.pipeline = PipelineConfig(input_size=self.input_size, mean=tuple(mean), std=tuple(std),
                                       color_order=color_order.upper(), num_keypoints=self.num_keypoints,
                                       flip_indices=tuple(self.info.flip_indices), num_frames=num_frames)

    @property
    def num_keypoints(self) -> int:
        return self.info.num_keypoints

    def __len__(self) -> int:
        return len(self.instances)

    def set_epoch(self, epoch: int) -> None:
        """Draw another set of augmentations (call before each epoch; worker copies see it when the DataLoader
        starts its workers for the epoch, i.e. without persistent workers)."""
        if not (isinstance(epoch, int) and epoch >= 0):
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def sample(self, index: int) -> dict:
        """The augmented crop of instance `index` before encoding: `crop` uint8 BGR (H, W, 3) (for a video model
        the clip's crops (T, H, W, 3), all of the same box), `keypoints` (K, 2) in input pixels, `visible` (K,),
        and the geometry used: `center`, `scale` (aspect-fixed), `rotation` (degrees), `flipped`, `half_body`
        (the chosen keypoint ids or None)."""
        inst = self.instances[index]
        clip = [self._read_image(inst, path) for path in inst.frame_paths]
        image = clip[len(clip) // 2] if clip else self._read_image(inst, inst.image_path)
        keypoints, visible, center, scale = inst.keypoints, inst.visible, inst.center, inst.scale
        flipped, half_body, rotation = False, None, 0.0
        if self.augment is not None:
            rng = self.rng(index)
            image, keypoints, visible, center, flipped = random_flip(
                image, keypoints, visible, center, self.info.flip_indices, rng, self.augment)
            if flipped:   # every frame of the clip mirrored with the annotated one
                clip = [np.ascontiguousarray(frame[:, ::-1]) for frame in clip]
            center, scale, half_body = random_half_body(
                keypoints, visible, center, scale, self.upper_ids, self.lower_ids, rng, self.augment)
            center, scale, rotation = random_box_transform(center, scale, rng, self.augment)
        h, w = self.input_size
        scale = fix_aspect_ratio(scale, w / h)
        crop, keypoints, visible = affine_sample(image, keypoints, visible, center, scale, rotation,
                                                 self.input_size)
        if clip:
            crop = crop_clip(clip, center, scale, self.input_size, rotation)
        return {"crop": crop, "keypoints": keypoints, "visible": visible, "center": np.asarray(center),
                "scale": scale, "rotation": rotation, "flipped": flipped, "half_body": half_body}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} instances")
        s = self.sample(index)
        heatmaps, weights = encode_heatmaps(s["keypoints"], s["visible"], self.input_size, self.heatmap_size,
                                            self.sigma)
        image = self.pipeline.normalize([s["crop"]])[0]
        return {"image": torch.from_numpy(image), "heatmaps": torch.from_numpy(heatmaps),
                "weights": torch.from_numpy(weights), "index": index}

    def _read_image(self, inst: Instance, path: Path) -> np.ndarray:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image of annotation {inst.ann_id} does not exist "
                                    f"(image folder {self.image_dir})")
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{path}: OpenCV cannot read this image (annotation {inst.ann_id})")
        return image

    def _skip(self, key: str, ann_id, reason: str) -> None:
        self.skipped[key] += 1
        if key != "crowd":
            self.problems.append(f"annotation {ann_id}: {reason}")

    def _coco_instances(self, data: dict) -> List[Instance]:
        k = self.num_keypoints
        per_image = defaultdict(list)
        images = {img["id"]: img for img in data["images"]}
        for position, ann in enumerate(data["annotations"]):
            ann_id = ann.get("id", f"#{position}") if isinstance(ann, dict) else f"#{position}"
            if not isinstance(ann, dict):
                self._skip("malformed", ann_id, "not a JSON object")
            elif not isinstance(ann.get("image_id"), (int, str)) or ann["image_id"] not in images:
                self._skip("malformed", ann_id, f"image_id {ann.get('image_id')!r} is not in the image list")
            else:
                per_image[ann["image_id"]].append(ann)
        instances = []
        # mmpose's order: images as listed, then each image's annotations as listed
        for image_id, image in images.items():
            for ann in per_image[image_id]:
                instance = self._coco_instance(ann, image, k)
                if instance is not None:
                    instances.append(instance)
        return instances

    def _coco_instance(self, ann: dict, image: dict, k: int) -> Optional[Instance]:
        ann_id = ann.get("id", "(no id)")
        if ann.get("iscrowd", 0):
            self._skip("crowd", ann_id, "crowd")
            return None
        missing = [key for key in ("bbox", "keypoints") if key not in ann]
        if missing:
            self._skip("malformed", ann_id, f"missing {', '.join(repr(m) for m in missing)}")
            return None
        box = _numbers(ann["bbox"])
        if box is None or len(box) != 4:
            self._skip("malformed", ann_id, f"bbox is not 4 numbers: {str(ann['bbox'])[:60]}")
            return None
        values = _numbers(ann["keypoints"])
        if values is None or len(values) != 3 * k:
            count = "non-numeric values" if values is None else f"{len(values)} values"
            self._skip("malformed", ann_id, f"keypoints hold {count}, expected {3 * k} ({k} keypoints x 3)")
            return None
        if box[2] <= 0 or box[3] <= 0:
            self._skip("box", ann_id, f"zero-area bbox {box.tolist()}")
            return None
        width, height = image.get("width"), image.get("height")
        corners = clip_box(box, width, height)
        if corners is None:
            self._skip("box", ann_id, f"bbox {box.tolist()} lies outside the {width}x{height} image")
            return None
        x1, y1, x2, y2 = corners
        keypoints = values.reshape(k, 3)
        visible = np.minimum(keypoints[:, 2], 1.0) > 0
        if ann.get("num_keypoints", 1) == 0 or not visible.any() or keypoints[:, :2].max() <= 0:
            self._skip("no_keypoints", ann_id, "no labelled keypoints")
            return None
        center = np.array([x1 + x2, y1 + y2]) * 0.5
        scale = np.array([x2 - x1, y2 - y1]) * self.padding
        frame_paths: Tuple[Path, ...] = ()
        if self.num_frames > 1:
            try:
                paths, replaced = video_frame_paths(image, self.image_dir, self.num_frames)
            except ValueError as err:
                self._skip("malformed", ann_id, str(err))
                return None
            frame_paths, self.replaced_frames = tuple(paths), self.replaced_frames + replaced
        return Instance(ann_id, self.image_dir / image["file_name"], center, scale, keypoints[:, :2].copy(),
                        visible.astype(np.float32), frame_paths)

    def _mpii_instances(self, entries: list) -> List[Instance]:
        k = self.num_keypoints
        instances = []
        for i, entry in enumerate(entries):
            ann_id = f"entry {i}"
            missing = [key for key in ("joints", "joints_vis", "image", "center", "scale")
                       if not isinstance(entry, dict) or key not in entry]
            if missing:
                self._skip("malformed", ann_id, f"missing {', '.join(repr(m) for m in missing)}")
                continue
            joints, joints_vis = _pairs(entry["joints"]), _numbers(entry["joints_vis"])
            center, side = _numbers(entry["center"]), _numbers([entry["scale"]])
            if joints is None or len(joints) != k or joints_vis is None or len(joints_vis) != k:
                self._skip("malformed", ann_id, f"joints/joints_vis do not describe {k} keypoints")
                continue
            if center is None or len(center) != 2 or side is None:
                self._skip("malformed", ann_id, "center is not 2 numbers or scale is not a number")
                continue
            if side[0] <= 0:
                self._skip("box", ann_id, f"non-positive scale {side[0]}")
                continue
            keypoints, visible = joints, joints_vis > 0
            if not visible.any() or keypoints.max() <= 0:
                self._skip("no_keypoints", ann_id, "no labelled keypoints")
                continue
            x, y, w, h = mpii_boxes([entry])[0].boxes[0]
            instances.append(Instance(ann_id, self.image_dir / entry["image"], np.array([x + w / 2, y + h / 2]),
                                      np.array([w, h]) * self.padding, keypoints.copy(),
                                      visible.astype(np.float32)))
        return instances


def _numbers(values) -> Optional[np.ndarray]:
    """A flat list of finite numbers as float64, or None."""
    if not isinstance(values, (list, tuple)):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return None
    return np.array(values, dtype=np.float64)


def _pairs(values) -> Optional[np.ndarray]:
    """A list of [x, y] number pairs as (N, 2) float64, or None."""
    if not isinstance(values, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2
                                                        for p in values):
        return None
    flat = _numbers([v for p in values for v in p])
    return None if flat is None else flat.reshape(-1, 2)


def _resolve_info(dataset, default: Optional[str], category: Optional[dict], ann_file: Path) -> DatasetInfo:
    """The dataset description: of the COCO category (datasets.dataset_for_category), or for MPII JSON (no
    category) the given dataset, else `default`."""
    if dataset is not None and not isinstance(dataset, (str, DatasetInfo)):
        raise TypeError(f"dataset must be a name, a DatasetInfo or None, got {type(dataset).__name__}")
    if category is not None:
        return dataset_for_category(category, dataset, str(ann_file))
    if isinstance(dataset, DatasetInfo):
        return dataset
    return dataset_info(dataset or default)
