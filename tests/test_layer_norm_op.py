"""LayerNorm (ssmpose domain version 3) and AddLayerNorm (domain version 4): the CPU kernels through ctypes and the
ONNX Runtime ops on the CPU EP, against a float64 numpy reference (docs/ops.md, "LayerNorm", "AddLayerNorm").

Tolerances (max abs error, relative to the largest reference magnitude):
- float32: 1e-6 (a few float32 roundings of y; mean and variance in float32)
- float16: 2e-3 (the output rounding is <= 2^-11 = 4.9e-4 relative)
- large offsets (|mean| >> std): the float32 mean of values near 1e3 is exact only to ~1e3 * 2^-24 per rounding,
  and that error, divided by the std, reaches y: the bound is scaled by |mean| / std. A one-pass variance
  (E[x^2] - E[x]^2 in float32) would be wrong by O(1) there.
The CUDA kernel is checked on a GPU by tests/gpu/check_cuda_kernels.py; its host-side argument checks
(which need no GPU) are tested here when the library is built.

Tests of the compiled libraries skip when they are not built, unless SSMPOSE_REQUIRE_KERNELS=1 (CI).
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from ssmpose.custom_ops import kernel_library as kl
from ssmpose.custom_ops import ort_library

from built_libraries import cuda_kernel_library, require_built

LIB = kl.cpu_library()
REASON = kl.unavailable_reason("cpu")
needs_lib = pytest.mark.skipif(LIB is None, reason=f"CPU kernel library not built: {REASON}")
ORT_LIB = ort_library.ort_library_path()
needs_ort_lib = pytest.mark.skipif(ORT_LIB is None, reason=f"libssmpose_ort.so not built: "
                                                              f"{ort_library.unavailable_reason()}")

SSM_OK, NULL_POINTER, BAD_SIZE, BAD_DTYPE, UNSUPPORTED = 0, 1, 2, 3, 4
EPS = 1e-5


CUDA = cuda_kernel_library()
needs_cuda_lib = pytest.mark.skipif(CUDA is None, reason="CUDA kernel library not built")


def test_libraries_present():
    """Fails in CI (SSMPOSE_REQUIRE_KERNELS=1) when a library is missing; skips elsewhere."""
    require_built({"CPU kernels": LIB, "libssmpose_ort": ORT_LIB})
    assert LIB.ssm_abi_version() == kl.ABI_VERSION == 6
    assert ort_library.library_info()["version"] == ort_library.ORT_LIBRARY_VERSION == 7


# ------------------------------------------------------------------------------------------------
# Reference and data


def reference(x, weight, bias, eps=EPS):
    """float64 LayerNorm over the last axis (epsilon as the float32 the kernels see)."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    eps = float(np.float32(eps))
    return (x - mean) / np.sqrt(var + eps) * np.asarray(weight, np.float64) + np.asarray(bias, np.float64)


