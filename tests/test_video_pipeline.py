"""Video (multi-frame) models through the pipeline: neighbour frames of PoseTrack18 annotations, clip crops,
the sliding window of `infer`, clip training data, and GLSMamba-B-LR (the smallest video model, 128x96) through
infer, eval, training, both export forms and parity, checked against computations written here from OpenCV,
NumPy and pycocotools."""
import contextlib
import io
import json

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
from ssmpose import runtimes
from ssmpose.checkpoint import save_checkpoint
from ssmpose.cli.main import main
from ssmpose.export import inspect_model, read_metadata
from ssmpose.export.inspect import format_report
from ssmpose.synth import make_synthetic_video_dataset
from ssmpose.training.annotations import CocoKeypoints
from ssmpose.training.codec import decode_heatmaps, flip_heatmaps_back
from ssmpose.training.data import TopDownDataset
from ssmpose.training.datasets import dataset_info, video_frame_paths
from ssmpose.training.topdown import (PipelineConfig, TopDownEstimator, box_to_center_scale, crop, crop_clip,
                                      frame_windows)
from ssmpose.training.transforms import AugmentConfig

POSETRACK = DATA / "posetrack18"
POSETRACK_ANN = POSETRACK / "annotations" / "test_posetrack18_val.json"
VIDEO_DIR = POSETRACK / "videos" / "000001_mpiinew_test"
VIDEO = VIDEO_DIR / "000001_mpiinew_test.mp4"
MODEL = ("glsmamba_blr", (128, 96))      # GLSMamba's smallest input: H a multiple of 128, W of 96
MEAN, STD = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _frames(count=5):
    return [cv2.imread(str(VIDEO_DIR / f"{i:06d}.jpg"), cv2.IMREAD_COLOR) for i in range(count)]


def _crop_by_hand(frame, box, input_size):
    """The model-input crop of `box` (padding 1.25, the input's aspect ratio), from the closed form of the
    unrotated warp: a uniform scale input width / box width about the box centre."""
    h, w = input_size
    x, y, bw, bh = box
    bw, bh = bw * 1.25, bh * 1.25
    bw, bh = (bw, bw * h / w) if bw > bh * w / h else (bh * w / h, bh)
    k = w / bw
    matrix = np.array([[k, 0, w / 2 - k * (x + box[2] / 2)], [0, k, h / 2 - k * (y + box[3] / 2)]])
    return cv2.warpAffine(frame, matrix, (w, h), flags=cv2.INTER_LINEAR)


def _normalise_by_hand(clips_bgr):
    """uint8 BGR (N, T, H, W, 3) -> float32 RGB normalised (N, T, 3, H, W), in float32 as the pipeline computes
    it (so that the model sees the same numbers)."""
    rgb = np.asarray(clips_bgr, dtype=np.float32)[..., ::-1]
    normalised = (rgb - MEAN.astype(np.float32)) / STD.astype(np.float32)
    return np.ascontiguousarray(normalised.transpose(0, 1, 4, 2, 3))


def _keypoints_by_hand(model, clips, centers, scales):
    """Image-pixel keypoints (N, K, 2) and scores (N, K) of the model on uint8 BGR clips (N, T, H, W, 3) of
    boxes with these centres/scales, in one batch (as the pipeline ran them)."""
    with torch.no_grad():
        heatmaps = model(torch.from_numpy(_normalise_by_hand(clips))).numpy()
    keypoints, scores = decode_heatmaps(heatmaps, MODEL[1])
    h, w = MODEL[1]
    scales = np.asarray(scales)[:, None]
    return keypoints / np.array([w, h]) * scales + np.asarray(centers)[:, None] - scales / 2, scores


# ---------------------------------------------------------------------------------------------------------
# neighbour frames

def test_neighbours_of_the_posetrack18_sample():
    data = json.loads(POSETRACK_ANN.read_text())
    assert len(data["images"]) == 3
    for image in data["images"]:
        # PoseTrack18's fields agree with the file naming: frame_id = 10000 * (1000000 + video) + frame number
        number = int(image["file_name"].rsplit("/", 1)[1].split(".")[0])
        assert image["frame_id"] == 10000 * (1000000 + int(image["vid_id"])) + number
        paths, replaced = video_frame_paths(image, POSETRACK, 5)
        centre = POSETRACK / image["file_name"]
        assert centre.is_file() and number == 0 and image["nframes"] > 3
        # frame 0: offsets -2 and -1 clip to frame 0 (the video's start); the sample holds only frame 0,
        # so frames 1 and 2 are missing and replaced by the nearest existing frame, frame 0 itself
        assert paths == [centre] * 5 and replaced == 2


