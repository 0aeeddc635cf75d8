"""ONNX export (custom-op and portable forms), metadata and inspection.

    export_model(model, output, form="custom"|"portable", ...)   -> ExportResult
    export_forms(model, {form: output, ...}, ...)                 -> {form: ExportResult} (one trace)
    read_metadata(path_or_model)                                  -> dict
    inspect_model(path_or_model)                                  -> dict (see inspect.py)
"""
from .exporter import (DEFAULT_OPSETS, FORMS, SUPPORTED_OPSETS, ExportError, ExportResult, export_forms, export_model,
                       parse_batch, parse_input_size)
from .inspect import format_report, inspect_model
from .metadata import read_metadata
from .schemas import DOMAIN, DOMAIN_VERSION, register_schemas

register_schemas()

__all__ = ["export_model", "export_forms", "ExportResult", "ExportError", "read_metadata", "inspect_model", "format_report",
           "register_schemas", "parse_input_size", "parse_batch", "FORMS", "SUPPORTED_OPSETS", "DEFAULT_OPSETS",
           "DOMAIN", "DOMAIN_VERSION"]
