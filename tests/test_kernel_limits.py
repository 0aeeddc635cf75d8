"""Shape limits of the kernels at their boundaries (docs/ops.md, "Limits"): SelectiveScan, DeformAggregate,
AddLayerNorm and MultiKernelDepthwiseConv (LayerNorm's are in tests/test_layer_norm_op.py).

The C entry points check the shape before the data pointers, so a call with NULL data pointers returns
SSM_ERR_NULL_POINTER for a shape within the limits and SSM_ERR_BAD_SIZE for one beyond them, without
touching memory: the boundaries are tested on both sides with no allocation. This holds for the CUDA
library too (its checks run on the host before any CUDA call), so its limits are tested here when the
library is built, GPU or not. The Python mirrors in kernel_library must agree with the C checks.
"""
from __future__ import annotations

import ctypes

import pytest
import torch

from ssmpose.custom_ops import kernel_library as kl

from built_libraries import cuda_kernel_library

SSM_ERR_NULL_POINTER, SSM_ERR_BAD_SIZE = 1, 2
IN, OUT = SSM_ERR_NULL_POINTER, SSM_ERR_BAD_SIZE  # answer to a NULL-pointer call within / beyond the limits
E60 = 1 << 60

CPU = kl.cpu_library()
CUDA = cuda_kernel_library()
needs_cpu = pytest.mark.skipif(CPU is None, reason="CPU kernel library not built")
needs_cuda_lib = pytest.mark.skipif(CUDA is None, reason="CUDA kernel library not built")


def scan(batch, groups, dim, dstate, length):
    return kl.ScanShape(batch, groups, dim, dstate, length, 1, kl.SSM_FLOAT32)


def deform(**changes):
    s = dict(batch=1, height=4, width=4, out_height=4, out_width=4, groups=2, group_channels=4, offset_stride=54,
             kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1, dilation_w=1,
             remove_center=0, offset_scale=1.0, dtype=kl.SSM_FLOAT32)
    s.update(changes)
    return kl.DeformShape(**s)


def layer_norm(rows, channels):
    return kl.LayerNormShape(rows, channels, 1e-5, kl.SSM_FLOAT32)


def dwconv(**changes):
    """A MultiKernelDepthwiseConv shape: one group of all channels unless kernel_sizes / group_channels are given."""
    s = dict(batch=1, height=4, width=4, channels=8, kernel_max=3, kernel_sizes=None, group_channels=None,
             shuffle_groups=1, activation=kl.SSM_ACTIVATION_NONE, dtype=kl.SSM_FLOAT32)
    s.update(changes)
    kernels = s.pop("kernel_sizes") or [s["kernel_max"]]
    groups = s.pop("group_channels") or [s["channels"]]
    return kl.DwConvShape(num_groups=len(kernels), kernel_sizes=(ctypes.c_int32 * kl.DWCONV_MAX_GROUPS)(*kernels),
                          group_channels=(ctypes.c_int32 * kl.DWCONV_MAX_GROUPS)(*groups), **s)


def add_layer_norm_status(lib, device, shape):
    """Status of AddLayerNorm for NULL data pointers (LayerNorm's limits: tests/test_layer_norm_op.py)."""
    n = None
    if device == "cpu":
        return lib.ssm_add_layer_norm_fwd_cpu(ctypes.byref(shape), n, n, n, n, n, n, 1)
    return lib.ssm_add_layer_norm_fwd_cuda(ctypes.byref(shape), n, n, n, n, n, n, n)


def dwconv_status(lib, device, shape):
    n = None
    if device == "cpu":
        return lib.ssm_depthwise_conv_fwd_cpu(ctypes.byref(shape), n, n, n, n, 1)
    return lib.ssm_depthwise_conv_fwd_cuda(ctypes.byref(shape), n, n, n, n, n)


def scan_status(lib, device, shape):
    """Status of forward and backward (and the CUDA workspace query) for NULL data pointers."""
    n = None
    if device == "cpu":
        fwd = lib.ssm_selective_scan_fwd_cpu(ctypes.byref(shape), n, n, n, n, n, n, n, n, 1)
        bwd = lib.ssm_selective_scan_bwd_cpu(ctypes.byref(shape), *[n] * 15, 1)
    else:
        fwd = lib.ssm_selective_scan_fwd_cuda(ctypes.byref(shape), n, n, n, n, n, n, n, n, n)
        bwd = lib.ssm_selective_scan_bwd_cuda(ctypes.byref(shape), *[n] * 17)
        if fwd == OUT:  # no workspace for a refused shape (0 is also the answer for a single chunk)
            assert lib.ssm_selective_scan_bwd_cuda_workspace_size(ctypes.byref(shape)) == 0
    assert fwd == bwd
    return fwd