def make_inputs(shape, dtype=np.float32, seed=0, offset=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    C = shape[-1]
    x = (rng.standard_normal(shape) * scale + offset).astype(dtype)
    weight = (1.0 + 0.5 * rng.standard_normal(C)).astype(dtype)
    bias = (0.3 * rng.standard_normal(C)).astype(dtype)
    return x, weight, bias


def assert_close(actual, expected, rel, what=""):
    actual = np.asarray(actual, np.float64)
    if expected.size == 0:
        assert actual.shape == expected.shape
        return
    err = np.abs(actual - expected).max()
    scale = np.abs(expected).max()
    assert np.isfinite(actual).all(), f"{what}: non-finite output"
    assert err <= rel * scale, f"{what}: max abs err {err:.3e} > {rel:g} * {scale:.3e}"


TOL = {np.float32: 1e-6, np.float16: 2e-3}
CODES = {np.float32: kl.SSM_FLOAT32, np.float16: kl.SSM_FLOAT16}

# (shape, offset, scale): rows = 0, C = 1, the models' widths, odd widths, ranks 2..5
SHAPES = [
    ((0, 64), 0.0, 1.0),
    ((3, 0 + 1), 0.0, 1.0),           # C = 1: y = bias
    ((5, 32), 0.0, 1.0),
    ((7, 48), 0.5, 2.0),
    ((2, 3, 64), 0.0, 1.0),
    ((2, 5, 96), 0.0, 0.1),
    ((4, 512), 0.0, 3.0),
    ((2, 2, 3, 768), 0.0, 1.0),
    ((3, 1000), -2.0, 1.0),
    ((2, 3, 2, 2, 33), 0.0, 1.0),      # rank 5, odd width
    ((1, 4, 0, 48), 0.0, 1.0),         # rows = 0 from a middle dimension
    ((9, 1031), 0.0, 1.0),             # longer than one SIMD block, odd
]


# ------------------------------------------------------------------------------------------------
# CPU kernel through ctypes


def p(a):
    return ctypes.c_void_p(a.ctypes.data)


def kernel(x, weight, bias, eps=EPS, threads=0, dtype_code=None):
    """Calls ssm_layer_norm_fwd_cpu on numpy arrays (float32 / float16, or bfloat16 as uint16 bits)."""
    x = np.ascontiguousarray(x)
    C = x.shape[-1]
    rows = x.size // C if C else 0
    code = CODES[x.dtype.type] if dtype_code is None else dtype_code
    y = np.empty_like(x)
    shape = kl.LayerNormShape(rows, C, eps, code)
    st = LIB.ssm_layer_norm_fwd_cpu(ctypes.byref(shape), p(x), p(np.ascontiguousarray(weight)),
                                    p(np.ascontiguousarray(bias)), p(y), threads)
    assert st == SSM_OK, f"status {st}: {LIB.ssm_status_string(st).decode()}"
    return y


@needs_lib
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("shape,offset,scale", SHAPES, ids=[str(s[0]) for s in SHAPES])
def test_cpu_kernel_matches_the_reference(shape, offset, scale, dtype):
    x, w, b = make_inputs(shape, dtype, seed=sum(shape), offset=offset, scale=scale)
    y = kernel(x, w, b)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, reference(x, w, b), TOL[dtype], what=f"{shape} {dtype.__name__}")


@needs_lib
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
def test_cpu_kernel_two_pass_accuracy_with_large_offsets(dtype):
    """Rows with mean 1e3 and std 1: the variance is computed from deviations (two passes), so only the float32
    rounding of the mean (~1e3 * 2^-24 per addition) shows in y."""
    offset, scale = 1e3, 1.0
    for C in (32, 96, 768, 1000):
        x, w, b = make_inputs((64, C), dtype, seed=C, offset=offset, scale=scale)
        expected = reference(x, w, b)
        y = kernel(x, w, b)
        bound = TOL[dtype] + 2.0 ** -22 * offset / scale
        assert_close(y, expected, bound, what=f"offset C={C}")
        # a one-pass float32 variance would be useless here: check the output's row statistics too
        yn = (y.astype(np.float64) - b) / w
        assert np.abs(yn.mean(axis=-1)).max() < 1e-2
        assert np.abs(yn.std(axis=-1) - 1).max() < 1e-2


@needs_lib
def test_cpu_kernel_epsilon_and_constant_rows():
    x, w, b = make_inputs((6, 40), np.float32, seed=3)
    x[2] = 7.0  # a constant row: var = 0, y = bias
    for eps in (1e-5, 1e-3, 0.5, 10.0):
        assert_close(kernel(x, w, b, eps=eps), reference(x, w, b, eps=eps), 1e-6, what=f"eps={eps}")
    np.testing.assert_array_equal(kernel(x, w, b)[2], b)


@needs_lib
def test_cpu_kernel_is_deterministic_across_thread_counts():
    x, w, b = make_inputs((2000, 96), np.float32, seed=5)
    ys = [kernel(x, w, b, threads=t) for t in (1, 2, 3, 0)]
    for y in ys[1:]:
        np.testing.assert_array_equal(y, ys[0])


@needs_lib
def test_cpu_kernel_half_paths_round_the_float32_result():
    """float16 / bfloat16 convert to float32, normalise and round once: bit-identical to the float32 kernel's output
    rounded (same inputs)."""
    x, w, b = make_inputs((300, 72), np.float16, seed=7)
    y16 = kernel(x, w, b)
    y32 = kernel(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32))
    np.testing.assert_array_equal(y16, y32.astype(np.float16))

    def to_bf16(a):  # round to nearest even, as bits
        u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)

    def from_bf16(bits):
        return (bits.astype(np.uint32) << 16).view(np.float32)

    xb, wb, bb = (to_bf16(t.astype(np.float32)) for t in (x, w, b))
    yb = kernel(xb, wb, bb, dtype_code=kl.SSM_BFLOAT16)
    y32 = kernel(from_bf16(xb), from_bf16(wb), from_bf16(bb))
    np.testing.assert_array_equal(yb, to_bf16(y32))


