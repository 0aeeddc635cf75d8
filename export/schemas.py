"""ONNX operator schemas of the `ssmpose` domain, with type and shape inference.

Domain version 1 has SelectiveScan and DeformAggregate; version 2 adds SelectiveScan2D; version 3 adds
LayerNorm; version 4 adds AddLayerNorm and MultiKernelDepthwiseConv; version 5 gives DeformAggregate an optional
offset_bias input and an activation attribute (its forward-only epilogues); version 6 gives SelectiveScan2D an
optional dt_projection input (the dt projection folded in, forward only); version 7 adds VSSBlockTail (a
VMamba block's per-position chain after its scan). The other ops are unchanged, so they
resolve to their first schemas in a later graph. A graph imports the lowest version that has all its ops and
their features (`op_domain_version`, `nodes_domain_version`): a graph with SelectiveScan and DeformAggregate
only stays version 1.

Registering them (`register_schemas()`, done when `ssmpose.export` is imported) lets onnxscript emit the
nodes, lets `onnx.checker.check_model(full_check=True)` check them and lets
`onnx.shape_inference.infer_shapes` compute their output shapes. The schemas follow docs/ops.md: inputs
in the listed order (optional ones may be the empty name), the attributes with their defaults, and the
TensorRT attributes `plugin_version` / `plugin_namespace` (DESIGN.md section 4), which every exported
custom node carries.

The registration lives in this process only. An exported file does not depend on it: the exporter also
writes the shapes of every intermediate value (`graph.value_info`), so a consumer that never imports
ssmpose still sees the custom nodes' output shapes.
"""
from __future__ import annotations

from typing import List, Optional

import onnx
import onnx.defs
from onnx import helper

DOMAIN = "ssmpose"
DOMAIN_VERSION = 1          # SelectiveScan, DeformAggregate
SCAN_2D_DOMAIN_VERSION = 2  # SelectiveScan2D
LAYER_NORM_DOMAIN_VERSION = 3  # LayerNorm
FUSED_DOMAIN_VERSION = 4  # AddLayerNorm, MultiKernelDepthwiseConv
EPILOGUE_DOMAIN_VERSION = 5  # DeformAggregate's offset_bias and activation
DT_PROJECTION_DOMAIN_VERSION = 6  # SelectiveScan2D's dt_projection
VSS_TAIL_DOMAIN_VERSION = 7  # VSSBlockTail
LATEST_DOMAIN_VERSION = VSS_TAIL_DOMAIN_VERSION
OP_SINCE_VERSION = {"SelectiveScan": DOMAIN_VERSION, "DeformAggregate": DOMAIN_VERSION,
                    "SelectiveScan2D": SCAN_2D_DOMAIN_VERSION, "LayerNorm": LAYER_NORM_DOMAIN_VERSION,
                    "AddLayerNorm": FUSED_DOMAIN_VERSION, "MultiKernelDepthwiseConv": FUSED_DOMAIN_VERSION,
                    "VSSBlockTail": VSS_TAIL_DOMAIN_VERSION}
LAYER_NORM_EPSILON = 1e-5
DWCONV_MAX_KERNEL = 15   # SSM_DWCONV_MAX_KERNEL / SSM_DWCONV_MAX_GROUPS of the kernel library
DWCONV_MAX_GROUPS = 16
ACTIVATIONS = ("none", "gelu")   # MultiKernelDepthwiseConv
DEFORM_ACTIVATIONS = ("none", "silu")
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = DOMAIN

_FLOAT_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"]
_Param = onnx.defs.OpSchema.FormalParameter
_Option = onnx.defs.OpSchema.FormalParameterOption

