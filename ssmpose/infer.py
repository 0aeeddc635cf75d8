"""`ssmpose infer`: the top-down pipeline over an image, a folder of images or a video.

Writes DIR/results.json (COCO keypoint results, plus `file_name`, and `frame` for videos), an overlay per image
(DIR/<name>.jpg) or an overlay video (DIR/<name>.mp4). An image or frame that cannot be read is reported,
skipped and listed in the report's `failed`.

A video model (metadata `num_frames` T > 1) reads a video, or a folder of frames in file-name order, through a
sliding window of T frames (topdown.frame_windows): the result of a frame comes out when the frames after it
are read, and the ends of the video repeat the first or last frame. A frame that cannot be decoded is left out
of the windows (its neighbours take its place).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from .draw import draw_instances
from .training.annotations import CocoKeypoints, read_detections
from .training.topdown import TopDownEstimator, frame_windows

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
MAX_BAD_FRAMES_IN_A_ROW = 10


@dataclass
class InferReport:
    source: str
    kind: str                                   # "images" or "video"
    results: List[dict] = field(default_factory=list)
    outputs: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)     # (input, reason)
    without_boxes: List[str] = field(default_factory=list)          # images the boxes/annotations do not cover
    processed: int = 0


def collect_images(source) -> Tuple[str, List[Path]]:
    """SOURCE -> ("images", sorted image files) or ("video", [file]); clear errors for what cannot be used."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return "images", files
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video", [path]
    if suffix in IMAGE_SUFFIXES:
        return "images", [path]
    raise ValueError(f"input {path}: not an image ({', '.join(IMAGE_SUFFIXES)}) or a video "
                     f"({', '.join(VIDEO_SUFFIXES)})")


class BoxLookup:
    """Boxes for an image file: detections (--boxes), ground-truth boxes (--ann), or the whole image."""

    def __init__(self, boxes_file=None, ann_file=None, box_threshold: float = 0.0):
        self.annotations = CocoKeypoints(ann_file) if ann_file else None
        self.detections: Optional[Dict[str, object]] = None
        if boxes_file:
            per_image = read_detections(boxes_file, self.annotations, score_threshold=box_threshold)
            self.detections = {Path(b.file_name).name: b for b in per_image.values()}

    @property
    def given(self) -> bool:
        return self.annotations is not None or self.detections is not None

    def covers(self, name: str) -> bool:
        if self.detections is not None:
            return name in self.detections or (self.annotations is not None and
                                               self.annotations.image_for_file(name) is not None)
        return self.annotations is None or self.annotations.image_for_file(name) is not None

    def lookup(self, path: Path):
        """(image_id, boxes or None, scores or None) for one image."""
        name = path.name
        if self.detections is not None:
            found = self.detections.get(name)
            if found is not None:
                return found.image_id, found.boxes, found.scores
            image_info = self.annotations.image_for_file(name) if self.annotations else None
            return (image_info["id"] if image_info else _image_id(path)), np.zeros((0, 4)), np.zeros(0)
        if self.annotations is not None:
            gt = self.annotations.ground_truth_boxes(self.annotations.image_for_file(name))
            return gt.image_id, gt.boxes, gt.scores
        return _image_id(path), None, None


def _image_id(path: Path):
    return int(path.stem) if path.stem.isdigit() else path.stem


def run_infer(estimator: TopDownEstimator, source, out_dir, boxes_file=None, ann_file=None, box_threshold: float = 0.0,
              score_threshold: float = 0.3, draw: bool = True, progress: bool = True) -> InferReport:
    kind, files = collect_images(source)
    frames = estimator.config.num_frames
    if frames > 1 and kind == "images" and Path(source).is_file():
        raise ValueError(f"{source} is a single image; {estimator.session.metadata.get('model', 'the model')} is a "
                         f"video model ({frames} frames a clip): give it a video or a folder of frames")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = InferReport(str(source), kind)
    if kind == "video":
        if ann_file:
            raise ValueError(f"{source} is a video: --ann gives boxes per image file, not per frame; use --boxes "
                             f"(detections whose image_id is the frame number, 0 first), or run on the extracted "
                             f"frames")
        detections = read_detections(boxes_file, score_threshold=box_threshold) if boxes_file else None
        _infer_video(estimator, files[0], out_dir, report, detections, score_threshold, draw, progress)
    else:
        boxes = BoxLookup(boxes_file, ann_file, box_threshold)
        _infer_images(estimator, files, out_dir, report, boxes, score_threshold, draw, progress)
    _write_json(out_dir / "results.json", report.results)
    report.outputs.insert(0, str(out_dir / "results.json"))
    return report


