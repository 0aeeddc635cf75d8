"""SelectiveScan2D (ssmpose domain version 2) in every layer on the CPU, against the float64 reference.

- The reference is its definition: SS2D's cross_scan -> SelectiveScan -> cross_merge (training/models/ss2d.py),
  in the channel-last layout of docs/ops.md.
- CPU kernels, forward and backward, in float32 / float16 / bfloat16 against the float64 reference evaluated on
  the same (rounded) inputs. Tolerances: max abs error relative to the largest reference magnitude,
  1e-5 (float32; the kernels accumulate in float32), 2e-3 (float16: output rounding 2^-11) and 1.6e-2
  (bfloat16: output rounding 2^-8), plus 1e-6 absolute.
- The torch op (gradcheck through the reference in float64, kernel gradients through autograd), its errors,
  the ONNX Runtime custom op (CPU EP), the portable lowering and the exporter's domain version, the kernels'
  limits (NULL-pointer calls, as tests/test_kernel_limits.py).

Tests of the compiled libraries skip when they are not built, unless SSMPOSE_REQUIRE_KERNELS=1 (CI).
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from ssmpose.custom_ops import kernel_library as kl
from ssmpose.custom_ops import ops, ort_library, portable
from ssmpose.custom_ops import reference as ref
from ssmpose.training.models.ss2d import cross_merge, cross_scan

from built_libraries import require_built
from op_cases import pad_widths

LIB = kl.cpu_library()
REASON = kl.unavailable_reason("cpu")
needs_lib = pytest.mark.skipif(LIB is None, reason=f"CPU kernel library not built: {REASON}")
ORT_LIB = ort_library.ort_library_path()
needs_ort_lib = pytest.mark.skipif(ORT_LIB is None, reason=f"libssmpose_ort.so not built: "
                                                              f"{ort_library.unavailable_reason()}")
K = 4
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
NULL_POINTER, BAD_SIZE, BAD_DTYPE = 1, 2, 3


def test_libraries_present():
    """Fails in CI (SSMPOSE_REQUIRE_KERNELS=1) when a library is missing; skips elsewhere."""
    require_built({"CPU kernels": LIB, "libssmpose_ort": ORT_LIB})


def scan_inputs(batch, height, width, dim, dstate, optional=True, seed=0, dtype=torch.float64):
    """x, delta, A, Bs, Cs, Ds, delta_bias with realistic magnitudes (decays of 0.1..1 per step)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)
    x = randn(batch, height, width, dim)
    delta = randn(batch, height, width, K * dim) - 1
    A = -torch.rand(K * dim, dstate, generator=g, dtype=torch.float64) - 0.1
    Bs, Cs = randn(batch, height, width, K, dstate), randn(batch, height, width, K, dstate)
    Ds = randn(K * dim) if optional else None
    bias = randn(K * dim) * 0.5 if optional else None
    return [None if t is None else t.to(dtype) for t in (x, delta, A, Bs, Cs, Ds, bias)]


def rel_err(actual, expected):
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max().clamp_min(1e-30)).item()


def assert_close(actual, expected, rel, what=""):
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert err <= rel * scale + 1e-6, f"{what}: max abs err {err:.3e} > {rel:g} * {scale:.3e} + 1e-6"


def reference_grads(inputs, dy, softplus=True):
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    y = ref.selective_scan_2d_reference(*leaves, softplus)
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None], dy.double())
    return y.detach(), list(grads)


# ---------------------------------------------------------------------------------------------------------
# The reference is the definition

def visiting_order(height, width, k):
    """Positions (h, w) in the order direction k visits them, written out as loops."""
    rows = [(h, w) for h in range(height) for w in range(width)]
    cols = [(h, w) for w in range(width) for h in range(height)]
    return [rows, cols, rows[::-1], cols[::-1]][k]