SCAN_INPUTS = ("u", "delta", "A", "Bs", "Cs", "Ds", "delta_bias")
SCAN_2D_INPUTS = ("x", "delta", "A", "Bs", "Cs", "Ds", "delta_bias", "dt_projection")
SCAN_2D_DIRECTIONS = 4
SCAN_2D_MAX_DT_RANK = 64  # SSM_SCAN2D_MAX_DT_RANK of the kernel library
DEFORM_INPUTS = ("value", "offset_mask", "offset_bias")
VSS_TAIL_INPUTS = ("Y", "R", "out_norm_weight", "out_norm_bias", "out_proj", "norm_weight", "norm_bias",
                   "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")
VSS_TAIL_MAX_WIDE = 1024     # SSM_VSS_TAIL_MAX_WIDE / SSM_VSS_TAIL_MAX_CHANNELS of the kernel library
VSS_TAIL_MAX_CHANNELS = 512
DEFORM_INT_ATTRIBUTES = ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h",
                         "dilation_w", "group", "group_channels")


def _attribute(name: str, default, doc: str) -> "onnx.defs.OpSchema.Attribute":
    return onnx.defs.OpSchema.Attribute(name, helper.make_attribute(name, default), doc)


def _plugin_attributes():
    return [_attribute("plugin_version", PLUGIN_VERSION, "TensorRT plugin version (ignored elsewhere)"),
            _attribute("plugin_namespace", PLUGIN_NAMESPACE, "TensorRT plugin namespace (ignored elsewhere)")]


def _dims(type_proto) -> Optional[List[onnx.TensorShapeProto.Dimension]]:
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return None
    return list(tensor.shape.dim)


def _output(elem_type: int, dims) -> onnx.TypeProto:
    out = onnx.TypeProto()
    out.tensor_type.elem_type = elem_type
    if dims is not None:
        shape = out.tensor_type.shape
        shape.SetInParent()
        for d in dims:
            new = shape.dim.add()
            if isinstance(d, int):
                new.dim_value = d
            elif d is not None:
                new.CopyFrom(d)
    return out


def _int_attr(ctx, name: str, default: int) -> int:
    attr = ctx.get_attribute(name)
    return default if attr is None else attr.i


def _float_attr(ctx, name: str, default: float) -> float:
    attr = ctx.get_attribute(name)
    return default if attr is None else attr.f


def _fail(op: str, message: str):
    raise onnx.shape_inference.InferenceError(f"[ShapeInferenceError] ssmpose::{op}: {message}")


def _check_rank(op: str, name: str, dims, rank: int) -> None:
    if dims is not None and len(dims) != rank:
        _fail(op, f"{name} must have rank {rank}, got {len(dims)}")


def _infer_selective_scan(ctx) -> None:
    u = ctx.get_input_type(0)
    for index, name in enumerate(SCAN_INPUTS[:5]):
        rank = {"u": 3, "delta": 3, "A": 2, "Bs": 4, "Cs": 4}[name]
        _check_rank("SelectiveScan", name, _dims(ctx.get_input_type(index)), rank)
    ctx.set_output_type(0, _output(u.tensor_type.elem_type, _dims(u)))


def _infer_selective_scan_2d(ctx) -> None:
    op = "SelectiveScan2D"
    x = ctx.get_input_type(0)
    projected = ctx.get_num_inputs() > 7 and ctx.has_input(7)
    if projected:  # domain version 6: input 1 is x_proj (B, H, W, K, R + 2N), Bs / Cs omitted
        if ctx.has_input(3) or ctx.has_input(4):
            _fail(op, "with dt_projection, Bs and Cs must be omitted (they are read from input 1, x_proj)")
        ranks = {"x": 4, "delta": 5, "A": 2, "dt_projection": 3}
        names = ("x", "delta", "A")
    else:
        if not (ctx.has_input(3) and ctx.has_input(4)):
            _fail(op, "Bs and Cs are required unless dt_projection is given")
        ranks = {"x": 4, "delta": 4, "A": 2, "Bs": 5, "Cs": 5}
        names = SCAN_2D_INPUTS[:5]
    for name in names:
        _check_rank(op, name, _dims(ctx.get_input_type(SCAN_2D_INPUTS.index(name))), ranks[name])
    if projected:
        _check_rank(op, "dt_projection", _dims(ctx.get_input_type(7)), 3)
    directions = _int_attr(ctx, "directions", SCAN_2D_DIRECTIONS)
    if directions != SCAN_2D_DIRECTIONS:
        _fail(op, f"attribute directions must be {SCAN_2D_DIRECTIONS} (domain version 2), got {directions}")
    bdims = _dims(ctx.get_input_type(1 if projected else 3))
    if bdims is not None and bdims[3].HasField("dim_value") and bdims[3].dim_value != directions:
        _fail(op, f"Bs.shape[3] must be the {directions} directions, got {bdims[3].dim_value}")
    ctx.set_output_type(0, _output(x.tensor_type.elem_type, _dims(x)))


