import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SSMPOSE_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def reference_dir():
    if not REFERENCE.is_dir():
        pytest.fail(f"official layout manifests not found at {REFERENCE} (set SSMPOSE_SHARED)")
    return REFERENCE


FULL_SIZE_MODELS = ("hrvmamba_small", "hrvmamba_base")


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`tools/test.sh` runs two workers with --dist loadgroup), each test module is one
    group, so its module-scoped fixtures (the traced and exported models) are built on one worker only.
    test_export.py's full-size models form a second group: the two halves of the export tests, each a
    few hundred seconds of single-threaded tracing, then run side by side."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        group = item.module.__name__
        if group.endswith("test_export") and any(name in item.name for name in FULL_SIZE_MODELS):
            group += "_full_size"
        item.add_marker(pytest.mark.xdist_group(group))
