import os
from pathlib import Path

import pytest
import torch

import ssmpose
from ssmpose.checkpoint import save_checkpoint
from ssmpose.export import export_forms
from ssmpose.training.models.dcnv4 import DCNv4
from ssmpose.training.models.ss2d import SS2D

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SSMPOSE_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
DATA = SHARED / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def reference_dir():
    if not REFERENCE.is_dir():
        pytest.fail(f"official layout manifests not found at {REFERENCE} (set SSMPOSE_SHARED)")
    return REFERENCE


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero offset/mask projections (offsets of a few pixels, masks around +-1) and non-default SSM params."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DCNv4):
                m.offset_mask.weight.copy_(torch.randn(m.offset_mask.weight.shape, generator=g) * 0.05)
                m.offset_mask.bias.copy_(torch.rand(m.offset_mask.bias.shape, generator=g) * 3 - 1.5)
            if isinstance(m, SS2D):
                m.A_logs.copy_(torch.randn(m.A_logs.shape, generator=g) * 0.5)
                m.Ds.copy_(torch.randn(m.Ds.shape, generator=g))
    return model


class Exported:
    """One traced model: checkpoint, reference model, both exported files."""

    def __init__(self, root, name, size, **options):
        self.name, self.size, self.options = name, size, options
        torch.manual_seed(1)
        model = perturb(ssmpose.build_model(name, input_size=size))
        self.checkpoint = save_checkpoint(model, root / f"{name}.safetensors")
        self.paths = {form: root / f"{name}_{form}.onnx" for form in ("custom", "portable")}
        self.results = export_forms(name, self.paths, checkpoint=self.checkpoint, input_size=size, **options)
        self.model = ssmpose.load_checkpoint(self.checkpoint, input_size=size)

    def torch_heatmaps(self, images):
        with torch.no_grad():
            return self.model(images).numpy()


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(name, size, **export options) -> Exported; each model is traced once per test session."""
    cache = {}

    def get(name, size, **options):
        key = (name, size, tuple(sorted(options.items())))
        if key not in cache:
            root = tmp_path_factory.mktemp(f"{name}_{size[0]}x{size[1]}")
            cache[key] = Exported(root, name, size, **options)
        return cache[key]
    return get
