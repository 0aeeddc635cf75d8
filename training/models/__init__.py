"""Model families; importing this package registers every model."""
from . import hrvmamba  # noqa: F401  (registers the HRVMamba models)
from . import glsmamba  # noqa: F401
from . import mamkpd  # noqa: F401
from .registry import build_model, list_models, model_spec

__all__ = ["build_model", "list_models", "model_spec"]
