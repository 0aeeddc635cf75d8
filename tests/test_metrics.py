"""Evaluation arithmetic on the sample annotations of /work/shared/data, against hand computations and a direct
pycocotools run."""
import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import SHARED
from ssmpose.training.datasets import dataset_info
from ssmpose.training.metrics import (COCO_SUMMARY_NAMES, coco_keypoint_ap, coco_oks, is_coco_keypoint_annotation,
                                      is_mpii_annotation, mpii_head_sizes, mpii_pckh, oks_iou, oks_nms, rescore)

DATA = SHARED / "data"
COCO_FILE = DATA / "coco" / "test_coco.json"
AP10K_FILE = DATA / "ap10k" / "test_ap10k.json"
MPII_FILE = DATA / "mpii" / "test_mpii.json"
COCO_SIGMAS = dataset_info("coco").sigmas


def _load(path):
    with open(path) as f:
        return json.load(f)


def _results_from_gt(data):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "keypoints": list(a["keypoints"]),
             "score": 1.0} for a in data["annotations"] if a["num_keypoints"] > 0]


def _direct_cocoeval(gt: dict, results, sigmas):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), iouType="keypoints")
        evaluator.params.kpt_oks_sigmas = np.array(sigmas)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _hand_oks(gt_kpts, pred_kpts, area, sigmas):
    """COCO OKS written out keypoint by keypoint."""
    terms = []
    for k, sigma in enumerate(sigmas):
        if gt_kpts[3 * k + 2] > 0:
            d2 = (pred_kpts[3 * k] - gt_kpts[3 * k]) ** 2 + (pred_kpts[3 * k + 1] - gt_kpts[3 * k + 1]) ** 2
            terms.append(math.exp(-d2 / (2.0 * area * (2.0 * sigma) ** 2)))
    return sum(terms) / len(terms)


# ---- COCO keypoint AP --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, dataset", [(COCO_FILE, "coco"), (AP10K_FILE, "ap10k")])
def test_ground_truth_as_results_scores_one(path, dataset):
    results = _results_from_gt(_load(path))
    assert results
    stats = coco_keypoint_ap(path, results, dataset_info(dataset).sigmas)
    assert list(stats) == list(COCO_SUMMARY_NAMES)
    for name in ("AP", "AP50", "AP75", "AR", "AR50", "AR75"):
        assert stats[name] == pytest.approx(1.0, abs=1e-12), name


def test_one_moved_keypoint_costs_the_expected_oks_and_ap():
    gt = _load(COCO_FILE)
    results = _results_from_gt(gt)
    n_gt = len(results)  # 12 labelled people, one result each
    target = next(i for i, a in enumerate(gt["annotations"]) if a["id"] == 442619)
    ann = gt["annotations"][target]
    res_index = next(i for i, r in enumerate(results) if r["image_id"] == ann["image_id"])
    moved = results[res_index]
    wrist = 9  # left_wrist, labelled (v=2)
    assert ann["keypoints"][3 * wrist + 2] == 2
    moved["keypoints"][3 * wrist] += 30.0
    moved["keypoints"][3 * wrist + 1] += 40.0  # 50 px away
    moved["score"] = 0.5  # ranked last, so the precision curve is known in advance

    # 16 exact keypoints and one at 50 px: (16 + exp(-50^2 / (2 area (2 sigma)^2))) / 17.
    sigma, area = 0.062, ann["area"]
    expected_oks = (16.0 + math.exp(-2500.0 / (2.0 * area * (2.0 * sigma) ** 2))) / 17.0
    assert _hand_oks(ann["keypoints"], moved["keypoints"], area, COCO_SIGMAS) == pytest.approx(expected_oks)
    assert coco_oks(ann["keypoints"], moved["keypoints"], area, COCO_SIGMAS) == pytest.approx(expected_oks,
                                                                                           rel=1e-12)
    assert 0.9 < expected_oks < 0.95  # so only the 0.95 OKS threshold loses this person

    direct = _direct_cocoeval(gt, results, COCO_SIGMAS)
    ious = direct.ious[(ann["image_id"], ann["category_id"])]
    assert ious.shape == (1, 1) and ious[0, 0] == pytest.approx(expected_oks, rel=1e-12)

    stats = coco_keypoint_ap(COCO_FILE, results, COCO_SIGMAS)
    # At 0.95: n-1 hits at precision 1 then one miss; recall reaches (n-1)/n, i.e. 92 of the 101 recall steps.
    steps = sum(1 for r in np.linspace(0.0, 1.0, 101) if r <= (n_gt - 1) / n_gt + 1e-12)
    assert stats["AP"] == pytest.approx((9 + steps / 101) / 10, abs=1e-12)
    assert stats["AR"] == pytest.approx((9 + (n_gt - 1) / n_gt) / 10, abs=1e-12)
    assert stats["AP50"] == stats["AP75"] == pytest.approx(1.0)
    for name, value in zip(COCO_SUMMARY_NAMES, direct.stats):
        assert stats[name] == pytest.approx(float(value), abs=1e-12), name

    # The sigmas passed are the ones used: doubled, the same move costs a quarter of the exponent and the
    # OKS clears 0.95.
    wide = [2.0 * s for s in COCO_SIGMAS]
    assert _hand_oks(ann["keypoints"], moved["keypoints"], area, wide) > 0.95
    assert coco_keypoint_ap(COCO_FILE, results, wide)["AP"] == pytest.approx(1.0)


