"""VSSBlockTail (ssmpose domain version 7, docs/ops.md): the reference against HRVMamba's own modules, the CPU kernel
through ctypes, the ONNX Runtime op on the CPU EP, and the export fusion (hand-made graphs, look-alikes; and, marked
slow, hrvmamba_small's whole graph at op version 7 against PyTorch).

Tolerances (max abs error relative to the largest reference magnitude), against the float64 reference of the
unrounded chain:
- float32: 2e-6 (a few float32 roundings per value; sums of at most 1024 products)
- float16: 4e-3 and bfloat16: 3e-2: the operands a, b, g of the three products are rounded to the type (relative
  2^-11 / 2^-8 each) and so is Z; against the reference computed with those roundings (`vss_block_tail_reference`
  on the typed tensors) the kernels agree within 1e-3 / 8e-3 (one rounding of Z, and an operand rounding that
  falls the other way where float32 sums differ in their last bit).
The CUDA kernel is checked on a GPU by tests/gpu/check_cuda_kernels.py (--check-ops vsstail); its host-side argument
checks (no GPU needed) are tested here. Tests of the compiled libraries skip when they are not built, unless
SSMPOSE_REQUIRE_KERNELS=1 (CI).
"""
from __future__ import annotations

import ctypes
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from ssmpose.custom_ops import kernel_library as kl
from ssmpose.custom_ops import ort_library
from ssmpose.custom_ops.reference import VSS_TAIL_PARAMS, vss_block_tail_reference
from ssmpose.export.exporter import EXPORT_VSS_TAIL_MAX_CHANNELS
from ssmpose.export.fusions import use_vss_block_tail_op
from ssmpose.export.schemas import register_schemas
from ssmpose.training.models.hrvmamba_blocks import HRVMambaBlock

from built_libraries import cuda_kernel_library, require_built

register_schemas()
LIB = kl.cpu_library()
needs_lib = pytest.mark.skipif(LIB is None, reason=f"CPU kernel library not built: {kl.unavailable_reason('cpu')}")
ORT_LIB = ort_library.ort_library_path()
needs_ort_lib = pytest.mark.skipif(ORT_LIB is None, reason="libssmpose_ort.so not built")
SSM_OK, NULL_POINTER, BAD_SIZE, BAD_DTYPE, UNSUPPORTED = 0, 1, 2, 3, 4
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
TOL = {torch.float32: 2e-6, torch.float16: 4e-3, torch.bfloat16: 3e-2}
TOL_TYPED = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def make_inputs(rows, D, C, H, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    params = {"out_norm_weight": 1 + 0.3 * rnd(D), "out_norm_bias": 0.2 * rnd(D), "out_proj": rnd(D, C) / D ** 0.5,
              "norm_weight": 1 + 0.3 * rnd(C), "norm_bias": 0.2 * rnd(C), "fc1_weight": rnd(C, H) / C ** 0.5,
              "fc1_bias": 0.2 * rnd(H), "fc2_weight": rnd(H, C) / H ** 0.5, "fc2_bias": 0.2 * rnd(C)}
    return rnd(rows, D).to(dtype), rnd(rows, C).to(dtype), {k: v.to(dtype) for k, v in params.items()}


def relative_error(got, ref):
    return (got.double() - ref.double()).abs().max().item() / ref.double().abs().max().item()


# ------------------------------------------------------------------------------------------------
# The contract is the model's computation


def test_reference_is_the_hrvmamba_block_tail():
    """What VSSBlockTail computes, with the model's own modules in float64: x1 = x + out_proj(out_norm(y)),
    z = x1 + mlp(norm2(x1)), the weights in ONNX MatMul's layout (the transpose of nn.Linear.weight)."""
    torch.manual_seed(0)
    block = HRVMambaBlock(16).double().eval()
    with torch.no_grad():
        for norm in (block.op.out_norm, block.norm2):
            norm.weight.normal_(1.0, 0.3)
            norm.bias.normal_(0.0, 0.2)
    x = torch.randn(2, 5, 7, 16, dtype=torch.float64)
    y = torch.randn(2, 5, 7, 32, dtype=torch.float64)   # SS2D's scan output (d_inner = 2 C)
    with torch.no_grad():
        x1 = x + block.op.out_proj.forward_channels_last(block.op.out_norm.forward_channels_last(y))
        expected = x1 + block.channel_mlp(x1)
        got = vss_block_tail_reference(
            y, x, block.op.out_norm.weight, block.op.out_norm.bias, block.op.out_proj.weight.T, block.norm2.weight,
            block.norm2.bias, block.mlp.fc1.weight.T, block.mlp.fc1.bias, block.mlp.fc2.weight.T, block.mlp.fc2.bias,
            epsilon=block.norm2.eps)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)


