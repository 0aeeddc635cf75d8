"""The `torch` backend: the PyTorch model itself (eager), on CPU or CUDA, float32 or float16."""
from __future__ import annotations

import numpy as np
import torch

from ..custom_ops import ops
from .base import BackendUnavailable, InputSpec, Session


class TorchSession(Session):
    backend = "torch"

    def __init__(self, model, device: str = "cpu", dtype: str = "float32", reference_ops: bool = False,
                 channels_last: bool = False):
        """`model`: a registered model name, a checkpoint path or an nn.Module from ssmpose.build_model.

        `reference_ops=True` runs the pure-PyTorch operators instead of the compiled kernels.
        """
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("torch backend: device 'cuda' requested but torch sees no CUDA device")
        if dtype not in ("float32", "float16"):
            raise ValueError(f"torch backend: dtype must be float32 or float16, got {dtype!r}")
        module = _as_module(model)
        self.device = torch.device(device)
        self.torch_dtype = getattr(torch, dtype)
        self.model = module.to(self.device, self.torch_dtype).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.reference_ops = reference_ops
        h, w = module.meta["input_size"]
        frames = int(module.meta.get("num_frames", 1))
        shape = (None, 3, h, w) if frames == 1 else (None, frames, 3, h, w)
        super().__init__(dict(module.meta), InputSpec("images", shape, dtype))

    def _run_torch(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, self.torch_dtype, non_blocking=True)
        with torch.inference_mode(), ops.force_reference(self.reference_ops):
            return self.model(x)

    def _run_numpy(self, images: np.ndarray) -> np.ndarray:
        return self._run_torch(torch.from_numpy(images)).float().cpu().numpy()


def _as_module(model) -> torch.nn.Module:
    from .. import build_model, load_checkpoint
    from ..training.models import list_models
    if isinstance(model, torch.nn.Module):
        if not hasattr(model, "meta"):
            raise TypeError("torch backend: the module has no .meta; build it with ssmpose.build_model()")
        return model
    if isinstance(model, str) and model in list_models():
        return build_model(model)
    return load_checkpoint(model)
