"""VSSBlockTail (ssmpose domain version 7) in the OpenVINO extension (libssmpose_ov.so), whose ONNX frontend
conversion builds OpenVINO's own ops (the LayerNorm conversion twice, three MatMuls, the Adds, Gelu in erf mode;
for float16 the inputs converted to float32, the operands a, b, g of the three products rounded to float16 by
arithmetic and Z converted back once), on OpenVINO's CPU device.

- One-node graphs (opset imports {"": 18, "ssmpose": 7}), float32 and float16, (D, C, H) = (64, 32, 64) as
  HRVMamba-small's blocks, (160, 80, 160) as base's and odd (24, 12, 40), Y of rank 1, 2, 3 and 4, nontrivial
  random weights and norm parameters, rows with large offsets; symbolic leading dimensions; rows = 0.
- References in float64: for float32 `custom_ops.reference.vss_block_tail_reference` on the inputs as float64;
  for float16 the same formula in float64 with a, b and g rounded to float16 where docs/ops.md rounds them (X1 and
  Z not rounded), checked against `vss_block_tail_reference` on the float16 inputs.
  Tolerances, max abs error over max|reference|: float32 1e-5 (three float32 products of length <= 160 and two
  LayerNorms: ~1e-6 is expected). float16: 4 float16 ulps of max|reference| (ulp = np.spacing at that value):
  Z's own rounding is half an ulp of |Z| <= max|Z|; the float32 arithmetic differs from float64 by ~1e-7
  relative; where it moves an operand across a float16 rounding boundary the operand changes by one of its ulps,
  which the next product spreads over its row as one ulp of one term, well below an ulp of max|Z|.
- Operand rounding that a random graph cannot see (it moves Z by a fraction of an ulp): constructed float16
  graphs where leaving out the rounding of a (normal and subnormal range), b or g, or rounding X1, moves Z by
  more than 10 times the tolerance (asserted on the float64 variants), and the conversion must match the
  reference. Overflow of a to inf gives a non-finite row as in the reference.
- The same node with the parameters and R as initializers, through ssmpose's `openvino` runtime backend.
- Malformed nodes refused when the model is read, with an error naming VSSBlockTail, the node and the tensor.

Tests skip when the extension is not built, unless SSMPOSE_REQUIRE_KERNELS=1 (CI; test_openvino_extension.py
fails there).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmpose import runtimes
from ssmpose.custom_ops import openvino_library
from ssmpose.custom_ops.reference import vss_block_tail_reference

ov = pytest.importorskip("openvino")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

LIB = openvino_library.openvino_library_path()
REASON = openvino_library.unavailable_reason()
needs_lib = pytest.mark.skipif(LIB is None, reason=f"libssmpose_ov.so not built: {REASON}")

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
NP_TYPES = {F32: np.float32, F16: np.float16, TensorProto.DOUBLE: np.float64}
NAMES = ["Y", "R", "out_norm_weight", "out_norm_bias", "out_proj", "norm_weight", "norm_bias", "fc1_weight",
         "fc1_bias", "fc2_weight", "fc2_bias"]
OP = "ssmpose VSSBlockTail node 'tail0'"
F32_TOLERANCE = 2e-6   # of max|reference|
F16_ULPS = 2           # float16 ulps of max|reference|
WIDTHS = {"small": (64, 32, 64), "base": (160, 80, 160), "odd": (24, 12, 40)}


def param_shapes(inner, channels, hidden):
    return {"out_norm_weight": [inner], "out_norm_bias": [inner], "out_proj": [inner, channels],
            "norm_weight": [channels], "norm_bias": [channels], "fc1_weight": [channels, hidden],
            "fc1_bias": [hidden], "fc2_weight": [hidden, channels], "fc2_bias": [channels]}


def node_model(y_shape, r_shape=None, hidden=None, elem=F32, shapes=None, types=None, inputs=None,
               initializers=None, **attrs):
    """A graph of one VSSBlockTail node named 'tail0'. `y_shape` (..., D) may hold symbolic dimensions (strings);
    R defaults to Y's leading dimensions and C = D // 2, H to D; `shapes` / `types` {name: ...} override single
    inputs; `initializers` {name: array} become initializers instead of graph inputs."""
    types, initializers, shapes = types or {}, initializers or {}, dict(shapes or {})
    inputs = NAMES if inputs is None else inputs
    inner = y_shape[-1] if y_shape else 4
    if r_shape is None:
        r_shape = list(y_shape[:-1]) + [max(inner // 2, 1) if isinstance(inner, int) else "c"]
    channels = r_shape[-1] if r_shape else 4
    hidden = inner if hidden is None else hidden
    all_shapes = dict(param_shapes(inner, channels, hidden), Y=y_shape, R=r_shape)
    all_shapes.update(shapes)
    graph_inputs = [helper.make_tensor_value_info(n, types.get(n, elem), all_shapes[n]) for n in dict.fromkeys(inputs)
                    if n and n not in initializers]
    inits = [numpy_helper.from_array(a, n) for n, a in initializers.items()]
    attrs.setdefault("plugin_version", "1")
    attrs.setdefault("plugin_namespace", "ssmpose")
    node = helper.make_node("VSSBlockTail", inputs, ["Z"], domain="ssmpose", name="tail0", **attrs)
    graph = helper.make_graph([node], "vss_block_tail", graph_inputs,
                              [helper.make_tensor_value_info("Z", elem, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ssmpose", 7)])
    model.ir_version = 8
    return model


def compile_model(model):
    core = ov.Core()
    openvino_library.add_to_core(core)
    return core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                              {"INFERENCE_PRECISION_HINT": "f32"})


def run(compiled, arrays):
    return next(iter(compiled({n: arrays[n] for n in NAMES}).values()))


def arrays_of(lead, widths, np_type, seed=0, offset=False):
    """Random inputs rounded to np_type: Y (lead..., D), R (lead..., C); LayerNorm weights around 1 and biases
    around 0, products scaled by 1 / sqrt(length). `offset`: Y rows around 100 and R around 30."""
    inner, channels, hidden = widths
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal
    arrays = {
        "Y": (100.0 if offset else 0.0) + normal(lead + (inner,)) * (0.5 if offset else 1.0),
        "R": (30.0 if offset else 0.0) + normal(lead + (channels,)),
        "out_norm_weight": 1.0 + 0.3 * normal(inner), "out_norm_bias": 0.2 * normal(inner),
        "out_proj": normal((inner, channels)) / np.sqrt(inner),
        "norm_weight": 1.0 + 0.3 * normal(channels), "norm_bias": 0.2 * normal(channels),
        "fc1_weight": normal((channels, hidden)) / np.sqrt(channels), "fc1_bias": 0.3 * normal(hidden),
        "fc2_weight": normal((hidden, channels)) / np.sqrt(hidden), "fc2_bias": 0.3 * normal(channels)}
    return {n: a.astype(np_type) for n, a in arrays.items()}


def to_f16(v):
    return v.astype(np.float16).astype(np.float64)


def emulate(arrays, epsilon=1e-5, a=to_f16, b=to_f16, g=to_f16, x1=None):
    """docs/ops.md's formula in float64 with the roundings given (functions, None: not rounded); Z unrounded."""
    p = {n: arrays[n].astype(np.float64) for n in NAMES}
    eps = float(np.float32(epsilon))

    def layer_norm(x, w, bias):
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * w + bias

    def rounded(v, fn):
        return v if fn is None else fn(v)

    av = rounded(layer_norm(p["Y"], p["out_norm_weight"], p["out_norm_bias"]), a)
    x1v = rounded(p["R"] + av @ p["out_proj"], x1)
    bv = rounded(layer_norm(x1v, p["norm_weight"], p["norm_bias"]), b)
    h = torch.from_numpy(bv @ p["fc1_weight"] + p["fc1_bias"])
    gv = rounded(torch.nn.functional.gelu(h).numpy(), g)
    return x1v + gv @ p["fc2_weight"] + p["fc2_bias"]