@needs_lib
def test_cpu_kernel_propagates_nan_and_inf_per_row():
    x, w, b = make_inputs((4, 16), np.float32, seed=2)
    x[1, 3] = np.nan
    x[2, 0] = np.inf
    y = kernel(x, w, b)
    assert np.isnan(y[1]).all() and np.isnan(y[2]).all()
    assert_close(y[[0, 3]], reference(x[[0, 3]], w, b), 1e-6)


# Argument checks: the shape (and dtype, epsilon) before the pointers, so NULL pointers answer NULL_POINTER for a
# valid shape and the shape's error otherwise (no memory touched).
def ln_shape(rows, channels, eps=EPS, dtype=kl.SSM_FLOAT32):
    return kl.LayerNormShape(rows, channels, eps, dtype)


ARG_CASES = [
    (ln_shape(4, 32), NULL_POINTER),
    (ln_shape(0, 32), NULL_POINTER),                        # rows = 0 is a valid shape
    (ln_shape(1 << 30, (1 << 30) - 1), NULL_POINTER),       # rows * C < 2^60
    (ln_shape(1 << 30, 1 << 30), BAD_SIZE),                 # = 2^60
    (ln_shape(-1, 32), BAD_SIZE),
    (ln_shape(4, 0), BAD_SIZE),
    (ln_shape(4, -3), BAD_SIZE),
    (ln_shape(4, 32, dtype=7), BAD_DTYPE),
    (ln_shape(4, 32, eps=0.0), UNSUPPORTED),
    (ln_shape(4, 32, eps=-1e-5), UNSUPPORTED),
    (ln_shape(4, 32, eps=float("inf")), UNSUPPORTED),
    (ln_shape(4, 32, eps=float("nan")), UNSUPPORTED),
]

CUDA_ARG_CASES = [
    (ln_shape(1, 1 << 30), NULL_POINTER),                   # channels <= 2^30 (32-bit offsets inside a row)
    (ln_shape(1, (1 << 30) + 1), BAD_SIZE),
]


@needs_lib
@pytest.mark.parametrize("shape,expected", ARG_CASES)
def test_cpu_kernel_argument_checks(shape, expected):
    n = None
    assert LIB.ssm_layer_norm_fwd_cpu(ctypes.byref(shape), n, n, n, n, 1) == expected
    assert LIB.ssm_layer_norm_fwd_cpu(None, n, n, n, n, 1) == NULL_POINTER
    if expected == NULL_POINTER and shape.rows > 0 and shape.rows * shape.channels < 1 << 20:
        x = np.zeros(shape.rows * shape.channels, np.float32)
        w = np.ones(shape.channels, np.float32)
        for missing in range(4):  # each pointer NULL in turn
            args = [p(x), p(w), p(w), p(x.copy())]
            args[missing] = None
            assert LIB.ssm_layer_norm_fwd_cpu(ctypes.byref(shape), *args, 1) == NULL_POINTER


@needs_cuda_lib
@pytest.mark.parametrize("shape,expected", ARG_CASES + CUDA_ARG_CASES)
def test_cuda_kernel_argument_checks(shape, expected):
    """The CUDA entry point checks on the host before any CUDA call: no GPU needed."""
    n = None
    assert CUDA.ssm_layer_norm_fwd_cuda(ctypes.byref(shape), n, n, n, n, n) == expected


# ------------------------------------------------------------------------------------------------
# ONNX Runtime op (CPU EP)