def _infer_deform_aggregate(ctx) -> None:
    op = "DeformAggregate"
    value, offset_mask = ctx.get_input_type(0), ctx.get_input_type(1)
    vdims, odims = _dims(value), _dims(offset_mask)
    _check_rank(op, "value", vdims, 4)
    _check_rank(op, "offset_mask", odims, 4)
    if ctx.get_num_inputs() > 2 and ctx.has_input(2):
        bdims = _dims(ctx.get_input_type(2))
        _check_rank(op, "offset_bias", bdims, 1)
        if bdims and odims and bdims[0].HasField("dim_value") and odims[3].HasField("dim_value") \
                and bdims[0].dim_value != odims[3].dim_value:
            _fail(op, f"offset_bias has {bdims[0].dim_value} values, offset_mask has {odims[3].dim_value} columns")
    activation = ctx.get_attribute("activation")
    if activation is not None and activation.s.decode() not in DEFORM_ACTIVATIONS:
        _fail(op, f"attribute activation must be one of {', '.join(DEFORM_ACTIVATIONS)}, got {activation.s.decode()!r}")
    group, channels = _int_attr(ctx, "group", 1), _int_attr(ctx, "group_channels", 1)
    dims = None
    if vdims is not None:
        batch = vdims[0]
        if odims is not None:
            out_h, out_w = odims[1], odims[2]
        else:  # from the input size and the attributes
            out_h, out_w = _conv_output(vdims[1], ctx, "h"), _conv_output(vdims[2], ctx, "w")
        dims = [batch, out_h, out_w, group * channels]
    ctx.set_output_type(0, _output(value.tensor_type.elem_type, dims))


def _conv_output(dim, ctx, axis: str):
    if not dim.HasField("dim_value"):
        return None
    k, s = _int_attr(ctx, f"kernel_{axis}", 3), _int_attr(ctx, f"stride_{axis}", 1)
    p, d = _int_attr(ctx, f"pad_{axis}", 1), _int_attr(ctx, f"dilation_{axis}", 1)
    return (dim.dim_value + 2 * p - (d * (k - 1) + 1)) // s + 1


def _selective_scan_schema() -> onnx.defs.OpSchema:
    optional = dict(param_option=_Option.Optional)
    schema = onnx.defs.OpSchema(
        "SelectiveScan", DOMAIN, DOMAIN_VERSION,
        "Mamba S6 selective scan with VMamba grouping (docs/ops.md). y has the shape and type of u.",
        inputs=[_Param("u", "T", "(B, G*D, L)"), _Param("delta", "T", "(B, G*D, L)"),
                _Param("A", "T", "(G*D, N)"), _Param("Bs", "T", "(B, G, N, L)"),
                _Param("Cs", "T", "(B, G, N, L)"), _Param("Ds", "T", "(G*D)", **optional),
                _Param("delta_bias", "T", "(G*D)", **optional)],
        outputs=[_Param("y", "T", "(B, G*D, L)")],
        type_constraints=[("T", _FLOAT_TYPES, "float tensors")],
        attributes=[_attribute("delta_softplus", 1, "apply softplus to delta + delta_bias")] + _plugin_attributes())
    schema.set_type_and_shape_inference_function(_infer_selective_scan)
    return schema


