"""Where the CPU kernels' parallel loops run: the executor hook of libssmpose_kernels (ssm_set_cpu_executor, called
through ctypes with executors written in Python) and the ONNX Runtime ops, which hand the loops to ONNX Runtime's
intra-op thread pool (OrtApi::KernelContext_ParallelFor, ONNX Runtime >= 1.17) unless $SSMPOSE_NUM_THREADS asks for
threads of the library's own.

Whichever threads run a loop, in whatever order, and even when an executor fails or skips work, the results must be
bit-identical to the kernels called directly (own threads, or one thread). The problems are sized so that every
kernel splits its loops (num_threads 4; 2 on ONNX Runtime, one task per hardware thread).

Tests of the compiled libraries skip when they are not built, unless SSMPOSE_REQUIRE_KERNELS=1 (CI).
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from ssmpose.custom_ops import kernel_library as kl
from ssmpose.custom_ops import ort_library

from built_libraries import require_built

LIB = kl.cpu_library()
needs_lib = pytest.mark.skipif(LIB is None, reason=f"CPU kernel library not built: {kl.unavailable_reason('cpu')}")
ORT_LIB = ort_library.ort_library_path()
needs_ort_lib = pytest.mark.skipif(ORT_LIB is None, reason=f"libssmpose_ort.so not built: "
                                                              f"{ort_library.unavailable_reason()}")

EPS = 1e-5
NORM_SHAPE = (1, 16, 16, 96)  # (B, H, W, C) of LayerNorm, MultiKernelDepthwiseConv, AddLayerNorm
DW = dict(kernel_sizes=[3, 5, 7, 9], group_channels=[24] * 4, kernel_max=9, shuffle_groups=4, activation="gelu")
SCAN = dict(batch=1, groups=2, dim=32, dstate=4, length=256)
SCAN2D = dict(batch=1, height=12, width=12, dim=32, dstate=4)  # 4 directions
DEFORM = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1, dilation_w=1, group=4,
              group_channels=16, offset_scale=1.0, remove_center=0)
DEFORM_HW = (1, 16, 16)  # (B, H, W) of value; the output has the same size
DEFORM_ARGS = [DEFORM[k] for k in ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h",
                                   "dilation_w", "group", "group_channels", "offset_scale", "remove_center")]

SCAN_NAMES = ["u", "delta", "A", "Bs", "Cs", "Ds", "delta_bias"]
SCAN2D_NAMES = ["x2", "delta2", "A2", "Bs2", "Cs2", "Ds2", "bias2"]


def test_libraries_present():
    """Fails in CI (SSMPOSE_REQUIRE_KERNELS=1) when a library is missing; skips elsewhere."""
    require_built({"CPU kernels": LIB, "libssmpose_ort": ORT_LIB})


# ------------------------------------------------------------------------------------------------
# Inputs and the kernels called directly


def make_inputs(dtype=np.float32, seed=0):
    """Every input of the model below, by graph input name."""
    rng = np.random.default_rng(seed)
    B, H, W, C = NORM_SHAPE
    K = DW["kernel_max"]
    a = dict(X=rng.standard_normal(NORM_SHAPE), ln1_w=1 + 0.1 * rng.standard_normal(C), ln1_b=rng.standard_normal(C),
             dw_w=rng.standard_normal((C, K, K)) / K, dw_b=rng.standard_normal(C),
             ln2_w=1 + 0.1 * rng.standard_normal(C), ln2_b=rng.standard_normal(C))
    s = SCAN
    ch = s["groups"] * s["dim"]
    a.update(u=rng.standard_normal((s["batch"], ch, s["length"])),
             delta=rng.standard_normal((s["batch"], ch, s["length"])),
             A=-rng.random((ch, s["dstate"])) * 2 - 0.05,
             Bs=rng.standard_normal((s["batch"], s["groups"], s["dstate"], s["length"])),
             Cs=rng.standard_normal((s["batch"], s["groups"], s["dstate"], s["length"])),
             Ds=rng.standard_normal(ch), delta_bias=0.5 * rng.standard_normal(ch))
    s = SCAN2D
    pos = (s["batch"], s["height"], s["width"])
    a.update(x2=rng.standard_normal(pos + (s["dim"],)), delta2=rng.standard_normal(pos + (4 * s["dim"],)),
             A2=-rng.random((4 * s["dim"], s["dstate"])) * 2 - 0.05,
             Bs2=rng.standard_normal(pos + (4, s["dstate"])), Cs2=rng.standard_normal(pos + (4, s["dstate"])),
             Ds2=rng.standard_normal(4 * s["dim"]), bias2=0.5 * rng.standard_normal(4 * s["dim"]))
    g, c, k = DEFORM["group"], DEFORM["group_channels"], DEFORM["kernel_h"] * DEFORM["kernel_w"]
    a.update(value=rng.standard_normal(DEFORM_HW + (g * c,)), offset_mask=rng.standard_normal(DEFORM_HW + (g * k * 3,)))
    return {name: np.ascontiguousarray(v, dtype=dtype) for name, v in a.items()}


def _code(a):
    return kl.SSM_FLOAT16 if a.dtype == np.float16 else kl.SSM_FLOAT32


def _check(status):
    assert status == kl.SSM_OK, f"status {status}: {LIB.ssm_status_string(status).decode()}"


def layer_norm(x, w, b, threads, residual=None):
    """LayerNorm (residual None) or AddLayerNorm through ctypes: y, or (y, sum)."""
    shape = kl.LayerNormShape(x.size // x.shape[-1], x.shape[-1], EPS, _code(x))
    y = np.empty_like(x)
    if residual is None:
        _check(LIB.ssm_layer_norm_fwd_cpu(ctypes.byref(shape), x.ctypes.data, w.ctypes.data, b.ctypes.data,
                                          y.ctypes.data, threads))
        return y
    s = np.empty_like(x)
    _check(LIB.ssm_add_layer_norm_fwd_cpu(ctypes.byref(shape), x.ctypes.data, residual.ctypes.data, w.ctypes.data,
                                          b.ctypes.data, y.ctypes.data, s.ctypes.data, threads))
    return y, s


def depthwise_conv(x, w, b, threads):
    groups = (ctypes.c_int32 * kl.DWCONV_MAX_GROUPS)(*DW["group_channels"])
    kernels = (ctypes.c_int32 * kl.DWCONV_MAX_GROUPS)(*DW["kernel_sizes"])
    shape = kl.DwConvShape(*x.shape, DW["kernel_max"], len(DW["kernel_sizes"]), groups, kernels,
                           DW["shuffle_groups"], kl.SSM_ACTIVATION_GELU, _code(x))
    y = np.empty_like(x)
    _check(LIB.ssm_depthwise_conv_fwd_cpu(ctypes.byref(shape), x.ctypes.data, w.ctypes.data, b.ctypes.data,
                                          y.ctypes.data, threads))
    return y


def _torch(a, names):
    return [torch.from_numpy(a[n]) for n in names]


def _numpy(results):
    if isinstance(results, torch.Tensor):
        return [results.numpy()]
    return [r.numpy() for r in results if r is not None]


def _grad(like, seed):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(like.shape).astype(like.dtype))


def direct_kernel(name, a, threads, monkeypatch):
    """One CPU kernel called directly with `threads` threads: its outputs as numpy arrays."""
    monkeypatch.setattr(kl, "_num_threads", lambda: threads)  # what the torch-level wrappers pass
    if name == "layer_norm":
        return [layer_norm(a["X"], a["ln1_w"], a["ln1_b"], threads)]
    if name == "add_layer_norm":
        residual = np.ascontiguousarray(a["X"][:, ::-1])
        return list(layer_norm(a["X"], a["ln2_w"], a["ln2_b"], threads, residual=residual))
    if name == "depthwise_conv":
        return [depthwise_conv(a["X"], a["dw_w"], a["dw_b"], threads)]
    if name == "selective_scan":
        return _numpy(kl.selective_scan_fwd(*_torch(a, SCAN_NAMES)))
    if name == "selective_scan_bwd":
        args = _torch(a, SCAN_NAMES)
        return _numpy(kl.selective_scan_bwd(*args, True, _grad(a["u"], 1)))
    if name == "selective_scan_2d":
        return _numpy(kl.selective_scan_2d_fwd(*_torch(a, SCAN2D_NAMES)))
    if name == "selective_scan_2d_bwd":
        args = _torch(a, SCAN2D_NAMES)
        return _numpy(kl.selective_scan_2d_bwd(*args, True, _grad(a["x2"], 2)))
    if name == "deform_aggregate":
        return _numpy(kl.deform_aggregate_fwd(*_torch(a, ["value", "offset_mask"]), *DEFORM_ARGS))
    if name == "deform_aggregate_bwd":
        value, om = _torch(a, ["value", "offset_mask"])
        out_shape = DEFORM_HW + (DEFORM["group"] * DEFORM["group_channels"],)
        grad = torch.from_numpy(np.random.default_rng(3).standard_normal(out_shape).astype(a["value"].dtype))
        return _numpy(kl.deform_aggregate_bwd(value, om, *DEFORM_ARGS, grad))
    raise ValueError(name)


def assert_identical(actual, expected, what=""):
    assert len(actual) == len(expected), what
    for i, (x, y) in enumerate(zip(actual, expected)):
        assert x.dtype == y.dtype and x.shape == y.shape, f"{what}[{i}]"
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), f"{what}[{i}]: results differ"


# ------------------------------------------------------------------------------------------------
# The executor hook (ssm_set_cpu_executor)

KERNELS = ["layer_norm", "add_layer_norm", "depthwise_conv", "selective_scan", "selective_scan_bwd",
           "selective_scan_2d", "selective_scan_2d_bwd", "deform_aggregate", "deform_aggregate_bwd"]


def python_executor(mode, calls):
    """An executor written in Python; `calls` receives the task count of each call."""

    def run(data, fn, task, count):
        calls.append(count)
        if mode == "reverse":
            for i in reversed(range(count)):
                fn(task, i)
            return 0
        if mode == "python_threads":  # the tasks concurrently, on threads the library did not start
            workers = [threading.Thread(target=fn, args=(task, i)) for i in range(count)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            return 0
        if mode == "first_then_fail":
            fn(task, 0)
            return -1
        if mode == "fail":
            return 1
        if mode == "skip":  # claims success without running anything
            return 0
        raise ValueError(mode)

    return kl.CPU_EXECUTOR(run)


class installed:
    """Installs an executor on the calling thread for a `with` block."""

    def __init__(self, executor):
        self.executor = executor

    def __enter__(self):
        LIB.ssm_set_cpu_executor(self.executor, None)

    def __exit__(self, *exc):
        LIB.ssm_set_cpu_executor(None, None)


@needs_lib
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("mode", ["reverse", "python_threads", "first_then_fail", "fail", "skip"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_executor_gives_the_kernels_own_results(kernel, mode, dtype, monkeypatch):
    a = make_inputs(dtype)
    expected = direct_kernel(kernel, a, 4, monkeypatch)
    assert_identical(direct_kernel(kernel, a, 1, monkeypatch), expected, f"{kernel} one thread")
    calls = []
    executor = python_executor(mode, calls)
    with installed(executor):
        actual = direct_kernel(kernel, a, 4, monkeypatch)
    assert calls and all(2 <= c <= 4 for c in calls), f"{kernel}: executor calls {calls}"
    assert_identical(actual, expected, f"{kernel} on a '{mode}' executor")


@needs_lib
def test_executor_is_per_thread_and_cleared_by_null(monkeypatch):
    a = make_inputs()
    expected = direct_kernel("layer_norm", a, 4, monkeypatch)
    calls = []
    executor = python_executor("reverse", calls)
    other = {}
    with installed(executor):
        worker = threading.Thread(target=lambda: other.update(y=layer_norm(a["X"], a["ln1_w"], a["ln1_b"], 4)))
        worker.start()
        worker.join()
    assert calls == [], "another thread's kernel call used this thread's executor"
    assert_identical([other["y"]], expected, "other thread")
    assert_identical([layer_norm(a["X"], a["ln1_w"], a["ln1_b"], 4)], expected, "after clearing")
    assert calls == [], "the executor was used after ssm_set_cpu_executor(NULL)"


@needs_lib
def test_tiny_problems_stay_on_the_calling_thread():
    calls = []
    x = np.ones((2, 8), np.float32)
    w, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    with installed(python_executor("reverse", calls)):
        layer_norm(x, w, b, 4)
    assert calls == []


# ------------------------------------------------------------------------------------------------
# ONNX Runtime: a model of several custom nodes, on the intra-op pool


def make_model(elem):
    from onnx import helper

    def node(op, inputs, outputs, **attrs):
        return helper.make_node(op, inputs, outputs, domain="ssmpose", **attrs)

    nodes = [
        node("LayerNorm", ["X", "ln1_w", "ln1_b"], ["ln"], epsilon=EPS),
        node("MultiKernelDepthwiseConv", ["ln", "dw_w", "dw_b"], ["dw"], kernel_sizes=DW["kernel_sizes"],
             group_channels=DW["group_channels"], shuffle_groups=DW["shuffle_groups"], activation=DW["activation"]),
        node("AddLayerNorm", ["dw", "X", "ln2_w", "ln2_b"], ["aln_y", "aln_s"], epsilon=EPS),
        node("SelectiveScan", SCAN_NAMES, ["scan"], delta_softplus=1),
        node("SelectiveScan2D", SCAN2D_NAMES, ["scan2d"], delta_softplus=1),
        node("DeformAggregate", ["value", "offset_mask"], ["deform"], **DEFORM),
    ]
    inputs = [helper.make_tensor_value_info(n, elem, None) for n in make_inputs()]
    outputs = [helper.make_tensor_value_info(n, elem, None) for n in MODEL_OUTPUTS]
    graph = helper.make_graph(nodes, "thread_pool", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ssmpose", 4)])
    model.ir_version = 8
    return model


MODEL_OUTPUTS = ["ln", "dw", "aln_y", "aln_s", "scan", "scan2d", "deform"]


def model_by_kernels(a, monkeypatch):
    """The model's outputs computed by the kernels directly, on one thread."""
    monkeypatch.setattr(kl, "_num_threads", lambda: 1)
    ln = layer_norm(a["X"], a["ln1_w"], a["ln1_b"], 1)
    dw = depthwise_conv(ln, a["dw_w"], a["dw_b"], 1)
    aln_y, aln_s = layer_norm(dw, a["ln2_w"], a["ln2_b"], 1, residual=a["X"])
    scan = kl.selective_scan_fwd(*_torch(a, SCAN_NAMES)).numpy()
    scan2d = kl.selective_scan_2d_fwd(*_torch(a, SCAN2D_NAMES)).numpy()
    deform = kl.deform_aggregate_fwd(*_torch(a, ["value", "offset_mask"]), *DEFORM_ARGS).numpy()
    return [ln, dw, aln_y, aln_s, scan, scan2d, deform]