def test_neighbours_clip_at_the_ends_of_a_real_five_frame_video():
    def frames_of(number, nframes=5):
        paths, replaced = video_frame_paths({"file_name": f"videos/000001_mpiinew_test/{number:06d}.jpg",
                                             "nframes": nframes}, POSETRACK, 5)
        assert all(p.is_file() for p in paths)
        return [int(p.stem) for p in paths], replaced

    assert frames_of(2) == ([0, 1, 2, 3, 4], 0)
    assert frames_of(0) == ([0, 0, 0, 1, 2], 0)
    assert frames_of(1) == ([0, 0, 1, 2, 3], 0)
    assert frames_of(4) == ([2, 3, 4, 4, 4], 0)
    assert frames_of(4, nframes=7) == ([2, 3, 4, 4, 4], 2)     # frames 5 and 6 belong to the video, not on disk
    assert video_frame_paths({"file_name": "videos/000001_mpiinew_test/000002.jpg", "nframes": 5}, POSETRACK,
                             3)[0] == [VIDEO_DIR / f"{i:06d}.jpg" for i in (1, 2, 3)]
    with pytest.raises(ValueError, match="nframes"):
        video_frame_paths({"file_name": "videos/000001_mpiinew_test/000002.jpg"}, POSETRACK, 5)
    with pytest.raises(ValueError, match="not a frame number"):
        video_frame_paths({"file_name": "coco/person.jpg", "nframes": 5}, DATA, 5)


# ---------------------------------------------------------------------------------------------------------
# clips and windows

@pytest.mark.parametrize("box", [(300, 60, 250, 500), (-40, 200, 700, 300)], ids=["tall", "wide-off-image"])
def test_clip_crops_are_the_same_box_cropped_from_every_frame(box):
    frames = _frames()
    center, scale = box_to_center_scale(box, 96 / 128)
    clip = crop_clip(frames, center, scale, (128, 96))
    assert clip.shape == (5, 128, 96, 3) and clip.dtype == np.uint8
    for t, frame in enumerate(frames):
        by_hand = _crop_by_hand(frame, box, (128, 96)).astype(int)
        assert np.abs(clip[t].astype(int) - by_hand).max() <= 1          # float32 vs float64 matrix
        assert np.array_equal(clip[t], crop(frame, center, scale, (128, 96)))
        rotated = crop_clip(frames, center, scale, (128, 96), rotation=30.0)[t]
        assert np.array_equal(rotated, crop(frame, center, scale, (128, 96), rotation=30.0))
    assert not np.array_equal(clip[0], clip[4])                           # the frames differ: a real video
    config = PipelineConfig((128, 96), tuple(MEAN), tuple(STD), "RGB", 17, tuple(range(17)), num_frames=5)
    assert config.input_shape == (5, 3, 128, 96) and config.center_frame == 2
    np.testing.assert_allclose(config.normalize([clip, clip[::-1]]), _normalise_by_hand([clip, clip[::-1]]),
                               atol=1e-6)


@pytest.mark.parametrize("num_frames", [1, 3, 4, 5])
@pytest.mark.parametrize("length", [1, 2, 7])
def test_frame_windows_repeat_the_first_and_last_frame(num_frames, length):
    read = []

    def stream():
        for i in range(length):
            read.append(i)
            yield f"key{i}", i

    before = num_frames // 2
    for position, (key, clip) in enumerate(frame_windows(stream(), num_frames)):
        assert key == f"key{position}"
        assert clip == [min(max(position + d, 0), length - 1) for d in range(-before, num_frames - before)]
        # the clip of a frame waits for the frames after it, and no longer
        assert len(read) == min(position + num_frames - before, length)
    assert position == length - 1


def test_a_video_model_refuses_single_images(video_model):
    estimator = TopDownEstimator(runtimes.load(video_model, "torch"))
    assert estimator.config.num_frames == 5
    frames = _frames()
    with pytest.raises(ValueError, match=r"video model: it takes clips of 5 frames.*single image \(720, 1280, 3\)"):
        estimator.estimate(frames[0])
    with pytest.raises(ValueError, match="takes clips of 5 frames, got 3 frames"):
        estimator.estimate(frames[:3])
    with pytest.raises(ValueError, match="frame 1 of the clip: expected an 8-bit BGR image"):
        estimator.estimate([frames[0], frames[1].astype(np.float32)] + frames[2:])


