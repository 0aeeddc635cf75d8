"""DeformAggregate's forward epilogues (ssmpose domain version 5): the optional offset_bias input and the
activation attribute ("silu"), which fold DCNv4's offset/mask projection bias (an Add before the op) and the SiLU
after it (Sigmoid, Mul) into the op.

- The CPU kernel (through kernel_library), ONNX Runtime's CPU EP (libssmpose_ort.so) and OpenVINO's CPU device
  (libssmpose_ov.so, which rebuilds the Add and a Swish around the op) against the float64 reference applied as the
  nodes the epilogues replace: offset_mask + bias rounded to the type, SiLU of the output rounded to the type.
  Tolerances as test_ort_custom_ops.py: float32 1e-5 of max|ref|, float16 1e-3.
- The export fusion on hand-made graphs (look-alikes are left alone) and on hrvmamba_tiny's default export, whose
  custom graph (and its portable lowering) still matches PyTorch; the schema's shape inference; bad input.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from ssmpose.custom_ops import kernel_library, openvino_library, ort_library
from ssmpose.custom_ops import reference as ref
from ssmpose.export import read_metadata
from ssmpose.export.fusions import use_deform_aggregate_epilogues
from ssmpose.export.schemas import register_schemas

from op_cases import DEFORM_ATTRS, DEFORM_CASES, F16, F32, NP_TYPES, assert_close, deform_arrays  # noqa: E402

ort = pytest.importorskip("onnxruntime")

CASES = [DEFORM_CASES[0], DEFORM_CASES[1], DEFORM_CASES[5]]   # padded P, remove_center, HRVMamba-like
EPILOGUES = [("bias", "none"), ("", "silu"), ("bias", "silu")]
needs_ort = pytest.mark.skipif(ort_library.ort_library_path() is None, reason="libssmpose_ort.so not built")
needs_kernels = pytest.mark.skipif(kernel_library.unavailable_reason("cpu") is not None,
                                   reason="libssmpose_kernels.so not built")


def _bias(om, seed=7):
    return (np.random.default_rng(seed).standard_normal(om.shape[-1]) * 0.5).astype(om.dtype)


def _expected(value, om, bias, attrs, activation, dtype):
    """The float64 reference of the unfused nodes: Add (rounded to dtype) -> DeformAggregate -> SiLU of the output
    rounded to dtype."""
    om_used = om if bias is None else (om.astype(np.float32) + bias.astype(np.float32)).astype(dtype)
    out = ref.deform_aggregate_reference(torch.from_numpy(value.astype(np.float64)),
                                         torch.from_numpy(om_used.astype(np.float64)),
                                         *[attrs[k] for k in DEFORM_ATTRS]).numpy()
    if activation == "silu":
        z = out.astype(dtype).astype(np.float64)
        out = z / (1.0 + np.exp(-z))
    return out


def _node_model(attrs, bias, activation, elem=F32, version=5):
    inputs = ["value", "offset_mask"] + (["offset_bias"] if bias else [])
    extra = {} if activation == "none" else {"activation": activation}
    node = helper.make_node("DeformAggregate", inputs, ["y"], domain="ssmpose", **attrs, **extra)
    graph = helper.make_graph([node], "deform_epilogues", [helper.make_tensor_value_info(n, elem, None)
                                                            for n in inputs],
                              [helper.make_tensor_value_info("y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ssmpose", version)])
    model.ir_version = 8
    return model


def _ort_session(model):
    options = ort.SessionOptions()
    ort_library.register(options)
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


# --- the kernels and the runtime adapters ----------------------------------------------------------------------

@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("bias,activation", EPILOGUES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cpu_kernel_against_the_unfused_reference(case, bias, activation, dtype):
    value, om, attrs = deform_arrays(case, seed=1)
    value, om = value.astype(dtype), om.astype(dtype)
    b = _bias(om) if bias else None
    got = kernel_library.deform_aggregate_fwd(
        torch.from_numpy(value), torch.from_numpy(om), *[attrs[k] for k in DEFORM_ATTRS],
        offset_bias=None if b is None else torch.from_numpy(b), activation=activation).numpy()
    assert got.dtype == dtype
    assert_close(got, _expected(value, om, b, attrs, activation, dtype), 1e-5 if dtype == np.float32 else 1e-3,
                 atol=1e-6 if dtype == np.float32 else 0.0, what=f"{bias} {activation}")


@needs_kernels
def test_cpu_kernel_refuses_bad_epilogues():
    value, om, attrs = deform_arrays(CASES[0])
    args = [torch.from_numpy(value), torch.from_numpy(om), *[attrs[k] for k in DEFORM_ATTRS]]
    with pytest.raises(ValueError, match=r"DeformAggregate: activation must be one of none, silu, got 'gelu'"):
        kernel_library.deform_aggregate_fwd(*args, activation="gelu")
    with pytest.raises(ValueError, match=rf"DeformAggregate: offset_bias must have shape \({om.shape[-1]},\)"):
        kernel_library.deform_aggregate_fwd(*args, offset_bias=torch.zeros(om.shape[-1] - 1))


@needs_ort
@pytest.mark.parametrize("elem", [F32, F16])
@pytest.mark.parametrize("bias,activation", EPILOGUES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_onnx_runtime_against_the_unfused_reference(case, bias, activation, elem):
    dtype = NP_TYPES[elem]
    value, om, attrs = deform_arrays(case, seed=2)
    value, om = value.astype(dtype), om.astype(dtype)
    feeds = {"value": value, "offset_mask": om}
    if bias:
        feeds["offset_bias"] = _bias(om)
    got = _ort_session(_node_model(attrs, bias, activation, elem)).run(None, feeds)[0]
    assert got.dtype == dtype
    assert_close(got, _expected(value, om, feeds.get("offset_bias"), attrs, activation, dtype),
                 1e-5 if elem == F32 else 1e-3, atol=1e-6 if elem == F32 else 0.0, what=f"{bias} {activation}")


@needs_ort
def test_onnx_runtime_names_bad_epilogues():
    value, om, attrs = deform_arrays(CASES[0])
    wrong = {"value": value, "offset_mask": om, "offset_bias": np.zeros(om.shape[-1] + 1, np.float32)}
    with pytest.raises(Exception, match=rf"DeformAggregate: offset_bias must have shape \(P\) = \({om.shape[-1]}\), "
                                        rf"offset_mask's last dimension, got \({om.shape[-1] + 1},\)"):
        _ort_session(_node_model(attrs, "bias", "none")).run(None, wrong)
    with pytest.raises(Exception, match=r'DeformAggregate: attribute activation must be "none" or "silu", got "gelu"'):
        _ort_session(_node_model(attrs, "", "gelu"))


@pytest.mark.skipif(openvino_library.openvino_library_path() is None, reason="libssmpose_ov.so not built")
@pytest.mark.parametrize("bias,activation", EPILOGUES)
def test_openvino_against_the_unfused_reference(bias, activation):
    ov = pytest.importorskip("openvino")
    value, om, attrs = deform_arrays(CASES[2], seed=3)
    feeds = {"value": value, "offset_mask": om}
    if bias:
        feeds["offset_bias"] = _bias(om)
    model = _node_model(attrs, bias, activation)
    for name, array in feeds.items():   # static shapes, as the exporter writes them
        entry = next(i for i in model.graph.input if i.name == name)
        entry.CopyFrom(helper.make_tensor_value_info(name, F32, list(array.shape)))
    core = ov.Core()
    openvino_library.add_to_core(core)
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    got = next(iter(compiled(feeds).values()))
    assert_close(got, _expected(value, om, feeds.get("offset_bias"), attrs, activation, np.float32), 1e-5,
                 what=f"{bias} {activation}")


# --- the schema -------------------------------------------------------------------------------------------------

def test_schema_infers_the_output_and_refuses_a_wrong_bias():
    register_schemas()
    value, om, attrs = deform_arrays(CASES[0])
    model = _node_model(attrs, "bias", "silu")
    shapes = {"value": value.shape, "offset_mask": om.shape, "offset_bias": (om.shape[-1],)}
    for entry in model.graph.input:
        entry.CopyFrom(helper.make_tensor_value_info(entry.name, F32, list(shapes[entry.name])))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    dims = [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    assert dims == list(om.shape[:3]) + [value.shape[-1]]
    model.graph.input[2].CopyFrom(helper.make_tensor_value_info("offset_bias", F32, [om.shape[-1] - 1]))
    with pytest.raises(onnx.shape_inference.InferenceError, match="offset_bias has .* values, offset_mask has"):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    with pytest.raises(Exception, match="activation must be one of none, silu"):
        onnx.shape_inference.infer_shapes(_node_model(attrs, "", "gelu"), strict_mode=True)


# --- the fusion -------------------------------------------------------------------------------------------------

def _unfused_graph(attrs, om_shape, value_shape, bias_shape=None, swap_add=False, silu="silu", extra_user=False,
                   seed=0):
    """value, Y -> Add(Y, b) -> DeformAggregate -> Sigmoid, Mul: what torch.onnx writes for DCNv4's offset/mask
    projection bias and the SiLU after the op; shapes recorded as the exporter does. The knobs make look-alikes."""
    rng = np.random.default_rng(seed)
    bias = rng.standard_normal(bias_shape or (om_shape[-1],)).astype(np.float32)
    add_inputs = ["b", "proj"] if swap_add else ["proj", "b"]
    nodes = [helper.make_node("Add", add_inputs, ["om"]),
             helper.make_node("DeformAggregate", ["value", "om"], ["agg"], domain="ssmpose", **attrs)]
    out = "agg"
    if silu == "silu":
        nodes += [helper.make_node("Sigmoid", ["agg"], ["sig"]), helper.make_node("Mul", ["agg", "sig"], ["y"])]
        out = "y"
    elif silu == "sigmoid_of_other":
        nodes += [helper.make_node("Sigmoid", ["value"], ["sig"]), helper.make_node("Mul", ["agg", "sig"], ["y"])]
        out = "y"
    outputs = [helper.make_tensor_value_info(out, F32, None)]
    if extra_user:
        outputs.append(helper.make_tensor_value_info("agg" if silu else "om", F32, None))
    graph = helper.make_graph(nodes, "unfused", [helper.make_tensor_value_info("value", F32, list(value_shape)),
                                                 helper.make_tensor_value_info("proj", F32, list(om_shape))],
                              outputs, [numpy_helper.from_array(bias, "b")])
    graph.value_info.extend([helper.make_tensor_value_info("om", F32, list(om_shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ssmpose", 1)])
    model.ir_version = 8
    return model


def _run(model, value, proj):
    return _ort_session(model).run(None, {"value": value, "proj": proj})[0]


@needs_ort
@pytest.mark.parametrize("swap_add", [False, True])
def test_fusion_folds_the_bias_and_silu_with_the_same_output(swap_add):
    value, om, attrs = deform_arrays(CASES[0], seed=4)
    model = _unfused_graph(attrs, om.shape, value.shape, swap_add=swap_add)
    before = _run(model, value, om)
    assert use_deform_aggregate_epilogues(model) == 1
    assert [n.op_type for n in model.graph.node] == ["DeformAggregate"]
    node = model.graph.node[0]
    assert list(node.input) == ["value", "proj", "b"] and list(node.output) == ["y"]
    assert {a.name: helper.get_attribute_value(a) for a in node.attribute}["activation"] == b"silu"
    model.opset_import[1].version = 5
    assert_close(_run(model, value, om), before, 1e-6, what="fused")


@needs_ort
@pytest.mark.parametrize("knob", ["bias_2d", "no_silu", "sigmoid_of_other", "om_used_elsewhere", "agg_used_elsewhere"])
def test_fusion_leaves_look_alikes_alone(knob):
    value, om, attrs = deform_arrays(CASES[0], seed=5)
    options = {"bias_2d": dict(bias_shape=(1, om.shape[-1])), "no_silu": dict(silu=None),
               "sigmoid_of_other": dict(silu="sigmoid_of_other"), "om_used_elsewhere": dict(extra_user=True, silu=None),
               "agg_used_elsewhere": dict(extra_user=True)}[knob]
    model = _unfused_graph(attrs, om.shape, value.shape, **options)
    before = [n.op_type for n in model.graph.node]
    changed = use_deform_aggregate_epilogues(model)
    after = [n.op_type for n in model.graph.node]
    if knob == "no_silu":   # the bias alone still folds
        assert changed == 1 and after == ["DeformAggregate"]
    elif knob == "bias_2d":   # the SiLU folds, the Add of a (1, P) bias stays
        assert changed == 1 and after == ["Add", "DeformAggregate"]
    elif knob == "agg_used_elsewhere":   # the bias folds, the SiLU stays (its input is a graph output)
        assert changed == 1 and after == ["DeformAggregate", "Sigmoid", "Mul"]
    elif knob == "sigmoid_of_other":
        assert changed == 1 and after == ["DeformAggregate", "Sigmoid", "Mul"]
    else:
        assert changed == 0 and after == before


@pytest.fixture(scope="module")
def exported_tiny(exported):
    """hrvmamba_tiny's default export (op version 6), traced once per session (tests/conftest.py)."""
    return exported("hrvmamba_tiny", (256, 192))


