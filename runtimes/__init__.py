"""One inference API over every runtime: `load(model, backend, **options).run(images) -> heatmaps`.

Backends (names used everywhere: CLI flags, JSON reports): torch, ort-cpu, ort-cuda, openvino, tensorrt.
`model` is a registered model name, checkpoint or nn.Module for `torch`, and an exported .onnx file for
the others.
"""
from __future__ import annotations

from typing import Callable, Dict, List

from .base import BackendUnavailable, InputSpec, Session

BACKENDS = ("torch", "ort-cpu", "ort-cuda", "openvino", "tensorrt")


def _load_torch(model, **options):
    from .torch_backend import TorchSession
    return TorchSession(model, **options)


def _load_ort(backend):
    def load(model, **options):
        from .onnxruntime_backend import OrtSession
        return OrtSession(model, backend=backend, **options)
    return load


def _load_openvino(model, **options):
    from .openvino_backend import OpenVinoSession
    return OpenVinoSession(model, **options)


def _load_tensorrt(model, **options):
    from .tensorrt_backend import load_tensorrt
    return load_tensorrt(model, **options)


_LOADERS: Dict[str, Callable[..., Session]] = {
    "torch": _load_torch, "ort-cpu": _load_ort("ort-cpu"), "ort-cuda": _load_ort("ort-cuda"),
    "openvino": _load_openvino, "tensorrt": _load_tensorrt,
}


def load(model, backend: str = "torch", **options) -> Session:
    """Open `model` on `backend`. Raises BackendUnavailable with the reason when it cannot run here."""
    if backend not in _LOADERS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return _LOADERS[backend](model, **options)


def require_backend(backend: str) -> None:
    """Raise BackendUnavailable (saying what is missing) when `backend` cannot run on this machine; checks the
    runtime package and device only, so callers can refuse before exporting or loading a model."""
    if backend not in _LOADERS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend in available_backends():
        return
    missing = {"ort-cpu": "onnxruntime is not installed (pip install onnxruntime)",
               "ort-cuda": "this machine's onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu, "
                           "and a CUDA device)",
               "openvino": "the openvino package is not installed (pip install openvino)",
               "tensorrt": "the TensorRT Python package is not installed"}
    raise BackendUnavailable(f"{backend}: {missing[backend]}")


def available_backends() -> List[str]:
    """Backends whose runtime package (and device) is present on this machine."""
    found = ["torch"]
    try:
        import onnxruntime
        providers = onnxruntime.get_available_providers()
        found += [name for name, p in (("ort-cpu", "CPUExecutionProvider"), ("ort-cuda", "CUDAExecutionProvider"))
                  if p in providers]
    except ImportError:
        pass
    try:
        import openvino  # noqa: F401
        found.append("openvino")
    except ImportError:
        pass
    try:
        import tensorrt  # noqa: F401
        found.append("tensorrt")
    except ImportError:
        pass
    return found


__all__ = ["load", "available_backends", "require_backend", "BACKENDS", "BackendUnavailable", "Session", "InputSpec"]
