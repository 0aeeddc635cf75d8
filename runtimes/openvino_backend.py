"""The `openvino` backend: OpenVINO CPU inference of an exported ONNX graph (or an OpenVINO IR .xml saved from
one).

Portable graphs run on stock OpenVINO. Custom-form graphs (``ssmpose`` domain nodes) need the ssmpose
OpenVINO extension ``libssmpose_ov.so`` (:mod:`ssmpose.custom_ops.openvino_library`), which is added to the
Core for them; without it they are refused with the reason.

Precision: OpenVINO's CPU plugin computes in bfloat16 by default on CPUs that have it (AVX512-BF16 /
AMX), whatever the model's type; on hrvmamba_tiny that alone is a 1.7 % heatmap error. The session asks
for the graph's own precision (float32, or float16 for an fp16 export) unless `precision` says otherwise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import BackendUnavailable, InputSpec, Session
from .onnx_metadata import read_onnx_metadata


def _add_extension(core, path: Path):
    from ..custom_ops import openvino_library

    library = openvino_library.openvino_library_path()
    if library is None:
        raise BackendUnavailable(f"openvino: {path.name} is a custom-form graph (ssmpose domain ops), which needs "
                                 f"the ssmpose OpenVINO extension: {openvino_library.unavailable_reason()}. "
                                 f"Or export with --ops portable")
    core.add_extension(str(library))
    return library


def read_ir_metadata(path: Path):
    """(metadata, uses ssmpose ops) of an OpenVINO IR .xml made from an ssmpose export: by save_ir (the metadata
    under rt_info/ssmpose_metadata), or by OpenVINO's own conversion (ovc, convert_model + save_model), which keeps
    the ONNX metadata_props under rt_info/framework."""
    import json
    import xml.etree.ElementTree as ET
    from types import SimpleNamespace

    from ..export.metadata import decode_props

    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise ValueError(f"openvino: {path} is not a readable OpenVINO IR file: {err}") from None
    custom = any(layer.get("version") == "ssmpose" for layer in root.iter("layer"))
    node = root.find("rt_info/ssmpose_metadata")
    if node is not None and node.get("value") is not None:
        return json.loads(node.get("value")), custom
    framework = root.find("rt_info/framework")
    children = list(framework) if framework is not None else []
    props = [SimpleNamespace(key=child.tag, value=child.get("value")) for child in children]
    metadata = decode_props(p for p in props if p.value is not None)
    if "ssmpose_version" not in metadata:
        raise ValueError(f"openvino: {path} carries no ssmpose metadata (neither rt_info/ssmpose_metadata nor the "
                         f"export's metadata under rt_info/framework): convert an ssmpose export, e.g. with "
                         f"ssmpose.runtimes.openvino_backend.save_ir")
    return metadata, custom


def save_ir(onnx_path, xml_path, compress_to_fp16: bool = False) -> Path:
    """Convert an exported ONNX file to OpenVINO IR (.xml + .bin) with its ssmpose metadata. Weights stay in
    their exported precision unless `compress_to_fp16` (OpenVINO's save_model compresses by default)."""
    import json

    import openvino as ov

    onnx_path, xml_path = Path(onnx_path), Path(xml_path)
    metadata, domains, _ = read_onnx_metadata(onnx_path)
    core = ov.Core()
    if "ssmpose" in domains:
        _add_extension(core, onnx_path)
    model = core.read_model(str(onnx_path))
    model.set_rt_info(json.dumps(metadata), "ssmpose_metadata")
    ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
    return xml_path


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
        if precision not in self.PRECISIONS:
            raise ValueError(f"openvino: precision must be one of {', '.join(self.PRECISIONS)}, got {precision!r}")
        core = ov.Core()
        self.extension = None
        if self.path.suffix == ".xml":
            metadata, custom = read_ir_metadata(self.path)
        else:
            metadata, domains, _ = read_onnx_metadata(self.path)
            custom = "ssmpose" in domains
        if custom:
            self.extension = _add_extension(core, self.path)
        if precision == "model":
            precision = "f16" if metadata.get("dtype") == "float16" else "f32"
        config = {"INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            model = core.read_model(str(self.path))
            self.compiled = core.compile_model(model, device, config)
        except RuntimeError as err:
            raise RuntimeError(f"openvino: cannot load {self.path}: {err}") from None
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        port = self.compiled.input(0)
        shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        dtype = "float16" if port.get_element_type() == ov.Type.f16 else "float32"
        self.request = self.compiled.create_infer_request()
        super().__init__(metadata, InputSpec(port.get_any_name(), shape, dtype))

    def _run_numpy(self, images: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: images})
        return np.asarray(next(iter(result.values())), dtype=np.float32)
