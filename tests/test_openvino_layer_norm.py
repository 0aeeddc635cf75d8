"""LayerNorm (ssmpose domain version 3) and AddLayerNorm (domain version 4) in the OpenVINO extension
(libssmpose_ov.so), whose ONNX frontend conversions build OpenVINO's own ops (Gather + Subtract of the row's first
value, MVN over the last axis, Multiply, Add; Convert to f32 and back for float16; AddLayerNorm: an Add first, and
for float16 the sum rounded to float16 by arithmetic before the normalisation), on OpenVINO's CPU device, against
float64 references on the inputs as the runtime sees them.

- One-node graphs (opset imports {"": 18, "ssmpose": 3}, or 4 for AddLayerNorm), float32 and float16, X of rank
  2..5, C = 1, 32, 48, 96, 768, static and symbolic (batch) dimensions, default and explicit epsilon; rows with a
  mean offset of 1e3 and a standard deviation of 0.1 (where float32 sums of the raw values lose the spread).
  Tolerance: max abs error <= 1e-6 (float32) or 2e-3 (float16) of max|reference|, plus 1e-6.
- AddLayerNorm: S must equal the reference's X + R rounded to the type bit for bit, and Y is compared with the
  float64 LayerNorm of that rounded S (`custom_ops.reference.add_layer_norm_reference`), also on rows whose
  float16 sums fall on ties and between float16 values, where the LayerNorm of the unrounded sum is far off.
- The same graph, weight and bias as initializers, through ssmpose's `openvino` runtime backend.
- Malformed nodes refused when the model is read, with an error naming the op, the node and the problem.

Tests skip when the extension is not built, unless SSMPOSE_REQUIRE_KERNELS=1 (CI; test_openvino_extension.py
fails there).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmpose import runtimes
from ssmpose.custom_ops import openvino_library
from ssmpose.custom_ops.reference import add_layer_norm_reference, layer_norm_reference

ov = pytest.importorskip("openvino")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

LIB = openvino_library.openvino_library_path()
REASON = openvino_library.unavailable_reason()
needs_lib = pytest.mark.skipif(LIB is None, reason=f"libssmpose_ov.so not built: {REASON}")

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
NP_TYPES = {F32: np.float32, F16: np.float16, TensorProto.DOUBLE: np.float64}
TOLERANCE = {F32: 1e-6, F16: 2e-3}
NAMES = ["X", "weight", "bias"]


def node_model(x_shape, channels=None, elem=F32, types=None, inputs=None, initializers=None, **attrs):
    """A graph of one LayerNorm node named 'ln0'. `x_shape` may hold symbolic dimensions (strings); weight and
    bias are (channels,) (default: X's last dimension); `types` {name: element type} where one differs from
    `elem`; `initializers` {name: array} become initializers instead of graph inputs."""
    types, initializers = types or {}, initializers or {}
    inputs = NAMES if inputs is None else inputs
    channels = x_shape[-1] if channels is None else channels
    shapes = {"X": x_shape, "weight": [channels], "bias": [channels]}
    graph_inputs = [helper.make_tensor_value_info(n, types.get(n, elem), shapes[n]) for n in dict.fromkeys(inputs)
                    if n and n not in initializers]
    inits = [numpy_helper.from_array(a, n) for n, a in initializers.items()]
    attrs.setdefault("plugin_version", "1")
    attrs.setdefault("plugin_namespace", "ssmpose")
    node = helper.make_node("LayerNorm", inputs, ["Y"], domain="ssmpose", name="ln0", **attrs)
    graph = helper.make_graph([node], "layer_norm", graph_inputs, [helper.make_tensor_value_info("Y", elem, None)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ssmpose", 3)])
    model.ir_version = 8
    return model


def compile_model(model):
    core = ov.Core()
    openvino_library.add_to_core(core)
    return core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                              {"INFERENCE_PRECISION_HINT": "f32"})


def arrays_of(shape, np_type, seed=0, offset=0.0, std=1.0):
    """Inputs rounded to np_type: X of mean `offset` and standard deviation `std` per row."""
    rng = np.random.default_rng(seed)
    c = shape[-1]
    return {"X": (offset + std * rng.standard_normal(shape)).astype(np_type),
            "weight": (1.0 + 0.5 * rng.standard_normal(c)).astype(np_type),
            "bias": (0.5 * rng.standard_normal(c)).astype(np_type)}


def reference(arrays, epsilon=1e-5):
    """float64 LayerNorm over the last axis (biased variance, epsilon inside the square root)."""
    x, w, b = (arrays[n].astype(np.float64) for n in NAMES)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + float(np.float32(epsilon))) * w + b


def check(actual, expected, rel, what=""):
    """Returns the max abs error relative to max|expected|."""
    err = float(np.abs(actual.astype(np.float64) - expected).max())
    scale = float(np.abs(expected).max())
    assert err <= rel * scale + 1e-6, f"{what}: max abs err {err:.3e} > {rel:g} * {scale:.3e} + 1e-6"
    return err / scale if scale else err


SHAPES = [(5, 32), (2, 7, 48), (2, 3, 4, 96), (2, 2, 3, 2, 32), (3, 768), (2, 9, 1), (4, 1)]
DATA = {"unit": dict(offset=0.0, std=1.0), "offset": dict(offset=1e3, std=0.1)}


@needs_lib
def test_library_version_7_has_layer_norm_and_add_layer_norm():
    assert openvino_library.OV_LIBRARY_VERSION == 7 and openvino_library.KERNELS_ABI_VERSION == 6
    assert openvino_library.library_info()["version"] == 7


def test_a_library_without_add_layer_norm_is_refused(tmp_path):
    info = {"version": 3, "kernels_abi": 3, "openvino": "2026.4.1", "running_openvino": "2026.4.1"}
    problem = openvino_library._problem(tmp_path / "libssmpose_ov.so", info)
    assert "is extension version 3, this ssmpose needs 7: the library is stale" in problem
    problem = openvino_library._problem(tmp_path / "libssmpose_ov.so", dict(info, version=7, kernels_abi=3))
    assert "uses kernel ABI 3, this ssmpose needs 6" in problem


@needs_lib
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("elem", [F32, F16], ids=["f32", "f16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_static_shapes(shape, elem, data):
    arrays = arrays_of(shape, NP_TYPES[elem], seed=len(shape) * 1000 + shape[-1], **DATA[data])
    compiled = compile_model(node_model(list(shape), elem=elem))
    y = next(iter(compiled(arrays).values()))
    assert y.dtype == NP_TYPES[elem] and y.shape == shape
    check(y, reference(arrays), TOLERANCE[elem], f"{shape} {data}")


@needs_lib
@pytest.mark.parametrize("elem", [F32, F16], ids=["f32", "f16"])
@pytest.mark.parametrize("channels", [1, 32, 48, 96, 768])
def test_dynamic_batch_dimensions_and_epsilon(channels, elem):
    """Symbolic leading dimensions: one compiled model runs several shapes; a large epsilon matters."""
    for rank in (2, 3, 4, 5):
        x_shape = [f"d{i}" for i in range(rank - 1)] + [channels]
        for epsilon in (1e-5, 0.5):
            compiled = compile_model(node_model(x_shape, elem=elem, epsilon=epsilon))
            for seed, lead in enumerate([(1,) * (rank - 1), tuple(range(2, rank + 1))]):
                for data, kw in DATA.items():
                    arrays = arrays_of(lead + (channels,), NP_TYPES[elem], seed=seed, **kw)
                    y = next(iter(compiled(arrays).values()))
                    assert y.shape == lead + (channels,)
                    check(y, reference(arrays, epsilon), TOLERANCE[elem], f"rank {rank} {lead} eps {epsilon} {data}")


@needs_lib
def test_dynamic_channels():
    """C unknown when the model is read (OpenVINO's CPU plugin refuses inputs of unknown rank)."""
    model = node_model(["b", "n", "c"], channels="c")
    compiled = compile_model(model)
    for shape in [(2, 5, 7), (1, 3, 768)]:
        arrays = arrays_of(shape, np.float32, **DATA["offset"])
        check(next(iter(compiled(arrays).values())), reference(arrays), TOLERANCE[F32], str(shape))


@needs_lib
@pytest.mark.parametrize("elem", [F32, F16], ids=["f32", "f16"])
@pytest.mark.parametrize("shape", [(0, 33), (1 << 40, 0, 1, 33)], ids=["0x33", "huge_x0x1x33"])
def test_zero_rows(shape, elem):
    """X with no rows (docs/ops.md allows it) gives an empty Y: the conversion's shift by each row's first value
    once was a Gather, on which OpenVINO's CPU plugin died of SIGFPE for an empty X (found by fuzzing)."""
    np_type = NP_TYPES[elem]
    arrays = {"X": np.zeros(shape, np_type), "weight": np.ones(33, np_type), "bias": np.zeros(33, np_type)}
    for x_shape in (list(shape), [f"d{i}" for i in range(len(shape) - 1)] + [33]):
        for model in (node_model(x_shape, elem=elem), add_node_model(x_shape, elem=elem)):
            feeds = {i.name: arrays["X" if i.name == "R" else i.name] for i in model.graph.input}
            outputs = list(compile_model(model)(feeds).values())
            assert [o.shape for o in outputs] == [shape] * len(outputs) and outputs[0].dtype == np_type
    core = ov.Core()
    openvino_library.add_to_core(core)
    model = core.read_model(node_model([0, 33]).SerializeToString(), b"")
    types = [op.get_type_name() for op in model.get_ordered_ops()]
    assert "Gather" not in types and types.count("Slice") == 1, types


@needs_lib
def test_float16_keeps_float32_statistics():
    """A row whose mean and spread only float32 statistics hold: values 2048 + k/8 (float16 exact), whose
    float16 squared deviations would overflow (2048^2 > 65504) or round the spread away."""
    x = (2048.0 + np.arange(64) / 8.0).astype(np.float16).reshape(1, 64)
    arrays = {"X": x, "weight": np.ones(64, np.float16), "bias": np.zeros(64, np.float16)}
    y = next(iter(compile_model(node_model([1, 64], elem=F16))(arrays).values()))
    assert np.isfinite(y).all()
    check(y, reference(arrays), TOLERANCE[F16], "f16 offset row")


@needs_lib
def test_the_conversion_uses_openvino_ops_only():
    core = ov.Core()
    openvino_library.add_to_core(core)
    for elem, converts in ((F32, 0), (F16, 4)):
        model = core.read_model(node_model(["b", 8, 32], elem=elem).SerializeToString(), b"")
        types = [op.get_type_name() for op in model.get_ordered_ops()]
        assert types.count("MVN") == 1 and types.count("Convert") == converts, types
        assert all(op.get_type_info().version_id != "ssmpose" for op in model.get_ordered_ops()), types


@needs_lib
@pytest.mark.parametrize("elem", [F32, F16], ids=["f32", "f16"])
def test_through_the_openvino_backend(elem, tmp_path):
    """A raw graph (no ssmpose metadata) with weight and bias as initializers runs through runtimes.load."""
    np_type = NP_TYPES[elem]
    arrays = arrays_of((2, 6, 5, 96), np_type, **DATA["offset"])
    model = node_model(["b", 6, 5, 96], elem=elem, initializers={"weight": arrays["weight"], "bias": arrays["bias"]})
    path = tmp_path / "layer_norm.onnx"
    path.write_bytes(model.SerializeToString())
    session = runtimes.load(path, "openvino")
    assert session.extension is not None
    y = session.run(arrays["X"])
    assert y.dtype == np.float32 and y.shape == (2, 6, 5, 96)
    check(y, reference(arrays), TOLERANCE[elem], "backend")


# ------------------------------------------------------------------------------------------------
# Malformed nodes


def read_error(model):
    with pytest.raises(RuntimeError) as info:
        compile_model(model)
    return str(info.value)


@needs_lib
@pytest.mark.parametrize("what, model, message", [
    ("weight_length", lambda: node_model([2, 32], channels=31), "weight has 31 values, X has 32 channels"),
    ("bias_length", lambda: node_model([2, 32], inputs=["X", "weight", "b2"], initializers={
        "b2": np.zeros(16, np.float32)}), "bias has 16 values, X has 32 channels"),
    ("weight_rank", lambda: node_model([2, 32], inputs=["X", "w2", "bias"], initializers={
        "w2": np.ones((1, 32), np.float32)}), "weight must be (C), got shape [1,32]"),
    ("type_mismatch", lambda: node_model([2, 32], types={"weight": F16}),
     "input weight has element type f16 but X has f32"),
    ("bias_type", lambda: node_model([2, 32], elem=F16, types={"bias": F32}),
     "input bias has element type f32 but X has f16"),
    ("double", lambda: node_model([2, 32], elem=TensorProto.DOUBLE),
     "X has element type f64, which is not supported; supported: f32, f16"),
    ("epsilon_zero", lambda: node_model([2, 32], epsilon=0.0), "attribute epsilon must be finite and > 0, got 0"),
    ("epsilon_negative", lambda: node_model([2, 32], epsilon=-1e-5),
     "attribute epsilon must be finite and > 0, got -1e-05"),
    ("epsilon_inf", lambda: node_model([2, 32], epsilon=float("inf")),
     "attribute epsilon must be finite and > 0, got inf"),
    ("epsilon_nan", lambda: node_model([2, 32], epsilon=float("nan")),
     "attribute epsilon must be finite and > 0, got nan"),
    ("epsilon_int", lambda: node_model([2, 32], epsilon=1), "attribute epsilon must be a float"),
    ("two_inputs", lambda: node_model([2, 32], inputs=["X", "weight"]),
     "expects 3 inputs (X, weight, bias), got 2"),
    ("four_inputs", lambda: node_model([2, 32], inputs=["X", "weight", "bias", "bias"]),
     "expects 3 inputs (X, weight, bias), got 4"),
    ("omitted_bias", lambda: node_model([2, 32], inputs=["X", "weight", ""]), "required input 2 (bias) is missing"),
    ("scalar", lambda: node_model([], channels=4), "X must have rank >= 1 (..., C), got a scalar"),
    ("zero_channels", lambda: node_model([2, 0], channels=0), "X has 0 channels (last dimension), needs >= 1"),
])
def test_malformed_nodes_are_refused(what, model, message):
    text = read_error(model())
    assert "ssmpose LayerNorm node 'ln0'" in text and message in text, text


# ------------------------------------------------------------------------------------------------
# AddLayerNorm (domain version 4)

ADD_NAMES = ["X", "R", "weight", "bias"]


def add_node_model(x_shape, r_shape=None, channels=None, elem=F32, types=None, inputs=None, outputs=("Y", "S"),
                   graph_outputs=None, **attrs):
    """A graph of one AddLayerNorm node named 'aln0'; R has X's shape unless `r_shape` says otherwise; the graph
    outputs `graph_outputs` (default: the node's outputs)."""
    types = types or {}
    inputs = ADD_NAMES if inputs is None else inputs
    channels = x_shape[-1] if channels is None else channels
    shapes = {"X": x_shape, "R": x_shape if r_shape is None else r_shape, "weight": [channels], "bias": [channels]}
    graph_inputs = [helper.make_tensor_value_info(n, types.get(n, elem), shapes[n]) for n in dict.fromkeys(inputs)
                    if n]
    node = helper.make_node("AddLayerNorm", inputs, list(outputs), domain="ssmpose", name="aln0", **attrs)
    graph_outputs = [o for o in outputs if o] if graph_outputs is None else graph_outputs
    graph = helper.make_graph([node], "add_layer_norm", graph_inputs,
                              [helper.make_tensor_value_info(o, elem, None) for o in graph_outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ssmpose", 4)])
    model.ir_version = 8
    return model


def add_arrays_of(shape, np_type, seed=0, offset=0.0, std=1.0):
    arrays = arrays_of(shape, np_type, seed=seed, offset=offset, std=std)
    rng = np.random.default_rng(seed + 1)
    arrays["R"] = (std * rng.standard_normal(shape)).astype(np_type)
    return arrays


def add_reference(arrays, epsilon=1e-5):
    """(Y, S): S = X + R rounded to the type by the reference, Y the float64 LayerNorm of that S."""
    x, r, w, b = (torch.from_numpy(arrays[n]) for n in ADD_NAMES)
    _, s = add_layer_norm_reference(x, r, w, b, epsilon)
    y = layer_norm_reference(s.double(), w.double(), b.double(), float(np.float32(epsilon)))
    return y.numpy(), s.numpy()


def run_add(compiled, arrays):
    out = compiled(arrays)
    return out[compiled.output(0)], out[compiled.output(1)]


def check_add(compiled, arrays, elem, epsilon=1e-5, what=""):
    y, s = run_add(compiled, arrays)
    y_ref, s_ref = add_reference(arrays, epsilon)
    assert y.dtype == s.dtype == NP_TYPES[elem] and y.shape == s.shape == arrays["X"].shape
    np.testing.assert_array_equal(s, s_ref, err_msg=f"{what}: S")
    return check(y, y_ref, TOLERANCE[elem], what) if y.size else 0.0  # rows may be 0


@needs_lib
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("elem", [F32, F16], ids=["f32", "f16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_add_static_shapes(shape, elem, data):
    arrays = add_arrays_of(shape, NP_TYPES[elem], seed=len(shape) * 1000 + shape[-1], **DATA[data])
    check_add(compile_model(add_node_model(list(shape), elem=elem)), arrays, elem, what=f"{shape} {data}")


@needs_lib
@pytest.mark.parametrize("elem", [F32, F16], ids=["f32", "f16"])
@pytest.mark.parametrize("channels", [1, 32, 96, 768])
def test_add_dynamic_batch_dimensions_and_epsilon(channels, elem):
    for rank in (2, 3, 4):
        x_shape = [f"d{i}" for i in range(rank - 1)] + [channels]
        for epsilon in (1e-5, 0.5):
            compiled = compile_model(add_node_model(x_shape, elem=elem, epsilon=epsilon))
            for seed, lead in enumerate([(1,) * (rank - 1), tuple(range(2, rank + 1)), (0,) + (3,) * (rank - 2)]):
                arrays = add_arrays_of(lead + (channels,), NP_TYPES[elem], seed=seed, **DATA["offset"])
                check_add(compiled, arrays, elem, epsilon, f"rank {rank} {lead} eps {epsilon}")


def rounding_rows(rng, rows, channels):
    """float16 X and R whose sums fall on float16 ties and between float16 values, with a spread of a few float16
    steps, in several binades: the sums' rounding moves Y by tenths."""
    xs, rs = [], []
    for _ in range(rows):
        exponent = int(rng.choice([-10, -3, 0, 4, 10, 14]))
        step = 2.0 ** (exponent - 10)  # float16 spacing in [2^e, 2^(e+1))
        x = 2.0 ** exponent + step * rng.integers(0, 6, channels)
        r = step * rng.choice([-0.75, -0.5, -0.25, 0.25, 0.5, 0.75, 1.5, -1.5], channels)
        xs.append(x)
        rs.append(r)
    return np.array(xs).astype(np.float16), np.array(rs).astype(np.float16)


@needs_lib
def test_add_float16_sums_are_rounded_before_the_normalisation():
    """OpenVINO's CPU plugin computes a float16 graph in float32, so without the conversion's own rounding the
    LayerNorm would read the exact sums."""
    rng = np.random.default_rng(5)
    channels, epsilon = 24, 1e-30
    x, r = rounding_rows(rng, 64, channels)
    arrays = {"X": x, "R": r, "weight": np.ones(channels, np.float16), "bias": np.zeros(channels, np.float16)}
    rel = check_add(compile_model(add_node_model(["n", channels], elem=F16, epsilon=epsilon)), arrays, F16,
                    epsilon, "float16 ties")
    y_ref, _ = add_reference(arrays, epsilon)
    exact = layer_norm_reference(torch.from_numpy(x.astype(np.float64) + r.astype(np.float64)),
                                 torch.ones(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64),
                                 epsilon).numpy()
    assert np.abs(exact - y_ref).max() > 100 * rel * np.abs(y_ref).max()  # the rounding matters here


@needs_lib
def test_add_float16_overflow():
    """X + R beyond float16's range: S is inf and the row's Y NaN, as in the reference; other rows are unaffected."""
    x = np.array([[60000, 1, 2, 3], [1, 2, 3, 4]], np.float16)
    r = np.array([[10000, 1, 1, 1], [1, 1, 1, 1]], np.float16)
    arrays = {"X": x, "R": r, "weight": np.ones(4, np.float16), "bias": np.zeros(4, np.float16)}
    y, s = run_add(compile_model(add_node_model([2, 4], elem=F16)), arrays)
    y_ref, s_ref = add_reference(arrays)
    np.testing.assert_array_equal(s, s_ref)
    assert s[0, 0] == np.inf and np.isnan(y[0]).all() and np.isnan(y_ref[0]).all()
    check(y[1], y_ref[1], TOLERANCE[F16], "finite row")


@needs_lib
def test_add_s_may_be_left_unused():
    arrays = add_arrays_of((3, 32), np.float32)
    y_ref, _ = add_reference(arrays)
    for outputs in (("Y", "S"), ("Y", ""), ("Y",)):
        compiled = compile_model(add_node_model([3, 32], outputs=outputs, graph_outputs=["Y"]))
        assert len(compiled.outputs) == 1
        check(next(iter(compiled(arrays).values())), y_ref, TOLERANCE[F32], str(outputs))


@needs_lib
def test_add_conversion_uses_openvino_ops_only():
    core = ov.Core()
    openvino_library.add_to_core(core)
    for elem in (F32, F16):
        model = core.read_model(add_node_model(["b", 8, 32], elem=elem).SerializeToString(), b"")
        types = [op.get_type_name() for op in model.get_ordered_ops()]
        assert types.count("MVN") == 1, types
        assert types.count("Convert") == (0 if elem == F32 else 4), types
        assert all(op.get_type_info().version_id != "ssmpose" for op in model.get_ordered_ops()), types


@needs_lib
@pytest.mark.parametrize("what, model, message", [
    ("r_shape", lambda: add_node_model([2, 32], r_shape=[2, 31]),
     "R has shape [2,31] but X has shape [2,32] (R must have X's shape; no broadcasting)"),
    ("r_broadcast", lambda: add_node_model([2, 32], r_shape=[1, 32]), "R has shape [1,32] but X has shape [2,32]"),
    ("r_rank", lambda: add_node_model([2, 3, 32], r_shape=[3, 32]), "R has shape [3,32] but X has shape [2,3,32]"),
    ("r_symbolic", lambda: add_node_model(["b", 32], r_shape=["b", 16]), "R has shape [?,16] but X has shape [?,32]"),
    ("weight_length", lambda: add_node_model([2, 32], channels=31), "weight has 31 values, X has 32 channels"),
    ("r_type", lambda: add_node_model([2, 32], types={"R": F16}), "input R has element type f16 but X has f32"),
    ("bias_type", lambda: add_node_model([2, 32], elem=F16, types={"bias": F32}),
     "input bias has element type f32 but X has f16"),
    ("double", lambda: add_node_model([2, 32], elem=TensorProto.DOUBLE),
     "X has element type f64, which is not supported; supported: f32, f16"),
    ("epsilon_zero", lambda: add_node_model([2, 32], epsilon=0.0), "attribute epsilon must be finite and > 0, got 0"),
    ("epsilon_nan", lambda: add_node_model([2, 32], epsilon=float("nan")),
     "attribute epsilon must be finite and > 0, got nan"),
    ("epsilon_int", lambda: add_node_model([2, 32], epsilon=1), "attribute epsilon must be a float, got an int"),
    ("three_inputs", lambda: add_node_model([2, 32], inputs=["X", "weight", "bias"]),
     "expects 4 inputs (X, R, weight, bias), got 3"),
    ("omitted_r", lambda: add_node_model([2, 32], inputs=["X", "", "weight", "bias"]),
     "required input 1 (R) is missing"),
    ("scalar", lambda: add_node_model([], channels=4), "X must have rank >= 1 (..., C), got a scalar"),
])
def test_add_malformed_nodes_are_refused(what, model, message):
    text = read_error(model())
    assert "ssmpose AddLayerNorm node 'aln0'" in text and message in text, text
