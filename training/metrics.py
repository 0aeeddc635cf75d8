"""Pose evaluation arithmetic: OKS, OKS-NMS and rescoring as MMPose's CocoMetric does them, COCO keypoint AP
through pycocotools, and MPII PCKh. Nothing here prints; every function returns numbers.

An "instance" is one predicted pose of one image, a dict in the COCO keypoint results format
({image_id, category_id, keypoints: [x, y, score] * K, score}) that may also carry `bbox_score`,
`keypoint_scores` (K,), `area` or `bbox` ([x, y, w, h]).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .annotations import coco_format_problem, is_mpii_format

COCO_SUMMARY_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
# AIC and CrowdPose annotations carry no 'area'; xtcocotools (MMPose's evaluator, use_area=False) then takes
# this fraction of the box area as the object area, and so do we.
BOX_AREA_FACTOR = 0.53


def _keypoints(instance: dict) -> np.ndarray:
    return np.asarray(instance["keypoints"], dtype=np.float64).reshape(-1, 3)


def _instance_area(instance: dict) -> float:
    """`area` when given, else the box area, else the keypoints' extent (MMPose's fallback)."""
    if "area" in instance:
        return float(instance["area"])
    if "bbox" in instance:
        return float(instance["bbox"][2] * instance["bbox"][3])
    k = _keypoints(instance)
    return float(np.ptp(k[:, 0]) * np.ptp(k[:, 1]))


def oks_iou(g, d, area_g: float, area_d, sigmas: Sequence[float], vis_thr: Optional[float] = None) -> np.ndarray:
    """MMPose's OKS between one pose `g` (K, 3) and poses `d` (N, K, 3); keypoints are (x, y, score).

    e_k = d_k^2 / (2 sigma_k)^2 / ((area_g + area_d) / 2) / 2 and OKS = mean_k exp(-e_k), over all keypoints,
    or with `vis_thr` over those whose score is above it in both poses (0 when there are none).
    """
    g = np.asarray(g, dtype=np.float64).reshape(-1, 3)
    d = np.asarray(d, dtype=np.float64).reshape(-1, g.shape[0], 3)
    area_d = np.asarray(area_d, dtype=np.float64).reshape(-1)
    variances = (2.0 * np.asarray(sigmas, dtype=np.float64)) ** 2
    sq_dist = ((d[:, :, :2] - g[None, :, :2]) ** 2).sum(-1)
    scale = (area_g + area_d) / 2.0 + np.spacing(1)
    e = sq_dist / variances[None, :] / scale[:, None] / 2.0
    used = np.ones_like(e, dtype=bool)
    if vis_thr is not None:
        used = (g[None, :, 2] > vis_thr) & (d[:, :, 2] > vis_thr)
    counts = used.sum(1)
    sums = np.where(used, np.exp(-e), 0.0).sum(1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def oks_nms(instances: Sequence[dict], sigmas: Sequence[float], threshold: float = 0.9) -> List[int]:
    """Greedy OKS-NMS over one image's instances (MMPose's oks_nms, nms_thr 0.9 in CocoMetric).

    Visits instances by decreasing `score`, keeps each one and drops the remaining ones whose OKS with it is
    above `threshold`. Returns the kept indices in that visiting order. Areas come from `_instance_area`;
    MMPose's top-down CocoMetric uses the padded box scale (w x h after the 1.25 padding), so pass `area` to
    reproduce it exactly. Equal scores keep their input order (MMPose's unstable argsort leaves that open).
    """
    if len(instances) == 0:
        return []
    scores = np.array([float(inst["score"]) for inst in instances])
    kpts = np.stack([_keypoints(inst) for inst in instances])
    areas = np.array([_instance_area(inst) for inst in instances])
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        overlaps = oks_iou(kpts[i], kpts[rest], areas[i], areas[rest], sigmas)
        order = [j for j, o in zip(rest, overlaps) if o <= threshold]
    return keep


def rescore(instances: Sequence[dict], keypoint_score_thr: float = 0.2) -> List[dict]:
    """MMPose CocoMetric score_mode 'bbox_keypoint': score = box score x mean of the keypoint scores that are
    strictly above `keypoint_score_thr` (0 when none is).

    The box score is `bbox_score`, else the incoming `score` (the detector's, as the pipeline fills it);
    keypoint scores are `keypoint_scores`, else the third keypoint column. Returns copies that carry the new
    `score` and the `bbox_score` used, so rescoring twice gives the same result.
    """
    out = []
    for inst in instances:
        box_score = float(inst.get("bbox_score", inst["score"]))
        if "keypoint_scores" in inst:
            kpt_scores = np.asarray(inst["keypoint_scores"], dtype=np.float64).reshape(-1)
        else:
            kpt_scores = _keypoints(inst)[:, 2]
        valid = kpt_scores[kpt_scores > keypoint_score_thr]
        mean = float(valid.mean()) if valid.size else 0.0
        out.append({**inst, "score": box_score * mean, "bbox_score": box_score})
    return out


def coco_oks(gt_keypoints, pred_keypoints, area: float, sigmas: Sequence[float]) -> float:
    """COCO's OKS of one prediction against one labelled pose: the mean of exp(-d^2 / (2 (2 sigma)^2 area))
    over the ground-truth keypoints with visibility > 0 (as pycocotools' computeOks)."""
    gt = np.asarray(gt_keypoints, dtype=np.float64).reshape(len(sigmas), -1)
    pred = np.asarray(pred_keypoints, dtype=np.float64).reshape(len(sigmas), -1)
    labelled = gt[:, 2] > 0
    if not labelled.any():
        raise ValueError("coco_oks: the ground-truth pose has no labelled keypoint (visibility > 0)")
    variances = (2.0 * np.asarray(sigmas, dtype=np.float64)) ** 2
    e = ((pred[:, :2] - gt[:, :2]) ** 2).sum(-1) / variances / (area + np.spacing(1)) / 2.0
    return float(np.exp(-e[labelled]).mean())


# ---- annotation formats --------------------------------------------------------------------------------------

def is_coco_keypoint_annotation(data) -> bool:
    return coco_format_problem(data) is None


def is_mpii_annotation(data) -> bool:
    """An MMPose MPII JSON: a non-empty list of {joints, joints_vis, image, center, scale}."""
    return is_mpii_format(data)


def _load_coco_gt(coco_gt: Union[str, Path, dict]) -> Tuple[dict, str]:
    """A validated copy of a COCO keypoint annotation (a path or a loaded dict), and a label for messages."""
    if isinstance(coco_gt, dict):
        label, data = "the annotation dict", coco_gt
    else:
        label = str(coco_gt)
        with open(coco_gt) as f:
            data = json.load(f)
    problem = coco_format_problem(data)
    if problem:
        raise ValueError(f"{label} is not a COCO keypoint annotation file: {problem}")
    return (copy.deepcopy(data) if isinstance(coco_gt, dict) else data), label


def _prepare_gt(gt: dict, use_area: bool, label: str) -> None:
    """Fill what pycocotools needs but some COCO-style files leave out (in place, on our copy)."""
    for n, ann in enumerate(gt["annotations"]):
        if "keypoints" not in ann:
            raise ValueError(f"{label}: annotation {ann.get('id', n)} has no 'keypoints'")
        vis = np.asarray(ann["keypoints"], dtype=np.float64)[2::3]
        ann.setdefault("num_keypoints", int((vis > 0).sum()))
        ann.setdefault("iscrowd", 0)
        ann.setdefault("id", n + 1)  # pycocotools needs ids, and a non-zero one (0 reads as "unmatched")
        if not use_area or "area" not in ann:
            if "bbox" not in ann:
                raise ValueError(f"{label}: annotation {ann['id']} has neither 'area' nor 'bbox'")
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3] * BOX_AREA_FACTOR)


def coco_keypoint_ap(coco_gt: Union[str, Path, dict], results: Sequence[dict], sigmas: Sequence[float],
                     use_area: bool = True) -> Dict[str, float]:
    """COCO keypoint AP/AR (pycocotools COCOeval, iouType 'keypoints', kpt_oks_sigmas = `sigmas`).

    `coco_gt`: a COCO keypoint annotation file or loaded dict (not modified). `results`: COCO keypoint
    results. `use_area=False` (or annotations without 'area', as AIC and CrowdPose have) takes
    0.53 x box area as each object's area, as xtcocotools does. Returns the ten summary numbers of
    COCO_SUMMARY_NAMES; an empty result list scores 0, and pycocotools' -1 marks an area range without
    ground truth. CrowdPose's own AP(E/M/H) split ('keypoints_crowd') is not computed here.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, label = _load_coco_gt(coco_gt)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    k = len(sigmas)
    for cat in gt["categories"]:
        if len(cat["keypoints"]) != k:
            raise ValueError(f"{label}: category {cat.get('name')!r} has {len(cat['keypoints'])} "
                             f"keypoints but {k} OKS sigmas were given")
    _prepare_gt(gt, use_area, label)
    if len(results) == 0:
        return {name: 0.0 for name in COCO_SUMMARY_NAMES}

    image_ids = {img["id"] for img in gt["images"]}
    detections = []
    for r in results:
        if r["image_id"] not in image_ids:
            raise ValueError(f"result for image_id {r['image_id']!r}, which the annotation does not contain")
        kpts = [float(v) for v in np.asarray(r["keypoints"], dtype=np.float64).reshape(-1)]
        if len(kpts) != 3 * k:
            raise ValueError(f"result for image_id {r['image_id']!r} has {len(kpts)} keypoint values, "
                             f"expected {3 * k} ([x, y, score] x {k})")
        # Only these keys: pycocotools' loadRes would take a 'bbox' key as a box result.
        detections.append({"image_id": r["image_id"], "category_id": r["category_id"], "keypoints": kpts,
                           "score": float(r["score"])})

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(detections), iouType="keypoints")
        evaluator.params.kpt_oks_sigmas = sigmas
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(COCO_SUMMARY_NAMES, evaluator.stats)}


# ---- MPII PCKh -----------------------------------------------------------------------------------------------

# The joint groups MMPose's MpiiPCKAccuracy reports (left, right of the MPII order).
MPII_GROUPS = {
    "Head": (9,), "Shoulder": (13, 12), "Elbow": (14, 11), "Wrist": (15, 10),
    "Hip": (3, 2), "Knee": (4, 1), "Ankle": (5, 0),
}
_MPII_NOT_IN_TOTAL = (6, 7)  # pelvis and thorax are left out of the overall PCKh
_MPII_UPPER_NECK, _MPII_HEAD_TOP = 8, 9


def mpii_head_sizes(annotations: Sequence[dict]) -> np.ndarray:
    """Head segment length of each MPII entry: the upper_neck -> head_top distance (0 when either is not
    visible). See `mpii_pckh` for how this differs from the official normaliser."""
    joints = np.array([a["joints"] for a in annotations], dtype=np.float64)
    vis = np.array([a["joints_vis"] for a in annotations]) > 0
    length = np.linalg.norm(joints[:, _MPII_HEAD_TOP] - joints[:, _MPII_UPPER_NECK], axis=-1)
    return np.where(vis[:, _MPII_HEAD_TOP] & vis[:, _MPII_UPPER_NECK], length, 0.0)


def mpii_pckh(annotations: Sequence[dict], predictions: np.ndarray, threshold: float = 0.5,
              head_sizes: Optional[Sequence[float]] = None, pred_offset: float = 1.0) -> Dict[str, float]:
    """PCKh in percent for MMPose MPII JSON entries, reported as MMPose's MpiiPCKAccuracy does: Head,
    Shoulder, Elbow, Wrist, Hip, Knee, Ankle, PCKh (at `threshold`) and PCKh@0.1.

    A joint counts when it is visible (`joints_vis`) and its prediction lies strictly closer than
    threshold x head size. A group is the mean of its left and right joints (a joint with no visible
    instance is left out of its group; NaN when the whole group has none). PCKh and PCKh@0.1 pool all visible
    joints except pelvis and thorax.

    `predictions`: (N, 16, 2 or 3) in 0-based image pixels. MPII joints are MATLAB 1-based, so `pred_offset`
    (default 1, as MpiiPCKAccuracy) is added to the predictions before comparing.

    Head size: the MPII paper sets the threshold as a fraction of the head segment length; the official
    evaluation (and MMPose, from mpii_gt_val.mat) approximates that length by 0.6 x the diagonal of the
    annotated head rectangle. The MMPose JSON has no head rectangles, so when `head_sizes` is None this uses
    the annotated head segment itself, |head_top - upper_neck| (`mpii_head_sizes`). Numbers computed that way
    are not the official MPII PCKh; pass `head_sizes` (0.6 x headbox diagonal) for those. Reading
    mpii_gt_val.mat needs scipy, which this project does not depend on, so no loader is provided. Entries
    with head size 0 are left out (as MMPose masks a zero normaliser).
    """
    joints = np.array([a["joints"] for a in annotations], dtype=np.float64)
    vis = np.array([a["joints_vis"] for a in annotations]) > 0
    n = len(annotations)
    if joints.shape != (n, 16, 2):
        raise ValueError(f"mpii_pckh: expected 16 (x, y) joints per entry, got an array of shape {joints.shape}")
    preds = np.asarray(predictions, dtype=np.float64)
    if preds.ndim != 3 or preds.shape[:2] != (n, 16) or preds.shape[2] < 2:
        raise ValueError(f"mpii_pckh: predictions must be ({n}, 16, 2 or 3), got {preds.shape}")
    sizes = mpii_head_sizes(annotations) if head_sizes is None else np.asarray(head_sizes, dtype=np.float64)
    sizes = sizes.reshape(-1)
    if sizes.shape != (n,):
        raise ValueError(f"mpii_pckh: {sizes.shape[0]} head sizes for {n} entries")

    valid = vis & (sizes > 0)[:, None]
    norm = np.where(sizes > 0, sizes, 1.0)[:, None]
    dist = np.linalg.norm(preds[:, :, :2] + pred_offset - joints, axis=-1) / norm
    counts = valid.sum(0)
    in_total = np.ones(16, dtype=bool)
    in_total[list(_MPII_NOT_IN_TOTAL)] = False

    def per_joint(thr: float) -> np.ndarray:
        correct = ((dist < thr) & valid).sum(0)
        return np.where(counts > 0, 100.0 * correct / np.maximum(counts, 1), np.nan)

    def pooled(thr: float) -> float:
        total = counts[in_total].sum()
        correct = ((dist < thr) & valid)[:, in_total].sum()
        return float(100.0 * correct / total) if total else float("nan")

    pck = per_joint(threshold)
    out = {}
    for group, idx in MPII_GROUPS.items():
        values = [pck[i] for i in idx if counts[i] > 0]
        out[group] = float(np.mean(values)) if values else float("nan")
    out["PCKh"] = pooled(threshold)
    out["PCKh@0.1"] = pooled(0.1)
    return out