def session(model, intra_op_threads):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    ort_library.register(options)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _elem(dtype):
    from onnx import TensorProto
    return TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT


DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])


@needs_lib
@needs_ort_lib
@DTYPES
@pytest.mark.parametrize("intra_op_threads", [1, 2])
def test_ort_model_matches_the_kernels(intra_op_threads, dtype, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.delenv("SSMPOSE_NUM_THREADS", raising=False)
    a = make_inputs(dtype)
    sess = session(make_model(_elem(dtype)), intra_op_threads)
    expected = model_by_kernels(a, monkeypatch)
    for _ in range(2):  # the pool's threads are warm the second time
        assert_identical(sess.run(MODEL_OUTPUTS, a), expected, f"ONNX Runtime, intra_op_num_threads {intra_op_threads}")


@needs_lib
@needs_ort_lib
def test_ort_concurrent_runs_match_the_kernels(monkeypatch):
    """Two Run calls at once on one session: each compute installs its own executor on its own thread."""
    pytest.importorskip("onnxruntime")
    monkeypatch.delenv("SSMPOSE_NUM_THREADS", raising=False)
    a = make_inputs()
    sess = session(make_model(_elem(np.float32)), 2)
    expected = model_by_kernels(a, monkeypatch)
    results = [None] * 4

    def run(i):
        results[i] = sess.run(MODEL_OUTPUTS, a)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(len(results))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for r in results:
        assert_identical(r, expected, "concurrent Run")


_CHILD = r"""
import sys
import numpy as np
import onnxruntime as ort
library, model, data, out, threads = sys.argv[1:]
options = ort.SessionOptions()
options.intra_op_num_threads = int(threads)
options.register_custom_ops_library(library)
sess = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
feeds = dict(np.load(data))
outputs = [o.name for o in sess.get_outputs()]
np.savez(out, **dict(zip(outputs, sess.run(outputs, feeds))))
"""


@needs_lib
@needs_ort_lib
@pytest.mark.parametrize("own_threads", ["1", "2"])
def test_ort_model_with_the_librarys_own_threads(own_threads, tmp_path, monkeypatch):
    """SSMPOSE_NUM_THREADS forces the library's own threads (a subprocess: the variable is read per kernel)."""
    pytest.importorskip("onnxruntime")
    a = make_inputs()
    model, data, out = tmp_path / "model.onnx", tmp_path / "inputs.npz", tmp_path / "outputs.npz"
    model.write_bytes(make_model(_elem(np.float32)).SerializeToString())
    np.savez(data, **a)
    env = dict(os.environ, SSMPOSE_NUM_THREADS=own_threads)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(ORT_LIB), str(model), str(data), str(out), "2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as got:
        actual = [got[name] for name in MODEL_OUTPUTS]
    assert_identical(actual, model_by_kernels(a, monkeypatch), f"SSMPOSE_NUM_THREADS={own_threads}")
