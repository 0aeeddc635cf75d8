"""SelectiveScan2D's dt projection (ssmpose domain version 6): the optional dt_projection input (K, D, R), with which
input 1 is x_proj (B, H, W, K, R + 2N) and Bs / Cs are omitted; it folds SS2D's Split of x_proj and the dt MatMul
into the op.

- The CPU kernel (through kernel_library), ONNX Runtime's CPU EP (libssmpose_ort.so) and OpenVINO's CPU device
  (libssmpose_ov.so, which rebuilds the Split and MatMul in front of the op) against the float64 reference of the
  unfused nodes: delta = the dt inputs times dt_projection, rounded to the type, then SelectiveScan2D.
  Tolerances as test_ort_custom_ops.py: float32 1e-5 of max|ref|, float16 1e-3.
- The export fusion on hand-made graphs (look-alikes are left alone) and on hrvmamba_tiny's default export (whose
  custom graph and its portable lowering tests/test_deform_epilogues.py compares with PyTorch); the schema's shape
  inference; bad input; the TensorRT backend's refusal of version 6.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from ssmpose.custom_ops import kernel_library, openvino_library, ort_library
from ssmpose.custom_ops import reference as ref
from ssmpose.export import read_metadata
from ssmpose.export.fusions import MAX_FOLDED_DT_RANK, use_block_diagonal_matmul, use_scan_dt_projection
from ssmpose.export.schemas import register_schemas

from op_cases import F16, F32, NP_TYPES, assert_close  # noqa: E402

ort = pytest.importorskip("onnxruntime")

# (B, H, W, D, N, R): HRVMamba-like (N = 1), several states, a rank of 1, an odd grid
CASES = [(2, 6, 5, 16, 1, 2), (1, 4, 7, 12, 4, 3), (1, 3, 3, 5, 2, 1)]
needs_ort = pytest.mark.skipif(ort_library.ort_library_path() is None, reason="libssmpose_ort.so not built")
needs_kernels = pytest.mark.skipif(kernel_library.unavailable_reason("cpu") is not None,
                                   reason="libssmpose_kernels.so not built")
INPUTS = ["x", "x_proj", "A", "", "", "Ds", "delta_bias", "dt_projection"]


def _arrays(case, dtype=np.float32, seed=0):
    B, H, W, D, N, R = case
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.standard_normal((B, H, W, D)), "x_proj": rng.standard_normal((B, H, W, 4, R + 2 * N)) * 0.7,
              "A": -rng.uniform(0.5, 2.0, (4 * D, N)), "Ds": rng.standard_normal(4 * D),
              "delta_bias": rng.standard_normal(4 * D) * 0.3, "dt_projection": rng.standard_normal((4, D, R)) * 0.5}
    return {k: v.astype(dtype) for k, v in arrays.items()}


def _expected(arrays):
    """The float64 reference of the unfused nodes (delta rounded to the inputs' type, as the MatMul's output)."""
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    delta, Bs, Cs = ref.scan_2d_projected_inputs(t["x_proj"], t["dt_projection"])
    f64 = [v.to(torch.float64) for v in (t["x"], delta, t["A"], Bs, Cs, t["Ds"], t["delta_bias"])]
    return ref.selective_scan_2d_reference(*f64).numpy()


def _node_model(elem=F32, version=6, inputs=INPUTS):
    node = helper.make_node("SelectiveScan2D", inputs, ["y"], domain="ssmpose")
    graph = helper.make_graph([node], "scan_dt_projection",
                              [helper.make_tensor_value_info(n, elem, None) for n in inputs if n],
                              [helper.make_tensor_value_info("y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ssmpose", version)])
    model.ir_version = 8
    return model


def _ort_session(model):
    options = ort.SessionOptions()
    ort_library.register(options)
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _tolerance(dtype):
    return dict(rel=1e-5, atol=1e-6) if dtype == np.float32 else dict(rel=1e-3, atol=0.0)


# --- the kernels and the runtime adapters ----------------------------------------------------------------------

@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cpu_kernel_against_the_unfused_reference(case, dtype):
    a = _arrays(case, dtype, seed=1)
    t = {k: torch.from_numpy(v) for k, v in a.items()}
    got = kernel_library.selective_scan_2d_proj_fwd(t["x"], t["x_proj"], t["dt_projection"], t["A"], t["Ds"],
                                                    t["delta_bias"]).numpy()
    assert got.dtype == dtype
    assert_close(got, _expected(a), **_tolerance(dtype), what=str(case))


@needs_kernels
def test_cpu_kernel_refuses_bad_shapes():
    a = {k: torch.from_numpy(v) for k, v in _arrays(CASES[0]).items()}
    args = [a["x"], a["x_proj"], a["dt_projection"], a["A"]]
    with pytest.raises(ValueError, match=r"SelectiveScan2D: x_proj must have shape \(2, 6, 5, 4, 4\)"):
        kernel_library.selective_scan_2d_proj_fwd(a["x"], a["x_proj"][..., :-1], *args[2:])
    with pytest.raises(ValueError, match=r"SelectiveScan2D: dt_projection must have shape \(4, 16, 2\)"):
        kernel_library.selective_scan_2d_proj_fwd(a["x"], a["x_proj"], a["dt_projection"][:, :-1], a["A"])
    with pytest.raises(ValueError, match=r"dt_rank \(dt_projection.shape\[2\]\) must be in 1..64, got 0"):
        kernel_library.selective_scan_2d_proj_fwd(a["x"], a["x_proj"][..., 2:], a["dt_projection"][..., :0], a["A"])


@needs_ort
@pytest.mark.parametrize("elem", [F32, F16])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_onnx_runtime_against_the_unfused_reference(case, elem):
    dtype = NP_TYPES[elem]
    a = _arrays(case, dtype, seed=2)
    got = _ort_session(_node_model(elem)).run(None, a)[0]
    assert got.dtype == dtype
    assert_close(got, _expected(a), **_tolerance(dtype), what=str(case))


@needs_ort
def test_onnx_runtime_names_bad_inputs():
    a = _arrays(CASES[0])
    session = _ort_session(_node_model())
    with pytest.raises(Exception, match=r"SelectiveScan2D: with dt_projection, input 1 \(x_proj\) must be "
                                        r"\(B, H, W, K, R \+ 2N\) = \(2, 6, 5, 4, 4\), got \(2, 6, 5, 4, 3\)"):
        session.run(None, dict(a, x_proj=a["x_proj"][..., :-1].copy()))
    with pytest.raises(Exception, match=r"SelectiveScan2D: dt_projection must be \(K, D, R\) = \(4, 16, R\), got "
                                        r"shape \(4, 15, 2\)"):
        session.run(None, dict(a, dt_projection=a["dt_projection"][:, 1:].copy()))
    both = _node_model(inputs=["x", "x_proj", "A", "Bs", "", "Ds", "delta_bias", "dt_projection"])
    with pytest.raises(Exception, match="with dt_projection, Bs and Cs must be omitted"):
        _ort_session(both).run(None, dict(a, Bs=np.zeros((2, 6, 5, 4, 1), np.float32)))
    neither = _node_model(inputs=["x", "delta", "A", "", "", "Ds", "delta_bias"], version=2)
    with pytest.raises(Exception, match="required input 'Bs' is missing"):
        _ort_session(neither).run(None, {"x": a["x"], "delta": np.zeros((2, 6, 5, 64), np.float32), "A": a["A"],
                                         "Ds": a["Ds"], "delta_bias": a["delta_bias"]})


@pytest.mark.skipif(openvino_library.openvino_library_path() is None, reason="libssmpose_ov.so not built")
def test_openvino_against_the_unfused_reference():
    ov = pytest.importorskip("openvino")
    a = _arrays(CASES[0], seed=3)
    model = _node_model()
    for entry in model.graph.input:   # static shapes, as the exporter writes them
        entry.CopyFrom(helper.make_tensor_value_info(entry.name, F32, list(a[entry.name].shape)))
    core = ov.Core()
    openvino_library.add_to_core(core)
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    got = next(iter(compiled(a).values()))
    assert_close(got, _expected(a), 1e-5)


@pytest.mark.skipif(openvino_library.openvino_library_path() is None, reason="libssmpose_ov.so not built")
def test_openvino_names_bad_inputs():
    ov = pytest.importorskip("openvino")
    a = _arrays(CASES[0])
    core = ov.Core()
    openvino_library.add_to_core(core)

    def compile_with(**changes):
        feeds = dict(a, **changes)
        model = _node_model()
        for entry in model.graph.input:
            entry.CopyFrom(helper.make_tensor_value_info(entry.name, F32, list(feeds[entry.name].shape)))
        return core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU"), feeds

    with pytest.raises(Exception, match=r"with dt_projection, input 1 \(x_proj\) must be \(B, H, W, K, R \+ 2N\) = "
                                        r"\(2, 6, 5, 4, 4\), got \(2, 6, 5, 4, 3\)"):
        compile_with(x_proj=a["x_proj"][..., :-1].copy())
    with pytest.raises(Exception, match=r"dt_projection must be \(K, D, R\) = \(4, 16, R\), got shape \(4, 15, 2\)"):
        compile_with(dt_projection=a["dt_projection"][:, 1:].copy())
    with pytest.raises(Exception, match=r"dt_rank R = dt_projection.shape\[2\] must be in 1..64, got 65"):
        compile_with(dt_projection=np.zeros((4, 16, 65), np.float32), x_proj=np.zeros((2, 6, 5, 4, 67), np.float32))


# --- the schema -------------------------------------------------------------------------------------------------

def test_schema_infers_the_output_and_refuses_bs_with_dt_projection():
    register_schemas()
    a = _arrays(CASES[1])
    model = _node_model()
    for entry in model.graph.input:
        entry.CopyFrom(helper.make_tensor_value_info(entry.name, F32, list(a[entry.name].shape)))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim] == list(a["x"].shape)
    both = _node_model(inputs=["x", "x_proj", "A", "Bs", "", "Ds", "delta_bias", "dt_projection"])
    with pytest.raises(onnx.shape_inference.InferenceError, match="Bs and Cs must be omitted"):
        onnx.shape_inference.infer_shapes(both, strict_mode=True)


# --- the fusion -------------------------------------------------------------------------------------------------

def _unfused_graph(case, extra_user=None, dense_weight=False, split_sizes=None, flat_shape=None, seed=0):
    """x_proj -> Split (R, N, N) -> Reshape -> MatMul (block-diagonal, as use_block_diagonal_matmul writes it) ->
    Reshape -> SelectiveScan2D, with the shapes recorded as the exporter does. The knobs make look-alikes."""
    B, H, W, D, N, R = case
    a = _arrays(case, seed=seed)
    weight = a["dt_projection"]
    block = np.zeros((4 * R, 4 * D), np.float32)
    for k in range(4):
        block[k * R:(k + 1) * R, k * D:(k + 1) * D] = weight[k].T
    if dense_weight:
        block[0, -1] = 0.5
    inits = [numpy_helper.from_array(v, k) for k, v in (("A", a["A"]), ("Ds", a["Ds"]), ("delta_bias", a["delta_bias"]),
                                                        ("W", block))]
    inits += [numpy_helper.from_array(np.array(split_sizes or [R, N, N], np.int64), "sizes"),
              numpy_helper.from_array(np.array(flat_shape or [0, 0, 0, 4 * R], np.int64), "flat_shape"),
              numpy_helper.from_array(np.array([0, 0, 0, 4 * D], np.int64), "delta_shape")]
    nodes = [helper.make_node("Split", ["x_proj", "sizes"], ["dts", "Bs", "Cs"], axis=-1),
             helper.make_node("Reshape", ["dts", "flat_shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["product"]),
             helper.make_node("Reshape", ["product", "delta_shape"], ["delta"]),
             helper.make_node("SelectiveScan2D", ["x", "delta", "A", "Bs", "Cs", "Ds", "delta_bias"], ["y"],
                              domain="ssmpose")]
    outputs = [helper.make_tensor_value_info("y", F32, [B, H, W, D])]
    if extra_user:
        outputs.append(helper.make_tensor_value_info(extra_user, F32, None))
    graph = helper.make_graph(nodes, "unfused", [helper.make_tensor_value_info("x", F32, [B, H, W, D]),
                                                 helper.make_tensor_value_info("x_proj", F32, [B, H, W, 4, R + 2 * N])],
                              outputs, inits)
    graph.value_info.extend([helper.make_tensor_value_info("dts", F32, [B, H, W, 4, R]),
                             helper.make_tensor_value_info("delta", F32, [B, H, W, 4 * D])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ssmpose", 2)])
    model.ir_version = 8
    return model, {"x": a["x"], "x_proj": a["x_proj"]}


@needs_ort
@pytest.mark.parametrize("case", CASES[:2], ids=str)
def test_fusion_folds_the_projection_with_the_same_output(case):
    model, feeds = _unfused_graph(case, seed=4)
    before = _ort_session(model).run(None, feeds)[0]
    assert use_scan_dt_projection(model) == 1
    assert [n.op_type for n in model.graph.node] == ["SelectiveScan2D"]
    node = model.graph.node[0]
    assert list(node.input)[:7] == ["x", "x_proj", "A", "", "", "Ds", "delta_bias"]
    weight = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == node.input[7]))
    assert weight.shape == (4, case[3], case[5])
    assert not {"W", "sizes", "flat_shape", "delta_shape"} & {i.name for i in model.graph.initializer}
    model.opset_import[1].version = 6
    assert_close(_ort_session(model).run(None, feeds)[0], before, 1e-6, what="fused")


def test_fusion_keeps_ranks_above_the_limit():
    """CASES[1] has rank 3: folded by default (MAX_FOLDED_DT_RANK 4), left alone with a limit of 2."""
    assert MAX_FOLDED_DT_RANK == 4
    model, _ = _unfused_graph(CASES[1])
    assert use_scan_dt_projection(model, max_rank=2) == 0 and len(model.graph.node) == 5
    assert use_scan_dt_projection(model) == 1 and len(model.graph.node) == 1


@pytest.mark.parametrize("knob", ["delta_used_elsewhere", "bs_used_elsewhere", "dense_weight", "uneven_split",
                                  "other_flatten"])
def test_fusion_leaves_look_alikes_alone(knob):
    case = CASES[0]
    options = {"delta_used_elsewhere": dict(extra_user="delta"), "bs_used_elsewhere": dict(extra_user="Bs"),
               "dense_weight": dict(dense_weight=True), "uneven_split": dict(split_sizes=[1, 2, 1]),
               "other_flatten": dict(flat_shape=[0, 0, -1, 2])}[knob]
    model, _ = _unfused_graph(case, **options)
    before = [n.op_type for n in model.graph.node]
    assert use_scan_dt_projection(model) == 0
    assert [n.op_type for n in model.graph.node] == before


@pytest.fixture(scope="module")
def exported_tiny(exported):
    """hrvmamba_tiny's default export (op version 6), traced once per session (tests/conftest.py)."""
    return exported("hrvmamba_tiny", (256, 192))


