"""MultiKernelDepthwiseConv (ssmpose domain version 4): the CPU kernel through ctypes and the ONNX Runtime op on the
CPU EP, against the float64 reference `multi_kernel_depthwise_conv_reference` (docs/ops.md).

Tolerances are per element, from the arithmetic. Each output value is bias + n taps (n <= k^2 of its group),
accumulated in float32: at most 2 roundings per tap (product and sum; one with FMA), so the sum's error is below
2 (n + 1) u32 M, where M = |bias| + sum |x * w| (the same convolution of |x| and |w|, u32 = 2^-24). GELU then
multiplies that error by at most max |gelu'| < 1.13 and adds its own evaluation error: a few float32 roundings
and the kernel's erf approximation (within 2.6 u32 of erf, absolute), below 8 u32 |z| <= 8 u32 M
(test_cpu_kernel_gelu_is_the_erf_form measures it alone). float16 / bfloat16 outputs are then rounded
once: + u_t (|ref| + e32), u_t = 2^-11 / 2^-8, plus half the smallest float16 subnormal (2^-25) for the gradual
underflow of float16. The inputs are rounded to the type before the reference sees them, so input rounding is not
an error. The float32 path and the float16 / bfloat16 paths run the same float32 arithmetic, so the latter are
bit-identical to the float32 kernel's output rounded.

The weight taps outside each group's central k x k are NaN in every test: the contract says they are never read.

Tests of the compiled libraries skip when they are not built, unless SSMPOSE_REQUIRE_KERNELS=1 (CI).
"""
from __future__ import annotations

import ctypes
from typing import NamedTuple, Sequence

import numpy as np
import pytest
import torch

from ssmpose.custom_ops import kernel_library as kl
from ssmpose.custom_ops import ort_library
from ssmpose.custom_ops.reference import multi_kernel_depthwise_conv_reference

from built_libraries import cuda_kernel_library, require_built

LIB = kl.cpu_library()
REASON = kl.unavailable_reason("cpu")
needs_lib = pytest.mark.skipif(LIB is None, reason=f"CPU kernel library not built: {REASON}")
ORT_LIB = ort_library.ort_library_path()
needs_ort_lib = pytest.mark.skipif(ORT_LIB is None, reason=f"libssmpose_ort.so not built: "
                                                              f"{ort_library.unavailable_reason()}")

SSM_OK, NULL_POINTER, BAD_SIZE, BAD_DTYPE, UNSUPPORTED = 0, 1, 2, 3, 4
U32 = 2.0 ** -24
UNIT = {torch.float32: 0.0, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}  # output rounding
CODES = {torch.float32: kl.SSM_FLOAT32, torch.float16: kl.SSM_FLOAT16, torch.bfloat16: kl.SSM_BFLOAT16}
ACTIVATIONS = {"none": kl.SSM_ACTIVATION_NONE, "gelu": kl.SSM_ACTIVATION_GELU}
GELU_SLOPE = 1.13  # max |gelu'(z)| = 1.1289 (at z = sqrt 2)


CUDA = cuda_kernel_library()
needs_cuda_lib = pytest.mark.skipif(CUDA is None, reason="CUDA kernel library not built")


def test_libraries_present():
    """Fails in CI (SSMPOSE_REQUIRE_KERNELS=1) when a library is missing; skips elsewhere."""
    require_built({"CPU kernels": LIB, "libssmpose_ort": ORT_LIB})
    assert LIB.ssm_abi_version() == kl.ABI_VERSION == 6
    assert ort_library.library_info()["version"] == ort_library.ORT_LIBRARY_VERSION == 7


# ------------------------------------------------------------------------------------------------
# Cases and data


def quarters(channels: int):
    """HRVMamba's LPU split: four groups, the remainder of C / 4 on the first."""
    q = channels // 4
    return [channels - 3 * q, q, q, q]


class Case(NamedTuple):
    name: str
    shape: tuple  # (B, H, W, C)
    kernel_sizes: Sequence[int]
    group_channels: Sequence[int]
    kernel_max: int
    shuffle: int
    activation: str


def hrv(name, shape, **changes):
    """HRVMamba's LPU: kernels 3/5/7/9 over the quarters, K = 9, shuffle 4, GELU."""
    fields = dict(name=name, shape=shape, kernel_sizes=[3, 5, 7, 9], group_channels=quarters(shape[3]), kernel_max=9,
                  shuffle=4, activation="gelu")
    fields.update(changes)
    return Case(**fields)


