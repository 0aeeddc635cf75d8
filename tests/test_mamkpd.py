"""MamKPD: the registered variants against the paper's Table 1, the FLOP counter against published figures,
the three dataset heads, kernels against the float64 reference, both export forms in ONNX Runtime, and a few
iterations of `ssmpose train`."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import ssmpose
from ssmpose.cli.main import main
from ssmpose.custom_ops import ops
from ssmpose.synth import make_synthetic_dataset
from ssmpose.training.datasets import dataset_info
from ssmpose.training.models.flops import count_flops, count_parameters
from ssmpose.training.models.mamkpd import ScanMixer

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("mamkpd_small", "mamkpd_base", "mamkpd_large")
# Paper Table 1 (parameters in millions, GFLOPs at 256x192) and this implementation's figures (docs/models.md).
PAPER = {"mamkpd_small": (6.3, 0.5), "mamkpd_base": (7.1, 3.0), "mamkpd_large": (12.4, 4.3)}
OURS = {"mamkpd_small": (6.750, 2.677), "mamkpd_base": (6.773, 2.891), "mamkpd_large": (11.824, 4.774)}


@pytest.fixture(scope="module")
def figures():
    out = {}
    for name in VARIANTS:
        model = ssmpose.build_model(name)
        out[name] = (count_parameters(model) / 1e6, count_flops(model, torch.zeros(1, 3, 256, 192))["total"] / 1e9)
    return out


def test_listed_by_the_models_command():
    result = CliRunner().invoke(main, ["models", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    names = [m["name"] if isinstance(m, dict) else m for m in listed]
    assert set(VARIANTS) <= set(names)


@pytest.mark.parametrize("name", VARIANTS)
def test_parameters_within_10_percent_of_the_paper(figures, name):
    params, _ = figures[name]
    assert abs(params / PAPER[name][0] - 1) <= 0.10, params
    assert params == pytest.approx(OURS[name][0], abs=5e-4)


@pytest.mark.parametrize("name", ("mamkpd_base", "mamkpd_large"))
def test_flops_within_15_percent_of_the_paper(figures, name):
    _, gflops = figures[name]
    assert abs(gflops / PAPER[name][1] - 1) <= 0.15, gflops
    assert gflops == pytest.approx(OURS[name][1], abs=5e-3)


def test_small_flops_and_why_the_papers_figure_cannot_hold(figures):
    """The paper gives MamKPD-S 0.5 GFLOPs with the same blocks and widths as MamKPD-B (3.0 GFLOPs) and no stem.
    Whatever the block design, stage 3 applies its parameters at every one of the 16x12 positions, so its
    multiply-adds alone are at least (its parameter count - the per-position-free ones) x 192; that bound already
    exceeds 0.5 GFLOPs. What is asserted is the implementation's own figure (docs/models.md explains)."""
    model = ssmpose.build_model("mamkpd_small")
    stage3 = model.stages[2]
    weights_per_position = sum(p.numel() for n, p in stage3.named_parameters()
                               if p.dim() >= 2 and "A_logs" not in n)
    assert weights_per_position * 16 * 12 / 1e9 > PAPER["mamkpd_small"][1]
    _, gflops = figures["mamkpd_small"]
    assert gflops == pytest.approx(OURS["mamkpd_small"][1], abs=5e-3)
    # The stem is what separates small from base: about 0.2 GFLOPs, as the paper's FPS (2564 vs 2439) implies.
    assert 0.03 < figures["mamkpd_base"][1] / gflops - 1 < 0.15


@pytest.mark.parametrize("name,gflops", [("hrvmamba_tiny", 1.1), ("hrvmamba_small", 3.3), ("hrvmamba_base", 14.2)])
def test_flop_counter_reproduces_the_published_hrvmamba_figures(name, gflops):
    """The counting convention (multiply-adds, scan and deformable sampling included) gives the PoseVMamba
    README's FLOPs for the three HRVMamba pose models at 256x192."""
    model = ssmpose.build_model(name)
    assert count_flops(model, torch.zeros(1, 3, 256, 192))["total"] / 1e9 == pytest.approx(gflops, rel=0.02)


def test_flop_counter_counts_the_scan_and_the_projections_by_hand():
    dim, d_state, h, w = 32, 4, 6, 5
    mixer = ScanMixer(dim, d_state, ssm_ratio=2.0)
    d_inner, length, rank = 64, h * w, math.ceil(dim / 16)
    counted = count_flops(mixer, torch.randn(2, dim, h, w))
    expected = {
        "projections": 2 * length * (dim * d_inner + d_inner * dim),             # in_proj, out_proj
        "dwconv": 2 * length * d_inner * 9,
        "x_proj": 2 * length * 4 * d_inner * (rank + 2 * d_state),
        "dt_proj": 2 * length * 4 * rank * d_inner,
        "scan": 2 * (9 * 4 * d_inner * length * d_state + 4 * d_inner * length),
    }
    assert counted["by_op"]["ssmpose.selective_scan_2d"] == expected["scan"]
    assert counted["total"] == sum(expected.values())
    with ops.scan_2d(False):   # the version-1 path: the same count
        counted_v1 = count_flops(mixer, torch.randn(2, dim, h, w))
    assert counted_v1["by_op"]["ssmpose.selective_scan"] == expected["scan"]
    assert counted_v1["total"] == counted["total"]


