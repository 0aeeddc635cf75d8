"""The runtime layer: one API over backends, input validation, and the parity measures."""
import numpy as np
import pytest
import torch

import ssmpose
from ssmpose import runtimes
from ssmpose.runtimes import parity


@pytest.fixture(scope="module")
def tiny_torch():
    torch.manual_seed(0)
    return runtimes.load(ssmpose.build_model("hrvmamba_tiny"), "torch")


def test_torch_session_runs_numpy_and_torch(tiny_torch):
    x = np.random.default_rng(0).standard_normal((2, 3, 256, 192)).astype(np.float32)
    out = tiny_torch.run(x)
    assert isinstance(out, np.ndarray) and out.shape == (2, 17, 64, 48) and out.dtype == np.float32
    out_t = tiny_torch.run(torch.from_numpy(x))
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_allclose(out_t.numpy(), out, rtol=0, atol=1e-6)
    assert tiny_torch.describe()["input"] == {"name": "images", "shape": [None, 3, 256, 192], "dtype": "float32"}


def test_session_input_validation_says_what_was_expected(tiny_torch):
    with pytest.raises(ValueError, match=r"must be \('B', 3, 256, 192\), got shape \(1, 3, 128, 96\)"):
        tiny_torch.run(np.zeros((1, 3, 128, 96), np.float32))
    with pytest.raises(ValueError, match=r"got shape \(3, 256, 192\)"):
        tiny_torch.run(np.zeros((3, 256, 192), np.float32))
    with pytest.raises(TypeError, match="floating-point images .*got uint8"):
        tiny_torch.run(np.zeros((1, 3, 256, 192), np.uint8))
    with pytest.raises(TypeError, match="numpy array or torch tensor, got list"):
        tiny_torch.run([[1, 2]])


def test_unknown_and_unavailable_backends():
    with pytest.raises(ValueError, match="unknown backend 'onnx'.*ort-cpu"):
        runtimes.load("x.onnx", "onnx")
    with pytest.raises(runtimes.BackendUnavailable, match="tensorrt"):
        runtimes.load("x.onnx", "tensorrt")
    if not torch.cuda.is_available():
        with pytest.raises(runtimes.BackendUnavailable, match="no CUDA device"):
            runtimes.load("hrvmamba_tiny", "torch", device="cuda")
    assert "torch" in runtimes.available_backends()
    with pytest.raises(ValueError, match="ort-cpu: cuda_options apply to ort-cuda only"):
        runtimes.load("x.onnx", "ort-cpu", cuda_options={"enable_cuda_graph": "1"})


def test_parity_measures_against_hand_computed_values():
    rng = np.random.default_rng(1)
    ref = rng.random((2, 17, 64, 48)) * 0.1
    peaks = [(10, 20), (30, 5)]
    for b, (y, x) in enumerate(peaks):
        ref[b, :, y, x] = 1.0
    same = parity.compare(ref, ref, (256, 192))
    assert same["max_abs_error"] == 0 and same["cosine"] == pytest.approx(1.0)
    assert same["argmax_agreement"] == 1.0 and same["mean_oks"] == pytest.approx(1.0)
    moved = ref.copy()
    moved[0, 3, 10, 20] = 0.0
    moved[0, 3, 12, 20] = 1.0  # keypoint 3 of image 0 moves 2 heatmap rows = 8 input pixels
    report = parity.compare(ref, moved, (256, 192))
    assert report["max_abs_error"] == pytest.approx(1.0)  # the old peak dropped from 1 to 0
    assert report["argmax_agreement"] == pytest.approx(1 - 1 / 34)
    assert 6.0 <= report["max_keypoint_displacement_px"] <= 10.0
    assert report["min_oks"] < 1.0
    with pytest.raises(ValueError, match="output shapes differ"):
        parity.compare(ref, ref[:1], (256, 192))


# ---------------------------------------------------------------------------------------------------------
# Runs in slices: the largest activation of a graph, and the batch limit of ONNX Runtime's CUDA kernels

