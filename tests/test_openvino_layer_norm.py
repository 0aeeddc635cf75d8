"""LayerNorm (ssmpose domain version 3) in the OpenVINO extension (libssmpose_ov.so), whose ONNX frontend
conversion builds OpenVINO's own ops (Gather + Subtract of the row's first value, MVN over the last axis,
Multiply, Add; Convert to f32 and back for float16), on OpenVINO's CPU device, against a float64 numpy reference
on the inputs as the runtime sees them.

- One-node graphs (opset imports {"": 18, "ssmpose": 3}), float32 and float16, X of rank 2..5, C = 1, 32, 48, 96,
  768, static and symbolic (batch) dimensions, default and explicit epsilon; rows with a mean offset of 1e3 and a
  standard deviation of 0.1 (where float32 sums of the raw values lose the spread). Tolerance: max abs error
  <= 1e-6 (float32) or 2e-3 (float16) of max|reference|, plus 1e-6.
- The same graph, weight and bias as initializers, through ssmpose's `openvino` runtime backend.
- Malformed nodes refused when the model is read, with an error naming LayerNorm, the node and the problem.

Tests skip when the extension is not built, unless SSMPOSE_REQUIRE_KERNELS=1 (CI; test_openvino_extension.py
fails there).
"""
from __future__ import annotations

import numpy as np
import pytest

from ssmpose import runtimes
from ssmpose.custom_ops import openvino_library

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
def test_library_version_3_has_layer_norm():
    assert openvino_library.OV_LIBRARY_VERSION == 3 and openvino_library.KERNELS_ABI_VERSION == 2
    assert openvino_library.library_info()["version"] == 3


def test_a_library_without_layer_norm_is_refused(tmp_path):
    info = {"version": 2, "kernels_abi": 2, "openvino": "2026.4.1", "running_openvino": "2026.4.1"}
    problem = openvino_library._problem(tmp_path / "libssmpose_ov.so", info)
    assert "is extension version 2, this ssmpose needs 3: the library is stale" in problem
    problem = openvino_library._problem(tmp_path / "libssmpose_ov.so", dict(info, version=3, kernels_abi=1))
    assert "uses kernel ABI 1, this ssmpose needs 2" in problem


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
