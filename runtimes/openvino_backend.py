"""The `openvino` backend: OpenVINO CPU inference of the portable ONNX graph.

Custom-form graphs need the ssmpose OpenVINO extension, which does not exist yet; they are refused
with a clear message.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import BackendUnavailable, InputSpec, Session
from .onnx_metadata import read_onnx_metadata


class OpenVinoSession(Session):
    backend = "openvino"

    def __init__(self, path, device: str = "CPU", threads: int = 0):
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailable("openvino backend: the openvino package is not installed "
                                     "(pip install openvino)") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"openvino: ONNX file {self.path} does not exist")
        metadata, domains = read_onnx_metadata(self.path)
        if "ssmpose" in domains:
            raise BackendUnavailable(f"openvino: {self.path.name} is a custom-form graph (ssmpose domain ops) and "
                                     f"ssmpose has no OpenVINO extension yet; export with --ops portable")
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        model = core.read_model(str(self.path))
        self.compiled = core.compile_model(model, device, config)
        port = self.compiled.input(0)
        shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        dtype = "float16" if port.get_element_type() == ov.Type.f16 else "float32"
        self.request = self.compiled.create_infer_request()
        super().__init__(metadata, InputSpec(port.get_any_name(), shape, dtype))

    def _run_numpy(self, images: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: images})
        return np.asarray(next(iter(result.values())), dtype=np.float32)