def test_annotations_without_area_use_053_of_the_box():
    gt = _load(COCO_FILE)
    for ann in gt["annotations"]:
        del ann["area"]
    results = _results_from_gt(gt)
    n_gt = len(results)
    ann = next(a for a in gt["annotations"] if a["id"] == 442619)  # the only person of its image, 17 labelled
    moved = next(r for r in results if r["image_id"] == ann["image_id"])
    moved["score"] = 0.5
    # Move keypoint k by d_k with d_k^2 = 2 e area (2 sigma_k)^2, area = 0.53 x box: every term is exp(-e),
    # so OKS = exp(-e) = 0.76, between the 0.75 and 0.80 thresholds (an area of 0.50 x box would give 0.7476).
    area = ann["bbox"][2] * ann["bbox"][3] * 0.53
    e = -math.log(0.76)
    for k, sigma in enumerate(COCO_SIGMAS):
        moved["keypoints"][3 * k] += math.sqrt(2.0 * e * area * (2.0 * sigma) ** 2)
    assert _hand_oks(ann["keypoints"], moved["keypoints"], area, COCO_SIGMAS) == pytest.approx(0.76)

    stats = coco_keypoint_ap(gt, results, COCO_SIGMAS)
    assert all("area" not in a for a in gt["annotations"]), "the caller's dict must not change"
    steps = sum(1 for r in np.linspace(0.0, 1.0, 101) if r <= (n_gt - 1) / n_gt + 1e-12)
    assert stats["AP75"] == pytest.approx(1.0)
    assert stats["AP"] == pytest.approx((6 + 4 * steps / 101) / 10, abs=1e-12)  # lost at 0.80 ... 0.95

    reference = copy.deepcopy(gt)
    for a in reference["annotations"]:
        a["area"] = a["bbox"][2] * a["bbox"][3] * 0.53
    direct = _direct_cocoeval(reference, results, COCO_SIGMAS)
    for name, value in zip(COCO_SUMMARY_NAMES, direct.stats):
        assert stats[name] == pytest.approx(float(value), abs=1e-12), name
    # use_area=False replaces areas that are present as well.
    assert coco_keypoint_ap(_load(COCO_FILE), results, COCO_SIGMAS, use_area=False) == stats


def test_empty_results_score_zero():
    assert coco_keypoint_ap(COCO_FILE, [], COCO_SIGMAS) == {name: 0.0 for name in COCO_SUMMARY_NAMES}


