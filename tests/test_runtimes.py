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
