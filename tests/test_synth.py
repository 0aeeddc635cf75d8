"""The synthetic keypoint dataset: COCO-format files that the project's and pycocotools' readers accept, labels
that agree with the drawn pixels, determinism, visibility at the image border and under occlusion, the CLI."""
import contextlib
import io
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import DATA
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssmpose.cli.synth_cmds import synth_data_command
from ssmpose.synth import draw_scene, make_synthetic_dataset, random_pose, random_style
from ssmpose.training.annotations import CocoKeypoints
from ssmpose.training.keypoints import COCO_KEYPOINTS

SIZE = (480, 640)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    return out, make_synthetic_dataset(out, n=12, val_fraction=0.2, seed=3, image_size=SIZE)


def _load(out, split):
    return json.loads((out / "annotations" / f"{split}.json").read_text())


def _quiet_coco(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_files_load_with_both_readers_and_counts_match(dataset):
    out, summary = dataset
    reference = json.loads((DATA / "coco" / "test_coco.json").read_text())["categories"][0]
    # 12 images, 20 % of them (2.4 -> 2) for val
    assert {s: summary["splits"][s]["images"] for s in ("train", "val")} == {"train": 10, "val": 2}
    ann_ids = set()
    for split in ("train", "val"):
        info = summary["splits"][split]
        coco = _quiet_coco(info["annotations"])
        ours = CocoKeypoints(info["annotations"])
        assert len(coco.getImgIds()) == len(ours.images) == info["images"]
        assert len(coco.getAnnIds()) == sum(map(len, ours.annotations.values())) == info["instances"]
        category = coco.loadCats(1)[0]
        assert category["keypoints"] == reference["keypoints"] == list(COCO_KEYPOINTS)
        assert category["skeleton"] == reference["skeleton"]
        for image in ours.images.values():
            pixels = cv2.imread(str(out / "images" / split / image["file_name"]))
            assert pixels.shape == (image["height"], image["width"], 3) == SIZE + (3,)
            assert 1 <= len(ours.annotations[image["id"]]) <= 3
            assert len(ours.ground_truth_boxes(image).boxes) == len(ours.annotations[image["id"]])
        assert len(list((out / "images" / split).glob("*.jpg"))) == info["images"]
        ann_ids |= set(coco.getAnnIds())
    assert len(ann_ids) == summary["splits"]["train"]["instances"] + summary["splits"]["val"]["instances"]


def test_labelled_keypoints_lie_in_the_image_and_the_box(dataset):
    out, _ = dataset
    seen = {0: 0, 1: 0, 2: 0}
    for split in ("train", "val"):
        data = _load(out, split)
        sizes = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
        for ann in data["annotations"]:
            w, h = sizes[ann["image_id"]]
            kp = np.array(ann["keypoints"], dtype=np.float64).reshape(17, 3)
            x0, y0, bw, bh = ann["bbox"]
            assert (ann["category_id"], ann["iscrowd"]) == (1, 0)
            assert ann["area"] == pytest.approx(bw * bh, abs=0.01)
            assert 0 <= x0 and 0 <= y0 and x0 + bw <= w - 1 + 1e-6 and y0 + bh <= h - 1 + 1e-6
            labelled = kp[:, 2] > 0
            assert set(kp[:, 2]) <= {0, 1, 2}
            assert ann["num_keypoints"] == labelled.sum() >= 6
            assert np.all(kp[~labelled, :2] == 0)
            x, y = kp[labelled, 0], kp[labelled, 1]
            assert np.all((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1))
            assert np.all((x >= x0) & (x <= x0 + bw) & (y >= y0) & (y <= y0 + bh))
            # the figures face the camera: the person's left eye, ear, shoulder and hip are on the image's right
            for left, right in ((1, 2), (3, 4), (5, 6), (11, 12)):
                if labelled[left] and labelled[right]:
                    assert kp[left, 0] > kp[right, 0], (COCO_KEYPOINTS[left], kp[left], kp[right])
            for v in kp[:, 2]:
                seen[int(v)] += 1
    assert seen[2] > 0.8 * sum(seen.values())


def test_visible_keypoints_are_drawn_in_their_side_colour(dataset):
    """The documented design: left marks warm (OpenCV hue 0-15), right marks blue (100-120), both strongly
    saturated; the nose is dark. Checked on the written JPEGs with a small allowance for compression."""
    out, _ = dataset
    checked = 0
    for split in ("train", "val"):
        data = _load(out, split)
        files = {img["id"]: img["file_name"] for img in data["images"]}
        for ann in data["annotations"]:
            hsv = cv2.cvtColor(cv2.imread(str(out / "images" / split / files[ann["image_id"]])), cv2.COLOR_BGR2HSV)
            for name, (x, y, v) in zip(COCO_KEYPOINTS, np.array(ann["keypoints"]).reshape(17, 3)):
                if v != 2:
                    continue
                xi, yi = int(round(x)), int(round(y))
                patch = hsv[max(yi - 1, 0):yi + 2, max(xi - 1, 0):xi + 2].reshape(-1, 3)
                hue, sat, val = np.median(patch, axis=0)
                if name.startswith("left_"):
                    assert (hue <= 20 or hue >= 175) and sat >= 120, (name, hue, sat)
                elif name.startswith("right_"):
                    assert 95 <= hue <= 125 and sat >= 120, (name, hue, sat)
                else:
                    assert val <= 90, (name, val)
                checked += 1
    assert checked > 100


def test_ground_truth_scores_perfectly_with_cocoeval(dataset):
    out, _ = dataset
    path = out / "annotations" / "train.json"
    gt = _quiet_coco(path)
    results = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
               for a in _load(out, "train")["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(results), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    runs = {name: make_synthetic_dataset(tmp_path / name, n=4, seed=seed)
            for name, seed in (("a", 7), ("b", 7), ("c", 8))}
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 4 + 2 + 1  # images, two annotation files, the marker
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert runs["a"]["splits"]["train"]["images"] == runs["c"]["splits"]["train"]["images"] == 3
    for rel in ("annotations/train.json", "images/train/000001.jpg", "images/val/000004.jpg"):
        assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes(), rel


def test_keypoints_outside_the_image_are_unlabelled():
    rng = np.random.default_rng(5)
    pose = random_pose(rng, 300.0, center=(0.0, 240.0))   # keypoint box centred on the left edge
    truth = np.round(pose, 2)
    outside = truth[:, 0] < 0
    assert 2 <= outside.sum() <= 15
    image = np.full(SIZE + (3,), 128, np.uint8)
    [instance] = draw_scene(image, [(pose, random_style(rng, 300.0))])
    kp = instance["keypoints"]
    assert np.all(kp[outside] == 0)
    assert np.all(kp[~outside, 2] > 0)
    np.testing.assert_array_equal(kp[~outside, :2], truth[~outside])
    assert instance["bbox"][0] == 0.0   # the drawn body is cut at the edge


def test_a_figure_drawn_over_another_hides_its_keypoints():
    rng = np.random.default_rng(11)
    pose = random_pose(rng, 250.0, center=(320.0, 240.0))
    style = random_style(rng, 250.0)
    alone = draw_scene(np.zeros(SIZE + (3,), np.uint8), [(pose, style)])[0]["keypoints"]
    behind, front = draw_scene(np.zeros(SIZE + (3,), np.uint8), [(pose, style), (pose, style)])
    # the same shapes drawn again cover every pixel of the first figure: all labelled, none showing
    assert np.all(behind["keypoints"][:, 2] == 1)
    np.testing.assert_array_equal(front["keypoints"], alone)
    assert (alone[:, 2] == 2).sum() >= 15
    np.testing.assert_array_equal(behind["keypoints"][:, :2], alone[:, :2])


@pytest.mark.parametrize("kwargs, word", [
    ({"n": 1}, "n must"), ({"n": 2.5}, "n must"), ({"val_fraction": 0.0}, "val_fraction"),
    ({"val_fraction": 1.0}, "val_fraction"), ({"seed": -1}, "seed"), ({"image_size": (63, 640)}, "image_size"),
    ({"image_size": (480,)}, "image_size")])
def test_bad_arguments(tmp_path, kwargs, word):
    with pytest.raises(ValueError, match=word):
        make_synthetic_dataset(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_refuses_a_foreign_folder_and_overwrites_an_earlier_dataset(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        make_synthetic_dataset(foreign, n=2)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    out = tmp_path / "synth"
    make_synthetic_dataset(out, n=6, seed=1)
    summary = make_synthetic_dataset(out, n=4, val_fraction=0.375, seed=2)   # 1.5 val images, rounded up
    images = sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.jpg"))
    assert images == ["images/train/000001.jpg", "images/train/000002.jpg", "images/val/000003.jpg",
                      "images/val/000004.jpg"]
    assert [len(_load(out, s)["images"]) for s in ("train", "val")] == [2, 2]
    assert summary["splits"]["val"]["images"] == 2


def test_cli_command(tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(synth_data_command, [str(out), "--n", "5", "--val-fraction", "0.4", "--seed", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2
    for line, split, images in zip(lines, ("train", "val"), (3, 2)):
        data = _load(out, split)
        assert len(data["images"]) == images
        assert line == (f"{split}: {images} images, {len(data['annotations'])} instances, "
                        f"{out / 'annotations' / f'{split}.json'}")
    bad = CliRunner().invoke(synth_data_command, [str(tmp_path / "bad"), "--n", "1"])
    assert bad.exit_code != 0 and isinstance(bad.exception, ValueError)