def deform_status(lib, device, shape):
    n = None
    if device == "cpu":
        fwd = lib.ssm_deform_aggregate_fwd_cpu(ctypes.byref(shape), n, n, n, n, 1)
        bwd = lib.ssm_deform_aggregate_bwd_cpu(ctypes.byref(shape), n, n, n, n, n, 1)
    else:
        fwd = lib.ssm_deform_aggregate_fwd_cuda(ctypes.byref(shape), n, n, n, n, n)
        bwd = lib.ssm_deform_aggregate_bwd_cuda(ctypes.byref(shape), n, n, n, n, n, n)
    assert fwd == bwd
    return fwd


def scan_mirror(device, s):
    return kl.scan_limit_error(s.batch, s.groups, s.dim, s.dstate, s.length, device)


def deform_mirror(device, s):
    return kl.deform_limit_error(s.batch, s.height, s.width, s.out_height, s.out_width, s.groups, s.group_channels,
                                 s.offset_stride, s.kernel_h, s.kernel_w, s.stride_h, s.stride_w, s.pad_h, s.pad_w,
                                 s.dilation_h, s.dilation_w, s.remove_center, device)


# (shape, expected answer) pairs: each limit just inside and just outside
SCAN_CPU = [
    (scan(1, 1, 1 << 30, 1, (1 << 30) - 1), IN),  # B*G*D*L = 2^60 - 2^30
    (scan(1, 1, 1 << 30, 1, 1 << 30), OUT),  # B*G*D*L = 2^60
    (scan(1, (1 << 28) - 1, 1, 16, 1 << 28), IN),  # B*G*N*L just below 2^60
    (scan(1, 1 << 28, 1, 16, 1 << 28), OUT),  # Bs/Cs with 2^60 elements
    (scan(1 << 28, 1, 1 << 28, 16, 1), OUT),  # the per-batch dA partials: B*G*D*N = 2^60
    (scan(1, 1, 1, 16, 4), IN),
    (scan(1, 1, 1, 17, 4), OUT),
]

SCAN_CUDA = [
    (scan(1, 1, 1, 1, (1 << 31) - 1), IN),  # L below 2^31
    (scan(1, 1, 1, 1, 1 << 31), OUT),
    (scan(1, 1, (1 << 31) - 1, 1, 8), IN),  # D below 2^31
    (scan(1, 1, 1 << 31, 1, 8), OUT),
    (scan(1 << 31, 1, 1, 1, 8), OUT),
    (scan(1 << 29, 1, 1 << 29, 1, 4), OUT),  # B*G*D*L = 2^60
    (scan(1 << 26, 1, 1, 1, 1 << 30), OUT),  # Bs/Cs counted with N = 16: B*G*16*L = 2^60
    (scan((1 << 26) - 1, 1, 1, 1, 1 << 30), IN),
    # launch grids: L = 8 (1 lane per row, 32 rows per warp): backward grid B*G*ceil(D/256)
    (scan((1 << 30) - 1, 2, 1, 1, 8), IN),  # 2^31 - 2 blocks
    (scan(1 << 30, 2, 1, 1, 8), OUT),  # 2^31 blocks
    # L >= 256 (32 lanes per row): forward grid ceil(B*G*D / 4)
    (scan(1, 1 << 3, (1 << 30) - 1, 1, 256), IN),
    (scan(1, 1 << 3, 1 << 30, 1, 256), OUT),  # 2^31 blocks
]

DEFORM_CPU = [
    (deform(), IN),
    (deform(batch=1 << 26, height=1 << 10, width=1 << 10, groups=1, group_channels=(1 << 14) - 1, offset_stride=27,
            out_height=4, out_width=4), IN),
    (deform(batch=1 << 26, height=1 << 10, width=1 << 10, groups=1, group_channels=1 << 14, offset_stride=27,
            out_height=4, out_width=4), OUT),  # value with 2^60 elements
    (deform(kernel_h=1024, kernel_w=1024, remove_center=0, groups=1, offset_stride=3 << 20), IN),  # K = 2^20
    (deform(kernel_h=1025, kernel_w=1024, remove_center=0, groups=1, offset_stride=3 * 1025 * 1024), OUT),
]

