"""Facts about registered models, computed from the models themselves."""
from __future__ import annotations

from typing import List, Optional

import torch

from .training.models import build_model, list_models, model_spec


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe_models(task: Optional[str] = None) -> List[dict]:
    rows = []
    for name in list_models(task):
        spec = model_spec(name)
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = build_model(name)
        outputs = f"{spec.num_outputs} keypoints" if spec.task == "pose" else f"{spec.num_outputs} classes"
        rows.append({"name": name, "task": spec.task, "params": count_parameters(model),
                     "input_sizes": [list(s) for s in spec.input_sizes], "outputs": outputs,
                     "description": spec.description})
    return rows
