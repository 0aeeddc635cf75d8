"""Every registered model against the official state_dict manifests, plus forward behaviour."""
import json

import pytest
import torch

import ssmpose
from ssmpose.checkpoint import save_official_checkpoint

POSE = ["hrvmamba_tiny", "hrvmamba_small", "hrvmamba_base"]
CLS = ["hrvmamba_cls_nano", "hrvmamba_cls_tiny", "hrvmamba_cls_small", "hrvmamba_cls_base"]
MANIFESTS = (
    [(m, f"pose/{m}.json", "as_run") for m in POSE]
    + [(m, f"pose_released_dcnv4_src/{m}.json", "released") for m in POSE]
    + [(m, f"classification/{m.replace('cls_', '')}.json", "as_run") for m in CLS]
    + [(m, f"classification_released_dcnv4_src/{m.replace('cls_', '')}.json", "released") for m in CLS]
)


@pytest.mark.parametrize("name,manifest,variant", MANIFESTS)
def test_state_dict_equals_official_manifest(reference_dir, name, manifest, variant):
    spec = json.loads((reference_dir / manifest).read_text())
    with torch.device("meta"):
        model = ssmpose.build_model(name, dcn_variant=variant)
    got = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert got == spec["state_dict"]  # keys, order, shapes and dtypes
    buffers = {k for k, _ in model.named_buffers()}
    assert buffers == set(spec["buffers"])
    assert sum(p.numel() for p in model.parameters()) == spec["num_parameters"]


@pytest.mark.parametrize("name", POSE)
def test_pose_forward_shapes_and_determinism(name):
    model = ssmpose.build_model(name).eval()
    x = torch.randn(2, 3, 256, 192)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == (2, 17, 64, 48)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)


def test_pose_forward_384x288():
    model = ssmpose.build_model("hrvmamba_small", input_size=(384, 288)).eval()
    assert model.meta["codec"] == {"type": "MSRAHeatmap", "sigma": 3.0, "heatmap_size": [96, 72]}
    with torch.no_grad():
        assert model(torch.randn(1, 3, 384, 288)).shape == (1, 17, 96, 72)


def test_classifier_forward():
    model = ssmpose.build_model("hrvmamba_cls_nano").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_released_dcn_variant_runs():
    model = ssmpose.build_model("hrvmamba_tiny", dcn_variant="released").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 17, 16, 16)


def test_training_mode_backward():
    model = ssmpose.build_model("hrvmamba_tiny").train()
    out = model(torch.randn(2, 3, 64, 64))
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ["hrvmamba_tiny", pytest.param("hrvmamba_small", marks=pytest.mark.slow)])
def test_official_checkpoint_round_trip(tmp_path, name):   # the full-size model in the slow target (31 s)
    """Save in the mmpose layout, load strictly into a fresh model, outputs identical."""
    torch.manual_seed(1)
    source = ssmpose.build_model(name).eval()
    with torch.no_grad():  # non-trivial weights everywhere, including the zero-initialised offset/mask
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(123)
    path = save_official_checkpoint(source, tmp_path / "official.pth",
                                    meta={"epoch": 210, "dataset_meta": {"num_keypoints": 17}})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "meta"}
    assert all(k.startswith(("backbone.", "head.")) for k in raw["state_dict"])
    loaded = ssmpose.load_checkpoint(path)
    assert loaded.name == name
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
