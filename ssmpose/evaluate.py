"""`ssmpose eval`: COCO keypoint AP (pycocotools, the dataset's own OKS sigmas) for COCO-format annotations,
PCKh for MMPose's MPII JSON; from a results file, or by running a model through the top-down pipeline.

As mmpose's CocoMetric: instance scores are box score x mean confident keypoint score, then OKS-NMS at 0.9
per image.

Video models (PoseTrack18-format annotations) see each annotated frame as the clip of its neighbouring frames
(training.datasets.video_frame_paths); images marked `is_labeled: false` (PoseTrack's unannotated frames) are
not predicted, since their missing annotations do not mean missing people.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .training.annotations import CocoKeypoints, ImageBoxes, is_mpii_format, mpii_boxes, read_detections, read_json
from .training.datasets import DatasetInfo, dataset_for_category, video_frame_paths
from .training.metrics import coco_keypoint_ap, mpii_pckh, oks_nms

NMS_THRESHOLD = 0.9


def annotation_kind(ann_file) -> str:
    """"coco" or "mpii"; a clear error for anything else."""
    data = read_json(ann_file)
    if is_mpii_format(data):
        return "mpii"
    CocoKeypoints(data, name=str(ann_file))   # raises ValueError saying why it is not COCO keypoints
    return "coco"


def dataset_for(annotations: CocoKeypoints, dataset: Optional[str] = None) -> DatasetInfo:
    """The dataset conventions (sigmas) of an annotation file: named with --dataset, else found from the
    category's keypoint names."""
    return dataset_for_category(annotations.category, dataset, annotations.name)


def nms_per_image(results: Sequence[dict], sigmas: Sequence[float], threshold: float = NMS_THRESHOLD) -> List[dict]:
    by_image = defaultdict(list)
    for entry in results:
        by_image[entry["image_id"]].append(entry)
    kept = []
    for entries in by_image.values():
        kept += [entries[i] for i in oks_nms(entries, sigmas, threshold)]
    return kept


def evaluate_coco_results(ann_file, results: Sequence[dict], dataset: Optional[str] = None) -> dict:
    annotations = CocoKeypoints(ann_file)
    info = dataset_for(annotations, dataset)
    return {"metric": "coco_keypoint_ap", "dataset": info.name, "instances": len(results),
            **coco_keypoint_ap(annotations.data, list(results), info.sigmas)}


def read_results(path) -> list:
    data = read_json(path)
    if not isinstance(data, list) or not all(isinstance(r, dict) and {"image_id", "keypoints"} <= set(r)
                                             for r in data):
        raise ValueError(f"{path} is not a keypoint results file: expected a JSON list of "
                         f"{{image_id, category_id, keypoints, score}} objects")
    return data


def evaluate_mpii_results(ann_file, results: Sequence[dict]) -> dict:
    """MPII results: one entry per annotation entry, `image_id` = the entry's index in the file (as
    `ssmpose eval` writes them)."""
    entries = read_json(ann_file)
    predictions = np.full((len(entries), len(entries[0]["joints"]), 2), np.nan)
    for r in results:
        index = int(r["image_id"])
        if not 0 <= index < len(entries):
            raise ValueError(f"MPII results: image_id {index} is not an entry index of {ann_file} "
                             f"(0..{len(entries) - 1})")
        predictions[index] = np.asarray(r["keypoints"], dtype=np.float64).reshape(-1, 3)[:, :2]
    missing = int(np.isnan(predictions[:, 0, 0]).sum())
    if missing:
        raise ValueError(f"MPII results lack predictions for {missing} of {len(entries)} annotation entries")
    return {"metric": "mpii_pckh", "dataset": "mpii", "instances": len(entries),
            **mpii_pckh(entries, predictions)}


def read_model_input(image: dict, image_dir, num_frames: int = 1) -> tuple:
    """(model input, replaced frames) of an annotated image entry: the BGR image, or for a video model the clip
    (list of `num_frames` BGR frames) around it, with the count of its neighbour frames that were missing and
    replaced (training.datasets.video_frame_paths)."""
    import cv2
    if num_frames == 1:
        paths, replaced = [Path(image_dir) / image["file_name"]], 0
    else:
        paths, replaced = video_frame_paths(image, image_dir, num_frames)
    frames = []
    for path in paths:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise ValueError(f"{path} could not be read as an image")
        frames.append(frame)
    return (frames[0] if num_frames == 1 else frames), replaced