def test_flip_test_mirrors_every_frame(video_model):
    estimator = TopDownEstimator(runtimes.load(video_model, "torch"), flip_test=True)
    clips = np.random.default_rng(5).standard_normal((2, 5, 3, 128, 96)).astype(np.float32)
    mirrored = np.ascontiguousarray(np.flip(clips, axis=4))          # every frame, left-right
    assert not np.array_equal(mirrored[:, 0], mirrored[:, 1])
    with torch.no_grad():
        plain = video_model(torch.from_numpy(clips)).numpy()
        flipped = video_model(torch.from_numpy(mirrored)).numpy()
    flip = dataset_info("coco").flip_indices
    expected = 0.5 * (plain + flip_heatmaps_back(flipped, flip))
    np.testing.assert_allclose(estimator.heatmaps(clips), expected, rtol=1e-5, atol=1e-7)


def test_sessions_check_the_clip_shape(video_model):
    session = runtimes.load(video_model, "torch")
    assert tuple(session.input_spec.shape) == (None, 5, 3, 128, 96)
    with pytest.raises(ValueError, match=r"must be clips of 5 frames \('B', 5, 3, 128, 96\), got shape \(1, 3, 128"):
        session.run(np.zeros((1, 3, 128, 96), np.float32))
    with pytest.raises(ValueError, match=r"axis 1 is 4, expected 5"):
        session.run(np.zeros((1, 4, 3, 128, 96), np.float32))


# ---------------------------------------------------------------------------------------------------------
# synthetic clips and training data

@pytest.fixture(scope="module")
def synthetic_clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_clips")
    summary = make_synthetic_video_dataset(root, n=5, frames=5, val_fraction=0.2, seed=2, image_size=(192, 256))
    return root, summary


def test_synthetic_clips_are_posetrack_layout_videos_of_moving_figures(synthetic_clips):
    root, summary = synthetic_clips
    assert summary["splits"]["train"]["videos"] == 4 and summary["splits"]["val"]["images"] == 5
    data = json.loads((root / "annotations" / "train.json").read_text())
    assert len(data["images"]) == 20
    for image in data["images"]:
        assert cv2.imread(str(root / "images" / "train" / image["file_name"])).shape == (192, 256, 3)
        number = int(image["file_name"].split("/")[1].split(".")[0])
        assert image["nframes"] == 5 and image["is_labeled"] is True
        assert image["id"] == image["frame_id"] == 10000 * (1000000 + int(image["vid_id"])) + number
    paths, replaced = video_frame_paths(data["images"][0], root / "images" / "train", 5)
    assert [p.name for p in paths] == ["000000.jpg"] * 3 + ["000001.jpg", "000002.jpg"] and replaced == 0
    with_ids = {a["image_id"]: a for a in data["annotations"]}
    first, last = with_ids.get(data["images"][0]["id"]), with_ids.get(data["images"][4]["id"])
    assert first is not None and last is not None
    assert np.abs(np.subtract(first["keypoints"], last["keypoints"])).max() > 1.0     # the figures move
    COCO(str(root / "annotations" / "train.json"))                                   # pycocotools reads it


def test_clip_samples_share_one_augmented_box(synthetic_clips):
    """Each frame of a training clip is the annotated frame's augmented box (flip, half body, shift, scale,
    rotation) cropped from that frame; the annotated frame's crop and targets are the single-image dataset's."""
    root, _ = synthetic_clips
    args = dict(ann_file=root / "annotations" / "train.json", image_dir=root / "images" / "train",
                input_size=(128, 96), augment=AugmentConfig(flip_prob=0.5, rotate_prob=1.0), seed=4)
    clips, single = TopDownDataset(**args, num_frames=5), TopDownDataset(**args)
    assert len(clips) == len(single) > 4 and clips.replaced_frames == 0
    seen_flip = False
    for index in range(4):
        s, one = clips.sample(index), single.sample(index)
        assert s["crop"].shape == (5, 128, 96, 3)
        assert np.array_equal(s["crop"][2], one["crop"]) and np.array_equal(s["keypoints"], one["keypoints"])
        seen_flip |= s["flipped"]
        for t, path in enumerate(clips.instances[index].frame_paths):
            frame = cv2.imread(str(path))
            if s["flipped"]:
                frame = frame[:, ::-1]
            expected = crop(np.ascontiguousarray(frame), s["center"], s["scale"], (128, 96), s["rotation"])
            assert np.array_equal(s["crop"][t], expected)
        item, item_one = clips[index], single[index]
        assert tuple(item["image"].shape) == (5, 3, 128, 96)
        assert torch.equal(item["image"][2], item_one["image"]) and torch.equal(item["heatmaps"], item_one["heatmaps"])
    assert seen_flip


