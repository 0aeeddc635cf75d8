"""Model registry: every model family registers named constructors; `build_model` is the one entry point."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

import torch.nn as nn


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str                       # "pose" or "classification"
    constructor: Callable[..., nn.Module]
    default_input_size: Tuple[int, int]
    input_sizes: Tuple[Tuple[int, int], ...]
    num_outputs: int                # keypoints (pose) or classes (classification)
    description: str = ""
    defaults: Dict = field(default_factory=dict)


_REGISTRY: Dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}") from None


def list_models(task: str = None) -> List[str]:
    return sorted(n for n, s in _REGISTRY.items() if task is None or s.task == task)


def build_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; keyword overrides replace the variant's defaults (e.g. input_size)."""
    spec = model_spec(name)
    try:
        model = spec.constructor(**{**spec.defaults, **overrides})
    except TypeError as err:
        raise TypeError(f"build_model({name!r}): bad override: {err}") from None
    # Recorded so that checkpoints can rebuild the same model.
    model.build_config = {"model": name, "options": {k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in overrides.items()}}
    return model
