"""Loading and saving checkpoints, with strict key matching and no arbitrary unpickling.

Two formats are read:
- official (mmpose / VMamba style): a torch pickle `{'state_dict': ..., 'meta': ...}` (or `{'model': ...}`,
  or a bare state dict). It is read with `torch.load(weights_only=True)`; if it carries objects that
  loader refuses (e.g. mmengine bookkeeping in `meta`), it is read again by a restricted unpickler that
  builds tensors, containers and numpy arrays only and replaces every other object by an inert
  placeholder, so no code from the file ever runs.
- ssmpose: a safetensors file whose metadata holds the model name and build options as JSON.
"""
from __future__ import annotations

import collections
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from .training.models import build_model, model_spec

FORMAT_NAME = "ssmpose"
FORMAT_VERSION = "1"
SAFETENSORS_MAGIC_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names file and keys."""


# ---------------------------------------------------------------------------------------------------------
# Reading

class _Inert:
    """Stands in for any pickled object that is not a tensor, container or numpy array."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


def _numpy_globals() -> dict:
    import numpy as np
    core = getattr(np, "_core", None) or np.core
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = core.multiarray._reconstruct
        allowed[(mod, "scalar")] = core.multiarray.scalar
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        allowed = _ALLOWED_GLOBALS.get((module, name)) or _numpy_globals().get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("numpy.dtypes"):
            import numpy as np
            return getattr(np.dtypes, name)
        return _Inert


class _RestrictedPickleModule:
    """A `pickle_module` for torch.load whose Unpickler only builds tensors and plain data."""

    Unpickler = _RestrictedUnpickler
    load = staticmethod(lambda f, **kw: _RestrictedUnpickler(f, **kw).load())
    __name__ = "ssmpose_restricted_pickle"


def _torch_load(path: Path):
    import numpy as np
    core = getattr(np, "_core", None) or np.core
    safe = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    safe += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err) and "Unsupported global" not in str(err):
            raise
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 0 < header_len < SAFETENSORS_MAGIC_MAX_HEADER and head[8:9] == b"{"


def read_checkpoint(path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Read a checkpoint file; returns (state_dict, info). info has 'format' and, for ssmpose files, 'config'."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        if _is_safetensors(path):
            return _read_safetensors(path)
        raw = _torch_load(path)
    except CheckpointError:
        raise
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError,
            KeyError, AttributeError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} could not be read (corrupt, truncated or not a PyTorch/"
                              f"safetensors file): {type(err).__name__}: {err}") from None
    state_dict = _extract_state_dict(raw, path)
    return state_dict, {"format": "official", "meta": raw.get("meta") if isinstance(raw, dict) else None}


def _read_safetensors(path: Path):
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, RuntimeError, ValueError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is not a valid safetensors file: {err}") from None
    config = None
    if metadata.get("format") == FORMAT_NAME:
        try:
            config = json.loads(metadata["config"])
        except (KeyError, json.JSONDecodeError) as err:
            raise CheckpointError(f"checkpoint {path}: ssmpose metadata 'config' is missing or not JSON "
                                  f"({err})") from None
    return state_dict, {"format": FORMAT_NAME if config else "safetensors", "config": config}


def _extract_state_dict(raw, path: Path) -> Dict[str, torch.Tensor]:
    if isinstance(raw, dict):
        for key in ("state_dict", "model", "model_ema"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not raw:
        raise CheckpointError(f"checkpoint {path} holds no state dict (expected a dict with 'state_dict')")
    out = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint {path}: entry {key!r} of the state dict is "
                                  f"{type(value).__name__}, not a tensor")
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


# ---------------------------------------------------------------------------------------------------------
# Matching

