"""OpenVINO extension (libssmpose_ov.so): the `ssmpose` ops read from ONNX (and from IR), against the float64
PyTorch reference, on OpenVINO's CPU device.

Single-node graphs use the cases and tolerances of test_ort_custom_ops.py (float32: 1e-5 of max|ref|; float16:
bit-identical to the float32 result rounded to float16). Whole models: the custom and portable forms of
hrvmamba_tiny (hrvmamba_small marked slow) match PyTorch fp32 within 1e-4 of max|heatmap|, also after saving to
IR and reading it back. Malformed nodes fail with OpenVINO errors naming the op and the problem.

The library is looked up as in production. Tests skip when it is not built, unless SSMPOSE_REQUIRE_KERNELS=1 (CI),
where its absence is a failure.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest
import torch

from ssmpose import runtimes
from ssmpose.custom_ops import openvino_library

ov = pytest.importorskip("openvino")
from onnx import TensorProto  # noqa: E402
from op_cases import (DEFORM_CASES, F16, F32, SCAN_CASES, SCAN_INPUT_SETS, SCAN_INPUTS,  # noqa: E402
                      assert_close, deform_arrays, deform_id, deform_reference, make_model, scan_arrays,
                      scan_reference)

from ssmpose.runtimes.openvino_backend import save_ir  # noqa: E402

LIB = openvino_library.openvino_library_path()
REASON = openvino_library.unavailable_reason()
needs_lib = pytest.mark.skipif(LIB is None, reason=f"libssmpose_ov.so not built: {REASON}")


def test_openvino_extension_present():
    """Fails in CI (SSMPOSE_REQUIRE_KERNELS=1) when the extension is missing; skips elsewhere."""
    if LIB is None:
        if os.environ.get("SSMPOSE_REQUIRE_KERNELS") == "1":
            pytest.fail(f"SSMPOSE_REQUIRE_KERNELS=1 but libssmpose_ov.so is unavailable: {REASON}")
        pytest.skip(f"libssmpose_ov.so not built: {REASON}")
    assert REASON is None


@needs_lib
def test_version_queries():
    lib = ctypes.CDLL(str(LIB))
    lib.ssmpose_ov_openvino_version.restype = ctypes.c_char_p
    built_for = lib.ssmpose_ov_openvino_version().decode()
    assert built_for == ov.get_version().split("-")[0]
    assert openvino_library.library_info() == {
        "version": openvino_library.OV_LIBRARY_VERSION, "kernels_abi": openvino_library.KERNELS_ABI_VERSION,
        "openvino": built_for, "running_openvino": built_for}


def test_a_build_for_another_openvino_release_is_refused(tmp_path):
    info = {"version": openvino_library.OV_LIBRARY_VERSION, "kernels_abi": openvino_library.KERNELS_ABI_VERSION,
            "openvino": "2025.1.0", "running_openvino": "2026.4.1"}
    problem = openvino_library._problem(tmp_path / "libssmpose_ov.so", info)
    assert "built against OpenVINO 2025.1.0 but OpenVINO 2026.4.1 is running" in problem
    assert "extension version 0" in openvino_library._problem(tmp_path / "x.so", dict(info, version=0))


# ------------------------------------------------------------------------------------------------
# Single nodes


def compile_node(model):
    core = ov.Core()
    openvino_library.add_to_core(core)
    return core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                              {"INFERENCE_PRECISION_HINT": "f32"})


def node_model(op, inputs, arrays, dtype=F32, **attrs):
    """A one-node graph whose inputs have the (static) shapes of `arrays`."""
    shapes = {name: list(arrays[name].shape) for name in inputs if name}
    return make_model(op, inputs, [dtype] * len(inputs), dtype, shapes=shapes, **attrs)


def run_node(model, arrays, inputs):
    out = compile_node(model)({name: arrays[name] for name in inputs if name})
    return next(iter(out.values()))


@needs_lib
@pytest.mark.parametrize("optional", list(SCAN_INPUT_SETS))
@pytest.mark.parametrize("case", SCAN_CASES, ids=lambda c: "B{}G{}D{}N{}L{}sp{}".format(*c))
def test_selective_scan_float32(case, optional):
    b, g, d, n, l, softplus = case
    inputs = SCAN_INPUT_SETS[optional]
    arrays = scan_arrays(b, g, d, n, l, softplus=softplus)
    y = run_node(node_model("SelectiveScan", inputs, arrays, delta_softplus=softplus), arrays, inputs)
    assert y.dtype == np.float32 and y.shape == (b, g * d, l)
    assert_close(y, scan_reference(arrays, inputs, softplus), 1e-5, what="y")


@needs_lib
def test_selective_scan_float16_is_the_float32_result_rounded():
    arrays = {k: v.astype(np.float16) for k, v in scan_arrays(2, 3, 5, 4, 37, seed=1).items()}
    y = run_node(node_model("SelectiveScan", SCAN_INPUTS, arrays, F16), arrays, SCAN_INPUTS)
    assert y.dtype == np.float16
    assert_close(y, scan_reference(arrays, SCAN_INPUTS, True), 1e-3, atol=0.0, what="y float16")
    arrays32 = {k: v.astype(np.float32) for k, v in arrays.items()}
    y32 = run_node(node_model("SelectiveScan", SCAN_INPUTS, arrays32), arrays32, SCAN_INPUTS)
    assert np.array_equal(y.view(np.uint16), y32.astype(np.float16).view(np.uint16))


@needs_lib
def test_selective_scan_dynamic_batch_and_length():
    """Symbolic B and L in the graph; one compiled model runs two sizes."""
    compiled = compile_node(make_model("SelectiveScan", SCAN_INPUTS, [F32] * 7, shapes={
        "u": ["b", 6, "l"], "delta": ["b", 6, "l"], "A": [6, 4], "Bs": ["b", 2, 4, "l"], "Cs": ["b", 2, 4, "l"],
        "Ds": [6], "delta_bias": [6]}))
    for batch, length in ((1, 9), (3, 40)):
        arrays = scan_arrays(batch, 2, 3, 4, length, seed=batch)
        y = next(iter(compiled(arrays).values()))
        assert y.shape == (batch, 6, length)
        assert_close(y, scan_reference(arrays, SCAN_INPUTS, True), 1e-5, what=f"y B={batch} L={length}")


@needs_lib
@pytest.mark.parametrize("case", DEFORM_CASES, ids=deform_id)
def test_deform_aggregate_float32(case):
    value, om, attrs = deform_arrays(case)
    arrays = {"value": value, "offset_mask": om}
    y = run_node(node_model("DeformAggregate", ["value", "offset_mask"], arrays, **attrs), arrays, list(arrays))
    expected = deform_reference(value, om, attrs)
    assert y.dtype == np.float32 and y.shape == expected.shape
    assert_close(y, expected, 1e-5, what="out")


@needs_lib
def test_deform_aggregate_float16_is_the_float32_result_rounded():
    value, om, attrs = deform_arrays(DEFORM_CASES[0], seed=3)
    arrays = {"value": value.astype(np.float16), "offset_mask": om.astype(np.float16)}
    y = run_node(node_model("DeformAggregate", list(arrays), arrays, F16, **attrs), arrays, list(arrays))
    assert y.dtype == np.float16
    arrays32 = {k: v.astype(np.float32) for k, v in arrays.items()}
    y32 = run_node(node_model("DeformAggregate", list(arrays), arrays32, **attrs), arrays32, list(arrays))
    assert np.array_equal(y.view(np.uint16), y32.astype(np.float16).view(np.uint16))


@needs_lib
def test_deform_aggregate_dynamic_image_size():
    _, _, attrs = deform_arrays(DEFORM_CASES[0])
    model = make_model("DeformAggregate", ["value", "offset_mask"], [F32, F32],
                       shapes={"value": ["b", "h", "w", 24], "offset_mask": ["b", "h", "w", 88]}, **attrs)
    compiled = compile_node(model)
    for b, h, w in ((1, 5, 4), (2, 11, 13)):
        value, om, _ = deform_arrays((b, h, w) + DEFORM_CASES[0][3:], seed=h)
        y = next(iter(compiled({"value": value, "offset_mask": om}).values()))
        assert_close(y, deform_reference(value, om, attrs), 1e-5, what=f"out {h}x{w}")


# ------------------------------------------------------------------------------------------------
# Malformed nodes: found when the model is read (static shapes) or when it runs (dynamic shapes)


def read_error(model):
    with pytest.raises(RuntimeError) as info:
        compile_node(model)
    return str(info.value)


@needs_lib
@pytest.mark.parametrize("name, shapes, message", [
    ("u_rank", dict(u=(6, 5)), "u must be (B, G*D, L), got shape (6, 5)"),
    ("delta_shape", dict(delta=(2, 6, 4)), "delta shape (2, 6, 4) != u shape (2, 6, 5)"),
    ("Bs_length", dict(Bs=(2, 2, 4, 6), Cs=(2, 2, 4, 6)), "Bs shape (2, 2, 4, 6) does not match u (B=2, L=5)"),
    ("Cs_shape", dict(Cs=(2, 2, 3, 5)), "Cs shape (2, 2, 3, 5) != Bs shape (2, 2, 4, 5)"),
    ("groups", dict(Bs=(2, 4, 4, 5), Cs=(2, 4, 4, 5)), "channels 6 of u are not divisible by the 4 groups of Bs"),
    ("A_shape", dict(A=(6, 3)), "A must be (G*D, N) = (6, 4), got (6, 3)"),
    ("Ds_shape", dict(Ds=(5,)), "Ds must be (6,), got (5,)"),
    ("dstate", dict(A=(6, 17), Bs=(2, 2, 17, 5), Cs=(2, 2, 17, 5)), "dstate N = Bs.shape[2] must be in 1..16, got 17"),
])
def test_selective_scan_bad_shapes_found_when_read(name, shapes, message):
    arrays = scan_arrays(2, 2, 3, 4, 5)
    for key, shape in shapes.items():
        arrays[key] = np.ones(shape, np.float32)
    text = read_error(node_model("SelectiveScan", SCAN_INPUTS, arrays))
    assert "SelectiveScan" in text and message in text, text


@needs_lib
def test_selective_scan_bad_shapes_found_when_run():
    """With symbolic dimensions the mismatch is only visible in the tensors: evaluate refuses them."""
    model = make_model("SelectiveScan", SCAN_INPUTS, [F32] * 7, shapes={
        "u": ["b", 6, "l"], "delta": ["b", 6, "l2"], "A": [6, 4], "Bs": ["b", 2, 4, "l"], "Cs": ["b", 2, 4, "l"],
        "Ds": [6], "delta_bias": [6]})
    arrays = scan_arrays(2, 2, 3, 4, 5)
    arrays["delta"] = arrays["delta"][..., :4].copy()
    with pytest.raises(RuntimeError, match=r"(?s)SelectiveScan.*delta shape \(2, 6, 4\) != u shape \(2, 6, 5\)"):
        compile_node(model)(arrays)


@needs_lib
def test_selective_scan_bad_attribute_and_types():
    arrays = scan_arrays(1, 1, 2, 2, 3)
    assert "delta_softplus must be 0 or 1, got 2" in read_error(
        node_model("SelectiveScan", SCAN_INPUTS, arrays, delta_softplus=2))
    mixed = make_model("SelectiveScan", SCAN_INPUTS, [F32, F16] + [F32] * 5,
                       shapes={k: list(v.shape) for k, v in arrays.items()})
    text = read_error(mixed)
    assert "SelectiveScan" in text and "input delta has element type f16 but the first input has f32" in text
    doubles = {k: v.astype(np.float64) for k, v in arrays.items()}
    text = read_error(node_model("SelectiveScan", SCAN_INPUTS, doubles, TensorProto.DOUBLE))
    assert "SelectiveScan" in text and "element type f64 is not supported; supported: f32, f16" in text


@needs_lib
def test_selective_scan_missing_required_input():
    arrays = scan_arrays(1, 1, 2, 2, 3)
    text = read_error(node_model("SelectiveScan", ["u", "delta", "A", "", "Cs"], arrays))
    assert "ssmpose SelectiveScan node" in text and "required input 3 is missing" in text


@needs_lib
@pytest.mark.parametrize("attr, bad, message", [
    ("kernel_h", 0, "attribute kernel_h = 0 is out of range [1, 2147483647]"),
    ("stride_w", -1, "attribute stride_w = -1 is out of range [1, 2147483647]"),
    ("pad_h", -1, "attribute pad_h = -1 is out of range [0, 2147483647]"),
    ("remove_center", 2, "attribute remove_center = 2 is out of range [0, 1]"),
    ("offset_scale", float("nan"), "attribute offset_scale is not finite"),
    ("group", None, "missing required attribute group"),
    ("offset_scale", None, "missing required attribute offset_scale"),
])
def test_deform_aggregate_bad_attributes(attr, bad, message):
    value, om, attrs = deform_arrays(DEFORM_CASES[0])
    if bad is None:
        del attrs[attr]
    else:
        attrs[attr] = bad
    arrays = {"value": value, "offset_mask": om}
    text = read_error(node_model("DeformAggregate", list(arrays), arrays, **attrs))
    assert "DeformAggregate" in text and message in text, text


@needs_lib
def test_deform_aggregate_bad_shapes():
    value, om, attrs = deform_arrays(DEFORM_CASES[0])  # value (2, 9, 7, 24), om (2, 9, 7, 88); needs 81 columns
    for arrays, message in [
        ({"value": value, "offset_mask": om[..., :80]}, "offset_mask has 80 columns, needs >= group*K*3 = 81"),
        ({"value": value[..., :20], "offset_mask": om}, "value has 20 channels, expected group*group_channels = 3*8"),
        ({"value": value[0], "offset_mask": om}, "value must be (B, H, W, G*C), got shape (9, 7, 24)"),
        ({"value": value, "offset_mask": om[:, :8]}, "offset_mask leading dims (2, 8, 7) != (B, Hout, Wout) = "
                                                     "(2, 9, 7)"),
    ]:
        text = read_error(node_model("DeformAggregate", list(arrays), arrays, **attrs))
        assert "DeformAggregate" in text and message in text, text


# ------------------------------------------------------------------------------------------------
# Whole models through the `openvino` backend

MODELS = [pytest.param("hrvmamba_tiny", id="tiny"), pytest.param("hrvmamba_small", id="small", marks=pytest.mark.slow)]


def _images(batch, size, seed):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed)).numpy()


@needs_lib
@pytest.mark.parametrize("name", MODELS)
def test_whole_model_matches_pytorch_in_both_forms_and_after_ir(exported, name, tmp_path):
    e = exported(name, (256, 192))
    images = _images(2, (256, 192), seed=7)
    expected = e.torch_heatmaps(torch.from_numpy(images))
    scale = np.abs(expected).max()
    for form, path in e.paths.items():
        session = runtimes.load(path, "openvino")
        assert (session.extension is not None) == (form == "custom")
        got = session.run(images)
        assert np.abs(got - expected).max() <= 1e-4 * scale, form
    xml = save_ir(e.paths["custom"], tmp_path / f"{name}_custom.xml")
    session = runtimes.load(xml, "openvino")
    assert session.extension is not None and session.metadata["model"] == name
    assert np.abs(session.run(images) - expected).max() <= 1e-4 * scale, "IR"
    # an IR made by OpenVINO's own conversion (as ovc does): the metadata comes from its rt_info/framework
    converted = ov.convert_model(str(e.paths["custom"]), extension=str(LIB))
    ov.save_model(converted, str(tmp_path / "ovc.xml"), compress_to_fp16=False)
    session = runtimes.load(tmp_path / "ovc.xml", "openvino")
    assert session.metadata["model"] == name and session.metadata["input_size"] == [256, 192]
    assert np.abs(session.run(images) - expected).max() <= 1e-4 * scale, "IR from convert_model"


@needs_lib
def test_custom_form_without_the_extension_says_what_to_do(exported, monkeypatch):
    path = exported("hrvmamba_tiny", (256, 192)).paths["custom"]
    monkeypatch.setattr(openvino_library, "openvino_library_path", lambda: None)
    monkeypatch.setattr(openvino_library, "unavailable_reason", lambda: "libssmpose_ov.so not found in [/nowhere]")
    with pytest.raises(runtimes.BackendUnavailable, match=r"needs the ssmpose OpenVINO extension: libssmpose_ov.so "
                                                          r"not found in \[/nowhere\]\. Or export with --ops portable"):
        runtimes.load(path, "openvino")


def test_ir_without_ssmpose_metadata_is_refused(tmp_path):
    xml = tmp_path / "bare.xml"
    xml.write_text('<?xml version="1.0"?><net name="x" version="11"><layers/></net>')
    with pytest.raises(ValueError, match="carries no ssmpose metadata"):
        runtimes.load(xml, "openvino")