def test_reference_refuses_mismatched_parameters():
    y, r, p = make_inputs(4, 8, 4, 12)
    p["fc1_bias"] = p["fc1_bias"][:-1]
    with pytest.raises(ValueError, match=r"VSSBlockTail: fc1_bias has shape \(11,\), expected \(12,\)"):
        vss_block_tail_reference(y, r, *[p[n] for n in VSS_TAIL_PARAMS])


# ------------------------------------------------------------------------------------------------
# CPU kernel through ctypes


def test_library_versions():
    require_built({"CPU kernels": LIB, "libssmpose_ort": ORT_LIB})
    assert LIB.ssm_abi_version() == kl.ABI_VERSION == 6
    assert ort_library.library_info()["version"] == ort_library.ORT_LIBRARY_VERSION == 7


def _cpu_call(y, r, p, z, threads=0, shape=None, eps=1e-5):
    rows, D = y.shape
    sh = shape or kl.VSSTailShape(rows, D, r.shape[1], p["fc1_weight"].shape[1], eps, DTYPE_CODE[y.dtype])
    params = kl.VSSTailParams(*[p[n].data_ptr() for n in VSS_TAIL_PARAMS])
    return LIB.ssm_vss_block_tail_fwd_cpu(ctypes.byref(sh), y.data_ptr(), r.data_ptr(), ctypes.byref(params),
                                          z.data_ptr(), threads)


@needs_lib
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,D,C,H", [(300, 64, 32, 64), (37, 160, 80, 160), (19, 24, 12, 40), (5, 1, 1, 1)])
def test_cpu_kernel_matches_the_reference(dtype, rows, D, C, H):
    y, r, p = make_inputs(rows, D, C, H, dtype)
    z = torch.full((rows, C), float("nan"), dtype=dtype)
    assert _cpu_call(y, r, p, z) == SSM_OK
    ref64 = vss_block_tail_reference(y.double(), r.double(), *[p[n].double() for n in VSS_TAIL_PARAMS])
    typed = vss_block_tail_reference(y, r, *[p[n] for n in VSS_TAIL_PARAMS])   # operands rounded to the type
    assert relative_error(z, ref64) <= TOL[dtype]
    assert relative_error(z, typed) <= TOL_TYPED[dtype]


@needs_lib
def test_cpu_kernel_does_not_depend_on_the_thread_count():
    y, r, p = make_inputs(517, 64, 32, 64, torch.float16, seed=3)
    outputs = []
    for threads in (1, 2, 5):
        z = torch.empty(517, 32, dtype=torch.float16)
        assert _cpu_call(y, r, p, z, threads) == SSM_OK
        outputs.append(z)
    assert all(torch.equal(outputs[0], z) for z in outputs[1:])


CUDA = cuda_kernel_library()
LIMIT_CASES = {   # shape fields -> status, checked before any pointer (NULL pointers: a limits query)
    "within the limits": ((10, 1024, 512, 1024, 1e-5, 1), NULL_POINTER),
    "D above 1024": ((10, 1025, 512, 1024, 1e-5, 1), BAD_SIZE),
    "C above 512": ((10, 1024, 513, 1024, 1e-5, 1), BAD_SIZE),
    "H above 1024": ((10, 64, 32, 1025, 1e-5, 1), BAD_SIZE),
    "C of 0": ((10, 64, 0, 64, 1e-5, 1), BAD_SIZE),
    "negative rows": ((-1, 64, 32, 64, 1e-5, 1), BAD_SIZE),
    "rows * D above 2^60 - 1": ((2 ** 50, 1024, 32, 64, 1e-5, 1), BAD_SIZE),
    "epsilon 0": ((10, 64, 32, 64, 0.0, 1), UNSUPPORTED),
    "unknown dtype": ((10, 64, 32, 64, 1e-5, 9), BAD_DTYPE),
}


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("case", list(LIMIT_CASES))
def test_limits_are_checked_before_the_pointers(device, case):
    lib = LIB if device == "cpu" else CUDA
    if lib is None:
        pytest.skip(f"{device} kernel library not built")
    fields, status = LIMIT_CASES[case]
    shape = kl.VSSTailShape(*fields)
    params = kl.VSSTailParams()
    if device == "cpu":
        got = lib.ssm_vss_block_tail_fwd_cpu(ctypes.byref(shape), None, None, ctypes.byref(params), None, 1)
    else:
        got = lib.ssm_vss_block_tail_fwd_cuda(ctypes.byref(shape), None, None, ctypes.byref(params), None, None)
    assert got == status


# ------------------------------------------------------------------------------------------------
# ONNX Runtime op (CPU EP)

ONNX_TYPE = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