def test_default_export_folds_the_low_rank_dt_projections(exported_tiny):
    """hrvmamba_tiny's dt ranks are 1, 2, 4 (folded) and 8 (its last stage, left as Split and MatMul)."""
    custom = onnx.load(str(exported_tiny.paths["custom"]), load_external_data=False)
    onnx.checker.check_model(custom, full_check=True)
    assert {o.domain: o.version for o in custom.opset_import}["ssmpose"] == 6
    assert read_metadata(exported_tiny.paths["custom"])["op_domain_version"] == 6
    weights = {i.name: i for i in custom.graph.initializer}
    scans = [n for n in custom.graph.node if n.op_type == "SelectiveScan2D"]
    folded = [n for n in scans if len(n.input) == 8 and n.input[7]]
    ranks = sorted({weights[n.input[7]].dims[2] for n in folded})
    assert ranks == [1, 2, 4] and all(n.input[3] == n.input[4] == "" for n in folded)
    splits = [n for n in custom.graph.node if n.op_type == "Split"]
    assert len(splits) == len(scans) - len(folded) == 4
    assert use_scan_dt_projection(custom) == 0   # nothing left to fold at the default limit
    assert use_block_diagonal_matmul(custom) == 0


@needs_ort
def test_folding_every_rank_gives_the_same_heatmaps(exported_tiny):
    """The rank-8 stage folded as well (max_rank 64): the same heatmaps, float32, on ONNX Runtime's CPU EP."""
    custom = onnx.load(str(exported_tiny.paths["custom"]))
    assert use_scan_dt_projection(custom, max_rank=64) == 4
    images = torch.randn(1, 3, 256, 192, generator=torch.Generator().manual_seed(9)).numpy()
    options = ort.SessionOptions()
    ort_library.register(options)
    runs = [ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
            for model in (str(exported_tiny.paths["custom"]), custom.SerializeToString())]
    assert np.abs(runs[1] - runs[0]).max() <= 1e-5 * np.abs(runs[0]).max()


