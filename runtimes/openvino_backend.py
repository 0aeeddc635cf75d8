"""The `openvino` backend: OpenVINO CPU inference of the portable ONNX graph.

Custom-form graphs need the ssmpose OpenVINO extension, which does not exist yet; they are refused
with a clear message.

Precision: OpenVINO's CPU plugin computes in bfloat16 by default on CPUs that have it (AVX512-BF16 /
AMX), whatever the model's type; on hrvmamba_tiny that alone is a 1.7 % heatmap error. The session asks
for the graph's own precision (float32, or float16 for an fp16 export) unless `precision` says otherwise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import BackendUnavailable, InputSpec, Session
from .onnx_metadata import read_onnx_metadata


class OpenVinoSession(Session):
    backend = "openvino"

    PRECISIONS = ("model", "f32", "bf16", "f16")

    def __init__(self, path, device: str = "CPU", threads: int = 0, precision: str = "model"):
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailable("openvino backend: the openvino package is not installed "
                                     "(pip install openvino)") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"openvino: ONNX file {self.path} does not exist")
        metadata, domains, _ = read_onnx_metadata(self.path)
        if "ssmpose" in domains:
            raise BackendUnavailable(f"openvino: {self.path.name} is a custom-form graph (ssmpose domain ops) and "
                                     f"ssmpose has no OpenVINO extension yet; export with --ops portable")
        if precision not in self.PRECISIONS:
            raise ValueError(f"openvino: precision must be one of {', '.join(self.PRECISIONS)}, got {precision!r}")
        if precision == "model":
            precision = "f16" if metadata.get("dtype") == "float16" else "f32"
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        model = core.read_model(str(self.path))
        self.compiled = core.compile_model(model, device, config)
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        port = self.compiled.input(0)
        shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        dtype = "float16" if port.get_element_type() == ov.Type.f16 else "float32"
        self.request = self.compiled.create_infer_request()
        super().__init__(metadata, InputSpec(port.get_any_name(), shape, dtype))

    def _run_numpy(self, images: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: images})
        return np.asarray(next(iter(result.values())), dtype=np.float32)
