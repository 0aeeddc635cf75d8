"""Read the ssmpose metadata, the op domains and the largest activation of an ONNX file without loading
its weights."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Set, Tuple


def largest_activation_per_image(graph) -> Optional[int]:
    """Elements per image of the graph's largest batch-dependent value, from its recorded shapes: a value
    whose shape has one symbolic dimension, the leading one (the batch, or a Reshape's -1 of it), counts
    the product of its other dimensions. None when no value has such a shape."""
    largest = None
    for value in list(graph.value_info) + list(graph.output):
        tensor = value.type.tensor_type
        if not tensor.HasField("shape") or not tensor.shape.dim:
            continue
        dims = list(tensor.shape.dim)
        if dims[0].HasField("dim_value") or not all(d.HasField("dim_value") for d in dims[1:]):
            continue
        per_image = math.prod(d.dim_value for d in dims[1:])
        largest = per_image if largest is None else max(largest, per_image)
    return largest


def read_onnx_metadata(path) -> Tuple[dict, Set[str], Optional[int]]:
    """Returns (metadata with JSON values decoded, set of node domains used by the graph,
    largest_activation_per_image)."""
    import onnx

    from ..export.metadata import decode_props
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others for bytes that are not ONNX
        raise ValueError(f"{path} is not a readable ONNX file: {type(err).__name__}: {err}") from None
    metadata = decode_props(model.metadata_props)
    metadata.setdefault("model", Path(path).stem)
    domains = {node.domain for node in model.graph.node}
    return metadata, domains, largest_activation_per_image(model.graph)
