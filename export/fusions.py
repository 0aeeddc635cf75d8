"""Node fusions on the exported onnx.ModelProto: each replaces a pattern of standard nodes by one node that
computes exactly the same values, and checks every constant and shape it relies on, so that look-alikes are
left alone.

- `fuse_erf_gelu`: the five-node erf GELU -> one opset-20 `Gelu` (custom form at opset 20).
- `use_layer_norm_op`: LayerNormalization over the last axis -> `ssmpose::LayerNorm` (domain version 3).
- `use_depthwise_conv_op`: HRVMamba's LPU chain (Transpose to NCHW, Split, depthwise Convs, Concat, channel
  shuffle back to channel-last, Gelu) or a depthwise Conv between two Transposes -> one
  `ssmpose::MultiKernelDepthwiseConv` (domain version 4).
- `use_add_layer_norm_op`: a residual Add whose sum feeds a `ssmpose::LayerNorm` -> one `ssmpose::AddLayerNorm`
  (domain version 4).
- `use_deform_aggregate_epilogues`: the Add of a constant offset bias before an `ssmpose::DeformAggregate` and the
  SiLU (Sigmoid, Mul) after it -> that DeformAggregate's offset_bias input and activation (domain version 5).
- `use_block_diagonal_matmul`: SS2D's per-direction dt projection, an Einsum "...kr,kdr->...kd" with a constant
  weight -> Reshape, one MatMul with the block-diagonal weight, Reshape (standard ops, every form).
- `use_scan_dt_projection`: the Split of SS2D's x projection and that MatMul before an `ssmpose::SelectiveScan2D`
  -> the scan's x_proj and dt_projection inputs, for ranks up to MAX_FOLDED_DT_RANK (domain version 6).
- `use_vss_block_tail_op`: a VMamba block's chain after the scan (LayerNorm, out_proj, AddLayerNorm, fc1, GELU,
  fc2, the residual add) -> one `ssmpose::VSSBlockTail` (domain version 7). Unlike the fusions above it does not
  compute bit for bit what it replaces: it keeps the intermediates in float32 (docs/ops.md).
"""
from __future__ import annotations

from .schemas import VSS_TAIL_MAX_CHANNELS

def _rebuild(model, removed) -> None:
    """Drop the nodes at the positions in `removed` (in place), then the initializers and value_info entries
    nothing uses or produces any more."""
    import onnx
    kept = []
    for i, node in enumerate(model.graph.node):
        if i not in removed:
            kept.append(onnx.NodeProto())
            kept[-1].CopyFrom(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    graph_outputs = {o.name for o in model.graph.output}
    used = {name for n in model.graph.node for name in n.input}
    produced = {name for n in model.graph.node for name in n.output}
    for init in [i for i in model.graph.initializer if i.name not in used and i.name not in graph_outputs]:
        model.graph.initializer.remove(init)
    for info in [v for v in model.graph.value_info if v.name not in produced]:
        model.graph.value_info.remove(info)


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
    _rebuild(model, removed)
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


class _GraphIndex:
    """Who produces and who consumes each value of an onnx.ModelProto's main graph, its constant initializers
    and the shapes the exporter recorded (a dimension is its int value or its symbol; None when unknown)."""

    def __init__(self, model):
        from onnx import numpy_helper
        self.model = model
        self.nodes = list(model.graph.node)   # the wrappers stay alive, so id() identifies a node
        self.position = {id(n): i for i, n in enumerate(self.nodes)}
        self.producer = {out: n for n in self.nodes for out in n.output}
        self.consumers = {}
        for n in self.nodes:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)
        self.graph_outputs = {o.name for o in model.graph.output}
        self.initializers = {i.name: i for i in model.graph.initializer}
        self._to_array = numpy_helper.to_array
        self._taken = set()
        self.shapes = {}
        for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
            if v.type.tensor_type.HasField("shape"):
                self.shapes[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                       for d in v.type.tensor_type.shape.dim]

    def array(self, name):
        return self._to_array(self.initializers[name]) if name in self.initializers else None

    def sole_consumer(self, name):
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.graph_outputs else None

    def unique_name(self, stem: str) -> str:
        """A value name no initializer or node output of the graph (nor an earlier call) has taken."""
        name, n = stem, 0
        while name in self.initializers or name in self.producer or name in self._taken:
            n += 1
            name = f"{stem}_{n}"
        self._taken.add(name)
        return name

    def new_initializer(self, stem: str, values) -> str:
        from onnx import numpy_helper
        name = self.unique_name(stem)
        tensor = numpy_helper.from_array(values, name)
        self.model.graph.initializer.append(tensor)
        self.initializers[name] = tensor
        return name