def single_node(rank_shape, elem=None, domain_version=3, static=True, types=None, **attributes):
    """A graph of one LayerNorm node; `rank_shape` is X's shape (static=False: inputs of unknown shape); `types`
    overrides the element type of inputs by name."""
    from onnx import TensorProto, helper
    elem = TensorProto.FLOAT if elem is None else elem
    types = {"X": elem, "weight": elem, "bias": elem, **(types or {})}
    C = rank_shape[-1] if rank_shape else None
    shapes = {"X": list(rank_shape), "weight": [C], "bias": [C]}
    inputs = [helper.make_tensor_value_info(n, types[n], shapes[n] if static else None)
              for n in ("X", "weight", "bias")]
    attributes.setdefault("plugin_version", "1")
    attributes.setdefault("plugin_namespace", "ssmpose")
    node = helper.make_node("LayerNorm", ["X", "weight", "bias"], ["Y"], domain="ssmpose", name="ln_node",
                            **attributes)
    graph = helper.make_graph([node], "layer_norm", inputs,
                              [helper.make_tensor_value_info("Y", elem, list(rank_shape) if static else None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid("ssmpose", domain_version)])


def ort_session(model, register=True):
    import onnxruntime as ort
    options = ort.SessionOptions()
    if register:
        ort_library.register(options)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def ort_version():
    import onnxruntime as ort
    return tuple(int(v) for v in ort.__version__.split(".")[:2])


@needs_ort_lib
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("shape,offset,scale", SHAPES, ids=[str(s[0]) for s in SHAPES])
def test_ort_op_matches_the_reference(shape, offset, scale, dtype):
    from onnx import TensorProto
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    x, w, b = make_inputs(shape, dtype, seed=sum(shape) + 1, offset=offset, scale=scale)
    y = ort_session(single_node(shape, elem)).run(None, {"X": x, "weight": w, "bias": b})[0]
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, reference(x, w, b), TOL[dtype], what=f"{shape} {dtype.__name__}")


@needs_ort_lib
def test_ort_op_epsilon_attribute_and_large_offsets():
    x, w, b = make_inputs((3, 8, 64), np.float32, seed=11, offset=1e3)
    for eps in (1e-5, 1e-2, 1.0):
        y = ort_session(single_node(x.shape, epsilon=eps)).run(None, {"X": x, "weight": w, "bias": b})[0]
        assert_close(y, reference(x, w, b, eps=eps), 1e-6 + 2.0 ** -22 * 1e3, what=f"eps={eps}")
    # the default epsilon is 1e-5
    y = ort_session(single_node(x.shape)).run(None, {"X": x, "weight": w, "bias": b})[0]
    np.testing.assert_array_equal(y, kernel(x, w, b, eps=1e-5) if LIB is not None else y)


@needs_ort_lib
def test_ort_op_matches_onnx_layer_normalization():
    """The same numbers as ONNX LayerNormalization(axis=-1, stash_type=1) run by ONNX Runtime itself."""
    from onnx import TensorProto, helper
    x, w, b = make_inputs((4, 6, 96), np.float32, seed=13, offset=0.7, scale=2.0)
    node = helper.make_node("LayerNormalization", ["X", "weight", "bias"], ["Y"], axis=-1, epsilon=1e-5,
                            stash_type=1)
    graph = helper.make_graph([node], "onnx_ln", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x.shape),
                                                  helper.make_tensor_value_info("weight", TensorProto.FLOAT, [96]),
                                                  helper.make_tensor_value_info("bias", TensorProto.FLOAT, [96])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, x.shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    feeds = {"X": x, "weight": w, "bias": b}
    onnx_y = ort_session(model, register=False).run(None, feeds)[0]
    ours = ort_session(single_node(x.shape)).run(None, feeds)[0]
    np.testing.assert_allclose(ours, onnx_y, rtol=0, atol=2e-6 * np.abs(onnx_y).max())