CASES = [
    hrv("hrv_c32", (1, 12, 9, 32)),
    hrv("hrv_c64", (2, 8, 6, 64)),
    hrv("hrv_c128", (1, 6, 10, 128)),
    hrv("hrv_c256", (1, 4, 5, 256)),          # H, W below the largest kernel
    hrv("image_1x1", (2, 1, 1, 32)),
    hrv("h_below_kernel", (1, 2, 13, 32)),
    hrv("w_below_kernel", (1, 11, 3, 16)),
    hrv("shuffle_1", (1, 9, 8, 32), shuffle=1),
    hrv("activation_none", (1, 9, 8, 32), activation="none"),
    hrv("batch_0", (0, 5, 5, 32)),
    hrv("c30_shuffle_1", (1, 8, 7, 30), shuffle=1),           # groups [9, 7, 7, 7]
    hrv("c7_shuffle_1_none", (2, 5, 6, 7), shuffle=1, activation="none"),  # groups [4, 1, 1, 1]
    hrv("c30_shuffle_3", (1, 5, 5, 30), shuffle=3),
    Case("one_group", (2, 7, 6, 24), [5], [24], 5, 1, "none"),
    Case("kernel_max_above_every_group", (1, 6, 7, 12), [3, 5], [8, 4], 11, 2, "gelu"),
    Case("kernels_1_and_15", (1, 17, 16, 6), [1, 15], [3, 3], 15, 2, "gelu"),
    Case("sixteen_groups", (1, 5, 6, 48), [1, 3, 5, 7] * 4, [3] * 16, 7, 8, "gelu"),
]
CASE_IDS = [c.name for c in CASES]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["float32", "float16", "bfloat16"]


def make_inputs(case: Case, dtype=torch.float32, seed=0):
    """x, weight, bias in `dtype`; the taps outside each group's central k x k are NaN."""
    g = torch.Generator().manual_seed(seed)
    B, H, W, C = case.shape
    K = case.kernel_max
    x = torch.randn(B, H, W, C, generator=g)
    weight = torch.full((C, K, K), float("nan"))
    start = 0
    for k, c in zip(case.kernel_sizes, case.group_channels):
        lo = K // 2 - k // 2
        weight[start:start + c, lo:lo + k, lo:lo + k] = torch.randn(c, k, k, generator=g) / k
        start += c
    bias = 0.5 * torch.randn(C, generator=g)
    return x.to(dtype), weight.to(dtype), bias.to(dtype)


def reference64(case: Case, x, weight, bias, activation=None):
    """float64 reference on the inputs as given (already rounded to their type)."""
    return multi_kernel_depthwise_conv_reference(
        x.double(), weight.double(), bias.double(), case.kernel_sizes, case.group_channels, case.shuffle,
        case.activation if activation is None else activation)


def error_bound(case: Case, x, weight, bias, ref64, dtype):
    """Per-element bound of |kernel - reference| (module docstring)."""
    magnitude = reference64(case, x.abs(), weight.abs(), bias.abs(), activation="none")
    taps = max(case.kernel_sizes) ** 2
    e32 = 2 * (taps + 1) * U32 * magnitude
    if case.activation == "gelu":
        e32 = GELU_SLOPE * e32 + 8 * U32 * magnitude
    subnormal = 2.0 ** -25 if dtype == torch.float16 else 0.0
    return e32 + UNIT[dtype] * (ref64.abs() + e32) + subnormal


def assert_within_bound(actual, ref64, bound, what):
    err = (actual.double() - ref64).abs()
    assert actual.shape == ref64.shape, what
    if err.numel() == 0:
        return
    assert torch.isfinite(actual).all(), f"{what}: non-finite output"
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"{what}: error {err.max().item():.3e} exceeds the bound (worst ratio {worst:.2f})"


# ------------------------------------------------------------------------------------------------
# CPU kernel through ctypes


def dw_shape(batch, height, width, channels, kernel_max, kernel_sizes, group_channels, shuffle=1, activation=0,
             dtype=kl.SSM_FLOAT32, num_groups=None):
    groups = (ctypes.c_int32 * kl.DWCONV_MAX_GROUPS)(*group_channels)
    kernels = (ctypes.c_int32 * kl.DWCONV_MAX_GROUPS)(*kernel_sizes)
    n = len(kernel_sizes) if num_groups is None else num_groups
    return kl.DwConvShape(batch, height, width, channels, kernel_max, n, groups, kernels, shuffle, activation, dtype)