def _selective_scan_2d_schema(version: int = SCAN_2D_DOMAIN_VERSION) -> onnx.defs.OpSchema:
    """Version 2, or version 6 with the optional dt_projection input (then input 1 is x_proj and Bs / Cs are
    omitted)."""
    optional = dict(param_option=_Option.Optional)
    projected = version >= DT_PROJECTION_DOMAIN_VERSION
    bc = optional if projected else {}
    inputs = [_Param("x", "T", "(B, H, W, D)"),
              _Param("delta", "T", "(B, H, W, K*D); with dt_projection x_proj (B, H, W, K, R + 2N)"),
              _Param("A", "T", "(K*D, N)"), _Param("Bs", "T", "(B, H, W, K, N)", **bc),
              _Param("Cs", "T", "(B, H, W, K, N)", **bc), _Param("Ds", "T", "(K*D)", **optional),
              _Param("delta_bias", "T", "(K*D)", **optional)]
    if projected:
        inputs.append(_Param("dt_projection", "T", "(K, D, R): delta = x_proj[..., :R] @ dt_projection[k].T",
                             **optional))
    schema = onnx.defs.OpSchema(
        "SelectiveScan2D", DOMAIN, version,
        "SS2D's four-direction selective scan in one node, channel-last (docs/ops.md). y has the shape and "
        "type of x.",
        inputs=inputs,
        outputs=[_Param("y", "T", "(B, H, W, D)")],
        type_constraints=[("T", _FLOAT_TYPES, "float tensors")],
        attributes=[_attribute("delta_softplus", 1, "apply softplus to delta + delta_bias"),
                    _attribute("directions", SCAN_2D_DIRECTIONS, "K, the scan directions (4: SS2D's order)")]
        + _plugin_attributes())
    schema.set_type_and_shape_inference_function(_infer_selective_scan_2d)
    return schema


def _infer_layer_norm(ctx, op: str = "LayerNorm", params: int = 1) -> None:
    x = ctx.get_input_type(0)
    xdims = _dims(x)
    if xdims is not None and len(xdims) < 1:
        _fail(op, "X must have rank >= 1, got a scalar")
    if xdims and xdims[-1].HasField("dim_value") and xdims[-1].dim_value < 1:
        _fail(op, "X must have at least one channel (last dimension), got 0")
    for index, name in ((params, "weight"), (params + 1, "bias")):
        dims = _dims(ctx.get_input_type(index))
        _check_rank(op, name, dims, 1)
        if dims and xdims and dims[0].HasField("dim_value") and xdims[-1].HasField("dim_value") \
                and dims[0].dim_value != xdims[-1].dim_value:
            _fail(op, f"{name} has {dims[0].dim_value} values, X has {xdims[-1].dim_value} channels")
    epsilon = _float_attr(ctx, "epsilon", LAYER_NORM_EPSILON)
    if not 0.0 < epsilon < float("inf"):
        _fail(op, f"attribute epsilon must be finite and > 0, got {epsilon}")
    ctx.set_output_type(0, _output(x.tensor_type.elem_type, xdims))


def _infer_add_layer_norm(ctx) -> None:
    op = "AddLayerNorm"
    _infer_layer_norm(ctx, op, params=2)
    xdims, rdims = _dims(ctx.get_input_type(0)), _dims(ctx.get_input_type(1))
    if xdims is not None and rdims is not None:
        known = lambda dims: [d.dim_value if d.HasField("dim_value") else None for d in dims]  # noqa: E731
        xs, rs = known(xdims), known(rdims)
        if len(xs) != len(rs) or any(a is not None and b is not None and a != b for a, b in zip(xs, rs)):
            _fail(op, f"R must have X's shape (no broadcasting), got {rs} and {xs}")
    x = ctx.get_input_type(0)
    ctx.set_output_type(1, _output(x.tensor_type.elem_type, xdims))