def infer_model(state_dict: Dict[str, torch.Tensor]) -> Tuple[str, dict]:
    """Guess the registered model (and build options) a state dict belongs to, from its layout."""
    from .training.models.hrvmamba import CLS_CONFIGS, POSE_CONFIGS
    options = {}
    if any(".value_proj." in k for k in state_dict):
        options["dcn_variant"] = "released"
    if "backbone.transition1.0.0.weight" in state_dict and "head.final_layer.weight" in state_dict:
        width = state_dict["backbone.transition1.0.0.weight"].shape[0]
        for variant, cfg in POSE_CONFIGS.items():
            if cfg[0][0] == width:
                if state_dict["head.final_layer.weight"].shape[0] != 17:
                    options["num_keypoints"] = int(state_dict["head.final_layer.weight"].shape[0])
                return f"hrvmamba_{variant}", options
    if "transition1.0.0.weight" in state_dict and "neck.final_layer.conv.weight" in state_dict:
        width = state_dict["transition1.0.0.weight"].shape[0]
        for variant, cfg in CLS_CONFIGS.items():
            if cfg[0][0] == width:
                if state_dict["head.weight"].shape[0] != 1000:
                    options["num_classes"] = int(state_dict["head.weight"].shape[0])
                return f"hrvmamba_cls_{variant}", options
    raise CheckpointError("cannot tell which model this state dict belongs to: it matches no registered "
                          "HRVMamba layout; pass the model name explicitly")


def load_state_dict_strict(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], source: str) -> None:
    """Load with strict key and shape matching; raise CheckpointError listing every mismatch by name."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [f"{k}: checkpoint {list(state_dict[k].shape)} vs model {list(v.shape)}"
                  for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or mis_shaped:
        name = getattr(model, "name", type(model).__name__)
        parts = [f"checkpoint {source} does not fit model {name}:"]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mis_shaped)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
                parts.append(f"{len(items)} {label}: {shown}")
        try:
            guess, options = infer_model(state_dict)
            parts.append(f"(the checkpoint looks like {guess}" + (f" with {options})" if options else ")"))
        except CheckpointError:
            pass
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def load_checkpoint(path, model_name: Optional[str] = None, **overrides) -> torch.nn.Module:
    """Build the model a checkpoint belongs to and load it strictly. Returns the model in eval mode.

    `model_name` and `overrides` (e.g. input_size=(384, 288)) default to what the file records (ssmpose
    format) or to what its layout shows (official checkpoints).
    """
    state_dict, info = read_checkpoint(path)
    config = info.get("config") or {}
    if model_name is None:
        if config.get("model"):
            model_name = config["model"]
            overrides = {**config.get("options", {}), **overrides}
        else:
            model_name, inferred = infer_model(state_dict)
            overrides = {**inferred, **overrides}
    elif config.get("model") == model_name:
        overrides = {**config.get("options", {}), **overrides}
    model_spec(model_name)  # a clear error for unknown names
    model = build_model(model_name, **overrides)
    load_state_dict_strict(model, state_dict, str(path))
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# Writing

def save_checkpoint(model: torch.nn.Module, path) -> Path:
    """Write `model` in the ssmpose format (safetensors + JSON build config), atomically."""
    from safetensors.torch import save_file
    build = getattr(model, "build_config", None)
    if not build:
        raise CheckpointError("model has no build_config: build it with ssmpose.build_model()")
    path = Path(path)
    state_dict = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": json.dumps(build, sort_keys=True)}
    _atomic_write(path, lambda tmp: save_file(state_dict, tmp, metadata=metadata))
    return path


def save_official_checkpoint(model: torch.nn.Module, path, meta: Optional[dict] = None) -> Path:
    """Write `model` as an mmpose-style checkpoint ({'state_dict', 'meta'}), e.g. for interoperability tests."""
    path = Path(path)
    payload = {"state_dict": collections.OrderedDict((k, v.detach().cpu()) for k, v in model.state_dict().items()),
               "meta": meta or {}}
    _atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def convert_checkpoint(source, output, model_name: Optional[str] = None, **overrides) -> Path:
    """Official checkpoint -> ssmpose safetensors file (strictly checked on the way)."""
    model = load_checkpoint(source, model_name, **overrides)
    return save_checkpoint(model, output)
