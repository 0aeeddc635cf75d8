"""ssmpose: deploy state-space (Mamba) pose models from PyTorch to any inference runtime, with proof of parity.

Public entry points:
    build_model(name, **overrides)      build a registered model
    list_models(task=None)              names of the registered models
    load_checkpoint(path, name=None)    official mmpose-style or ssmpose checkpoint -> model (strict)
    save_checkpoint(model, path)        ssmpose format (safetensors + JSON build config)
"""
import os as _os

_here = _os.path.dirname(_os.path.abspath(__file__))
_checkout = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "training")) and _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")):
    # Imported from a source checkout: the subpackages (training/, custom_ops/, ...) sit beside this
    # folder; the wheel puts them inside it.
    __path__.append(_checkout)

from ._version import __version__
from .checkpoint import CheckpointError, convert_checkpoint, load_checkpoint, save_checkpoint
from .training.models import build_model, list_models, model_spec

__all__ = ["__version__", "build_model", "list_models", "model_spec", "load_checkpoint", "save_checkpoint",
           "convert_checkpoint", "CheckpointError"]
