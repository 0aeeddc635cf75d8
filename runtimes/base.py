"""What every runtime session offers: run(images) -> heatmaps, the model's metadata, and input checks.

Single-image models take images (B, 3, H, W); video models (metadata `num_frames` T > 1) take clips
(B, T, 3, H, W), the frames in time order, and predict the centre frame's heatmaps (B, K, H/4, W/4)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (package missing, no device, library not built)."""


@dataclass(frozen=True)
class InputSpec:
    """Expected image input: (batch, 3, H, W), or (batch, T, 3, H, W) for a video model, with batch None when
    dynamic, and the element type."""

    name: str
    shape: Sequence[Optional[int]]
    dtype: str  # "float32" or "float16"


class Session:
    """A loaded model on one backend.

    `run(images)` takes normalised images (B, 3, H, W) (clips (B, T, 3, H, W) for a video model) as a numpy
    array or a torch tensor and returns
    heatmaps of the same kind: numpy in, float32 numpy out; torch in, torch out (on the session's device
    for GPU backends, so that timing loops need no host copies). Subclasses implement `_run_numpy` and
    may override `_run_torch`.
    """

    backend: str = ""

    def __init__(self, metadata: dict, input_spec: InputSpec, max_batch_per_run: Optional[int] = None):
        """`max_batch_per_run`: larger batches are run in consecutive slices of at most this many images
        (None: no limit), e.g. where a runtime cannot index the graph's largest tensor at a full batch."""
        self.metadata = metadata
        self.input_spec = input_spec
        self.max_batch_per_run = max_batch_per_run

    def run(self, images):
        self.validate(images)
        limit = self.max_batch_per_run
        if limit is None or images.shape[0] <= limit:
            return self._run_one(images)
        parts = [self._run_one(images[start:start + limit]) for start in range(0, images.shape[0], limit)]
        if isinstance(images, np.ndarray):
            return np.concatenate(parts)
        import torch
        return torch.cat(parts)

    def _run_one(self, images):
        if isinstance(images, np.ndarray):
            return self._run_numpy(np.ascontiguousarray(images, dtype=self.input_spec.dtype))
        return self._run_torch(images)

    def _run_numpy(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _run_torch(self, images):
        import torch
        out = self._run_numpy(np.ascontiguousarray(images.detach().cpu().float().numpy(),
                                                   dtype=self.input_spec.dtype))
        return torch.from_numpy(out).to(images.device)

    def validate(self, images) -> None:
        """Check type, rank, channels, size and dtype against the model; say what was expected."""
        where = f"{self.backend} session for {self.metadata.get('model', 'the model')}"
        expected = tuple("B" if d is None else d for d in self.input_spec.shape)
        if not hasattr(images, "shape") or not hasattr(images, "dtype"):
            raise TypeError(f"{where}: expected a numpy array or torch tensor, got {type(images).__name__}")
        shape = tuple(images.shape)
        if len(shape) != len(expected):
            what = (f"clips of {expected[1]} frames " if len(expected) == 5 else "images ") + str(expected)
            raise ValueError(f"{where}: input '{self.input_spec.name}' must be {what}, got shape {shape}")
        for axis, (got, want) in enumerate(zip(shape, self.input_spec.shape)):
            if want is not None and got != want:
                raise ValueError(f"{where}: input '{self.input_spec.name}' must be {expected}, got shape "
                                 f"{shape} (axis {axis} is {got}, expected {want})")
        kind = str(images.dtype).removeprefix("torch.")
        if kind not in ("float32", "float16", "float64", "bfloat16"):
            raise TypeError(f"{where}: input '{self.input_spec.name}' must hold normalised floating-point "
                            f"images ({self.input_spec.dtype} expected), got {kind}")

    def describe(self) -> dict:
        return {"backend": self.backend, "model": self.metadata.get("model"),
                "input": {"name": self.input_spec.name, "shape": list(self.input_spec.shape),
                          "dtype": self.input_spec.dtype},
                "max_batch_per_run": self.max_batch_per_run}
