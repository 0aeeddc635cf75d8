"""`ssmpose parity`: the same crops through every backend, compared with PyTorch fp32 (DESIGN.md §7).

Runners produce heatmaps; `runtimes.parity` turns two of them into measures; this module checks the
measures against tolerances, and saves or replays inputs and outputs (`--save-io` / `--load-io`), so that
a reference computed on one machine can judge a runtime on another.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import runtimes
from .model_source import is_onnx_file, load_torch_model
from .runtimes import parity
from .training.datasets import match_dataset
from .training.topdown import PipelineConfig, box_to_center_scale, crop, crop_clip, to_image_coordinates

ONNX_BACKENDS = ("ort-cpu", "ort-cuda", "openvino", "tensorrt")
DEFAULT_TOLERANCES = {"fp32_max_abs_error_over_max_ref": 1e-4, "fp16_mean_keypoint_displacement_px": 0.5}
# --localize: a node diverges when max|candidate - reference| exceeds this fraction of max|reference|.
LOCALIZE_TOLERANCE = {"float32": 1e-3, "float16": 3e-2}


@dataclass
class ParityInputs:
    """Normalised crops (N, 3, H, W), or clips (N, T, 3, H, W) for a video model, and, for crops of annotated
    images, where each crop came from."""

    images: np.ndarray
    source: str
    image_ids: List = field(default_factory=list)
    centers: Optional[np.ndarray] = None
    scales: Optional[np.ndarray] = None
    box_scores: Optional[np.ndarray] = None


def random_inputs(config: PipelineConfig, count: int = 4, seed: int = 0) -> ParityInputs:
    images = np.random.default_rng(seed).standard_normal((count, *config.input_shape)).astype(np.float32)
    return ParityInputs(images, f"random normal, seed {seed}")


def image_inputs(config: PipelineConfig, image_dir, ann_file=None, max_crops: int = 64) -> ParityInputs:
    """Crops of the images in `image_dir`: one per annotated person when `ann_file` is given (its boxes,
    as eval uses them), else the whole image. A video model gets clips (`clip_inputs`)."""
    import cv2

    from .infer import BoxLookup, collect_images
    if config.num_frames > 1:
        return clip_inputs(config, image_dir, ann_file, max_crops)
    kind, files = collect_images(image_dir)
    if kind != "images":
        raise ValueError(f"--inputs {image_dir}: expected a folder of images, got a video")
    boxes = BoxLookup(ann_file=ann_file)
    h, w = config.input_size
    crops, ids, centers, scales, scores = [], [], [], [], []
    for path in files:
        if ann_file and not boxes.covers(path.name):
            continue
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"--inputs: {path} could not be read as an image")
        image_id, box_array, box_scores = boxes.lookup(path)
        if box_array is None:
            box_array, box_scores = np.array([[0, 0, image.shape[1], image.shape[0]]]), np.ones(1)
        for box, score in zip(box_array, box_scores):
            center, scale = box_to_center_scale(box, w / h)
            crops.append(crop(image, center, scale, (h, w)))
            ids.append(image_id)
            centers.append(center)
            scales.append(scale)
            scores.append(score)
    if not crops:
        raise ValueError(f"--inputs {image_dir}: no crops (no image matches the annotation file)")
    crops, ids = crops[:max_crops], ids[:max_crops]
    n = len(crops)
    return ParityInputs(config.normalize(crops), f"{n} crops of {image_dir}", ids, np.array(centers[:n]),
                        np.array(scales[:n]), np.array(scores[:n]))


def clip_inputs(config: PipelineConfig, source, ann_file=None, max_crops: int = 64) -> ParityInputs:
    """Clips for a video model: with `ann_file` (PoseTrack18 format), one per annotated person of each labelled
    frame, its box cropped from the frames around it (`source` is the image root, as eval's --images);
    without, the whole-frame clips of a video or a folder of frames (`source`), in the sliding window infer
    uses."""
    from .evaluate import read_model_input
    from .infer import collect_images
    from .training.annotations import CocoKeypoints
    from .training.topdown import frame_windows
    h, w = config.input_size
    crops, ids, centers, scales, scores = [], [], [], [], []

    def add(frames, box, score, image_id):
        center, scale = box_to_center_scale(box, w / h)
        crops.append(crop_clip(frames, center, scale, (h, w)))
        ids.append(image_id)
        centers.append(center)
        scales.append(scale)
        scores.append(score)

    if ann_file:
        annotations = CocoKeypoints(ann_file)
        root = Path(source)
        for image in annotations.images.values():
            if len(crops) >= max_crops:
                break
            if image.get("is_labeled", True) is False or not (root / image["file_name"]).is_file():
                continue
            clip, _ = read_model_input(image, root, config.num_frames)
            boxes = annotations.ground_truth_boxes(image)
            for box, score in zip(boxes.boxes, boxes.scores):
                add(clip, box, score, image["id"])
        if not crops:
            raise ValueError(f"--inputs {source}: no annotated frame of {ann_file} is in this folder (for a video "
                             f"model --inputs is the image root of the annotations' file names, as eval's --images)")
        what = f"clips of the annotated persons of {ann_file} in {source}"
    else:
        kind, files = collect_images(source)
        frames = _video_frames(files[0]) if kind == "video" else _image_frames(files)
        for key, clip in frame_windows(frames, config.num_frames):
            if len(crops) >= max_crops:
                break
            centre = clip[config.center_frame]
            add(clip, [0, 0, centre.shape[1], centre.shape[0]], 1.0, key)
        what = f"whole-frame clips of {source}"
    crops, n = crops[:max_crops], min(len(crops), max_crops)
    return ParityInputs(config.normalize(crops), f"{n} {what} ({config.num_frames} frames)", ids[:n],
                        np.array(centers[:n]), np.array(scales[:n]), np.array(scores[:n]))


def _image_frames(files):
    import cv2
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"--inputs: {path} could not be read as an image")
        yield path.stem, image


def _video_frames(path):
    import cv2
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"--inputs: {path} could not be opened as a video")
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                return
            yield index, frame
            index += 1
    finally:
        capture.release()


@dataclass
class Candidate:
    backend: str
    form: str          # "eager", "custom" or "portable"
    dtype: str         # "float32" or "float16"
    path: Optional[str] = None

    @property
    def label(self) -> str:
        return f"{self.backend} {self.form} {'fp16' if self.dtype == 'float16' else 'fp32'}"


def plan_candidates(backends: Sequence[str], forms: Sequence[str], fp16: bool, onnx_files: Sequence[str]) -> list:
    """(backend, form, dtype) rows to run: every ONNX backend with every form (or with the given files),
    fp32 and, with `fp16`, fp16 too; `torch` as itself in the same precisions."""
    from .export import read_metadata
    dtypes = ["float32", "float16"] if fp16 else ["float32"]
    given = []
    for path in onnx_files:
        meta = read_metadata(path)
        given.append(Candidate("", meta.get("export_form", "custom"), meta.get("dtype", "float32"), str(path)))
    rows = []
    for backend in backends:
        if backend not in runtimes.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(runtimes.BACKENDS)}")
        if backend == "torch":
            rows += [Candidate("torch", "eager", d) for d in dtypes]
        elif given:
            rows += [Candidate(backend, c.form, c.dtype, c.path) for c in given]
        else:
            rows += [Candidate(backend, form, d) for form in forms for d in dtypes]
    return rows


def export_cache_name(module, form: str, dtype: str, weights_id: str) -> str:
    """File name of a cached export: the model, size and weights, and what the exporter's defaults make of them
    (op version, scan lowering, package version), so that a cache made by another version is not reused."""
    from .export.exporter import DEFAULT_OP_VERSION
    from .custom_ops.portable import DEFAULT_CHUNK, DEFAULT_SCAN_LOWERING
    from ._version import __version__
    h, w = module.meta["input_size"]
    settings = hashlib.sha256(f"{__version__}|{DEFAULT_OP_VERSION}|{DEFAULT_SCAN_LOWERING}|{DEFAULT_CHUNK}".encode())
    return (f"{module.meta['model']}_{h}x{w}_{weights_id}_{settings.hexdigest()[:8]}_{form}"
            f"{'_fp16' if dtype == 'float16' else ''}.onnx")


def weights_fingerprint(module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def ensure_exports(module, candidates: list, export_dir: Path, log=print) -> Dict[tuple, str]:
    """Export (once, cached in `export_dir` by weights fingerprint) every (form, dtype) the candidates need."""
    from .export import export_forms
    weights_id = weights_fingerprint(module)
    needed = sorted({(c.form, c.dtype) for c in candidates if c.backend != "torch"})
    export_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for dtype in ("float32", "float16"):
        forms = {form: export_dir / export_cache_name(module, form, dtype, weights_id)
                 for form, d in needed if d == dtype}
        missing = {form: path for form, path in forms.items() if not path.is_file()}
        if missing:
            log(f"exporting {module.meta['model']} ({', '.join(missing)}, {dtype}) to {export_dir} ...")
            export_forms(module, missing, fp16=dtype == "float16")
        paths.update({(form, dtype): str(path) for form, path in forms.items()})
    return paths


def open_candidate(candidate: Candidate, module, device: Optional[str], cuda_options: Optional[dict] = None):
    if candidate.backend == "torch":
        return runtimes.load(module, "torch", device=device or _default_device(), dtype=candidate.dtype)
    options = {"cuda_options": cuda_options} if cuda_options and candidate.backend == "ort-cuda" else {}
    return runtimes.load(candidate.path, candidate.backend, **options)


def _default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_in_batches(session, images: np.ndarray, batch: int) -> np.ndarray:
    """The session's heatmaps for `images`, `batch` crops per run. The portable form's scan tensors grow with the
    batch: ONNX Runtime on the CPU peaks at 2.2 GiB for 4 crops of hrvmamba_small and 8.2 GiB for 14, and a
    parity run over all 14 COCO sample crops at once was killed for memory on a 24 GiB machine."""
    return np.concatenate([np.asarray(session.run(images[i:i + batch]), dtype=np.float32)
                           for i in range(0, len(images), batch)])


def check_tolerances(measures: dict, dtype: str, tolerances: dict) -> List[dict]:
    """The DESIGN.md §7 checks that apply to this precision, each with its value, limit and verdict."""
    if dtype == "float16":
        key, value = "fp16_mean_keypoint_displacement_px", measures["mean_keypoint_displacement_px"]
    else:
        key, value = "fp32_max_abs_error_over_max_ref", measures["max_abs_error_over_max_ref"]
    limit = tolerances[key]
    ok = bool(measures["finite"]) and value <= limit
    return [{"measure": key, "value": value, "limit": limit, "ok": ok}]


def heatmaps_to_results(heatmaps: np.ndarray, inputs: ParityInputs, config: PipelineConfig,
                        category_id: int = 1) -> List[dict]:
    from .training.codec import decode_heatmaps
    from .training.topdown import PoseInstance
    keypoints, scores = decode_heatmaps(heatmaps, config.input_size)
    results = []
    for i, image_id in enumerate(inputs.image_ids):
        kp = to_image_coordinates(keypoints[i], inputs.centers[i], inputs.scales[i], config.input_size)
        results.append(PoseInstance(np.zeros(4), float(inputs.box_scores[i]), kp, scores[i])
                       .to_coco(image_id, category_id))
    return results


def run_parity(model, backends: Sequence[str], forms: Sequence[str] = ("custom", "portable"), fp16: bool = False,
               inputs: str = "random", ann_file=None, onnx_files: Sequence[str] = (), export_dir=None,
               save_io=None, load_io=None, localize: bool = False, tolerances: Optional[dict] = None,
               device: Optional[str] = None, crops: Optional[int] = None, cuda_options: Optional[dict] = None,
               batch: int = 4, log=print) -> dict:
    """Run every candidate on the same crops and compare with PyTorch fp32 on the CPU; returns the report
    (rows with measures and checks, `failures` naming each backend and measure that broke its tolerance)."""
    import tempfile
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    if is_onnx_file(model):
        raise ValueError("parity needs the PyTorch model as its reference: pass a registered name or a checkpoint "
                         "as MODEL, and the ONNX file to check with --onnx")
    if save_io and load_io:
        raise ValueError("--save-io and --load-io exclude each other")
    module = load_torch_model(model)
    config = PipelineConfig.from_metadata(module.meta)
    reference_session = runtimes.load(module, "torch", device="cpu", dtype="float32")
    if load_io:
        parity_inputs, reference = load_io_files(Path(load_io))
        log(f"replaying {parity_inputs.source} and the torch fp32 reference from {load_io}")
    else:
        if inputs == "random":
            parity_inputs = random_inputs(config, crops or 4)
        else:
            parity_inputs = image_inputs(config, inputs, ann_file, max_crops=crops or 64)
        reference = run_in_batches(reference_session, parity_inputs.images, batch)
    if ann_file and not parity_inputs.image_ids:
        raise ValueError("--ann needs --inputs IMAGE_DIR (crops of the annotated images)")

    candidates = plan_candidates(backends, forms, fp16, onnx_files)
    temporary = None
    if export_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="ssmpose-parity-")
        export_dir = temporary.name
    needs_export = any(c.backend != "torch" and c.path is None for c in candidates) or (
        localize and any(c.path for c in candidates))
    exports = ensure_exports(module, candidates, Path(export_dir), log) if needs_export else {}
    for c in candidates:
        if c.backend != "torch" and c.path is None:
            c.path = exports[(c.form, c.dtype)]

    reference_ap = _average_precision(reference, parity_inputs, config, ann_file) if ann_file else None
    known = match_dataset(config.keypoint_names) if config.keypoint_names else None
    sigmas = known.sigmas if known is not None else None
    rows, outputs = [], {}
    for c in candidates:
        row = {"backend": c.backend, "form": c.form, "dtype": c.dtype, "file": c.path, "label": c.label}
        try:
            session = open_candidate(c, module, device, cuda_options)
            start = time.perf_counter()
            out = run_in_batches(session, parity_inputs.images, batch)
            row["seconds"] = time.perf_counter() - start
        except runtimes.BackendUnavailable as err:
            rows.append({**row, "status": "unavailable", "reason": str(err)})
            continue
        measures = parity.compare(reference, out, config.input_size, sigmas)
        checks = check_tolerances(measures, c.dtype, tolerances)
        row.update(status="ok" if all(ch["ok"] for ch in checks) else "failed", measures=measures, checks=checks)
        if ann_file:
            ap = _average_precision(out, parity_inputs, config, ann_file)
            row["AP"], row["AP_delta"] = ap, ap - reference_ap
        if row["status"] == "failed" and localize and c.backend in ONNX_BACKENDS:
            reference_graph = exports.get((c.form, c.dtype), c.path)
            row["localized"] = _localize(c, reference_graph, parity_inputs.images,
                                         {"cuda_options": cuda_options} if cuda_options and c.backend == "ort-cuda"
                                         else None)
        outputs[c.label] = out
        rows.append(row)

    if save_io:
        save_io_files(Path(save_io), parity_inputs, reference, outputs)
    if temporary is not None:
        temporary.cleanup()
        exports = {key: f"{path} (temporary, removed)" for key, path in exports.items()}
    failures = [f"{r['label']}: {ch['measure']} = {ch['value']:.3g} > {ch['limit']:.3g}"
                if r["measures"]["finite"] else f"{r['label']}: non-finite outputs"
                for r in rows if r["status"] == "failed" for ch in r["checks"] if not ch["ok"]]
    return {"model": module.meta["model"], "inputs": parity_inputs.source, "cuda_options": cuda_options or {},
            "input_shape": list(parity_inputs.images.shape), "reference": "torch float32, CPU",
            "reference_AP": reference_ap, "tolerances": tolerances, "rows": rows, "failures": failures,
            "exports": {f"{f} {d}": p for (f, d), p in exports.items()}}


def _localize(candidate: Candidate, reference_graph: str, images: np.ndarray, options: Optional[dict]) -> dict:
    from .runtimes.localize import localize
    return localize(candidate.path, candidate.backend, images, LOCALIZE_TOLERANCE[candidate.dtype],
                    reference_file=reference_graph, candidate_options=options)


def _average_precision(heatmaps, inputs: ParityInputs, config: PipelineConfig, ann_file) -> float:
    from .evaluate import dataset_for
    from .training.annotations import CocoKeypoints
    from .training.metrics import coco_keypoint_ap
    annotations = CocoKeypoints(ann_file)
    info = dataset_for(annotations)
    results = heatmaps_to_results(heatmaps, inputs, config, annotations.category.get("id", 1))
    return coco_keypoint_ap(annotations.data, results, info.sigmas)["AP"]


def save_io_files(directory: Path, inputs: ParityInputs, reference: np.ndarray, outputs: Dict[str, np.ndarray]):
    directory.mkdir(parents=True, exist_ok=True)
    extra = {}
    if inputs.image_ids:
        extra = {"image_ids": np.array([str(i) for i in inputs.image_ids]), "centers": inputs.centers,
                 "scales": inputs.scales, "box_scores": inputs.box_scores}
    np.savez_compressed(directory / "inputs.npz", images=inputs.images, source=np.array(inputs.source), **extra)
    np.savez_compressed(directory / "reference.npz", heatmaps=reference)
    np.savez_compressed(directory / "outputs.npz", **{label: out for label, out in outputs.items()})


def load_io_files(directory: Path):
    for name in ("inputs.npz", "reference.npz"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"--load-io {directory}: {name} is missing (write it with --save-io)")
    with np.load(directory / "inputs.npz") as data:
        ids = [int(i) if str(i).isdigit() else str(i) for i in data["image_ids"]] if "image_ids" in data else []
        inputs = ParityInputs(data["images"], f"{data['source']} (saved)", ids,
                              data["centers"] if ids else None, data["scales"] if ids else None,
                              data["box_scores"] if ids else None)
    with np.load(directory / "reference.npz") as data:
        reference = data["heatmaps"]
    if reference.shape[0] != inputs.images.shape[0]:
        raise ValueError(f"--load-io {directory}: reference.npz holds {reference.shape[0]} outputs for "
                         f"{inputs.images.shape[0]} inputs")
    return inputs, reference


def report_json(report: dict) -> str:
    return json.dumps(report, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