DEFORM_CUDA = [
    (deform(), IN),
    # one image of value: H*W*G*C below / at 2^31 (32-bit offsets inside an image)
    (deform(height=1 << 15, width=(1 << 15) - 1, groups=1, group_channels=2, offset_stride=27, out_height=4,
            out_width=4), IN),
    (deform(height=1 << 15, width=1 << 15, groups=1, group_channels=2, offset_stride=27, out_height=4,
            out_width=4), OUT),
    # offset_mask of one image: Hout*Wout*P at 2^31
    (deform(out_height=1 << 12, out_width=1 << 12, groups=1, group_channels=4, offset_stride=1 << 7), OUT),
    (deform(out_height=1 << 12, out_width=(1 << 12) - 1, groups=1, group_channels=4, offset_stride=1 << 7), IN),
    # threads per image: Hout*Wout*G*TPG < 2^31 - 256 (C = 17 floats: 17 scalar lanes, TPG = 32 > C)
    (deform(out_height=1 << 13, out_width=1 << 13, groups=1, group_channels=17, offset_stride=27, height=4,
            width=4), OUT),
    (deform(out_height=1 << 13, out_width=(1 << 13) - 1, groups=1, group_channels=17, offset_stride=27, height=4,
            width=4), IN),
    # per-dimension limit 2^30 - 1 and the batch
    (deform(batch=(1 << 30) - 1), IN),
    (deform(batch=1 << 30), OUT),
    (deform(pad_w=(1 << 30) - 6), IN),  # the sampling window's span, 2^30 - 1
    (deform(pad_w=(1 << 30) - 5), OUT),
    (deform(kernel_h=4096, groups=1, offset_stride=3 * 4096 * 3), OUT),
    (deform(dilation_w=65536), OUT),
]

ADD_LAYER_NORM_CPU = [
    (layer_norm(1 << 30, (1 << 30) - 1), IN),  # rows*C = 2^60 - 2^30
    (layer_norm(1 << 30, 1 << 30), OUT),  # rows*C = 2^60
    (layer_norm(1, (1 << 60) - 1), IN),
    (layer_norm(3, 1 << 62), OUT),  # rows*C overflows int64
]

ADD_LAYER_NORM_CUDA = [
    (layer_norm(1, 1 << 30), IN),  # C <= 2^30: offsets inside a row are 32-bit
    (layer_norm(1, (1 << 30) + 1), OUT),
    (layer_norm(1 << 30, (1 << 30) - 1), IN),
    (layer_norm(1 << 30, 1 << 30), OUT),  # rows*C = 2^60
]

_ROWS_15 = ((1 << 60) - 1) // 17  # widest single-channel row with kernel_max 15: 17 row buffers
_ROWS_1 = ((1 << 60) - 1) // 3  # kernel_max 1: 3 row buffers

DWCONV_CPU = [
    (dwconv(), IN),
    (dwconv(batch=1 << 20, height=1 << 20, width=1 << 10, channels=(1 << 10) - 1), IN),  # x with 2^60 - 2^50
    (dwconv(batch=1 << 20, height=1 << 20, width=1 << 10, channels=1 << 10), OUT),  # x with 2^60 elements
    (dwconv(batch=1 << 40, height=1 << 40, width=1, channels=1), OUT),  # B*H*W*C overflows int64
    # the per-thread float32 row buffers: (kernel_max + 2) * W * C <= 2^60 - 1
    (dwconv(kernel_max=15, height=1, width=_ROWS_15, channels=1), IN),
    (dwconv(kernel_max=15, height=1, width=_ROWS_15 + 1, channels=1), OUT),
    (dwconv(kernel_max=1, height=1, width=_ROWS_1, channels=1), IN),
    (dwconv(kernel_max=1, height=1, width=_ROWS_1 + 1, channels=1), OUT),
    # the channel count is 64-bit: 16 groups of 2^31 - 1 channels
    (dwconv(channels=16 * ((1 << 31) - 1), kernel_sizes=[3] * 16, group_channels=[(1 << 31) - 1] * 16), IN),
]

