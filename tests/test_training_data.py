"""The training data pipeline (training/transforms.py, training/data.py) on the shared COCO, MPII and AP-10K
samples: instance filtering, geometry against the inference pipeline, flip, half-body, box-transform
statistics, determinism and corrupt annotations."""
import json
import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from conftest import DATA
from ssmpose.training.annotations import mpii_boxes
from ssmpose.training.codec import decode_heatmaps, flip_heatmaps_back
from ssmpose.training.data import BODY_HALVES, TopDownDataset
from ssmpose.training.datasets import dataset_info, list_datasets
from ssmpose.training.topdown import PipelineConfig, box_to_center_scale, crop, warp_matrix
from ssmpose.training.transforms import (AugmentConfig, fix_aspect_ratio, random_box_transform, random_flip,
                                         random_half_body, truncated_normal)

INPUT = (256, 192)    # H, W
SAMPLES = {           # name: (annotation file, image folder, keypoints, kept instances per the data README)
    "coco": ("coco/test_coco.json", "coco", 17, 12),
    "mpii": ("mpii/test_mpii.json", "mpii", 16, 5),
    "ap10k": ("ap10k/test_ap10k.json", "ap10k", 17, 2),
}
FLIP_ONLY = replace(AugmentConfig.none(), flip_prob=1.0)


def make(name, **kwargs):
    ann, images, _, _ = SAMPLES[name]
    return TopDownDataset(DATA / ann, DATA / images, input_size=INPUT, **kwargs)


def raw(name):
    with open(DATA / SAMPLES[name][0]) as f:
        return json.load(f)


def reference_boxes(name):
    """Per kept instance, in mmpose's order: (xywh box the inference pipeline would use, (K, 3) keypoints),
    computed here from the JSON alone."""
    data = raw(name)
    if name == "mpii":
        kept = [e for e in data if any(e["joints_vis"])]
        return [(mpii_boxes([e])[0].boxes[0], np.c_[np.array(e["joints"]), np.array(e["joints_vis"])])
                for e in kept]
    out = []
    for img in data["images"]:
        for a in data["annotations"]:
            kp = np.array(a["keypoints"], dtype=float).reshape(-1, 3)
            if a["image_id"] != img["id"] or a.get("iscrowd") or not (kp[:, 2] > 0).any():
                continue
            x, y, w, h = a["bbox"]
            x1, x2 = np.clip([x, x + w], 0, img["width"] - 1)
            y1, y2 = np.clip([y, y + h], 0, img["height"] - 1)
            out.append((np.array([x1, y1, x2 - x1, y2 - y1]), kp))
    return out


@pytest.mark.parametrize("name", list(SAMPLES))
def test_samples_load_with_their_conventions(name):
    ds = make(name)
    _, _, k, expected = SAMPLES[name]
    assert ds.num_keypoints == k and ds.info.name == name
    assert ds.info.flip_pairs == dataset_info(name).flip_pairs
    assert ds.info.flip_indices == dataset_info(name).flip_indices
    assert len(ds) == len(reference_boxes(name)) == expected
    item = ds[len(ds) - 1]
    assert item["image"].shape == (3, 256, 192) and item["image"].dtype == torch.float32
    assert item["heatmaps"].shape == (k, 64, 48) and item["heatmaps"].dtype == torch.float32
    assert item["weights"].shape == (k,) and item["weights"].dtype == torch.float32
    assert item["index"] == len(ds) - 1
    skipped = 14 - 12 if name == "coco" else 0          # the two COCO instances without keypoints
    assert len(ds.problems) == skipped and all("no labelled keypoints" in p for p in ds.problems)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_unaugmented_samples_match_the_inference_crop_and_the_annotation(name):
    ds = make(name)
    h, w = INPUT
    for i, (box, kp) in enumerate(reference_boxes(name)):
        center, scale = box_to_center_scale(box, w / h)
        s = ds.sample(i)
        np.testing.assert_allclose(s["center"], center, atol=1e-9)
        np.testing.assert_allclose(s["scale"], scale, rtol=1e-12)
        assert s["rotation"] == 0 and not s["flipped"] and s["half_body"] is None
        item = ds[i]
        image = cv2.imread(str(ds.instances[i].image_path))
        expected = PipelineConfig(INPUT, ds.pipeline.mean, ds.pipeline.std, "RGB", ds.num_keypoints,
                                  ()).normalize([crop(image, center, scale, INPUT)])[0]
        np.testing.assert_allclose(item["image"].numpy(), expected, atol=1e-5)

        # annotation -> input pixels by the closed form of an unrotated crop
        u = (kp[:, 0] - center[0]) / scale[0] * w + w / 2
        v = (kp[:, 1] - center[1]) / scale[1] * h + h / 2
        mx, my = (u / 4 + 0.5).astype(int), (v / 4 + 0.5).astype(int)
        inside = (mx - 6 < 48) & (my - 6 < 64) & (mx + 7 >= 0) & (my + 7 >= 0)
        expected_weights = ((kp[:, 2] > 0) & inside).astype(np.float32)
        np.testing.assert_array_equal(item["weights"].numpy(), expected_weights)

        decoded, scores = decode_heatmaps(item["heatmaps"][None], INPUT)
        back = cv2.transform(decoded[0][None], warp_matrix(center, scale, (w, h), inverse=True))[0]
        labelled = expected_weights > 0
        assert labelled.sum() >= 1 and np.all(scores[0][labelled] == 1.0)
        error_in_input_px = np.abs(back - kp[:, :2])[labelled] * (w / scale[0])
        assert error_in_input_px.max() <= 2.0 + 1e-3, (name, i, error_in_input_px.max())