def vss_tail_shape_error(inner: int, channels: int, hidden: int) -> Optional[str]:
    """Why VSSBlockTail cannot take these widths (D of Y, C of R, H of fc1), or None."""
    for name, value, limit in (("D (Y's channels)", inner, VSS_TAIL_MAX_WIDE),
                               ("C (R's channels)", channels, VSS_TAIL_MAX_CHANNELS),
                               ("H (fc1's outputs)", hidden, VSS_TAIL_MAX_WIDE)):
        if not 1 <= value <= limit:
            return f"{name} = {value} is outside 1..{limit}"
    return None


def _infer_vss_block_tail(ctx) -> None:
    op = "VSSBlockTail"
    known = lambda dims: [d.dim_value if d.HasField("dim_value") else None for d in dims]  # noqa: E731
    dims = {name: _dims(ctx.get_input_type(i)) for i, name in enumerate(VSS_TAIL_INPUTS)}
    ydims, rdims = dims["Y"], dims["R"]
    for name in ("Y", "R"):
        if dims[name] is not None and len(dims[name]) < 1:
            _fail(op, f"{name} must have rank >= 1, got a scalar")
    if ydims is not None and rdims is not None:
        ys, rs = known(ydims), known(rdims)
        if len(ys) != len(rs) or any(a is not None and b is not None and a != b for a, b in zip(ys[:-1], rs[:-1])):
            _fail(op, f"Y {ys} and R {rs} must agree except in the last axis")
    ranks = {"out_norm_weight": 1, "out_norm_bias": 1, "out_proj": 2, "norm_weight": 1, "norm_bias": 1,
             "fc1_weight": 2, "fc1_bias": 1, "fc2_weight": 2, "fc2_bias": 1}
    for name, rank in ranks.items():
        _check_rank(op, name, dims[name], rank)
    inner = known(ydims)[-1] if ydims else None
    channels = known(rdims)[-1] if rdims else None
    hidden = known(dims["fc1_weight"])[-1] if dims["fc1_weight"] else None
    wanted = {"out_norm_weight": (inner,), "out_norm_bias": (inner,), "out_proj": (inner, channels),
              "norm_weight": (channels,), "norm_bias": (channels,), "fc1_weight": (channels, hidden),
              "fc1_bias": (hidden,), "fc2_weight": (hidden, channels), "fc2_bias": (channels,)}
    for name, shape in wanted.items():
        if dims[name] is None:
            continue
        got = known(dims[name])
        if any(a is not None and b is not None and a != b for a, b in zip(got, shape)):
            _fail(op, f"{name} has shape {got}, expected {[s if s is not None else '?' for s in shape]} "
                      f"(D = {inner}, C = {channels}, H = {hidden})")
    if None not in (inner, channels, hidden):
        problem = vss_tail_shape_error(inner, channels, hidden)
        if problem:
            _fail(op, problem)
    epsilon = _float_attr(ctx, "epsilon", LAYER_NORM_EPSILON)
    if not 0.0 < epsilon < float("inf"):
        _fail(op, f"attribute epsilon must be finite and > 0, got {epsilon}")
    out = None if rdims is None else list(rdims)
    if out is not None and ydims is not None:
        # Z takes R's last axis and, where R's leading dims are unknown, Y's.
        known_or_y = [r if r.HasField("dim_value") or r.HasField("dim_param") else y
                      for r, y in zip(rdims[:-1], ydims[:-1])]
        out = known_or_y + [rdims[-1]]
    ctx.set_output_type(0, _output(ctx.get_input_type(0).tensor_type.elem_type, out))


def _ints_attr(ctx, name: str) -> Optional[List[int]]:
    attr = ctx.get_attribute(name)
    return None if attr is None else list(attr.ints)


