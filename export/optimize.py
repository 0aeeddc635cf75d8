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


def _scalar_initializers(model) -> dict:
    import numpy as np
    from onnx import numpy_helper
    return {init.name: float(np.asarray(numpy_helper.to_array(init)).reshape(-1)[0])
            for init in model.graph.initializer if int(np.prod(init.dims)) == 1}


def fuse_erf_gelu(model) -> int:
    """Replace every x * (0.5 * (erf(x / sqrt 2) + 1)), the five nodes torch.onnx writes for F.gelu below opset
    20, by one Gelu (opset 20, approximate "none": defined by that same formula). Works on an onnx.ModelProto
    in place (the caller sets the opset import to 20); returns the number of Gelu nodes made."""
    import math

    import onnx
    scalars = _scalar_initializers(model)
    nodes = list(model.graph.node)
    producer = {out: n for n in nodes for out in n.output}
    consumers = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}

    def is_scalar(name, value):
        return name in scalars and math.isclose(scalars[name], value, rel_tol=1e-3)

    def only_consumer(node):
        users = consumers.get(node.output[0], [])
        return users[0] if len(users) == 1 and node.output[0] not in graph_outputs else None

    def other_input(node, known):
        return node.input[1] if node.input[0] == known else node.input[0] if node.input[1] == known else None

    position = {id(n): i for i, n in enumerate(nodes)}   # the wrappers in `nodes` stay alive, so ids are stable
    removed, fused = set(), 0
    for erf in (n for n in nodes if n.op_type == "Erf" and n.domain in ("", "ai.onnx")):
        div = producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or not is_scalar(div.input[1], math.sqrt(2.0)):
            continue
        x = div.input[0]
        add = only_consumer(erf)
        if add is None or add.op_type != "Add" or not is_scalar(other_input(add, erf.output[0]), 1.0):
            continue
        half = only_consumer(add)
        if half is None or half.op_type != "Mul" or not is_scalar(other_input(half, add.output[0]), 0.5):
            continue
        final = only_consumer(half)
        if final is None or final.op_type != "Mul" or other_input(final, half.output[0]) != x:
            continue
        if only_consumer(div) is not erf:
            continue
        removed.update(position[id(n)] for n in (div, erf, add, half))
        gelu = onnx.helper.make_node("Gelu", [x], list(final.output), name=final.name)
        final.CopyFrom(gelu)
        fused += 1
    kept = []
    for i, node in enumerate(nodes):
        if i not in removed:
            kept.append(onnx.NodeProto())
            kept[-1].CopyFrom(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    used = {name for n in model.graph.node for name in n.input}
    produced = {name for n in model.graph.node for name in n.output}
    for init in [i for i in model.graph.initializer if i.name not in used and i.name not in graph_outputs]:
        model.graph.initializer.remove(init)
    for info in [v for v in model.graph.value_info if v.name not in produced]:
        model.graph.value_info.remove(info)
    return fused


def use_layer_norm_op(model) -> int:
    """Replace every LayerNormalization over the last axis with float32 statistics (axis -1, stash_type 1,
    scale and bias given, only the normalised output used) by one `ssmpose::LayerNorm` (domain version 3,
    docs/ops.md), which computes exactly that. Works on an onnx.ModelProto in place (the caller imports the
    domain at version 3); returns the number of nodes replaced."""
    import onnx

    from .schemas import DOMAIN, LAYER_NORM_EPSILON, PLUGIN_NAMESPACE, PLUGIN_VERSION
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
             if v.type.tensor_type.HasField("shape")}
    replaced = 0
    for index, node in enumerate(model.graph.node):
        if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axis, stash_type = attrs.get("axis", -1), attrs.get("stash_type", 1)
        last_axis = axis == -1 or (node.input[0] in ranks and axis == ranks[node.input[0]] - 1)
        has_bias = len(node.input) == 3 and node.input[2] != ""
        extra_outputs = any(name for name in node.output[1:])
        if not last_axis or stash_type != 1 or not has_bias or extra_outputs:
            continue
        model.graph.node[index].CopyFrom(onnx.helper.make_node(
            "LayerNorm", list(node.input), [node.output[0]], name=node.name, domain=DOMAIN,
            epsilon=float(attrs.get("epsilon", LAYER_NORM_EPSILON)), plugin_version=PLUGIN_VERSION,
            plugin_namespace=PLUGIN_NAMESPACE))
        replaced += 1
    return replaced
