"""The dataset registry against the annotation files of /work/shared/data and against itself."""
import dataclasses
import json

import pytest

from conftest import SHARED
from ssmpose.training import keypoints
from ssmpose.training.datasets import DatasetInfo, dataset_info, list_datasets, match_dataset

DATA = SHARED / "data"
EXPECTED_COUNTS = {"coco": 17, "mpii": 16, "ap10k": 17, "crowdpose": 14, "aic": 14, "ochuman": 17,
                   "posetrack18": 17}


def _category(path):
    with open(path) as f:
        return json.load(f)["categories"]


def test_registry_lists_every_dataset_with_its_keypoint_count():
    assert list_datasets() == list(EXPECTED_COUNTS)
    for name, count in EXPECTED_COUNTS.items():
        info = dataset_info(name)
        assert info.name == name
        assert info.num_keypoints == count == len(info.sigmas)
        assert all(s > 0 for s in info.sigmas)


@pytest.mark.parametrize("name", list(EXPECTED_COUNTS))
def test_flip_pairs_and_skeleton_are_consistent(name):
    info = dataset_info(name)
    k = info.num_keypoints
    used = [i for pair in info.flip_pairs for i in pair]
    assert all(0 <= i < k for i in used)
    assert len(used) == len(set(used)), "a keypoint appears in two flip pairs"
    assert all(0 <= a < k and 0 <= b < k and a != b for a, b in info.skeleton)

    flip = info.flip_indices
    assert sorted(flip) == list(range(k))
    assert all(flip[flip[i]] == i for i in range(k)), "flipping twice must give the identity"
    for left, right in info.flip_pairs:
        assert flip[left] == right and flip[right] == left
        # The registry's (left, right) order and the names agree: left_X <-> right_X.
        assert info.keypoint_names[left].startswith("left_")
        assert info.keypoint_names[right] == "right_" + info.keypoint_names[left][len("left_"):]
    # Every left_X that has a right_X is paired; every other keypoint maps to itself.
    names = info.keypoint_names
    for i, n in enumerate(names):
        if n.startswith("left_") and "right_" + n[5:] in names:
            assert flip[i] == names.index("right_" + n[5:])
        elif not n.startswith("right_"):
            assert flip[i] == i


def test_coco_entry_is_the_keypoints_module_and_the_coco_annotation():
    info = dataset_info("coco")
    assert info.keypoint_names == keypoints.COCO_KEYPOINTS
    assert info.skeleton == keypoints.COCO_SKELETON
    assert info.flip_pairs == keypoints.COCO_FLIP_PAIRS
    assert info.sigmas == keypoints.COCO_SIGMAS
    (cat,) = _category(DATA / "coco" / "test_coco.json")
    assert list(info.keypoint_names) == cat["keypoints"]
    assert [list(link) for link in info.skeleton] == [[a - 1, b - 1] for a, b in cat["skeleton"]]
    assert dataset_info("ochuman").keypoint_names == info.keypoint_names
    assert dataset_info("ochuman").flip_pairs == info.flip_pairs


def test_ap10k_entry_is_the_ap10k_annotation():
    info = dataset_info("ap10k")
    cats = _category(DATA / "ap10k" / "test_ap10k.json")
    assert len(cats) == 54
    for cat in cats:
        assert list(info.keypoint_names) == cat["keypoints"]
        assert [list(link) for link in info.skeleton] == [[a - 1, b - 1] for a, b in cat["skeleton"]]


def test_posetrack18_entry_is_the_posetrack18_annotation():
    info = dataset_info("posetrack18")
    (cat,) = _category(DATA / "posetrack18" / "annotations" / "test_posetrack18_val.json")
    assert list(info.keypoint_names) == cat["keypoints"]
    assert match_dataset(cat["keypoints"]) is info
    names = info.keypoint_names
    assert (names[1], names[2]) == ("head_bottom", "head_top")     # where COCO has the eyes
    assert [names[i] for i, j in info.flip_pairs] == ["left_ear", "left_shoulder", "left_elbow", "left_wrist",
                                                      "left_hip", "left_knee", "left_ankle"]
    # mmpose's posetrack18 metainfo: the head links replace COCO's eye/ear links
    assert {(names[a], names[b]) for a, b in info.skeleton} >= {("nose", "head_bottom"), ("nose", "head_top"),
                                                               ("head_bottom", "left_shoulder")}
    assert len(info.skeleton) == 16
    assert info.sigmas[:3] == (0.026, 0.025, 0.025) and info.sigmas[5:] == dataset_info("coco").sigmas[5:]