def test_single_image_annotations_are_refused_for_clips(video_model, tmp_path):
    with pytest.raises(ValueError, match="no usable instance.*nframes"):
        TopDownDataset(DATA / "coco" / "test_coco.json", DATA / "coco", input_size=(128, 96), num_frames=5)
    with pytest.raises(ValueError, match="MPII JSON"):
        TopDownDataset(DATA / "mpii" / "test_mpii.json", DATA / "mpii", input_size=(128, 96), num_frames=5)
    result = invoke("eval", video_model.meta["model"], "--ann", DATA / "coco" / "test_coco.json", "--images",
                    DATA / "coco", "--device", "cpu")
    assert result.exit_code == 2 and "000000000785.jpg: a video model needs the length of the video" in result.output


# ---------------------------------------------------------------------------------------------------------
# GLSMamba-B-LR end to end

@pytest.fixture(scope="session")
def video_checkpoint(tmp_path_factory):
    """glsmamba_blr at 128x96 with seeded weights, saved as a checkpoint (no export)."""
    torch.manual_seed(3)
    model = ssmpose.build_model(*MODEL[:1], input_size=MODEL[1]).eval()
    return save_checkpoint(model, tmp_path_factory.mktemp("glsmamba") / "glsmamba_blr.safetensors")


@pytest.fixture(scope="session")
def video_model(video_checkpoint):
    return ssmpose.load_checkpoint(video_checkpoint).eval()


@pytest.fixture(scope="module")
def video_exports(exported):
    """Both forms of glsmamba_blr, traced once per test session (conftest's `exported`)."""
    return exported(*MODEL)


@pytest.mark.parametrize("source", ["mp4", "frame folder"])
def test_infer_keeps_a_window_of_five_frames(video_checkpoint, video_model, source, tmp_path):
    """`ssmpose infer` on the 5-frame video (its mp4, or its folder of jpgs): every frame's result is the
    model's on the clip of the frames around it (repeating the first and last), assembled here from the
    decoded frames."""
    path = VIDEO if source == "mp4" else VIDEO_DIR
    result = invoke("infer", video_checkpoint, path, "--out", tmp_path, "--device", "cpu", "--batch", 5)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    if source == "mp4":
        capture = cv2.VideoCapture(str(VIDEO))
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
        assert [r["frame"] for r in results] == list(range(5))
        assert int(cv2.VideoCapture(str(tmp_path / VIDEO.name)).get(cv2.CAP_PROP_FRAME_COUNT)) == 5   # overlay
    else:
        frames = _frames()
        assert [r["file_name"] for r in results] == [f"{i:06d}.jpg" for i in range(5)]
        assert sorted(p.name for p in tmp_path.glob("*.jpg")) == [f"{i:06d}.jpg" for i in range(5)]
    assert len(frames) == 5
    height, width = frames[0].shape[:2]
    center, scale = box_to_center_scale([0, 0, width, height], 96 / 128)
    windows = [[frames[min(max(i + d, 0), 4)] for d in range(-2, 3)] for i in range(5)]
    clips = [[crop(frame, center, scale, MODEL[1]) for frame in window] for window in windows]
    keypoints, scores = _keypoints_by_hand(video_model, clips, [center] * 5, [scale] * 5)
    for r, kp, sc in zip(results, keypoints, scores):
        got = np.array(r["keypoints"]).reshape(17, 3)
        np.testing.assert_allclose(got[:, :2], kp, atol=1e-3)
        np.testing.assert_allclose(got[:, 2], sc, atol=1e-3)
        assert r["bbox"] == [0, 0, width, height]


