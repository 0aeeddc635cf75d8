"""The `tensorrt` backend: not available yet (TensorRT plugins are a later issue)."""
from __future__ import annotations

from .base import BackendUnavailable


def load_tensorrt(model, **options):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise BackendUnavailable("tensorrt backend: the TensorRT Python package is not installed") from None
    raise BackendUnavailable("tensorrt backend: ssmpose's TensorRT plugins are not implemented yet, so "
                             "TensorRT sessions cannot be created")