def test_not_coco_keypoint_files_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match=r"test_mpii\.json is not a COCO keypoint annotation.*JSON list"):
        coco_keypoint_ap(MPII_FILE, [], COCO_SIGMAS)
    no_annotations = {"images": [], "categories": [{"id": 1, "keypoints": ["a"]}]}
    path = tmp_path / "no_annotations.json"
    path.write_text(json.dumps(no_annotations))
    with pytest.raises(ValueError, match=r"no_annotations\.json.*missing the list\(s\) annotations"):
        coco_keypoint_ap(path, [], [0.1])
    boxes_only = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    with pytest.raises(ValueError, match="no category lists keypoint names"):
        coco_keypoint_ap(boxes_only, [], [0.1])
    with pytest.raises(ValueError, match="17 keypoints but 16 OKS sigmas"):
        coco_keypoint_ap(COCO_FILE, [], dataset_info("mpii").sigmas)
    with pytest.raises(ValueError, match="image_id 123"):
        coco_keypoint_ap(COCO_FILE, [{"image_id": 123, "category_id": 1, "keypoints": [0.0] * 51,
                                      "score": 1.0}], COCO_SIGMAS)


def test_format_sniffers():
    coco, mpii, detections = _load(COCO_FILE), _load(MPII_FILE), _load(DATA / "coco" / "test_coco_det_AP_H_56.json")
    assert is_coco_keypoint_annotation(coco) and not is_mpii_annotation(coco)
    assert is_mpii_annotation(mpii) and not is_coco_keypoint_annotation(mpii)
    assert not is_coco_keypoint_annotation(detections) and not is_mpii_annotation(detections)
    assert is_coco_keypoint_annotation(_load(AP10K_FILE))
    assert not is_mpii_annotation([])


# ---- OKS, OKS-NMS, rescoring -------------------------------------------------------------------------------

def _pose(offset, score):
    base = np.array(_load(COCO_FILE)["annotations"][0]["keypoints"], dtype=float).reshape(17, 3)
    base[:, :2] += offset
    base[:, 2] = 0.9
    return {"keypoints": base.reshape(-1).tolist(), "score": score, "area": 20000.0}


def test_oks_iou_is_mmposes_formula():
    a, b = _pose((0.0, 0.0), 1.0), _pose((3.0, 4.0), 1.0)
    # Every keypoint 5 px away, mean area 20000: mean over k of exp(-25 / (2 sigma_k)^2 / 20000 / 2).
    expected = sum(math.exp(-25.0 / (2 * s) ** 2 / 20000.0 / 2.0) for s in COCO_SIGMAS) / 17
    got = oks_iou(a["keypoints"], [b["keypoints"]], 20000.0, [20000.0], COCO_SIGMAS)
    assert got.shape == (1,) and got[0] == pytest.approx(expected, rel=1e-12)
    # With vis_thr, keypoints whose score is not above it in both poses do not count.
    c = np.array(b["keypoints"]).reshape(17, 3)
    c[:10, 2] = 0.0
    expected_tail = sum(math.exp(-25.0 / (2 * s) ** 2 / 20000.0 / 2.0) for s in COCO_SIGMAS[10:]) / 7
    got = oks_iou(a["keypoints"], [c], 20000.0, [20000.0], COCO_SIGMAS, vis_thr=0.5)
    assert got[0] == pytest.approx(expected_tail, rel=1e-12)


def test_oks_nms_drops_a_near_duplicate_and_keeps_a_distinct_pose():
    best, duplicate, other = _pose((0.0, 0.0), 0.9), _pose((1.0, 0.0), 0.8), _pose((200.0, 0.0), 0.7)
    assert oks_nms([best, duplicate, other], COCO_SIGMAS) == [0, 2]
    assert oks_nms([duplicate, other, best], COCO_SIGMAS) == [2, 1]  # visited by score
    assert oks_nms([duplicate, other, best], COCO_SIGMAS, threshold=1.0) == [2, 0, 1]
    assert oks_nms([], COCO_SIGMAS) == []
    # Areas from the boxes when no 'area' is given: a tiny box makes the 1 px shift a large one.
    small = [{k: v for k, v in p.items() if k != "area"} | {"bbox": [0, 0, 2, 2]} for p in (best, duplicate)]
    assert oks_nms(small, COCO_SIGMAS) == [0, 1]


