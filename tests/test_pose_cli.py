"""`ssmpose infer`, `ssmpose eval` and `ssmpose parity` on the real samples in ../shared/data, called as a user
would. The model is hrvmamba_tiny with perturbed seeded weights (conftest's `exported`: one trace per session)."""
import json
import shutil

import cv2
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import DATA
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import ssmpose
from ssmpose.cli.main import main
from ssmpose.parity_check import export_cache_name, weights_fingerprint
from ssmpose.training.keypoints import COCO_SIGMAS
from ssmpose.training.topdown import box_to_center_scale

COCO_ANN = DATA / "coco" / "test_coco.json"
COCO_DET = DATA / "coco" / "test_coco_det_AP_H_56.json"
TINY = ("hrvmamba_tiny", (256, 192))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny(exported):
    return exported(*TINY)


def _ground_truth_results(ann_path):
    data = json.loads(ann_path.read_text())
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "keypoints": a["keypoints"], "score": 1.0}
            for a in data["annotations"] if a.get("num_keypoints", 0) > 0]


# ---------------------------------------------------------------------------------------------------------
# infer

def test_infer_coco_images_with_detection_boxes(tiny, tmp_path):
    out = tmp_path / "out"
    result = invoke("infer", tiny.checkpoint, DATA / "coco", "--boxes", COCO_DET, "--box-thr", 0.5, "--out", out)
    assert result.exit_code == 0, result.output
    detections = [d for d in json.loads(COCO_DET.read_text()) if d["score"] >= 0.5]
    results = json.loads((out / "results.json").read_text())
    assert len(results) == len(detections) == 18
    by_box = {tuple(round(v, 2) for v in d["bbox"]): d for d in detections}
    for r in results:
        det = by_box[tuple(r["bbox"])]
        assert r["image_id"] == det["image_id"] and r["category_id"] == 1
        assert r["file_name"] == f"{det['image_id']:012d}.jpg"
        kp = np.array(r["keypoints"]).reshape(17, 3)
        center, scale = box_to_center_scale(det["bbox"], 192 / 256)
        found = kp[:, 2] > 0                            # a heatmap with no positive value decodes to location -1
        assert (np.abs(kp[found, :2] - center) <= scale / 2 + 1e-3).all()     # inside the crop the model saw
        confident = kp[kp[:, 2] > 0.2, 2]
        assert r["score"] == pytest.approx(det["score"] * (confident.mean() if confident.size else 0.0), rel=1e-5)
    for source in sorted((DATA / "coco").glob("*.jpg")):
        overlay = cv2.imread(str(out / source.name))
        assert overlay is not None and overlay.shape == cv2.imread(str(source)).shape


def test_infer_annotation_boxes_give_its_image_ids(tiny, tmp_path):
    result = invoke("infer", tiny.checkpoint, DATA / "ap10k", "--ann", DATA / "ap10k" / "test_ap10k.json",
                    "--out", tmp_path, "--no-draw")
    assert result.exit_code == 0, result.output
    ann = json.loads((DATA / "ap10k" / "test_ap10k.json").read_text())
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["image_id"] for r in results) == sorted(a["image_id"] for a in ann["annotations"])
    assert not list(tmp_path.glob("*.jpg"))