def _conv_pool_graph(path, batch="batch"):
    """images (B, 3, 16, 12) -> 1x1 Conv to 17 channels (the largest value, 17*16*12 per image) ->
    4x4 average pool -> heatmaps (B, 17, 4, 3). Returns the weights for a float64 reference."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((17, 3, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(17).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w", "b"], ["features"]),
         helper.make_node("AveragePool", ["features"], ["heatmaps"], kernel_shape=[4, 4], strides=[4, 4])],
        "conv_pool", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 16, 12])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, [batch, 17, 4, 3])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    onnx.save(model, str(path))
    return weight.astype(np.float64), bias.astype(np.float64)


def _conv_pool_reference(images, weight, bias):
    features = np.einsum("oc,bchw->bohw", weight[:, :, 0, 0], images.astype(np.float64)) + bias[None, :, None, None]
    b, c, h, w = features.shape
    return features.reshape(b, c, h // 4, 4, w // 4, 4).mean(axis=(3, 5))


def test_sliced_runs_match_a_float64_reference(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from ssmpose.runtimes.onnx_metadata import largest_activation_per_image
    path = tmp_path / "conv_pool.onnx"
    weight, bias = _conv_pool_graph(path)
    assert largest_activation_per_image(onnx.load(str(path)).graph) == 17 * 16 * 12
    images = np.random.default_rng(4).standard_normal((5, 3, 16, 12)).astype(np.float32)
    expected = _conv_pool_reference(images, weight, bias)
    whole = runtimes.load(str(path), "ort-cpu")
    assert whole.max_batch_per_run is None
    sliced = runtimes.load(str(path), "ort-cpu", max_batch_per_run=2)   # slices of 2, 2 and 1 images
    assert sliced.describe()["max_batch_per_run"] == 2
    for session in (whole, sliced):
        got = session.run(images)
        assert got.shape == (5, 17, 4, 3)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    got_torch = sliced.run(torch.from_numpy(images))
    assert isinstance(got_torch, torch.Tensor) and got_torch.shape == (5, 17, 4, 3)
    np.testing.assert_allclose(got_torch.numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    with pytest.raises(ValueError, match="max_batch_per_run must be a positive integer, got 0"):
        runtimes.load(str(path), "ort-cpu", max_batch_per_run=0)
    fixed = tmp_path / "fixed.onnx"
    _conv_pool_graph(fixed, batch=4)
    with pytest.raises(ValueError, match="batch is fixed at 4, so it cannot be run in slices"):
        runtimes.load(str(fixed), "ort-cpu", max_batch_per_run=2)


def test_cuda_batch_limit_from_the_largest_activation():
    from ssmpose.runtimes.onnxruntime_backend import batch_limit, cuda_max_batch
    # hrvmamba_small's portable form: the T x T decay tensor of its 64x48 scans, 4*64 rows x 96 chunks x 32 x 32
    # per image. The CUDA EP ran it at batch 64 and failed with an illegal address at 128 (docs/benchmarks.md).
    per_image = 4 * 64 * 96 * 32 * 32
    assert cuda_max_batch(per_image) == 85 and 64 <= cuda_max_batch(per_image) < 128
    assert cuda_max_batch(None) is None
    assert batch_limit("ort-cuda", None, per_image, None, "g") == 85
    assert batch_limit("ort-cuda", 32, per_image, None, "g") == 32
    assert batch_limit("ort-cpu", None, per_image, None, "g") is None     # the CPU kernels index with 64 bits
    assert batch_limit("ort-cuda", None, per_image, 64, "g") is None      # fixed batch, within the limit
    with pytest.raises(ValueError, match=r"g: max_batch_per_run=128 is above 85"):
        batch_limit("ort-cuda", 128, per_image, None, "g")
    with pytest.raises(ValueError, match=r"fixed batch 128 .*3,221,225,472 elements.*at most 85"):
        batch_limit("ort-cuda", None, per_image, 128, "g")
    with pytest.raises(ValueError, match=r"2,147,483,648 elements for a single image"):
        batch_limit("ort-cuda", None, 2 ** 31, None, "g")