def _cuda_ep_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers() and ort_library.library_info().get("has_cuda") == 1


@needs_ort
@pytest.mark.skipif(not _cuda_ep_available(), reason="onnxruntime-gpu with a CUDA build of libssmpose_ort.so needed")
@pytest.mark.parametrize("elem", [F32, F16])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_onnx_runtime_cuda_against_the_unfused_reference(case, elem):
    """The CUDA kernel through ONNX Runtime's CUDA EP (GPU machine: tests/gpu/run_all.sh)."""
    dtype = NP_TYPES[elem]
    a = _arrays(case, dtype, seed=8)
    options = ort.SessionOptions()
    ort_library.register(options)
    session = ort.InferenceSession(_node_model(elem).SerializeToString(), options, providers=["CUDAExecutionProvider"])
    assert_close(session.run(None, a)[0], _expected(a), **_tolerance(dtype), what=str(case))


def test_tensorrt_backend_refuses_version_6_with_advice(exported_tiny, monkeypatch):
    """The TensorRT plugins stop at domain version 5: the backend names the version and the export option before
    TensorRT parses the file (a stand-in tensorrt module of a supported version is enough to get there)."""
    import sys

    from ssmpose import runtimes
    fake = type(sys)("tensorrt")
    fake.__version__ = "10.14.1"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(ValueError, match=r"imports ssmpose domain version 6; the TensorRT plugins cover versions 1 "
                                         r"to 5 .* Export with --op-version 5 for TensorRT"):
        runtimes.load(exported_tiny.paths["custom"], "tensorrt")