def test_infer_on_a_video_with_boxes_per_frame(video_checkpoint, tmp_path):
    detections = [{"image_id": 1, "category_id": 1, "bbox": [500, 100, 200, 500], "score": 0.9},
                  {"image_id": 3, "category_id": 1, "bbox": [100, 100, 300, 400], "score": 0.8},
                  {"image_id": 3, "category_id": 1, "bbox": [600, 50, 300, 600], "score": 0.3}]
    (tmp_path / "det.json").write_text(json.dumps(detections))
    result = invoke("infer", video_checkpoint, VIDEO, "--boxes", tmp_path / "det.json", "--box-thr", 0.5,
                    "--out", tmp_path, "--device", "cpu", "--no-draw")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["frame"], r["bbox"]) for r in results] == [(1, [500, 100, 200, 500]), (3, [100, 100, 300, 400])]
    single = invoke("infer", video_checkpoint, VIDEO_DIR / "000000.jpg", "--out", tmp_path)
    assert single.exit_code == 2
    assert "is a video model (5 frames a clip): give it a video or a folder of frames" in single.output


def test_eval_on_the_posetrack18_sample_sees_the_clips(video_checkpoint, video_model, tmp_path):
    """`ssmpose eval` on the PoseTrack18 sample: each annotated person's prediction is the model's on its
    frame's clip (five copies of frame 0: the sample holds no other frame of its videos), and the metrics are
    pycocotools' on the saved results."""
    result = invoke("eval", video_checkpoint, "--ann", POSETRACK_ANN, "--images", POSETRACK, "--no-flip-test",
                    "--device", "cpu", "--batch", 16, "--save-results", tmp_path / "r.json",
                    "--json", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert "6 neighbour frame(s) of the annotated frames are not in the image folder" in result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["dataset"] == "posetrack18" and metrics["frames_replaced"] == 6 and metrics["num_frames"] == 5
    saved = json.loads((tmp_path / "r.json").read_text())

    annotations = CocoKeypoints(POSETRACK_ANN)
    keys, clips, centers, scales = [], [], [], []
    for image in annotations.images.values():
        frame = cv2.imread(str(POSETRACK / image["file_name"]))
        for box in annotations.ground_truth_boxes(image).boxes:
            center, scale = box_to_center_scale(box, 96 / 128)
            keys.append((image["id"], tuple(round(float(v), 2) for v in box)))
            clips.append([crop(frame, center, scale, MODEL[1])] * 5)
            centers.append(center)
            scales.append(scale)
    assert len(clips) == 14
    keypoints, _ = _keypoints_by_hand(video_model, clips, centers, scales)
    expected = dict(zip(keys, keypoints))
    assert 0 < len(saved) <= 14
    for r in saved:
        np.testing.assert_allclose(np.array(r["keypoints"]).reshape(17, 3)[:, :2],
                                   expected[(r["image_id"], tuple(r["bbox"]))], atol=1e-3)

    gt = json.loads(POSETRACK_ANN.read_text())
    for ann in gt["annotations"]:        # xtcocotools' area for files without one, as `ssmpose eval` documents
        ann["area"], ann["iscrowd"] = 0.53 * ann["bbox"][2] * ann["bbox"][3], int(ann["iscrowd"])
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes([{k: r[k] for k in ("image_id", "category_id", "keypoints", "score")}
                                                 for r in saved]), "keypoints")
        evaluator.params.kpt_oks_sigmas = np.array(dataset_info("posetrack18").sigmas)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert metrics["AP"] == pytest.approx(max(evaluator.stats[0], 0.0)) and metrics["AR"] == pytest.approx(
        max(evaluator.stats[5], 0.0))