def test_default_export_folds_every_deform_epilogue(exported_tiny):
    from ssmpose.training.models.hrvmamba_blocks import HRVMambaBlock
    custom = onnx.load(str(exported_tiny.paths["custom"]), load_external_data=False)
    onnx.checker.check_model(custom, full_check=True)
    assert {o.domain: o.version for o in custom.opset_import}["ssmpose"] == 6   # 5's epilogues and 6's projection
    assert read_metadata(exported_tiny.paths["custom"])["op_domain_version"] == 6
    deform = [n for n in custom.graph.node if n.op_type == "DeformAggregate"]
    blocks = [m for m in exported_tiny.model.modules() if isinstance(m, HRVMambaBlock)]
    assert len(deform) == len(blocks)
    for node in deform:
        assert len(node.input) == 3 and node.input[2] in {i.name for i in custom.graph.initializer}
        assert {a.name: helper.get_attribute_value(a) for a in node.attribute}["activation"] == b"silu"
    producers = {out: n for n in custom.graph.node for out in n.output}
    assert not [n for n in custom.graph.node if n.op_type == "Sigmoid"   # the SE blocks' gates stay
                and producers.get(n.input[0]) in deform]
    assert use_deform_aggregate_epilogues(custom) == 0   # nothing left to fold


@needs_ort
def test_default_export_and_its_lowering_match_pytorch(exported_tiny, tmp_path):
    """The default export (its DeformAggregate epilogues, and version 6's dt projections in SelectiveScan2D) and
    its portable lowering (which writes both back as standard nodes) against PyTorch, float32, 1e-5."""
    import onnx_ir as ir

    from ssmpose.custom_ops.portable import lower_to_portable
    path = exported_tiny.paths["custom"]
    graph = ir.load(str(path))
    lower_to_portable(graph)
    lowered = tmp_path / "lowered.onnx"
    onnx.save(ir.serde.serialize_model(graph), str(lowered))
    images = torch.randn(2, 3, 256, 192, generator=torch.Generator().manual_seed(6))
    expected = exported_tiny.torch_heatmaps(images)
    scale = np.abs(expected).max()
    for source, custom in ((path, True), (lowered, False)):
        options = ort.SessionOptions()
        if custom:
            ort_library.register(options)
        session = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": images.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-5 * scale, source