def case_shape(case: Case, dtype):
    return dw_shape(*case.shape, case.kernel_max, case.kernel_sizes, case.group_channels, case.shuffle,
                    ACTIVATIONS[case.activation], CODES[dtype])


_NOT_NULL = torch.zeros(1)


def ptr(t):
    """The data pointer; an empty tensor (batch 0) gets a valid dummy one, as the kernel checks pointers anyway."""
    return t.data_ptr() if t.numel() else _NOT_NULL.data_ptr()


def kernel(case: Case, x, weight, bias, threads=0):
    """Calls ssm_depthwise_conv_fwd_cpu on contiguous CPU tensors."""
    x, weight, bias = x.contiguous(), weight.contiguous(), bias.contiguous()
    y = torch.empty_like(x)
    shape = case_shape(case, x.dtype)
    st = LIB.ssm_depthwise_conv_fwd_cpu(ctypes.byref(shape), ptr(x), ptr(weight), ptr(bias), ptr(y), threads)
    assert st == SSM_OK, f"status {st}: {LIB.ssm_status_string(st).decode()}"
    return y


@needs_lib
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cpu_kernel_matches_the_reference(case, dtype):
    x, w, b = make_inputs(case, dtype, seed=sum(case.shape))
    y = kernel(case, x, w, b)
    assert y.dtype == dtype
    ref = reference64(case, x, w, b)
    assert_within_bound(y, ref, error_bound(case, x, w, b, ref, dtype), f"{case.name} {dtype}")


@needs_lib
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_cpu_kernel_half_paths_round_the_float32_result(dtype):
    """float16 / bfloat16 convert to float32, run the float32 arithmetic and round once: bit-identical to the
    float32 kernel's output rounded (same inputs)."""
    for case in (CASES[0], CASES[10], CASES[15]):
        x, w, b = make_inputs(case, dtype, seed=3)
        y = kernel(case, x, w, b)
        y32 = kernel(case, x.float(), w.float(), b.float())
        assert torch.equal(y.view(torch.int16), y32.to(dtype).view(torch.int16)), case.name


@needs_lib
def test_cpu_kernel_is_deterministic_across_thread_counts():
    for case, dtype in ((hrv("many_rows", (3, 40, 24, 32)), torch.float32),
                        (hrv("many_rows_f16", (2, 33, 20, 64)), torch.float16)):
        x, w, b = make_inputs(case, dtype, seed=5)
        ys = [kernel(case, x, w, b, threads=t) for t in (1, 2, 3, 0)]
        for y in ys[1:]:
            assert torch.equal(y, ys[0]), case.name


@needs_lib
def test_cpu_kernel_propagates_nan_and_inf_to_the_window_only():
    """A NaN / inf input reaches exactly the outputs whose window holds it, as in the reference."""
    case = hrv("nan", (1, 12, 11, 32), activation="none")  # GELU(-inf) is NaN: keep inf and NaN apart
    x, w, b = make_inputs(case, seed=7)
    x[0, 5, 4, 3] = float("nan")
    x[0, 0, 10, 30] = float("inf")
    y = kernel(case, x, w, b)
    ref = reference64(case, x, w, b)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    assert torch.isnan(y).sum() == 9  # channel 3 is in the 3x3 group (shuffled to one output channel)
    assert torch.isinf(y).sum() == 25  # channel 30 in the 9x9 group, at a corner: a 5x5 window
    finite = torch.isfinite(ref)
    bound = error_bound(case, x.nan_to_num(0, 0, 0), w, b, ref.nan_to_num(0, 0, 0), torch.float32)
    assert ((y.double() - ref).abs()[finite] <= bound[finite]).all()