@needs_ort_lib
def test_ort_op_errors():
    from onnxruntime.capi import onnxruntime_pybind11_state as errors
    x, w, b = make_inputs((2, 3, 8), np.float32)
    session = ort_session(single_node((2, 3, 8), static=False))
    for feeds, message in (
            ({"weight": w[:7]}, r"weight must be \(C,\) = \(8,\) for X of shape \(2, 3, 8\), got \(7,\)"),
            ({"bias": b.reshape(1, 8)}, r"bias must be \(C,\) = \(8,\) for X of shape \(2, 3, 8\), got \(1, 8\)"),
            ({"X": np.array(1.0, np.float32), "weight": w[:1], "bias": b[:1]},
             r"X must have rank >= 1 \(it is normalised over its last axis\), got shape \(\)"),
            ({"X": np.zeros((2, 0), np.float32), "weight": w[:0], "bias": b[:0]},
             r"the last dimension C of X must be >= 1, got shape \(2, 0\)")):
        bad = {"X": x, "weight": w, "bias": b, **feeds}
        with pytest.raises(errors.InvalidArgument, match="LayerNorm: " + message) as info:
            session.run(None, bad)
        assert "ln_node" in str(info.value)  # ONNX Runtime names the node
    from onnx import TensorProto
    for name in ("weight", "bias"):
        mixed = ort_session(single_node((2, 3, 8), static=False, types={name: TensorProto.FLOAT16}))
        feeds = {"X": x, "weight": w, "bias": b}
        feeds[name] = feeds[name].astype(np.float16)
        with pytest.raises(errors.InvalidArgument,
                           match=f"LayerNorm: input '{name}' has element type float16, expected float32") as info:
            mixed.run(None, feeds)
        assert "ln_node" in str(info.value)
    for eps in (0.0, -1e-5, float("inf"), float("nan")):
        with pytest.raises(Exception, match="LayerNorm: attribute epsilon must be finite and > 0"):
            ort_session(single_node((2, 3, 8), epsilon=eps))
    with pytest.raises(Exception, match="LayerNorm: attribute 'epsilon' must be a float, got a string"):
        ort_session(single_node((2, 3, 8), epsilon="small"))
    # an int epsilon is read as the float of that value
    y = ort_session(single_node((2, 3, 8), epsilon=1)).run(None, {"X": x, "weight": w, "bias": b})[0]
    assert_close(y, reference(x, w, b, eps=1.0), 1e-6)


@needs_ort_lib
def test_ort_op_float64_is_not_registered():
    from onnx import TensorProto
    with pytest.raises(Exception, match="LayerNorm"):
        ort_session(single_node((2, 8), TensorProto.DOUBLE)).run(
            None, {"X": np.zeros((2, 8)), "weight": np.ones(8), "bias": np.zeros(8)})


@needs_ort_lib
def test_ort_domain_versions():
    """LayerNorm exists from domain version 3 on (where ONNX Runtime reads op versions, >= 1.17); a version-3 graph
    also runs the older operators."""
    from onnx import TensorProto, helper
    if ort_version() >= (1, 17):
        for version in (1, 2):
            with pytest.raises(Exception, match="LayerNorm.* is not a registered function/op"):
                ort_session(single_node((2, 8), domain_version=version))
    model = single_node((2, 3, 4, 8))
    # SelectiveScan (version 1) in the same version-3 graph
    scan = helper.make_node("SelectiveScan", ["u", "u", "A1", "B1", "B1"], ["y1"], domain="ssmpose")
    model.graph.node.append(scan)
    model.graph.input.extend([helper.make_tensor_value_info("u", TensorProto.FLOAT, [1, 2, 6]),
                              helper.make_tensor_value_info("A1", TensorProto.FLOAT, [2, 1]),
                              helper.make_tensor_value_info("B1", TensorProto.FLOAT, [1, 1, 1, 6])])
    model.graph.output.append(helper.make_tensor_value_info("y1", TensorProto.FLOAT, [1, 2, 6]))
    x, w, b = make_inputs((2, 3, 4, 8), np.float32, seed=17)
    rng = np.random.default_rng(0)
    feeds = {"X": x, "weight": w, "bias": b, "u": rng.random((1, 2, 6), np.float32),
             "A1": -rng.random((2, 1), np.float32), "B1": rng.random((1, 1, 1, 6), np.float32)}
    y, y1 = ort_session(model).run(None, feeds)
    assert_close(y, reference(x, w, b), 1e-6)
    assert y1.shape == (1, 2, 6) and np.isfinite(y1).all()


# ------------------------------------------------------------------------------------------------
# AddLayerNorm (domain version 4): S = X + R rounded to the type, Y = LayerNorm(S). The sum is checked bit for bit
# against reference.add_layer_norm_reference (float32 arithmetic, rounded), Y against the float64 LayerNorm of that
# S with the tolerances above.


def make_residual(shape, dtype, seed):
    return np.random.default_rng(seed + 1000).standard_normal(shape).astype(dtype)