def reference(arrays, epsilon=1e-5):
    """float64 reference: vss_block_tail_reference on the float32 inputs as float64, or emulate() for float16."""
    if arrays["Y"].dtype == np.float16:
        return emulate(arrays, epsilon)
    tensors = [torch.from_numpy(arrays[n].astype(np.float64)) for n in NAMES]
    return vss_block_tail_reference(*tensors, epsilon=float(np.float32(epsilon))).numpy()


def tolerance(expected, np_type):
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    if np_type == np.float16:
        return F16_ULPS * float(np.spacing(np.float16(scale)))
    return F32_TOLERANCE * scale


def check(actual, expected, what=""):
    """Asserts max|actual - expected| <= the type's tolerance; returns (max abs error, in units of max|expected|
    for float32 or float16 ulps of it for float16)."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if not actual.size:
        return 0.0
    tol = tolerance(expected, actual.dtype.type)
    err = float(np.abs(actual.astype(np.float64) - expected).max())
    assert err <= tol, f"{what}: max abs err {err:.3e} > tolerance {tol:.3e} (max|ref| {np.abs(expected).max():.3e})"
    unit = tol / (F16_ULPS if actual.dtype == np.float16 else F32_TOLERANCE)
    return err / unit if unit else err


LEADS = {"rank2": (37,), "rank4": (2, 6, 5), "rank3": (3, 7), "rank1": ()}


@needs_lib
def test_library_version_7_converts_vss_block_tail():
    assert openvino_library.OV_LIBRARY_VERSION == 7 and openvino_library.KERNELS_ABI_VERSION == 6
    assert openvino_library.library_info()["version"] == 7


def test_a_library_without_vss_block_tail_is_refused(tmp_path):
    info = {"version": 6, "kernels_abi": 5, "openvino": "2026.4.1", "running_openvino": "2026.4.1"}
    problem = openvino_library._problem(tmp_path / "libssmpose_ov.so", info)
    assert "is extension version 6, this ssmpose needs 7: the library is stale" in problem
    problem = openvino_library._problem(tmp_path / "libssmpose_ov.so", dict(info, version=7))
    assert "uses kernel ABI 5, this ssmpose needs 6" in problem


@needs_lib
@pytest.mark.parametrize("elem", [F32, F16], ids=["f32", "f16"])
@pytest.mark.parametrize("lead", list(LEADS))
@pytest.mark.parametrize("widths", list(WIDTHS))
def test_static_shapes(widths, lead, elem):
    dims = WIDTHS[widths]
    shape = LEADS[lead]
    compiled = compile_model(node_model(list(shape) + [dims[0]], list(shape) + [dims[1]], dims[2], elem=elem))
    for seed, offset in enumerate((False, True)):
        arrays = arrays_of(shape, dims, NP_TYPES[elem], seed=seed + 10 * len(shape), offset=offset)
        z = run(compiled, arrays)
        assert z.dtype == NP_TYPES[elem] and z.shape == shape + (dims[1],)
        assert np.isfinite(z).all()
        check(z, reference(arrays), f"{widths} {shape} offset={offset}")


@needs_lib
@pytest.mark.parametrize("elem", [F32, F16], ids=["f32", "f16"])
def test_symbolic_leading_dimensions_zero_rows_and_epsilon(elem):
    """One compiled model runs several shapes, rows = 0 included; a large epsilon matters."""
    dims = WIDTHS["small"]
    for epsilon in (1e-5, 0.5):
        compiled = compile_model(node_model(["b", "h", "w", dims[0]], ["b", "h", "w", dims[1]], dims[2], elem=elem,
                                            epsilon=epsilon))
        for seed, lead in enumerate([(1, 1, 1), (2, 3, 5), (0, 4, 4), (3, 0, 2)]):
            arrays = arrays_of(lead, dims, NP_TYPES[elem], seed=seed)
            z = run(compiled, arrays)
            assert z.shape == lead + (dims[1],) and z.dtype == NP_TYPES[elem]
            check(z, reference(arrays, epsilon), f"{lead} eps {epsilon}")


@needs_lib
@pytest.mark.parametrize("elem", [F32, F16], ids=["f32", "f16"])
def test_static_zero_rows(elem):
    dims = WIDTHS["odd"]
    for lead in [(0,), (2, 0, 5)]:
        arrays = arrays_of(lead, dims, NP_TYPES[elem])
        z = run(compile_model(node_model(list(lead) + [dims[0]], list(lead) + [dims[1]], dims[2], elem=elem)), arrays)
        assert z.shape == lead + (dims[1],) and z.dtype == NP_TYPES[elem]


@needs_lib
def test_float16_emulation_matches_the_project_reference():
    """The float64 emulation used for float16 rounds where vss_block_tail_reference (float32 inside) does."""
    arrays = arrays_of((9, 4), WIDTHS["small"], np.float16, seed=3, offset=True)
    tensors = [torch.from_numpy(arrays[n]) for n in NAMES]
    project = vss_block_tail_reference(*tensors).numpy()
    check(project, emulate(arrays), "vss_block_tail_reference vs emulate")


# ------------------------------------------------------------------------------------------------
# float16 operand rounding


def pattern(rows, width):
    """Rows of +1 / -1 (mean 0, variance 1: their LayerNorm is +-1 within 1e-12 with epsilon 1e-12)."""
    row = np.where(np.arange(width) % 2 == 0, 1.0, -1.0)
    return np.tile(row, (rows, 1))


def odd_steps(rng, width, step):
    """Odd multiples of `step` (1..7 times, random signs): added to +-1 they fall between float16 values, never on
    a midpoint."""
    return (rng.choice([1, 3, 5, 7], width) * rng.choice([-1, 1], width) * step).astype(np.float16)


def rounding_case(name, width=8, rows=4):
    """(float16 arrays, epsilon, name of the rounding that matters, the variant emulate() arguments)."""
    rng = np.random.default_rng(7)
    eye = np.eye(width)
    s = pattern(rows, width)
    ones, zeros = np.ones(width), np.zeros(width)
    p = dict(Y=s, R=np.zeros((rows, width)), out_norm_weight=ones, out_norm_bias=zeros, out_proj=eye,
             norm_weight=ones, norm_bias=zeros, fc1_weight=eye, fc1_bias=zeros, fc2_weight=eye, fc2_bias=zeros)
    if name == "a":
        # a = round(s + beta); R = -round(a), so X1 = 0 exactly and b, g = 0, Z = fc2_bias = 1. Unrounded, X1 is
        # a's rounding residue, whose LayerNorm is of order 1.
        p["out_norm_bias"] = odd_steps(rng, width, 2.0 ** -13)
        p["R"] = -to_f16(s + p["out_norm_bias"].astype(np.float64))
        p["fc2_bias"] = ones
        variant = dict(a=None)
    elif name == "a_subnormal":
        # a = LayerNorm(Y) * 2^-22, in float16's subnormal range: rounded to multiples of 2^-24, read out by
        # out_proj = 2^14 and fc2 = 0 (Z = X1). Rounding to 11 significant bits instead keeps too much.
        p["Y"] = rng.standard_normal((rows, width))
        p["out_norm_weight"] = ones * 2.0 ** -22
        p["out_proj"] = eye * 2.0 ** 14
        p["fc2_weight"] = 0 * eye

        def eleven_bits(v):
            mantissa, exponent = np.frexp(v)
            return np.ldexp(np.round(mantissa * 2.0 ** 11) / 2.0 ** 11, exponent)
        variant = dict(a=eleven_bits)
    elif name == "b":
        # b = round(s + beta); fc1_bias = -b, so h = 0, g = 0 and Z = X1 = s. Unrounded, h is b's residue and
        # fc2 = 1024 shows it.
        p["norm_bias"] = odd_steps(rng, width, 2.0 ** -13)
        p["fc1_bias"] = -to_f16(s[0] + p["norm_bias"].astype(np.float64))
        p["fc2_weight"] = 1024 * eye
        variant = dict(b=None)
    elif name == "g":
        # h = s, g = round(GELU(+-1)); fc2 = 4096 and fc2_bias = -4096 g, so Z = X1 = s. Unrounded, Z = s + 4096
        # times g's residue.
        gelu = torch.nn.functional.gelu(torch.from_numpy(s[0])).numpy()
        p["fc2_weight"] = 4096 * eye
        p["fc2_bias"] = -4096 * to_f16(gelu)
        variant = dict(g=None)
    elif name == "x1":
        # X1 = 64 + a / 64 with a of order 1: not float16 values (whose spacing there is 2^-5 or 2^-4, the spread
        # of a / 64); rounded, X1's LayerNorm reads mostly the rounding. fc2 = 16 shows b's change in Z.
        p["Y"] = rng.standard_normal((rows, width))
        p["out_proj"] = eye * 2.0 ** -6
        p["R"] = np.full((rows, width), 64.0)
        p["fc2_weight"] = 16 * eye
        variant = dict(x1=to_f16)
    else:
        raise ValueError(name)
    return {n: np.asarray(a).astype(np.float16) for n, a in p.items()}, 1e-12, variant


@needs_lib
@pytest.mark.parametrize("name", ["a", "a_subnormal", "b", "g", "x1"])
def test_float16_rounds_the_operands_and_not_x1(name):
    """OpenVINO's CPU plugin computes a float16 graph in float32, so without the conversion's own rounding the
    products would read the exact operands."""
    arrays, epsilon, variant = rounding_case(name)
    expected = emulate(arrays, epsilon)
    assert np.isfinite(expected).all()
    wrong = emulate(arrays, epsilon, **variant)
    tol = tolerance(expected, np.float16)
    assert np.abs(wrong - expected).max() > 10 * tol, "the case does not tell the rounding apart"
    width = arrays["Y"].shape[-1]
    model = node_model(list(arrays["Y"].shape), list(arrays["R"].shape), width, elem=F16, epsilon=epsilon)
    check(run(compile_model(model), arrays), expected, name)


@needs_lib
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's float16 cast overflows, as it should
def test_float16_overflow_of_an_operand():
    """a beyond float16's range rounds to inf (contract): that row's Z is not finite, as in the reference."""
    dims = WIDTHS["odd"]
    arrays = arrays_of((3,), dims, np.float16, seed=1)
    arrays["out_norm_weight"][:] = 20000.0
    arrays["out_proj"] /= 4096  # X1 of order 10
    assert np.abs(emulate(arrays, a=None)[[0, 2]]).max() < 1000
    arrays["Y"][1] = np.float16(0.0)
    arrays["Y"][1, 0] = np.float16(50.0)  # one outlier: its normalised value sqrt(23), times 20000 > 65504
    arrays["Y"][2] = np.float16(1.0)     # constant row: LayerNorm 0, a = out_norm_bias
    z = run(compile_model(node_model([3, dims[0]], [3, dims[1]], dims[2], elem=F16, epsilon=1e-5)), arrays)
    expected = emulate(arrays)
    assert not np.isfinite(expected[1]).any() and not np.isfinite(z[1]).any()
    assert np.isfinite(z[[0, 2]]).all()
    check(z[[0, 2]], expected[[0, 2]], "finite rows")


# ------------------------------------------------------------------------------------------------
# Graph and backend


@needs_lib
def test_the_conversion_uses_openvino_ops_only():
    core = ov.Core()
    openvino_library.add_to_core(core)
    for elem, converts in ((F32, 0), (F16, 12)):
        model = core.read_model(node_model(["b", 8, 64], ["b", 8, 32], 64, elem=elem).SerializeToString(), b"")
        types = [op.get_type_name() for op in model.get_ordered_ops()]
        assert types.count("MVN") == 2 and types.count("MatMul") == 3 and types.count("Gelu") == 1, types
        assert types.count("Convert") == converts, types
        assert all(op.get_type_info().version_id != "ssmpose" for op in model.get_ordered_ops()), types


@needs_lib
@pytest.mark.parametrize("elem", [F32, F16], ids=["f32", "f16"])
def test_through_the_openvino_backend(elem, tmp_path):
    """A raw graph whose only input is Y (R and the parameters are initializers) runs through runtimes.load."""
    dims, lead = WIDTHS["small"], (2, 6, 5)
    arrays = arrays_of(lead, dims, NP_TYPES[elem], seed=4)
    model = node_model(list(lead) + [dims[0]], list(lead) + [dims[1]], dims[2], elem=elem,
                       initializers={n: arrays[n] for n in NAMES[1:]})
    path = tmp_path / "vss_block_tail.onnx"
    path.write_bytes(model.SerializeToString())
    session = runtimes.load(path, "openvino")
    assert session.extension is not None
    z = session.run(arrays["Y"])
    assert z.dtype == np.float32 and z.shape == lead + (dims[1],)
    check(z.astype(NP_TYPES[elem]), reference(arrays), "backend")


# ------------------------------------------------------------------------------------------------
# Malformed nodes


def read_error(model):
    with pytest.raises(RuntimeError) as info:
        compile_model(model)
    return str(info.value)


ELEVEN = "expects 11 inputs (Y, R, out_norm_weight, out_norm_bias, out_proj, norm_weight, norm_bias, fc1_weight, " \
         "fc1_bias, fc2_weight, fc2_bias)"


@needs_lib
@pytest.mark.parametrize("what, model, message", [
    ("out_proj_shape", lambda: node_model([5, 64], [5, 32], shapes={"out_proj": [64, 31]}),
     "out_proj has shape [64,31], expected (D, C) = (64, 32) (D from Y's last dimension, C from R's last dimension)"),
    ("out_proj_transposed", lambda: node_model([5, 64], [5, 32], shapes={"out_proj": [32, 64]}),
     "out_proj has shape [32,64], expected (D, C) = (64, 32)"),
    ("out_proj_rank", lambda: node_model([5, 64], [5, 32], shapes={"out_proj": [64]}),
     "out_proj must be (D, C), got shape [64]"),
    ("fc1_bias_length", lambda: node_model([5, 64], [5, 32], 64, shapes={"fc1_bias": [63]}),
     "fc1_bias has shape [63], expected (H) = (64) (H from fc1_weight's last dimension)"),
    ("fc2_weight_shape", lambda: node_model([5, 64], [5, 32], 64, shapes={"fc2_weight": [64, 33]}),
     "fc2_weight has shape [64,33], expected (H, C) = (64, 32)"),
    ("norm_weight_length", lambda: node_model([5, 64], [5, 32], shapes={"norm_weight": [64]}),
     "norm_weight has shape [64], expected (C) = (32) (C from R's last dimension)"),
    ("out_norm_bias_length", lambda: node_model([5, 64], [5, 32], shapes={"out_norm_bias": [32]}),
     "out_norm_bias has shape [32], expected (D) = (64) (D from Y's last dimension)"),
    ("lead_differs", lambda: node_model([2, 5, 64], [2, 4, 32]),
     "R has shape [2,4,32] but Y has shape [2,5,64] (R must have Y's leading dimensions"),
    ("lead_rank_differs", lambda: node_model([10, 64], [2, 5, 32]),
     "R has shape [2,5,32] but Y has shape [10,64]"),
    ("lead_symbolic", lambda: node_model(["n", 64], [3, 2, 32]), "R has shape [3,2,32] but Y has shape [?,64]"),
    ("y_scalar", lambda: node_model([], [4]), "Y must have rank >= 1 (..., D), got a scalar"),
    ("channels_limit", lambda: node_model([2, 64], [2, 513]),
     "C = 513 (R's last dimension) is outside 1..512, the op's limit"),
    ("inner_limit", lambda: node_model([2, 1025], [2, 32]),
     "D = 1025 (Y's last dimension) is outside 1..1024, the op's limit"),
    ("zero_width", lambda: node_model([2, 0], [2, 32]), "D = 0 (Y's last dimension) is outside 1..1024"),
    ("type_mismatch", lambda: node_model([2, 64], types={"fc2_weight": F16}),
     "input fc2_weight has element type f16 but Y has f32"),
    ("double", lambda: node_model([2, 64], elem=TensorProto.DOUBLE),
     "Y has element type f64, which is not supported; supported: f32, f16"),
    ("epsilon_zero", lambda: node_model([2, 64], epsilon=0.0), "attribute epsilon must be finite and > 0, got 0"),
    ("epsilon_int", lambda: node_model([2, 64], epsilon=1), "attribute epsilon must be a float, got an int"),
    ("ten_inputs", lambda: node_model([2, 64], inputs=NAMES[:10]), ELEVEN + ", got 10"),
    ("omitted_norm_bias", lambda: node_model([2, 64], inputs=NAMES[:6] + [""] + NAMES[7:]),
     "required input 6 (norm_bias) is missing"),
])
def test_malformed_nodes_are_refused(what, model, message):
    text = read_error(model())
    assert OP in text and message in text, text
