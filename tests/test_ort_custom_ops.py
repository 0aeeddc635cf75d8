"""ONNX Runtime custom-op library (libssmpose_ort.so) on the CPU EP, against the float64 PyTorch reference.

Single-node ONNX graphs in the `ssmpose` domain (opset imports {"": 17, "ssmpose": 1}) are run with the library
registered. Tolerances (max abs error relative to the largest reference magnitude, as in test_cpu_kernels.py):
- float32: <= 1e-5 * max|ref| + 1e-6
- float16: <= 1e-3 * max|ref|  (output rounding is <= 2^-11 relative; the kernels accumulate in float32), and
  bit-identical to the float32 result rounded to float16 (the float16 path converts, runs float32, rounds back).
Malformed nodes must fail with ONNX Runtime's error carrying the operator's own message, without crashing.

The library is looked up as in production (build/ of this checkout, or $SSMPOSE_KERNELS_DIR). Tests skip when it
is not built, unless SSMPOSE_REQUIRE_KERNELS=1 (CI), where its absence is a failure.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

from ssmpose.custom_ops import ort_library

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402
from op_cases import (DEFORM_ATTRS, DEFORM_CASES, F16, F32, NP_TYPES, SCAN_CASES, SCAN_INPUT_SETS,  # noqa: E402
                      SCAN_INPUTS, assert_close, deform_arrays, deform_id, deform_reference, make_model,
                      scan_arrays, scan_reference)
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_errors  # noqa: E402

LIB = ort_library.ort_library_path()
REASON = ort_library.unavailable_reason()
needs_lib = pytest.mark.skipif(LIB is None, reason=f"libssmpose_ort.so not built: {REASON}")

# ONNX Runtime's Python binding raises one exception class per status code: a node's shape or type error found at
# run time is INVALID_ARGUMENT; an error while the session creates kernels (attributes) RUNTIME_EXCEPTION; a model
# that fails ONNX Runtime's own type check at load INVALID_GRAPH.
BadInput = _ort_errors.InvalidArgument
OrtError = (_ort_errors.Fail, _ort_errors.InvalidArgument, _ort_errors.RuntimeException, _ort_errors.InvalidGraph)


def test_ort_library_present():
    """Fails in CI (SSMPOSE_REQUIRE_KERNELS=1) when the library is missing; skips elsewhere."""
    if LIB is None:
        if os.environ.get("SSMPOSE_REQUIRE_KERNELS") == "1":
            pytest.fail(f"SSMPOSE_REQUIRE_KERNELS=1 but libssmpose_ort.so is unavailable: {REASON}")
        pytest.skip(f"libssmpose_ort.so not built: {REASON}")
    assert REASON is None


@needs_lib
def test_version_query():
    lib = ctypes.CDLL(str(LIB))
    for name in ("ssmpose_ort_version", "ssmpose_ort_api_version", "ssmpose_ort_has_cuda"):
        getattr(lib, name).restype = ctypes.c_int
    assert lib.ssmpose_ort_version() == ort_library.ORT_LIBRARY_VERSION
    assert lib.ssmpose_ort_api_version() == ort_library.ORT_API_VERSION == 16
    assert lib.ssmpose_ort_has_cuda() in (0, 1)
    assert ort_library.library_info() == {"version": ort_library.ORT_LIBRARY_VERSION, "api_version": 16,
                                          "has_cuda": lib.ssmpose_ort_has_cuda()}


# ------------------------------------------------------------------------------------------------
# Helpers


def session(model):
    so = ort.SessionOptions()
    ort_library.register(so)
    so.log_severity_level = 4  # the failing-node tests would otherwise log every expected error
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(model, feeds):
    return session(model).run(None, feeds)[0]


# ------------------------------------------------------------------------------------------------
# SelectiveScan


@needs_lib
@pytest.mark.parametrize("optional", list(SCAN_INPUT_SETS))
@pytest.mark.parametrize("case", SCAN_CASES, ids=lambda c: "B{}G{}D{}N{}L{}sp{}".format(*c))
def test_selective_scan_float32(case, optional):
    b, g, d, n, l, softplus = case
    inputs = SCAN_INPUT_SETS[optional]
    arrays = scan_arrays(b, g, d, n, l, softplus=softplus)
    model = make_model("SelectiveScan", inputs, [F32] * len(inputs), delta_softplus=softplus)
    y = run(model, {name: arrays[name] for name in inputs if name})
    assert y.dtype == np.float32 and y.shape == (b, g * d, l)
    assert_close(y, scan_reference(arrays, inputs, softplus), 1e-5, what="y")


@needs_lib
def test_selective_scan_delta_softplus_defaults_to_1():
    arrays = scan_arrays(2, 2, 3, 4, 9)
    y = run(make_model("SelectiveScan", SCAN_INPUTS, [F32] * 7), arrays)
    assert_close(y, scan_reference(arrays, SCAN_INPUTS, True), 1e-5, what="y")


@needs_lib
@pytest.mark.parametrize("case", [SCAN_CASES[1], SCAN_CASES[2]], ids=["N4", "N16"])
def test_selective_scan_float16(case):
    b, g, d, n, l, softplus = case
    arrays = {k: v.astype(np.float16) for k, v in scan_arrays(b, g, d, n, l, seed=1).items()}
    y = run(make_model("SelectiveScan", SCAN_INPUTS, [F16] * 7, F16, delta_softplus=softplus), arrays)
    assert y.dtype == np.float16
    assert_close(y, scan_reference(arrays, SCAN_INPUTS, softplus), 1e-3, atol=0.0, what="y float16")
    arrays32 = {k: v.astype(np.float32) for k, v in arrays.items()}
    y32 = run(make_model("SelectiveScan", SCAN_INPUTS, [F32] * 7, delta_softplus=softplus), arrays32)
    assert np.array_equal(y.view(np.uint16), y32.astype(np.float16).view(np.uint16))


@needs_lib
def test_selective_scan_empty_length():
    arrays = scan_arrays(2, 2, 3, 4, 0)
    y = run(make_model("SelectiveScan", SCAN_INPUTS, [F32] * 7), arrays)
    assert y.shape == (2, 6, 0)


@needs_lib
def test_selective_scan_feeds_a_standard_op_without_value_info():
    """The output type is inferred from the registered kernels (no value_info for the intermediate)."""
    inputs = SCAN_INPUTS[:5] + ["", "delta_bias"]
    scan = helper.make_node("SelectiveScan", inputs, ["h"], domain="ssmpose")
    neg = helper.make_node("Neg", ["h"], ["y"])
    graph = helper.make_graph([scan, neg], "chain",
                              [helper.make_tensor_value_info(n, F32, None) for n in inputs if n],
                              [helper.make_tensor_value_info("y", F32, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ssmpose", 1)])
    model.ir_version = 8
    arrays = scan_arrays(1, 2, 3, 2, 8)
    y = run(model, {n: arrays[n] for n in inputs if n})
    assert_close(-y, scan_reference(arrays, inputs, True), 1e-5, what="y")


@needs_lib
def test_thread_count_does_not_change_results(monkeypatch):
    arrays = scan_arrays(2, 4, 16, 4, 300, seed=5)
    model = make_model("SelectiveScan", SCAN_INPUTS, [F32] * 7)
    results = []
    for threads in ("1", "2", ""):
        monkeypatch.setenv("SSMPOSE_NUM_THREADS", threads)  # read when the kernel is created
        results.append(run(model, arrays))
    for other in results[1:]:
        assert np.array_equal(results[0], other)


def _scan_error(arrays, inputs=SCAN_INPUTS, types=None, **attrs):
    types = types or [F32] * len(inputs)
    model = make_model("SelectiveScan", inputs, types, types[0], **attrs)
    feeds = {n: arrays[n].astype(NP_TYPES[t]) for n, t in zip(inputs, types) if n}
    return session(model).run(None, feeds)


SCAN_BAD = [
    ("u_rank", dict(u=(6, 5)), r"SelectiveScan: u must be \(B, G\*D, L\), got shape \(6, 5\)"),
    ("delta_shape", dict(delta=(2, 6, 4)), r"SelectiveScan: delta shape \(2, 6, 4\) != u shape \(2, 6, 5\)"),
    ("Bs_rank", dict(Bs=(2, 2, 4)), r"SelectiveScan: Bs must be \(B, G, N, L\), got shape \(2, 2, 4\)"),
    ("Bs_length", dict(Bs=(2, 2, 4, 6), Cs=(2, 2, 4, 6)),
     r"SelectiveScan: Bs shape \(2, 2, 4, 6\) does not match u \(B=2, L=5\)"),
    ("Cs_shape", dict(Cs=(2, 2, 3, 5)), r"SelectiveScan: Cs shape \(2, 2, 3, 5\) != Bs shape \(2, 2, 4, 5\)"),
    ("groups", dict(Bs=(2, 4, 4, 5), Cs=(2, 4, 4, 5)),
     r"SelectiveScan: channels 6 of u are not divisible by the 4 groups of Bs"),
    ("A_shape", dict(A=(6, 3)), r"SelectiveScan: A must be \(6, 4\), got \(6, 3\)"),
    ("Ds_shape", dict(Ds=(5,)), r"SelectiveScan: Ds must be \(6,\), got \(5,\)"),
    ("bias_shape", dict(delta_bias=(6, 1)), r"SelectiveScan: delta_bias must be \(6,\), got \(6, 1\)"),
    ("dstate", dict(A=(6, 17), Bs=(2, 2, 17, 5), Cs=(2, 2, 17, 5)),
     r"SelectiveScan: dstate N = Bs.shape\[2\] must be in 1..16, got 17"),
]


@needs_lib
@pytest.mark.parametrize("name, shapes, message", SCAN_BAD, ids=[c[0] for c in SCAN_BAD])
def test_selective_scan_bad_shapes(name, shapes, message):
    arrays = scan_arrays(2, 2, 3, 4, 5)
    for key, shape in shapes.items():
        arrays[key] = np.ones(shape, np.float32)
    with pytest.raises(BadInput, match=message):
        _scan_error(arrays)


@needs_lib
def test_selective_scan_type_mix():
    arrays = scan_arrays(2, 2, 3, 4, 5)
    types = [F32, F16, F32, F32, F32, F32, F32]
    with pytest.raises(BadInput, match=r"SelectiveScan: input 'delta' has element type float16, expected float32 "
                                       r"\(the type of 'u'\)"):
        _scan_error(arrays, types=types)
    types = [F16, F16, F16, F16, F16, F32, F16]
    with pytest.raises(BadInput, match=r"SelectiveScan: input 'Ds' has element type float32, expected float16"):
        _scan_error(arrays, types=types)


@needs_lib
def test_selective_scan_unsupported_type_refused_at_load():
    arrays = scan_arrays(1, 1, 2, 2, 3)
    with pytest.raises(_ort_errors.InvalidGraph, match=r"tensor\(double\).*SelectiveScan"):
        _scan_error(arrays, inputs=SCAN_INPUTS[:5], types=[TensorProto.DOUBLE] * 5)


@needs_lib
def test_selective_scan_bad_attributes():
    arrays = scan_arrays(1, 1, 2, 2, 3)
    with pytest.raises(OrtError, match=r"SelectiveScan: attribute delta_softplus must be in \[0, 1\], got 2"):
        _scan_error(arrays, delta_softplus=2)
    with pytest.raises(OrtError, match=r"SelectiveScan: attribute 'delta_softplus' must be an int, got a float"):
        _scan_error(arrays, delta_softplus=1.0)


# ------------------------------------------------------------------------------------------------
# DeformAggregate

@needs_lib
@pytest.mark.parametrize("case", DEFORM_CASES, ids=deform_id)
def test_deform_aggregate_float32(case):
    value, om, attrs = deform_arrays(case)
    y = run(make_model("DeformAggregate", ["value", "offset_mask"], [F32, F32], **attrs),
            {"value": value, "offset_mask": om})
    expected = deform_reference(value, om, attrs)
    assert y.dtype == np.float32 and y.shape == expected.shape
    assert_close(y, expected, 1e-5, what="out")


@needs_lib
@pytest.mark.parametrize("case", [DEFORM_CASES[0], DEFORM_CASES[1]], ids=deform_id)
def test_deform_aggregate_float16(case):
    value, om, attrs = deform_arrays(case, seed=3)
    value, om = value.astype(np.float16), om.astype(np.float16)
    y = run(make_model("DeformAggregate", ["value", "offset_mask"], [F16, F16], F16, **attrs),
            {"value": value, "offset_mask": om})
    assert y.dtype == np.float16
    assert_close(y, deform_reference(value, om, attrs), 1e-3, atol=0.0, what="out float16")
    y32 = run(make_model("DeformAggregate", ["value", "offset_mask"], [F32, F32], **attrs),
              {"value": value.astype(np.float32), "offset_mask": om.astype(np.float32)})
    assert np.array_equal(y.view(np.uint16), y32.astype(np.float16).view(np.uint16))


@needs_lib
def test_deform_aggregate_tensorrt_attributes_and_int_offset_scale_accepted():
    value, om, attrs = deform_arrays(DEFORM_CASES[0])
    attrs = dict(attrs, offset_scale=1, plugin_version="1", plugin_namespace="ssmpose")
    y = run(make_model("DeformAggregate", ["value", "offset_mask"], [F32, F32], **attrs),
            {"value": value, "offset_mask": om})
    assert_close(y, deform_reference(value, om, dict(attrs, offset_scale=1.0)), 1e-5, what="out")


@needs_lib
def test_deform_aggregate_empty_batch():
    value, om, attrs = deform_arrays(DEFORM_CASES[0])
    y = run(make_model("DeformAggregate", ["value", "offset_mask"], [F32, F32], **attrs),
            {"value": value[:0], "offset_mask": om[:0]})
    assert y.shape == (0,) + om.shape[1:3] + (value.shape[3],)


def _deform_error(value, om, attrs, types=(F32, F32)):
    model = make_model("DeformAggregate", ["value", "offset_mask"], list(types), types[0], **attrs)
    return session(model).run(None, {"value": value.astype(NP_TYPES[types[0]]),
                                     "offset_mask": om.astype(NP_TYPES[types[1]])})


@needs_lib
@pytest.mark.parametrize("attr", DEFORM_ATTRS)
def test_deform_aggregate_missing_attribute(attr):
    value, om, attrs = deform_arrays(DEFORM_CASES[0])
    del attrs[attr]
    kind = "float" if attr == "offset_scale" else "int"
    model = make_model("DeformAggregate", ["value", "offset_mask"], [F32, F32], **attrs)
    with pytest.raises(OrtError, match=rf"DeformAggregate: missing required attribute '{attr}' \({kind}\)"):
        session(model)  # attributes are read when the kernel is created: the session fails to initialise


@needs_lib
@pytest.mark.parametrize("attr, bad, message", [
    ("kernel_h", 0, r"attribute kernel_h must be in \[1, 2147483647\], got 0"),
    ("stride_w", -1, r"attribute stride_w must be in \[1, 2147483647\], got -1"),
    ("pad_h", -1, r"attribute pad_h must be in \[0, 2147483647\], got -1"),
    ("group", 0, r"attribute group must be in \[1, 2147483647\], got 0"),
    ("remove_center", 2, r"attribute remove_center must be in \[0, 1\], got 2"),
    ("group_channels", 2.5, r"attribute 'group_channels' must be an int, got a float"),
    ("offset_scale", "1", r"attribute 'offset_scale' must be a float, got a string"),
])
def test_deform_aggregate_bad_attribute(attr, bad, message):
    value, om, attrs = deform_arrays(DEFORM_CASES[0])
    attrs[attr] = bad
    model = make_model("DeformAggregate", ["value", "offset_mask"], [F32, F32], **attrs)
    with pytest.raises(OrtError, match="DeformAggregate: " + message):
        session(model)


@needs_lib
def test_deform_aggregate_kernel_without_points():
    value, om, attrs = deform_arrays(DEFORM_CASES[3])  # 1x1 kernel
    attrs["remove_center"] = 1
    with pytest.raises(OrtError, match=r"DeformAggregate: kernel 1x1 with remove_center has no sampling points"):
        _deform_error(value, om, attrs)


@needs_lib
def test_deform_aggregate_offset_mask_too_narrow():
    value, om, attrs = deform_arrays(DEFORM_CASES[0])  # G = 3, K = 9: needs 81 columns
    with pytest.raises(BadInput, match=r"DeformAggregate: offset_mask has 80 columns, needs >= group\*K\*3 = 81"):
        _deform_error(value, om[..., :80], attrs)


@needs_lib
def test_deform_aggregate_bad_shapes():
    value, om, attrs = deform_arrays(DEFORM_CASES[0])  # value (2, 9, 7, 24), om (2, 9, 7, 88)
    with pytest.raises(BadInput, match=r"DeformAggregate: value must be \(B, H, W, G\*C\), got shape \(9, 7, 24\)"):
        _deform_error(value[0], om, attrs)
    with pytest.raises(BadInput, match=r"DeformAggregate: offset_mask must be \(B, Hout, Wout, P\), got shape "
                                       r"\(2, 63, 88\)"):
        _deform_error(value, om.reshape(2, 63, 88), attrs)
    with pytest.raises(BadInput, match=r"DeformAggregate: value has 20 channels, expected group\*group_channels = "
                                       r"3\*8"):
        _deform_error(value[..., :20], om, attrs)
    with pytest.raises(BadInput, match=r"DeformAggregate: value has 24 channels, expected group\*group_channels = "
                                       r"4\*8"):
        _deform_error(value, om, dict(attrs, group=4))  # mismatched groups
    with pytest.raises(BadInput, match=r"DeformAggregate: offset_mask leading dims \(2, 8, 7\) != \(B, Hout, Wout\) "
                                       r"= \(2, 9, 7\)"):
        _deform_error(value, om[:, :8], attrs)
    with pytest.raises(BadInput, match=r"offset_mask leading dims \(2, 9, 7\) != \(B, Hout, Wout\) = \(2, 5, 4\)"):
        _deform_error(value, om, dict(attrs, stride_h=2, stride_w=2))  # output size from the formula


@needs_lib
def test_deform_aggregate_type_mix():
    value, om, attrs = deform_arrays(DEFORM_CASES[0])
    with pytest.raises(BadInput, match=r"DeformAggregate: input 'offset_mask' has element type float32, expected "
                                       r"float16 \(the type of 'value'\)"):
        _deform_error(value, om, attrs, types=(F16, F32))


@needs_lib
def test_process_survives_errors():
    """After the failures above, the same process still registers the library and computes correctly."""
    value, om, attrs = deform_arrays(DEFORM_CASES[1])
    model = make_model("DeformAggregate", ["value", "offset_mask"], [F32, F32], **attrs)
    sess = session(model)
    for _ in range(3):
        with pytest.raises(BadInput, match="offset_mask has"):
            sess.run(None, {"value": value, "offset_mask": om[..., :5]})
        y = sess.run(None, {"value": value, "offset_mask": om})[0]
        assert_close(y, deform_reference(value, om, attrs), 1e-5, what="out")