def add_kernel(x, r, weight, bias, eps=EPS, threads=0, dtype_code=None):
    """Calls ssm_add_layer_norm_fwd_cpu on numpy arrays; returns (y, s)."""
    x, r = np.ascontiguousarray(x), np.ascontiguousarray(r)
    C = x.shape[-1]
    rows = x.size // C if C else 0
    code = CODES[x.dtype.type] if dtype_code is None else dtype_code
    y, s = np.empty_like(x), np.empty_like(x)
    shape = kl.LayerNormShape(rows, C, eps, code)
    st = LIB.ssm_add_layer_norm_fwd_cpu(ctypes.byref(shape), p(x), p(r), p(np.ascontiguousarray(weight)),
                                        p(np.ascontiguousarray(bias)), p(y), p(s), threads)
    assert st == SSM_OK, f"status {st}: {LIB.ssm_status_string(st).decode()}"
    return y, s


def add_reference_sum(x, r, w, b):
    """S of reference.add_layer_norm_reference, in x's type."""
    import torch
    from ssmpose.custom_ops.reference import add_layer_norm_reference
    t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (x, r, w, b)]
    return add_layer_norm_reference(*t, epsilon=EPS)[1].numpy()


@needs_lib
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("shape,offset,scale", SHAPES, ids=[str(s[0]) for s in SHAPES])
def test_add_cpu_kernel_matches_the_reference(shape, offset, scale, dtype):
    x, w, b = make_inputs(shape, dtype, seed=sum(shape) + 2, offset=offset, scale=scale)
    r = make_residual(shape, dtype, sum(shape))
    y, s = add_kernel(x, r, w, b)
    assert y.dtype == s.dtype == dtype and y.shape == s.shape == x.shape
    s_ref = add_reference_sum(x, r, w, b)
    np.testing.assert_array_equal(s, s_ref)
    assert_close(y, reference(s_ref, w, b), TOL[dtype], what=f"{shape} {dtype.__name__}")


def to_bf16(a):  # round to nearest even, as bits
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


@needs_lib
@pytest.mark.parametrize("dtype", [np.float32, np.float16, "bfloat16"])
@pytest.mark.parametrize("shape", [(3, 1), (6, 40), (300, 96), (5, 5000)], ids=str)
def test_add_cpu_kernel_equals_add_then_layer_norm(shape, dtype):
    """The fused kernel gives the bits of an Add (float32, rounded to the type) followed by the LayerNorm kernel,
    for every thread count (C = 5000 is more than one conversion block per row)."""
    x, w, b = make_inputs(shape, np.float32, seed=shape[-1])
    r = make_residual(shape, np.float32, shape[-1])
    if dtype == "bfloat16":
        x, r, w, b = (to_bf16(a) for a in (x, r, w, b))
        code = kl.SSM_BFLOAT16
        added = to_bf16(from_bf16(x) + from_bf16(r))
    else:
        x, r, w, b = (a.astype(dtype) for a in (x, r, w, b))
        code = CODES[dtype]
        added = (x.astype(np.float32) + r.astype(np.float32)).astype(dtype)
    expected_y = kernel(added, w, b, dtype_code=code)
    for threads in (1, 2, 0):
        y, s = add_kernel(x, r, w, b, threads=threads, dtype_code=code)
        np.testing.assert_array_equal(s, added)
        np.testing.assert_array_equal(y, expected_y)


@needs_lib
@pytest.mark.parametrize("shape,expected", ARG_CASES)
def test_add_cpu_kernel_argument_checks(shape, expected):
    """The same shape rules and status codes as LayerNorm; the shape before the six pointers."""
    n = None
    assert LIB.ssm_add_layer_norm_fwd_cpu(ctypes.byref(shape), n, n, n, n, n, n, 1) == expected
    assert LIB.ssm_add_layer_norm_fwd_cpu(None, n, n, n, n, n, n, 1) == NULL_POINTER
    if expected == NULL_POINTER and shape.rows > 0 and shape.rows * shape.channels < 1 << 20:
        x = np.zeros(shape.rows * shape.channels, np.float32)
        w = np.ones(shape.channels, np.float32)
        for missing in range(6):  # each pointer NULL in turn
            args = [p(x), p(x.copy()), p(w), p(w), p(x.copy()), p(x.copy())]
            args[missing] = None
            assert LIB.ssm_add_layer_norm_fwd_cpu(ctypes.byref(shape), *args, 1) == NULL_POINTER