def tail_model(y_shape, r_shape, params, elem=TensorProto.FLOAT, epsilon=1e-5):
    """One VSSBlockTail node; the parameters are initializers (numpy arrays by input name)."""
    inputs = [helper.make_tensor_value_info("Y", elem, y_shape), helper.make_tensor_value_info("R", elem, r_shape)]
    node = helper.make_node("VSSBlockTail", ["Y", "R"] + list(VSS_TAIL_PARAMS), ["Z"], domain="ssmpose",
                            epsilon=epsilon)
    graph = helper.make_graph([node], "tail", inputs, [helper.make_tensor_value_info("Z", elem, r_shape)],
                              [numpy_helper.from_array(params[n], n) for n in VSS_TAIL_PARAMS])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("ssmpose", 7)])


def ort_session(model):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(ORT_LIB))
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@needs_ort_lib
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_ort_op_matches_the_reference(dtype):
    torch_dtype = torch.float32 if dtype == np.float32 else torch.float16
    y, r, p = make_inputs(2 * 6 * 5, 64, 32, 64, torch_dtype, seed=1)
    y, r = y.reshape(2, 6, 5, 64), r.reshape(2, 6, 5, 32)
    params = {n: t.numpy() for n, t in p.items()}
    model = tail_model(["b", 6, 5, 64], ["b", 6, 5, 32], params, ONNX_TYPE[dtype])
    onnx.checker.check_model(model, full_check=True)
    got = ort_session(model).run(None, {"Y": y.numpy(), "R": r.numpy()})[0]
    assert got.shape == (2, 6, 5, 32) and got.dtype == dtype
    ref64 = vss_block_tail_reference(y.double(), r.double(), *[p[n].double() for n in VSS_TAIL_PARAMS])
    assert relative_error(torch.from_numpy(got), ref64) <= TOL[torch_dtype]
    empty = ort_session(model).run(None, {"Y": y.numpy()[:0], "R": r.numpy()[:0]})[0]
    assert empty.shape == (0, 6, 5, 32)


@needs_ort_lib
@pytest.mark.parametrize("change,message", [
    (("out_proj", (64, 31)), "out_proj must be (64, 32)"),
    (("fc1_bias", (63,)), "fc1_bias must be (64,)"),
    (("norm_weight", (32, 1)), "norm_weight must be (32,)"),
    (("R", (3, 6, 5, 32)), "must agree in every dimension but the last"),
])
def test_ort_op_names_the_bad_tensor(change, message):
    import onnxruntime as ort
    name, shape = change
    y, r, p = make_inputs(60, 64, 32, 64, seed=2)
    params = {n: t.numpy() for n, t in p.items()}
    feeds = {"Y": y.numpy().reshape(2, 6, 5, 64), "R": r.numpy().reshape(2, 6, 5, 32)}
    if name == "R":
        feeds["R"] = np.zeros(shape, np.float32)
    else:
        params[name] = np.zeros(shape, np.float32)
    # Symbolic shapes everywhere, so that ONNX's shape inference leaves the check to the op.
    model = tail_model(None, None, params)
    invalid_argument = ort.capi.onnxruntime_pybind11_state.InvalidArgument
    with pytest.raises(invalid_argument, match=f"VSSBlockTail: .*{re.escape(message)}"):
        ort_session(model).run(None, feeds)


@needs_ort_lib
def test_ort_op_refuses_a_bad_epsilon():
    _, _, p = make_inputs(4, 8, 4, 8)
    model = tail_model(None, None, {n: t.numpy() for n, t in p.items()}, epsilon=-1.0)
    with pytest.raises(Exception, match="VSSBlockTail: attribute epsilon must be finite and > 0"):
        ort_session(model)


# ------------------------------------------------------------------------------------------------
# The export fusion on hand-made graphs


