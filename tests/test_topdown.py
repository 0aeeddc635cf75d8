"""The top-down pipeline's geometry and codec: boxes, affine crop, MSRA encode/decode, flip test."""
import cv2
import numpy as np
import pytest
import torch

import ssmpose
from ssmpose import runtimes
from ssmpose.training.codec import decode_heatmaps, encode_heatmaps, flip_heatmaps_back, flip_indices_from_pairs
from ssmpose.training.datasets import dataset_info
from ssmpose.training.topdown import (PipelineConfig, TopDownEstimator, box_to_center_scale, crop,
                                      to_image_coordinates, warp_matrix)

INPUT = (256, 192)     # H, W
HEATMAP = (64, 48)


def test_box_padding_and_aspect_ratio():
    center, scale = box_to_center_scale((10, 20, 100, 50), aspect_ratio=192 / 256)
    assert center.tolist() == [60, 45]
    assert scale == pytest.approx([125.0, 125.0 / 0.75])          # wide box: height grows to the ratio
    center, scale = box_to_center_scale((0, 0, 30, 200), aspect_ratio=0.75)
    assert scale == pytest.approx([250 * 0.75, 250.0])             # tall box: width grows


@pytest.mark.parametrize("box", [(100, 50, 80, 240), (40, 60, 300, 90), (200, 100, 120, 120), (-30, -20, 150, 400)],
                         ids=["tall", "wide", "square", "off-image"])
def test_warp_and_inverse_agree_with_the_closed_form(box):
    center, scale = box_to_center_scale(box, 0.75)
    forward = warp_matrix(center, scale, (192, 256))
    inverse = warp_matrix(center, scale, (192, 256), inverse=True)
    points = np.array([[0.0, 0.0], [191.0, 255.0], [96.0, 128.0], [13.5, 200.25]])
    in_image = to_image_coordinates(points, center, scale, INPUT)
    np.testing.assert_allclose(cv2.transform(points[None], inverse)[0], in_image, atol=1e-3)
    np.testing.assert_allclose(cv2.transform(in_image[None], forward)[0], points, atol=1e-3)
    # the crop spans `scale` around `center`: its corners are the box's padded corners
    np.testing.assert_allclose(to_image_coordinates(np.array([[0.0, 0.0]]), center, scale, INPUT)[0],
                               center - scale / 2, atol=1e-9)


@pytest.mark.parametrize("box", [(100, 50, 80, 240), (40, 60, 300, 90), (200, 100, 120, 120)],
                         ids=["tall", "wide", "square"])
def test_codec_round_trip_in_image_coordinates(box):
    """Keypoints that fall on heatmap grid points survive warp -> encode -> decode -> inverse within 0.1 px."""
    rng = np.random.default_rng(0)
    center, scale = box_to_center_scale(box, 0.75)
    grid = np.stack([rng.integers(2, HEATMAP[1] - 2, 17), rng.integers(2, HEATMAP[0] - 2, 17)], axis=1)
    truth = to_image_coordinates(grid * 4.0, center, scale, INPUT)          # image pixels
    in_crop = cv2.transform(truth[None], warp_matrix(center, scale, (192, 256)))[0]
    heatmaps, weights = encode_heatmaps(in_crop, np.ones(17), INPUT, HEATMAP, sigma=2.0)
    assert weights.min() == 1
    keypoints, scores = decode_heatmaps(heatmaps[None], INPUT)
    back = to_image_coordinates(keypoints[0], center, scale, INPUT)
    assert np.abs(back - truth).max() < 0.1
    assert scores.min() == pytest.approx(1.0)


def test_decode_follows_mmpose_refinement_bounds():
    hm = np.zeros((1, 4, 8, 8), np.float32)
    hm[0, 0, 4, 4], hm[0, 0, 4, 5], hm[0, 0, 5, 4] = 1.0, 0.5, 0.2      # interior: +1/4 in x and y
    hm[0, 1, 4, 1], hm[0, 1, 4, 2] = 1.0, 0.5                            # x == 1: no x refinement
    hm[0, 2, 0, 4], hm[0, 2, 0, 5] = 1.0, 0.5                            # y == 0: no x refinement either
    hm[0, 3] = -1.0                                                      # no positive response: location -1
    keypoints, scores = decode_heatmaps(hm, (32, 32))                     # stride 4
    np.testing.assert_allclose(keypoints[0] / 4, [[4.25, 4.25], [1, 4], [4, 0], [-1, -1]])
    np.testing.assert_allclose(scores[0], [1.0, 1.0, 1.0, -1.0])


