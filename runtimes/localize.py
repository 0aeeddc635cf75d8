"""Find the first node whose output diverges between a reference run and a candidate run (as Polygraphy's
`--onnx-outputs mark all`): every intermediate tensor of the graph becomes a graph output, both runs produce
all of them, and the nodes are compared in topological order.

The reference run is ONNX Runtime on the CPU over a reference graph (the export of the PyTorch model, or the
candidate file itself to compare runtimes only); the candidate is any ONNX backend over the file under test.
Tensors are matched by name, so both graphs must come from the same exporter and model structure.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import onnx

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


def mark_all_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs are every floating-point node output (types from shape
    inference; a tensor of unknown type is left out)."""
    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(marked)
    except Exception:  # noqa: BLE001  (custom ops without inference: fall back to what the file records)
        inferred = marked
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    existing = {o.name for o in marked.graph.output}
    for node in marked.graph.node:
        for name in node.output:
            if name and name not in existing and types.get(name) in _FLOAT_TYPES:
                marked.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
                existing.add(name)
    return marked


def run_all_outputs(path, backend: str, images: np.ndarray, **options) -> Dict[str, np.ndarray]:
    """Every floating-point tensor of the graph at `path`, computed by `backend` on `images`."""
    from . import load
    model = onnx.load(str(path))
    marked = mark_all_outputs(model)
    with tempfile.TemporaryDirectory(prefix="ssmpose-localize-") as tmp:
        marked_path = Path(tmp) / Path(path).name
        onnx.save(marked, str(marked_path))
        session = load(str(marked_path), backend, **options)
        x = np.ascontiguousarray(images, dtype=session.input_spec.dtype)
        if backend.startswith("ort"):
            names = [o.name for o in session.session.get_outputs()]
            values = session.session.run(names, {session.input_spec.name: x})
            return dict(zip(names, values))
        if backend == "openvino":
            result = session.request.infer({0: x})
            return {port.get_any_name(): np.asarray(value) for port, value in result.items()}
    raise ValueError(f"--localize supports the ONNX backends ort-cpu, ort-cuda and openvino, not {backend}")


def tensor_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """max |candidate - reference| / max |reference| (the reference's own scale; infinite for non-finite
    candidate values where the reference is finite)."""
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(candidate, dtype=np.float64)
    if not np.isfinite(got).all() and np.isfinite(ref).all():
        return float("inf")
    scale = max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-12)
    return float(np.abs(got - ref).max() / scale) if ref.size else 0.0


def first_divergence(graph: onnx.GraphProto, reference: Dict[str, np.ndarray], candidate: Dict[str, np.ndarray],
                     tolerance: float) -> dict:
    """Walk `graph`'s nodes in order; return the first whose output error (tensor_error) exceeds `tolerance`,
    with the node's name, op type, inputs (initializers marked) and error, plus how many tensors were
    compared."""
    initializers = {t.name for t in graph.initializer}
    compared = 0
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name not in reference or name not in candidate:
                continue
            ref, got = reference[name], candidate[name]
            if ref.shape != got.shape:
                return {"diverged": True, "node": node.name, "op_type": node.op_type, "index": index,
                        "output": name, "error": None, "compared": compared,
                        "reason": f"shape {got.shape} against {ref.shape}",
                        "inputs": _describe_inputs(node, initializers)}
            compared += 1
            error = tensor_error(ref, got)
            if error > tolerance:
                return {"diverged": True, "node": node.name, "op_type": node.op_type, "index": index,
                        "output": name, "error": error, "compared": compared, "reason": "error above tolerance",
                        "inputs": _describe_inputs(node, initializers)}
    return {"diverged": False, "compared": compared}


def _describe_inputs(node: onnx.NodeProto, initializers) -> list:
    return [f"{name} (initializer)" if name in initializers else name for name in node.input if name]


def localize(candidate_file, backend: str, images: np.ndarray, tolerance: float, reference_file=None,
             candidate_options: Optional[dict] = None) -> dict:
    """The first node of `candidate_file` whose output under `backend` diverges from ort-cpu's run of
    `reference_file` (default: the same file, so only the runtimes differ)."""
    reference_file = reference_file or candidate_file
    images = np.asarray(images)[:1]
    reference = run_all_outputs(reference_file, "ort-cpu", images.astype(np.float32))
    candidate = run_all_outputs(candidate_file, backend, images, **(candidate_options or {}))
    graph = onnx.load(str(candidate_file), load_external_data=False).graph
    report = first_divergence(graph, reference, candidate, tolerance)
    return {**report, "reference": f"ort-cpu on {reference_file}", "candidate": f"{backend} on {candidate_file}",
            "tolerance": tolerance}