def depthwise_conv_attribute_error(kernel_sizes, group_channels, shuffle_groups, activation,
                                   channels: Optional[int] = None, kernel_max: Optional[int] = None):
    """The first problem of MultiKernelDepthwiseConv's attributes (docs/ops.md), or None. `channels` and
    `kernel_max` (X's C and the weight's K) are checked when known."""
    if kernel_sizes is None or group_channels is None:
        return "attributes kernel_sizes and group_channels are required"
    if not 1 <= len(kernel_sizes) <= DWCONV_MAX_GROUPS or len(group_channels) != len(kernel_sizes):
        return (f"kernel_sizes and group_channels must have the same length, 1 to {DWCONV_MAX_GROUPS}, got "
                f"{len(kernel_sizes)} and {len(group_channels)}")
    if kernel_max is not None and not (kernel_max % 2 == 1 and 1 <= kernel_max <= DWCONV_MAX_KERNEL):
        return f"weight's kernel size K must be odd, 1 to {DWCONV_MAX_KERNEL}, got {kernel_max}"
    limit = DWCONV_MAX_KERNEL if kernel_max is None else kernel_max
    for k in kernel_sizes:
        if k % 2 != 1 or not 1 <= k <= limit:
            return f"kernel_sizes must be odd, 1 to {limit} (the weight's K), got {list(kernel_sizes)}"
    if any(c < 1 for c in group_channels):
        return f"group_channels must be >= 1, got {list(group_channels)}"
    if channels is not None and sum(group_channels) != channels:
        return f"group_channels {list(group_channels)} sum to {sum(group_channels)}, X has {channels} channels"
    if shuffle_groups < 1 or (channels is not None and channels % shuffle_groups):
        return f"shuffle_groups must be >= 1 and divide the {channels} channels, got {shuffle_groups}"
    if activation not in ACTIVATIONS:
        return f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
    return None


def _infer_depthwise_conv(ctx) -> None:
    op = "MultiKernelDepthwiseConv"
    x = ctx.get_input_type(0)
    xdims, wdims = _dims(x), _dims(ctx.get_input_type(1))
    _check_rank(op, "X", xdims, 4)
    _check_rank(op, "weight", wdims, 3)
    _check_rank(op, "bias", _dims(ctx.get_input_type(2)), 1)
    value = lambda dims, i: dims[i].dim_value if dims and dims[i].HasField("dim_value") else None  # noqa: E731
    channels, kernel_max = value(xdims, 3), value(wdims, 2)
    if wdims is not None and value(wdims, 1) is not None and kernel_max is not None and value(wdims, 1) != kernel_max:
        _fail(op, f"weight must be (C, K, K), got {[value(wdims, i) for i in range(3)]}")
    activation = ctx.get_attribute("activation")
    problem = depthwise_conv_attribute_error(
        _ints_attr(ctx, "kernel_sizes"), _ints_attr(ctx, "group_channels"), _int_attr(ctx, "shuffle_groups", 1),
        "none" if activation is None else activation.s.decode(), channels, kernel_max)
    if problem:
        _fail(op, problem)
    ctx.set_output_type(0, _output(x.tensor_type.elem_type, xdims))


def _add_layer_norm_schema() -> onnx.defs.OpSchema:
    schema = onnx.defs.OpSchema(
        "AddLayerNorm", DOMAIN, FUSED_DOMAIN_VERSION,
        "S = X + R (rounded to the type) and Y = LayerNorm(S) over the last axis with float32 statistics "
        "(docs/ops.md): ONNX Add followed by LayerNormalization (axis -1, stash_type 1).",
        inputs=[_Param("X", "T", "(..., C)"), _Param("R", "T", "X's shape"), _Param("weight", "T", "(C)"),
                _Param("bias", "T", "(C)")],
        outputs=[_Param("Y", "T", "(..., C)"), _Param("S", "T", "(..., C), X + R")],
        type_constraints=[("T", _FLOAT_TYPES, "float tensors")],
        attributes=[_attribute("epsilon", LAYER_NORM_EPSILON, "added to the variance")] + _plugin_attributes())
    schema.set_type_and_shape_inference_function(_infer_add_layer_norm)
    return schema