@pytest.mark.parametrize("dataset", ["coco", "mpii", "ap10k"])
def test_dataset_heads(dataset):
    info = dataset_info(dataset)
    model = ssmpose.build_model("mamkpd_small", dataset=dataset, input_size=(128, 96)).eval()
    with torch.no_grad():
        heatmaps = model(torch.randn(1, 3, 128, 96))
    assert heatmaps.shape == (1, info.num_keypoints, 32, 24)
    assert model.meta["keypoint_names"] == list(info.keypoint_names)
    assert model.meta["codec"]["heatmap_size"] == [32, 24]


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_backward(name):
    model = ssmpose.build_model(name, input_size=(128, 96)).train()
    heatmaps = model(torch.randn(2, 3, 128, 96))
    assert heatmaps.shape == (2, 17, 32, 24)
    heatmaps.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert model.stages[0].cmm.intra_linear.weight.grad.abs().sum() > 0


def test_kernels_match_the_float64_reference():
    """The whole model with the compiled kernels (float32) against the reference operators in float64."""
    torch.manual_seed(3)
    model = ssmpose.build_model("mamkpd_base", input_size=(64, 48)).eval()
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "A_logs"):
                m.A_logs.add_(torch.randn_like(m.A_logs) * 0.3)
                m.Ds.copy_(torch.randn_like(m.Ds))
    images = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        got = model(images)
        with ops.force_reference():
            expected = model.double()(images.double())
    scale = expected.abs().max()
    assert ((got.double() - expected).abs().max() / scale) < 1e-4


@pytest.mark.parametrize("images,message", [
    (torch.zeros(1, 1, 128, 96), "(B, 3, H, W)"),
    (torch.zeros(1, 3, 120, 96), "divisible by 16"),
    (torch.zeros(1, 3, 128, 96, dtype=torch.uint8), "floating-point"),
])
def test_bad_input(images, message):
    model = ssmpose.build_model("mamkpd_small", input_size=(128, 96)).eval()
    with pytest.raises((ValueError, TypeError), match="mamkpd_small") as err:
        model(images)
    assert message in str(err.value)


def test_bad_input_size():
    with pytest.raises(ValueError, match="divisible by 16"):
        ssmpose.build_model("mamkpd_large", input_size=(250, 192))


def test_export_both_forms_match_pytorch_in_onnx_runtime(exported):
    ort = pytest.importorskip("onnxruntime")
    from ssmpose.custom_ops.ort_library import ort_library_path
    e = exported("mamkpd_small", (256, 192))
    images = torch.randn(1, 3, 256, 192, generator=torch.Generator().manual_seed(4))
    expected = e.torch_heatmaps(images)
    for form in ("custom", "portable"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        if form == "custom":
            options.register_custom_ops_library(str(ort_library_path()))
        session = ort.InferenceSession(str(e.paths[form]), options, providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": images.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), form
    assert e.results["custom"].node_count < e.results["portable"].node_count


def test_train_a_few_iterations(tmp_path):
    data = tmp_path / "synth"
    make_synthetic_dataset(data, n=8, seed=0)
    work = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "train", str(REPO / "configs" / "mamkpd_small_synth.toml"), "--data-root", str(data), "--work-dir", str(work),
        "--max-iters", "12", "--set", "data.workers=0", "--set", "train.batch_size=4", "--set", "train.log_interval=1",
        "--set", "train.augment=false", "--set", "train.warmup_iters=1", "--set", 'data.val_ann=""'])
    assert result.exit_code == 0, result.output
    losses = [r["loss"] for r in map(json.loads, (work / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) < sum(losses[:4]), losses
    model = ssmpose.load_checkpoint(work / "last.safetensors")
    assert model.name == "mamkpd_small" and model.input_size == (128, 96)


def test_custom_form_in_openvino_matches_pytorch(exported):
    pytest.importorskip("openvino")
    from ssmpose import runtimes
    from ssmpose.custom_ops import openvino_library
    if openvino_library.openvino_library_path() is None:
        pytest.skip(f"the OpenVINO extension is not built: {openvino_library.unavailable_reason()}")
    e = exported("mamkpd_small", (256, 192))
    images = torch.randn(2, 3, 256, 192, generator=torch.Generator().manual_seed(6))
    got = np.asarray(runtimes.load(str(e.paths["custom"]), "openvino").run(images.numpy()), dtype=np.float32)
    expected = e.torch_heatmaps(images)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