@pytest.mark.parametrize("height,width", [(3, 5), (1, 6), (7, 1), (4, 4)])
def test_reference_is_cross_scan_v1_cross_merge(height, width):
    x, delta, A, Bs, Cs, Ds, bias = scan_inputs(2, height, width, 3, 2, seed=height * 10 + width)
    y = ref.selective_scan_2d_reference(x, delta, A, Bs, Cs, Ds, bias)
    # v1 layout as SS2D builds it: cross_scan of each direction's own channel block / B and C slice
    u = cross_scan(x.permute(0, 3, 1, 2))
    dts = torch.cat([cross_scan(delta[..., k * 3:(k + 1) * 3].permute(0, 3, 1, 2))[:, k * 3:(k + 1) * 3]
                     for k in range(K)], dim=1)
    bs = torch.stack([cross_scan(Bs[..., k, :].permute(0, 3, 1, 2))[:, k * 2:(k + 1) * 2] for k in range(K)], dim=1)
    cs = torch.stack([cross_scan(Cs[..., k, :].permute(0, 3, 1, 2))[:, k * 2:(k + 1) * 2] for k in range(K)], dim=1)
    ys = ref.selective_scan_reference(u, dts, A, bs, cs, Ds, bias, True)
    expected = cross_merge(ys, height, width).permute(0, 2, 3, 1)
    assert (y - expected).abs().max().item() < 1e-12
    chunked = ref.selective_scan_2d_reference(x, delta, A, Bs, Cs, Ds, bias, chunk_size=4)
    assert (chunked - expected).abs().max().item() < 1e-10


def _implementations():
    yield "reference", lambda *t: ref.selective_scan_2d_reference(*[u.double() for u in t])
    if LIB is not None:
        yield "kernel", kl.selective_scan_2d_fwd


@pytest.mark.parametrize("k", range(K))
def test_directions_visit_positions_in_the_documented_orders(k):
    """With an input at one position and only direction k's B non-zero, exactly the positions that direction
    k visits from there on see a state: checks the visiting orders of the reference and the kernel (and the
    portable lowering's index table) against the orders written out as loops."""
    height, width, step = 3, 4, 5
    order = visiting_order(height, width, k)
    assert [h * width + w for h, w in order] == portable.direction_positions(height, width)[k].tolist()
    _, delta, A, Bs, _, _, _ = scan_inputs(1, height, width, 1, 1, optional=False)
    x = torch.zeros(1, height, width, 1, dtype=torch.float64)
    x[0, order[step][0], order[step][1], 0] = 1.0
    Bs = torch.zeros_like(Bs)
    Bs[..., k, :] = 1.0
    Cs = torch.ones_like(Bs)
    for name, scan in _implementations():
        y = scan(*[t.float() if name == "kernel" else t for t in (x, delta, A, Bs, Cs)])
        reached = {(h, w) for h in range(height) for w in range(width) if y[0, h, w, 0] != 0}
        assert reached == set(order[step:]), name


# ---------------------------------------------------------------------------------------------------------
# CPU kernels

SHAPES = [  # (B, H, W, D, N): odd sizes, 1xW and Hx1, N in {1, 4, 16}, sequences longer than a chunk (64),
    (2, 3, 5, 4, 1),   # several channel tiles (16) per direction
    (1, 1, 9, 20, 4),
    (2, 7, 1, 17, 16),
    (1, 9, 11, 33, 4),
    (1, 13, 10, 6, 16),
]