def test_training_on_synthetic_clips(synthetic_clips, tmp_path):
    """`ssmpose train` runs glsmamba_blr for a few iterations on the synthetic clips (batches (2, 5, 3, 128, 96))
    and evaluates on the validation clips; the weights load and take clips."""
    root, _ = synthetic_clips
    config = tmp_path / "glsmamba_synth.toml"
    config.write_text('[model]\nname = "glsmamba_blr"\ninput_size = [128, 96]\n'
                      '[data]\ntrain_ann = "annotations/train.json"\ntrain_images = "images/train"\n'
                      'val_ann = "annotations/val.json"\nval_images = "images/val"\nworkers = 0\n'
                      '[train]\nbatch_size = 2\nlog_interval = 1\nwarmup_iters = 1\nepochs = 1\n'
                      '[eval]\nflip_test = false\n')
    result = invoke("train", config, "--data-root", root, "--work-dir", tmp_path / "run", "--max-iters", 3,
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
    evaluation = [r["eval"] for r in log if "eval" in r]
    assert len(evaluation) == 1 and evaluation[0]["num_frames"] == 5 and 0.0 <= evaluation[0]["AP"] <= 1.0
    model = ssmpose.load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert model.meta["num_frames"] == 5 and tuple(model.meta["input_size"]) == MODEL[1]


# ---------------------------------------------------------------------------------------------------------
# export and parity (one trace of both forms per session, about 40 s on 2 CPU cores; in CI, because GLSMamba's
# parity torch vs ort-cpu on its smallest variant is what issue #14 asks CI to show)

def test_exports_take_clips_and_record_num_frames(video_exports):
    for form, path in video_exports.paths.items():
        meta = read_metadata(path)
        assert meta["num_frames"] == 5 and meta["input_size"] == [128, 96] and meta["export_form"] == form
        report = inspect_model(path)
        assert report["inputs"][0]["shape"] == ["batch", 5, 3, 128, 96]
        assert report["outputs"][0]["shape"] == ["batch", 17, 32, 24]
        assert "images: float32 [batchx5x3x128x96]  (clips of 5 frames in time order; predicts frame 2)" \
            in format_report(report)
        assert onnx.load(str(path), load_external_data=False).graph.input[0].name == "images"
    assert "ssmpose" not in {n.domain for n in onnx.load(str(video_exports.paths["portable"])).graph.node}


def test_parity_of_clips_torch_vs_ort_cpu_custom_and_portable(video_exports, tmp_path):
    """`ssmpose parity` feeds the clips of the annotated PoseTrack18 persons to torch and to both exported
    forms on ONNX Runtime (CPU) and OpenVINO: within DESIGN.md's fp32 tolerance, the same AP."""
    backends = "torch,ort-cpu" + (",openvino" if "openvino" in runtimes.available_backends() else "")
    result = invoke("parity", video_exports.checkpoint, "--backends", backends,
                    "--onnx", video_exports.paths["custom"], "--onnx", video_exports.paths["portable"],
                    "--inputs", POSETRACK, "--ann", POSETRACK_ANN, "--crops", 4, "--device", "cpu",
                    "--save-io", tmp_path / "io", "--json", tmp_path / "report.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["input_shape"] == [4, 5, 3, 128, 96]
    rows = {r["label"]: r for r in report["rows"]}
    assert {"torch eager fp32", "ort-cpu custom fp32", "ort-cpu portable fp32"} <= set(rows)
    assert len(rows) in (3, 5)                                # and openvino custom / portable where installed
    for row in rows.values():
        assert row["status"] == "ok" and row["measures"]["max_abs_error_over_max_ref"] <= 1e-4
        assert row["AP_delta"] == pytest.approx(0.0, abs=1e-9)
    # the clips are the first four annotated persons' boxes, cropped from (copies of) their frame
    data = json.loads(POSETRACK_ANN.read_text())
    image = data["images"][0]
    frame = cv2.imread(str(POSETRACK / image["file_name"]))
    boxes = [a["bbox"] for a in data["annotations"] if a["image_id"] == image["id"]][:4]
    with np.load(tmp_path / "io" / "inputs.npz") as saved:
        for clip, box in zip(saved["images"], boxes):
            x1, y1 = max(box[0], 0), max(box[1], 0)
            x2, y2 = min(box[0] + box[2], image["width"] - 1), min(box[1] + box[3], image["height"] - 1)
            by_hand = _normalise_by_hand([[_crop_by_hand(frame, [x1, y1, x2 - x1, y2 - y1], MODEL[1])] * 5])[0]
            assert np.abs(clip - by_hand).max() < 0.05          # one grey level of a 1-pixel rounding at most
    # whole-frame clips of the real video (five different frames) through the same check
    video = invoke("parity", video_exports.checkpoint, "--backends", "ort-cpu", "--onnx",
                   video_exports.paths["custom"], "--inputs", VIDEO, "--json", tmp_path / "video.json")
    assert video.exit_code == 0, video.output
    row = json.loads((tmp_path / "video.json").read_text())["rows"][0]
    assert row["status"] == "ok" and row["measures"]["max_abs_error_over_max_ref"] <= 1e-4
    assert json.loads((tmp_path / "video.json").read_text())["input_shape"] == [5, 5, 3, 128, 96]