@needs_cuda_lib
@pytest.mark.parametrize("shape,expected", ARG_CASES + CUDA_ARG_CASES)
def test_add_cuda_kernel_argument_checks(shape, expected):
    n = None
    assert CUDA.ssm_add_layer_norm_fwd_cuda(ctypes.byref(shape), n, n, n, n, n, n, n) == expected


def add_single_node(rank_shape, elem=None, domain_version=4, types=None, outputs=("Y", "S"), **attributes):
    """A graph of one AddLayerNorm node with inputs of unknown shape; `types` overrides input element types."""
    from onnx import TensorProto, helper
    elem = TensorProto.FLOAT if elem is None else elem
    types = {"X": elem, "R": elem, "weight": elem, "bias": elem, **(types or {})}
    inputs = [helper.make_tensor_value_info(n, types[n], None) for n in ("X", "R", "weight", "bias")]
    attributes.setdefault("plugin_version", "1")
    attributes.setdefault("plugin_namespace", "ssmpose")
    node = helper.make_node("AddLayerNorm", ["X", "R", "weight", "bias"], list(outputs), domain="ssmpose",
                            name="add_ln_node", **attributes)
    graph = helper.make_graph([node], "add_layer_norm", inputs,
                              [helper.make_tensor_value_info(n, elem, None) for n in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid("ssmpose", domain_version)])


ADD_ORT_SHAPES = [s for s in SHAPES if s[0] in ((0, 64), (5, 32), (2, 3, 64), (2, 2, 3, 768), (1, 4, 0, 48),
                                                  (9, 1031))]


@needs_ort_lib
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("shape,offset,scale", ADD_ORT_SHAPES, ids=[str(s[0]) for s in ADD_ORT_SHAPES])
def test_ort_add_op_matches_the_reference(shape, offset, scale, dtype):
    from onnx import TensorProto
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    x, w, b = make_inputs(shape, dtype, seed=sum(shape) + 3, offset=offset, scale=scale)
    r = make_residual(shape, dtype, sum(shape) + 3)
    y, s = ort_session(add_single_node(shape, elem)).run(None, {"X": x, "R": r, "weight": w, "bias": b})
    assert y.dtype == s.dtype == dtype and y.shape == s.shape == x.shape
    s_ref = add_reference_sum(x, r, w, b)
    np.testing.assert_array_equal(s, s_ref)
    assert_close(y, reference(s_ref, w, b), TOL[dtype], what=f"{shape} {dtype.__name__}")


