"""MODEL arguments of the pose commands -> a runtime session: a registered name (seeded weights), a checkpoint,
or an exported .onnx file. A PyTorch model asked to run on an ONNX backend is exported first."""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Optional

import torch

from . import runtimes
from .training.models import list_models

ONNX_SUFFIXES = (".onnx",)


def is_onnx_file(model) -> bool:
    return isinstance(model, (str, Path)) and Path(model).suffix.lower() in ONNX_SUFFIXES


def default_backend(model) -> str:
    return "ort-cpu" if is_onnx_file(model) else "torch"


def load_torch_model(model) -> torch.nn.Module:
    """A registered name (seeded random weights, with a warning) or a checkpoint file -> model in eval mode."""
    from .checkpoint import load_checkpoint
    from .export.exporter import resolve_model
    if isinstance(model, torch.nn.Module):
        return model.eval()
    model = str(model)
    if model in list_models():
        warnings.warn(f"{model}: seeded random weights (no checkpoint given), so its keypoints mean nothing; "
                      f"pass a checkpoint for real predictions", stacklevel=2)
        return resolve_model(model)[0]
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"model {model!r} is neither a registered model name (ssmpose models), nor an "
                                f"existing checkpoint or .onnx file")
    return load_checkpoint(path).eval()


def open_session(model, backend: Optional[str] = None, *, form: str = "custom", fp16: bool = False,
                 export_dir=None, **options):
    """A session of `model` on `backend` (default: torch for PyTorch models, ort-cpu for .onnx files).

    For an ONNX backend and a PyTorch model, the model is exported in `form` (fp16 if asked) into
    `export_dir` (default: a temporary folder kept for the life of the process). The torch backend runs on
    CUDA when torch sees a device, unless `device` says otherwise; ONNX backends take no device."""
    backend = backend or default_backend(model)
    if backend != "torch" and options.get("device"):
        raise ValueError(f"--device applies to the torch backend; {backend} chooses its device by name "
                         f"(ort-cpu, ort-cuda)")
    runtimes.require_backend(backend)
    if is_onnx_file(model):
        if backend == "torch":
            raise ValueError(f"{model} is an ONNX file; the torch backend needs a model name or checkpoint "
                             f"(choose --backend ort-cpu, ort-cuda or openvino)")
        if not Path(model).is_file():
            raise FileNotFoundError(f"ONNX file {model} does not exist")
        return runtimes.load(str(model), backend, **options)
    module = load_torch_model(model)
    if backend == "torch":
        options.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
        if fp16:
            options.setdefault("dtype", "float16")
        return runtimes.load(module, "torch", **options)
    path = export_for_backend(module, form, fp16, export_dir)
    return runtimes.load(str(path), backend, **options)


_TEMP_DIRS = []


def export_for_backend(module: torch.nn.Module, form: str, fp16: bool, export_dir=None) -> Path:
    from .export import export_model
    if export_dir is None:
        _TEMP_DIRS.append(tempfile.TemporaryDirectory(prefix="ssmpose-export-"))
        export_dir = _TEMP_DIRS[-1].name
    h, w = module.meta["input_size"]
    path = Path(export_dir) / f"{module.meta['model']}_{h}x{w}_{form}{'_fp16' if fp16 else ''}.onnx"
    export_model(module, path, form=form, fp16=fp16)
    return path
