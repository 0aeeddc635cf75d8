"""The check each test file of a compiled library starts with: skip when a library is not built, except in CI
(SSMPOSE_REQUIRE_KERNELS=1), where a missing library is a failure."""
from __future__ import annotations

import os

import pytest


def cuda_kernel_library():
    """libssmpose_kernels_cuda loaded with its signatures, or None when it is not built (its host-side argument
    checks run without a GPU)."""
    from ssmpose.custom_ops import kernel_library as kl
    path, _ = kl._find(kl.CUDA_LIBRARY_NAME)
    if path is None:
        return None
    try:
        return kl._load(path, kl._CUDA_SIGNATURES)
    except kl.KernelLibraryError:
        return None


def require_built(libraries: dict) -> None:
    """libraries: name -> loaded library, or None when it is not built."""
    missing = [name for name, lib in libraries.items() if lib is None]
    if not missing:
        return
    if os.environ.get("SSMPOSE_REQUIRE_KERNELS") == "1":
        pytest.fail(f"SSMPOSE_REQUIRE_KERNELS=1 but not built: {', '.join(missing)}")
    pytest.skip(f"not built: {', '.join(missing)}")