@needs_lib
def test_cpu_kernel_gelu_is_the_erf_form():
    """The activation alone (1x1 kernels of weight 1, bias 0, so z = x exactly) over [-10, 10]: within 8 u32 |x| of
    the float64 erf GELU. The tanh approximation is off by up to ~5e-4 |x| (about 8000 u32 |x|)."""
    x = torch.linspace(-10, 10, 40001, dtype=torch.float32)
    x = torch.cat([x, torch.tensor([0.0, -0.0, 1e-30, -1e-30, 3e38, -3e38])])
    n = x.numel()
    case = Case("gelu", (1, 1, 1, n), [1], [n], 1, 1, "gelu")
    y = kernel(case, x.reshape(1, 1, 1, n), torch.ones(n, 1, 1), torch.zeros(n)).reshape(n)
    x64 = x.double()
    ref = torch.nn.functional.gelu(x64)
    err = (y.double() - ref).abs()
    finite = x.abs() < 1e38
    assert (err[finite] <= 8 * U32 * x64.abs()[finite]).all(), err.max().item()
    assert y[-2].item() == pytest.approx(3e38, rel=1e-6) and y[-1].item() == 0.0  # no overflow; gelu(-3e38) = -0
    assert torch.isnan(kernel(case._replace(shape=(1, 1, 1, 1), group_channels=[1]),
                              torch.tensor([float("nan")]).reshape(1, 1, 1, 1), torch.ones(1, 1, 1),
                              torch.zeros(1))).all()


# Argument checks: every field of the shape before the pointers, so NULL pointers answer NULL_POINTER for a valid
# shape and the shape's error otherwise (no memory touched).
def hrv_shape(**changes):
    fields = dict(batch=2, height=8, width=6, channels=32, kernel_max=9, kernel_sizes=[3, 5, 7, 9],
                  group_channels=[8, 8, 8, 8], shuffle=4, activation=kl.SSM_ACTIVATION_GELU, dtype=kl.SSM_FLOAT32)
    fields.update(changes)
    return dw_shape(**fields)


ARG_CASES = [
    ("valid", hrv_shape(), NULL_POINTER),
    ("batch_0", hrv_shape(batch=0), NULL_POINTER),
    ("1x1_image", hrv_shape(height=1, width=1), NULL_POINTER),
    ("float16", hrv_shape(dtype=kl.SSM_FLOAT16), NULL_POINTER),
    ("bfloat16", hrv_shape(dtype=kl.SSM_BFLOAT16), NULL_POINTER),
    ("kernel_max_15", hrv_shape(kernel_max=15, kernel_sizes=[15, 1, 3, 5]), NULL_POINTER),
    ("sixteen_groups", hrv_shape(kernel_sizes=[3] * 16, group_channels=[2] * 16), NULL_POINTER),
    ("entries_past_num_groups_ignored", hrv_shape(kernel_sizes=[3, 5, 7, 9, 4, 0, -1],
                                                  group_channels=[8, 8, 8, 8, 0, -5], num_groups=4), NULL_POINTER),
    ("activation_none", hrv_shape(activation=kl.SSM_ACTIVATION_NONE), NULL_POINTER),
    ("shuffle_1", hrv_shape(shuffle=1), NULL_POINTER),
    ("shuffle_32", hrv_shape(shuffle=32), NULL_POINTER),
    ("dtype", hrv_shape(dtype=7), BAD_DTYPE),
    ("dtype_negative", hrv_shape(dtype=-1), BAD_DTYPE),
    ("batch_negative", hrv_shape(batch=-1), BAD_SIZE),
    ("height_0", hrv_shape(height=0), BAD_SIZE),
    ("width_0", hrv_shape(width=0), BAD_SIZE),
    ("height_negative", hrv_shape(height=-3), BAD_SIZE),
    ("channels_0", hrv_shape(channels=0, group_channels=[0, 0, 0, 0]), BAD_SIZE),
    ("kernel_max_even", hrv_shape(kernel_max=10), BAD_SIZE),
    ("kernel_max_0", hrv_shape(kernel_max=0, kernel_sizes=[1, 1, 1, 1]), BAD_SIZE),
    ("kernel_max_17", hrv_shape(kernel_max=17), BAD_SIZE),
    ("kernel_max_negative", hrv_shape(kernel_max=-9), BAD_SIZE),
    ("num_groups_0", hrv_shape(num_groups=0), BAD_SIZE),
    ("num_groups_17", hrv_shape(num_groups=17), BAD_SIZE),
    ("num_groups_negative", hrv_shape(num_groups=-1), BAD_SIZE),
    ("kernel_size_even", hrv_shape(kernel_sizes=[3, 4, 7, 9]), BAD_SIZE),
    ("kernel_size_0", hrv_shape(kernel_sizes=[3, 5, 0, 9]), BAD_SIZE),
    ("kernel_size_negative", hrv_shape(kernel_sizes=[-3, 5, 7, 9]), BAD_SIZE),
    ("kernel_size_above_kernel_max", hrv_shape(kernel_sizes=[3, 5, 7, 11]), BAD_SIZE),
    ("kernel_size_17", hrv_shape(kernel_max=15, kernel_sizes=[3, 5, 7, 17]), BAD_SIZE),
    ("group_channels_0", hrv_shape(group_channels=[16, 0, 8, 8]), BAD_SIZE),
    ("group_channels_negative", hrv_shape(group_channels=[24, -8, 8, 8]), BAD_SIZE),
    ("group_channels_sum_below", hrv_shape(group_channels=[8, 8, 8, 7]), BAD_SIZE),
    ("group_channels_sum_above", hrv_shape(group_channels=[8, 8, 8, 9]), BAD_SIZE),
    ("shuffle_0", hrv_shape(shuffle=0), BAD_SIZE),
    ("shuffle_negative", hrv_shape(shuffle=-4), BAD_SIZE),
    ("shuffle_not_dividing", hrv_shape(shuffle=3), BAD_SIZE),
    ("shuffle_above_channels", hrv_shape(shuffle=64), BAD_SIZE),
    ("activation_2", hrv_shape(activation=2), UNSUPPORTED),
    ("activation_negative", hrv_shape(activation=-1), UNSUPPORTED),
]


