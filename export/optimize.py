"""Graph clean-up after translation: constant folding, a selection of rewrite rules, initializer lifting.

torch.onnx's own `optimize=True` runs the same onnxscript machinery, but its combined rewrite pass takes
minutes on these graphs (thousands of nodes); applying the rules one at a time gives the same result in
seconds. Only rules that are exact (no-op removal, reshape/slice/cast collapsing) or that fold
BatchNormalization into the preceding Conv are used. ONNX shape inference is not run here (the exporter
already records every value's shape).
"""
from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript import optimizer
from onnxscript.rewriter import RewritePass

try:  # onnxscript >= 0.5 publishes its rules here
    from onnxscript.rewriter.rules import common as rules
except ImportError:  # pragma: no cover - older layouts: fold constants only
    rules = None

RULE_NAMES = (
    "no_op_cast_rule", "no_op_expand_rule", "no_op_transpose_rule", "add_0_rule", "sub_0_rule", "mul_by_1_rule",
    "div_by_1_rule", "dropout_inference_rule", "dropout_zero_rule", "cast_cast_rule", "reshape_reshape_rule",
    "materialize_reshape_shape_rule", "unsqueeze_unsqueeze_rule", "squeeze_reshape_1d_rule",
    "transpose_transpose_rule", "collapse_slice_rule", "collapse_slice2_rule", "flatten_to_reshape_rule",
    "successive_relu_rule", "fuse_batchnorm_into_conv_rule",
)


def _rules():
    return [getattr(rules, name) for name in RULE_NAMES if hasattr(rules, name)] if rules is not None else []


def optimize_model(model: ir.Model, rounds: int = 2) -> None:
    """Optimise `model` in place."""
    selected = _rules()
    for _ in range(rounds):
        before = sum(1 for _ in model.graph)
        optimizer.fold_constants(model, onnx_shape_inference=False)
        for rule in selected:
            RewritePass([rule])(model)
        optimizer.remove_unused_nodes(model)
        if sum(1 for _ in model.graph) == before:
            break
    for p in (common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
              common_passes.DeduplicateInitializersPass(),
              common_passes.CommonSubexpressionEliminationPass(),
              common_passes.RemoveUnusedNodesPass(),
              common_passes.NameFixPass()):
        p(model)
