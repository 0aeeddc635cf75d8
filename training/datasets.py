"""Keypoint datasets described by data: keypoint names, flip pairs, skeleton and OKS sigmas.

Every entry follows MMPose's dataset metainfo (configs/_base_/datasets/<name>.py): the same keypoint order,
the same swap pairs, the same skeleton links and the same sigmas. Indices are 0-based. A flip pair is
(left, right) by index; the skeleton is a tuple of (a, b) links.

A dataset that is not registered is described by its own COCO-format category: see
`DatasetInfo.from_coco_category`.

Video datasets (PoseTrack18 and the synthetic clips of `ssmpose synth-data --frames`) annotate frames of videos:
`video_frame_paths` finds the frames around an annotated one for video models.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .keypoints import COCO_FLIP_PAIRS, COCO_KEYPOINTS, COCO_SIGMAS, COCO_SKELETON

Pair = Tuple[int, int]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    keypoint_names: Tuple[str, ...]
    flip_pairs: Tuple[Pair, ...]
    skeleton: Tuple[Pair, ...]
    sigmas: Tuple[float, ...]

    def __post_init__(self):
        k = len(self.keypoint_names)
        if len(self.sigmas) != k:
            raise ValueError(f"dataset {self.name!r}: {len(self.sigmas)} OKS sigmas for {k} keypoints")
        seen = set()
        for pair in self.flip_pairs + self.skeleton:
            if not all(0 <= i < k for i in pair):
                raise ValueError(f"dataset {self.name!r}: index pair {pair} is out of range for {k} keypoints")
        for pair in self.flip_pairs:
            if pair[0] == pair[1] or seen & set(pair):
                raise ValueError(f"dataset {self.name!r}: flip pair {pair} repeats a keypoint")
            seen.update(pair)

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    @property
    def flip_indices(self) -> List[int]:
        """Index i -> index of the keypoint that i becomes in a horizontally mirrored image."""
        from .codec import flip_indices_from_pairs
        return flip_indices_from_pairs(self.flip_pairs, self.num_keypoints)

    @classmethod
    def from_coco_category(cls, category: dict, sigmas: Optional[Sequence[float]] = None) -> "DatasetInfo":
        """The conventions of a COCO-format keypoint category ({name, keypoints, skeleton}).

        The skeleton is COCO's 1-based link list. Flip pairs come from the names: `left_X` pairs with
        `right_X` (case-insensitive prefixes). Sigmas: the given ones when passed, else those of a registered
        dataset with the same keypoint names; OKS cannot be computed without them, so otherwise ValueError.
        """
        name = str(category.get("name", "custom"))
        names = category.get("keypoints")
        if not names:
            raise ValueError(f"category {name!r} has no 'keypoints' list: not a COCO keypoint category")
        names = tuple(str(n) for n in names)
        skeleton = tuple((int(a) - 1, int(b) - 1) for a, b in category.get("skeleton") or ())
        if sigmas is None:
            registered = match_dataset(names)
            if registered is None:
                raise ValueError(f"category {name!r}: its {len(names)} keypoint names match no registered "
                                 f"dataset ({', '.join(list_datasets())}), so OKS sigmas must be given")
            sigmas = registered.sigmas
        return cls(name, names, _flip_pairs_from_names(names), skeleton, tuple(float(s) for s in sigmas))


def _flip_pairs_from_names(names: Sequence[str]) -> Tuple[Pair, ...]:
    index = {n.lower(): i for i, n in enumerate(names)}
    pairs = []
    for i, n in enumerate(names):
        low = n.lower()
        if low.startswith("left_"):
            j = index.get("right_" + low[len("left_"):])
            if j is not None:
                pairs.append((i, j))
    return tuple(pairs)


def _pairs(names: Sequence[str], pairs: Sequence[Tuple[str, str]]) -> Tuple[Pair, ...]:
    """Name pairs -> index pairs (the registry is written with names so it can be read against MMPose's)."""
    return tuple((names.index(a), names.index(b)) for a, b in pairs)


_MPII = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
    "left_wrist",
)
# The names of the AP-10K annotation files; MMPose's config abbreviates them (L_Eye, Root of tail, L_F_Paw...)
# in the same order.
_AP10K = (
    "left_eye", "right_eye", "nose", "neck", "root_of_tail", "left_shoulder", "left_elbow", "left_front_paw",
    "right_shoulder", "right_elbow", "right_front_paw", "left_hip", "left_knee", "left_back_paw", "right_hip",
    "right_knee", "right_back_paw",
)
# PoseTrack18: COCO's body keypoints with the eyes replaced by the bottom and the top of the head.
_POSETRACK18 = (
    "nose", "head_bottom", "head_top", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
_CROWDPOSE = (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "top_head", "neck",
)
_AIC = (
    "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist", "right_hip",
    "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "head_top", "neck",
)

_COCO = DatasetInfo("coco", COCO_KEYPOINTS, COCO_FLIP_PAIRS, COCO_SKELETON, COCO_SIGMAS)

_REGISTRY: Dict[str, DatasetInfo] = {
    "coco": _COCO,
    "mpii": DatasetInfo(
        "mpii", _MPII,
        _pairs(_MPII, [("left_ankle", "right_ankle"), ("left_knee", "right_knee"), ("left_hip", "right_hip"),
                       ("left_wrist", "right_wrist"), ("left_elbow", "right_elbow"),
                       ("left_shoulder", "right_shoulder")]),
        _pairs(_MPII, [("right_ankle", "right_knee"), ("right_knee", "right_hip"), ("right_hip", "pelvis"),
                       ("pelvis", "left_hip"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
                       ("pelvis", "thorax"), ("thorax", "upper_neck"), ("upper_neck", "head_top"),
                       ("upper_neck", "right_shoulder"), ("right_shoulder", "right_elbow"),
                       ("right_elbow", "right_wrist"), ("upper_neck", "left_shoulder"),
                       ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist")]),
        # MMPose's MPII sigmas ("adapted from COCO"); MPII itself is evaluated with PCKh, not OKS.
        (0.089, 0.083, 0.107, 0.107, 0.083, 0.089, 0.026, 0.026, 0.026, 0.026, 0.062, 0.072, 0.179, 0.179,
         0.072, 0.062),
    ),
    "ap10k": DatasetInfo(
        "ap10k", _AP10K,
        _pairs(_AP10K, [("left_eye", "right_eye"), ("left_shoulder", "right_shoulder"),
                        ("left_elbow", "right_elbow"), ("left_front_paw", "right_front_paw"),
                        ("left_hip", "right_hip"), ("left_knee", "right_knee"),
                        ("left_back_paw", "right_back_paw")]),
        _pairs(_AP10K, [("left_eye", "right_eye"), ("left_eye", "nose"), ("right_eye", "nose"),
                        ("nose", "neck"), ("neck", "root_of_tail"), ("neck", "left_shoulder"),
                        ("left_shoulder", "left_elbow"), ("left_elbow", "left_front_paw"),
                        ("neck", "right_shoulder"), ("right_shoulder", "right_elbow"),
                        ("right_elbow", "right_front_paw"), ("root_of_tail", "left_hip"),
                        ("left_hip", "left_knee"), ("left_knee", "left_back_paw"), ("root_of_tail", "right_hip"),
                        ("right_hip", "right_knee"), ("right_knee", "right_back_paw")]),
        (0.025, 0.025, 0.026, 0.035, 0.035, 0.079, 0.072, 0.062, 0.079, 0.072, 0.062, 0.107, 0.087, 0.089,
         0.107, 0.087, 0.089),
    ),
    "crowdpose": DatasetInfo(
        "crowdpose", _CROWDPOSE,
        _pairs(_CROWDPOSE, [("left_shoulder", "right_shoulder"), ("left_elbow", "right_elbow"),
                            ("left_wrist", "right_wrist"), ("left_hip", "right_hip"),
                            ("left_knee", "right_knee"), ("left_ankle", "right_ankle")]),
        _pairs(_CROWDPOSE, [("left_ankle", "left_knee"), ("left_knee", "left_hip"), ("right_ankle", "right_knee"),
                            ("right_knee", "right_hip"), ("left_hip", "right_hip"), ("left_shoulder", "left_hip"),
                            ("right_shoulder", "right_hip"), ("left_shoulder", "right_shoulder"),
                            ("left_shoulder", "left_elbow"), ("right_shoulder", "right_elbow"),
                            ("left_elbow", "left_wrist"), ("right_elbow", "right_wrist"), ("top_head", "neck"),
                            ("right_shoulder", "neck"), ("left_shoulder", "neck")]),
        (0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089, 0.079, 0.079),
    ),
    "aic": DatasetInfo(
        "aic", _AIC,
        _pairs(_AIC, [("left_shoulder", "right_shoulder"), ("left_elbow", "right_elbow"),
                      ("left_wrist", "right_wrist"), ("left_hip", "right_hip"), ("left_knee", "right_knee"),
                      ("left_ankle", "right_ankle")]),
        _pairs(_AIC, [("right_wrist", "right_elbow"), ("right_elbow", "right_shoulder"),
                      ("right_shoulder", "neck"), ("neck", "left_shoulder"), ("left_shoulder", "left_elbow"),
                      ("left_elbow", "left_wrist"), ("right_ankle", "right_knee"), ("right_knee", "right_hip"),
                      ("right_hip", "left_hip"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
                      ("head_top", "neck"), ("right_shoulder", "right_hip"), ("left_shoulder", "left_hip")]),
        # Half the per-keypoint deltas of the AI Challenger evaluation script, as MMPose gives them.
        (0.01388152, 0.01515228, 0.01057665, 0.01417709, 0.01497891, 0.01402144, 0.03909642, 0.03686941,
         0.01981803, 0.03843971, 0.03412318, 0.02415081, 0.01291456, 0.01236173),
    ),
    "ochuman": DatasetInfo("ochuman", COCO_KEYPOINTS, COCO_FLIP_PAIRS, COCO_SKELETON, COCO_SIGMAS),
    "posetrack18": DatasetInfo(
        "posetrack18", _POSETRACK18,
        _pairs(_POSETRACK18, [("left_ear", "right_ear"), ("left_shoulder", "right_shoulder"),
                              ("left_elbow", "right_elbow"), ("left_wrist", "right_wrist"), ("left_hip", "right_hip"),
                              ("left_knee", "right_knee"), ("left_ankle", "right_ankle")]),
        _pairs(_POSETRACK18, [("left_ankle", "left_knee"), ("left_knee", "left_hip"), ("right_ankle", "right_knee"),
                              ("right_knee", "right_hip"), ("left_hip", "right_hip"), ("left_shoulder", "left_hip"),
                              ("right_shoulder", "right_hip"), ("left_shoulder", "right_shoulder"),
                              ("left_shoulder", "left_elbow"), ("right_shoulder", "right_elbow"),
                              ("left_elbow", "left_wrist"), ("right_elbow", "right_wrist"), ("nose", "head_bottom"),
                              ("nose", "head_top"), ("head_bottom", "left_shoulder"),
                              ("head_bottom", "right_shoulder")]),
        (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087,
         0.089, 0.089),
    ),
}


def list_datasets() -> List[str]:
    return list(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(_REGISTRY)}") from None


def _same_conventions(a: DatasetInfo, b: DatasetInfo) -> bool:
    return (a.keypoint_names, a.flip_pairs, a.skeleton, a.sigmas) == (b.keypoint_names, b.flip_pairs,
                                                                        b.skeleton, b.sigmas)


def match_dataset(keypoint_names: Optional[Sequence[str]] = None,
                  num_keypoints: Optional[int] = None) -> Optional[DatasetInfo]:
    """The registered dataset with exactly these keypoint names (in order), or, when no names are given,
    the one with this keypoint count. None when nothing matches or the match is ambiguous.

    Entries with identical conventions (coco and ochuman) are one match: the first registered is returned.
    """
    if keypoint_names is not None:
        names = tuple(keypoint_names)
        found = [info for info in _REGISTRY.values() if info.keypoint_names == names]
    elif num_keypoints is not None:
        found = [info for info in _REGISTRY.values() if info.num_keypoints == num_keypoints]
    else:
        return None
    if found and all(_same_conventions(found[0], other) for other in found[1:]):
        return found[0]
    return None


def dataset_for_category(category: dict, dataset=None, source: str = "the annotation file") -> DatasetInfo:
    """The conventions of a COCO-format keypoint category: `dataset` when given (a registry name or a
    DatasetInfo), else the registered dataset with the category's keypoint names, else the category's own
    description (which needs a registered match for its sigmas). The keypoint count must agree."""
    names = list(category.get("keypoints") or ())
    if isinstance(dataset, DatasetInfo):
        info = dataset
    elif dataset:
        info = dataset_info(dataset)
    else:
        info = match_dataset(names)
        if info is None:
            try:
                info = DatasetInfo.from_coco_category(category)
            except ValueError as err:
                raise ValueError(f"{source}: {err}; name a registered dataset or give its sigmas") from None
    if len(names) != info.num_keypoints:
        raise ValueError(f"{source} annotates {len(names)} keypoints, dataset {info.name!r} has "
                         f"{info.num_keypoints}")
    return info


def video_frame_paths(image: dict, image_dir, num_frames: int) -> Tuple[List[Path], int]:
    """The `num_frames` frame files of the clip centred on an annotated video frame (a COCO-format image entry
    in the PoseTrack18 layout), in time order, and how many of them had to be replaced.

    As mmpose's PoseTrack18VideoDataset: a frame is `<video folder>/<frame number>.jpg`, the number
    zero-padded (000000.jpg, PoseTrack18's 6 digits; the width and suffix are taken from the entry's own
    `file_name`); the neighbour at offset d is frame number + d, clipped to [0, nframes - 1] (the entry's
    `nframes`, the video's length: a clip at the start or the end of a video repeats its first or last frame).
    PoseTrack18's `frame_id` = 10000 x (1000000 + video id) + frame number and `vid_id` say the same; the file
    name is what locates the file. A neighbour whose file is not in `image_dir` (a sample with only the
    annotated frames) is replaced by the nearest existing frame towards the centre, and counted: the returned
    count is 0 for a complete video."""
    from .topdown import frame_offsets
    file_name = image.get("file_name") if isinstance(image, dict) else None
    if not isinstance(file_name, str):
        raise ValueError(f"image entry {str(image)[:80]} has no file_name, so its video frames cannot be found")
    relative = Path(file_name)
    if not relative.stem.isdigit():
        raise ValueError(f"{file_name}: a video model needs the frames around each annotated frame, found by "
                         f"frame number in the file name (PoseTrack18 layout: <video>/000012.jpg); this name "
                         f"is not a frame number")
    index, width = int(relative.stem), len(relative.stem)
    nframes = image.get("nframes")
    if isinstance(nframes, bool) or not isinstance(nframes, int) or nframes <= index:
        raise ValueError(f"{file_name}: a video model needs the length of the video of each annotated frame "
                         f"(PoseTrack18's image field nframes, an integer above the frame number {index}); "
                         f"got nframes = {nframes!r}")
    folder = Path(image_dir) / relative.parent

    def frame(number: int) -> Path:
        return folder / f"{number:0{width}d}{relative.suffix}"

    paths, replaced = [], 0
    for offset in frame_offsets(num_frames):
        wanted = min(max(index + offset, 0), nframes - 1)
        number, step = wanted, (1 if wanted < index else -1)
        while number != index and not frame(number).is_file():
            number += step
        replaced += number != wanted
        paths.append(frame(number))
    return paths, replaced
