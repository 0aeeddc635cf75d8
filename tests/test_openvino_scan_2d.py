"""SelectiveScan2D (ssmpose domain version 2) in the OpenVINO extension (libssmpose_ov.so), on OpenVINO's CPU
device, against the float64 reference `reference.selective_scan_2d_reference`.

- One-node ONNX graphs (opset import ssmpose 2) with and without Ds / delta_bias (omitted at the end or by an
  empty name), delta_softplus 0 and 1, static and symbolic shapes, and after a round trip through IR. Tolerances
  as the ONNX Runtime tests of tests/test_selective_scan_2d.py: max abs error <= 1e-5 (float32) or 2e-3
  (float16) of max|reference|, plus 1e-6; float16 is moreover bit-identical to the float32 result rounded.
- Malformed nodes fail with an OpenVINO error naming SelectiveScan2D and the problem in the words of the ONNX
  Runtime adapter: when the model is read (static shapes) or when it runs (symbolic shapes).
- A whole model exported with op_version 2 (mamkpd_small at 256x192: 12 SelectiveScan2D nodes) runs in custom
  form through the `openvino` backend, also after saving to IR, and matches PyTorch within 1e-4 of
  max|heatmap|. The default export (op version 4) runs in tests/test_mamkpd.py and test_openvino_extension.py.

Tests skip when the extension is not built, unless SSMPOSE_REQUIRE_KERNELS=1 (CI; test_openvino_extension.py
fails there).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmpose import runtimes
from ssmpose.custom_ops import openvino_library
from ssmpose.custom_ops import reference as ref

ov = pytest.importorskip("openvino")
from onnx import TensorProto, helper  # noqa: E402

from ssmpose.runtimes.openvino_backend import save_ir  # noqa: E402

LIB = openvino_library.openvino_library_path()
REASON = openvino_library.unavailable_reason()
needs_lib = pytest.mark.skipif(LIB is None, reason=f"libssmpose_ov.so not built: {REASON}")

K = 4
NAMES = ["x", "delta", "A", "Bs", "Cs", "Ds", "delta_bias"]
NP_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}
TOLERANCE = {TensorProto.FLOAT: 1e-5, TensorProto.FLOAT16: 2e-3}
# Optional inputs: both, none (5 inputs), Ds omitted by "" with delta_bias present, Ds only.
INPUT_SETS = {"all": NAMES, "none": NAMES[:5], "no_Ds": NAMES[:5] + ["", "delta_bias"], "Ds_only": NAMES[:6]}


def shapes_of(batch, height, width, dim, dstate):
    return {"x": [batch, height, width, dim], "delta": [batch, height, width, K * dim], "A": [K * dim, dstate],
            "Bs": [batch, height, width, K, dstate], "Cs": [batch, height, width, K, dstate], "Ds": [K * dim],
            "delta_bias": [K * dim]}


def scan_arrays(batch, height, width, dim, dstate, seed=0, softplus=True):
    """float64 inputs of realistic magnitudes (decays of 0.1..1 per step)."""
    rng = np.random.default_rng(seed)
    s = shapes_of(batch, height, width, dim, dstate)
    arrays = {n: rng.standard_normal(s[n]) for n in ("x", "Bs", "Cs", "Ds")}
    arrays["A"] = -rng.random(s["A"]) - 0.1
    if softplus:
        arrays["delta"] = rng.standard_normal(s["delta"]) - 1
        arrays["delta_bias"] = rng.standard_normal(s["delta_bias"]) * 0.5
    else:  # dt = delta + delta_bias must stay positive without the softplus
        arrays["delta"] = np.abs(rng.standard_normal(s["delta"])) * 0.1
        arrays["delta_bias"] = np.abs(rng.standard_normal(s["delta_bias"])) * 0.05
    return arrays


def node_model(inputs, shapes, elem=TensorProto.FLOAT, domain_version=2, types=None, **attrs):
    """A graph of one SelectiveScan2D node named 'scan0'; `shapes` {name: shape} (symbolic dimensions as
    strings), `types` {name: element type} where one differs from `elem`."""
    types = types or {}
    graph_inputs = [helper.make_tensor_value_info(n, types.get(n, elem), shapes[n]) for n in inputs if n]
    node = helper.make_node("SelectiveScan2D", inputs, ["y"], domain="ssmpose", name="scan0", **attrs)
    graph = helper.make_graph([node], "scan2d", graph_inputs, [helper.make_tensor_value_info("y", elem, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid("ssmpose", domain_version)])


def compile_model(model, precision="f32"):
    core = ov.Core()
    openvino_library.add_to_core(core)
    if not isinstance(model, ov.Model):
        model = core.read_model(model.SerializeToString(), b"")
    return core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision})


def run(compiled, arrays, inputs, np_type=np.float32):
    out = compiled({n: arrays[n].astype(np_type) for n in inputs if n})
    return next(iter(out.values()))


def reference(arrays, inputs, np_type=np.float32, softplus=True):
    """The float64 reference on the inputs as the runtime sees them (rounded to np_type)."""
    args = [torch.from_numpy(arrays[n].astype(np_type).astype(np.float64)) if n in inputs else None for n in NAMES]
    return ref.selective_scan_2d_reference(*args, bool(softplus)).numpy()


def max_error(actual, expected):
    """(max abs error, max|expected|)."""
    return float(np.abs(actual.astype(np.float64) - expected).max()), float(np.abs(expected).max())


def assert_close(actual, expected, rel, what=""):
    err, scale = max_error(actual, expected)
    assert err <= rel * scale + 1e-6, f"{what}: max abs err {err:.3e} > {rel:g} * {scale:.3e} + 1e-6"


# ------------------------------------------------------------------------------------------------
# Library version

def test_a_library_without_selective_scan_2d_is_refused(tmp_path):
    """Version 2 of the extension is the first with SelectiveScan2D: a version-1 build is stale."""
    assert openvino_library.OV_LIBRARY_VERSION >= 2
    info = {"version": 1, "kernels_abi": openvino_library.KERNELS_ABI_VERSION, "openvino": "2026.4.1",
            "running_openvino": "2026.4.1"}
    problem = openvino_library._problem(tmp_path / "libssmpose_ov.so", info)
    assert (f"is extension version 1, this ssmpose needs {openvino_library.OV_LIBRARY_VERSION}: "
            f"the library is stale") in problem


@needs_lib
def test_library_reports_its_version():
    assert openvino_library.library_info()["version"] == openvino_library.OV_LIBRARY_VERSION


# ------------------------------------------------------------------------------------------------
# Single nodes

# (B, H, W, D, N, delta_softplus): odd sizes, 1xW and Hx1, N in {1, 4, 16}, more than one channel tile (16)
CASES = [
    (2, 5, 7, 6, 4, 1),
    (1, 1, 9, 3, 1, 1),
    (1, 6, 1, 18, 16, 1),
    (2, 4, 6, 33, 2, 0),
]


@needs_lib
@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.FLOAT16], ids=["float32", "float16"])
@pytest.mark.parametrize("optional", list(INPUT_SETS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}H{}W{}D{}N{}sp{}".format(*c))
def test_matches_the_float64_reference(case, optional, elem):
    b, h, w, d, n, softplus = case
    inputs, np_type = INPUT_SETS[optional], NP_TYPES[elem]
    arrays = scan_arrays(b, h, w, d, n, seed=h * 10 + w, softplus=softplus)
    model = node_model(inputs, shapes_of(b, h, w, d, n), elem, delta_softplus=softplus)
    y = run(compile_model(model), arrays, inputs, np_type)
    assert y.dtype == np_type and y.shape == (b, h, w, d)
    assert_close(y, reference(arrays, inputs, np_type, softplus), TOLERANCE[elem], "y")


@needs_lib
def test_float16_is_the_float32_result_rounded():
    arrays = {k: v.astype(np.float16) for k, v in scan_arrays(1, 4, 9, 18, 4, seed=7).items()}
    shapes = shapes_of(1, 4, 9, 18, 4)
    y16 = run(compile_model(node_model(NAMES, shapes, TensorProto.FLOAT16)), arrays, NAMES, np.float16)
    y32 = run(compile_model(node_model(NAMES, shapes)), arrays, NAMES, np.float32)
    assert y16.dtype == np.float16
    assert np.array_equal(y16.view(np.uint16), y32.astype(np.float16).view(np.uint16))


@needs_lib
def test_symbolic_batch_and_image_size():
    """Symbolic B, H and W in the graph; one compiled model runs three sizes."""
    compiled = compile_model(node_model(NAMES, shapes_of("b", "h", "w", 5, 3)))
    for b, h, w in ((1, 3, 4), (2, 7, 5), (1, 1, 1)):
        arrays = scan_arrays(b, h, w, 5, 3, seed=b + h + w)
        y = run(compiled, arrays, NAMES)
        assert y.shape == (b, h, w, 5)
        assert_close(y, reference(arrays, NAMES), 1e-5, f"y {b}x{h}x{w}")


@needs_lib
def test_empty_image_gives_an_empty_output():
    arrays = scan_arrays(2, 0, 4, 5, 2)
    y = run(compile_model(node_model(NAMES, shapes_of("b", "h", 4, 5, 2))), arrays, NAMES)
    assert y.shape == (2, 0, 4, 5)


@needs_lib
@pytest.mark.parametrize("optional", ["none", "no_Ds"])
def test_ir_round_trip_keeps_the_attributes_and_the_optional_inputs(optional, tmp_path):
    inputs = INPUT_SETS[optional]
    arrays = scan_arrays(2, 3, 5, 4, 2, seed=3, softplus=False)
    core = ov.Core()
    openvino_library.add_to_core(core)
    model = core.read_model(node_model(inputs, shapes_of(2, 3, 5, 4, 2), delta_softplus=0).SerializeToString(),
                            b"")
    ov.save_model(model, str(tmp_path / "scan.xml"), compress_to_fp16=False)
    xml = (tmp_path / "scan.xml").read_text()
    assert 'type="SelectiveScan2D" version="ssmpose"' in xml
    assert 'delta_softplus="0"' in xml and 'directions="4"' in xml and 'has_ds="false"' in xml
    y = run(compile_model(core.read_model(str(tmp_path / "scan.xml"))), arrays, inputs)
    assert_close(y, reference(arrays, inputs, softplus=False), 1e-5, "y after IR")


@needs_lib
def test_version_1_and_version_2_ops_in_one_graph():
    """A version-2 graph keeps the version-1 SelectiveScan."""
    model = node_model(NAMES, shapes_of(1, 3, 4, 5, 2))
    model.graph.node.append(helper.make_node("SelectiveScan", ["u", "u", "A1", "B1", "B1"], ["y1"], domain="ssmpose"))
    model.graph.input.extend([helper.make_tensor_value_info("u", TensorProto.FLOAT, [1, 2, 6]),
                              helper.make_tensor_value_info("A1", TensorProto.FLOAT, [2, 1]),
                              helper.make_tensor_value_info("B1", TensorProto.FLOAT, [1, 1, 1, 6])])
    model.graph.output.append(helper.make_tensor_value_info("y1", TensorProto.FLOAT, None))
    arrays = scan_arrays(1, 3, 4, 5, 2)
    u, A1, B1 = np.random.default_rng(1).random((1, 2, 6)), -np.full((2, 1), 0.5), np.full((1, 1, 1, 6), 0.3)
    out = compile_model(model)({**{n: arrays[n].astype(np.float32) for n in NAMES}, "u": u.astype(np.float32),
                                "A1": A1.astype(np.float32), "B1": B1.astype(np.float32)})
    y, y1 = (out[name] for name in ("y", "y1"))
    assert_close(y, reference(arrays, NAMES), 1e-5, "y")
    t = [torch.from_numpy(a.astype(np.float32).astype(np.float64)) for a in (u, A1, B1)]
    assert_close(y1, ref.selective_scan_reference(t[0], t[0], t[1], t[2], t[2]).numpy(), 1e-5, "y1")


@needs_lib
def test_accepted_in_a_version_1_graph_too():
    """OpenVINO's ONNX frontend does not pass the imported domain version to a conversion, so the op is
    accepted in a graph that imports ssmpose version 1 (docs/runtimes.md); ONNX Runtime 1.17+ refuses it."""
    arrays = scan_arrays(1, 3, 4, 5, 2)
    y = run(compile_model(node_model(NAMES, shapes_of(1, 3, 4, 5, 2), domain_version=1)), arrays, NAMES)
    assert_close(y, reference(arrays, NAMES), 1e-5, "y")


# ------------------------------------------------------------------------------------------------
# Malformed nodes: found when the model is read (static shapes) or when it runs (symbolic shapes)

def read_error(model):
    with pytest.raises(RuntimeError) as info:
        compile_model(model)
    return str(info.value)


GOOD = shapes_of(1, 3, 4, 5, 2)   # K*D = 20
BAD_SHAPES = [
    ("x_rank", dict(x=[1, 3, 4]), "x must be (B, H, W, D), got shape (1, 3, 4)"),
    ("Bs_rank", dict(Bs=[1, 3, 4, 8], Cs=[1, 3, 4, 8]), "Bs must be (B, H, W, K, N), got shape (1, 3, 4, 8)"),
    ("Bs_image", dict(Bs=[1, 4, 3, 4, 2], Cs=[1, 4, 3, 4, 2]),
     "Bs shape (1, 4, 3, 4, 2) does not match x (B, H, W) = (1, 3, 4)"),
    ("directions", dict(Bs=[1, 3, 4, 3, 2], Cs=[1, 3, 4, 3, 2]),
     "Bs.shape[3] is the number of directions K, which must be 4, got 3"),
    ("Cs_shape", dict(Cs=[1, 3, 4, 4, 3]), "Cs shape (1, 3, 4, 4, 3) != Bs shape (1, 3, 4, 4, 2)"),
    ("delta_shape", dict(delta=[1, 3, 4, 5]), "delta must be (B, H, W, K*D) = (1, 3, 4, 20), got (1, 3, 4, 5)"),
    ("A_shape", dict(A=[20, 3]), "A must be (20, 2), got (20, 3)"),
    ("Ds_shape", dict(Ds=[19]), "Ds must be (20,), got (19,)"),
    ("delta_bias_shape", dict(delta_bias=[21]), "delta_bias must be (20,), got (21,)"),
    ("dstate", dict(A=[20, 17], Bs=[1, 3, 4, 4, 17], Cs=[1, 3, 4, 4, 17]),
     "dstate N = Bs.shape[4] must be in 1..16, got 17"),
]


@needs_lib
@pytest.mark.parametrize("name, changes, message", BAD_SHAPES, ids=[c[0] for c in BAD_SHAPES])
def test_bad_shapes_found_when_read(name, changes, message):
    text = read_error(node_model(NAMES, {**GOOD, **changes}))
    assert "SelectiveScan2D" in text and "scan0" in text and message in text, text


@needs_lib
def test_bad_shapes_found_when_run():
    """With symbolic dimensions a mismatch is only visible in the tensors: the node refuses them when it runs,
    and the same compiled model still runs good inputs afterwards. (A wrong rank is refused by OpenVINO's own
    check of the graph inputs, before the node sees it.)"""
    symbolic = {n: [f"{n}{i}" for i in range(len(s))] for n, s in GOOD.items()}
    compiled = compile_model(node_model(NAMES, symbolic))
    good = {k: v.astype(np.float32) for k, v in scan_arrays(1, 3, 4, 5, 2).items()}
    for name, changes, message in BAD_SHAPES:
        if any(len(shape) != len(GOOD[k]) for k, shape in changes.items()):
            continue
        arrays = {**good, **{k: np.zeros(s, np.float32) for k, s in changes.items()}}
        with pytest.raises(RuntimeError) as info:
            compiled(arrays)
        text = str(info.value)
        assert "SelectiveScan2D" in text and message in text, (name, text)
    assert_close(next(iter(compiled(good).values())), reference(good, NAMES), 1e-5, "y after the errors")


@needs_lib
def test_bad_attributes_types_and_inputs():
    assert "attribute delta_softplus must be in [0, 1], got 2" in read_error(node_model(NAMES, GOOD,
                                                                                       delta_softplus=2))
    assert "attribute directions must be in [4, 4], got 3" in read_error(node_model(NAMES, GOOD, directions=3))
    text = read_error(node_model(NAMES, GOOD, delta_softplus=1.5))
    assert "ssmpose SelectiveScan2D node 'scan0': attribute delta_softplus must be an int" in text, text
    text = read_error(node_model(NAMES, GOOD, types={"A": TensorProto.FLOAT16}))
    assert "SelectiveScan2D" in text and "input A has element type f16 but the first input has f32" in text, text
    text = read_error(node_model(NAMES, GOOD, TensorProto.DOUBLE))
    assert "SelectiveScan2D" in text and "element type f64 is not supported; supported: f32, f16" in text, text
    text = read_error(node_model(["x", "delta", "A", "", "Cs"], GOOD))
    assert "ssmpose SelectiveScan2D node 'scan0': required input 3 (Bs) is missing" in text, text
    text = read_error(node_model(["x", "delta", "A", "Bs"], GOOD))
    assert "ssmpose SelectiveScan2D node 'scan0': expects 5 to 8 inputs" in text and "got 4" in text, text


# ------------------------------------------------------------------------------------------------
# A whole model exported with op_version=2


@needs_lib
def test_op_version_2_model_runs_in_custom_form_and_after_ir(exported, tmp_path):
    import onnx
    e = exported("mamkpd_small", (256, 192), op_version=2)   # the export test_scan_2d_models.py uses
    proto = onnx.load(str(e.paths["custom"]), load_external_data=False)
    assert {o.domain: o.version for o in proto.opset_import}["ssmpose"] == 2
    assert [n.op_type for n in proto.graph.node if n.domain == "ssmpose"] == ["SelectiveScan2D"] * 12
    images = torch.randn(2, 3, 256, 192, generator=torch.Generator().manual_seed(7)).numpy()
    expected = e.torch_heatmaps(torch.from_numpy(images))
    scale = np.abs(expected).max()
    session = runtimes.load(e.paths["custom"], "openvino")
    assert session.extension is not None
    err = np.abs(session.run(images) - expected).max()
    assert err <= 1e-4 * scale, f"custom: {err:.3e} of {scale:.3e}"
    xml = save_ir(e.paths["custom"], tmp_path / "v2_custom.xml")
    assert xml.read_text().count('type="SelectiveScan2D" version="ssmpose"') == 12
    session = runtimes.load(xml, "openvino")
    assert session.extension is not None and session.metadata["op_domain_version"] == 2
    err = np.abs(session.run(images) - expected).max()
    assert err <= 1e-4 * scale, f"IR: {err:.3e} of {scale:.3e}"