def test_infer_folder_with_a_corrupt_file_lists_it_and_exits_1(tiny, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("000000000785.jpg", "000000040083.jpg"):
        shutil.copy(DATA / "coco" / name, folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (folder / "notes.txt").write_text("not an image, not listed")
    result = invoke("infer", tiny.checkpoint, folder, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert "failed: 1 input(s)" in result.output and "broken.jpg: could not be read as an image" in result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(r["image_id"] for r in results) == [785, 40083]       # whole image = one box each
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == ["000000000785.jpg", "000000040083.jpg"]


def test_infer_video_on_onnx_runtime(tiny, tmp_path):
    result = invoke("infer", tiny.paths["custom"], DATA / "demo.mp4", "--out", tmp_path, "--batch", 4)
    assert result.exit_code == 0, result.output
    source = cv2.VideoCapture(str(DATA / "demo.mp4"))
    frames = int(source.get(cv2.CAP_PROP_FRAME_COUNT))
    size = (int(source.get(cv2.CAP_PROP_FRAME_WIDTH)), int(source.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["frame"] for r in results] == list(range(frames))
    assert all(r["bbox"] == [0, 0, size[0], size[1]] for r in results)
    overlay = cv2.VideoCapture(str(tmp_path / "demo.mp4"))
    assert int(overlay.get(cv2.CAP_PROP_FRAME_COUNT)) == frames
    assert (int(overlay.get(cv2.CAP_PROP_FRAME_WIDTH)), int(overlay.get(cv2.CAP_PROP_FRAME_HEIGHT))) == size


# ---------------------------------------------------------------------------------------------------------
# eval

@pytest.mark.parametrize("ann", [COCO_ANN, DATA / "ap10k" / "test_ap10k.json"], ids=["coco", "ap10k"])
def test_eval_of_ground_truth_results_is_perfect(ann, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_ground_truth_results(ann)))
    result = invoke("eval", "--ann", ann, "--results", results, "--json", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["metric"] == "coco_keypoint_ap"
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-12) and metrics["AR"] == pytest.approx(1.0, abs=1e-12)
    assert "1.0000" in result.output


def test_eval_of_mpii_ground_truth_is_pckh_100(tmp_path):
    entries = json.loads((DATA / "mpii" / "test_mpii.json").read_text())
    # MPII joints are 1-based (MATLAB); predictions are 0-based image pixels, as the pipeline writes them
    results = [{"image_id": i, "keypoints": [v for x, y in e["joints"] for v in (x - 1, y - 1, 1.0)]}
               for i, e in enumerate(entries)]
    (tmp_path / "r.json").write_text(json.dumps(results))
    result = invoke("eval", "--ann", DATA / "mpii" / "test_mpii.json", "--results", tmp_path / "r.json",
                    "--json", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.json").read_text())["PCKh"] == 100.0


def test_eval_runs_the_model_and_matches_pycocotools(tiny, tmp_path):
    result = invoke("eval", tiny.checkpoint, "--ann", COCO_ANN, "--images", DATA / "coco",
                    "--save-results", tmp_path / "r.json", "--json", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    saved = json.loads((tmp_path / "r.json").read_text())
    ann = json.loads(COCO_ANN.read_text())
    boxes = [a for a in ann["annotations"] if not a.get("iscrowd")]
    assert 0 < len(saved) <= len(boxes)                                  # ground-truth boxes, after OKS-NMS
    gt = COCO(str(COCO_ANN))
    evaluator = COCOeval(gt, gt.loadRes([dict(r) for r in saved]), "keypoints")
    evaluator.params.kpt_oks_sigmas = np.array(COCO_SIGMAS)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert metrics["AP"] == pytest.approx(max(evaluator.stats[0], 0.0)) and metrics["AR"] == pytest.approx(
        max(evaluator.stats[5], 0.0))


# ---------------------------------------------------------------------------------------------------------
# parity

def test_parity_of_torch_ort_and_openvino_passes(tiny, tmp_path):
    pytest.importorskip("openvino")
    result = invoke("parity", tiny.checkpoint, "--backends", "torch,ort-cpu,openvino", "--onnx", tiny.paths["portable"],
                    "--inputs", DATA / "coco", "--ann", COCO_ANN, "--crops", 4, "--save-io", tmp_path / "io",
                    "--json", tmp_path / "report.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {r["label"]: r for r in report["rows"]}
    assert set(rows) == {"torch eager fp32", "ort-cpu portable fp32", "openvino portable fp32"}
    for row in rows.values():
        assert row["status"] == "ok"
        assert row["measures"]["max_abs_error_over_max_ref"] <= 1e-4 and row["measures"]["argmax_agreement"] == 1
        assert row["AP_delta"] == pytest.approx(0.0, abs=1e-9)
    assert report["input_shape"][0] == 4 and report["inputs"] == f"4 crops of {DATA / 'coco'}"
    # replay the saved inputs and reference: same numbers without recomputing the reference
    replay = invoke("parity", tiny.checkpoint, "--backends", "ort-cpu", "--onnx", tiny.paths["portable"],
                    "--load-io", tmp_path / "io", "--json", tmp_path / "replay.json")
    assert replay.exit_code == 0, replay.output
    again = json.loads((tmp_path / "replay.json").read_text())["rows"][0]["measures"]
    assert again == pytest.approx(rows["ort-cpu portable fp32"]["measures"])
    # the custom form on OpenVINO, through the ssmpose extension
    custom = invoke("parity", tiny.checkpoint, "--backends", "openvino", "--onnx", tiny.paths["custom"],
                    "--load-io", tmp_path / "io", "--json", tmp_path / "custom.json")
    assert custom.exit_code == 0, custom.output
    row = json.loads((tmp_path / "custom.json").read_text())["rows"][0]
    assert row["label"] == "openvino custom fp32" and row["status"] == "ok"
    assert row["measures"]["max_abs_error_over_max_ref"] <= 1e-4


def test_parity_fails_on_a_perturbed_weight_and_localizes_it(tiny, tmp_path):
    model = onnx.load(str(tiny.paths["custom"]))
    consumers = {}
    for index, node in enumerate(model.graph.node):
        for name in node.input:
            consumers.setdefault(name, (index, node))
    weights = [t for t in model.graph.initializer if t.name in consumers and len(t.dims) == 4]
    target = weights[len(weights) // 2]                                  # a convolution weight mid-network
    array = onnx.numpy_helper.to_array(target).copy()
    array += 0.5 * array.std() + 0.01
    target.CopyFrom(onnx.numpy_helper.from_array(array, target.name))
    perturbed = tmp_path / "perturbed.onnx"
    onnx.save(model, str(perturbed))
    # the reference export of the checkpoint, where parity's export cache looks for it
    reference_model = ssmpose.load_checkpoint(tiny.checkpoint)
    cache = tmp_path / "exports"
    cache.mkdir()
    shutil.copy(tiny.paths["custom"], cache / export_cache_name(reference_model, "custom", "float32",
                                                                weights_fingerprint(reference_model)))
    result = invoke("parity", tiny.checkpoint, "--backends", "ort-cpu", "--onnx", perturbed, "--localize",
                    "--export-dir", cache, "--json", tmp_path / "report.json")
    assert result.exit_code == 1, result.output
    assert "parity failed: ort-cpu custom fp32: fp32_max_abs_error_over_max_ref" in result.output
    row = json.loads((tmp_path / "report.json").read_text())["rows"][0]
    expected_index, expected_node = consumers[target.name]
    assert row["localized"]["diverged"] and row["localized"]["node"] == expected_node.name
    assert row["localized"]["index"] == expected_index and f"{target.name} (initializer)" in row["localized"]["inputs"]
    assert f"first divergent node: {expected_node.name} ({expected_node.op_type}" in result.output
    assert len(list(cache.iterdir())) == 1                               # the cached reference was reused


# ---------------------------------------------------------------------------------------------------------
# bad input: one clear line, exit code 2, no traceback

def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_inputs_get_one_clear_line(tiny, tmp_path):
    ckpt = tiny.checkpoint
    _one_line_error(invoke("infer", ckpt, tmp_path / "missing.jpg"), "missing.jpg does not exist")
    (tmp_path / "empty").mkdir()
    _one_line_error(invoke("infer", ckpt, tmp_path / "empty"), "holds no images")
    other = tmp_path / "other_det.json"
    other.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 1.0}]))
    _one_line_error(invoke("infer", ckpt, DATA / "coco", "--boxes", other, "--out", tmp_path),
                    "boxes file names none of the 4 image(s)")
    _one_line_error(invoke("eval", "--ann", COCO_DET, "--results", COCO_DET), "test_coco_det_AP_H_56.json is not a "
                    "COCO keypoint annotation file")
    _one_line_error(invoke("infer", ckpt, DATA / "coco", "--ann", DATA / "mpii" / "test_mpii.json"),
                    "is not a COCO keypoint annotation file")
    _one_line_error(invoke("infer", ckpt, DATA / "coco", "--backend", "tensorrt"), "backend tensorrt is not available")
    _one_line_error(invoke("infer", "no_such_model", DATA / "coco"), "neither a registered model name")
    _one_line_error(invoke("eval", tiny.checkpoint, "--ann", DATA / "mpii" / "test_mpii.json", "--images",
                           DATA / "mpii"), "the model predicts 17 keypoints", "annotates 16")
    _one_line_error(invoke("parity", tiny.paths["custom"]), "parity needs the PyTorch model")
    _one_line_error(invoke("infer", tiny.paths["custom"], DATA / "coco", "--device", "cpu"),
                    "--device applies to the torch backend; ort-cpu chooses its device by name")
    if not torch.cuda.is_available():
        _one_line_error(invoke("infer", ckpt, DATA / "coco", "--device", "cuda"), "torch sees no CUDA device")