def _cuda_ep_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers() and ort_library.library_info().get("has_cuda") == 1


@needs_ort
@pytest.mark.skipif(not _cuda_ep_available(), reason="onnxruntime-gpu with a CUDA build of libssmpose_ort.so needed")
@pytest.mark.parametrize("elem", [F32, F16])
@pytest.mark.parametrize("bias,activation", EPILOGUES)
def test_onnx_runtime_cuda_against_the_unfused_reference(bias, activation, elem):
    """The CUDA kernel through ONNX Runtime's CUDA EP (GPU machine: tests/gpu/run_all.sh)."""
    dtype = NP_TYPES[elem]
    value, om, attrs = deform_arrays(CASES[2], seed=8)
    value, om = value.astype(dtype), om.astype(dtype)
    feeds = {"value": value, "offset_mask": om}
    if bias:
        feeds["offset_bias"] = _bias(om)
    options = ort.SessionOptions()
    ort_library.register(options)
    session = ort.InferenceSession(_node_model(attrs, bias, activation, elem).SerializeToString(), options,
                                   providers=["CUDAExecutionProvider"])
    got = session.run(None, feeds)[0]
    assert_close(got, _expected(value, om, feeds.get("offset_bias"), attrs, activation, dtype),
                 1e-5 if elem == F32 else 1e-3, atol=1e-6 if elem == F32 else 0.0, what=f"{bias} {activation}")