@needs_lib
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("optional", [True, False], ids=["Ds_bias", "no_Ds_bias"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_forward_and_backward(shape, optional, dtype):
    inputs = scan_inputs(*shape, optional=optional, seed=sum(shape))
    inputs = [None if t is None else t.to(dtype) for t in inputs]   # the reference sees the rounded values
    dy = torch.randn(shape[:4], generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    expected, expected_grads = reference_grads(inputs, dy)
    y = kl.selective_scan_2d_fwd(*inputs, True)
    assert y.dtype == dtype and y.shape == expected.shape
    assert_close(y, expected, TOLERANCE[dtype], "y")
    grads = kl.selective_scan_2d_bwd(*inputs, True, dy)
    names = ["dx", "d_delta", "dA", "dBs", "dCs", "dDs", "d_delta_bias"]
    present = [(n, g) for n, g, t in zip(names, grads, inputs) if t is not None]
    assert [g is None for g in grads[5:]] == [not optional] * 2
    for (name, got), want in zip(present, expected_grads):
        assert got.dtype == dtype and got.shape == want.shape, name
        assert_close(got, want, TOLERANCE[dtype], name)


@needs_lib
def test_kernel_without_softplus():
    inputs = scan_inputs(1, 5, 6, 8, 2, seed=3)
    inputs[1] = inputs[1].abs() * 0.1   # dt must stay positive without the softplus
    dy = torch.randn(1, 5, 6, 8, dtype=torch.float64)
    expected, expected_grads = reference_grads(inputs, dy, softplus=False)
    f32 = [t.float() for t in inputs]
    assert_close(kl.selective_scan_2d_fwd(*f32, False), expected, 1e-5, "y")
    for got, want in zip(kl.selective_scan_2d_bwd(*f32, False, dy.float()), expected_grads):
        assert_close(got, want, 1e-5)


@needs_lib
def test_kernel_is_deterministic_across_thread_counts():
    """Channel ranges, directions and batches are reduced in a fixed order: bit-identical results."""
    inputs = [t.float() for t in scan_inputs(2, 6, 7, 40, 4, seed=5)]
    dy = torch.randn(2, 6, 7, 40)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 3, 2):
            torch.set_num_threads(threads)
            results.append([kl.selective_scan_2d_fwd(*inputs)] + list(kl.selective_scan_2d_bwd(*inputs, True, dy)))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@needs_lib
def test_kernel_half_paths_round_the_float32_result():
    inputs = [t.half() for t in scan_inputs(1, 4, 9, 18, 4, seed=7)]
    y16 = kl.selective_scan_2d_fwd(*inputs)
    y32 = kl.selective_scan_2d_fwd(*[t.float() for t in inputs])
    assert torch.equal(y16, y32.half())


# ---------------------------------------------------------------------------------------------------------
# The torch op and the op layer

def test_op_gradcheck_float64():
    """float64 runs the reference; gradients through the op's autograd (with and without Ds/delta_bias)."""
    for optional in (True, False):
        inputs = scan_inputs(1, 2, 3, 2, 2, optional=optional, seed=11)
        leaves = [t.requires_grad_() for t in inputs if t is not None]

        def fn(*t, optional=optional):
            args = list(t) + ([] if optional else [None, None])
            return ops.selective_scan_2d(*args)
        assert torch.autograd.gradcheck(fn, leaves)


@needs_lib
def test_op_kernel_gradients_match_the_reference():
    inputs = scan_inputs(2, 5, 4, 12, 4, seed=13)
    dy = torch.randn(2, 5, 4, 12, dtype=torch.float64)
    expected, expected_grads = reference_grads(inputs, dy)
    leaves = [t.float().requires_grad_() for t in inputs]
    y = ops.selective_scan_2d(*leaves)
    assert_close(y, expected, 1e-5, "y")
    y.backward(dy.float())
    for leaf, want in zip(leaves, expected_grads):
        assert_close(leaf.grad, want, 1e-5)


@needs_lib
def test_op_kernel_and_force_reference_agree():
    inputs = [t.float() for t in scan_inputs(1, 6, 5, 9, 3, seed=17)]
    with ops.force_reference():
        expected = ops.selective_scan_2d(*inputs)
    assert_close(ops.selective_scan_2d(*inputs), expected, 1e-5)


def test_op_traces_as_one_node():
    class Scan(torch.nn.Module):
        def forward(self, x, delta, A, Bs, Cs, Ds, bias):
            return ops.selective_scan_2d(x, delta, A, Bs, Cs, Ds, bias)
    inputs = tuple(t.float() for t in scan_inputs(2, 3, 4, 5, 2))
    program = torch.export.export(Scan(), inputs)
    calls = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert calls.count(torch.ops.ssmpose.selective_scan_2d.default) == 1
    out = [n for n in program.graph.nodes if n.op == "output"][0].args[0][0]
    assert tuple(out.meta["val"].shape) == (2, 3, 4, 5)


def _bad(**changes):
    x, delta, A, Bs, Cs, Ds, bias = [t.float() for t in scan_inputs(1, 3, 4, 5, 2)]
    args = dict(x=x, delta=delta, A=A, Bs=Bs, Cs=Cs, Ds=Ds, delta_bias=bias)
    args.update(changes)
    return args


@pytest.mark.parametrize("changes,message", [
    (dict(x=torch.zeros(3, 4, 5)), r"x must be \(B, H, W, D\), got shape \(3, 4, 5\)"),
    (dict(Bs=torch.zeros(1, 3, 4, 8)), r"Bs must be \(B, H, W, K, N\)"),
    (dict(Bs=torch.zeros(1, 3, 4, 3, 2), Cs=torch.zeros(1, 3, 4, 3, 2)), "must be 4, got 3"),
    (dict(Bs=torch.zeros(1, 4, 3, 4, 2)), r"does not match x \(B, H, W\) = \(1, 3, 4\)"),
    (dict(Cs=torch.zeros(1, 3, 4, 4, 3)), "Cs shape"),
    (dict(delta=torch.zeros(1, 3, 4, 5)), r"delta must be \(B, H, W, K\*D\) = \(1, 3, 4, 20\)"),
    (dict(A=torch.zeros(20, 3)), r"A must be \(20, 2\)"),
    (dict(Ds=torch.zeros(5)), r"Ds must be \(20,\)"),
    (dict(delta_bias=torch.zeros(21)), r"delta_bias must be \(20,\)"),
    (dict(delta=torch.zeros(1, 3, 4, 20, dtype=torch.int32)), "delta must be floating point"),
])
def test_op_errors_name_the_tensor(changes, message):
    with pytest.raises(ValueError, match=r"SelectiveScan2D: .*" + message):
        ops.selective_scan_2d(**_bad(**changes))


@needs_lib
def test_kernel_wrapper_refuses_a_large_state():
    x, delta, _, _, _, Ds, bias = _bad().values()
    with pytest.raises(ValueError, match=r"dstate \(Bs.shape\[4\]\) must be in 1..16, got 17"):
        kl.selective_scan_2d_fwd(x, delta, torch.zeros(20, 17), torch.zeros(1, 3, 4, 4, 17),
                                 torch.zeros(1, 3, 4, 4, 17), Ds, bias)
    with pytest.raises(ValueError, match="dy must have shape"):
        kl.selective_scan_2d_bwd(*_bad().values(), True, torch.zeros(1, 3, 4, 6))


# ---------------------------------------------------------------------------------------------------------
# Kernel limits: NULL-pointer calls answer NULL_POINTER within the limits, BAD_SIZE beyond (no allocation)

def scan2d(batch, height, width, dim, dstate, directions=K, dtype=kl.SSM_FLOAT32):
    return kl.Scan2DShape(batch, height, width, dim, directions, dstate, 1, dtype)


def status(shape):
    n = None
    fwd = LIB.ssm_selective_scan_2d_fwd_cpu(ctypes.byref(shape), n, n, n, n, n, n, n, n, 1)
    bwd = LIB.ssm_selective_scan_2d_bwd_cpu(ctypes.byref(shape), *[n] * 15, 1)
    assert fwd == bwd
    return fwd


LIMITS = [
    (scan2d(1, 1 << 15, 1 << 15, (1 << 28) - 1, 1), NULL_POINTER),  # delta: B*H*W*K*D = 2^60 - 2^32
    (scan2d(1, 1 << 15, 1 << 15, 1 << 28, 1), BAD_SIZE),            # 2^60 elements
    (scan2d(1, 1 << 27, (1 << 27) - 1, 1, 16), NULL_POINTER),       # Bs: B*H*W*K*N just below 2^60
    (scan2d(1, 1 << 27, 1 << 27, 1, 16), BAD_SIZE),
    (scan2d(1 << 27, 1, 1, 1 << 27, 15), NULL_POINTER),             # per-batch dA partials B*K*D*N < 2^60
    (scan2d(1 << 27, 1, 1, 1 << 27, 16), BAD_SIZE),                 # = 2^60
    (scan2d(1, 2, 2, 4, 16), NULL_POINTER),
    (scan2d(1, 2, 2, 4, 17), BAD_SIZE),
    (scan2d(1, 2, 2, 4, 0), BAD_SIZE),
    (scan2d(0, 2, 2, 4, 1), BAD_SIZE),
    (scan2d(1, 2, 0, 4, 1), BAD_SIZE),
    (scan2d(1, 2, 2, 4, 1, directions=2), BAD_SIZE),
    (scan2d(1, 2, 2, 4, 1, dtype=7), BAD_DTYPE),
]


@needs_lib
@pytest.mark.parametrize("shape,expected", LIMITS)
def test_kernel_limits(shape, expected):
    assert status(shape) == expected
    if shape.dtype == kl.SSM_FLOAT32 and min(shape.batch, shape.height, shape.width, shape.dim) > 0:
        mirror = kl.scan2d_limit_error(shape.batch, shape.height, shape.width, shape.dim, shape.directions,
                                       shape.dstate, "cpu")
        assert (mirror is None) == (expected == NULL_POINTER)


def test_kernel_wrapper_refuses_before_allocating():
    x = torch.zeros(1).expand(1, 1 << 15, 1 << 15, 1 << 28)   # 2^58 elements, one float of storage
    delta = torch.zeros(1).expand(1, 1 << 15, 1 << 15, 1 << 30)
    Bs = torch.zeros(1).expand(1, 1 << 15, 1 << 15, 4, 1)
    with pytest.raises(ValueError, match="limit of 2\\^60 - 1"):
        kl.selective_scan_2d_fwd(x, delta, torch.zeros(1).expand(1 << 30, 1), Bs, Bs)


# ---------------------------------------------------------------------------------------------------------
# ONNX: the custom op in ONNX Runtime, the portable lowering, the exporter

def single_node(height, width, dim, dstate, elem=None, domain_version=2, names=None, static=True, **attributes):
    """A graph of one SelectiveScan2D node (static=False: inputs of unknown shape, so that the node sees
    whatever it is fed)."""
    from onnx import TensorProto, helper
    elem = TensorProto.FLOAT if elem is None else elem
    names = names or ["x", "delta", "A", "Bs", "Cs", "Ds", "delta_bias"]
    shapes = {"x": ["B", height, width, dim], "delta": ["B", height, width, K * dim], "A": [K * dim, dstate],
              "Bs": ["B", height, width, K, dstate], "Cs": ["B", height, width, K, dstate], "Ds": [K * dim],
              "delta_bias": [K * dim]}
    inputs = [helper.make_tensor_value_info(n, elem, shapes[n] if static else None) for n in names if n]
    node = helper.make_node("SelectiveScan2D", names, ["y"], domain="ssmpose", **attributes)
    graph = helper.make_graph([node], "scan2d", inputs,
                              [helper.make_tensor_value_info("y", elem, ["B", height, width, dim] if static else None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid("ssmpose", domain_version)])


def ort_session(model, register=True):
    import onnxruntime as ort
    options = ort.SessionOptions()
    if register:
        ort_library.register(options)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def feeds(inputs, names=("x", "delta", "A", "Bs", "Cs", "Ds", "delta_bias"), dtype=np.float32):
    return {n: t.numpy().astype(dtype) for n, t in zip(names, inputs) if t is not None}


@needs_ort_lib
@pytest.mark.parametrize("elem_name", ["float32", "float16"])
def test_ort_custom_op_matches_the_reference(elem_name):
    from onnx import TensorProto
    elem, np_type, tol = ((TensorProto.FLOAT, np.float32, 1e-5) if elem_name == "float32"
                          else (TensorProto.FLOAT16, np.float16, 2e-3))
    for (b, h, w, d, n), optional in (((2, 5, 7, 6, 4), True), ((1, 1, 9, 3, 1), False), ((1, 6, 1, 18, 16), True)):
        inputs = scan_inputs(b, h, w, d, n, optional=optional, seed=h * w)
        inputs = [None if t is None else torch.from_numpy(t.numpy().astype(np_type)) for t in inputs]
        names = None if optional else ["x", "delta", "A", "Bs", "Cs"]
        y = ort_session(single_node(h, w, d, n, elem, names=names)).run(None, feeds(inputs, dtype=np_type))[0]
        expected = ref.selective_scan_2d_reference(*[None if t is None else t.double() for t in inputs])
        assert y.dtype == np_type
        assert_close(torch.from_numpy(y.astype(np.float64)), expected, tol)


@needs_ort_lib
def test_ort_custom_op_errors():
    from onnxruntime.capi import onnxruntime_pybind11_state as errors
    inputs = [t.float() for t in scan_inputs(1, 3, 4, 5, 2)]
    session = ort_session(single_node(3, 4, 5, 2, static=False))
    for name, value, message in (
            ("Ds", np.zeros(19, np.float32), r"Ds must be \(20,\), got \(19,\)"),
            ("Bs", np.zeros((1, 3, 4, 3, 2), np.float32), "directions K, which must be 4, got 3"),
            ("delta", np.zeros((1, 3, 4, 5), np.float32), r"delta must be \(B, H, W, K\*D\) = \(1, 3, 4, 20\)"),
            ("x", np.zeros((1, 3, 4), np.float32), r"x must be \(B, H, W, D\), got shape \(1, 3, 4\)")):
        bad = {**feeds(inputs), name: value}
        with pytest.raises(errors.InvalidArgument, match="SelectiveScan2D: .*" + message):
            session.run(None, bad)
    with pytest.raises(errors.RuntimeException, match="SelectiveScan2D: attribute directions must be in"):
        ort_session(single_node(3, 4, 5, 2, directions=3))


@needs_ort_lib
def test_ort_domain_versions():
    """SelectiveScan2D exists from domain version 2 on (where ONNX Runtime reads op versions, >= 1.17); the
    version-1 SelectiveScan runs in a version-2 graph."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    if tuple(int(v) for v in ort.__version__.split(".")[:2]) >= (1, 17):
        with pytest.raises(Exception, match="SelectiveScan2D.* is not a registered function/op"):
            ort_session(single_node(3, 4, 5, 2, domain_version=1))
    model = single_node(3, 4, 5, 2)
    v1 = helper.make_node("SelectiveScan", ["u", "u", "A1", "B1", "B1"], ["y1"], domain="ssmpose")
    model.graph.node.append(v1)
    model.graph.input.extend([helper.make_tensor_value_info("u", TensorProto.FLOAT, [1, 2, 6]),
                              helper.make_tensor_value_info("A1", TensorProto.FLOAT, [2, 1]),
                              helper.make_tensor_value_info("B1", TensorProto.FLOAT, [1, 1, 1, 6])])
    model.graph.output.append(helper.make_tensor_value_info("y1", TensorProto.FLOAT, [1, 2, 6]))
    u, A1, B1 = torch.rand(1, 2, 6), -torch.rand(2, 1), torch.rand(1, 1, 1, 6)
    inputs = [t.float() for t in scan_inputs(1, 3, 4, 5, 2)]
    y, y1 = ort_session(model).run(None, {**feeds(inputs), "u": u.numpy(), "A1": A1.numpy(), "B1": B1.numpy()})
    assert_close(torch.from_numpy(y), ref.selective_scan_2d_reference(*[t.double() for t in inputs]), 1e-5)
    assert_close(torch.from_numpy(y1), ref.selective_scan_reference(u.double(), u.double(), A1.double(),
                                                                    B1.double(), B1.double()), 1e-5)


def lowered(height, width, dim, dstate, elem, chunk_size=None, method="matrix", names=None):
    import onnx
    import onnx_ir as ir

    from ssmpose.export.schemas import register_schemas
    register_schemas()
    model = ir.serde.deserialize_model(single_node(height, width, dim, dstate, elem, names=names))
    assert portable.lower_to_portable(model, chunk_size, method) == 1
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} <= {""}
    assert all(n.op_type not in ("Loop", "Scan") for n in proto.graph.node)
    return proto


@pytest.mark.parametrize("height,width,method", [(5, 7, "matrix"), (1, 9, "matrix"), (11, 1, "doubling"),
                                                 (9, 8, "doubling"), (9, 8, "halving"), (1, 1, "halving")])
def test_portable_lowering_matches_the_reference(height, width, method):
    from onnx import TensorProto
    inputs = scan_inputs(2, height, width, 3, 4, seed=height + width)
    proto = lowered(height, width, 3, 4, TensorProto.DOUBLE, chunk_size=4, method=method)
    y = ort_session(proto, register=False).run(None, feeds(inputs, dtype=np.float64))[0]
    assert np.abs(y - ref.selective_scan_2d_reference(*inputs).numpy()).max() < 1e-10


# (B, H, W, D, N, chunk): one state (HRVMamba) and several, sequences of many chunks, a partial last chunk,
# a sequence shorter than the chunk, chunks of 1 to 5 merge levels, odd chunks (no merge level)
CHANNEL_LAST_CASES = [(2, 20, 17, 3, 1, None), (1, 16, 12, 5, 1, 8), (1, 33, 40, 2, 1, 256), (2, 7, 5, 4, 16, None),
                      (1, 3, 2, 2, 2, None), (1, 9, 11, 3, 1, 6), (2, 12, 10, 2, 4, 5), (1, 1, 7, 3, 1, 2)]


@pytest.mark.parametrize("method", ["doubling", "halving"])
@pytest.mark.parametrize("case", CHANNEL_LAST_CASES, ids=lambda c: "B{}_{}x{}_D{}_N{}_T{}".format(*c))
def test_channel_last_lowering_matches_the_reference(case, method):
    """The doubling and halving lowerings (channels innermost, decays as factors) against the float64
    reference, with and without the optional inputs."""
    from onnx import TensorProto
    batch, height, width, dim, dstate, chunk = case
    for optional in (True, False):
        inputs = scan_inputs(batch, height, width, dim, dstate, optional=optional, seed=height * width + dstate)
        names = None if optional else ["x", "delta", "A", "Bs", "Cs"]
        proto = lowered(height, width, dim, dstate, TensorProto.DOUBLE, chunk_size=chunk, method=method, names=names)
        y = ort_session(proto, register=False).run(None, feeds(inputs, dtype=np.float64))[0]
        expected = ref.selective_scan_2d_reference(*inputs).numpy()
        assert np.abs(y - expected).max() <= 1e-10 * np.abs(expected).max(), (optional, method)


def test_channel_last_lowering_float32_strong_decay_and_large_delta():
    """Decays that underflow float32 within a chunk (products of 0) and pre-activations past the softplus
    threshold (dt = 100, where exp(dt) would overflow): finite and close to the float64 reference."""
    from onnx import TensorProto
    inputs = scan_inputs(1, 24, 20, 3, 1, seed=5)
    inputs[1] = inputs[1] * 6 + 4
    inputs[1][0, 0, :4] = 100.0
    inputs[2] = inputs[2] * 8
    for method in ("doubling", "halving"):
        proto = lowered(24, 20, 3, 1, TensorProto.FLOAT, method=method)
        y = ort_session(proto, register=False).run(None, feeds(inputs))[0]
        expected = ref.selective_scan_2d_reference(*inputs).numpy()
        assert np.isfinite(y).all(), method
        assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max(), method


@pytest.mark.parametrize("method", ["doubling", "halving"])
@pytest.mark.parametrize("height,width", [(64, 48), (24, 18)])
def test_channel_last_pads_only_axis_2_of_4d_tensors(method, height, width):
    """Every Pad of the channel-last lowering (the shifts, and the end padding of 24 x 18 = 432 steps to 7
    chunks of 64) pads axis 2 of a 4-D tensor: ONNX Runtime's CUDA Pad has a fast kernel for the last two axes
    of 4-D tensors only, and its generic kernel (a Pad of axis 1) took a third of the portable form's GPU time
    (docs/benchmarks.md)."""
    from onnx import TensorProto
    pads = pad_widths(lowered(height, width, 8, 1, TensorProto.FLOAT, chunk_size=64, method=method))
    assert pads, "no shifts found"
    for p in pads:
        assert len(p) == 8 and not p[[0, 1, 3, 4, 5, 7]].any() and p[[2, 6]].any(), p


def test_portable_lowering_float16_computes_in_float32():
    from onnx import TensorProto
    inputs = [t.half() for t in scan_inputs(1, 6, 5, 4, 2, seed=2)]
    y = ort_session(lowered(6, 5, 4, 2, TensorProto.FLOAT16), register=False).run(
        None, feeds(inputs, dtype=np.float16))[0]
    assert y.dtype == np.float16
    assert_close(torch.from_numpy(y.astype(np.float64)),
                 ref.selective_scan_2d_reference(*[t.double() for t in inputs]), 2e-3)


def test_portable_node_count_does_not_depend_on_the_size():
    from onnx import TensorProto
    counts = {(h, w): len(lowered(h, w, 4, 2, TensorProto.FLOAT).graph.node)
              for h, w in ((4, 4), (16, 12), (64, 48))}
    assert len(set(counts.values())) == 1, counts


class _ScanProbe(torch.nn.Module):
    """A tiny model around one SelectiveScan2D, with the `meta` the exporter needs."""

    def __init__(self, dim=4, dstate=2):
        super().__init__()
        self.meta = {"model": "scan2d_probe", "task": "classification", "num_classes": dim}
        self.input_size = (32, 32)
        self.dim, self.dstate = dim, dstate
        self.proj = torch.nn.Linear(3, dim + K * dim + 2 * K * dstate)
        self.A_logs = torch.nn.Parameter(torch.randn(K * dim, dstate) * 0.3)
        self.Ds = torch.nn.Parameter(torch.randn(K * dim))
        self.bias = torch.nn.Parameter(torch.randn(K * dim) * 0.3)

    def forward(self, images):
        feats = torch.nn.functional.avg_pool2d(images, 4).permute(0, 2, 3, 1)      # (B, 8, 8, 3)
        x, delta, bc = torch.split(self.proj(feats), [self.dim, K * self.dim, 2 * K * self.dstate], dim=-1)
        Bs, Cs = bc.reshape(*bc.shape[:3], 2, K, self.dstate).unbind(3)
        y = ops.selective_scan_2d(x.contiguous(), delta.contiguous(), -torch.exp(self.A_logs), Bs.contiguous(),
                                  Cs.contiguous(), self.Ds, self.bias)
        return y.mean(dim=(1, 2))


@needs_ort_lib
def test_export_imports_domain_version_2(tmp_path):
    """export_forms at the default op version (4): a custom form whose only ssmpose op is SelectiveScan2D imports
    ssmpose at version 2, the lowest that has it, and records it in the metadata; both forms run in ONNX Runtime
    and match PyTorch."""
    from ssmpose.export import export_forms
    from ssmpose.export.metadata import read_metadata
    torch.manual_seed(0)
    model = _ScanProbe().eval()
    paths = {form: tmp_path / f"probe_{form}.onnx" for form in ("custom", "portable")}
    results = export_forms(model, paths)
    images = torch.rand(3, 3, 32, 32) * 255
    with torch.no_grad():
        expected = model(images)
    for form, path in paths.items():
        proto = results[form].model
        imports = {o.domain: o.version for o in proto.opset_import}
        types = [n.op_type for n in proto.graph.node if n.domain == "ssmpose"]
        if form == "custom":
            assert imports.get("ssmpose") == 2 and types == ["SelectiveScan2D"]
        else:
            assert "ssmpose" not in imports and types == []
        assert read_metadata(path)["op_domain_version"] == 2
        session = ort_session(proto, register=form == "custom")
        out = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
        assert_close(torch.from_numpy(out), expected, 1e-4, form)


def test_cuda_limits_are_mirrored_with_the_limit_named():
    from ssmpose.custom_ops import kernel_library
    assert kernel_library.scan2d_limit_error(2, 96, 72, 64, 4, 1, "cuda") is None
    assert "36864" in kernel_library.scan2d_limit_error(1, 192, 193, 8, 4, 1, "cuda")
    assert "2^31 - 1" in kernel_library.scan2d_limit_error(1, 128, 128, 2 ** 17, 4, 1, "cuda")
    assert kernel_library.scan2d_limit_error(1, 192, 193, 8, 4, 1, "cpu") is None
