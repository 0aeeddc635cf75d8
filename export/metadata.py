"""The metadata every exported ONNX file carries in `metadata_props`, and the function that reads it back.

Every value is stored JSON-encoded (strings too), so that `read_metadata` returns the same Python values
that went in. The keys (docs/export.md lists them with examples):

model, family, variant, task, dcn_variant      which model, e.g. "hrvmamba_small", "hrvmamba", "small"
input_size, batch                              [H, W]; "dynamic" or the fixed batch size
num_frames                                     video models only: T of the (batch, T, 3, H, W) clip input
input_name, output_name, io_dtype              graph input/output names and their element type
mean, std, color_order                         input normalisation (RGB, 0..255 scale)
dataset, num_keypoints, keypoint_names,        pose models: the keypoint conventions (dataset: registry name);
skeleton, flip_pairs, codec                    codec: {"type", "sigma", "heatmap_size"}
num_classes                                    classification models
export_form, opset, dtype                      "custom"/"portable", ONNX opset, compute dtype
chunk_size, scan_lowering                      portable form: the scan lowering's chunk and method
op_domain, op_domain_version                   "ssmpose" and the version the custom form imports, the lowest
                                               that has its ops (1 to 4; recorded for portable too)
ssmpose_version, metadata_version              versions of the package and of this key set
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import onnx

METADATA_VERSION = 1
_MODEL_KEYS = ("model", "task", "input_size", "num_frames", "dcn_variant", "dataset", "num_keypoints",
               "keypoint_names", "skeleton", "flip_pairs", "mean", "std", "color_order", "codec", "num_classes")


def build_metadata(model_meta: dict, *, input_size, batch, form: str, opset: int, dtype: str, io_dtype: str,
                   chunk_size, input_name: str, output_name: str, scan_lowering=None,
                   op_domain_version=None) -> dict:
    """The metadata of one export, from the model's `meta` and the export options (op_domain_version: the
    ssmpose domain version of the custom form, default 1)."""
    from .._version import __version__
    from .schemas import DOMAIN, DOMAIN_VERSION
    meta = {k: model_meta[k] for k in _MODEL_KEYS if k in model_meta}
    name = str(meta.get("model", "model"))
    family, _, variant = name.partition("_")
    h, w = (int(v) for v in input_size)
    meta["input_size"] = [h, w]
    if isinstance(meta.get("codec"), dict) and meta.get("task") == "pose":
        meta["codec"] = {**meta["codec"], "heatmap_size": [h // 4, w // 4]}
    meta.update({
        "family": family, "variant": variant or name,
        "batch": batch, "input_name": input_name, "output_name": output_name, "io_dtype": io_dtype,
        "export_form": form, "opset": int(opset), "dtype": dtype,
        "chunk_size": None if chunk_size is None else int(chunk_size), "scan_lowering": scan_lowering,
        "op_domain": DOMAIN,
        "op_domain_version": DOMAIN_VERSION if op_domain_version is None else int(op_domain_version),
        "ssmpose_version": __version__, "metadata_version": METADATA_VERSION,
    })
    return meta


def write_metadata(model: onnx.ModelProto, metadata: dict) -> None:
    """Replace the model's metadata_props by `metadata` (sorted keys, JSON values)."""
    del model.metadata_props[:]
    for key in sorted(metadata):
        prop = model.metadata_props.add()
        prop.key = key
        prop.value = json.dumps(metadata[key], sort_keys=True, separators=(",", ":"))


def decode_props(props) -> dict:
    """metadata_props -> dict, JSON values decoded (a value that is not JSON stays a string)."""
    out = {}
    for prop in props:
        try:
            out[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError:
            out[prop.key] = prop.value
    return out


def read_metadata(source: Union[str, Path, onnx.ModelProto]) -> dict:
    """The ssmpose metadata of an exported model (a path or a loaded ModelProto); weights are not loaded."""
    if isinstance(source, onnx.ModelProto):
        return decode_props(source.metadata_props)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others for bytes that are not ONNX
        raise ValueError(f"{path} is not a readable ONNX file: {type(err).__name__}: {err}") from None
    return decode_props(model.metadata_props)