def _model_inputs(estimator, frames: Iterator[tuple]) -> Iterator[tuple]:
    """(key, frame) in order -> (key, frame, model input): the frame itself, or for a video model the clip of
    frames around it (topdown.frame_windows: delayed until the frames after it are read)."""
    if estimator.config.num_frames == 1:
        for key, frame in frames:
            yield key, frame, frame
        return
    centre = estimator.config.center_frame
    for key, clip in frame_windows(frames, estimator.config.num_frames):
        yield key, clip[centre], clip


def _infer_images(estimator, files, out_dir, report, boxes: BoxLookup, score_threshold, draw, progress):
    all_files = files
    if boxes.given:
        covered = [p for p in files if boxes.covers(p.name)]
        if not covered:
            what = "boxes file" if boxes.detections is not None else "annotation file"
            raise ValueError(f"the {what} names none of the {len(files)} image(s) in {report.source} "
                             f"(images are matched by file name)")
        report.without_boxes = [str(p) for p in files if p not in covered]
        files = covered
    category_id = boxes.annotations.category.get("id", 1) if boxes.annotations else 1
    if boxes.annotations is not None and len(boxes.annotations.keypoint_names) != estimator.config.num_keypoints:
        raise ValueError(f"the model predicts {estimator.config.num_keypoints} keypoints, {boxes.annotations.name} "
                         f"annotates {len(boxes.annotations.keypoint_names)}")

    def readable(paths) -> Iterator[tuple]:
        for path in paths:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                report.failed.append((str(path), "could not be read as an image"))
                continue
            yield path, image

    def items() -> Iterator[tuple]:
        # a video model windows over every frame of the folder, and predicts those the boxes cover
        covered = set(files)
        for path, image, model_input in _model_inputs(estimator, readable(all_files if windowed else files)):
            if path in covered:
                image_id, box_array, scores = boxes.lookup(path)
                yield (path, image, image_id), model_input, box_array, scores

    windowed = estimator.config.num_frames > 1
    bar = tqdm(total=len(files), desc="images", unit="img", disable=not progress or len(files) < 2)
    for (path, image, image_id), instances in estimator.estimate_many(items()):
        for inst in instances:
            report.results.append({**inst.to_coco(image_id, category_id), "file_name": path.name})
        if draw:
            overlay = out_dir / f"{path.stem}.jpg"
            cv2.imwrite(str(overlay), draw_instances(image, instances, estimator.config.skeleton, score_threshold))
            report.outputs.append(str(overlay))
        report.processed += 1
        bar.update(1)
    bar.update(len(files) - bar.n)
    bar.close()


def _infer_video(estimator, path: Path, out_dir, report, detections, score_threshold, draw, progress):
    """`detections`: None (every frame is one box) or {frame number: ImageBoxes} (read_detections of a file
    whose image_id is the frame number); a frame without detections has no instances."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"{path} could not be opened as a video")
    frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    writer = None

    def frames() -> Iterator[tuple]:
        index, failures_in_a_row = 0, 0
        while frame_count <= 0 or index < frame_count:
            ok, frame = capture.read()
            if ok and frame is not None:
                failures_in_a_row = 0
                yield index, frame
            elif frame_count <= 0:
                return
            else:
                report.failed.append((f"{path.name} frame {index}", "could not be decoded"))
                failures_in_a_row += 1
                if failures_in_a_row >= MAX_BAD_FRAMES_IN_A_ROW:
                    report.failed.append((f"{path.name} frames {index + 1}-{frame_count - 1}",
                                          "not read: the stream stopped decoding"))
                    return
            index += 1

    def items() -> Iterator[tuple]:
        for index, frame, model_input in _model_inputs(estimator, frames()):
            if detections is None:
                yield (index, frame), model_input, None, None
            else:
                found = detections.get(index)
                yield ((index, frame), model_input, np.zeros((0, 4)) if found is None else found.boxes,
                       np.zeros(0) if found is None else found.scores)

    bar = tqdm(total=frame_count or None, desc=path.name, unit="frame", disable=not progress)
    try:
        for (index, frame), instances in estimator.estimate_many(items()):
            for inst in instances:
                report.results.append({**inst.to_coco(index), "file_name": path.name, "frame": index})
            if draw:
                if writer is None:
                    h, w = frame.shape[:2]
                    video_out = out_dir / f"{path.stem}.mp4"
                    writer = cv2.VideoWriter(str(video_out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                    if not writer.isOpened():
                        raise ValueError(f"OpenCV cannot write the overlay video {video_out}")
                    report.outputs.append(str(video_out))
                writer.write(draw_instances(frame, instances, estimator.config.skeleton, score_threshold))
            report.processed += 1
            bar.update(1)
    finally:
        bar.close()
        capture.release()
        if writer is not None:
            writer.release()
    if report.processed == 0:
        raise ValueError(f"{path}: no frame could be decoded")


def _write_json(path: Path, data) -> None:
    temporary = path.with_suffix(".json.tmp")
    with open(temporary, "w") as f:
        json.dump(data, f)
    os.replace(temporary, path)