def _depthwise_conv_schema() -> onnx.defs.OpSchema:
    required = onnx.defs.OpSchema.AttrType.INTS
    schema = onnx.defs.OpSchema(
        "MultiKernelDepthwiseConv", DOMAIN, FUSED_DOMAIN_VERSION,
        "Depthwise convolutions of a channel-last tensor with a kernel size per channel group, stride 1, zero "
        "'same' padding, then ShuffleNet's channel shuffle and an activation (docs/ops.md): HRVMamba's LPU.",
        inputs=[_Param("X", "T", "(B, H, W, C) channel-last"), _Param("weight", "T", "(C, K, K)"),
                _Param("bias", "T", "(C)")],
        outputs=[_Param("Y", "T", "(B, H, W, C)")],
        type_constraints=[("T", _FLOAT_TYPES, "float tensors")],
        attributes=[onnx.defs.OpSchema.Attribute("kernel_sizes", required, "odd kernel size per channel group"),
                    onnx.defs.OpSchema.Attribute("group_channels", required, "channels per group, in order"),
                    _attribute("shuffle_groups", 1, "channel shuffle groups (1: none)"),
                    _attribute("activation", "none", "'none' or 'gelu' (exact)")] + _plugin_attributes())
    schema.set_type_and_shape_inference_function(_infer_depthwise_conv)
    return schema


def _layer_norm_schema() -> onnx.defs.OpSchema:
    schema = onnx.defs.OpSchema(
        "LayerNorm", DOMAIN, LAYER_NORM_DOMAIN_VERSION,
        "Layer normalisation over the last axis with float32 statistics (docs/ops.md): ONNX "
        "LayerNormalization with axis -1 and stash_type 1. Y has the shape and type of X.",
        inputs=[_Param("X", "T", "(..., C)"), _Param("weight", "T", "(C)"), _Param("bias", "T", "(C)")],
        outputs=[_Param("Y", "T", "(..., C)")],
        type_constraints=[("T", _FLOAT_TYPES, "float tensors")],
        attributes=[_attribute("epsilon", LAYER_NORM_EPSILON, "added to the variance")] + _plugin_attributes())
    schema.set_type_and_shape_inference_function(_infer_layer_norm)
    return schema


def _vss_block_tail_schema() -> onnx.defs.OpSchema:
    shapes = {"Y": "(..., D), the scan's output", "R": "(..., C), the residual stream",
              "out_norm_weight": "(D)", "out_norm_bias": "(D)", "out_proj": "(D, C), applied as Y @ out_proj",
              "norm_weight": "(C)", "norm_bias": "(C)", "fc1_weight": "(C, H)", "fc1_bias": "(H)",
              "fc2_weight": "(H, C)", "fc2_bias": "(C)"}
    schema = onnx.defs.OpSchema(
        "VSSBlockTail", DOMAIN, VSS_TAIL_DOMAIN_VERSION,
        "A VMamba block's per-position chain after its scan (docs/ops.md): X1 = R + LayerNorm(Y) @ out_proj, "
        "Z = X1 + GELU(LayerNorm(X1) @ fc1_weight + fc1_bias) @ fc2_weight + fc2_bias.",
        inputs=[_Param(name, "T", shapes[name]) for name in VSS_TAIL_INPUTS],
        outputs=[_Param("Z", "T", "(..., C)")],
        type_constraints=[("T", _FLOAT_TYPES, "float tensors")],
        attributes=[_attribute("epsilon", LAYER_NORM_EPSILON, "of both LayerNorms")] + _plugin_attributes())
    schema.set_type_and_shape_inference_function(_infer_vss_block_tail)
    return schema


