"""MultiKernelDepthwiseConv (ssmpose domain version 4) in the OpenVINO extension (libssmpose_ov.so), whose ONNX
frontend conversion builds OpenVINO's own ops (Transpose, VariadicSplit, per group a Slice of the weight input and
a GroupConvolution plus bias, Concat, the channel shuffle as Reshape/Transpose/Reshape, Gelu; Convert to f32 and
back for float16), on OpenVINO's CPU device, against the float64 reference
(`custom_ops.reference.multi_kernel_depthwise_conv_reference`) on the inputs as the runtime sees them.

- One-node graphs (opset imports {"": 18, "ssmpose": 4}), float32 and float16: HRVMamba's LPU (C = 32, 64, 128,
  256 at its stage resolutions; kernels 3/5/7/9 over channel quarters, the remainder in the first; shuffle 4;
  gelu) and odd nodes (one group, shuffle 1, activation none or left out, H or W smaller than the kernel,
  kernel_max larger than every group's kernel, kernel 1, 16 groups, shuffle_groups = C, channel counts that are not
  multiples of 4). The weight taps outside each group's central k x k hold NaN, +-inf and the type's largest
  value, so a tap read that should not be shows. Tolerance: max abs error <= 2e-6 (float32) or 1e-3 (float16)
  of max|reference|, plus 1e-6.
- Symbolic batch, H, W and K: one compiled model runs several shapes, B = 0 included.
- Malformed nodes are refused when the model is read, with an error naming MultiKernelDepthwiseConv, the node and
  the problem.

Tests skip when the extension is not built, unless SSMPOSE_REQUIRE_KERNELS=1 (CI; test_openvino_extension.py
fails there).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmpose.custom_ops import openvino_library
from ssmpose.custom_ops.reference import multi_kernel_depthwise_conv_reference

ov = pytest.importorskip("openvino")
from onnx import AttributeProto, TensorProto, helper, numpy_helper  # noqa: E402

LIB = openvino_library.openvino_library_path()
REASON = openvino_library.unavailable_reason()
needs_lib = pytest.mark.skipif(LIB is None, reason=f"libssmpose_ov.so not built: {REASON}")

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
NP_TYPES = {F32: np.float32, F16: np.float16, TensorProto.DOUBLE: np.float64}
TOLERANCE = {F32: 2e-6, F16: 1e-3}
NAMES = ["X", "weight", "bias"]
OP = "ssmpose MultiKernelDepthwiseConv node 'dw0'"


def hrvmamba_groups(channels):
    """HRVMamba's LPU: kernels 3/5/7/9 over channel quarters, the remainder in the first."""
    quarter = channels // 4
    return [3, 5, 7, 9], [quarter + channels % 4, quarter, quarter, quarter]


