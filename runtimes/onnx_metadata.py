"""Read the ssmpose metadata and the op domains of an ONNX file without loading its weights."""
from __future__ import annotations

from pathlib import Path
from typing import Set, Tuple


def read_onnx_metadata(path) -> Tuple[dict, Set[str]]:
    """Returns (metadata with JSON values decoded, set of node domains used by the graph)."""
    import onnx

    from ..export.metadata import decode_props
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others for bytes that are not ONNX
        raise ValueError(f"{path} is not a readable ONNX file: {type(err).__name__}: {err}") from None
    metadata = decode_props(model.metadata_props)
    metadata.setdefault("model", Path(path).stem)
    domains = {node.domain for node in model.graph.node}
    return metadata, domains