def test_rescore_is_box_score_times_mean_of_confident_keypoints():
    inst = {"image_id": 1, "category_id": 1, "score": 0.6,
            "keypoints": [0, 0, 0.9, 1, 1, 0.1, 2, 2, 0.5, 3, 3, 0.2, 4, 4, 0.8]}
    (out,) = rescore([inst])
    # 0.2 is not above the threshold: 0.6 x (0.9 + 0.5 + 0.8) / 3.
    assert out["score"] == pytest.approx(0.6 * 2.2 / 3)
    assert out["bbox_score"] == 0.6 and inst["score"] == 0.6
    assert rescore([out])[0]["score"] == pytest.approx(out["score"])  # idempotent
    assert rescore([inst], keypoint_score_thr=0.85)[0]["score"] == pytest.approx(0.6 * 0.9)
    assert rescore([inst], keypoint_score_thr=0.95)[0]["score"] == 0.0
    explicit = dict(inst, bbox_score=0.5, keypoint_scores=[1.0, 0.5, 0.0, 0.0, 0.0])
    assert rescore([explicit])[0]["score"] == pytest.approx(0.5 * 0.75)


# ---- MPII PCKh ---------------------------------------------------------------------------------------------

def _mpii():
    anns = _load(MPII_FILE)
    joints = np.array([a["joints"] for a in anns], dtype=float)
    vis = np.array([a["joints_vis"] for a in anns]) > 0
    return anns, joints, vis


def test_mpii_head_size_is_the_head_segment():
    anns, joints, _ = _mpii()
    expected = [math.dist(j[8], j[9]) for j in joints]
    np.testing.assert_allclose(mpii_head_sizes(anns), expected, rtol=1e-12)


def test_pckh_of_the_ground_truth_is_100():
    anns, joints, _ = _mpii()
    groups = ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "PCKh", "PCKh@0.1")
    for result in (mpii_pckh(anns, joints - 1.0), mpii_pckh(anns, joints, pred_offset=0.0)):
        assert list(result) == list(groups)
        assert all(v == 100.0 for v in result.values()), result


def test_pckh_counts_a_moved_joint_in_its_group():
    anns, joints, vis = _mpii()
    sizes = [math.dist(j[8], j[9]) for j in joints]
    n_left_wrist = int(vis[:, 15].sum())
    n_total = int(vis[:, [i for i in range(16) if i not in (6, 7)]].sum())
    preds = joints - 1.0
    preds[0, 15, 0] += 0.6 * sizes[0]  # beyond 0.5 x head size
    result = mpii_pckh(anns, preds)
    assert result["Wrist"] == pytest.approx(0.5 * (100.0 * (n_left_wrist - 1) / n_left_wrist + 100.0))
    assert result["PCKh"] == pytest.approx(100.0 * (n_total - 1) / n_total)
    assert result["PCKh@0.1"] == pytest.approx(100.0 * (n_total - 1) / n_total)
    assert all(result[g] == 100.0 for g in ("Head", "Shoulder", "Elbow", "Hip", "Knee", "Ankle"))
    # With twice the head size the same move is within threshold.
    assert mpii_pckh(anns, preds, head_sizes=2 * np.array(sizes))["Wrist"] == 100.0

    preds = joints - 1.0
    preds[1, 9, 1] += 0.3 * sizes[1]  # within 0.5 but not within 0.1 x head size
    result = mpii_pckh(anns, preds)
    assert result["Head"] == 100.0 and result["PCKh"] == 100.0
    assert result["PCKh@0.1"] == pytest.approx(100.0 * (n_total - 1) / n_total)


def test_pckh_adds_one_to_predictions_for_matlab_coordinates():
    # Head size 2 px: the threshold is 1 px, so the 1 px offset decides every joint.
    anns, joints, _ = _mpii()
    tiny = np.full(len(anns), 2.0)
    assert mpii_pckh(anns, joints - 1.0, head_sizes=tiny)["PCKh"] == 100.0
    assert mpii_pckh(anns, joints - 1.0, head_sizes=tiny, pred_offset=0.0)["PCKh"] == 0.0
    assert mpii_pckh(anns, joints, head_sizes=tiny)["PCKh"] == 0.0


def test_pckh_ignores_invisible_joints():
    anns, joints, vis = _mpii()
    hidden = np.argwhere(~vis)
    assert len(hidden) > 0
    preds = joints - 1.0
    for n, k in hidden:
        preds[n, k] += 1000.0
    assert all(v == 100.0 for v in mpii_pckh(anns, preds).values())
    with pytest.raises(ValueError, match="predictions must be"):
        mpii_pckh(anns, joints[:, :15])