def node_model(x_shape, weight_shape=None, bias_shape=None, elem=F32, types=None, inputs=None, initializers=None,
               **attrs):
    """A graph of one MultiKernelDepthwiseConv node named 'dw0'. Shapes may hold symbolic dimensions (strings);
    weight defaults to (C, 9, 9) and bias to (C) with C = X's last dimension; `types` {name: element type} where
    one differs from `elem`; `initializers` {name: array} become initializers instead of graph inputs. Attributes
    are written as given (None: left out)."""
    types, initializers = types or {}, initializers or {}
    inputs = NAMES if inputs is None else inputs
    channels = x_shape[-1] if x_shape else 1
    shapes = {"X": x_shape, "weight": weight_shape or [channels, 9, 9], "bias": bias_shape or [channels]}
    graph_inputs = [helper.make_tensor_value_info(n, types.get(n, elem), shapes.get(n, [channels]))
                    for n in dict.fromkeys(inputs) if n and n not in initializers]
    inits = [numpy_helper.from_array(a, n) for n, a in initializers.items()]
    node = helper.make_node("MultiKernelDepthwiseConv", inputs, ["Y"], domain="ssmpose", name="dw0")
    for key, value in attrs.items():
        if value is None:
            continue
        node.attribute.append(value if isinstance(value, AttributeProto) else helper.make_attribute(key, value))
    graph = helper.make_graph([node], "depthwise_conv", graph_inputs,
                              [helper.make_tensor_value_info("Y", elem, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ssmpose", 4)])
    model.ir_version = 8
    return model


def read_model(model):
    core = ov.Core()
    openvino_library.add_to_core(core)
    return core, core.read_model(model.SerializeToString(), b"")


def compile_model(model):
    core, read = read_model(model)
    return core.compile_model(read, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def arrays_of(shape, kernel_max, kernel_sizes, group_channels, np_type, seed=0):
    """Inputs rounded to np_type. The weight taps outside each group's central k x k are NaN, +-inf and the type's
    largest value (the op never reads them)."""
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    weight = (rng.standard_normal((channels, kernel_max, kernel_max)) / kernel_max).astype(np_type)
    garbage = np.array([np.nan, np.inf, -np.inf, np.finfo(np_type).max], np_type)
    start = 0
    for k, c in zip(kernel_sizes, group_channels):
        lo = kernel_max // 2 - k // 2
        outside = np.ones((kernel_max, kernel_max), bool)
        outside[lo:lo + k, lo:lo + k] = False
        taps = weight[start:start + c]
        taps[:, outside] = rng.choice(garbage, size=(c, int(outside.sum())))
        start += c
    return {"X": rng.standard_normal(shape).astype(np_type), "weight": weight,
            "bias": (0.5 * rng.standard_normal(channels)).astype(np_type)}


def reference(arrays, kernel_sizes, group_channels, shuffle_groups=1, activation="none"):
    """The float64 reference on the inputs as the runtime sees them."""
    x, w, b = (torch.from_numpy(arrays[n].astype(np.float64)) for n in NAMES)
    return multi_kernel_depthwise_conv_reference(x, w, b, kernel_sizes, group_channels, shuffle_groups,
                                                 activation).numpy()


def check(actual, expected, rel, what=""):
    """Returns the max abs error relative to max|expected|."""
    assert np.isfinite(actual).all(), f"{what}: non-finite output"
    err = float(np.abs(actual.astype(np.float64) - expected).max()) if expected.size else 0.0
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    assert err <= rel * scale + 1e-6, f"{what}: max abs err {err:.3e} > {rel:g} * {scale:.3e} + 1e-6"
    return err / scale if scale else err


def run(compiled, arrays):
    return next(iter(compiled(arrays).values()))


# HRVMamba's LPU at its four stage resolutions (256x192 input: 64x48 at C = 32 down to 8x6 at C = 256).
HRVMAMBA = [(2, 64, 48, 32), (2, 32, 24, 64), (2, 16, 12, 128), (2, 8, 6, 256)]


@needs_lib
@pytest.mark.parametrize("elem", [F32, F16], ids=["f32", "f16"])
@pytest.mark.parametrize("shape", HRVMAMBA, ids=lambda s: "x".join(map(str, s)))
def test_hrvmamba_lpu(shape, elem):
    kernels, groups = hrvmamba_groups(shape[-1])
    attrs = dict(kernel_sizes=kernels, group_channels=groups, shuffle_groups=4, activation="gelu")
    arrays = arrays_of(shape, 9, kernels, groups, NP_TYPES[elem], seed=shape[-1])
    y = run(compile_model(node_model(list(shape), elem=elem, **attrs)), arrays)
    assert y.dtype == NP_TYPES[elem] and y.shape == shape
    check(y, reference(arrays, kernels, groups, 4, "gelu"), TOLERANCE[elem], f"{shape}")


# (shape (B, H, W, C), K, kernel_sizes, group_channels, shuffle_groups, activation); None: attribute left out.
ODD = {
    "one_group": ((2, 7, 6, 24), 5, [5], [24], 4, "gelu"),
    "shuffle_1_none": ((2, 9, 8, 32), 9, [3, 5, 7, 9], [8, 8, 8, 8], 1, "none"),
    "defaults": ((1, 6, 5, 16), 7, [7, 3], [10, 6], None, None),
    "h_w_below_kernel": ((3, 2, 3, 20), 9, [3, 5, 7, 9], [5, 5, 5, 5], 4, "gelu"),
    "one_pixel": ((2, 1, 1, 8), 9, [9, 1], [4, 4], 2, "gelu"),
    "kernel_max_above_all": ((2, 10, 7, 36), 15, [3, 5, 7, 9], [9, 9, 9, 9], 4, "gelu"),
    "kernel_1": ((2, 5, 5, 12), 3, [1, 3], [6, 6], 3, "none"),
    "sixteen_groups": ((1, 9, 11, 40), 15, [1, 3, 5, 7, 9, 11, 13, 15] * 2, [3, 2] * 8, 8, "gelu"),
    "shuffle_all": ((2, 4, 6, 10), 5, [5, 3], [7, 3], 10, "none"),
    "odd_channels": ((2, 12, 9, 38), 9, [3, 5, 7, 9], [11, 9, 9, 9], 2, "gelu"),
    "wide": ((1, 3, 40, 8), 11, [11, 1, 5], [2, 3, 3], 1, "gelu"),
}


@needs_lib
@pytest.mark.parametrize("elem", [F32, F16], ids=["f32", "f16"])
@pytest.mark.parametrize("case", list(ODD))
def test_odd_nodes(case, elem):
    shape, kernel_max, kernels, groups, shuffle, activation = ODD[case]
    model = node_model(list(shape), [shape[-1], kernel_max, kernel_max], elem=elem, kernel_sizes=kernels,
                       group_channels=groups, shuffle_groups=shuffle, activation=activation)
    arrays = arrays_of(shape, kernel_max, kernels, groups, NP_TYPES[elem], seed=len(case))
    y = run(compile_model(model), arrays)
    assert y.dtype == NP_TYPES[elem] and y.shape == shape
    expected = reference(arrays, kernels, groups, shuffle or 1, activation or "none")
    check(y, expected, TOLERANCE[elem], case)


@needs_lib
def test_the_shuffle_and_the_groups_are_where_the_contract_puts_them():
    """Each channel's own 1x1 kernel scales it by its index: Y[..., q*S + s] must be (s*P + q + 1) * X[..., s*P + q]
    (channel c of group g reads only weight[c, R, R], the centre, when k_g = 1)."""
    channels, shuffle = 12, 3
    per = channels // shuffle
    x = np.ones((1, 2, 2, channels), np.float32)
    weight = np.full((channels, 3, 3), np.nan, np.float32)
    weight[:, 1, 1] = np.arange(1, channels + 1)
    arrays = {"X": x, "weight": weight, "bias": np.zeros(channels, np.float32)}
    model = node_model([1, 2, 2, channels], [channels, 3, 3], kernel_sizes=[1, 1], group_channels=[5, 7],
                       shuffle_groups=shuffle)
    y = run(compile_model(model), arrays)
    expected = [s * per + q + 1 for q in range(per) for s in range(shuffle)]
    np.testing.assert_array_equal(y[0, 0, 0], np.array(expected, np.float32))


@needs_lib
@pytest.mark.parametrize("elem", [F32, F16], ids=["f32", "f16"])
def test_dynamic_batch(elem):
    """One compiled model with a symbolic batch runs B = 1, 3 and 0."""
    kernels, groups = hrvmamba_groups(64)
    compiled = compile_model(node_model(["batch", 8, 6, 64], elem=elem, kernel_sizes=kernels,
                                        group_channels=groups, shuffle_groups=4, activation="gelu"))
    for batch in (1, 3, 0):
        arrays = arrays_of((batch, 8, 6, 64), 9, kernels, groups, NP_TYPES[elem], seed=batch)
        y = run(compiled, arrays)
        assert y.shape == (batch, 8, 6, 64) and y.dtype == NP_TYPES[elem]
        check(y, reference(arrays, kernels, groups, 4, "gelu"), TOLERANCE[elem], f"batch {batch}")


@needs_lib
def test_symbolic_h_w_and_kernel_max():
    """H, W and K unknown when the model is read: the weight slices are worked out from its shape at run time."""
    kernels, groups = hrvmamba_groups(32)
    compiled = compile_model(node_model(["b", "h", "w", 32], ["c", "k", "k"], kernel_sizes=kernels,
                                        group_channels=groups, shuffle_groups=4, activation="gelu"))
    for seed, (shape, kernel_max) in enumerate([((2, 5, 4, 32), 9), ((1, 13, 3, 32), 13), ((0, 4, 4, 32), 11)]):
        arrays = arrays_of(shape, kernel_max, kernels, groups, np.float32, seed=seed)
        y = run(compiled, arrays)
        assert y.shape == shape
        check(y, reference(arrays, kernels, groups, 4, "gelu"), TOLERANCE[F32], f"{shape} K={kernel_max}")


@needs_lib
def test_symbolic_kernel_max_too_small_fails_when_run():
    """A K known only at run time that is smaller than a group's kernel fails in OpenVINO, not silently."""
    kernels, groups = hrvmamba_groups(32)
    compiled = compile_model(node_model(["b", 4, 4, 32], [32, "k", "k"], kernel_sizes=kernels,
                                        group_channels=groups))
    arrays = arrays_of((1, 4, 4, 32), 7, [3, 5, 7, 7], groups, np.float32)
    with pytest.raises(RuntimeError, match="Reshape"):
        run(compiled, arrays)


@needs_lib
def test_weight_and_bias_as_initializers():
    """The export's form: weight and bias are initializers (OpenVINO folds the slices into constants)."""
    kernels, groups = hrvmamba_groups(64)
    arrays = arrays_of((2, 16, 12, 64), 9, kernels, groups, np.float32, seed=7)
    model = node_model([2, 16, 12, 64], kernel_sizes=kernels, group_channels=groups, shuffle_groups=4,
                       activation="gelu", initializers={"weight": arrays["weight"], "bias": arrays["bias"]})
    y = run(compile_model(model), {"X": arrays["X"]})
    check(y, reference(arrays, kernels, groups, 4, "gelu"), TOLERANCE[F32], "initializers")


@needs_lib
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "symbolic"])
def test_gelu_of_infinities_follows_the_reference(dynamic):
    """gelu(+inf) = +inf, gelu(-inf) = NaN (-inf times 0), as the float64 reference and the ONNX Runtime library
    give; OpenVINO's own Gelu gives NaN for +inf (found by fuzzing)."""
    x = np.array([np.inf, -np.inf, np.nan, 1e30, -1e30, 1.5, -0.5, 0.0], np.float32).reshape(1, 1, 1, 8)
    weight = np.ones((8, 1, 1), np.float32)
    arrays = {"X": x, "weight": weight, "bias": np.zeros(8, np.float32)}
    x_shape = ["b", "h", "w", 8] if dynamic else [1, 1, 1, 8]
    model = node_model(x_shape, [8, 1, 1], kernel_sizes=[1], group_channels=[8], activation="gelu")
    y = run(compile_model(model), arrays)
    expected = reference(arrays, [1], [8], 1, "gelu")
    assert np.isposinf(expected[0, 0, 0, 0]) and np.isnan(expected[0, 0, 0, 1])
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)  # NaN where the reference has NaN


@needs_lib
@pytest.mark.parametrize("shape, shuffle", [((0, 1, 1 << 40, 2), 2), ((0, 1 << 40, 4, 17), 17)],
                         ids=["huge_w", "huge_h"])
def test_empty_batch_with_huge_h_or_w_and_shuffle(shape, shuffle):
    """B = 0 with H or W = 2^40: the shuffle's Reshapes keep the shape (their targets once came from X's ShapeOf,
    which the CPU plugin computed in int32, giving W = 2^31 - 1; found by fuzzing)."""
    channels = shape[-1]
    arrays = {"X": np.zeros(shape, np.float32), "weight": np.ones((channels, 3, 3), np.float32),
              "bias": np.zeros(channels, np.float32)}
    for x_shape in (list(shape), ["b", "h", "w", channels]):
        model = node_model(x_shape, [channels, 3, 3], kernel_sizes=[3], group_channels=[channels],
                           shuffle_groups=shuffle, activation="gelu")
        assert run(compile_model(model), arrays).shape == shape, x_shape


@needs_lib
@pytest.mark.parametrize("elem, converts", [(F32, 0), (F16, 4)], ids=["f32", "f16"])
def test_the_conversion_uses_openvino_ops_only(elem, converts):
    kernels, groups = hrvmamba_groups(32)
    _, model = read_model(node_model(["b", 8, 6, 32], elem=elem, kernel_sizes=kernels, group_channels=groups,
                                     shuffle_groups=4, activation="gelu"))
    ops = model.get_ordered_ops()
    types = [op.get_type_name() for op in ops]
    assert all(op.get_type_info().version_id != "ssmpose" for op in ops), types
    assert types.count("GroupConvolution") == 4 and types.count("Slice") == 4 and types.count("Gelu") == 1, types
    assert types.count("Convert") == converts, types
    # The weight stays a graph input: the slices read the Parameter (through a Convert and a split).
    weight = next(op for op in ops if op.get_type_name() == "Parameter" and op.get_friendly_name() == "weight")
    consumers = {t.get_node().get_type_name() for t in weight.output(0).get_target_inputs()}
    assert consumers == ({"Convert"} if elem == F16 else {"VariadicSplit"}), consumers
    one_group = read_model(node_model(["b", 8, 6, 32], kernel_sizes=[3], group_channels=[32]))[1]
    one_types = [op.get_type_name() for op in one_group.get_ordered_ops()]
    assert "VariadicSplit" not in one_types and "Concat" not in one_types and "Gelu" not in one_types, one_types


# ------------------------------------------------------------------------------------------------
# Malformed nodes

GOOD = dict(kernel_sizes=[3, 5, 7, 9], group_channels=[8, 8, 8, 8], shuffle_groups=4, activation="gelu")


def bad(x_shape=(2, 6, 5, 32), weight_shape=None, bias_shape=None, **changes):
    attrs = dict(GOOD, **changes)
    return lambda: node_model(list(x_shape), weight_shape, bias_shape, **attrs)


def ints(name, values):
    return helper.make_attribute(name, values, attr_type=AttributeProto.INTS)


MALFORMED = {
    "no_kernel_sizes": (bad(kernel_sizes=None), "missing required attribute kernel_sizes"),
    "no_group_channels": (bad(group_channels=None), "missing required attribute group_channels"),
    "kernel_sizes_int": (bad(kernel_sizes=3), "attribute kernel_sizes must be a list of ints, got an int"),
    "kernel_sizes_floats": (bad(kernel_sizes=[3.0, 5.0, 7.0, 9.0]),
                            "attribute kernel_sizes must be a list of ints, got a list of floats"),
    "group_channels_string": (bad(group_channels="8,8,8,8"),
                              "attribute group_channels must be a list of ints, got a string"),
    "lengths": (bad(kernel_sizes=[3, 5, 7]), "kernel_sizes has 3 values but group_channels has 4"),
    "no_groups": (bad(kernel_sizes=ints("kernel_sizes", []), group_channels=ints("group_channels", [])),
                  "needs 1 to 16 channel groups, got 0"),
    "seventeen_groups": (bad(x_shape=(1, 4, 4, 34), kernel_sizes=[3] * 17, group_channels=[2] * 17,
                             shuffle_groups=2), "needs 1 to 16 channel groups, got 17"),
    "even_kernel": (bad(kernel_sizes=[3, 4, 7, 9]), "kernel_sizes[1] = 4 must be odd and between 1 and 15"),
    "zero_kernel": (bad(kernel_sizes=[0, 5, 7, 9]), "kernel_sizes[0] = 0 must be odd and between 1 and 15"),
    "negative_kernel": (bad(kernel_sizes=[3, 5, -7, 9]), "kernel_sizes[2] = -7 must be odd and between 1 and 15"),
    "kernel_17": (bad(kernel_sizes=[3, 5, 7, 17]), "kernel_sizes[3] = 17 must be odd and between 1 and 15"),
    "kernel_above_weight": (bad(weight_shape=[32, 7, 7]),
                            "kernel_sizes[3] = 9 is larger than the weight's kernel size K = 7"),
    "zero_group": (bad(group_channels=[16, 0, 8, 8]), "group_channels[1] = 0 must be >= 1"),
    "negative_group": (bad(group_channels=[40, -8, 8, 8]), "group_channels[1] = -8 must be >= 1"),
    "overflowing_groups": (bad(group_channels=[2 ** 62, 2 ** 62, 2 ** 62, 8]),
                           "the sum of group_channels overflows int64"),
    "sum_below_c": (bad(group_channels=[8, 8, 8, 4]),
                    "X has 32 channels (last dimension) but group_channels sum to 28"),
    "sum_above_c": (bad(group_channels=[8, 8, 8, 12]),
                    "X has 32 channels (last dimension) but group_channels sum to 36"),
    "strings": (bad(kernel_sizes=["3", "5", "7", "9"]),
                "attribute kernel_sizes must be a list of ints, got a list of strings"),
    "weight_channels": (bad(weight_shape=[30, 9, 9]),
                        "weight has 30 channels (first dimension) but group_channels sum to 32"),
    "bias_length": (bad(bias_shape=[31]), "bias has 31 values but group_channels sum to 32"),
    "shuffle_not_dividing": (bad(shuffle_groups=3), "shuffle_groups = 3 does not divide the 32 channels"),
    "shuffle_zero": (bad(shuffle_groups=0), "shuffle_groups must be >= 1, got 0"),
    "shuffle_negative": (bad(shuffle_groups=-4), "shuffle_groups must be >= 1, got -4"),
    "shuffle_float": (bad(shuffle_groups=4.0), "attribute shuffle_groups must be an int, got a float"),
    "activation_relu": (bad(activation="relu"), 'activation must be "none" or "gelu", got "relu"'),
    "activation_tanh_gelu": (bad(activation="gelu_tanh"), 'activation must be "none" or "gelu", got "gelu_tanh"'),
    "activation_int": (bad(activation=1), "attribute activation must be a string, got an int"),
    "x_rank_3": (bad(x_shape=(6, 5, 32)), "X must be (B, H, W, C), rank 4, got shape [6,5,32]"),
    "x_rank_5": (bad(x_shape=(1, 2, 6, 5, 32)), "X must be (B, H, W, C), rank 4, got shape [1,2,6,5,32]"),
    "weight_rank_2": (bad(weight_shape=[32, 81]), "weight must be (C, K, K), rank 3, got shape [32,81]"),
    "weight_rank_4": (bad(weight_shape=[32, 1, 9, 9]), "weight must be (C, K, K), rank 3, got shape [32,1,9,9]"),
    "bias_rank_2": (bad(bias_shape=[1, 32]), "bias must be (C), rank 1, got shape [1,32]"),
    "weight_not_square": (bad(weight_shape=[32, 9, 7]),
                          "weight must be (C, K, K) with a square kernel, got shape [32,9,7]"),
    "weight_even_k": (bad(weight_shape=[32, 10, 10]),
                      "weight has kernel size K = 10 (shape [32,10,10]), which must be odd and between 1 and 15"),
    "weight_k_17": (bad(weight_shape=[32, 17, 17]),
                    "weight has kernel size K = 17 (shape [32,17,17]), which must be odd and between 1 and 15"),
    "two_inputs": (lambda: node_model([2, 6, 5, 32], inputs=["X", "weight"], **GOOD),
                   "expects 3 inputs (X, weight, bias), got 2"),
    "four_inputs": (lambda: node_model([2, 6, 5, 32], inputs=["X", "weight", "bias", "bias"], **GOOD),
                    "expects 3 inputs (X, weight, bias), got 4"),
    "omitted_weight": (lambda: node_model([2, 6, 5, 32], inputs=["X", "", "bias"], **GOOD),
                       "required input 1 (weight) is missing"),
    "weight_type": (lambda: node_model([2, 6, 5, 32], types={"weight": F16}, **GOOD),
                    "input weight has element type f16 but X has f32"),
    "bias_type": (lambda: node_model([2, 6, 5, 32], elem=F16, types={"bias": F32}, **GOOD),
                  "input bias has element type f32 but X has f16"),
    "double": (lambda: node_model([2, 6, 5, 32], elem=TensorProto.DOUBLE, **GOOD),
               "X has element type f64, which is not supported; supported: f32, f16"),
}


@needs_lib
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_nodes_are_refused(case):
    make, message = MALFORMED[case]
    with pytest.raises(RuntimeError) as info:
        compile_model(make())
    text = str(info.value)
    assert OP in text and message in text, text