def predict_coco(estimator, ann_file, image_dir, boxes_file=None, progress: bool = True) -> tuple:
    """Run the model over the annotation's labelled images found in `image_dir`: ground-truth boxes, or
    detections with `boxes_file`; a video model on the clips around them. Returns (results, images not found,
    neighbour frames replaced)."""
    from tqdm import tqdm
    annotations = CocoKeypoints(ann_file)
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"--images {image_dir} is not a folder")
    detections = read_detections(boxes_file, annotations) if boxes_file else None
    labelled = [img for img in annotations.images.values() if img.get("is_labeled", True) is not False]
    present = [img for img in labelled if (image_dir / img["file_name"]).is_file()]
    missing = [img["file_name"] for img in labelled if img not in present]
    if not present:
        raise ValueError(f"none of the {len(labelled)} labelled images of {ann_file} is in {image_dir}")
    category_id = annotations.category.get("id", 1)
    replaced = [0]

    def items():
        for img in present:
            image, count = read_model_input(img, image_dir, estimator.config.num_frames)
            replaced[0] += count
            if detections is not None:
                boxes = detections.get(img["id"], ImageBoxes(img["id"], img["file_name"], np.zeros((0, 4)),
                                                             np.zeros(0)))
            else:
                boxes = annotations.ground_truth_boxes(img)
            yield img["id"], image, boxes.boxes, boxes.scores

    results = []
    with tqdm(total=len(present), desc="eval", unit="img", disable=not progress) as bar:
        for image_id, instances in estimator.estimate_many(items()):
            results += [inst.to_coco(image_id, category_id) for inst in instances]
            bar.update(1)
    return results, missing, replaced[0]


def predict_mpii(estimator, ann_file, image_dir, progress: bool = True) -> list:
    """One prediction per MPII entry (its centre/scale box); results with image_id = entry index."""
    import cv2
    from tqdm import tqdm
    entries = read_json(ann_file)
    image_dir = Path(image_dir)
    boxes = mpii_boxes(entries)
    found = [(b, image_dir / b.file_name) for b in boxes if (image_dir / b.file_name).is_file()]
    if len(found) != len(boxes):
        missing = sorted({b.file_name for b in boxes} - {b.file_name for b, _ in found})
        raise ValueError(f"MPII evaluation needs every image of {ann_file}; not in {image_dir}: "
                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")

    def items():
        for b, path in found:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"{path} could not be read as an image")
            yield b.image_id, image, b.boxes, b.scores

    results = []
    with tqdm(total=len(found), desc="eval", unit="img", disable=not progress) as bar:
        for image_id, instances in estimator.estimate_many(items()):
            results += [inst.to_coco(image_id) for inst in instances]
            bar.update(1)
    return results


def evaluate(ann_file, results=None, estimator=None, image_dir=None, boxes_file=None, dataset=None,
             progress: bool = True) -> tuple:
    """Returns (metrics dict, the results evaluated). Either `results` (a list) or `estimator` + `image_dir`."""
    kind = annotation_kind(ann_file)
    missing, replaced = [], None
    if results is None:
        if estimator is None or image_dir is None:
            raise ValueError("eval needs either --results or a MODEL with --images")
        _check_keypoint_count(estimator, ann_file, kind)
        if kind == "mpii":
            if boxes_file:
                raise ValueError("--boxes applies to COCO-format annotations; MPII entries carry their own boxes")
            if estimator.config.num_frames > 1:
                raise ValueError(f"{ann_file} is MPII JSON (single images); a video model needs video "
                                 f"annotations (PoseTrack18 format)")
            results = predict_mpii(estimator, ann_file, image_dir, progress)
        else:
            results, missing, replaced = predict_coco(estimator, ann_file, image_dir, boxes_file, progress)
    if kind == "mpii":
        return evaluate_mpii_results(ann_file, results), results
    annotations = CocoKeypoints(ann_file)
    sigmas = dataset_for(annotations, dataset).sigmas
    kept = nms_per_image(results, sigmas)
    metrics = evaluate_coco_results(ann_file, kept, dataset)
    metrics["images_not_found"] = missing
    if estimator is not None and estimator.config.num_frames > 1:
        metrics["num_frames"] = estimator.config.num_frames
        metrics["frames_replaced"] = replaced
    return metrics, kept


def _check_keypoint_count(estimator, ann_file, kind: str) -> None:
    if kind == "mpii":
        expected = len(read_json(ann_file)[0]["joints"])
    else:
        expected = len(CocoKeypoints(ann_file).keypoint_names)
    if estimator.config.num_keypoints != expected:
        raise ValueError(f"the model predicts {estimator.config.num_keypoints} keypoints, {ann_file} annotates "
                         f"{expected}")