def test_flip_back_maps_mirrored_keypoints_to_their_pairs():
    """A crop flipped horizontally puts left keypoints where the right ones were; flipping its heatmaps back
    (with the one-pixel shift) gives the original keypoints in the original channels."""
    coco = dataset_info("coco")
    rng = np.random.default_rng(1)
    grid = np.stack([rng.integers(3, HEATMAP[1] - 3, 17), rng.integers(3, HEATMAP[0] - 3, 17)], axis=1)
    mirrored = grid[coco.flip_indices].copy()
    mirrored[:, 0] = HEATMAP[1] - mirrored[:, 0]           # pixel u of the crop goes to W - 1 - u
    flipped, _ = encode_heatmaps(mirrored * 4.0, np.ones(17), INPUT, HEATMAP, 2.0)
    original, _ = encode_heatmaps(grid * 4.0, np.ones(17), INPUT, HEATMAP, 2.0)
    back = flip_heatmaps_back(flipped[None], coco.flip_indices)
    keypoints, _ = decode_heatmaps((original[None] + back) * 0.5, INPUT)
    np.testing.assert_allclose(keypoints[0] / 4, grid)
    assert flip_indices_from_pairs(coco.flip_pairs, 17) == coco.flip_indices
    with pytest.raises(ValueError, match="17 keypoint channels but the flip pairs describe 16"):
        flip_heatmaps_back(flipped[None], dataset_info("mpii").flip_indices)


def test_estimator_flip_test_is_the_official_average():
    torch.manual_seed(0)
    model = ssmpose.build_model("hrvmamba_tiny").eval()
    session = runtimes.load(model, "torch")
    images = torch.randn(2, 3, *INPUT)
    with torch.no_grad():
        plain = model(images)
        mirrored = model(images.flip(-1)).flip(-1)[:, dataset_info("coco").flip_indices]
    shifted = mirrored.clone()
    shifted[..., 1:] = mirrored[..., :-1]
    expected = ((plain + shifted) / 2).numpy()
    got = TopDownEstimator(session, flip_test=True).heatmaps(images.numpy())
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_normalisation_is_rgb_mean_std():
    config = PipelineConfig.from_metadata(ssmpose.build_model("hrvmamba_tiny").meta)
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 0], bgr[..., 2] = 200, 10                                    # blue 200, red 10
    x = config.normalize([bgr])
    assert x.shape == (1, 3, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [(10 - 123.675) / 58.395, (0 - 116.28) / 57.12,
                                              (200 - 103.53) / 57.375], rtol=1e-6)


def test_crop_samples_the_box():
    image = np.zeros((480, 640, 3), np.uint8)
    image[200:240, 300:340] = 255                                         # a white square at the box centre
    center, scale = box_to_center_scale((220, 100, 200, 240), 0.75)
    patch = crop(image, center, scale, INPUT)
    ys, xs = np.nonzero(patch[..., 0] > 128)
    centre_in_crop = cv2.transform(np.array([[[320.0, 220.0]]]), warp_matrix(center, scale, (192, 256)))[0, 0]
    assert abs(xs.mean() - centre_in_crop[0]) < 1 and abs(ys.mean() - centre_in_crop[1]) < 1


def test_pipeline_config_refuses_what_it_cannot_preprocess():
    meta = dict(ssmpose.build_model("hrvmamba_tiny").meta)
    with pytest.raises(ValueError, match="classification model, not a pose model"):
        PipelineConfig.from_metadata({**meta, "task": "classification"})
    del meta["mean"]
    with pytest.raises(ValueError, match="lacks mean"):
        PipelineConfig.from_metadata(meta)


def test_models_carry_their_datasets_conventions(tmp_path):
    """A model built for MPII has 16 heatmaps and MPII's names and flip pairs, through a checkpoint too."""
    mpii = dataset_info("mpii")
    model = ssmpose.build_model("hrvmamba_tiny", dataset="mpii")
    assert model.head.final_layer.out_channels == 16 and model.meta["dataset"] == "mpii"
    assert tuple(model.meta["keypoint_names"]) == mpii.keypoint_names
    loaded = ssmpose.load_checkpoint(ssmpose.save_checkpoint(model, tmp_path / "mpii.safetensors"))
    config = PipelineConfig.from_metadata(loaded.meta)
    assert config.num_keypoints == 16 and list(config.flip_indices) == mpii.flip_indices
    with pytest.raises(ValueError, match="dataset mpii has 16 keypoints, the model was asked for 17"):
        ssmpose.build_model("hrvmamba_tiny", dataset="mpii", num_keypoints=17)