@needs_lib
@pytest.mark.parametrize("shape,expected", [c[1:] for c in ARG_CASES], ids=[c[0] for c in ARG_CASES])
def test_cpu_kernel_argument_checks(shape, expected):
    n = None
    assert LIB.ssm_depthwise_conv_fwd_cpu(ctypes.byref(shape), n, n, n, n, 1) == expected
    assert LIB.ssm_depthwise_conv_fwd_cpu(None, n, n, n, n, 1) == NULL_POINTER


@needs_lib
def test_cpu_kernel_null_data_pointers():
    case = CASES[0]
    x, w, b = make_inputs(case)
    y = torch.empty_like(x)
    shape = case_shape(case, torch.float32)
    for missing in range(4):  # each pointer NULL in turn
        args = [x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr()]
        args[missing] = None
        assert LIB.ssm_depthwise_conv_fwd_cpu(ctypes.byref(shape), *args, 1) == NULL_POINTER


@needs_cuda_lib
@pytest.mark.parametrize("shape,expected", [c[1:] for c in ARG_CASES], ids=[c[0] for c in ARG_CASES])
def test_cuda_kernel_argument_checks(shape, expected):
    """The CUDA entry point checks on the host before any CUDA call: no GPU needed."""
    n = None
    assert CUDA.ssm_depthwise_conv_fwd_cuda(ctypes.byref(shape), n, n, n, n, n) == expected
    assert CUDA.ssm_depthwise_conv_fwd_cuda(None, n, n, n, n, n) == NULL_POINTER


# ------------------------------------------------------------------------------------------------
# ONNX Runtime op (CPU EP)

NP = {torch.float32: np.float32, torch.float16: np.float16}


def elem_type(dtype):
    from onnx import TensorProto
    return {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16}[dtype]


def op_attributes(case: Case):
    return dict(kernel_sizes=list(case.kernel_sizes), group_channels=list(case.group_channels),
                shuffle_groups=case.shuffle, activation=case.activation)


