"""What `ssmpose inspect model.onnx` reports: metadata, inputs/outputs, op histogram, portability."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Union

import onnx

from .metadata import decode_props

STANDARD_DOMAINS = ("", "ai.onnx")
MIN_PORTABLE_OPSET = 17
SEQUENCE_LOOPS = ("Loop", "Scan")


def _shape(value_info) -> list:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]


def _io(value_info) -> dict:
    elem = value_info.type.tensor_type.elem_type
    return {"name": value_info.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else None,
            "shape": _shape(value_info)}


def _op_name(node) -> str:
    return node.op_type if node.domain in STANDARD_DOMAINS else f"{node.domain}::{node.op_type}"


def inspect_model(source: Union[str, Path, onnx.ModelProto]) -> dict:
    """Summary of an ONNX model (a path or a ModelProto) as a JSON-friendly dict."""
    path = None
    if isinstance(source, onnx.ModelProto):
        model = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {path} does not exist")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as err:  # DecodeError and friends for bytes that are not ONNX
            raise ValueError(f"{path} is not a readable ONNX file: {type(err).__name__}: {err}") from None
    graph = model.graph
    histogram = Counter(_op_name(n) for n in graph.node)
    opsets = {e.domain or "ai.onnx": e.version for e in model.opset_import}
    problems = sorted({f"non-standard op {_op_name(n)}" for n in graph.node if n.domain not in STANDARD_DOMAINS})
    problems += sorted({f"{n.op_type} node (loop over the sequence)" for n in graph.node
                        if n.op_type in SEQUENCE_LOOPS})
    problems += [f"{f.domain}::{f.name} is a model-local function" for f in model.functions]
    default_opset = opsets.get("ai.onnx", 0)
    if default_opset < MIN_PORTABLE_OPSET:
        problems.append(f"opset {default_opset} < {MIN_PORTABLE_OPSET}")
    params = sum(int(_numel(init)) for init in graph.initializer)
    dtypes = Counter(onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name for init in graph.initializer)
    return {
        "path": str(path) if path else None,
        "file_size": path.stat().st_size if path else model.ByteSize(),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "ir_version": model.ir_version,
        "opset_import": opsets,
        "metadata": decode_props(model.metadata_props),
        "inputs": [_io(v) for v in graph.input],
        "outputs": [_io(v) for v in graph.output],
        "node_count": len(graph.node),
        "op_histogram": dict(sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0]))),
        "initializers": len(graph.initializer),
        "parameters": params,
        "initializer_dtypes": dict(sorted(dtypes.items())),
        "portable": not problems,
        "portability_problems": problems,
        "custom_ops": sorted(k for k in histogram if "::" in k),
    }


def _numel(init) -> int:
    n = 1
    for d in init.dims:
        n *= d
    return n


def format_report(report: dict) -> str:
    """Human-readable form of `inspect_model`'s dict."""
    lines = []
    title = report["path"] or "model"
    lines.append(f"{title}  ({report['file_size'] / 1e6:.1f} MB, {report['producer']}, IR {report['ir_version']}, "
                 f"opsets {', '.join(f'{d} {v}' for d, v in sorted(report['opset_import'].items()))})")
    meta = report["metadata"]
    if meta:
        lines.append("metadata:")
        width = max(len(k) for k in meta)
        for key in sorted(meta):
            value = meta[key]
            text = value if isinstance(value, str) else _compact(value)
            lines.append(f"  {key:<{width}}  {text}")
    else:
        lines.append("metadata: none (not an ssmpose export?)")
    frames = meta.get("num_frames", 1) if isinstance(meta.get("num_frames", 1), int) else 1
    for label in ("inputs", "outputs"):
        lines.append(f"{label}:")
        for i, v in enumerate(report[label]):
            shape = "x".join(str(d) for d in v["shape"]) if v["shape"] is not None else "?"
            what = (f"  (clips of {frames} frames in time order; predicts frame {frames // 2})"
                    if label == "inputs" and i == 0 and frames > 1 else "")
            lines.append(f"  {v['name']}: {v['dtype']} [{shape}]{what}")
    lines.append(f"nodes: {report['node_count']}   initializers: {report['initializers']} "
                 f"({report['parameters']:,} values; {', '.join(f'{k} {v}' for k, v in report['initializer_dtypes'].items())})")
    lines.append("op histogram:")
    for op, count in report["op_histogram"].items():
        lines.append(f"  {count:6d}  {op}")
    if report["portable"]:
        lines.append("portable: yes (standard ONNX operators only, no Loop/Scan)")
    else:
        lines.append("portable: no (" + "; ".join(report["portability_problems"]) + ")")
    return "\n".join(lines)


def _compact(value) -> str:
    import json
    text = json.dumps(value, separators=(", ", ": "))
    return text if len(text) <= 160 else text[:157] + "..."