def _deform_aggregate_schema(version: int = DOMAIN_VERSION) -> onnx.defs.OpSchema:
    """Version 1, or version 5 with the optional offset_bias input and the activation attribute."""
    defaults = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1, dilation_w=1,
                    group=1, group_channels=1)
    attributes = [_attribute(name, defaults[name], name) for name in DEFORM_INT_ATTRIBUTES]
    attributes += [_attribute("offset_scale", 1.0, "scale of the kernel taps and offsets"),
                   _attribute("remove_center", 0, "skip the centre tap (0/1)")]
    inputs = [_Param("value", "T", "(B, H, W, G*C) channel-last"),
              _Param("offset_mask", "T", "(B, Hout, Wout, P), P >= G*K*3")]
    if version >= EPILOGUE_DOMAIN_VERSION:
        inputs.append(_Param("offset_bias", "T", "(P), added to offset_mask (rounded to T)",
                             param_option=_Option.Optional))
        attributes.append(_attribute("activation", "none", "'none' or 'silu', on the output rounded to T"))
    schema = onnx.defs.OpSchema(
        "DeformAggregate", DOMAIN, version,
        "DCNv4 aggregation without softmax (docs/ops.md). Output (B, Hout, Wout, group*group_channels).",
        inputs=inputs, outputs=[_Param("output", "T", "(B, Hout, Wout, G*C)")],
        type_constraints=[("T", _FLOAT_TYPES, "float tensors")],
        attributes=attributes + _plugin_attributes())
    schema.set_type_and_shape_inference_function(_infer_deform_aggregate)
    return schema


def register_schemas() -> None:
    """Register the ssmpose-domain schemas in this process (idempotent)."""
    for factory in (_selective_scan_schema, _deform_aggregate_schema, _selective_scan_2d_schema,
                    _layer_norm_schema, _add_layer_norm_schema, _depthwise_conv_schema,
                    lambda: _deform_aggregate_schema(EPILOGUE_DOMAIN_VERSION),
                    lambda: _selective_scan_2d_schema(DT_PROJECTION_DOMAIN_VERSION), _vss_block_tail_schema):
        schema = factory()
        if onnx.defs.has(schema.name, schema.since_version, DOMAIN) and \
                onnx.defs.get_schema(schema.name, schema.since_version, DOMAIN).since_version == schema.since_version:
            continue   # this version is registered (an earlier version alone does not count)
        onnx.defs.register_schema(schema)


def op_domain_version(op_types) -> int:
    """The `ssmpose` domain version a graph whose ssmpose nodes have these op types must import (1 when
    there are none)."""
    versions = [OP_SINCE_VERSION.get(op, DOMAIN_VERSION) for op in op_types]
    return max(versions, default=DOMAIN_VERSION)


def uses_deform_epilogues(node) -> bool:
    """Whether an onnx NodeProto is a DeformAggregate with an offset_bias input or an activation other than
    "none" (domain version 5)."""
    if node.op_type != "DeformAggregate":
        return False
    activation = next((a.s.decode() for a in node.attribute if a.name == "activation"), "none")
    return (len(node.input) > 2 and node.input[2] != "") or activation != "none"


def uses_dt_projection(node) -> bool:
    """Whether an onnx NodeProto is a SelectiveScan2D with a dt_projection input (domain version 6)."""
    return node.op_type == "SelectiveScan2D" and len(node.input) > 7 and node.input[7] != ""


def nodes_domain_version(nodes) -> int:
    """The `ssmpose` domain version a graph with these onnx NodeProtos (of the ssmpose domain) must import:
    `op_domain_version` of their types (7 with a VSSBlockTail), 5 where a DeformAggregate uses its epilogues, 6
    where a SelectiveScan2D has a dt_projection."""
    nodes = list(nodes)
    version = op_domain_version(n.op_type for n in nodes)
    if any(uses_deform_epilogues(n) for n in nodes):
        version = max(version, EPILOGUE_DOMAIN_VERSION)
    if any(uses_dt_projection(n) for n in nodes):
        version = max(version, DT_PROJECTION_DOMAIN_VERSION)
    return version