@needs_ort_lib
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
def test_ort_add_op_matches_onnx_add_and_layer_normalization(dtype):
    """The same numbers as ONNX Add + LayerNormalization(axis=-1, stash_type=1) run by ONNX Runtime itself: S bit for
    bit, Y within a float32 rounding (float32) or one float16 rounding (float16) of ONNX Runtime's LayerNorm."""
    from onnx import TensorProto, helper
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    shape = (4, 6, 96)
    x, w, b = make_inputs(shape, dtype, seed=19, offset=0.7, scale=2.0)
    r = make_residual(shape, dtype, 19)
    nodes = [helper.make_node("Add", ["X", "R"], ["S"]),
             helper.make_node("LayerNormalization", ["S", "weight", "bias"], ["Y"], axis=-1, epsilon=1e-5,
                              stash_type=1)]
    graph = helper.make_graph(nodes, "onnx_add_ln",
                              [helper.make_tensor_value_info("X", elem, shape),
                               helper.make_tensor_value_info("R", elem, shape),
                               helper.make_tensor_value_info("weight", elem, [96]),
                               helper.make_tensor_value_info("bias", elem, [96])],
                              [helper.make_tensor_value_info("Y", elem, shape),
                               helper.make_tensor_value_info("S", elem, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    feeds = {"X": x, "R": r, "weight": w, "bias": b}
    onnx_y, onnx_s = ort_session(model, register=False).run(None, feeds)
    y, s = ort_session(add_single_node(shape, elem)).run(None, feeds)
    np.testing.assert_array_equal(s, onnx_s)
    atol = (2e-6 if dtype == np.float32 else 2.0 ** -10) * np.abs(onnx_y.astype(np.float64)).max()
    np.testing.assert_allclose(y.astype(np.float64), onnx_y.astype(np.float64), rtol=0, atol=atol)


@needs_ort_lib
def test_ort_add_op_errors():
    from onnx import TensorProto
    from onnxruntime.capi import onnxruntime_pybind11_state as errors
    x, w, b = make_inputs((2, 3, 8), np.float32)
    r = make_residual((2, 3, 8), np.float32, 0)
    session = ort_session(add_single_node((2, 3, 8)))
    for feeds, message in (
            ({"R": r[:, :, :7]}, r"R must have X's shape \(2, 3, 8\) \(no broadcasting\), got \(2, 3, 7\)"),
            ({"R": r[0]}, r"R must have X's shape \(2, 3, 8\) \(no broadcasting\), got \(3, 8\)"),
            ({"R": r[:1]}, r"R must have X's shape \(2, 3, 8\) \(no broadcasting\), got \(1, 3, 8\)"),
            ({"weight": w[:7]}, r"weight must be \(C,\) = \(8,\) for X of shape \(2, 3, 8\), got \(7,\)"),
            ({"bias": b.reshape(1, 8)}, r"bias must be \(C,\) = \(8,\) for X of shape \(2, 3, 8\), got \(1, 8\)"),
            ({"X": np.array(1.0, np.float32), "R": np.array(1.0, np.float32), "weight": w[:1], "bias": b[:1]},
             r"X must have rank >= 1 \(it is normalised over its last axis\), got shape \(\)"),
            ({"X": np.zeros((2, 0), np.float32), "R": np.zeros((2, 0), np.float32), "weight": w[:0], "bias": b[:0]},
             r"the last dimension C of X must be >= 1, got shape \(2, 0\)")):
        bad = {"X": x, "R": r, "weight": w, "bias": b, **feeds}
        with pytest.raises(errors.InvalidArgument, match="AddLayerNorm: " + message) as info:
            session.run(None, bad)
        assert "add_ln_node" in str(info.value)
    for name in ("R", "weight", "bias"):
        mixed = ort_session(add_single_node((2, 3, 8), types={name: TensorProto.FLOAT16}))
        feeds = {"X": x, "R": r, "weight": w, "bias": b}
        feeds[name] = feeds[name].astype(np.float16)
        with pytest.raises(errors.InvalidArgument,
                           match=f"AddLayerNorm: input '{name}' has element type float16, expected float32"):
            mixed.run(None, feeds)
    for eps in (0.0, -1e-5, float("inf"), float("nan")):
        with pytest.raises(Exception, match="AddLayerNorm: attribute epsilon must be finite and > 0"):
            ort_session(add_single_node((2, 3, 8), epsilon=eps))
    with pytest.raises(Exception, match="AddLayerNorm: attribute 'epsilon' must be a float, got a string"):
        ort_session(add_single_node((2, 3, 8), epsilon="small"))
    # S is a required output: a node that lists only Y is refused when the session is created
    with pytest.raises(Exception, match=r"AddLayerNorm.* has output size 1 not in range \[min=2, max=2\]"):
        ort_session(add_single_node((2, 3, 8), outputs=("Y",)))


@needs_ort_lib
def test_ort_add_op_domain_versions():
    """AddLayerNorm exists from domain version 4 on (ONNX Runtime >= 1.17); a version-4 graph still runs LayerNorm."""
    from onnx import helper
    if ort_version() >= (1, 17):
        for version in (1, 2, 3):
            with pytest.raises(Exception, match="AddLayerNorm.* is not a registered function/op"):
                ort_session(add_single_node((2, 8), domain_version=version))
    model = add_single_node((2, 3, 8))
    model.graph.node.append(helper.make_node("LayerNorm", ["S", "weight", "bias"], ["Y2"], domain="ssmpose"))
    model.graph.output.append(helper.make_tensor_value_info("Y2", 1, None))
    x, w, b = make_inputs((2, 3, 8), np.float32, seed=23)
    r = make_residual((2, 3, 8), np.float32, 23)
    y, s, y2 = ort_session(model).run(None, {"X": x, "R": r, "weight": w, "bias": b})
    np.testing.assert_array_equal(y, y2)  # LayerNorm of the stored S: the fused op's Y
