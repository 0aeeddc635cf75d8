"""Single-node `ssmpose` ONNX graphs and their float64 reference results, shared by the tests of the runtime
adapters (ONNX Runtime library, OpenVINO extension): the cases, the input arrays, the graph builder and the
tolerance check."""
from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper

from ssmpose.custom_ops import reference as ref

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
NP_TYPES = {F32: np.float32, F16: np.float16, TensorProto.DOUBLE: np.float64}

SCAN_INPUTS = ["u", "delta", "A", "Bs", "Cs", "Ds", "delta_bias"]

def make_model(op, inputs, input_types, output_type=F32, shapes=None, **attrs):
    """One `ssmpose` node; `inputs` may contain "" for an omitted optional input. Input shapes are left unknown
    unless `shapes` ({name: shape}, dimensions may be symbolic strings) gives them."""
    shapes = shapes or {}
    node = helper.make_node(op, inputs, ["y"], domain="ssmpose", **attrs)
    graph_inputs = [helper.make_tensor_value_info(name, t, shapes.get(name)) for name, t in zip(inputs, input_types)
                    if name]
    graph_outputs = [helper.make_tensor_value_info("y", output_type, None)]
    graph = helper.make_graph([node], f"{op}_test", graph_inputs, graph_outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ssmpose", 1)])
    model.ir_version = 8  # readable by every ONNX Runtime >= 1.16
    return model


def assert_close(actual, expected, rel, atol=1e-6, what=""):
    expected = np.asarray(expected, dtype=np.float64)
    err = np.abs(actual.astype(np.float64) - expected).max() if expected.size else 0.0
    scale = np.abs(expected).max() if expected.size else 0.0
    assert err <= rel * scale + atol, f"{what}: max abs err {err:.3e} > {rel:g} * {scale:.3e} + {atol:g}"


def _t(x):
    return None if x is None else torch.from_numpy(np.asarray(x, dtype=np.float64))


def scan_arrays(batch, groups, dim, dstate, length, seed=0, softplus=True):
    rng = np.random.default_rng(seed)
    ch = groups * dim
    arrays = dict(
        u=rng.standard_normal((batch, ch, length)),
        delta=rng.standard_normal((batch, ch, length)) * 1.5,
        A=-rng.random((ch, dstate)) * 2.0 - 0.05,
        Bs=rng.standard_normal((batch, groups, dstate, length)),
        Cs=rng.standard_normal((batch, groups, dstate, length)),
        Ds=rng.standard_normal(ch),
        delta_bias=rng.standard_normal(ch) * 0.5,
    )
    if not softplus:  # dt = delta + delta_bias must stay positive, or the recurrence grows without bound
        arrays["delta"] = np.abs(arrays["delta"]) * 0.3
        arrays["delta_bias"] = np.abs(arrays["delta_bias"]) * 0.1
    elif arrays["delta"].size >= 3:  # both sides of the softplus threshold (20)
        flat = arrays["delta"].reshape(-1)
        flat[0], flat[1], flat[-1] = 25.0, -30.0, 19.5
    return {k: v.astype(np.float32) for k, v in arrays.items()}


def scan_reference(arrays, inputs, softplus):
    args = [_t(arrays[name]) if name else None for name in inputs + [""] * (7 - len(inputs))]
    return ref.selective_scan_reference(*args, delta_softplus=bool(softplus)).numpy()


# (batch, groups, dim, dstate, length, delta_softplus)
SCAN_CASES = [
    (1, 1, 1, 1, 1, 1),
    (2, 3, 5, 4, 37, 1),
    (1, 1, 1, 16, 70, 1),
    (2, 2, 17, 16, 65, 0),
    (1, 4, 16, 1, 150, 1),  # HRVMamba-like (N = 1)
]
# Optional inputs: both, none (node has 5 inputs), Ds omitted by "" with delta_bias present, Ds only.
SCAN_INPUT_SETS = {
    "all": SCAN_INPUTS,
    "none": SCAN_INPUTS[:5],
    "no_Ds": SCAN_INPUTS[:5] + ["", "delta_bias"],
    "Ds_only": SCAN_INPUTS[:6],
}


DEFORM_ATTRS = ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h", "dilation_w",
                "group", "group_channels", "offset_scale", "remove_center")

# (batch, H, W, G, C, kh, kw, sh, sw, ph, pw, dh, dw, offset_scale, remove_center, extra P columns, offset magnitude)
DEFORM_CASES = [
    (2, 9, 7, 3, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1.0, 0, 7, 2.0),     # DCNv4 default, G = 3, padded P
    (1, 8, 10, 2, 5, 3, 3, 2, 2, 0, 0, 2, 2, 0.5, 1, 0, 2.0),    # remove_center, stride/dilation 2, P exact
    (1, 7, 9, 1, 1, 5, 3, 1, 2, 2, 1, 1, 2, 2.0, 0, 3, 1.0),     # C = 1, non-square everything
    (2, 5, 6, 2, 4, 1, 1, 1, 1, 0, 0, 1, 1, 1.0, 0, 2, 1.5),     # 1x1 kernel
    (1, 6, 5, 2, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1.0, 0, 2, 8.0),     # large offsets: many samples outside
    (1, 16, 12, 2, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1.0, 1, 5, 1.0),  # HRVMamba-like, remove_center, padded P
]


def deform_arrays(case, seed=0):
    b, h, w, g, c, kh, kw, sh, sw, ph, pw, dh, dw, scale, rc, extra, offmag = case
    k = kh * kw - rc
    out_h, out_w = ref.deform_output_size(h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    rng = np.random.default_rng(seed)
    value = rng.standard_normal((b, h, w, g * c)).astype(np.float32)
    om = rng.standard_normal((b, out_h, out_w, g * k * 3 + extra)).astype(np.float32)
    per_group = om[..., : g * k * 3].reshape(b, out_h, out_w, g, 3 * k)
    per_group[..., : 2 * k] *= offmag  # offsets; masks stay N(0, 1), negative ones included
    om[..., : g * k * 3] = per_group.reshape(b, out_h, out_w, g * k * 3)
    attrs = dict(zip(DEFORM_ATTRS, (kh, kw, sh, sw, ph, pw, dh, dw, g, c, scale, rc)))
    return value, om, attrs


def deform_reference(value, om, attrs):
    return ref.deform_aggregate_reference(_t(value), _t(om), *[attrs[k] for k in DEFORM_ATTRS]).numpy()


def deform_id(case):
    return "B{}H{}W{}G{}C{}k{}x{}s{}d{}rc{}P+{}".format(*case[:7], case[7], case[11], case[14], case[15])


def pad_widths(proto):
    """The pads input of every Pad node of `proto` (a portable lowering's shifts and end padding)."""
    from onnx import numpy_helper
    constants = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    constants.update({node.output[0]: numpy_helper.to_array(node.attribute[0].t)
                      for node in proto.graph.node if node.op_type == "Constant"})
    return [constants[node.input[1]] for node in proto.graph.node if node.op_type == "Pad"]
