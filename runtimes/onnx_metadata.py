"""Read the ssmpose metadata and the op domains of an ONNX file without loading its weights."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Set, Tuple


def read_onnx_metadata(path) -> Tuple[dict, Set[str]]:
    """Returns (metadata with JSON values decoded, set of node domains used by the graph)."""
    import onnx
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others for non-ONNX bytes
        raise ValueError(f"{path} is not a readable ONNX file: {type(err).__name__}: {err}") from None
    metadata = {}
    for prop in model.metadata_props:
        try:
            metadata[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError:
            metadata[prop.key] = prop.value
    domains = {node.domain for node in model.graph.node}
    for function in model.functions:
        domains |= {node.domain for node in function.node}
    metadata.setdefault("model", Path(path).stem)
    return metadata, domains