def single_node(dtype=torch.float32, domain_version=4, types=None, **attributes):
    """A graph of one MultiKernelDepthwiseConv node, inputs of unknown shape; `types` overrides the element type
    of inputs by name."""
    from onnx import helper
    elem = elem_type(dtype)
    types = {"X": elem, "weight": elem, "bias": elem, **(types or {})}
    inputs = [helper.make_tensor_value_info(n, types[n], None) for n in ("X", "weight", "bias")]
    attributes.setdefault("plugin_version", "1")
    attributes.setdefault("plugin_namespace", "ssmpose")
    node = helper.make_node("MultiKernelDepthwiseConv", ["X", "weight", "bias"], ["Y"], domain="ssmpose",
                            name="dw_node", **attributes)
    graph = helper.make_graph([node], "dwconv", inputs, [helper.make_tensor_value_info("Y", elem, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                   helper.make_opsetid("ssmpose", domain_version)])


def plain_onnx_chain(case: Case, weight, bias, dtype=torch.float32):
    """The LPU in standard ONNX ops, as the portable export writes it: Transpose to NCHW, Split, one depthwise Conv
    per group (its central k x k weights), Concat, Reshape-Transpose-Reshape (the shuffle, back to channel-last),
    Gelu. X is the only input."""
    from onnx import helper, numpy_helper
    B, H, W, C = case.shape
    K, S = case.kernel_max, case.shuffle
    elem = elem_type(dtype)
    w, b = weight.numpy(), bias.numpy()
    parts = [f"part{g}" for g in range(len(case.kernel_sizes))]
    convs = [f"conv{g}" for g in range(len(case.kernel_sizes))]
    inits = [numpy_helper.from_array(np.array(case.group_channels, np.int64), "split"),
             numpy_helper.from_array(np.array([B, S, C // S, H, W], np.int64), "grouped"),
             numpy_helper.from_array(np.array([B, H, W, C], np.int64), "nhwc")]
    nodes = [helper.make_node("Transpose", ["X"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Split", ["nchw", "split"], parts, axis=1)]
    start = 0
    for g, (k, c) in enumerate(zip(case.kernel_sizes, case.group_channels)):
        lo = K // 2 - k // 2
        inits += [numpy_helper.from_array(np.ascontiguousarray(w[start:start + c, lo:lo + k, lo:lo + k])
                                          .reshape(c, 1, k, k), f"w{g}"),
                  numpy_helper.from_array(np.ascontiguousarray(b[start:start + c]), f"b{g}")]
        nodes.append(helper.make_node("Conv", [parts[g], f"w{g}", f"b{g}"], [convs[g]], group=c, kernel_shape=[k, k],
                                      pads=[k // 2] * 4))
        start += c
    last = "nhwc_out" if case.activation == "gelu" else "Y"
    nodes += [helper.make_node("Concat", convs, ["z"], axis=1),
              helper.make_node("Reshape", ["z", "grouped"], ["z5"]),
              helper.make_node("Transpose", ["z5"], ["z5t"], perm=[0, 3, 4, 2, 1]),
              helper.make_node("Reshape", ["z5t", "nhwc"], [last])]
    if case.activation == "gelu":
        nodes.append(helper.make_node("Gelu", [last], ["Y"]))
    graph = helper.make_graph(nodes, "lpu_chain", [helper.make_tensor_value_info("X", elem, list(case.shape))],
                              [helper.make_tensor_value_info("Y", elem, list(case.shape))], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def ort_session(model, register=True):
    import onnxruntime as ort
    options = ort.SessionOptions()
    if register:
        ort_library.register(options)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_op(case: Case, x, w, b):
    session = ort_session(single_node(x.dtype, **op_attributes(case)))
    return torch.from_numpy(session.run(None, {"X": x.numpy(), "weight": w.numpy(), "bias": b.numpy()})[0])


ORT_CASES = [c for c in CASES if c.name in ("hrv_c32", "hrv_c64", "hrv_c256", "image_1x1", "batch_0",
                                               "c30_shuffle_1", "kernel_max_above_every_group", "one_group",
                                               "sixteen_groups")]


@needs_ort_lib
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("case", ORT_CASES, ids=[c.name for c in ORT_CASES])
def test_ort_op_matches_the_reference(case, dtype):
    x, w, b = make_inputs(case, dtype, seed=sum(case.shape) + 1)
    y = run_op(case, x, w, b)
    assert y.dtype == dtype and y.shape == x.shape
    ref = reference64(case, x, w, b)
    assert_within_bound(y, ref, error_bound(case, x, w, b, ref, dtype), f"{case.name} {dtype}")
    if LIB is not None:  # the op runs the CPU kernel: the same bits
        assert torch.equal(y, kernel(case, x, w, b))


CHAIN_CASES = [c for c in CASES if c.name in ("hrv_c32", "hrv_c128", "w_below_kernel", "c30_shuffle_3",
                                                 "kernel_max_above_every_group", "activation_none")]


@needs_ort_lib
@pytest.mark.parametrize("case", CHAIN_CASES, ids=[c.name for c in CHAIN_CASES])
def test_ort_op_matches_the_plain_onnx_chain(case):
    """The eleven-node standard-ONNX LPU, run by ONNX Runtime's own kernels on the same data: both are within the
    float32 bound of the float64 reference, so they differ by at most twice that."""
    x, w, b = make_inputs(case, torch.float32, seed=11)
    chain = ort_session(plain_onnx_chain(case, w, b), register=False).run(None, {"X": x.numpy()})[0]
    ours = run_op(case, x, w, b)
    ref = reference64(case, x, w, b)
    bound = error_bound(case, x, w, b, ref, torch.float32)
    assert_within_bound(torch.from_numpy(chain), ref, bound, f"{case.name}: ONNX chain vs reference")
    assert_within_bound(ours, torch.from_numpy(chain).double(), 2 * bound, f"{case.name}: op vs ONNX chain")


@needs_ort_lib
def test_ort_op_empty_images():
    """B = 0, H = 0 or W = 0: an empty output of X's shape (the kernel is not called)."""
    case = CASES[0]
    _, w, b = make_inputs(case)
    session = ort_session(single_node(**op_attributes(case)))
    for shape in ((0, 4, 4, 32), (2, 0, 4, 32), (2, 4, 0, 32)):
        y = session.run(None, {"X": np.zeros(shape, np.float32), "weight": w.numpy(), "bias": b.numpy()})[0]
        assert y.shape == shape


ATTRIBUTE_ERRORS = [
    (dict(group_channels=[32]), r"missing required attribute 'kernel_sizes' \(ints\)"),
    (dict(kernel_sizes=[3]), r"missing required attribute 'group_channels' \(ints\)"),
    (dict(kernel_sizes=3, group_channels=[32]), r"attribute 'kernel_sizes' must be a list of ints, got an int"),
    (dict(kernel_sizes=[3.0], group_channels=[32]), r"attribute 'kernel_sizes' must be a non-empty list of ints"),
    (dict(kernel_sizes=[3], group_channels="32"), r"attribute 'group_channels' must be a list of ints, got a string"),
    (dict(kernel_sizes=[3, 4], group_channels=[16, 16]),
     r"attribute kernel_sizes must hold odd sizes in \[1, 15\], got \[3, 4\]"),
    (dict(kernel_sizes=[17], group_channels=[32]),
     r"attribute kernel_sizes must hold odd sizes in \[1, 15\], got \[17\]"),
    (dict(kernel_sizes=[-1], group_channels=[32]),
     r"attribute kernel_sizes must hold odd sizes in \[1, 15\], got \[-1\]"),
    (dict(kernel_sizes=[3] * 17, group_channels=[2] * 17),
     r"attribute kernel_sizes has 17 values, at most 16 channel groups are supported"),
    (dict(kernel_sizes=[3, 5], group_channels=[32]),
     r"attributes kernel_sizes \[3, 5\] and group_channels \[32\] must have the same length"),
    (dict(kernel_sizes=[3, 5], group_channels=[32, 0]),
     r"attribute group_channels must hold channel counts in \[1, 2\^31 - 1\], got \[32, 0\]"),
    (dict(kernel_sizes=[3], group_channels=[1 << 31]),
     r"attribute group_channels must hold channel counts in \[1, 2\^31 - 1\], got \[2147483648\]"),
    (dict(kernel_sizes=[3], group_channels=[32], shuffle_groups=0),
     r"attribute shuffle_groups must be in \[1, 2147483647\], got 0"),
    (dict(kernel_sizes=[3], group_channels=[32], shuffle_groups=3),
     r"attribute shuffle_groups = 3 must divide the channel count C = 32 \(the sum of group_channels \[32\]\)"),
    (dict(kernel_sizes=[3], group_channels=[32], shuffle_groups=2.0),
     r"attribute 'shuffle_groups' must be an int, got a float"),
    (dict(kernel_sizes=[3], group_channels=[32], activation="relu"),
     r'attribute activation must be "none" or "gelu", got "relu"'),
    (dict(kernel_sizes=[3], group_channels=[32], activation="GELU"),
     r'attribute activation must be "none" or "gelu", got "GELU"'),
    (dict(kernel_sizes=[3], group_channels=[32], activation=1), r"attribute 'activation' must be a string, got an int"),
]


@needs_ort_lib
@pytest.mark.parametrize("attributes,message", ATTRIBUTE_ERRORS, ids=[m[:40] for _, m in ATTRIBUTE_ERRORS])
def test_ort_op_attribute_errors_at_session_creation(attributes, message):
    with pytest.raises(Exception, match="MultiKernelDepthwiseConv: " + message):
        ort_session(single_node(**attributes))


@needs_ort_lib
def test_ort_op_shape_errors_at_run():
    from onnxruntime.capi import onnxruntime_pybind11_state as errors
    case = CASES[0]  # C = 32, kernels 3/5/7/9
    x, w, b = (t.numpy() for t in make_inputs(case))
    session = ort_session(single_node(**op_attributes(case)))
    for feeds, message in (
            ({"X": x[0]}, r"X must be \(B, H, W, C\) \(channel-last\), got shape \(12, 9, 32\)"),
            ({"X": x[..., :30]}, r"X has C = 30 channels \(shape \(1, 12, 9, 30\)\), but group_channels "
                                 r"\[8, 8, 8, 8\] sum to 32"),
            ({"weight": w[:, :7, :7]}, r"weight has K = 7 \(shape \(32, 7, 7\)\), smaller than the largest of "
                                       r"kernel_sizes \[3, 5, 7, 9\]"),
            ({"weight": w[:, :8, :8]}, r"weight must be \(C, K, K\) = \(32, K, K\) with K odd in \[1, 15\], got "
                                       r"\(32, 8, 8\)"),
            ({"weight": w[:, :, :7]}, r"weight must be \(C, K, K\) = \(32, K, K\) with K odd in \[1, 15\], got "
                                      r"\(32, 9, 7\)"),
            ({"weight": w[:16]}, r"weight must be \(C, K, K\) = \(32, K, K\) with K odd in \[1, 15\], got "
                                 r"\(16, 9, 9\)"),
            ({"weight": np.zeros((32, 17, 17), np.float32)}, r"weight must be \(C, K, K\) = \(32, K, K\) with K "
                                                             r"odd in \[1, 15\], got \(32, 17, 17\)"),
            ({"weight": w.reshape(32, 81)}, r"weight must be \(C, K, K\) = \(32, K, K\) with K odd in \[1, 15\], "
                                            r"got \(32, 81\)"),
            ({"bias": b[:4]}, r"bias must be \(C,\) = \(32,\), got \(4,\)"),
            ({"bias": b.reshape(1, 32)}, r"bias must be \(C,\) = \(32,\), got \(1, 32\)")):
        bad = {"X": x, "weight": w, "bias": b, **feeds}
        with pytest.raises(errors.InvalidArgument, match="MultiKernelDepthwiseConv: " + message) as info:
            session.run(None, bad)
        assert "dw_node" in str(info.value)  # ONNX Runtime names the node
    from onnx import TensorProto
    for name in ("weight", "bias"):
        mixed = ort_session(single_node(types={name: TensorProto.FLOAT16}, **op_attributes(case)))
        feeds = {"X": x, "weight": w, "bias": b}
        feeds[name] = feeds[name].astype(np.float16)
        with pytest.raises(errors.InvalidArgument, match=f"MultiKernelDepthwiseConv: input '{name}' has element "
                                                         f"type float16, expected float32"):
            mixed.run(None, feeds)


@needs_ort_lib
def test_ort_op_float64_is_not_registered():
    from onnx import TensorProto, helper
    model = single_node(kernel_sizes=[3], group_channels=[4])
    for value in list(model.graph.input) + list(model.graph.output):
        value.CopyFrom(helper.make_tensor_value_info(value.name, TensorProto.DOUBLE, None))
    with pytest.raises(Exception, match="MultiKernelDepthwiseConv"):
        ort_session(model).run(None, {"X": np.zeros((1, 2, 2, 4)), "weight": np.zeros((4, 3, 3)),
                                      "bias": np.zeros(4)})


@needs_ort_lib
def test_ort_domain_versions():
    """MultiKernelDepthwiseConv exists from domain version 4 on (where ONNX Runtime reads op versions, >= 1.17)."""
    import onnxruntime as ort
    attributes = dict(kernel_sizes=[3], group_channels=[4])
    if tuple(int(v) for v in ort.__version__.split(".")[:2]) >= (1, 17):
        for version in (1, 2, 3):
            with pytest.raises(Exception, match="MultiKernelDepthwiseConv.* is not a registered function/op"):
                ort_session(single_node(domain_version=version, **attributes))
    ort_session(single_node(domain_version=5, **attributes))  # a later version still resolves to it