def chain_model(D=16, C=8, H=16, seed=0, gelu="none", extra_consumer=False, final="AddLayerNorm"):
    """The nodes the exporter writes for one HRVMamba block tail after its scan (custom form, op version 6):
    LayerNorm -> MatMul -> AddLayerNorm -> MatMul -> Add -> Gelu -> MatMul -> Add -> AddLayerNorm (or Add)."""
    _, _, p = make_inputs(1, D, C, H, seed=seed)
    arrays = {n: t.float().numpy() for n, t in p.items()}
    arrays["next_w"] = np.linspace(0.5, 1.5, C, dtype=np.float32)
    arrays["next_b"] = np.linspace(-0.2, 0.2, C, dtype=np.float32)
    ssm = dict(domain="ssmpose", epsilon=1e-5)
    nodes = [
        helper.make_node("LayerNorm", ["Y", "out_norm_weight", "out_norm_bias"], ["a"], **ssm),
        helper.make_node("MatMul", ["a", "out_proj"], ["p"]),
        helper.make_node("AddLayerNorm", ["R", "p", "norm_weight", "norm_bias"], ["b", "x1"], **ssm),
        helper.make_node("MatMul", ["b", "fc1_weight"], ["h0"]),
        helper.make_node("Add", ["h0", "fc1_bias"], ["h"]),
        helper.make_node("Gelu", ["h"], ["g"], approximate=gelu),
        helper.make_node("MatMul", ["g", "fc2_weight"], ["o0"]),
        helper.make_node("Add", ["fc2_bias", "o0"], ["o"]),
    ]
    outputs = ["Z"]
    if final == "AddLayerNorm":
        nodes.append(helper.make_node("AddLayerNorm", ["x1", "o", "next_w", "next_b"], ["N", "Z"], **ssm))
        outputs = ["N", "Z"]
    else:
        nodes.append(helper.make_node("Add", ["x1", "o"], ["Z"]))
    if extra_consumer:
        nodes.append(helper.make_node("Relu", ["h"], ["side"]))
        outputs.append("side")
    shape = ["b", 3, 4]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("Y", TensorProto.FLOAT, shape + [D]),
                         helper.make_tensor_value_info("R", TensorProto.FLOAT, shape + [C])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v, n) for n, v in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("ssmpose", 7)])
    return onnx.shape_inference.infer_shapes(model)


@needs_ort_lib
@pytest.mark.parametrize("final", ["AddLayerNorm", "Add"])
def test_fusion_replaces_the_chain_and_keeps_the_outputs(final):
    model = chain_model(final=final)
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    assert use_vss_block_tail_op(fused) == 1
    onnx.checker.check_model(fused, full_check=True)
    ops = [n.op_type for n in fused.graph.node]
    assert ops == (["VSSBlockTail", "LayerNorm"] if final == "AddLayerNorm" else ["VSSBlockTail"])
    g = torch.Generator().manual_seed(4)
    feeds = {"Y": torch.randn(2, 3, 4, 16, generator=g).numpy(), "R": torch.randn(2, 3, 4, 8, generator=g).numpy()}
    expected, got = ort_session(model).run(None, feeds), ort_session(fused).run(None, feeds)
    for e, o in zip(expected, got):
        assert np.abs(o - e).max() <= 2e-6 * np.abs(e).max()


@pytest.mark.parametrize("options", [dict(gelu="tanh"), dict(extra_consumer=True), dict(C=520, D=16, H=16)],
                         ids=["tanh-gelu", "intermediate-used-twice", "C-above-the-limit"])
def test_fusion_leaves_look_alikes_alone(options):
    model = chain_model(**options)
    before = [n.op_type for n in model.graph.node]
    assert use_vss_block_tail_op(model) == 0
    assert [n.op_type for n in model.graph.node] == before


def test_fusion_leaves_blocks_wider_than_max_channels():
    model = chain_model(C=16, D=32, H=32)
    assert use_vss_block_tail_op(model, max_channels=8) == 0
    assert "VSSBlockTail" not in [n.op_type for n in model.graph.node]
    assert use_vss_block_tail_op(model, max_channels=16) == 1


# ------------------------------------------------------------------------------------------------
# hrvmamba_small's export at op version 7 (the default: the DVSS blocks of up to 64 channels fuse)


@pytest.fixture(scope="module")
def small_export(exported):
    return exported("hrvmamba_small", (128, 96), op_version=7)


@pytest.mark.slow   # the export alone takes a minute on CI's 2 cores
def test_hrvmamba_small_export_has_one_tail_per_block(small_export):
    e = small_export
    custom = onnx.load(str(e.paths["custom"]), load_external_data=False)
    assert {o.domain: o.version for o in custom.opset_import}["ssmpose"] == 7
    ops = [n.op_type for n in custom.graph.node]
    widths = [m.mlp.fc2.out_features for m in e.model.modules() if isinstance(m, HRVMambaBlock)]
    narrow = sum(w <= EXPORT_VSS_TAIL_MAX_CHANNELS for w in widths)
    assert (len(widths), narrow) == (44, 28)   # the 64x48 and 32x24 branches (32 and 64 channels)
    assert ops.count("VSSBlockTail") == narrow and ops.count("SelectiveScan2D") == len(widths)
    # the fused MLPs' GELUs are inside the tails, the LPUs' inside MultiKernelDepthwiseConv
    assert ops.count("Gelu") == len(widths) - narrow


@pytest.mark.slow
@needs_ort_lib
def test_hrvmamba_small_custom_graph_matches_pytorch(small_export):
    import onnxruntime as ort
    e = small_export
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(ORT_LIB))
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(e.paths["custom"]), options, providers=["CPUExecutionProvider"])
    images = torch.randn(2, 3, 128, 96, generator=torch.Generator().manual_seed(5))
    expected = e.torch_heatmaps(images)
    got = session.run(None, {"images": images.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