def test_match_dataset_by_names_then_by_count():
    coco_names = _category(DATA / "coco" / "test_coco.json")[0]["keypoints"]
    ap10k_names = _category(DATA / "ap10k" / "test_ap10k.json")[0]["keypoints"]
    # coco and ochuman share their names and conventions: one match, the first registered.
    assert match_dataset(coco_names).name == "coco"
    assert match_dataset(ap10k_names).name == "ap10k"
    assert match_dataset(ap10k_names, num_keypoints=16).name == "ap10k"  # names win over the count
    assert match_dataset(dataset_info("aic").keypoint_names).name == "aic"
    assert match_dataset(dataset_info("crowdpose").keypoint_names).name == "crowdpose"
    assert match_dataset(list(reversed(coco_names))) is None
    assert match_dataset(num_keypoints=16).name == "mpii"
    assert match_dataset(num_keypoints=17) is None  # coco and ap10k
    assert match_dataset(num_keypoints=14) is None  # crowdpose and aic
    assert match_dataset(num_keypoints=21) is None
    assert match_dataset() is None


def test_unknown_dataset_names_the_known_ones():
    assert dataset_info("COCO") is dataset_info("coco")
    with pytest.raises(ValueError, match="unknown dataset 'h36m'.*coco.*mpii.*ochuman"):
        dataset_info("h36m")


def test_entries_are_frozen_and_validated():
    with pytest.raises(dataclasses.FrozenInstanceError):
        dataset_info("coco").name = "other"
    with pytest.raises(ValueError, match="2 OKS sigmas for 3 keypoints"):
        DatasetInfo("x", ("a", "b", "c"), (), (), (0.1, 0.1))
    with pytest.raises(ValueError, match="repeats"):
        DatasetInfo("x", ("a", "b", "c"), ((0, 1), (1, 2)), (), (0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="out of range"):
        DatasetInfo("x", ("a", "b"), (), ((0, 2),), (0.1, 0.1))


def test_from_coco_category_of_registered_datasets():
    (cat,) = _category(DATA / "coco" / "test_coco.json")
    info = DatasetInfo.from_coco_category(cat)
    coco = dataset_info("coco")
    assert (info.keypoint_names, info.flip_pairs, info.skeleton, info.sigmas) == (
        coco.keypoint_names, coco.flip_pairs, coco.skeleton, coco.sigmas)
    assert info.name == "person"

    cat = _category(DATA / "ap10k" / "test_ap10k.json")[25]
    info = DatasetInfo.from_coco_category(cat)
    ap10k = dataset_info("ap10k")
    assert info.name == cat["name"]
    assert (info.flip_pairs, info.skeleton, info.sigmas) == (ap10k.flip_pairs, ap10k.skeleton, ap10k.sigmas)


def test_from_coco_category_of_an_unregistered_dataset():
    cat = {"name": "robot", "keypoints": ["head", "Left_Hand", "right_hand", "left_foot", "base"],
           "skeleton": [[1, 5], [2, 1], [3, 1]]}
    with pytest.raises(ValueError, match="robot.*sigmas must be given"):
        DatasetInfo.from_coco_category(cat)
    info = DatasetInfo.from_coco_category(cat, sigmas=[0.1, 0.2, 0.2, 0.3, 0.4])
    assert info.flip_pairs == ((1, 2),)  # left_foot has no right_foot: unpaired
    assert info.flip_indices == [0, 2, 1, 3, 4]
    assert info.skeleton == ((0, 4), (1, 0), (2, 0))
    assert info.sigmas == (0.1, 0.2, 0.2, 0.3, 0.4)
    with pytest.raises(ValueError, match="4 OKS sigmas for 5 keypoints"):
        DatasetInfo.from_coco_category(cat, sigmas=[0.1] * 4)
    with pytest.raises(ValueError, match="no 'keypoints'"):
        DatasetInfo.from_coco_category({"name": "person", "id": 1})