def _attributes(node) -> dict:
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _is(node, op_type: str) -> bool:
    return node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx")


def _depthwise_kernel(index: _GraphIndex, conv):
    """(weight (c, k, k), bias (c) or None) of a stride-1, "same"-padded depthwise Conv with constant
    weights, else None."""
    weight = index.array(conv.input[1]) if len(conv.input) > 1 else None
    if weight is None or weight.ndim != 4 or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3]:
        return None
    channels, k = weight.shape[0], weight.shape[2]
    attrs = _attributes(conv)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if k % 2 != 1 or attrs.get("group", 1) != channels or auto_pad not in (b"NOTSET", "NOTSET") \
            or list(attrs.get("strides", [1, 1])) != [1, 1] or list(attrs.get("dilations", [1, 1])) != [1, 1] \
            or list(attrs.get("pads", [0] * 4)) != [k // 2] * 4:
        return None
    bias = None
    if len(conv.input) > 2 and conv.input[2]:
        bias = index.array(conv.input[2])
        if bias is None or bias.shape != (channels,):
            return None
    return weight[:, 0], bias


def _match_convolutions(index: _GraphIndex, nchw: str):
    """The depthwise Conv(s) reading the NCHW value `nchw`: one Conv, or Split(axis 1) -> one Conv per part
    -> Concat(axis 1) in the same order. Returns (nodes, kernels, output value) or None."""
    first = index.sole_consumer(nchw)
    if _is(first, "Conv"):
        kernel = _depthwise_kernel(index, first)
        return None if kernel is None else ([first], [kernel], first.output[0])
    if not _is(first, "Split") or _attributes(first).get("axis") != 1 or len(first.input) < 2:
        return None
    sizes = index.array(first.input[1])
    convs = [index.sole_consumer(part) for part in first.output]
    if sizes is None or any(not _is(c, "Conv") or c.input[0] != part for c, part in zip(convs, first.output)):
        return None
    kernels = [_depthwise_kernel(index, c) for c in convs]
    if any(k is None for k in kernels) or [k[0].shape[0] for k in kernels] != [int(s) for s in sizes]:
        return None
    concat = index.sole_consumer(convs[0].output[0])
    if not _is(concat, "Concat") or _attributes(concat).get("axis") != 1 \
            or list(concat.input) != [c.output[0] for c in convs] \
            or any(index.sole_consumer(c.output[0]) is not concat for c in convs):
        return None
    return [first, *convs, concat], kernels, concat.output[0]


def _match_to_channels_last(index: _GraphIndex, nchw: str, channels: int):
    """The nodes that bring the NCHW value `nchw` back to channel-last: Transpose(0, 2, 3, 1) (no shuffle), or
    ShuffleNet's Reshape (B, S, C/S, H, W) -> Transpose(0, 3, 4, 2, 1) -> Reshape (B, H, W, C). Returns
    (nodes, shuffle groups) or None."""
    shape = index.shapes.get(nchw)
    if shape is None or len(shape) != 4 or shape[1] != channels or not all(isinstance(d, int) for d in shape[2:]):
        return None
    height, width = shape[2], shape[3]
    first = index.sole_consumer(nchw)
    if _is(first, "Transpose"):
        return ([first], 1) if list(_attributes(first).get("perm", [])) == [0, 2, 3, 1] else None
    if not _is(first, "Reshape"):
        return None
    split_shape = index.array(first.input[1])
    transpose = index.sole_consumer(first.output[0])
    if split_shape is None or len(split_shape) != 5 or not _is(transpose, "Transpose") \
            or list(_attributes(transpose).get("perm", [])) != [0, 3, 4, 2, 1]:
        return None
    groups, per_group = int(split_shape[1]), int(split_shape[2])
    if groups < 1 or groups * per_group != channels or [int(d) for d in split_shape[3:]] != [height, width]:
        return None
    merge = index.sole_consumer(transpose.output[0])
    merge_shape = index.array(merge.input[1]) if _is(merge, "Reshape") else None
    if merge_shape is None or [int(d) for d in merge_shape[1:]] != [height, width, channels] \
            or int(split_shape[0]) not in (-1, shape[0]) or int(merge_shape[0]) not in (-1, shape[0]):
        return None
    return [first, transpose, merge], groups


def use_depthwise_conv_op(model) -> int:
    """Replace every channel-last depthwise convolution written in NCHW ONNX, the chain
    Transpose(0, 3, 1, 2) -> [Split ->] depthwise Conv(s) [-> Concat] -> back to channel-last (plain Transpose or
    the channel-shuffle Reshape-Transpose-Reshape) [-> Gelu], by one `ssmpose::MultiKernelDepthwiseConv`
    (domain version 4, docs/ops.md). HRVMamba's LPU is the Split form with kernels 3/5/7/9, the shuffle and
    GELU; hrvmamba_tiny's position convolutions are the one-Conv form. The Convs must be stride 1, "same"
    padded, with constant weights; every intermediate value must have this chain as its only user. Works on
    an onnx.ModelProto in place (the caller imports the domain at version 4); returns the nodes made."""
    import numpy as np
    import onnx

    from .schemas import DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION
    index = _GraphIndex(model)
    removed, made = set(), 0
    for start in (n for n in index.nodes if _is(n, "Transpose")):
        if list(_attributes(start).get("perm", [])) != [0, 3, 1, 2] or index.position[id(start)] in removed:
            continue
        convolutions = _match_convolutions(index, start.output[0])
        if convolutions is None:
            continue
        conv_nodes, kernels, nchw_out = convolutions
        group_channels = [int(w.shape[0]) for w, _ in kernels]
        back = _match_to_channels_last(index, nchw_out, sum(group_channels))
        if back is None:
            continue
        back_nodes, shuffle_groups = back
        chain = [start, *conv_nodes, *back_nodes]
        activation = "none"
        gelu = index.sole_consumer(chain[-1].output[0])
        if _is(gelu, "Gelu") and _attributes(gelu).get("approximate", b"none") in (b"none", "none"):
            chain.append(gelu)
            activation = "gelu"
        dtypes = {w.dtype for w, _ in kernels} | {b.dtype for _, b in kernels if b is not None}
        if len(dtypes) != 1:
            continue
        dtype = dtypes.pop()
        kernel_sizes = [int(w.shape[-1]) for w, _ in kernels]
        kernel_max = max(kernel_sizes)
        weight = np.zeros((sum(group_channels), kernel_max, kernel_max), dtype=dtype)
        bias = np.zeros(sum(group_channels), dtype=dtype)
        offset = 0
        for (w, b), k in zip(kernels, kernel_sizes):
            lo = kernel_max // 2 - k // 2
            weight[offset:offset + w.shape[0], lo:lo + k, lo:lo + k] = w
            if b is not None:
                bias[offset:offset + w.shape[0]] = b
            offset += w.shape[0]
        stem = chain[-1].name or chain[-1].output[0]
        node = onnx.helper.make_node(
            "MultiKernelDepthwiseConv",
            [start.input[0], index.new_initializer(f"{stem}.dwconv_weight", weight),
             index.new_initializer(f"{stem}.dwconv_bias", bias)],
            [chain[-1].output[0]], name=stem, domain=DOMAIN, kernel_sizes=kernel_sizes,
            group_channels=group_channels, shuffle_groups=shuffle_groups, activation=activation,
            plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE)
        chain[-1].CopyFrom(node)
        removed.update(index.position[id(n)] for n in chain[:-1])
        made += 1
    _rebuild(model, removed)
    return made


def use_add_layer_norm_op(model) -> int:
    """Replace every Add of two same-shaped activations whose sum feeds a `ssmpose::LayerNorm` by one
    `ssmpose::AddLayerNorm` (domain version 4, docs/ops.md) at the Add's place: its second output is the
    sum, under the Add's output name, so the residual stream's other users read it unchanged. Run after
    `use_layer_norm_op`. Works on an onnx.ModelProto in place; returns the nodes made."""
    import onnx

    from .schemas import DOMAIN, LAYER_NORM_EPSILON, PLUGIN_NAMESPACE, PLUGIN_VERSION
    index = _GraphIndex(model)
    removed, made = set(), 0
    for norm in index.nodes:
        if norm.op_type != "LayerNorm" or norm.domain != DOMAIN:
            continue
        add = index.producer.get(norm.input[0])
        if not _is(add, "Add") or index.position[id(add)] in removed or add.output[0] != norm.input[0]:
            continue
        x, residual = add.input
        shape = index.shapes.get(x)
        if x in index.initializers or residual in index.initializers or shape is None or None in shape \
                or index.shapes.get(residual) != shape:
            continue
        epsilon = float(_attributes(norm).get("epsilon", LAYER_NORM_EPSILON))
        fused = onnx.helper.make_node(
            "AddLayerNorm", [x, residual, norm.input[1], norm.input[2]], [norm.output[0], add.output[0]],
            name=norm.name or norm.output[0], domain=DOMAIN, epsilon=epsilon, plugin_version=PLUGIN_VERSION,
            plugin_namespace=PLUGIN_NAMESPACE)
        add.CopyFrom(fused)
        removed.add(index.position[id(norm)])
        made += 1
    _rebuild(model, removed)
    return made


def _offset_bias(index: _GraphIndex, add, offset_mask: str):
    """(data, bias) names when `add` is Add(data, bias) (either order) of the activation `data` and a constant
    1-D bias of P values, P the last dimension of `offset_mask` (the Add's output, same shape as data); else
    None."""
    shape = index.shapes.get(offset_mask)
    if not _is(add, "Add") or shape is None or not isinstance(shape[-1], int):
        return None
    for data, bias in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        values = index.array(bias)
        if values is not None and data not in index.initializers and values.shape == (shape[-1],) \
                and index.shapes.get(data) == shape:
            return data, bias
    return None


def _silu_after(index: _GraphIndex, value: str):
    """(Sigmoid, Mul) when the only users of `value` are a Sigmoid of it and Mul(value, sigmoid) (either order),
    the Sigmoid's only user being that Mul; else None."""
    users = index.consumers.get(value, [])
    if len(users) != 2 or value in index.graph_outputs:
        return None
    sigmoid = next((u for u in users if _is(u, "Sigmoid")), None)
    mul = next((u for u in users if _is(u, "Mul")), None)
    if sigmoid is None or mul is None or index.sole_consumer(sigmoid.output[0]) is not mul \
            or sorted(mul.input) != sorted([value, sigmoid.output[0]]):
        return None
    return sigmoid, mul


def use_deform_aggregate_epilogues(model) -> int:
    """Fold into every `ssmpose::DeformAggregate` (domain version 5, docs/ops.md) the Add of a constant offset
    bias that computes its offset_mask (DCNv4's offset/mask projection bias; the Add's only user must be the
    DeformAggregate) and the SiLU after it (Sigmoid and Mul, the output's only users), each where present. The
    op computes them as those nodes do: the biased offsets rounded to the type, SiLU of the rounded output.
    Works on an onnx.ModelProto in place (the caller imports the domain at version 5); returns the
    DeformAggregate nodes changed."""
    import onnx

    from .schemas import DOMAIN, uses_deform_epilogues
    index = _GraphIndex(model)
    removed, changed = set(), 0
    for node in index.nodes:
        if node.op_type != "DeformAggregate" or node.domain != DOMAIN or uses_deform_epilogues(node) \
                or len(node.input) != 2:
            continue
        inputs, output, folded = list(node.input), node.output[0], []
        add = index.producer.get(node.input[1])
        bias = _offset_bias(index, add, node.input[1]) if index.sole_consumer(node.input[1]) is node else None
        if bias is not None:
            inputs[1:] = bias
            folded.append(add)
        silu = _silu_after(index, node.output[0])
        if silu is not None:
            output = silu[1].output[0]
            folded.extend(silu)
        if not folded:
            continue
        fused = onnx.NodeProto()
        fused.CopyFrom(node)
        del fused.input[:]
        fused.input.extend(inputs)
        fused.output[0] = output
        if silu is not None:
            fused.attribute.append(onnx.helper.make_attribute("activation", "silu"))
        node.CopyFrom(fused)
        removed.update(index.position[id(n)] for n in folded)
        changed += 1
    _rebuild(model, removed)
    return changed


def _einsum_per_group(equation: str):
    """For an Einsum equation "<p>kr,kdr-><p>kd" (the letters of the prefix p distinct from k, d, r), the
    prefix length; else None."""
    equation = equation.replace(" ", "")
    if "->" not in equation or "." in equation:
        return None
    inputs, out = equation.split("->")
    operands = inputs.split(",")
    if len(operands) != 2 or len(operands[1]) != 3 or len(set(operands[1])) != 3:
        return None
    k, d, r = operands[1]
    prefix = operands[0][:-2]
    if operands[0][-2:] != k + r or out != prefix + k + d or set(prefix) & {k, d, r} \
            or len(set(prefix)) != len(prefix):
        return None
    return len(prefix)


def _reshapes_alike(index: _GraphIndex, reshape, prefix: int) -> bool:
    """Whether `reshape` (a node or None) is a Reshape to a constant shape that gives the same result on
    (<prefix dims>, K*D) as on (<prefix dims>, K, D): no 0 past the prefix (a 0 copies the input's dimension,
    or with allowzero is an empty one; either way the same on both inputs within the prefix)."""
    if not _is(reshape, "Reshape"):
        return False
    shape = index.array(reshape.input[1])
    return shape is not None and shape.ndim == 1 and not (shape[prefix:] == 0).any()


def use_block_diagonal_matmul(model) -> int:
    """Replace every Einsum "...kr,kdr->...kd" whose second input is a constant (K, D, R) weight (SS2D's dt
    projection, one per scan direction k) by Reshape(..., K*R) -> MatMul with the (K*R, K*D) block-diagonal
    weight -> Reshape(..., K, D). The sums are the same (the added terms are products with exact zeros); it is
    one GEMM where ONNX Runtime runs an Einsum as transposes around a batched MatMul. Works on an
    onnx.ModelProto in place; returns the Einsums replaced."""
    import numpy as np
    import onnx

    index = _GraphIndex(model)
    replacements, reshaped = {}, set()
    for einsum in (n for n in index.nodes if _is(n, "Einsum")):
        equation = _attributes(einsum).get("equation", b"")
        prefix = _einsum_per_group(equation.decode() if isinstance(equation, bytes) else equation)
        weight = index.array(einsum.input[1])
        if prefix is None or weight is None or weight.ndim != 3:
            continue
        groups, out_dim, rank = weight.shape
        shape = index.shapes.get(einsum.input[0])
        if shape is not None and (len(shape) != prefix + 2 or shape[-2:] != [groups, rank]):
            continue
        block_diagonal = np.zeros((groups * rank, groups * out_dim), dtype=weight.dtype)
        for g in range(groups):
            block_diagonal[g * rank:(g + 1) * rank, g * out_dim:(g + 1) * out_dim] = weight[g].T
        stem = einsum.name or einsum.output[0]
        flat_shape = index.new_initializer(f"{stem}.flat_shape", np.array([0] * prefix + [groups * rank], np.int64))
        matrix = index.new_initializer(f"{stem}.block_diagonal", block_diagonal)
        flat = index.unique_name(f"{stem}.flat")
        new_nodes = [onnx.helper.make_node("Reshape", [einsum.input[0], flat_shape], [flat], name=f"{stem}.flatten")]
        if _reshapes_alike(index, index.sole_consumer(einsum.output[0]), prefix):
            # the Reshape after it reads the MatMul's product directly (of another shape: forget the old one)
            new_nodes.append(onnx.helper.make_node("MatMul", [flat, matrix], [einsum.output[0]], name=stem))
            reshaped.add(einsum.output[0])
        else:
            product = index.unique_name(f"{stem}.product")
            out_shape = index.new_initializer(f"{stem}.out_shape",
                                              np.array([0] * prefix + [groups, out_dim], np.int64))
            new_nodes += [onnx.helper.make_node("MatMul", [flat, matrix], [product], name=f"{stem}.matmul"),
                          onnx.helper.make_node("Reshape", [product, out_shape], [einsum.output[0]], name=stem)]
        replacements[index.position[id(einsum)]] = new_nodes
    if not replacements:
        return 0
    nodes = []
    for i, node in enumerate(model.graph.node):
        nodes.extend(replacements.get(i, [node]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    for info in [v for v in model.graph.value_info if v.name in reshaped]:
        model.graph.value_info.remove(info)
    _rebuild(model, set())
    return len(replacements)


def _split_sizes(index: _GraphIndex, split):
    """The sizes of a Split node along its last axis (from its input or attribute), or None."""
    import numpy as np
    attrs = _attributes(split)
    sizes = index.array(split.input[1]) if len(split.input) > 1 and split.input[1] else attrs.get("split")
    if sizes is None:
        return None
    shape = index.shapes.get(split.input[0])
    axis = int(attrs.get("axis", 0))
    if shape is None or axis not in (-1, len(shape) - 1):
        return None
    return [int(v) for v in np.asarray(sizes).reshape(-1)]


def _block_diagonal_blocks(weight, groups: int, rank: int):
    """The (groups, D, rank) weight of a (groups*rank, groups*D) block-diagonal matrix (zero off its diagonal
    blocks; the transpose of `use_block_diagonal_matmul`'s), or None."""
    import numpy as np
    if weight is None or weight.ndim != 2 or weight.shape[0] != groups * rank or weight.shape[1] % groups:
        return None
    dim = weight.shape[1] // groups
    blocks = np.stack([weight[g * rank:(g + 1) * rank, g * dim:(g + 1) * dim].T for g in range(groups)])
    rebuilt = np.zeros_like(weight)
    for g in range(groups):
        rebuilt[g * rank:(g + 1) * rank, g * dim:(g + 1) * dim] = blocks[g].T
    return np.ascontiguousarray(blocks) if np.array_equal(rebuilt, weight) else None


def _flattens_directions(index: _GraphIndex, reshape, x_proj_shape, width: int) -> bool:
    """Whether `reshape` turns the (B, H, W, K, R) dt inputs into (B, H, W, K*R), direction-major as the
    block-diagonal weight reads them: a constant shape (d0, d1, d2, K*R), each d 0 (copy) or x_proj's dimension."""
    shape = index.array(reshape.input[1])
    if shape is None or shape.ndim != 1 or len(shape) != 4 or int(shape[3]) != width:
        return False
    return all(int(d) == 0 or int(d) == x_proj_shape[i] for i, d in enumerate(shape[:3]))


# Largest dt rank the export folds into SelectiveScan2D. The kernel forms delta on CUDA cores, R multiply-adds per
# value, where the MatMul it replaces ran on tensor cores: hrvmamba_small's ranks 2 and 4 gain (the kernel
# prefetches them as pairs), hrvmamba_base's 5 to 40 lost 21 % at batch 128 on an H100 (docs/benchmarks.md).
MAX_FOLDED_DT_RANK = 4


def use_scan_dt_projection(model, max_rank: int = MAX_FOLDED_DT_RANK) -> int:
    """Fold SS2D's dt projection into every `ssmpose::SelectiveScan2D` (domain version 6, docs/ops.md): where its
    delta is Reshape(MatMul(Reshape(dts), W)) with W the block-diagonal weight of `use_block_diagonal_matmul`, and
    dts, Bs and Cs are the three outputs of one Split of x_proj (B, H, W, K, R + 2N) along the last axis, the scan
    takes x_proj and the (K, D, R) weight instead; the Split, the MatMul and the Reshapes go. The op computes
    delta as the MatMul did (float32 sums rounded to the type). Every intermediate must have the scan as its only
    user, and the rank R must be at most `max_rank` (MAX_FOLDED_DT_RANK). Works on an onnx.ModelProto in place
    (the caller imports the domain at version 6); returns the scans changed."""
    import onnx

    from .schemas import DOMAIN, SCAN_2D_DIRECTIONS, SCAN_2D_MAX_DT_RANK, uses_dt_projection
    index = _GraphIndex(model)
    removed, changed = set(), 0
    for scan in index.nodes:
        if scan.op_type != "SelectiveScan2D" or scan.domain != DOMAIN or uses_dt_projection(scan) \
                or len(scan.input) < 5:
            continue
        chain, value = [], scan.input[1]
        node = index.producer.get(value)
        if _is(node, "Reshape") and index.sole_consumer(value) is scan:   # optional Reshape after the MatMul
            chain.append(node)
            value = node.input[0]
        matmul = index.producer.get(value)
        if not _is(matmul, "MatMul") or index.sole_consumer(value) is not (chain[-1] if chain else scan):
            continue
        flatten = index.producer.get(matmul.input[0])
        if not _is(flatten, "Reshape") or index.sole_consumer(matmul.input[0]) is not matmul:
            continue
        split = index.producer.get(flatten.input[0])
        if not _is(split, "Split") or len(split.output) != 3 or list(split.output[1:]) != list(scan.input[3:5]) \
                or split.output[0] != flatten.input[0]:
            continue
        if any(index.sole_consumer(out) is not user for out, user in zip(split.output, (flatten, scan, scan))):
            continue
        sizes, x_proj_shape = _split_sizes(index, split), index.shapes.get(split.input[0])
        if sizes is None or len(sizes) != 3 or sizes[1] != sizes[2] or x_proj_shape is None \
                or len(x_proj_shape) != 5 or x_proj_shape[3] != SCAN_2D_DIRECTIONS:
            continue
        rank = sizes[0]
        if not _flattens_directions(index, flatten, x_proj_shape, SCAN_2D_DIRECTIONS * rank):
            continue
        weight = _block_diagonal_blocks(index.array(matmul.input[1]), SCAN_2D_DIRECTIONS, rank)
        if weight is None or not 1 <= rank <= min(max_rank, SCAN_2D_MAX_DT_RANK):
            continue
        fused = onnx.NodeProto()
        fused.CopyFrom(scan)
        inputs = list(scan.input) + [""] * (7 - len(scan.input))
        inputs[1], inputs[3], inputs[4] = split.input[0], "", ""
        stem = scan.name or scan.output[0]
        inputs.append(index.new_initializer(f"{stem}.dt_projection", weight))
        del fused.input[:]
        fused.input.extend(inputs)
        scan.CopyFrom(fused)
        removed.update(index.position[id(n)] for n in chain + [matmul, flatten, split])
        changed += 1
    _rebuild(model, removed)
    return changed


def _bias_add(index: _GraphIndex, add, value: str, length: int):
    """The constant bias name when `add` is Add(value, bias) (either order) with a 1-D constant of `length`
    values; else None."""
    if not _is(add, "Add") or value not in add.input:
        return None
    bias = add.input[1] if add.input[0] == value else add.input[0]
    array = index.array(bias)
    return bias if array is not None and array.shape == (length,) else None


def _matmul_weight(index: _GraphIndex, matmul, value: str):
    """The constant 2-D weight of MatMul(value, weight), else None."""
    if not _is(matmul, "MatMul") or matmul.input[0] != value:
        return None
    array = index.array(matmul.input[1])
    return matmul.input[1] if array is not None and array.ndim == 2 else None


def _match_vss_tail(index: _GraphIndex, out_norm, max_channels: int):
    """The VSSBlockTail chain that starts at the `ssmpose::LayerNorm` `out_norm`, as (the tail's inputs, epsilon,
    the final residual add, the chain's other nodes in order), or None. The chain: LayerNorm -> MatMul(out_proj) -> AddLayerNorm(residual, .) -> MatMul(fc1) -> Add(b1)
    -> Gelu -> MatMul(fc2) -> Add(b2) -> the residual Add (an Add or an AddLayerNorm) of the AddLayerNorm's sum,
    every intermediate used once and constant weights of matching shapes."""
    from .schemas import DOMAIN, LAYER_NORM_EPSILON, vss_tail_shape_error
    step = lambda value: index.sole_consumer(value)  # noqa: E731
    proj = step(out_norm.output[0])
    out_proj = _matmul_weight(index, proj, out_norm.output[0])
    norm = step(proj.output[0]) if out_proj else None
    if norm is None or norm.op_type != "AddLayerNorm" or norm.domain != DOMAIN or proj.output[0] not in norm.input[:2]:
        return None
    residual = norm.input[1] if norm.input[0] == proj.output[0] else norm.input[0]
    fc1 = step(norm.output[0])
    fc1_weight = _matmul_weight(index, fc1, norm.output[0])
    if fc1_weight is None:
        return None
    (d, c), (c1, h) = index.array(out_proj).shape, index.array(fc1_weight).shape
    fc1_add = step(fc1.output[0])
    fc1_bias = _bias_add(index, fc1_add, fc1.output[0], h)
    gelu = step(fc1_add.output[0]) if fc1_bias else None
    if not _is(gelu, "Gelu") or _attributes(gelu).get("approximate", b"none") not in (b"none", "none"):
        return None
    fc2 = step(gelu.output[0])
    fc2_weight = _matmul_weight(index, fc2, gelu.output[0])
    fc2_add = step(fc2.output[0]) if fc2_weight else None
    fc2_bias = _bias_add(index, fc2_add, fc2.output[0], c) if fc2_add is not None else None
    final = step(fc2_add.output[0]) if fc2_bias else None
    summed = norm.output[1]
    if final is None or index.sole_consumer(summed) is not final or summed not in final.input[:2]:
        return None
    if not (_is(final, "Add") or (final.op_type == "AddLayerNorm" and final.domain == DOMAIN)):
        return None
    params = [out_norm.input[1], out_norm.input[2], out_proj, norm.input[2], norm.input[3], fc1_weight, fc1_bias,
              fc2_weight, fc2_bias]
    expected = [(d,), (d,), (d, c), (c,), (c,), (c, h), (h,), (h, c), (c,)]
    arrays = [index.array(name) for name in params]
    if c1 != c or any(a is None or a.shape != shape for a, shape in zip(arrays, expected)) \
            or len({a.dtype for a in arrays}) != 1 or vss_tail_shape_error(d, c, h) or c > max_channels:
        return None
    epsilon = float(_attributes(out_norm).get("epsilon", LAYER_NORM_EPSILON))
    if float(_attributes(norm).get("epsilon", LAYER_NORM_EPSILON)) != epsilon:
        return None
    return [out_norm.input[0], residual] + params, epsilon, final, [out_norm, proj, norm, fc1, fc1_add, gelu, fc2,
                                                                    fc2_add]


def use_vss_block_tail_op(model, max_channels: int = VSS_TAIL_MAX_CHANNELS) -> int:
    """Replace every VMamba block tail after a scan (see `_match_vss_tail`: SS2D's out_norm and out_proj, the
    residual add, the MLP's norm, fc1, GELU, fc2 and the second residual add) by one `ssmpose::VSSBlockTail`
    (domain version 7, docs/ops.md). Its output takes the residual add's name; where that add was an
    AddLayerNorm (the next block's first norm), a `ssmpose::LayerNorm` of the output stays. Run after
    `use_add_layer_norm_op`. `max_channels` leaves blocks wider than that (C) unfused. Works on an onnx.ModelProto
    in place; returns the nodes made."""
    import onnx

    from .schemas import DOMAIN, LAYER_NORM_EPSILON, PLUGIN_NAMESPACE, PLUGIN_VERSION
    index = _GraphIndex(model)
    removed, made = set(), 0
    for out_norm in index.nodes:
        if out_norm.op_type != "LayerNorm" or out_norm.domain != DOMAIN or index.position[id(out_norm)] in removed:
            continue
        match = _match_vss_tail(index, out_norm, max_channels)
        if match is None:
            continue
        inputs, epsilon, final, chain = match
        if any(index.position[id(n)] in removed for n in chain + [final]):
            continue
        residual_stream = final.output[1] if final.op_type == "AddLayerNorm" else final.output[0]
        tail = onnx.helper.make_node(
            "VSSBlockTail", inputs, [residual_stream], name=out_norm.name or residual_stream, domain=DOMAIN,
            epsilon=epsilon, plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE)
        fc2_add = chain[-1]
        if final.op_type == "AddLayerNorm":
            next_epsilon = float(_attributes(final).get("epsilon", LAYER_NORM_EPSILON))
            final.CopyFrom(onnx.helper.make_node(
                "LayerNorm", [residual_stream, final.input[2], final.input[3]], [final.output[0]],
                name=final.name, domain=DOMAIN, epsilon=next_epsilon, plugin_version=PLUGIN_VERSION,
                plugin_namespace=PLUGIN_NAMESPACE))
        else:
            removed.add(index.position[id(final)])
        fc2_add.CopyFrom(tail)   # the last node of the chain: every input of the tail is computed before it
        removed.update(index.position[id(n)] for n in chain[:-1])
        made += 1
    _rebuild(model, removed)
    return made