@pytest.mark.parametrize("name", ["coco", "mpii"])
def test_flipped_sample_is_the_mirrored_sample(name):
    plain, flipped = make(name), make(name, augment=FLIP_ONLY)
    flip_indices = plain.info.flip_indices
    w = INPUT[1]
    compared = 0
    for i in range(len(plain)):
        a, b = plain.sample(i), flipped.sample(i)
        assert b["flipped"]
        # the crop of the mirrored image around the mirrored centre: input column u shows column w - u
        # (up to the float32 warp matrix)
        np.testing.assert_allclose(b["keypoints"][:, 0], w - a["keypoints"][flip_indices, 0], atol=1e-3)
        np.testing.assert_allclose(b["keypoints"][:, 1], a["keypoints"][flip_indices, 1], atol=1e-3)
        diff = np.abs(b["crop"][:, 1:].astype(int) - a["crop"][:, ::-1][:, :-1].astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.05

        # heatmaps: mirrored back with flip_indices and shifted one pixel right (flip test's shift_heatmap),
        # they equal the plain heatmaps, except where the rounding of a location ties (fraction 1/2)
        hp, hf = plain[i], flipped[i]
        back = flip_heatmaps_back(hf["heatmaps"][None], flip_indices)[0]
        mu = a["keypoints"] / 4
        clear = np.all(np.abs(mu - np.floor(mu) - 0.5) > 1e-3, axis=1)
        np.testing.assert_array_equal(back[clear][..., 1:], hp["heatmaps"].numpy()[clear][..., 1:])
        interior = clear & (mu[:, 0] > 0) & (mu[:, 0] < 47)
        np.testing.assert_array_equal(hf["weights"].numpy()[flip_indices][interior],
                                      hp["weights"].numpy()[interior])
        compared += int((clear & (hp["weights"].numpy() > 0)).sum())
    assert compared >= 40


def test_random_flip_follows_mmpose():
    image = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)
    keypoints = np.array([[0.0, 1.0], [1.5, 0.0], [4.0, 1.0]])
    visible = np.array([1.0, 0.0, 1.0])
    out, kp, vis, center, flipped = random_flip(image, keypoints, visible, np.array([1.0, 0.5]), [2, 1, 0],
                                                np.random.default_rng(0), FLIP_ONLY)
    assert flipped
    np.testing.assert_array_equal(out, image[:, ::-1])
    np.testing.assert_array_equal(kp, [[4 - 4.0, 1.0], [4 - 1.5, 0.0], [4 - 0.0, 1.0]])
    np.testing.assert_array_equal(vis, [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(center, [3.0, 0.5])
    never = random_flip(image, keypoints, visible, np.zeros(2), [2, 1, 0], np.random.default_rng(0),
                        AugmentConfig.none())
    assert never[4] is False and never[0] is image


def test_body_halves_follow_mmpose_metainfo():
    human_lower = ("hip", "knee", "ankle", "pelvis")
    for name in list_datasets():
        info = dataset_info(name)
        upper, lower = BODY_HALVES[name]
        assert sorted(upper + lower) == list(range(info.num_keypoints)), name
        if name != "ap10k":
            assert all(any(p in info.keypoint_names[i] for p in human_lower) for i in lower), name
            assert not any(any(p in info.keypoint_names[i] for p in human_lower) for i in upper), name
    names = dataset_info("ap10k").keypoint_names
    assert {names[i] for i in BODY_HALVES["ap10k"][1]} == {
        "root_of_tail", "right_front_paw", "left_hip", "left_knee", "left_back_paw", "right_hip", "right_knee",
        "right_back_paw"}


def test_half_body_box_is_built_from_the_chosen_keypoints():
    ds = make("coco")
    upper, lower = BODY_HALVES["coco"]
    always = replace(AugmentConfig(), half_body_prob=1.0)
    rng = np.random.default_rng(3)
    checked = 0
    for inst in ds.instances:
        for _ in range(10):
            center, scale, chosen = random_half_body(inst.keypoints, inst.visible, inst.center, inst.scale,
                                                     upper, lower, rng, always)
            if inst.visible.sum() < 9:
                assert chosen is None and center is inst.center
                continue
            assert chosen and (set(chosen) <= set(upper) or set(chosen) <= set(lower))
            assert all(inst.visible[i] > 0 for i in chosen)
            points = inst.keypoints[chosen]
            np.testing.assert_allclose(center, points.mean(axis=0))
            np.testing.assert_allclose(scale, (points.max(axis=0) - points.min(axis=0)) * 1.5)
            box = fix_aspect_ratio(scale, 0.75)
            assert np.all(np.abs(points - center) <= box / 2 + 1e-9)
            checked += 1
    assert checked >= 50

    # through the dataset (half-body forced, no box transform): the chosen keypoints lie in the crop
    forced = make("coco", augment=replace(AugmentConfig.none(), half_body_prob=1.0))
    seen = 0
    for i in range(len(forced)):
        s = forced.sample(i)
        if s["half_body"] is not None:
            kp = s["keypoints"][s["half_body"]]
            assert np.all((kp >= 0) & (kp <= [192, 256])), i
            seen += 1
    assert seen >= 5


def test_half_body_choice_rates_and_fallbacks():
    upper, lower = BODY_HALVES["coco"]
    keypoints = np.random.default_rng(0).uniform(0, 100, (17, 2))
    center, scale = np.array([50.0, 50.0]), np.array([100.0, 120.0])
    rng = np.random.default_rng(1)
    n = 20000
    picks = [random_half_body(keypoints, np.ones(17), center, scale, upper, lower, rng, AugmentConfig())[2]
             for _ in range(n)]
    applied = [p for p in picks if p is not None]
    assert abs(len(applied) / n - 0.3) < 0.015
    assert abs(sum(p == list(upper) for p in applied) / len(applied) - 0.7) < 0.025
    # only one upper keypoint labelled: the lower half, whatever the preference
    visible = np.ones(17)
    visible[1:11] = 0
    always = replace(AugmentConfig(), half_body_prob=1.0, half_body_min_total=7)
    for _ in range(20):
        assert random_half_body(keypoints, visible, center, scale, upper, lower, rng, always)[2] == list(lower)
    # too few in both halves: unchanged
    visible = np.zeros(17)
    visible[[0, 11, 12]] = 1
    assert random_half_body(keypoints, visible, center, scale, upper, lower, rng,
                            replace(always, half_body_min_total=3))[2] is None


def test_truncated_normal_moments():
    x = truncated_normal(np.random.default_rng(0), 200000)
    assert x.min() >= -1 and x.max() <= 1
    # variance of a standard normal truncated to [-1, 1]: 1 - 2 phi(1) / (Phi(1) - Phi(-1))
    phi = math.exp(-0.5) / math.sqrt(2 * math.pi)
    variance = 1 - 2 * phi / math.erf(1 / math.sqrt(2))
    assert abs(x.mean()) < 0.005
    assert abs(x.var() - variance) < 0.005


def test_box_transform_statistics():
    rng = np.random.default_rng(0)
    center, scale = np.array([100.0, 200.0]), np.array([80.0, 160.0])
    n = 20000
    draws = [random_box_transform(center, scale, rng, AugmentConfig()) for _ in range(n)]
    shift = np.array([c for c, _, _ in draws]) - center
    factor = np.array([s for _, s, _ in draws]) / scale
    rotation = np.array([r for _, _, r in draws])
    np.testing.assert_allclose(factor[:, 0], factor[:, 1])
    assert factor.min() >= 0.5 and factor.max() <= 1.5 and np.all(factor != 1.0)      # scale_prob 1
    assert abs(factor[:, 0].mean() - 1.0) < 0.01
    assert np.abs(rotation).max() <= 80.0
    assert abs(np.mean(rotation != 0) - 0.6) < 0.02
    shifted = np.any(shift != 0, axis=1)
    assert abs(shifted.mean() - 0.3) < 0.02
    assert np.all(np.abs(shift) <= 0.16 * scale + 1e-9)          # relative to the box before resizing
    assert np.abs(shift[:, 0]).max() > 0.15 * scale[0]
    none = [random_box_transform(center, scale, rng, AugmentConfig.none()) for _ in range(100)]
    assert all(np.array_equal(c, center) and np.array_equal(s, scale) and r == 0 for c, s, r in none)


def test_samples_depend_only_on_seed_epoch_and_index():
    a = make("coco", augment=AugmentConfig(), seed=7)
    b = make("coco", augment=AugmentConfig(), seed=7)
    for key in ("image", "heatmaps", "weights"):
        assert torch.equal(a[3][key], b[3][key])
        assert torch.equal(a[3][key], a[3][key])
    _ = b[5]                                      # the order of the calls does not matter
    assert torch.equal(a[4]["image"], b[4]["image"])
    before = a[3]
    a.set_epoch(1)
    assert not torch.equal(a[3]["image"], before["image"])
    a.set_epoch(0)
    assert torch.equal(a[3]["image"], before["image"])
    other_seed = make("coco", augment=AugmentConfig(), seed=8)
    assert not torch.equal(other_seed[3]["image"], before["image"])
    # no augmentation: AugmentConfig.none() gives the plain sample
    assert torch.equal(make("coco")[2]["image"], make("coco", augment=AugmentConfig.none())[2]["image"])


def test_corrupt_annotations_are_skipped_and_listed(tmp_path):
    keypoints = [0.0] * 51
    keypoints[15:18] = [300.0, 100.0, 2]                       # left shoulder
    image = {"id": 785, "file_name": "000000000785.jpg", "width": 640, "height": 425}
    good = {"id": 1, "image_id": 785, "bbox": [280.0, 44.0, 218.0, 346.0], "keypoints": keypoints,
            "num_keypoints": 1, "iscrowd": 0, "category_id": 1}
    anns = [good,
            {**good, "id": 2, "bbox": None},
            {k: v for k, v in good.items() if k != "bbox"} | {"id": 3},
            {**good, "id": 4, "bbox": [10.0, 10.0, 0.0, 50.0]},
            {**good, "id": 5, "bbox": [700.0, 10.0, 50.0, 50.0]},
            {**good, "id": 6, "keypoints": keypoints[:48]},
            {**good, "id": 7, "keypoints": [0.0] * 51, "num_keypoints": 0},
            {**good, "id": 8, "bbox": [1, 2, 3]},
            {**good, "id": 9, "iscrowd": 1},
            {**good, "id": 10, "image_id": 999}]
    category = {"id": 1, "name": "person", "keypoints": list(dataset_info("coco").keypoint_names)}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": [image], "annotations": anns, "categories": [category]}))
    ds = TopDownDataset(path, DATA / "coco", input_size=INPUT)
    assert len(ds) == 1 and ds.instances[0].ann_id == 1
    reasons = dict(p.split(": ", 1) for p in ds.problems)
    assert set(reasons) == {f"annotation {i}" for i in (2, 3, 4, 5, 6, 7, 8, 10)}   # the crowd is no problem
    assert "bbox is not 4 numbers" in reasons["annotation 2"] and "bbox is not 4 numbers" in reasons["annotation 8"]
    assert "missing 'bbox'" in reasons["annotation 3"]
    assert "zero-area" in reasons["annotation 4"]
    assert "outside" in reasons["annotation 5"]
    assert "48 values, expected 51" in reasons["annotation 6"]
    assert "no labelled keypoints" in reasons["annotation 7"]
    assert "999" in reasons["annotation 10"]
    assert ds.skipped["crowd"] == 1
    assert ds[0]["weights"].sum() == 1

    # an image that cannot be read fails at __getitem__, naming the file
    path.write_text(json.dumps({"images": [{**image, "file_name": "missing.jpg"}], "annotations": [good],
                                "categories": [category]}))
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        TopDownDataset(path, DATA / "coco", input_size=INPUT)[0]
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    path.write_text(json.dumps({"images": [{**image, "file_name": "broken.jpg"}], "annotations": [good],
                                "categories": [category]}))
    with pytest.raises(ValueError, match="broken.jpg"):
        TopDownDataset(path, tmp_path, input_size=INPUT)[0]


def test_corrupt_mpii_entries_are_skipped_and_listed(tmp_path):
    entries = raw("mpii")[:2]
    entries.append({**entries[0], "joints": entries[0]["joints"][:15]})
    entries.append({k: v for k, v in entries[0].items() if k != "center"})
    entries.append({**entries[0], "joints_vis": [0] * 16})
    path = tmp_path / "mpii.json"
    path.write_text(json.dumps(entries))
    ds = TopDownDataset(path, DATA / "mpii", input_size=INPUT)
    assert len(ds) == 2 and ds.info.name == "mpii"
    assert [p.split(":")[0] for p in ds.problems] == ["annotation entry 2", "annotation entry 3",
                                                      "annotation entry 4"]
    assert "'center'" in ds.problems[1] and "no labelled keypoints" in ds.problems[2]


def test_wrong_dataset_or_unknown_keypoints_are_refused(tmp_path):
    with pytest.raises(ValueError, match="16"):
        make("coco", dataset="mpii")
    category = {"id": 1, "name": "thing", "keypoints": ["a", "b", "c"]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [category]}))
    with pytest.raises(ValueError, match="sigmas"):
        TopDownDataset(path, tmp_path)