DWCONV_CUDA = [
    (dwconv(), IN),
    # H, W and C <= 2^30: coordinates, channels and shared-memory offsets are 32-bit
    (dwconv(height=1 << 30, width=1, channels=1), IN),
    (dwconv(height=(1 << 30) + 1, width=1, channels=1), OUT),
    (dwconv(height=1, width=1 << 30, channels=1), IN),
    (dwconv(height=1, width=(1 << 30) + 1, channels=1), OUT),
    (dwconv(height=1, width=1, channels=1 << 30), IN),
    (dwconv(height=1, width=1, channels=(1 << 30) + 1, kernel_sizes=[3, 3], group_channels=[1 << 30, 1]), OUT),
    # B*H*W*C <= 2^60 - 1 (global offsets are 64-bit)
    (dwconv(batch=(1 << 31) - 1, height=1 << 29, width=1, channels=1), IN),
    (dwconv(batch=1 << 31, height=1 << 29, width=1, channels=1), OUT),
]


@needs_cpu
@pytest.mark.parametrize("shape,expected", ADD_LAYER_NORM_CPU)
def test_add_layer_norm_cpu_limits(shape, expected):
    assert add_layer_norm_status(CPU, "cpu", shape) == expected


@needs_cuda_lib
@pytest.mark.parametrize("shape,expected", ADD_LAYER_NORM_CUDA)
def test_add_layer_norm_cuda_limits(shape, expected):
    assert add_layer_norm_status(CUDA, "cuda", shape) == expected


@needs_cpu
@pytest.mark.parametrize("shape,expected", DWCONV_CPU)
def test_dwconv_cpu_limits(shape, expected):
    assert dwconv_status(CPU, "cpu", shape) == expected


@needs_cuda_lib
@pytest.mark.parametrize("shape,expected", DWCONV_CUDA)
def test_dwconv_cuda_limits(shape, expected):
    assert dwconv_status(CUDA, "cuda", shape) == expected


@needs_cpu
@pytest.mark.parametrize("shape,expected", SCAN_CPU)
def test_scan_cpu_limits(shape, expected):
    assert scan_status(CPU, "cpu", shape) == expected
    assert (scan_mirror("cpu", shape) is None) == (expected == IN)


@needs_cuda_lib
@pytest.mark.parametrize("shape,expected", SCAN_CUDA)
def test_scan_cuda_limits(shape, expected):
    assert scan_status(CUDA, "cuda", shape) == expected
    assert (scan_mirror("cuda", shape) is None) == (expected == IN)


@needs_cpu
@pytest.mark.parametrize("shape,expected", DEFORM_CPU)
def test_deform_cpu_limits(shape, expected):
    assert deform_status(CPU, "cpu", shape) == expected
    assert (deform_mirror("cpu", shape) is None) == (expected == IN)


@needs_cuda_lib
@pytest.mark.parametrize("shape,expected", DEFORM_CUDA)
def test_deform_cuda_limits(shape, expected):
    assert deform_status(CUDA, "cuda", shape) == expected
    assert (deform_mirror("cuda", shape) is None) == (expected == IN)


def test_scan_python_refuses_before_allocating():
    """The tensor wrappers raise a ValueError naming the limit before any output is allocated."""
    u = torch.zeros(1).expand(1, 1 << 30, 1 << 30)  # 2^60 elements, one float of storage
    A = torch.zeros(1).expand(1 << 30, 1)
    Bs = torch.zeros(1).expand(1, 1, 1, 1 << 30)
    with pytest.raises(ValueError, match="limit"):
        kl.selective_scan_fwd(u, u, A, Bs, Bs)


def test_deform_python_refuses_before_allocating():
    value = torch.zeros(1).expand(1 << 26, 1 << 10, 1 << 10, 1 << 14)
    om = torch.zeros(1).expand(1 << 26, 1 << 10, 1 << 10, 27)
    with pytest.raises(ValueError, match="limit"):
        kl.deform_aggregate_fwd(value, om, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1 << 14, 1.0, 0)


@needs_cpu
def test_scan_cpu_runs_at_a_long_length():
    """A real run on a long sequence (the limits themselves, 2^60 elements, are out of reach of any memory:
    the CPU kernels index in 64 bits throughout)."""
    from ssmpose.custom_ops import reference

    g = torch.Generator().manual_seed(0)
    L = 1 << 15
    u = torch.randn(1, 4, L, generator=g)
    delta = torch.randn(1, 4, L, generator=g) - 2
    A = -torch.rand(4, 2, generator=g)
    Bs, Cs = torch.randn(1, 2, 2, L, generator=g), torch.randn(1, 2, 2, L, generator=g)
    y = kl.selective_scan_fwd(u, delta, A, Bs, Cs)
    ref = reference.selective_scan_chunked(u.double(), delta.double(), A.double(), Bs.double(), Cs.double(),
                                           chunk_size=256)
    assert ((y.double() - ref).abs().max() / ref.abs().max()).item() < 1e-4
