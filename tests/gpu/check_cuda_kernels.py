#!/usr/bin/env python3
"""Check and time the CUDA kernels of the ssmpose kernel library (libssmpose_kernels_cuda).

Run from the repository root on a machine with an NVIDIA GPU, PyTorch with CUDA and nvcc:

    python3 tests/gpu/check_cuda_kernels.py                 # build into /tmp, check, time
    python3 tests/gpu/check_cuda_kernels.py --lib path/to/libssmpose_kernels_cuda.so --no-bench
    python3 tests/gpu/check_cuda_kernels.py --lib-dir build/lib          # CMake build output
    python3 tests/gpu/check_cuda_kernels.py --quick --no-bench           # small shapes (compute-sanitizer)

What it does
  * builds the library with nvcc (selective_scan.cu, deform_aggregate.cu, ../common.cpp) unless --lib
    is given, and loads it with ctypes;
  * compares every operator against a float64 PyTorch reference computed on the GPU: forward in
    float32 / float16 / bfloat16 and backward (against torch.autograd on the float64 reference), with
    outputs poisoned with NaN before each call so that unwritten elements show; forward results must be
    bitwise identical over repeated calls (races);
  * SelectiveScan2D (domain version 2): the same forward / backward checks against a float64 reference
    written here as DESIGN.md defines the op (training/models/ss2d.py's cross_scan -> SelectiveScan ->
    cross_merge, on the GPU); agreement with the version-1 path (cross_scan -> SelectiveScan CUDA kernel ->
    cross_merge) on the same inputs; every forward and backward output bitwise identical over repeated calls
    (the 2-D kernels use no atomics);
  * LayerNorm (domain version 3): forward in float32 / float16 / bfloat16 against a float64 reference for
    channel counts 1..4096 (the register path with 16-byte vectors, the scalar path for odd counts or
    misaligned pointers, the loop path for long rows), up to ~1e6 rows, rows with a large offset (two-pass
    variance), bitwise-identical repeated calls;
  * AddLayerNorm (domain version 4): the stored sum S must equal add_layer_norm_reference's (float32 add rounded
    to the type) bitwise; Y against the float64 LayerNorm of that S (tight) and against the float64
    add_layer_norm_reference of the unrounded sum (looser by the rounding of S); (Y, S) bitwise equal to
    ssm_layer_norm_fwd_cuda applied to the stored S (same path: all pointers aligned, or all misaligned);
    channel counts 1..4096 in float32 / float16 / bfloat16;
  * MultiKernelDepthwiseConv (domain version 4): against the float64 multi_kernel_depthwise_conv_reference on
    hrvmamba_small/base's LPU shapes (kernels 3/5/7/9, shuffle 4, GELU) and odd shapes (1x1 images, images
    smaller than the kernel, one group, 16 groups, kernels 1 and 11..15, no shuffle, shuffle = C, no activation,
    C not a multiple of the vector width, misaligned pointers, batch 0, more than 2^31 elements), with a
    per-element bound from float32 accumulation and the output rounding; weight taps outside a group's
    k x k centre are NaN (they must not be read); bitwise-identical repeated calls;
  * checks that bad arguments return status codes;
  * times forward and backward of the HRVMamba-small/base shapes at batch 128 (float32 / float16) with
    CUDA events (median of 20 after warm-up) and prints the fraction of the measured device-to-device
    copy bandwidth (bytes read + written / time); SelectiveScan2D beside the version-1 path it replaces;
    LayerNorm for the HRVMamba widths and a sweep of channel counts, one line per case with the effective
    GB/s (2 x rows x C x element size / time) beside torch.nn.functional.layer_norm on the same data;
    AddLayerNorm beside a separate add + ssm_layer_norm_fwd_cuda; MultiKernelDepthwiseConv (float16, hrvmamba_small's
    four LPU shapes at batch 32 and 128) beside PyTorch's chain (permute, split, F.conv2d per group, cat,
    shuffle, gelu, channel-last output), GB/s = one read of X and one write of Y.
  * VSSBlockTail (domain version 7): against the float64 vss_block_tail_reference (custom_ops/reference.py) in
    float32 / float16 / bfloat16, on the HRVMamba widths (the tensor-core path), odd widths and misaligned
    weights (the SIMT path), the largest widths (the most shared memory), rows that are not a multiple of the
    tile, batch 0; outputs poisoned with NaN, bitwise-identical repeated calls, bad arguments' status codes;
    timed against the unfused chain in PyTorch (--bench-ops vsstail).
The references are self-checked against naive loops with --selftest-reference (runs on the CPU too).
Exit status 0 when every check passed.
"""
from __future__ import annotations

import argparse
import ctypes
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KDIR = os.path.join(REPO, "custom_ops", "csrc", "kernels")

SSM_OK, SSM_ERR_NULL_POINTER, SSM_ERR_BAD_SIZE, SSM_ERR_BAD_DTYPE, SSM_ERR_UNSUPPORTED, SSM_ERR_CUDA = range(6)
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


class ScanShape(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_int64), ("groups", ctypes.c_int64), ("dim", ctypes.c_int64),
                ("dstate", ctypes.c_int64), ("length", ctypes.c_int64),
                ("delta_softplus", ctypes.c_int32), ("dtype", ctypes.c_int32)]


class Scan2DShape(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_int64), ("height", ctypes.c_int64), ("width", ctypes.c_int64),
                ("dim", ctypes.c_int64), ("directions", ctypes.c_int64), ("dstate", ctypes.c_int64),
                ("delta_softplus", ctypes.c_int32), ("dtype", ctypes.c_int32)]


class DeformShape(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_int64), ("height", ctypes.c_int64), ("width", ctypes.c_int64),
                ("out_height", ctypes.c_int64), ("out_width", ctypes.c_int64),
                ("groups", ctypes.c_int64), ("group_channels", ctypes.c_int64),
                ("offset_stride", ctypes.c_int64),
                ("kernel_h", ctypes.c_int32), ("kernel_w", ctypes.c_int32),
                ("stride_h", ctypes.c_int32), ("stride_w", ctypes.c_int32),
                ("pad_h", ctypes.c_int32), ("pad_w", ctypes.c_int32),
                ("dilation_h", ctypes.c_int32), ("dilation_w", ctypes.c_int32),
                ("remove_center", ctypes.c_int32), ("offset_scale", ctypes.c_float),
                ("dtype", ctypes.c_int32), ("activation", ctypes.c_int32)]


class LayerNormShape(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_int64), ("channels", ctypes.c_int64), ("epsilon", ctypes.c_float),
                ("dtype", ctypes.c_int32)]


DWCONV_MAX_GROUPS = 16


class VSSTailShape(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_int64), ("inner", ctypes.c_int64), ("channels", ctypes.c_int64),
                ("hidden", ctypes.c_int64), ("epsilon", ctypes.c_float), ("dtype", ctypes.c_int32)]


VSS_TAIL_PARAMS = ("out_norm_weight", "out_norm_bias", "out_proj", "norm_weight", "norm_bias", "fc1_weight",
                   "fc1_bias", "fc2_weight", "fc2_bias")


class VSSTailParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in VSS_TAIL_PARAMS]


class DwconvShape(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_int64), ("height", ctypes.c_int64), ("width", ctypes.c_int64),
                ("channels", ctypes.c_int64), ("kernel_max", ctypes.c_int32), ("num_groups", ctypes.c_int32),
                ("group_channels", ctypes.c_int32 * DWCONV_MAX_GROUPS),
                ("kernel_sizes", ctypes.c_int32 * DWCONV_MAX_GROUPS),
                ("shuffle_groups", ctypes.c_int32), ("activation", ctypes.c_int32), ("dtype", ctypes.c_int32)]


def dwconv_shape(B, H, W, C, kernel_max, kernel_sizes, group_channels, shuffle, gelu, dtype_code):
    sh = DwconvShape(batch=B, height=H, width=W, channels=C, kernel_max=kernel_max,
                     num_groups=len(kernel_sizes), shuffle_groups=shuffle, activation=int(gelu), dtype=dtype_code)
    for g, (k, c) in enumerate(zip(kernel_sizes, group_channels)):
        sh.kernel_sizes[g] = k
        sh.group_channels[g] = c
    return sh


# ----------------------------------------------------------------------------------------------
# Build and load

def build_library(out_dir: str, arch: str, defines=(), name="libssmpose_kernels_cuda.so") -> str:
    os.makedirs(out_dir, exist_ok=True)
    cdir = os.path.join(KDIR, "cuda")
    srcs = [os.path.join(cdir, n) for n in ("selective_scan.cu", "selective_scan_2d.cu", "deform_aggregate.cu",
                                            "layer_norm.cu", "depthwise_conv.cu", "vss_block_tail.cu")
            if os.path.exists(os.path.join(cdir, n))]
    common = os.path.join(KDIR, "common.cpp")
    flags = ["-O3", "-std=c++17", f"-arch={arch}", "-Xcompiler", "-fPIC,-fvisibility=hidden",
             "-I", KDIR, *[f"-D{d}" for d in defines]]
    procs, objs = [], []
    t0 = time.time()
    for s in srcs + ([common] if os.path.exists(common) else []):
        o = os.path.join(out_dir, name + "." + os.path.basename(s) + ".o")
        cmd = ["nvcc", *flags, "-c", s, "-o", o]
        if s.endswith(".cpp"):
            cmd = ["nvcc", "-x", "cu", *flags, "-c", s, "-o", o]
        procs.append(subprocess.Popen(cmd))
        objs.append(o)
    for p in procs:
        if p.wait() != 0:
            raise SystemExit("nvcc failed")
    lib = os.path.join(out_dir, name)
    subprocess.check_call(["nvcc", "-shared", f"-arch={arch}", "-cudart", "static", *objs, "-o", lib])
    print(f"built {lib} in {time.time() - t0:.1f}s")
    return lib


def load_library(path: str):
    lib = ctypes.CDLL(path)
    vp = ctypes.c_void_p
    lib.ssm_selective_scan_fwd_cuda.argtypes = [ctypes.POINTER(ScanShape)] + [vp] * 9
    lib.ssm_selective_scan_fwd_cuda.restype = ctypes.c_int
    lib.ssm_selective_scan_bwd_cuda_workspace_size.argtypes = [ctypes.POINTER(ScanShape)]
    lib.ssm_selective_scan_bwd_cuda_workspace_size.restype = ctypes.c_size_t
    lib.ssm_selective_scan_bwd_cuda.argtypes = [ctypes.POINTER(ScanShape)] + [vp] * 17
    lib.ssm_selective_scan_bwd_cuda.restype = ctypes.c_int
    if hasattr(lib, "ssm_selective_scan_2d_fwd_cuda"):  # absent from libraries older than domain version 2
        lib.ssm_selective_scan_2d_fwd_cuda.argtypes = [ctypes.POINTER(Scan2DShape)] + [vp] * 9
        lib.ssm_selective_scan_2d_fwd_cuda.restype = ctypes.c_int
        lib.ssm_selective_scan_2d_bwd_cuda_workspace_size.argtypes = [ctypes.POINTER(Scan2DShape)]
        lib.ssm_selective_scan_2d_bwd_cuda_workspace_size.restype = ctypes.c_size_t
        lib.ssm_selective_scan_2d_bwd_cuda.argtypes = [ctypes.POINTER(Scan2DShape)] + [vp] * 17
        lib.ssm_selective_scan_2d_bwd_cuda.restype = ctypes.c_int
    if hasattr(lib, "ssm_selective_scan_2d_proj_fwd_cuda"):  # absent from libraries older than domain version 6
        lib.ssm_selective_scan_2d_proj_fwd_cuda.argtypes = [ctypes.POINTER(Scan2DShape), ctypes.c_int64] + [vp] * 8
        lib.ssm_selective_scan_2d_proj_fwd_cuda.restype = ctypes.c_int
    if hasattr(lib, "ssm_layer_norm_fwd_cuda"):  # absent from libraries older than domain version 3
        lib.ssm_layer_norm_fwd_cuda.argtypes = [ctypes.POINTER(LayerNormShape)] + [vp] * 5
        lib.ssm_layer_norm_fwd_cuda.restype = ctypes.c_int
    if hasattr(lib, "ssm_add_layer_norm_fwd_cuda"):  # absent from libraries older than domain version 4
        lib.ssm_add_layer_norm_fwd_cuda.argtypes = [ctypes.POINTER(LayerNormShape)] + [vp] * 7
        lib.ssm_add_layer_norm_fwd_cuda.restype = ctypes.c_int
    if hasattr(lib, "ssm_depthwise_conv_fwd_cuda"):
        lib.ssm_depthwise_conv_fwd_cuda.argtypes = [ctypes.POINTER(DwconvShape)] + [vp] * 5
        lib.ssm_depthwise_conv_fwd_cuda.restype = ctypes.c_int
    if hasattr(lib, "ssm_vss_block_tail_fwd_cuda"):  # absent from libraries older than domain version 7
        lib.ssm_vss_block_tail_fwd_cuda.argtypes = [ctypes.POINTER(VSSTailShape), vp, vp,
                                                    ctypes.POINTER(VSSTailParams), vp, vp]
        lib.ssm_vss_block_tail_fwd_cuda.restype = ctypes.c_int
    lib.ssm_deform_aggregate_fwd_cuda.argtypes = [ctypes.POINTER(DeformShape)] + [vp] * 5
    lib.ssm_deform_aggregate_fwd_cuda.restype = ctypes.c_int
    lib.ssm_deform_aggregate_bwd_cuda.argtypes = [ctypes.POINTER(DeformShape)] + [vp] * 6
    lib.ssm_deform_aggregate_bwd_cuda.restype = ctypes.c_int
    return lib


def P(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def stream_ptr():
    return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)


# ----------------------------------------------------------------------------------------------
# References (float64, differentiable)

def scan_ref(u, delta, A, Bs, Cs, Ds, dbias, softplus, groups):
    """Hillis-Steele prefix scan of the affine maps h -> a*h + b along L (exact up to rounding)."""
    Bsz, CH, L = u.shape
    D = CH // groups
    dt = delta if dbias is None else delta + dbias[None, :, None]
    if softplus:
        dt = torch.where(dt <= 20, torch.log1p(torch.exp(torch.clamp(dt, max=20))), dt)
    Bx = Bs.repeat_interleave(D, dim=1)  # (B, CH, N, L)
    Cx = Cs.repeat_interleave(D, dim=1)
    a = torch.exp(dt[:, :, None, :] * A[None, :, :, None])
    b = (dt * u)[:, :, None, :] * Bx
    Pm, S = a, b
    off = 1
    while off < L:
        Pp = torch.nn.functional.pad(Pm[..., :-off], (off, 0), value=1.0)
        Sp = torch.nn.functional.pad(S[..., :-off], (off, 0), value=0.0)
        S = Pm * Sp + S
        Pm = Pm * Pp
        off *= 2
    y = (S * Cx).sum(2)
    if Ds is not None:
        y = y + Ds[None, :, None] * u
    return y


def scan_naive(u, delta, A, Bs, Cs, Ds, dbias, softplus, groups):
    Bsz, CH, L = u.shape
    N = A.shape[1]
    D = CH // groups
    y = torch.zeros_like(u)
    for b in range(Bsz):
        for c in range(CH):
            g = c // D
            h = [0.0] * N
            for t in range(L):
                dt = float(delta[b, c, t]) + (float(dbias[c]) if dbias is not None else 0.0)
                if softplus:
                    dt = math.log1p(math.exp(dt)) if dt <= 20 else dt
                acc = 0.0
                for n in range(N):
                    h[n] = math.exp(dt * float(A[c, n])) * h[n] + dt * float(Bs[b, g, n, t]) * float(u[b, c, t])
                    acc += float(Cs[b, g, n, t]) * h[n]
                y[b, c, t] = acc + (float(Ds[c]) * float(u[b, c, t]) if Ds is not None else 0.0)
    return y


# SelectiveScan2D, as DESIGN.md defines it: the four directions' sequences made by training/models/ss2d.py's
# cross_scan, SelectiveScan (version 1) over them, cross_merge back to the image.

def cross_scan(x):
    """(B, C, H, W) -> (B, 4C, L): row-major, column-major, and both reversed (ss2d.py's cross_scan)."""
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    return torch.cat([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge(y, height, width):
    """(B, 4C, L) -> (B, C, H, W): the four directions mapped back to row-major and summed (ss2d.py)."""
    b = y.shape[0]
    rows, cols, rows_reversed, cols_reversed = y.chunk(4, dim=1)
    rows = rows + rows_reversed.flip(-1)
    cols = cols + cols_reversed.flip(-1)
    c = rows.shape[1]
    return rows.reshape(b, c, height, width) + cols.reshape(b, c, width, height).transpose(2, 3)


def in_direction(t, k):
    """(B, H, W, C) -> (B, C, L): the positions in the order direction k visits them."""
    c = t.shape[-1]
    return cross_scan(t.permute(0, 3, 1, 2))[:, k * c:(k + 1) * c]


def from_direction(seq, k, height, width):
    """(B, C, L) in direction k's order -> (B, H, W, C) (cross_merge of direction k alone)."""
    b, c, length = seq.shape
    full = seq.new_zeros(b, 4 * c, length)
    full[:, k * c:(k + 1) * c] = seq
    return cross_merge(full, height, width).permute(0, 2, 3, 1)


def scan2d_sequences(x, delta, Bs, Cs):
    """Channel-last SelectiveScan2D inputs -> the version-1 SelectiveScan inputs of the four directions:
    u = cross_scan(x) (B, 4D, L), delta (B, 4D, L), Bs / Cs (B, 4, N, L)."""
    D = x.shape[-1]
    u = cross_scan(x.permute(0, 3, 1, 2))
    de = torch.cat([in_direction(delta[..., k * D:(k + 1) * D], k) for k in range(4)], dim=1)
    bs = torch.stack([in_direction(Bs[..., k, :], k) for k in range(4)], dim=1)
    cs = torch.stack([in_direction(Cs[..., k, :], k) for k in range(4)], dim=1)
    return u, de, bs, cs


def scan2d_ref(x, delta, A, Bs, Cs, Ds, dbias, softplus):
    """SelectiveScan2D in float64 (differentiable): cross_scan -> scan_ref -> cross_merge. x (B, H, W, D)."""
    _, H, W, _ = x.shape
    u, de, bs, cs = scan2d_sequences(x, delta, Bs, Cs)
    return cross_merge(scan_ref(u, de, A, bs, cs, Ds, dbias, softplus, 4), H, W).permute(0, 2, 3, 1)


def scan2d_naive(x, delta, A, Bs, Cs, Ds, dbias, softplus):
    """Loops over the positions in each direction's order, written from the operator's text alone."""
    B, H, W, D = x.shape
    L = H * W
    y = torch.zeros(B, H, W, D, dtype=torch.float64)
    for k in range(4):
        order = [(t // W, t % W) for t in range(L)] if k % 2 == 0 else [(t % H, t // H) for t in range(L)]
        if k >= 2:
            order = order[::-1]
        u = torch.stack([x[:, h, w, :] for h, w in order], dim=-1)                       # (B, D, L)
        de = torch.stack([delta[:, h, w, k * D:(k + 1) * D] for h, w in order], dim=-1)
        bs = torch.stack([Bs[:, h, w, k, :] for h, w in order], dim=-1)[:, None]        # (B, 1, N, L)
        cs = torch.stack([Cs[:, h, w, k, :] for h, w in order], dim=-1)[:, None]
        sl = slice(k * D, (k + 1) * D)
        yk = scan_naive(u, de, A[sl], bs, cs, None if Ds is None else Ds[sl], None if dbias is None else dbias[sl],
                        softplus, 1)
        for t, (h, w) in enumerate(order):
            y[:, h, w, :] += yk[:, :, t]
    return y


def project_scan2d_reference():
    """ssmpose.custom_ops.reference.selective_scan_2d_reference when this checkout has it (else None)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    try:
        from ssmpose.custom_ops.reference import selective_scan_2d_reference
    except Exception as exc:  # noqa: BLE001 - any import problem: report and carry on with the local one
        print(f"(ssmpose.custom_ops.reference.selective_scan_2d_reference not available: {exc!r})")
        return None
    return selective_scan_2d_reference


_REFERENCE_MODULE = []


def project_reference(name):
    """A function of custom_ops/reference.py (the project's float64 references), loaded from its file so that
    only torch is needed (importing the ssmpose package would pull in the training code's dependencies)."""
    if not _REFERENCE_MODULE:
        import importlib.util
        path = os.path.join(REPO, "custom_ops", "reference.py")
        spec = importlib.util.spec_from_file_location("ssmpose_reference", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _REFERENCE_MODULE.append(module)
    return getattr(_REFERENCE_MODULE[0], name)


def deform_points(p):
    pts = []
    for i in range(p["kw"]):
        for j in range(p["kh"]):
            if p["rc"] and i == p["kw"] // 2 and j == p["kh"] // 2:
                continue
            pts.append((i, j))
    return pts


def deform_ref(value, om, p, cells32=False):
    """Explicit bilinear gathering. value (B,H,W,G*C), om (B,Ho,Wo,P) float64.

    cells32: choose the bilinear cell (floor) and the in-image test from the sampling location computed
    in float32, as the kernels do. The gradient with respect to the offsets jumps where the location
    crosses an integer, so a float64 cell choice would disagree with any float32 kernel on the (rare)
    samples that lie within float32 rounding of an integer; the weights stay float64 either way."""
    B, H, W, GC = value.shape
    G, C = p["G"], p["C"]
    Ho, Wo = om.shape[1], om.shape[2]
    pts = deform_points(p)
    K = len(pts)
    dev = value.device
    v = value.reshape(B, H * W, G, C)
    omg = om[..., : G * K * 3].reshape(B, Ho, Wo, G, 3 * K)
    hw_ = (p["dw"] * (p["kw"] - 1)) >> 1
    hh_ = (p["dh"] * (p["kh"] - 1)) >> 1
    xo = torch.arange(Wo, device=dev, dtype=torch.float64)
    yo = torch.arange(Ho, device=dev, dtype=torch.float64)
    p0x = (xo * p["sw"] - p["pw"] + hw_) - hw_ * p["scale"]
    p0y = (yo * p["sh"] - p["ph"] + hh_) - hh_ * p["scale"]
    bidx = torch.arange(B, device=dev)[:, None, None, None].expand(B, Ho, Wo, G)
    gidx = torch.arange(G, device=dev)[None, None, None, :].expand(B, Ho, Wo, G)
    out = torch.zeros(B, Ho, Wo, G, C, dtype=value.dtype, device=dev)
    for k, (i, j) in enumerate(pts):
        dx = omg[..., 2 * k]
        dy = omg[..., 2 * k + 1]
        m = omg[..., 2 * K + k]
        px = p0x[None, None, :, None] + (i * p["dw"] + dx) * p["scale"]
        py = p0y[None, :, None, None] + (j * p["dh"] + dy) * p["scale"]
        if cells32:
            with torch.no_grad():
                sc = torch.tensor(p["scale"], dtype=torch.float32, device=dev)
                p0x32 = (xo * p["sw"] - p["pw"] + hw_).float() - float(hw_) * sc
                p0y32 = (yo * p["sh"] - p["ph"] + hh_).float() - float(hh_) * sc
                px32 = p0x32[None, None, :, None] + (float(i * p["dw"]) + dx.detach().float()) * sc
                py32 = p0y32[None, :, None, None] + (float(j * p["dh"]) + dy.detach().float()) * sc
                inb = (px32 > -1) & (py32 > -1) & (px32 < W) & (py32 < H)
                h0 = torch.floor(py32).double()
                w0 = torch.floor(px32).double()
        else:
            inb = (px > -1) & (py > -1) & (px < W) & (py < H)
            h0 = torch.floor(py)
            w0 = torch.floor(px)
        lh = py - h0
        lw = px - w0
        for (oh, ow, wt) in ((0, 0, (1 - lh) * (1 - lw)), (0, 1, (1 - lh) * lw),
                             (1, 0, lh * (1 - lw)), (1, 1, lh * lw)):
            hh = h0 + oh
            ww = w0 + ow
            ok = inb & (hh >= 0) & (hh <= H - 1) & (ww >= 0) & (ww <= W - 1)
            idx = (hh.clamp(0, H - 1) * W + ww.clamp(0, W - 1)).long()
            gathered = v[bidx, idx, gidx]  # (B,Ho,Wo,G,C)
            coef = torch.where(ok, m * wt, torch.zeros_like(wt))
            out = out + coef[..., None] * gathered
    return out.reshape(B, Ho, Wo, G * C)


def deform_naive(value, om, p):
    B, H, W, GC = value.shape
    G, C = p["G"], p["C"]
    Ho, Wo = om.shape[1], om.shape[2]
    pts = deform_points(p)
    K = len(pts)
    out = torch.zeros(B, Ho, Wo, GC, dtype=torch.float64)
    hw_ = (p["dw"] * (p["kw"] - 1)) >> 1
    hh_ = (p["dh"] * (p["kh"] - 1)) >> 1
    for b in range(B):
        for y in range(Ho):
            for x in range(Wo):
                for g in range(G):
                    o = om[b, y, x, g * 3 * K:(g + 1) * 3 * K]
                    for k, (i, j) in enumerate(pts):
                        px = (x * p["sw"] - p["pw"] + hw_) - hw_ * p["scale"] + (i * p["dw"] + float(o[2 * k])) * p["scale"]
                        py = (y * p["sh"] - p["ph"] + hh_) - hh_ * p["scale"] + (j * p["dh"] + float(o[2 * k + 1])) * p["scale"]
                        m = float(o[2 * K + k])
                        if not (px > -1 and py > -1 and px < W and py < H):
                            continue
                        h0, w0 = math.floor(py), math.floor(px)
                        lh, lw = py - h0, px - w0
                        for hh, ww, wt in ((h0, w0, (1 - lh) * (1 - lw)), (h0, w0 + 1, (1 - lh) * lw),
                                           (h0 + 1, w0, lh * (1 - lw)), (h0 + 1, w0 + 1, lh * lw)):
                            if 0 <= hh < H and 0 <= ww < W:
                                out[b, y, x, g * C:(g + 1) * C] += m * wt * value[b, hh, ww, g * C:(g + 1) * C].double()
    return out


def selftest_reference():
    torch.manual_seed(0)
    ok = True
    for (B, G, D, N, L, sp, useD) in [(2, 3, 2, 3, 37, 1, True), (1, 2, 2, 1, 8, 0, False), (1, 1, 1, 2, 1, 1, True)]:
        CH = G * D
        u = torch.randn(B, CH, L, dtype=torch.float64)
        de = torch.randn(B, CH, L, dtype=torch.float64) * 0.5
        A = -torch.rand(CH, N, dtype=torch.float64) - 0.1
        Bs = torch.randn(B, G, N, L, dtype=torch.float64)
        Cs = torch.randn(B, G, N, L, dtype=torch.float64)
        Ds = torch.randn(CH, dtype=torch.float64) if useD else None
        db = torch.randn(CH, dtype=torch.float64) if useD else None
        e = (scan_ref(u, de, A, Bs, Cs, Ds, db, sp, G) - scan_naive(u, de, A, Bs, Cs, Ds, db, sp, G)).abs().max().item()
        print(f"scan ref vs naive B{B} G{G} D{D} N{N} L{L}: max err {e:.2e}")
        ok &= e < 1e-10
    project_ref = project_scan2d_reference()
    for (B, H, W, D, N, sp, useD) in [(2, 3, 4, 2, 2, 1, True), (1, 5, 3, 3, 1, 0, False), (1, 1, 6, 2, 3, 1, True),
                                      (2, 4, 1, 1, 1, 1, True), (1, 1, 1, 2, 2, 1, True)]:
        x = torch.randn(B, H, W, D, dtype=torch.float64)
        de = torch.randn(B, H, W, 4 * D, dtype=torch.float64) * 0.5
        A = -torch.rand(4 * D, N, dtype=torch.float64) - 0.1
        Bs = torch.randn(B, H, W, 4, N, dtype=torch.float64)
        Cs = torch.randn(B, H, W, 4, N, dtype=torch.float64)
        Ds = torch.randn(4 * D, dtype=torch.float64) if useD else None
        db = torch.randn(4 * D, dtype=torch.float64) if useD else None
        naive = scan2d_naive(x, de, A, Bs, Cs, Ds, db, sp)
        e = (scan2d_ref(x, de, A, Bs, Cs, Ds, db, sp) - naive).abs().max().item()
        line = f"scan2d ref vs naive B{B} {H}x{W} D{D} N{N}: max err {e:.2e}"
        ok &= e < 1e-10
        if project_ref is not None:
            e2 = (project_ref(x, de, A, Bs, Cs, Ds, db, bool(sp)) - naive).abs().max().item()
            line += f"; ssmpose reference vs naive {e2:.2e}"
            ok &= e2 < 1e-10
        print(line)
    for p in [dict(G=2, C=3, kh=3, kw=3, sh=1, sw=1, ph=1, pw=1, dh=1, dw=1, rc=0, scale=1.0, H=5, W=4),
              dict(G=3, C=2, kh=3, kw=2, sh=2, sw=1, ph=2, pw=0, dh=2, dw=1, rc=1, scale=0.5, H=6, W=5)]:
        Ho = (p["H"] + 2 * p["ph"] - p["dh"] * (p["kh"] - 1) - 1) // p["sh"] + 1
        Wo = (p["W"] + 2 * p["pw"] - p["dw"] * (p["kw"] - 1) - 1) // p["sw"] + 1
        K = len(deform_points(p))
        Pn = p["G"] * K * 3 + 5
        value = torch.randn(2, p["H"], p["W"], p["G"] * p["C"], dtype=torch.float64)
        om = torch.randn(2, Ho, Wo, Pn, dtype=torch.float64) * 1.5
        e = (deform_ref(value, om, p) - deform_naive(value, om, p)).abs().max().item()
        print(f"deform ref vs naive {p}: max err {e:.2e}")
        ok &= e < 1e-10
    return ok


# ----------------------------------------------------------------------------------------------
# Checks

class Report:
    def __init__(self):
        self.rows = []
        self.failures = []

    def add(self, name, ok, detail):
        self.rows.append((name, ok, detail))
        if not ok:
            self.failures.append(name)
        print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)


def errs(out, ref):
    out = out.double()
    ref = ref.double()
    if not torch.isfinite(out).all():
        return float("nan"), float("nan")
    d = out - ref
    rel = (d.norm() / ref.norm().clamp_min(1e-30)).item()
    mx = (d.abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    return rel, mx


def top_errors(out, ref, k=4):
    d = (out.double() - ref.double()).abs().flatten()
    d = torch.nan_to_num(d, nan=float("inf"))
    vals, idx = torch.topk(d, min(k, d.numel()))
    res = []
    for v, i in zip(vals.tolist(), idx.tolist()):
        pos = []
        rem = i
        for n in reversed(out.shape):
            pos.append(rem % n)
            rem //= n
        res.append(f"{tuple(reversed(pos))}: out {out.flatten()[i].item():.6g} ref {ref.flatten()[i].item():.6g}")
    return "; ".join(res)


TOL_FWD = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
TOL_BWD = {torch.float32: 5e-5, torch.float16: 4e-3, torch.bfloat16: 2.5e-2}


def check_scan(lib, rep, B, G, D, N, L, dtype, softplus=1, useD=True, usebias=True, bwd=True, tag=""):
    dev = "cuda"
    CH = G * D
    gen = torch.Generator(device=dev).manual_seed(B * 1000003 + G * 1009 + D * 101 + N * 7 + L)
    r = lambda *s: torch.randn(*s, device=dev, generator=gen)
    u = r(B, CH, L).to(dtype)
    # softplus(N(-1, 0.5)) ~ 0.3; without softplus, delta is the (positive) step itself
    delta = (r(B, CH, L) * 0.5 - 1.0) if softplus else (r(B, CH, L).abs() * 0.2 + 0.01)
    delta = delta.to(dtype)
    A = (-torch.exp(r(CH, N) * 0.5)).to(dtype)
    Bs = r(B, G, N, L).to(dtype)
    Cs = r(B, G, N, L).to(dtype)
    Ds = r(CH).to(dtype) if useD else None
    db = (r(CH) * 0.5).to(dtype) if usebias else None
    sh = ScanShape(B, G, D, N, L, softplus, DTYPE_CODE[dtype])
    name = f"scan {tag}B{B} G{G} D{D} N{N} L{L} {str(dtype)[6:]}" + ("" if useD else " noD") + \
        ("" if usebias else " nobias") + ("" if softplus else " nosoftplus")

    ys = []
    for _ in range(3):
        y = torch.full((B, CH, L), float("nan"), device=dev, dtype=dtype)
        st = lib.ssm_selective_scan_fwd_cuda(ctypes.byref(sh), P(u), P(delta), P(A), P(Bs), P(Cs), P(Ds), P(db), P(y), stream_ptr())
        torch.cuda.synchronize()
        if st != SSM_OK:
            rep.add(name + " fwd", False, f"status {st}")
            return
        ys.append(y)
    same = all(torch.equal(ys[0], t) for t in ys[1:])
    leaves = [t.double().requires_grad_(True) if t is not None else None for t in (u, delta, A, Bs, Cs, Ds, db)]
    yref = scan_ref(*leaves, softplus, G)
    rel, mx = errs(ys[0], yref)
    ok = rel <= TOL_FWD[dtype] and same
    rep.add(name + " fwd", ok, f"rel {rel:.2e} maxrel {mx:.2e} deterministic={same}" +
            ("" if ok else f" | worst {top_errors(ys[0], yref)}"))
    if not bwd:
        return
    dy = r(B, CH, L).to(dtype)
    used = [t for t in leaves if t is not None]
    gref = torch.autograd.grad(yref, used, dy.double(), allow_unused=True)
    gref = [torch.zeros_like(t) if g is None else g for t, g in zip(used, gref)]
    names = ["du", "d_delta", "dA", "dBs", "dCs"] + (["dDs"] if useD else []) + (["d_delta_bias"] if usebias else [])
    ws_size = lib.ssm_selective_scan_bwd_cuda_workspace_size(ctypes.byref(sh))
    ws = torch.empty(max(ws_size, 4) // 4 + 1, device=dev, dtype=torch.float32) if ws_size else None
    results = []
    for _ in range(2):
        f = lambda *s, dt=torch.float32: torch.full(s, float("nan"), device=dev, dtype=dt)
        du, dd = f(B, CH, L, dt=dtype), f(B, CH, L, dt=dtype)
        dA, dBs, dCs = f(CH, N), f(B, G, N, L), f(B, G, N, L)
        dDs = f(CH) if useD else None
        ddb = f(CH) if usebias else None
        st = lib.ssm_selective_scan_bwd_cuda(ctypes.byref(sh), P(u), P(delta), P(A), P(Bs), P(Cs), P(Ds), P(db), P(dy),
                                             P(du), P(dd), P(dA), P(dBs), P(dCs), P(dDs), P(ddb), P(ws), stream_ptr())
        torch.cuda.synchronize()
        if st != SSM_OK:
            rep.add(name + " bwd", False, f"status {st}")
            return
        results.append([t for t in (du, dd, dA, dBs, dCs, dDs, ddb) if t is not None])
    worst, parts, ok, bad = 0.0, [], True, []
    for nm, o, rf in zip(names, results[0], gref):
        rel, mx = errs(o, rf)
        parts.append(f"{nm} {rel:.1e}")
        if not rel <= TOL_BWD[dtype]:
            ok = False
            bad.append(f"worst {nm} {top_errors(o, rf)}")
        worst = max(worst, rel) if rel == rel else float("nan")
    rerun = max((a.double() - b.double()).abs().max().item() / max(b.double().abs().max().item(), 1e-30)
                for a, b in zip(results[0], results[1]))
    rep.add(name + " bwd", ok, f"worst rel {worst:.2e} ({', '.join(parts)}); rerun maxdiff {rerun:.1e}" +
            "".join(" | " + b for b in bad))


def scan2d_plan(B, H, W, D, N, dtype, bwd=False, items=5):
    """Mirror of make_plan in selective_scan_2d.cu with its default options, for the case labels only:
    channels per block (CL), warps per direction group, chunks per direction, direction groups."""
    L = H * W

    def plan(lg, groups=1):
        spw = 32 >> lg
        nch = -(-L // ((4 if groups > 1 else 8) * spw * items))
        nseg = -(-(-(-L // nch)) // items)
        nseg = -(-nseg // spw) * spw
        warps, chunk = nseg // spw, nseg * items
        nch = -(-L // chunk)
        cl = 1 << lg
        acc = -(-(H * (W | 1) * cl) // 4) * 4
        tot = 2 * warps * N * cl * 2 * (2 if bwd else 1)
        extra = (nch * N * cl + warps * (N + 2) * cl) if bwd else 0
        return dict(CL=cl, warps=warps, chunks=nch, smem=(groups * (acc + tot) + extra) * 4, ncb=-(-D // cl),
                    groups=groups)

    lg = 3 if dtype == torch.float32 else 4
    while lg > 0 and (1 << (lg - 1)) >= D:
        lg -= 1
    while lg > 0 and plan(lg)["smem"] > (110 if bwd else 72) * 1024:
        lg -= 1
    while lg > 0 and B * plan(lg)["ncb"] < 256:
        lg -= 1
    if not bwd and N == 1 and B * plan(lg)["ncb"] < 256 and plan(lg, 4)["smem"] <= 144 * 1024:
        return plan(lg, 4)
    return plan(lg)


def scan2d_inputs(B, H, W, D, N, dtype, softplus=1, useD=True, usebias=True, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=gen)
    x = r(B, H, W, D).to(dtype)
    # softplus(N(-1, 0.5)) ~ 0.3; without softplus, delta is the (positive) step itself
    delta = ((r(B, H, W, 4 * D) * 0.5 - 1.0) if softplus else (r(B, H, W, 4 * D).abs() * 0.2 + 0.01)).to(dtype)
    A = (-torch.exp(r(4 * D, N) * 0.5)).to(dtype)
    Bs = r(B, H, W, 4, N).to(dtype)
    Cs = r(B, H, W, 4, N).to(dtype)
    Ds = r(4 * D).to(dtype) if useD else None
    # without softplus a negative bias could make dt < 0 and the state grow past float32 over long scans
    db = ((r(4 * D) * 0.5) if softplus else (r(4 * D).abs() * 0.1)).to(dtype) if usebias else None
    dy = r(B, H, W, D).to(dtype)
    return (x, delta, A, Bs, Cs, Ds, db), dy


def scan2d_fwd(lib, sh, ins, y):
    return lib.ssm_selective_scan_2d_fwd_cuda(ctypes.byref(sh), *[P(t) for t in ins], P(y), stream_ptr())


def scan2d_bwd(lib, sh, ins, dy, outs, ws):
    return lib.ssm_selective_scan_2d_bwd_cuda(ctypes.byref(sh), *[P(t) for t in ins], P(dy), *[P(t) for t in outs],
                                              P(ws), stream_ptr())


def v1_path(lib, ins, softplus, dy=None):
    """The version-1 graph on the same data: cross_scan -> SelectiveScan CUDA kernel -> cross_merge (the
    merge in float64). Returns (status, y) or, with dy, (status, gradients mapped back to the 2-D layouts)."""
    x, delta, A, Bs, Cs, Ds, db = ins
    B, H, W, D = x.shape
    N, L = A.shape[1], H * W
    u, de, bs, cs = (t.contiguous() for t in scan2d_sequences(x, delta, Bs, Cs))
    sh = ScanShape(B, 4, D, N, L, softplus, DTYPE_CODE[x.dtype])
    if dy is None:
        y = torch.full((B, 4 * D, L), float("nan"), device=x.device, dtype=x.dtype)
        st = lib.ssm_selective_scan_fwd_cuda(ctypes.byref(sh), P(u), P(de), P(A), P(bs), P(cs), P(Ds), P(db), P(y),
                                             stream_ptr())
        torch.cuda.synchronize()
        return st, cross_merge(y.double(), H, W).permute(0, 2, 3, 1)
    dys = cross_scan(dy.permute(0, 3, 1, 2)).contiguous()
    du, dd = torch.empty_like(u), torch.empty_like(u)
    f32 = dict(device=x.device, dtype=torch.float32)
    dA, dB, dC = torch.empty(4 * D, N, **f32), torch.empty(B, 4, N, L, **f32), torch.empty(B, 4, N, L, **f32)
    dD = torch.empty(4 * D, **f32) if Ds is not None else None
    dbias = torch.empty(4 * D, **f32) if db is not None else None
    ws = torch.empty(lib.ssm_selective_scan_bwd_cuda_workspace_size(ctypes.byref(sh)) // 4 + 1, **f32)
    st = lib.ssm_selective_scan_bwd_cuda(ctypes.byref(sh), P(u), P(de), P(A), P(bs), P(cs), P(Ds), P(db), P(dys),
                                         P(du), P(dd), P(dA), P(dB), P(dC), P(dD), P(dbias), P(ws), stream_ptr())
    torch.cuda.synchronize()
    back = lambda seq, k: from_direction(seq, k, H, W)  # noqa: E731
    grads = [cross_merge(du.double(), H, W).permute(0, 2, 3, 1),
             torch.cat([back(dd.double()[:, k * D:(k + 1) * D], k) for k in range(4)], dim=-1),
             dA, torch.stack([back(dB.double()[:, k], k) for k in range(4)], dim=3),
             torch.stack([back(dC.double()[:, k], k) for k in range(4)], dim=3), dD, dbias]
    return st, [g for g in grads if g is not None]


def check_scan2d(lib, rep, B, H, W, D, N, dtype, softplus=1, useD=True, usebias=True, bwd=True, v1=True, tag=""):
    """SelectiveScan2D against the float64 reference (forward and backward), against the version-1 path on
    the same inputs, and run to run (every output bitwise)."""
    plan = scan2d_plan(B, H, W, D, N, dtype, bwd=False)
    name = (f"scan2d {tag}B{B} {H}x{W} D{D} N{N} {str(dtype)[6:]}" + ("" if useD else " noD") +
            ("" if usebias else " nobias") + ("" if softplus else " nosoftplus") +
            f" [CL{plan['CL']} w{plan['warps']} c{plan['chunks']}" +
            (f" g{plan['groups']}]" if plan["groups"] > 1 else "]"))
    if not hasattr(lib, "ssm_selective_scan_2d_fwd_cuda"):
        rep.add(name, False, "the library has no ssm_selective_scan_2d_fwd_cuda")
        return
    ins, dy = scan2d_inputs(B, H, W, D, N, dtype, softplus, useD, usebias, seed=B * 7919 + H * 131 + W * 17 + D + N)
    sh = Scan2DShape(B, H, W, D, 4, N, softplus, DTYPE_CODE[dtype])
    ys = []
    for _ in range(3):
        y = torch.full((B, H, W, D), float("nan"), device="cuda", dtype=dtype)
        st = scan2d_fwd(lib, sh, ins, y)
        torch.cuda.synchronize()
        if st != SSM_OK:
            rep.add(name + " fwd", False, f"status {st}")
            return
        ys.append(y)
    same = all(torch.equal(ys[0], t) for t in ys[1:])
    leaves = [t.double().requires_grad_(True) if t is not None else None for t in ins]
    yref = scan2d_ref(*leaves, softplus)
    rel, mx = errs(ys[0], yref)
    ok = rel <= TOL_FWD[dtype] and same
    detail = f"rel {rel:.2e} maxrel {mx:.2e} deterministic={same}"
    if v1:
        st1, y1 = v1_path(lib, ins, softplus)
        rel1, _ = errs(ys[0], y1)
        rel1ref, _ = errs(y1, yref)
        ok = ok and st1 == SSM_OK and rel1 <= 2 * TOL_FWD[dtype]
        detail += f"; vs v1 path rel {rel1:.2e} (v1 path vs ref {rel1ref:.2e})" if st1 == SSM_OK else f"; v1 status {st1}"
    rep.add(name + " fwd", ok, detail + ("" if ok else f" | worst {top_errors(ys[0], yref)}"))
    if not bwd:
        return

    used = [t for t in leaves if t is not None]
    gref = torch.autograd.grad(yref, used, dy.double(), allow_unused=True)
    gref = [torch.zeros_like(t) if g is None else g for t, g in zip(used, gref)]
    names = ["dx", "d_delta", "dA", "dBs", "dCs"] + (["dDs"] if useD else []) + (["d_delta_bias"] if usebias else [])
    ws_size = lib.ssm_selective_scan_2d_bwd_cuda_workspace_size(ctypes.byref(sh))
    ws = torch.empty(ws_size // 4 + 1, device="cuda", dtype=torch.float32) if ws_size else None
    results = []
    for _ in range(2):
        f = lambda *s, dt=torch.float32: torch.full(s, float("nan"), device="cuda", dtype=dt)  # noqa: E731
        outs = (f(B, H, W, D, dt=dtype), f(B, H, W, 4 * D, dt=dtype), f(4 * D, N), f(B, H, W, 4, N), f(B, H, W, 4, N),
                f(4 * D) if useD else None, f(4 * D) if usebias else None)
        if ws is not None:
            ws.fill_(float("nan"))  # partials the kernel leaves unwritten would show in the sums
        st = scan2d_bwd(lib, sh, ins, dy, outs, ws)
        torch.cuda.synchronize()
        if st != SSM_OK:
            rep.add(name + " bwd", False, f"status {st} (workspace {ws_size} bytes)")
            return
        results.append([t for t in outs if t is not None])
    worst, parts, ok, bad = 0.0, [], True, []
    for nm, o, rf in zip(names, results[0], gref):
        rel, _ = errs(o, rf)
        parts.append(f"{nm} {rel:.1e}")
        if not rel <= TOL_BWD[dtype]:
            ok = False
            bad.append(f"worst {nm} {top_errors(o, rf)}")
        worst = max(worst, rel) if rel == rel else float("nan")
    same = all(torch.equal(a, b) for a, b in zip(results[0], results[1]))
    ok = ok and same
    bp = scan2d_plan(B, H, W, D, N, dtype, bwd=True)
    detail = (f"worst rel {worst:.2e} ({', '.join(parts)}); deterministic={same}; workspace {ws_size} B; "
              f"plan CL{bp['CL']} w{bp['warps']} c{bp['chunks']}")
    if v1:
        st1, g1 = v1_path(lib, ins, softplus, dy)
        if st1 != SSM_OK:
            ok = False
            detail += f"; v1 status {st1}"
        else:
            rel1 = max(errs(o, g)[0] for o, g in zip(results[0], g1))
            ok = ok and rel1 <= 2 * TOL_BWD[dtype]
            detail += f"; vs v1 path worst rel {rel1:.2e}"
    rep.add(name + " bwd", ok, detail + "".join(" | " + b for b in bad))


def check_scan2d_proj(lib, rep, B, H, W, D, N, R, dtype, tag=""):
    """SelectiveScan2D with the dt projection (domain version 6) against the float64 reference of the unfused
    nodes (delta = the dt inputs times the projection, rounded to the dtype), against the plain kernel fed that
    delta (the same values up to the float32 sums' order), and run to run (bitwise)."""
    plan = scan2d_plan(B, H, W, D, N, dtype, bwd=False)
    name = (f"scan2d proj {tag}B{B} {H}x{W} D{D} N{N} R{R} {str(dtype)[6:]} [CL{plan['CL']} w{plan['warps']} "
            f"c{plan['chunks']}" + (f" g{plan['groups']}]" if plan["groups"] > 1 else "]"))
    if not hasattr(lib, "ssm_selective_scan_2d_proj_fwd_cuda"):
        rep.add(name, False, "the library has no ssm_selective_scan_2d_proj_fwd_cuda")
        return
    gen = torch.Generator(device="cuda").manual_seed(B * 7919 + H * 131 + W * 17 + D + N + R)
    r = lambda *s: torch.randn(*s, device="cuda", generator=gen)  # noqa: E731
    x = r(B, H, W, D).to(dtype)
    x_proj = torch.cat([r(B, H, W, 4, R) * 0.5, r(B, H, W, 4, 2 * N)], dim=-1).to(dtype)
    weight = (r(4, D, R) / R ** 0.5).to(dtype)
    A = (-torch.exp(r(4 * D, N) * 0.5)).to(dtype)
    Ds, db = r(4 * D).to(dtype), (r(4 * D) * 0.5 - 1.0).to(dtype)
    delta = torch.einsum("bhwkr,kdr->bhwkd", x_proj[..., :R].float(), weight.float()).to(dtype).reshape(B, H, W, 4 * D)
    Bs, Cs = x_proj[..., R:R + N].contiguous(), x_proj[..., R + N:].contiguous()
    sh = Scan2DShape(B, H, W, D, 4, N, 1, DTYPE_CODE[dtype])
    ys = []
    for _ in range(3):
        y = torch.full((B, H, W, D), float("nan"), device="cuda", dtype=dtype)
        st = lib.ssm_selective_scan_2d_proj_fwd_cuda(ctypes.byref(sh), R, P(x), P(x_proj), P(weight), P(A), P(Ds),
                                                     P(db), P(y), stream_ptr())
        torch.cuda.synchronize()
        if st != SSM_OK:
            rep.add(name, False, f"status {st}")
            return
        ys.append(y)
    same = all(torch.equal(ys[0], t) for t in ys[1:])
    plain = torch.full((B, H, W, D), float("nan"), device="cuda", dtype=dtype)
    st = scan2d_fwd(lib, sh, (x, delta, A, Bs, Cs, Ds, db), plain)
    torch.cuda.synchronize()
    yref = scan2d_ref(*[t.double() for t in (x, delta, A, Bs, Cs, Ds, db)], 1)
    rel, mx = errs(ys[0], yref)
    rel_plain, _ = errs(ys[0], plain.double())
    ok = st == SSM_OK and same and rel <= TOL_FWD[dtype] and rel_plain <= TOL_FWD[dtype]
    rep.add(name, ok, f"rel {rel:.2e} maxrel {mx:.2e} vs plain kernel rel {rel_plain:.2e} deterministic={same}" +
            ("" if ok else f" | worst {top_errors(ys[0], yref)}"))


def check_errors_scan2d_proj(lib, rep):
    """Bad dt_rank and null pointers: status codes, no launch."""
    if not hasattr(lib, "ssm_selective_scan_2d_proj_fwd_cuda"):
        rep.add("scan2d proj argument validation", False, "the library has no ssm_selective_scan_2d_proj_fwd_cuda")
        return
    t = torch.zeros(4096, device="cuda", dtype=torch.float16)
    sh = Scan2DShape(1, 4, 4, 4, 4, 1, 1, DTYPE_CODE[torch.float16])

    def call(rank, *ptrs):
        return lib.ssm_selective_scan_2d_proj_fwd_cuda(ctypes.byref(sh), rank, *ptrs, None)
    full = [P(t)] * 7   # x, x_proj, dt_projection, A, Ds, delta_bias, y (the stream is the None below)
    got = {"rank 0": call(0, *full), "rank 65": call(65, *full), "null x_proj": call(2, P(t), None, *full[2:]),
           "null dt_projection": call(2, P(t), P(t), None, *full[3:]), "ok": call(2, *full)}
    torch.cuda.synchronize()
    want = {"rank 0": SSM_ERR_BAD_SIZE, "rank 65": SSM_ERR_BAD_SIZE, "null x_proj": SSM_ERR_NULL_POINTER,
            "null dt_projection": SSM_ERR_NULL_POINTER, "ok": SSM_OK}
    bad = {k: v for k, v in got.items() if v != want[k]}
    rep.add("scan2d proj argument validation", not bad, f"wrong statuses {bad}" if bad else "statuses as documented")


def run_scan2d_proj_checks(lib, rep, quick=False):
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    check_errors_scan2d_proj(lib, rep)
    check_scan2d_proj(lib, rep, 1, 64, 48, 64, 1, 2, f16, tag="hrv-small-64x48 ")    # grouped plan, batch 1
    check_scan2d_proj(lib, rep, 3, 5, 9, 4, 4, 3, bf16)                              # N = 4 (B / C per state)
    check_scan2d_proj(lib, rep, 64, 4, 3, 64, 1, 4, f16, tag="wide ")                # CL 16, one group
    if quick:
        return
    check_scan2d_proj(lib, rep, 1, 32, 24, 128, 1, 4, f16, tag="hrv-small-32x24 ")
    check_scan2d_proj(lib, rep, 32, 32, 24, 128, 1, 4, f16, tag="hrv-small-32x24 wide ")   # CL 16
    check_scan2d_proj(lib, rep, 2, 7, 5, 6, 1, 1, f32)                               # odd grid, rank 1
    check_scan2d_proj(lib, rep, 2, 9, 7, 12, 16, 8, f32)                             # N = 16
    check_scan2d_proj(lib, rep, 1, 16, 12, 64, 2, 64, f16, tag="largest rank ")
    check_scan2d_proj(lib, rep, 4, 8, 6, 256, 1, 16, bf16, tag="hrv-small-8x6 ")


def check_errors_scan2d(lib, rep):
    """Status codes of the SelectiveScan2D entry points (shape checked before the pointers)."""
    if not hasattr(lib, "ssm_selective_scan_2d_fwd_cuda"):
        rep.add("scan2d argument validation", False, "the library has no ssm_selective_scan_2d_fwd_cuda")
        return
    x = torch.zeros(64, device="cuda")
    shp = lambda **kw: Scan2DShape(**{**dict(batch=1, height=2, width=3, dim=2, directions=4, dstate=1,  # noqa: E731
                                             delta_softplus=1, dtype=0), **kw})
    fwd = lambda s, *ptrs: lib.ssm_selective_scan_2d_fwd_cuda(None if s is None else ctypes.byref(s), *ptrs, None)  # noqa: E731
    ok6 = [P(x)] * 5 + [None, None, P(x)]
    nul6 = [None] * 8
    cases = [
        ("NULL shape", fwd(None, *ok6), SSM_ERR_NULL_POINTER),
        ("NULL x", fwd(shp(), None, *ok6[1:]), SSM_ERR_NULL_POINTER),
        ("directions 3", fwd(shp(directions=3), *ok6), SSM_ERR_BAD_SIZE),
        ("dstate 17", fwd(shp(dstate=17), *ok6), SSM_ERR_BAD_SIZE),
        ("dstate 0", fwd(shp(dstate=0), *ok6), SSM_ERR_BAD_SIZE),
        ("height 0", fwd(shp(height=0), *ok6), SSM_ERR_BAD_SIZE),
        ("dtype 7", fwd(shp(dtype=7), *ok6), SSM_ERR_BAD_DTYPE),
        # limits answer before the pointers are looked at: NULL data + in-limit shape = NULL_POINTER
        ("191x193 (36863 <= 36864 positions), NULL data", fwd(shp(height=191, width=193), *nul6), SSM_ERR_NULL_POINTER),
        ("1x36864 (W|1 = 36865 > 36864)", fwd(shp(height=1, width=36864), *nul6), SSM_ERR_BAD_SIZE),
        ("192x192 (192*193 > 36864)", fwd(shp(height=192, width=192), *nul6), SSM_ERR_BAD_SIZE),
        ("L*4*D > 2^31-1", fwd(shp(height=64, width=63, dim=(1 << 31) // (4 * 64 * 63) + 1), *nul6), SSM_ERR_BAD_SIZE),
        ("B*D > 2^31-1", fwd(shp(batch=1 << 20, dim=1 << 11), *nul6), SSM_ERR_BAD_SIZE),
        ("batch 2^31", fwd(shp(batch=1 << 31), *nul6), SSM_ERR_BAD_SIZE),
    ]
    big = shp(batch=3, height=40, width=40, dim=64)  # several channel blocks and images: needs a workspace
    wsz = lib.ssm_selective_scan_2d_bwd_cuda_workspace_size(ctypes.byref(big))
    cases.append(("bwd without the workspace it needs",
                  lib.ssm_selective_scan_2d_bwd_cuda(ctypes.byref(big), *([P(x)] * 5), None, None, *([P(x)] * 6), None,
                                                     None, None, None), SSM_ERR_NULL_POINTER))
    cases.append(("bwd NULL dBs", lib.ssm_selective_scan_2d_bwd_cuda(ctypes.byref(shp()), *([P(x)] * 5), None, None,
                                                                       *([P(x)] * 4), None, P(x), None, None, P(x),
                                                                       None), SSM_ERR_NULL_POINTER))
    one = shp(batch=1, dim=1)  # one image, one channel block: no partials, no workspace
    cases.append(("workspace size of B1 D1 is 0", lib.ssm_selective_scan_2d_bwd_cuda_workspace_size(ctypes.byref(one)), 0))
    cases.append(("workspace size of a bad shape is 0",
                  lib.ssm_selective_scan_2d_bwd_cuda_workspace_size(ctypes.byref(shp(directions=2))), 0))
    torch.cuda.synchronize()
    bad = [f"{n}: got {g} want {w}" for n, g, w in cases if g != w]
    rep.add("scan2d argument validation", not bad and wsz > 0,
            f"{len(cases) - len(bad)}/{len(cases)} status codes as expected, workspace({big.batch}x40x40 D64) = {wsz} B"
            + "".join(" | " + b for b in bad))


def run_scan2d_checks(lib, rep, quick=False):
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    check_errors_scan2d(lib, rep)
    run_scan2d_proj_checks(lib, rep, quick)
    if quick:  # every code path at small sizes (compute-sanitizer)
        check_scan2d(lib, rep, 2, 7, 5, 6, 1, f32)                                       # CL 1, odd H/W
        check_scan2d(lib, rep, 64, 8, 6, 20, 1, f16, v1=False)                           # CL 16, partial channel block
        check_scan2d(lib, rep, 3, 5, 9, 4, 4, bf16, useD=False, usebias=False, v1=False)  # N = 4, no Ds / bias
        check_scan2d(lib, rep, 1, 1, 37, 3, 16, f32, softplus=0, v1=False)               # 1 x W, N = 16
        check_scan2d(lib, rep, 8, 29, 1, 8, 2, f16, v1=False)                            # H x 1
        check_scan2d(lib, rep, 1, 40, 70, 2, 1, f32, v1=False)                           # several chunks at CL 1
        return
    for dt in (f32, f16, bf16):
        check_scan2d(lib, rep, 2, 64, 48, 64, 1, dt, tag="hrv-small-64x48 ")
    for dt in (f32, f16):
        check_scan2d(lib, rep, 2, 8, 6, 1280, 1, dt, tag="hrv-base-8x6 ")             # CL 8, 160 channel blocks
    check_scan2d(lib, rep, 2, 16, 12, 160, 1, bf16, tag="hrv-base-16x12 ")
    # the widest channel blocks (CL 16 for 16-bit, 8 for float32) need B * ceil(D / CL) >= 256 blocks
    check_scan2d(lib, rep, 64, 32, 24, 64, 1, f16, tag="hrv-small-32x24 wide ")          # CL 16, 6 chunks
    check_scan2d(lib, rep, 32, 32, 24, 64, 1, f32, tag="hrv-small-32x24 wide ")          # CL 8, 3 chunks
    check_scan2d(lib, rep, 64, 8, 6, 64, 1, bf16, tag="8x6 wide ")                       # CL 16, one chunk
    check_scan2d(lib, rep, 96, 8, 6, 20, 1, f16, tag="partial channel block ")          # CL 8, channels 20..23 idle
    check_scan2d(lib, rep, 8, 16, 12, 64, 1, f16, tag="CL2 ")
    check_scan2d(lib, rep, 16, 16, 12, 64, 4, f32, tag="CL4 ")
    # state sizes, optional inputs, softplus off
    for dt in (f32, f16):
        check_scan2d(lib, rep, 2, 16, 12, 32, 4, dt, tag="mamkpd-like ")
        check_scan2d(lib, rep, 1, 9, 7, 8, 16, dt)
    check_scan2d(lib, rep, 2, 9, 7, 12, 3, bf16, useD=False, usebias=False)              # N 3 in the 4 bucket
    check_scan2d(lib, rep, 2, 11, 13, 5, 2, f32, softplus=0, useD=False)
    check_scan2d(lib, rep, 2, 11, 13, 5, 8, f16, usebias=False)
    # degenerate images: 1 x W, H x 1, 1 x 1, odd sizes
    for dt in (f32, f16):
        check_scan2d(lib, rep, 2, 1, 37, 6, 1, dt)
        check_scan2d(lib, rep, 2, 29, 1, 6, 4, dt)
    check_scan2d(lib, rep, 3, 1, 1, 7, 2, f32)
    check_scan2d(lib, rep, 1, 1, 1, 1, 1, f16)
    check_scan2d(lib, rep, 2, 15, 17, 24, 1, bf16)
    # long sequences: 96x72 (HRVMamba stage 1 at 384x288) and the largest image (191 x 193 = 36863 positions)
    check_scan2d(lib, rep, 1, 96, 72, 8, 1, f32, tag="hrv-384x288-stage1 ")
    check_scan2d(lib, rep, 1, 191, 193, 2, 1, f32, tag="largest image ")


def out_size(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def check_deform(lib, rep, B, H, W, G, C, dtype, kh=3, kw=3, sh=1, sw=1, ph=1, pw=1, dh=1, dw=1, rc=0,
                 scale=1.0, bwd=True, pad8=True, tag="", mscale=1.0, ostd=1.5, bias=False, silu=False):
    """bias / silu: the forward epilogues of domain version 5 (an offset bias of P values, SiLU on the output);
    the reference applies them as the nodes they replace: offset_mask + bias rounded to the dtype, SiLU of the
    output rounded to the dtype."""
    dev = "cuda"
    Ho, Wo = out_size(H, kh, sh, ph, dh), out_size(W, kw, sw, pw, dw)
    K = kh * kw - rc
    Pn = (G * K * 3 + 7) // 8 * 8 if pad8 else G * K * 3
    gen = torch.Generator(device=dev).manual_seed(B * 7919 + H * 131 + W * 17 + G * 5 + C + kh + rc)
    r = lambda *s: torch.randn(*s, device=dev, generator=gen)
    value = r(B, H, W, G * C).to(dtype)
    om = r(B, Ho, Wo, Pn)
    offs = om[..., : G * K * 3].reshape(B, Ho, Wo, G, 3 * K).clone()
    offs[..., : 2 * K] *= ostd  # offsets ~ N(0, ostd^2): some samples fall outside the image
    offs[..., 2 * K:] *= mscale
    om[..., : G * K * 3] = offs.reshape(B, Ho, Wo, G * K * 3)
    om = om.to(dtype)
    om_bias = (0.5 * r(Pn)).to(dtype) if bias else None
    shp = DeformShape(B, H, W, Ho, Wo, G, C, Pn, kh, kw, sh, sw, ph, pw, dh, dw, rc, scale, DTYPE_CODE[dtype],
                      2 if silu else 0)
    p = dict(G=G, C=C, kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw, dh=dh, dw=dw, rc=rc, scale=scale)
    name = (f"deform {tag}B{B} {H}x{W} G{G} C{C} k{kh}x{kw} s{sh}{sw} p{ph}{pw} d{dh}{dw} rc{rc} "
            f"sc{scale} {str(dtype)[6:]}" + ("" if mscale == 1.0 else f" mask*{mscale:g}")
            + (" +offset_bias" if bias else "") + (" +silu" if silu else ""))
    outs = []
    for _ in range(3):
        out = torch.full((B, Ho, Wo, G * C), float("nan"), device=dev, dtype=dtype)
        st = lib.ssm_deform_aggregate_fwd_cuda(ctypes.byref(shp), P(value), P(om), P(om_bias), P(out), stream_ptr())
        torch.cuda.synchronize()
        if st != SSM_OK:
            rep.add(name + " fwd", False, f"status {st}")
            return
        outs.append(out)
    same = all(torch.equal(outs[0], t) for t in outs[1:])
    if bias or silu:  # forward only
        om_used = om if om_bias is None else (om.float() + om_bias.float()).to(dtype)
        ref = deform_ref(value.double(), om_used.double(), p, cells32=True)
        if silu:
            z = ref.to(dtype).double()
            ref = z * torch.sigmoid(z)
        rel, mx = errs(outs[0], ref)
        ok = rel <= TOL_FWD[dtype] and same
        rep.add(name + " fwd", ok, f"rel {rel:.2e} maxrel {mx:.2e} deterministic={same}" +
                ("" if ok else f" | worst {top_errors(outs[0], ref)}"))
        return
    v64 = value.double().requires_grad_(True)
    o64 = om.double().requires_grad_(True)
    ref = deform_ref(v64, o64, p, cells32=True)
    rel, mx = errs(outs[0], ref)
    ok = rel <= TOL_FWD[dtype] and same
    rep.add(name + " fwd", ok, f"rel {rel:.2e} maxrel {mx:.2e} deterministic={same}" +
            ("" if ok else f" | worst {top_errors(outs[0], ref)}"))
    if not bwd:
        return
    go = r(B, Ho, Wo, G * C).to(dtype)
    gv_ref, gom_ref = torch.autograd.grad(ref, [v64, o64], go.double())
    gv = torch.full((B, H, W, G * C), float("nan"), device=dev)
    gom = torch.full((B, Ho, Wo, Pn), float("nan"), device=dev)
    st = lib.ssm_deform_aggregate_bwd_cuda(ctypes.byref(shp), P(value), P(om), P(go), P(gv), P(gom), stream_ptr())
    torch.cuda.synchronize()
    if st != SSM_OK:
        rep.add(name + " bwd", False, f"status {st}")
        return
    rv, _ = errs(gv, gv_ref)
    ro, _ = errs(gom, gom_ref)
    tol = TOL_BWD[dtype] * (2 if dtype != torch.float32 else 1)
    ok = rv <= TOL_BWD[dtype] and ro <= tol
    detail = f"grad_value rel {rv:.2e}, grad_offset_mask rel {ro:.2e}"
    if not ok:
        detail += f" | worst grad_value {top_errors(gv, gv_ref)} | worst grad_offset_mask {top_errors(gom, gom_ref)}"
    rep.add(name + " bwd", ok, detail)


def check_errors(lib, rep):
    dev = "cuda"
    x = torch.zeros(64, device=dev)
    ok = True
    sh = ScanShape(1, 1, 1, 1, 4, 1, 0)
    s = lambda shp, *ptrs: lib.ssm_selective_scan_fwd_cuda(ctypes.byref(shp) if shp is not None else None, *ptrs, None)
    codes = []
    codes.append((s(None, P(x), P(x), P(x), P(x), P(x), None, None, P(x)), SSM_ERR_NULL_POINTER))
    codes.append((s(sh, None, P(x), P(x), P(x), P(x), None, None, P(x)), SSM_ERR_NULL_POINTER))
    codes.append((s(ScanShape(1, 1, 1, 17, 4, 1, 0), P(x), P(x), P(x), P(x), P(x), None, None, P(x)), SSM_ERR_BAD_SIZE))
    codes.append((s(ScanShape(1, 1, 1, 1, 0, 1, 0), P(x), P(x), P(x), P(x), P(x), None, None, P(x)), SSM_ERR_BAD_SIZE))
    codes.append((s(ScanShape(1, 1, 1, 1, 4, 1, 7), P(x), P(x), P(x), P(x), P(x), None, None, P(x)), SSM_ERR_BAD_DTYPE))
    codes.append((lib.ssm_selective_scan_bwd_cuda(ctypes.byref(ScanShape(1, 1, 1, 1, 4000, 1, 0)), *([P(x)] * 5), None, None,
                                                  *([P(x)] * 8), None, None), SSM_ERR_NULL_POINTER))  # workspace missing
    d = lambda **kw: DeformShape(**{**dict(batch=1, height=4, width=4, out_height=4, out_width=4, groups=1,
                                         group_channels=8, offset_stride=27, kernel_h=3, kernel_w=3, stride_h=1,
                                         stride_w=1, pad_h=1, pad_w=1, dilation_h=1, dilation_w=1,
                                         remove_center=0, offset_scale=1.0, dtype=0), **kw})
    df = lambda shp: lib.ssm_deform_aggregate_fwd_cuda(ctypes.byref(shp), P(x), P(x), None, P(x), None)
    codes.append((df(d(offset_stride=26)), SSM_ERR_BAD_SIZE))
    codes.append((df(d(kernel_h=1, kernel_w=1, remove_center=1, offset_stride=3)), SSM_ERR_BAD_SIZE))
    codes.append((df(d(groups=0)), SSM_ERR_BAD_SIZE))
    codes.append((df(d(stride_h=0)), SSM_ERR_BAD_SIZE))
    codes.append((df(d(dtype=3)), SSM_ERR_BAD_DTYPE))
    codes.append((df(d(activation=1)), SSM_ERR_UNSUPPORTED))   # GELU is not one of DeformAggregate's
    codes.append((lib.ssm_deform_aggregate_bwd_cuda(ctypes.byref(d(activation=2)), P(x), P(x), P(x), P(x), P(x),
                                                    None), SSM_ERR_UNSUPPORTED))   # the epilogues are forward-only
    codes.append((lib.ssm_deform_aggregate_fwd_cuda(None, P(x), P(x), None, P(x), None), SSM_ERR_NULL_POINTER))
    codes.append((lib.ssm_deform_aggregate_bwd_cuda(ctypes.byref(d()), P(x), P(x), P(x), None, P(x), None),
                  SSM_ERR_NULL_POINTER))
    got = [c for c, _ in codes]
    want = [w for _, w in codes]
    ok = got == want
    torch.cuda.synchronize()
    rep.add("argument validation", ok, f"got {got} want {want}")


# ----------------------------------------------------------------------------------------------
# LayerNorm (domain version 3)

TOL_LN = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def layer_norm_ref(x, w, b, eps):
    """float64 LayerNorm over the last axis (epsilon as the float32 the kernel sees)."""
    x, w, b = x.double(), w.double(), b.double()
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + float(torch.tensor(eps, dtype=torch.float32))) * w + b


def layer_norm_path(C, dtype, aligned=True):
    """The kernel's plan (make_plan in layer_norm.cu), for the report."""
    es = torch.finfo(dtype).bits // 8
    if aligned and (C * es) % 16 == 0:
        V = 16 // es
        nvec = C // V
        for lg in range(0 if nvec == 1 else 1, 6):
            nv = -(-nvec // (1 << lg))
            if nv <= 4 and ((1 << lg) * nv - nvec) * 8 <= (1 << lg) * nv:
                return f"vec16 L{1 << lg} NV{nv}"
        best = None
        for lg in range(6):
            nv = -(-nvec // (1 << lg))
            if nv <= 8 and (best is None or (1 << lg) * nv - nvec < best[0]):
                best = ((1 << lg) * nv - nvec, lg, nv)
        return "loop vec16" if best is None else f"vec16 L{1 << best[1]} NV{best[2]}"
    lg = 0
    while lg < 5 and (1 << lg) < C:
        lg += 1
    nv = 1
    while nv * (1 << lg) < C:
        nv <<= 1
    return "loop scalar" if nv > 32 else f"scalar L{1 << lg} NV{nv}"


def layer_norm_inputs(rows, C, dtype, offset=0.0, scale=1.0, seed=0, misalign=False):
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(seed * 7919 + rows * 31 + C)
    shift = 1 if misalign else 0  # one element into the allocation: not 16-byte aligned
    xs = torch.empty(rows * C + shift, device=dev, dtype=dtype)
    xs[shift:] = (torch.randn(rows * C, device=dev, generator=gen) * scale + offset).to(dtype)
    x = xs[shift:].view(rows, C)
    w = (1 + 0.5 * torch.randn(C, device=dev, generator=gen)).to(dtype)
    b = (0.3 * torch.randn(C, device=dev, generator=gen)).to(dtype)
    ys = torch.empty(rows * C + shift, device=dev, dtype=dtype)
    y = ys[shift:].view(rows, C)
    return x, w, b, y


def layer_norm_call(lib, x, w, b, y, eps=1e-5):
    rows, C = x.shape
    sh = LayerNormShape(rows, C, eps, DTYPE_CODE[x.dtype])
    return lib.ssm_layer_norm_fwd_cuda(ctypes.byref(sh), P(x), P(w), P(b), P(y), stream_ptr())


def check_layer_norm(lib, rep, rows, C, dtype, offset=0.0, scale=1.0, eps=1e-5, misalign=False, tag=""):
    x, w, b, y = layer_norm_inputs(rows, C, dtype, offset, scale, misalign=misalign)
    path = layer_norm_path(C, dtype, aligned=not misalign)
    name = f"layernorm {tag}rows={rows} C={C} {str(dtype)[6:]} {path}" + (f" offset={offset:g}" if offset else "")
    y.fill_(float("nan"))
    st = layer_norm_call(lib, x, w, b, y, eps)
    torch.cuda.synchronize()
    if st != SSM_OK:
        rep.add(name, False, f"status {st}")
        return
    ref = layer_norm_ref(x, w, b, eps)
    rel, mx = errs(y, ref)
    # The float32 mean is exact to a few roundings of the row's largest |x|, and that error divided by the row's
    # std reaches y: large offsets, or a few nearly equal values (C = 2), are ill-conditioned (a one-pass
    # variance would be off by O(1) there). The bound grows with the worst row's max|x| / std.
    xd = x.double()
    std = (xd.var(dim=1, unbiased=False) + eps).sqrt()
    conditioning = (xd.abs().amax(dim=1) / std).max().item() if rows else 0.0
    tol = TOL_LN[dtype] + 2.0 ** -22 * conditioning
    y1 = y.clone()
    st2 = layer_norm_call(lib, x, w, b, y, eps)
    torch.cuda.synchronize()
    same = st2 == SSM_OK and torch.equal(y, y1)
    ok = mx <= tol and same
    detail = f"max err {mx:.2e} (tol {tol:.1e}), rel L2 {rel:.2e}, repeat bitwise {'equal' if same else 'DIFFERENT'}"
    if not ok and math.isfinite(mx):
        detail += f" | worst {top_errors(y, ref)}"
    rep.add(name, ok, detail)


def check_errors_layer_norm(lib, rep):
    dev = "cuda"
    x = torch.zeros(256, device=dev)
    ln = lambda shp, *ptrs: lib.ssm_layer_norm_fwd_cuda(ctypes.byref(shp) if shp is not None else None, *ptrs,
                                                        stream_ptr())
    ok4 = (P(x), P(x), P(x), P(x))
    codes = [
        (ln(None, *ok4), SSM_ERR_NULL_POINTER),
        (ln(LayerNormShape(4, 16, 1e-5, 0), None, P(x), P(x), P(x)), SSM_ERR_NULL_POINTER),
        (ln(LayerNormShape(4, 16, 1e-5, 0), P(x), P(x), P(x), None), SSM_ERR_NULL_POINTER),
        (ln(LayerNormShape(0, 16, 1e-5, 0), *ok4), SSM_OK),                      # nothing to do
        (ln(LayerNormShape(-1, 16, 1e-5, 0), *ok4), SSM_ERR_BAD_SIZE),
        (ln(LayerNormShape(4, 0, 1e-5, 0), *ok4), SSM_ERR_BAD_SIZE),
        (ln(LayerNormShape(1, (1 << 30) + 1, 1e-5, 0), *ok4), SSM_ERR_BAD_SIZE),  # channels > 2^30
        (ln(LayerNormShape(1 << 30, 1 << 30, 1e-5, 0), *ok4), SSM_ERR_BAD_SIZE),  # rows * C = 2^60
        (ln(LayerNormShape(4, 16, 1e-5, 7), *ok4), SSM_ERR_BAD_DTYPE),
        (ln(LayerNormShape(4, 16, 0.0, 0), *ok4), SSM_ERR_UNSUPPORTED),
        (ln(LayerNormShape(4, 16, float("nan"), 0), *ok4), SSM_ERR_UNSUPPORTED),
        (ln(LayerNormShape(4, 16, float("inf"), 0), *ok4), SSM_ERR_UNSUPPORTED),
    ]
    torch.cuda.synchronize()
    got = [c for c, _ in codes]
    want = [w for _, w in codes]
    rep.add("layernorm argument validation", got == want, f"got {got} want {want}")


def run_layer_norm_checks(lib, rep, quick=False):
    if not hasattr(lib, "ssm_layer_norm_fwd_cuda"):
        rep.add("layernorm", False, "the library has no ssm_layer_norm_fwd_cuda (built before domain version 3)")
        return
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    check_errors_layer_norm(lib, rep)
    if quick:
        for C in (1, 33, 32, 64, 768):
            check_layer_norm(lib, rep, 37, C, f32)
            check_layer_norm(lib, rep, 37, C, f16)
        check_layer_norm(lib, rep, 5, 4096, f16)     # loop path, vectors
        check_layer_norm(lib, rep, 5, 2051, f32)     # loop path, scalar
        check_layer_norm(lib, rep, 9, 64, f16, misalign=True)
        return
    widths = (32, 64, 128, 256, 512, 768, 48, 96, 192, 320, 384, 640, 1000, 1024, 2048, 1, 2, 3, 4, 8, 12, 20, 33,
              65, 129, 250, 513, 1025, 1536, 2051, 4096)
    for C in widths:
        for dt in (f32, f16):
            check_layer_norm(lib, rep, 1000 + C % 7, C, dt)
    for C in (32, 64, 96, 768, 33):
        check_layer_norm(lib, rep, 513, C, bf16)
    # many rows: the grid-stride loop, the last partial warp of rows
    check_layer_norm(lib, rep, 1 << 20, 32, f16, tag="large ")
    check_layer_norm(lib, rep, (1 << 20) - 3, 64, f32, tag="large ")
    check_layer_norm(lib, rep, 1000003, 33, f32, tag="large ")
    check_layer_norm(lib, rep, 300001, 256, f16, tag="large ")
    check_layer_norm(lib, rep, 40000, 768, f16, tag="large ")
    # (blocks that loop over several row groups: the "lnblocks" variant, --build-variants)
    # the scalar path for vectorisable widths (pointers one element off 16-byte alignment)
    for C in (32, 64, 512, 768):
        check_layer_norm(lib, rep, 777, C, f16, misalign=True, tag="misaligned ")
        check_layer_norm(lib, rep, 777, C, f32, misalign=True, tag="misaligned ")
    # two-pass accuracy: mean 1e3, std 1
    for C in (32, 96, 768, 1000, 33, 4096):
        check_layer_norm(lib, rep, 2000, C, f32, offset=1e3, tag="offset ")
        check_layer_norm(lib, rep, 2000, C, f16, offset=1e3, scale=4.0, tag="offset ")
    # epsilon, constant rows (var = 0)
    check_layer_norm(lib, rep, 999, 64, f32, eps=0.5, tag="eps=0.5 ")
    check_layer_norm(lib, rep, 999, 128, f16, scale=0.0, tag="constant rows ")


def bench_layer_norm(lib, bw, batch=128, dtypes=(torch.float32, torch.float16), tag=""):
    """LayerNorm forward: the HRVMamba widths at their resolutions (batch images of H x W positions; the models
    also normalise the d_inner = 2C wide tensors), then a sweep of widths at ~2^26 elements. One line per case:
    effective GB/s = 2 x rows x C x element size / time, and torch.nn.functional.layer_norm on the same data."""
    rows_out = []
    cases = []
    for model in ("small", "base"):
        for C, (H, W) in zip(HRV[model], RES):
            for c in (C, 2 * C):
                cases.append((f"{model}{tag}", f"{H}x{W}", batch * H * W, c))
    for C in (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1000, 1024, 33, 2048):
        cases.append((f"sweep{tag}", "-", max(1, (1 << 26) // C), C))
    print(f"{'layernorm case':34} {'dtype':8} {'path':16} {'ms':>8} {'GB/s':>7} {'frac':>5} {'torch ms':>9} "
          f"{'torch GB/s':>10}")
    for label, res, rows, C in cases:
        for dtype in dtypes:
            es = torch.finfo(dtype).bits // 8
            byts = 2 * rows * C * es + 2 * C * es
            nsets = max(1, min(4, math.ceil(L2_ROTATE_BYTES / max(1, byts))))
            sets = [layer_norm_inputs(rows, C, dtype, seed=i) for i in range(nsets)]
            it = [0]

            def fwd():
                x, w, b, y = sets[it[0] % nsets]
                it[0] += 1
                st = layer_norm_call(lib, x, w, b, y)
                assert st == 0, st

            def fwd_torch():
                x, w, b, y = sets[it[0] % nsets]
                it[0] += 1
                torch.nn.functional.layer_norm(x, (C,), w, b, 1e-5)

            t = time_call(fwd)
            tt = time_call(fwd_torch)
            path = layer_norm_path(C, dtype)
            print(f"{label + ' ' + res + f' rows={rows} C={C}':34} {str(dtype)[6:]:8} {path:16} {t * 1e3:8.3f} "
                  f"{byts / t / 1e9:7.0f} {byts / t / bw:5.2f} {tt * 1e3:9.3f} {byts / tt / 1e9:10.0f}", flush=True)
            rows_out.append((label, res, "lnorm", "fwd", str(dtype)[6:], f"R{rows} C{C}", t, byts / t / bw))
            del sets
            torch.cuda.empty_cache()
    return rows_out


# ----------------------------------------------------------------------------------------------
# AddLayerNorm (domain version 4)

# half the spacing of the type's numbers around 1 (round to nearest): the relative rounding of a stored value
UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}


def add_layer_norm_call(lib, x, r, w, b, y, s, eps=1e-5):
    rows, C = x.shape
    sh = LayerNormShape(rows, C, eps, DTYPE_CODE[x.dtype])
    return lib.ssm_add_layer_norm_fwd_cuda(ctypes.byref(sh), P(x), P(r), P(w), P(b), P(y), P(s), stream_ptr())


def row_conditioning(t, eps):
    """max over rows of max|t| / std: how far float rounding of the row's values and mean reaches Y."""
    td = t.double()
    std = (td.var(dim=-1, unbiased=False) + eps).sqrt()
    return (td.abs().amax(dim=-1) / std).max().item() if td.shape[0] else 0.0


def check_add_layer_norm(lib, rep, rows, C, dtype, offset=0.0, scale=1.0, eps=1e-5, misalign=False, tag=""):
    path = layer_norm_path(C, dtype, aligned=not misalign)
    name = f"addlayernorm {tag}rows={rows} C={C} {str(dtype)[6:]} {path}" + (f" offset={offset:g}" if offset else "")
    try:
        reference = project_reference("add_layer_norm_reference")
    except Exception as exc:  # noqa: BLE001 - report, do not stop the other checks
        rep.add(name, False, f"no add_layer_norm_reference: {exc!r}")
        return
    x, w, b, y = layer_norm_inputs(rows, C, dtype, offset, scale, seed=1, misalign=misalign)
    r, _, _, s = layer_norm_inputs(rows, C, dtype, 0.0, scale, seed=2, misalign=misalign)
    y.fill_(float("nan"))
    s.fill_(float("nan"))
    st = add_layer_norm_call(lib, x, r, w, b, y, s, eps)
    torch.cuda.synchronize()
    if st != SSM_OK:
        rep.add(name, False, f"status {st}")
        return
    eps32 = float(torch.tensor(eps, dtype=torch.float32))
    # S: the reference's float32 add rounded to the type, bit for bit.
    _, s_ref = reference(x, r, w, b, eps32)
    s_equal = torch.equal(s, s_ref)
    # Y: the float64 LayerNorm of the stored S (the kernel's own accuracy, as check_layer_norm) ...
    y_stored = reference(s.double(), torch.zeros_like(s, dtype=torch.float64), w.double(), b.double(), eps32)[0]
    _, mx = errs(y, y_stored)
    cond = row_conditioning(s, eps32)
    tol = TOL_LN[dtype] + 2.0 ** -22 * cond
    # ... and the float64 reference of the exact sum, which differs by the rounding of S to the type.
    y64 = reference(x.double(), r.double(), w.double(), b.double(), eps32)[0]
    _, mx64 = errs(y, y64)
    tol64 = tol + 2.0 * UNIT_ROUNDOFF[dtype] * cond
    # (Y, S) bitwise equal to LayerNorm of the stored sum (same path: empty_like is aligned exactly when the
    # AddLayerNorm buffers are, s misaligned takes the element path either way).
    y2 = torch.empty_like(y)
    st2 = layer_norm_call(lib, s, w, b, y2, eps)
    y3, s3 = torch.empty_like(y), torch.empty_like(s)
    st3 = add_layer_norm_call(lib, x, r, w, b, y3, s3, eps)
    torch.cuda.synchronize()
    bit_equal = st2 == SSM_OK and torch.equal(y, y2)
    same = st3 == SSM_OK and torch.equal(y, y3) and torch.equal(s, s3)
    ok = s_equal and mx <= tol and mx64 <= tol64 and bit_equal and same
    detail = (f"S {'==' if s_equal else '!='} ref; Y vs LN64(S) max err {mx:.2e} (tol {tol:.1e}), vs ref64(X+R) "
              f"{mx64:.2e} (tol {tol64:.1e}); (Y,S) vs LayerNorm(S) bitwise {'equal' if bit_equal else 'DIFFERENT'}; "
              f"repeat {'equal' if same else 'DIFFERENT'}")
    if not ok and math.isfinite(mx):
        detail += f" | worst {top_errors(y, y_stored)}"
    rep.add(name, ok, detail)


def check_errors_add_layer_norm(lib, rep):
    x = torch.zeros(256, device="cuda")
    aln = lambda shp, *ptrs: lib.ssm_add_layer_norm_fwd_cuda(  # noqa: E731
        ctypes.byref(shp) if shp is not None else None, *ptrs, stream_ptr())
    ok6 = (P(x),) * 6
    sh = lambda rows=4, c=16, eps=1e-5, dt=0: LayerNormShape(rows, c, eps, dt)  # noqa: E731
    codes = [
        (aln(None, *ok6), SSM_ERR_NULL_POINTER),
        (aln(sh(), None, *ok6[1:]), SSM_ERR_NULL_POINTER),
        (aln(sh(), P(x), None, *ok6[2:]), SSM_ERR_NULL_POINTER),              # residual
        (aln(sh(), *ok6[:5], None), SSM_ERR_NULL_POINTER),                    # sum
        (aln(sh(0), *ok6), SSM_OK),                                           # nothing to do
        (aln(sh(-1), *ok6), SSM_ERR_BAD_SIZE),
        (aln(sh(4, 0), *ok6), SSM_ERR_BAD_SIZE),
        (aln(sh(1, (1 << 30) + 1), *ok6), SSM_ERR_BAD_SIZE),
        (aln(sh(1 << 30, 1 << 30), None, None, None, None, None, None), SSM_ERR_BAD_SIZE),  # shape before pointers
        (aln(sh(dt=7), *ok6), SSM_ERR_BAD_DTYPE),
        (aln(sh(eps=0.0), *ok6), SSM_ERR_UNSUPPORTED),
        (aln(sh(eps=float("nan")), *ok6), SSM_ERR_UNSUPPORTED),
    ]
    torch.cuda.synchronize()
    got = [c for c, _ in codes]
    want = [w for _, w in codes]
    rep.add("addlayernorm argument validation", got == want, f"got {got} want {want}")


def run_add_layer_norm_checks(lib, rep, quick=False):
    if not hasattr(lib, "ssm_add_layer_norm_fwd_cuda"):
        rep.add("addlayernorm", False, "the library has no ssm_add_layer_norm_fwd_cuda (built before domain version 4)")
        return
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    check_errors_add_layer_norm(lib, rep)
    if quick:
        for C in (1, 33, 32, 768):
            check_add_layer_norm(lib, rep, 37, C, f32)
            check_add_layer_norm(lib, rep, 37, C, f16)
        check_add_layer_norm(lib, rep, 5, 4096, f16)   # loop path, vectors
        check_add_layer_norm(lib, rep, 5, 2051, f32)   # loop path, elements
        check_add_layer_norm(lib, rep, 9, 64, bf16, misalign=True)
        return
    for C in (32, 64, 96, 128, 256, 320, 512, 640, 768, 1024, 1, 7, 33, 65, 250, 513, 1025, 2051, 4096):
        for dt in (f32, f16):
            check_add_layer_norm(lib, rep, 1000 + C % 7, C, dt)
    for C in (32, 64, 768, 33, 4096):
        check_add_layer_norm(lib, rep, 513, C, bf16)
    check_add_layer_norm(lib, rep, 1 << 20, 32, f16, tag="large ")
    check_add_layer_norm(lib, rep, 300001, 256, bf16, tag="large ")
    for C in (32, 64, 768):
        for dt in (f32, f16):
            check_add_layer_norm(lib, rep, 777, C, dt, misalign=True, tag="misaligned ")
    for C in (96, 33, 4096):
        check_add_layer_norm(lib, rep, 2000, C, f32, offset=1e3, tag="offset ")
        check_add_layer_norm(lib, rep, 2000, C, f16, offset=1e2, scale=4.0, tag="offset ")


def bench_add_layer_norm(lib, bw, batch=128, dtypes=(torch.float16, torch.float32)):
    """AddLayerNorm at the HRVMamba widths (batch images of H x W positions) beside a separate add (torch) and
    ssm_layer_norm_fwd_cuda on the same data. GB/s = 4 x rows x C x element size (read X, R; write Y, S) / time.
    ms: GPU time per call (time_gpu: CUDA graph replay); eager ms: one call at a time, launch overhead included."""
    rows_out = []
    print(f"{'addlayernorm case':30} {'dtype':8} {'path':16} {'ms':>8} {'GB/s':>7} {'frac':>5} {'add+LN ms':>10} "
          f"{'speedup':>7} {'eager ms':>9}")
    for model in ("small", "base"):
        for C, (H, W) in zip(HRV[model], RES):
            rows = batch * H * W
            for dtype in dtypes:
                es = torch.finfo(dtype).bits // 8
                byts = 4 * rows * C * es
                nsets = max(1, min(4, math.ceil(L2_ROTATE_BYTES / byts)))
                sets = []
                for i in range(nsets):
                    x, w, b, y = layer_norm_inputs(rows, C, dtype, seed=2 * i + 1)
                    r, _, _, s = layer_norm_inputs(rows, C, dtype, seed=2 * i + 2)
                    sets.append((x, r, w, b, y, s))
                it = [0]

                def fused():
                    x, r, w, b, y, s = sets[it[0] % nsets]
                    it[0] += 1
                    st = add_layer_norm_call(lib, x, r, w, b, y, s)
                    assert st == 0, st

                def separate():
                    x, r, w, b, y, s = sets[it[0] % nsets]
                    it[0] += 1
                    torch.add(x, r, out=s)
                    st = layer_norm_call(lib, s, w, b, y)
                    assert st == 0, st

                t = time_gpu(fused, inner=4 * nsets)
                t2 = time_gpu(separate, inner=4 * nsets)
                te = time_call(fused)
                label = f"{model} {H}x{W} rows={rows} C={C}"
                print(f"{label:30} {str(dtype)[6:]:8} {layer_norm_path(C, dtype):16} {t * 1e3:8.3f} "
                      f"{byts / t / 1e9:7.0f} {byts / t / bw:5.2f} {t2 * 1e3:10.3f} {t2 / t:7.2f} {te * 1e3:9.3f}",
                      flush=True)
                rows_out.append((model, f"{H}x{W}", "addln", "fwd", str(dtype)[6:], f"R{rows} C{C}", t, byts / t / bw))
                del sets
                torch.cuda.empty_cache()
    return rows_out


# ----------------------------------------------------------------------------------------------
# MultiKernelDepthwiseConv (domain version 4)

LPU_KERNELS = (3, 5, 7, 9)  # HRVMamba's LPU: kernels over four channel quarters, shuffle 4, GELU


def dwconv_inputs(B, H, W, C, kernel_max, kernel_sizes, group_channels, dtype, seed=0, misalign=0):
    """x (B,H,W,C), weight (C,K,K) whose taps outside each group's k x k centre are NaN (the op never reads
    them), bias (C), y (B,H,W,C). misalign: the tensors start that many elements into their allocation."""
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(seed)
    n = B * H * W * C
    xs = torch.empty(n + misalign + 1, device=dev, dtype=dtype)  # + 1: non-NULL pointers for B = 0 too
    x = xs[misalign:misalign + n].view(B, H, W, C)
    x.copy_(torch.randn(B, H, W, C, device=dev, generator=gen).to(dtype))
    w = torch.full((C, kernel_max, kernel_max), float("nan"), device=dev)
    c0 = 0
    for k, gc in zip(kernel_sizes, group_channels):
        lo = kernel_max // 2 - k // 2
        w[c0:c0 + gc, lo:lo + k, lo:lo + k] = torch.randn(gc, k, k, device=dev, generator=gen) / k
        c0 += gc
    b = (0.3 * torch.randn(C, device=dev, generator=gen)).to(dtype)
    ys = torch.empty(n + misalign + 1, device=dev, dtype=dtype)
    return x, w.to(dtype), b, ys[misalign:misalign + n].view(B, H, W, C)


def dwconv_call(lib, x, w, b, y, kernel_sizes, group_channels, shuffle, gelu):
    B, H, W, C = x.shape
    sh = dwconv_shape(B, H, W, C, w.shape[-1], kernel_sizes, group_channels, shuffle, gelu, DTYPE_CODE[x.dtype])
    return lib.ssm_depthwise_conv_fwd_cuda(ctypes.byref(sh), P(x), P(w), P(b), P(y), stream_ptr())


def dwconv_path(C, S, dtype, misalign=0):
    """The global access width the kernel picks (make_plan in depthwise_conv.cu), for the report."""
    es = torch.finfo(dtype).bits // 8
    P_ = C // S
    for vb in (16, 8):
        v = vb // es
        if (misalign * es) % vb == 0 and C % v == 0 and (S == 1 or P_ % v == 0):
            return f"vec{vb}"
    return "elem"


def dwconv_bound(reference, x, w, b, kernel_sizes, group_channels, shuffle):
    """sum |x| |w| + |b| for every output (float64, shuffled like Y): what the float32 accumulation can lose."""
    return reference(x.double().abs(), torch.nan_to_num(w.double()).abs(), b.double().abs(), kernel_sizes,
                     group_channels, shuffle, "none")


def check_dwconv(lib, rep, B, H, W, C, kernel_sizes=LPU_KERNELS, group_channels=None, shuffle=4, gelu=True,
                 dtype=torch.float16, kernel_max=None, misalign=0, tag="", images=None):
    """images: compare only these images with the reference (for tensors too large for a float64 copy)."""
    group_channels = tuple(group_channels or [C // len(kernel_sizes)] * len(kernel_sizes))
    kernel_max = kernel_max or max(kernel_sizes)
    path = dwconv_path(C, shuffle, dtype, misalign)
    name = (f"dwconv {tag}B{B} {H}x{W} C{C} k{'/'.join(map(str, kernel_sizes))}"
            f"{'' if len(set(group_channels)) == 1 else ' g' + '/'.join(map(str, group_channels))} K{kernel_max} "
            f"S{shuffle} {'gelu' if gelu else 'none'} {str(dtype)[6:]} {path}" +
            (f" misalign={misalign}" if misalign else ""))
    if not hasattr(lib, "ssm_depthwise_conv_fwd_cuda"):
        rep.add(name, False, "the library has no ssm_depthwise_conv_fwd_cuda (built before domain version 4)")
        return
    try:
        reference = project_reference("multi_kernel_depthwise_conv_reference")
    except Exception as exc:  # noqa: BLE001
        rep.add(name, False, f"no multi_kernel_depthwise_conv_reference: {exc!r}")
        return
    x, w, b, y = dwconv_inputs(B, H, W, C, kernel_max, kernel_sizes, group_channels, dtype,
                               seed=B * 7919 + H * 131 + W * 17 + C, misalign=misalign)
    if B == 0:  # empty tensors have NULL data pointers: pass a guard element that must stay untouched
        guard = torch.full((2,), float("nan"), device="cuda", dtype=dtype)
        sh = dwconv_shape(0, H, W, C, kernel_max, kernel_sizes, group_channels, shuffle, gelu, DTYPE_CODE[dtype])
        st = lib.ssm_depthwise_conv_fwd_cuda(ctypes.byref(sh), P(guard), P(w), P(b), P(guard[1:]), stream_ptr())
        torch.cuda.synchronize()
        untouched = bool(guard.isnan().all())
        rep.add(name, st == SSM_OK and untouched, f"status {st}, guard untouched {untouched}")
        return
    y.fill_(float("nan"))  # unwritten outputs show
    st = dwconv_call(lib, x, w, b, y, kernel_sizes, group_channels, shuffle, gelu)
    torch.cuda.synchronize()
    if st != SSM_OK:
        rep.add(name, False, f"status {st}")
        return
    y1 = y.clone()
    st2 = dwconv_call(lib, x, w, b, y, kernel_sizes, group_channels, shuffle, gelu)
    torch.cuda.synchronize()
    same = st2 == SSM_OK and torch.equal(y, y1)
    sel = slice(None) if images is None else list(images)
    xs, ys = x[sel], y[sel]
    ref = reference(xs.double(), w.double(), b.double(), kernel_sizes, group_channels, shuffle,
                    "gelu" if gelu else "none")
    bound = dwconv_bound(reference, xs, w, b, kernel_sizes, group_channels, shuffle)
    # Per element: the output's rounding to the type (half an ulp, relative), the float32 accumulation (one
    # rounding per tap and the bias, each at most 2^-24 of the running |sum| <= bound), GELU's slope (<= 1.13)
    # and erff (a few float32 ulps), and float16's subnormal spacing.
    kmax = max(kernel_sizes)
    tol = (UNIT_ROUNDOFF[dtype] * ref.abs() + 1.2 * (kmax * kmax + 2) * 2.0 ** -24 * bound
           + 2.0 ** -21 * (bound + ref.abs()) + (2.0 ** -24 if dtype == torch.float16 else 0.0)).clamp_min(1e-300)
    err = (ys.double() - ref).abs()
    ratio = torch.nan_to_num(err / tol, nan=float("inf")).max().item()
    rel, _ = errs(ys, ref)
    ok = ratio <= 1.0 and same
    detail = (f"max err/tol {ratio:.2f}, rel L2 {rel:.2e}, repeat bitwise {'equal' if same else 'DIFFERENT'}" +
              ("" if images is None else f" (images {list(images)} compared)"))
    if not ok and math.isfinite(ratio):
        detail += f" | worst {top_errors(ys, ref)}"
    rep.add(name, ok, detail)


def check_errors_dwconv(lib, rep):
    x = torch.zeros(1 << 12, device="cuda")
    ok4 = (P(x),) * 4

    def call(shape=None, ptrs=ok4, **kw):
        base = dict(B=2, H=4, W=5, C=8, kernel_max=5, kernel_sizes=(3, 5), group_channels=(4, 4), shuffle=2,
                    gelu=1, dtype_code=0)
        base.update(kw)
        sh = shape if shape is not None else dwconv_shape(**base)
        return lib.ssm_depthwise_conv_fwd_cuda(ctypes.byref(sh) if sh != "null" else None, *ptrs, stream_ptr())

    nul = lambda i: tuple(None if j == i else p for j, p in enumerate(ok4))  # noqa: E731
    too_many = dwconv_shape(1, 4, 4, 17, 3, (3,) * 16, (1,) * 16, 1, 0, 0)
    too_many.num_groups = 17
    codes = [
        (call(shape="null"), SSM_ERR_NULL_POINTER),
        (call(ptrs=nul(0)), SSM_ERR_NULL_POINTER),
        (call(ptrs=nul(1)), SSM_ERR_NULL_POINTER),
        (call(ptrs=nul(2)), SSM_ERR_NULL_POINTER),
        (call(ptrs=nul(3)), SSM_ERR_NULL_POINTER),
        (call(), SSM_OK),
        (call(B=0), SSM_OK),                                                    # nothing to do
        (call(B=-1), SSM_ERR_BAD_SIZE),
        (call(H=0), SSM_ERR_BAD_SIZE),
        (call(W=0), SSM_ERR_BAD_SIZE),
        (call(C=9, group_channels=(4, 5), shuffle=3), SSM_OK),
        (call(C=9, group_channels=(4, 4)), SSM_ERR_BAD_SIZE),                   # groups do not sum to C
        (call(group_channels=(8, 0)), SSM_ERR_BAD_SIZE),
        (call(kernel_sizes=(3, 4)), SSM_ERR_BAD_SIZE),                          # even
        (call(kernel_sizes=(3, 7)), SSM_ERR_BAD_SIZE),                          # > kernel_max
        (call(kernel_max=17, kernel_sizes=(3, 17)), SSM_ERR_BAD_SIZE),          # > 15
        (call(kernel_max=4), SSM_ERR_BAD_SIZE),
        (call(shuffle=3), SSM_ERR_BAD_SIZE),                                    # C % S
        (call(shuffle=0), SSM_ERR_BAD_SIZE),
        (call(shape=too_many), SSM_ERR_BAD_SIZE),
        (call(kernel_sizes=(), group_channels=()), SSM_ERR_BAD_SIZE),           # no group
        (call(gelu=2), SSM_ERR_UNSUPPORTED),
        (call(dtype_code=3), SSM_ERR_BAD_DTYPE),
        (call(H=(1 << 30) + 1, C=2, group_channels=(1, 1)), SSM_ERR_BAD_SIZE),  # limits, before the pointers
        # B*H*W*C = 2^60 (beyond) and 2^60 - 2^31 (within): a limits query with NULL pointers
        (call(ptrs=(None,) * 4, B=1 << 29, H=1 << 15, W=1 << 15, C=2, group_channels=(1, 1)), SSM_ERR_BAD_SIZE),
        (call(ptrs=(None,) * 4, B=(1 << 29) - 1, H=1 << 15, W=1 << 15, C=2, group_channels=(1, 1)),
         SSM_ERR_NULL_POINTER),
    ]
    torch.cuda.synchronize()
    got = [c for c, _ in codes]
    want = [w for _, w in codes]
    rep.add("dwconv argument validation", got == want, f"got {got} want {want}")


def run_dwconv_checks(lib, rep, quick=False, tag=""):
    if not hasattr(lib, "ssm_depthwise_conv_fwd_cuda"):
        rep.add("dwconv", False, "the library has no ssm_depthwise_conv_fwd_cuda (built before domain version 4)")
        return
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    t = tag
    check_errors_dwconv(lib, rep)
    # odd shapes (quick and full)
    check_dwconv(lib, rep, 2, 16, 12, 32, dtype=f16, tag=t)
    check_dwconv(lib, rep, 3, 1, 1, 32, dtype=f16, tag=t + "1x1 ")
    check_dwconv(lib, rep, 2, 2, 3, 16, dtype=f32, tag=t + "smaller than the kernel ")
    check_dwconv(lib, rep, 2, 9, 7, 24, kernel_sizes=(5,), shuffle=1, gelu=False, dtype=f32, kernel_max=7,
                 tag=t + "one group ")
    check_dwconv(lib, rep, 2, 11, 13, 12, dtype=f16, tag=t + "C % 8 != 0 ")
    check_dwconv(lib, rep, 1, 10, 9, 32, dtype=f16, misalign=1, tag=t)
    check_dwconv(lib, rep, 1, 10, 9, 32, dtype=f16, misalign=4, tag=t)              # 8-byte path
    check_dwconv(lib, rep, 1, 9, 10, 40, kernel_sizes=(1, 11, 13, 15), dtype=f32, tag=t + "generic kernels ")
    check_dwconv(lib, rep, 0, 8, 6, 32, dtype=f16, tag=t + "batch 0 ")
    if quick:
        return
    # hrvmamba_small / base LPU shapes
    for C, (H, W) in zip(HRV["small"], RES):
        for dt in (f16, f32, bf16):
            check_dwconv(lib, rep, 2, H, W, C, dtype=dt, tag=t + "hrv-small ")
    for C, (H, W) in zip(HRV["base"], RES):
        check_dwconv(lib, rep, 2, H, W, C, dtype=f16, tag=t + "hrv-base ")
    for C, (H, W) in zip(HRV["small"] + HRV["base"], RES + RES):  # batch 1: the small-grid plans
        check_dwconv(lib, rep, 1, H, W, C, dtype=f16, tag=t + "hrv b1 ")
    check_dwconv(lib, rep, 2, 64, 48, 32, shuffle=1, dtype=f16, tag=t + "no shuffle ")
    check_dwconv(lib, rep, 2, 32, 24, 64, gelu=False, dtype=f16, tag=t + "no activation ")
    check_dwconv(lib, rep, 2, 17, 13, 64, shuffle=64, dtype=f32, tag=t + "shuffle = C ")
    check_dwconv(lib, rep, 1, 12, 9, 1024, shuffle=256, dtype=f16, tag=t + "shuffle 256 ")
    check_dwconv(lib, rep, 2, 19, 37, 36, dtype=f16, tag=t + "P = 9 ")
    check_dwconv(lib, rep, 2, 21, 5, 20, kernel_sizes=(3,), shuffle=1, dtype=f16, tag=t + "C = 20 ")
    check_dwconv(lib, rep, 2, 33, 70, 48, dtype=bf16, misalign=1, tag=t)
    check_dwconv(lib, rep, 2, 33, 70, 48, dtype=f32, misalign=2, tag=t)             # 8-byte path
    groups = tuple(range(1, 17))
    check_dwconv(lib, rep, 2, 14, 11, sum(groups), kernel_sizes=tuple(1 + 2 * (g % 8) for g in range(16)),
                 group_channels=groups, shuffle=8, dtype=f32, kernel_max=15, tag=t + "16 groups ")
    check_dwconv(lib, rep, 2, 14, 11, sum(groups), kernel_sizes=tuple(15 - 2 * (g % 8) for g in range(16)),
                 group_channels=groups, shuffle=4, dtype=f16, kernel_max=15, tag=t + "16 groups ")
    check_dwconv(lib, rep, 1, 200, 3, 8, kernel_sizes=(13, 1), dtype=f16, shuffle=2, tag=t + "tall ")
    check_dwconv(lib, rep, 1, 3, 300, 8, kernel_sizes=(15, 5), dtype=f32, shuffle=2, tag=t + "wide ")
    # more than 2^31 elements (64-bit offsets); the first and last images against the reference
    H, W, C = 64, 48, 32
    B = (1 << 31) // (H * W * C) + 1
    check_dwconv(lib, rep, B, H, W, C, dtype=f16, tag=t + "> 2^31 elements ", images=(0, B - 1))
    torch.cuda.empty_cache()


def torch_lpu_chain(x, weights, biases, kernel_sizes, shuffle):
    """PyTorch's equivalent of the op: NHWC -> NCHW view, split, one depthwise F.conv2d per group, cat, channel
    shuffle, GELU, back to a contiguous channel-last tensor."""
    xn = x.permute(0, 3, 1, 2)
    parts = torch.split(xn, [w.shape[0] for w in weights], dim=1)
    z = torch.cat([torch.nn.functional.conv2d(p, w, b, padding=k // 2, groups=p.shape[1])
                   for p, w, b, k in zip(parts, weights, biases, kernel_sizes)], dim=1)
    B, C, H, W = z.shape
    z = z.reshape(B, shuffle, C // shuffle, H, W).transpose(1, 2).reshape(B, C, H, W)
    return torch.nn.functional.gelu(z).permute(0, 2, 3, 1).contiguous()


def bench_dwconv(lib, bw, batches=(32, 128), dtype=torch.float16, tag=""):
    """MultiKernelDepthwiseConv at hrvmamba_small's LPU shapes beside PyTorch's chain on the same data.
    GB/s = (one read of X + one write of Y) / time; frac = that / the copy bandwidth. ms: GPU time per call
    (time_gpu: CUDA graph replay, for both); eager ms: one call at a time, launch overhead included."""
    rows_out = []
    es = torch.finfo(dtype).bits // 8
    print(f"{'dwconv case':30} {'dtype':8} {'path':6} {'ms':>8} {'GB/s':>7} {'frac':>5} {'torch ms':>9} "
          f"{'torch GB/s':>10} {'speedup':>7} {'max|diff|':>9} {'eager ms':>9}")
    for batch in batches:
        for C, (H, W) in zip(HRV["small"], RES):
            gcs = [C // 4] * 4
            byts = 2 * batch * H * W * C * es
            nsets = max(1, min(8, math.ceil(L2_ROTATE_BYTES / byts)))
            sets = [dwconv_inputs(batch, H, W, C, 9, LPU_KERNELS, gcs, dtype, seed=i) for i in range(nsets)]
            w0 = sets[0][1]
            per_group, c0 = [], 0
            for k, gc in zip(LPU_KERNELS, gcs):
                lo = 4 - k // 2
                per_group.append(w0[c0:c0 + gc, lo:lo + k, lo:lo + k].unsqueeze(1).contiguous())
                c0 += gc
            b_groups = list(torch.split(sets[0][2], gcs))
            it = [0]

            def ours():
                x, w, b, y = sets[it[0] % nsets]
                it[0] += 1
                st = dwconv_call(lib, x, w, b, y, LPU_KERNELS, gcs, 4, True)
                assert st == 0, st

            def chain():
                x = sets[it[0] % nsets][0]
                it[0] += 1
                return torch_lpu_chain(x, per_group, b_groups, LPU_KERNELS, 4)

            t = time_gpu(ours, inner=2 * nsets)
            tt = time_gpu(chain, inner=nsets)
            te = time_call(ours)
            x, w, b, y = sets[0]  # agreement on set 0 (same weights as the chain's)
            ours_y = y.clone()
            st = dwconv_call(lib, x, w, b, ours_y, LPU_KERNELS, gcs, 4, True)
            diff = (ours_y.float() - torch_lpu_chain(x, per_group, b_groups, LPU_KERNELS, 4).float()).abs().max().item()
            label = f"small{tag} {H}x{W} B{batch} C{C}"
            print(f"{label:30} {str(dtype)[6:]:8} {dwconv_path(C, 4, dtype):6} {t * 1e3:8.3f} {byts / t / 1e9:7.0f} "
                  f"{byts / t / bw:5.2f} {tt * 1e3:9.3f} {byts / tt / 1e9:10.0f} {tt / t:7.2f} "
                  f"{diff if st == 0 else float('nan'):9.2e} {te * 1e3:9.3f}", flush=True)
            rows_out.append((f"small{tag}/b{batch}", f"{H}x{W}", "dwconv", "fwd", str(dtype)[6:],
                             f"B{batch} C{C} k3579", t, byts / t / bw))
            rows_out.append((f"small/b{batch}", f"{H}x{W}", "torchlpu", "fwd", str(dtype)[6:], f"B{batch} C{C} k3579",
                             tt, byts / tt / bw))
            del sets
            torch.cuda.empty_cache()
    return rows_out


def run_checks(lib, rep, ops=("scan", "scan2d", "deform")):
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    if "scan" in ops or "deform" in ops:
        check_errors(lib, rep)
    if "scan" in ops:
        # SelectiveScan
        for dt in (f32, f16, bf16):
            check_scan(lib, rep, 2, 4, 16, 1, 3072, dt, tag="hrv-small-64x48 ")
        check_scan(lib, rep, 3, 2, 5, 4, 1, f32)                                   # L = 1
        check_scan(lib, rep, 3, 2, 5, 4, 1, f16)
        check_scan(lib, rep, 1, 2, 4, 16, 16384, f32)                              # long L, N = 16
        check_scan(lib, rep, 1, 2, 4, 16, 16384, f16)
        check_scan(lib, rep, 2, 3, 7, 3, 100, f32, softplus=0, useD=False, usebias=False)  # G=3, L%8 != 0, NULL opts
        check_scan(lib, rep, 2, 3, 7, 2, 777, f16)                                 # scalar path, fp16
        check_scan(lib, rep, 2, 5, 6, 8, 40, bf16)                                 # G=5, N=8, short L
        check_scan(lib, rep, 2, 4, 1280, 1, 48, f32, tag="hrv-base-8x6 ")          # HRVMamba-base 8x6 (D=1280)
        check_scan(lib, rep, 2, 4, 1280, 1, 48, f16, tag="hrv-base-8x6 ")
        check_scan(lib, rep, 1, 4, 40, 2, 520, f32)                                # several chunks + tail, D % 8 != 0
        check_scan(lib, rep, 1, 1, 3, 5, 4096, f32, softplus=1, useD=True, usebias=False)
        # enough rows for several rows per lane segment (forward vector path, rows of one chunk)
        check_scan(lib, rep, 64, 4, 256, 1, 48, f16, bwd=False, tag="row-reps ")
        check_scan(lib, rep, 100, 4, 131, 2, 96, f32, bwd=False, tag="row-reps, partial last rep ")
    if "scan2d" in ops:
        run_scan2d_checks(lib, rep)
    if "deform" in ops:
        run_deform_checks(lib, rep)
    if "layernorm" in ops:
        run_layer_norm_checks(lib, rep)
    if "addlayernorm" in ops:
        run_add_layer_norm_checks(lib, rep)
    if "dwconv" in ops:
        run_dwconv_checks(lib, rep)
    if "vsstail" in ops:
        run_vss_tail_checks(lib, rep)


# ----------------------------------------------------------------------------------------------
# VSSBlockTail

def vss_tail_inputs(rows, D, C, H, dtype, seed=0, misalign=False):
    """Y, R and the nine parameters (a dict) on the GPU; misalign: the three weight matrices start one element
    into their allocation (not 32-byte aligned: the SIMT path)."""
    gen = torch.Generator(device="cuda").manual_seed(seed * 7919 + rows * 31 + D * 7 + C * 3 + H)
    rnd = lambda *shape: torch.randn(*shape, device="cuda", generator=gen, dtype=torch.float64)  # noqa: E731
    shift = 1 if misalign else 0

    def weight(k, n):
        store = torch.empty(k * n + shift, device="cuda", dtype=dtype)
        store[shift:] = (rnd(k * n) / math.sqrt(k)).to(dtype)
        return store[shift:].view(k, n)

    params = {"out_norm_weight": (1 + 0.3 * rnd(D)).to(dtype), "out_norm_bias": (0.2 * rnd(D)).to(dtype),
              "out_proj": weight(D, C), "norm_weight": (1 + 0.3 * rnd(C)).to(dtype),
              "norm_bias": (0.2 * rnd(C)).to(dtype), "fc1_weight": weight(C, H), "fc1_bias": (0.2 * rnd(H)).to(dtype),
              "fc2_weight": weight(H, C), "fc2_bias": (0.2 * rnd(C)).to(dtype)}
    return rnd(rows, D).to(dtype), rnd(rows, C).to(dtype), params


def vss_tail_call(lib, y, r, params, z, eps=1e-5, shape=None):
    rows, D = y.shape
    sh = shape or VSSTailShape(rows, D, r.shape[1], params["fc1_weight"].shape[1], eps, DTYPE_CODE[y.dtype])
    pr = VSSTailParams(*[params[n].data_ptr() for n in VSS_TAIL_PARAMS])
    return lib.ssm_vss_block_tail_fwd_cuda(ctypes.byref(sh), P(y), P(r), ctypes.byref(pr), P(z), stream_ptr())


def check_vss_tail(lib, rep, rows, D, C, H, dtype, misalign=False, tag="", misalign_y=False):
    """misalign_y: Y starts one element into its allocation (not 16-byte aligned: not the resident kernel)."""
    sys.path.insert(0, REPO)
    from custom_ops.reference import vss_block_tail_reference
    # rows = 0: one-row tensors with a shape of 0 rows (an empty torch tensor's data_ptr() is NULL, which the
    # kernel refuses before it looks at the rows)
    y, r, params = vss_tail_inputs(max(rows, 1), D, C, H, dtype, misalign=misalign)
    if misalign_y:
        store = torch.empty(y.numel() + 1, device="cuda", dtype=dtype)
        store[1:] = y.flatten()
        y = store[1:].view(y.shape)
    path = "mma" if dtype != torch.float32 and D % 16 == 0 and C % 16 == 0 and H % 16 == 0 and not misalign else "simt"
    name = f"vsstail {tag}rows={rows} D={D} C={C} H={H} {str(dtype)[6:]} {path}"
    z = torch.full((max(rows, 1), C), float("nan"), device="cuda", dtype=dtype)
    shape = VSSTailShape(rows, D, C, H, 1e-5, DTYPE_CODE[dtype])
    st = vss_tail_call(lib, y, r, params, z, shape=shape)
    torch.cuda.synchronize()
    if st != SSM_OK:
        rep.add(name, False, f"status {st}")
        return
    if rows == 0:
        rep.add(name, bool(torch.isnan(z).all()), "nothing written" if torch.isnan(z).all() else "wrote output")
        return
    ref = vss_block_tail_reference(y.double(), r.double(), *[params[n].double() for n in VSS_TAIL_PARAMS])
    rel, mx = errs(z, ref)
    z2 = torch.full_like(z, float("nan"))
    vss_tail_call(lib, y, r, params, z2)
    torch.cuda.synchronize()
    same = torch.equal(z, z2)
    ok = mx <= TOL_FWD[dtype] and same
    rep.add(name, ok, f"max err {mx:.2e} (rel {rel:.2e}, tol {TOL_FWD[dtype]:.0e}), repeat bitwise {same}"
            + ("" if ok else f"; worst {top_errors(z, ref)}"))


def check_errors_vss_tail(lib, rep):
    f16 = torch.float16
    y, r, params = vss_tail_inputs(4, 64, 32, 64, f16)
    z = torch.empty(4, 32, device="cuda", dtype=f16)
    cases = {
        "D > 1024": (VSSTailShape(4, 1040, 32, 64, 1e-5, 1), SSM_ERR_BAD_SIZE),
        "C > 512": (VSSTailShape(4, 64, 528, 64, 1e-5, 1), SSM_ERR_BAD_SIZE),
        "H = 0": (VSSTailShape(4, 64, 32, 0, 1e-5, 1), SSM_ERR_BAD_SIZE),
        "rows < 0": (VSSTailShape(-1, 64, 32, 64, 1e-5, 1), SSM_ERR_BAD_SIZE),
        "dtype 7": (VSSTailShape(4, 64, 32, 64, 1e-5, 7), SSM_ERR_BAD_DTYPE),
        "epsilon 0": (VSSTailShape(4, 64, 32, 64, 0.0, 1), SSM_ERR_UNSUPPORTED),
    }
    for label, (sh, want) in cases.items():
        got = vss_tail_call(lib, y, r, params, z, shape=sh)
        rep.add(f"vsstail errors: {label}", got == want, f"status {got}, want {want}")
    got = lib.ssm_vss_block_tail_fwd_cuda(ctypes.byref(VSSTailShape(4, 64, 32, 64, 1e-5, 1)), P(y), P(r), None,
                                          P(z), stream_ptr())
    rep.add("vsstail errors: params NULL", got == SSM_ERR_NULL_POINTER, f"status {got}")


def run_vss_tail_checks(lib, rep, quick=False):
    if not hasattr(lib, "ssm_vss_block_tail_fwd_cuda"):
        rep.add("vsstail", False, "the library has no ssm_vss_block_tail_fwd_cuda (built before domain version 7)")
        return
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    check_errors_vss_tail(lib, rep)
    widths = [(64, 32, 64), (128, 64, 128), (256, 128, 256), (512, 256, 512), (160, 80, 160), (640, 320, 640)]
    for dt in (f32, f16, bf16):
        for D, C, H in (widths[:2] if quick else widths):
            check_vss_tail(lib, rep, 300 if quick else 3072, D, C, H, dt, tag="hrv ")
    check_vss_tail(lib, rep, 37, 24, 12, 40, f16, tag="odd widths ")
    check_vss_tail(lib, rep, 37, 24, 12, 40, f32, tag="odd widths ")
    check_vss_tail(lib, rep, 5, 1, 1, 1, f32, tag="one channel ")
    check_vss_tail(lib, rep, 101, 64, 32, 64, f16, misalign=True, tag="misaligned ")
    check_vss_tail(lib, rep, 101, 64, 32, 64, f16, misalign_y=True, tag="misaligned Y ")
    check_vss_tail(lib, rep, 0, 64, 32, 64, f16, tag="empty ")
    check_vss_tail(lib, rep, 1, 64, 32, 64, f16, tag="one row ")
    # the cluster kernel (sm_90): a partial last tile, 13 tiles, 32-row tiles, the 8x6 stage at batch 1
    check_vss_tail(lib, rep, 37, 512, 256, 512, f16, tag="cluster, 3 tiles, the last partial ")
    check_vss_tail(lib, rep, 200, 256, 128, 256, bf16, tag="cluster, few tiles ")
    check_vss_tail(lib, rep, 768, 256, 128, 256, f16, tag="cluster, 32-row tiles ")
    check_vss_tail(lib, rep, 48, 512, 256, 512, bf16, tag="cluster, batch 1 of 8x6 ")
    if not quick:
        check_vss_tail(lib, rep, 200, 1024, 512, 1024, f32, tag="largest ")
        check_vss_tail(lib, rep, 200, 1024, 512, 1024, f16, tag="largest ")
        check_vss_tail(lib, rep, 128 * 3072 + 5, 64, 32, 64, f16, tag="batch 128 ")
        for dt in (f16, bf16):  # the resident kernel's persistent loop over 32- / 64-row tiles
            check_vss_tail(lib, rep, 32 * 768 + 7, 128, 64, 128, dt, tag="batch 32 ")
            check_vss_tail(lib, rep, 8 * 3072 + 9, 64, 32, 64, dt, tag="batch 8 ")


def bench_vss_tail(lib, batch=128, dtype=torch.float16):
    """The fused kernel against the unfused chain in PyTorch (F.layer_norm, matmul, add, gelu) on hrvmamba_small's
    four stages (64x48 .. 8x6 at 256x192) and hrvmamba_base's first two at batch 1 and `batch`."""
    import torch.nn.functional as F
    stages = [((64, 32, 64), (64, 48)), ((128, 64, 128), (32, 24)), ((256, 128, 256), (16, 12)),
              ((512, 256, 512), (8, 6)), ((160, 80, 160), (64, 48)), ((320, 160, 320), (32, 24))]
    rows_out = []
    for batch_size in (1, batch):
        for (D, C, H), (h, w) in stages:
            rows = batch_size * h * w
            y, r, p = vss_tail_inputs(rows, D, C, H, dtype)
            z = torch.empty(rows, C, device="cuda", dtype=dtype)

            def fused():
                vss_tail_call(lib, y, r, p, z)

            def chain():
                a = F.layer_norm(y, (D,), p["out_norm_weight"], p["out_norm_bias"])
                x1 = r + a @ p["out_proj"]
                b = F.layer_norm(x1, (C,), p["norm_weight"], p["norm_bias"])
                return x1 + F.gelu(b @ p["fc1_weight"] + p["fc1_bias"]) @ p["fc2_weight"] + p["fc2_bias"]

            t_fused, t_chain = time_gpu(fused), time_gpu(chain)
            line = (f"vsstail b={batch_size:<4} {h}x{w} D={D} C={C} H={H} {str(dtype)[6:]}: fused {t_fused * 1e6:8.1f} us"
                    f"  torch chain {t_chain * 1e6:8.1f} us  ({t_chain / t_fused:.2f}x)")
            print(line, flush=True)
            rows_out.append(line)
    return rows_out


def run_deform_checks(lib, rep, tag="", bwd=True):
    """DeformAggregate: every forward path (tiled FMA, generic kernel sizes; the cases marked tensor-core
    exercise the float16 mma kernel in an SSM_DEFORM_MMA=1 build, the FMA path otherwise)."""
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    t = tag
    for dt in (f32, f16, bf16):
        check_deform(lib, rep, 2, 64, 48, 2, 32, dt, tag=t + "hrv-small-64x48 ", bwd=bwd)
    for dt in (f32, f16):
        # offsets far below / far above one pixel (locality of the gathers, samples outside the image)
        check_deform(lib, rep, 2, 64, 48, 2, 32, dt, tag=t + "small offsets ", bwd=bwd, ostd=0.3)
        check_deform(lib, rep, 2, 64, 48, 2, 32, dt, tag=t + "large offsets ", bwd=bwd, ostd=6.0)
    check_deform(lib, rep, 2, 8, 6, 40, 32, f32, tag=t + "hrv-base-8x6 ", bwd=bwd)   # G = 40, C = 32
    check_deform(lib, rep, 2, 8, 6, 40, 32, f16, tag=t + "hrv-base-8x6 ", bwd=bwd)
    check_deform(lib, rep, 2, 16, 12, 5, 32, f32, rc=1, tag=t, bwd=bwd)             # G=5, remove_center
    check_deform(lib, rep, 2, 16, 12, 5, 32, f16, rc=1, tag=t, bwd=bwd)             # tensor-core path, K = 8
    check_deform(lib, rep, 2, 9, 7, 3, 64, f16, tag=t, bwd=bwd)                     # 2 units per pg, partial tile
    check_deform(lib, rep, 3, 5, 1, 1, 32, f16, tag=t, bwd=bwd)                     # W = 1, odd unit count
    check_deform(lib, rep, 2, 12, 10, 2, 32, f16, tag=t, bwd=bwd, mscale=1e-3)      # small masks (weight scaling)
    check_deform(lib, rep, 2, 12, 10, 2, 32, f32, tag=t, bwd=bwd, mscale=1e-3)
    check_deform(lib, rep, 2, 12, 10, 2, 32, f16, tag=t, bwd=bwd, mscale=300.0)     # large masks
    check_deform(lib, rep, 2, 17, 13, 3, 16, f32, sh=2, sw=2, ph=2, pw=2, dh=2, dw=2, scale=0.5, tag=t,
                 bwd=bwd)                                                           # stride 2, dil 2
    check_deform(lib, rep, 2, 17, 13, 3, 16, f16, sh=2, sw=1, ph=2, pw=1, dh=2, dw=1, scale=0.5, tag=t, bwd=bwd)
    check_deform(lib, rep, 2, 17, 13, 3, 32, f16, sh=2, sw=1, ph=2, pw=1, dh=2, dw=1, scale=0.5, tag=t,
                 bwd=bwd)                                                           # tensor-core path, stride/dil
    check_deform(lib, rep, 2, 11, 9, 3, 12, f32, kh=5, kw=3, ph=2, pw=1, rc=1, pad8=False, tag=t,
                 bwd=bwd)                                                           # generic kernel, VEC 4
    check_deform(lib, rep, 2, 9, 7, 2, 5, f16, rc=1, tag=t, bwd=bwd)               # C = 5 (VEC 1)
    check_deform(lib, rep, 2, 9, 7, 2, 6, f32, tag=t, bwd=bwd)                      # C = 6 (VEC 2)
    check_deform(lib, rep, 2, 9, 7, 3, 40, f32, tag=t, bwd=bwd)                     # C = 40 (5 vectors, TPG 8)
    check_deform(lib, rep, 1, 6, 5, 1, 512, f32, tag=t, bwd=bwd)                    # C = 512 (4 vectors/thread)
    check_deform(lib, rep, 1, 6, 5, 2, 264, bf16, kh=2, kw=2, ph=0, pw=0, rc=1, tag=t, bwd=bwd)  # even kernel
    check_deform(lib, rep, 1, 7, 9, 2, 8, f32, kh=7, kw=7, ph=3, pw=3, tag=t, bwd=bwd)  # 49 points
    # the forward epilogues of domain version 5 (offset bias, SiLU), on each forward path
    for dt in (f32, f16, bf16):
        check_deform(lib, rep, 2, 64, 48, 2, 32, dt, tag=t + "hrv-small-64x48 ", bias=True, silu=True)
    check_deform(lib, rep, 2, 16, 12, 4, 16, f16, tag=t, bias=True)                 # offset bias only
    check_deform(lib, rep, 2, 16, 12, 4, 16, f32, tag=t, silu=True)                 # SiLU only
    check_deform(lib, rep, 2, 8, 6, 40, 32, f16, tag=t + "hrv-base-8x6 ", bias=True, silu=True)
    check_deform(lib, rep, 2, 16, 12, 5, 32, f16, rc=1, tag=t, bias=True, silu=True)  # K = 8
    check_deform(lib, rep, 2, 11, 9, 3, 12, f32, kh=5, kw=3, ph=2, pw=1, rc=1, pad8=False, tag=t, bias=True,
                 silu=True)                                                         # generic kernel
    check_deform(lib, rep, 1, 7, 9, 2, 8, f16, kh=41, kw=41, ph=20, pw=20, tag=t, bias=True,
                 silu=True)                                                         # direct kernel (1681 points)


# ----------------------------------------------------------------------------------------------
# Timing

def time_call(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) * 1e-3)
    return statistics.median(ts)


def time_gpu(fn, inner=8, reps=10):
    """GPU time per call of fn (which enqueues its work on the current stream): `inner` calls captured in a CUDA
    graph, median of `reps` replays, so the Python/ctypes launch overhead that time_call includes is left out.
    Falls back to time_call where the capture fails."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(inner):
                fn()
    except Exception as exc:  # noqa: BLE001 - report and time eagerly instead
        print(f"(CUDA graph capture failed: {exc!r}; timing one call at a time)")
        return time_call(fn)
    graph.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        graph.replay()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) * 1e-3 / inner)
    del graph
    return statistics.median(ts)


def copy_bandwidth():
    n = 1 << 28  # 1 GiB of float32
    a = torch.empty(n, device="cuda")
    a.normal_()
    b = torch.empty_like(a)
    t = time_call(lambda: b.copy_(a), reps=20, warmup=3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n * 4 / t


HRV = {"small": [32, 64, 128, 256], "base": [80, 160, 320, 640]}
RES = [(64, 48), (32, 24), (16, 12), (8, 6)]
L2_ROTATE_BYTES = 256 << 20


def bench_scan(lib, bw, batch, C, H, W, dtype, dirs, label):
    """SelectiveScan inside SS2D: G=4 directions, D = d_inner = 2C, N = 1, L = H*W."""
    dev = "cuda"
    es = torch.finfo(dtype).bits // 8
    G, D, N, L = 4, 2 * C, 1, H * W
    CH = G * D
    rows = []
    per_set = batch * CH * L * es * 3 + batch * G * N * L * es * 2
    nsets = max(1, min(4, math.ceil(L2_ROTATE_BYTES / per_set)))
    sets = [dict(u=torch.randn(batch, CH, L, device=dev).to(dtype),
                 de=(torch.randn(batch, CH, L, device=dev) * 0.5 - 1).to(dtype),
                 Bs=torch.randn(batch, G, N, L, device=dev).to(dtype),
                 Cs=torch.randn(batch, G, N, L, device=dev).to(dtype),
                 y=torch.empty(batch, CH, L, device=dev, dtype=dtype)) for _ in range(nsets)]
    A = (-torch.exp(torch.randn(CH, N, device=dev) * 0.5)).to(dtype)
    Ds = torch.randn(CH, device=dev).to(dtype)
    db = torch.randn(CH, device=dev).to(dtype)
    sh = ScanShape(batch, G, D, N, L, 1, DTYPE_CODE[dtype])
    it = [0]
    shape_s = f"B{batch} G{G} D{D} L{L}"

    def fwd():
        s = sets[it[0] % nsets]
        it[0] += 1
        st = lib.ssm_selective_scan_fwd_cuda(ctypes.byref(sh), P(s["u"]), P(s["de"]), P(A), P(s["Bs"]), P(s["Cs"]),
                                             P(Ds), P(db), P(s["y"]), stream_ptr())
        assert st == 0, st

    if "fwd" in dirs:
        t = time_call(fwd)
        byts = batch * CH * L * es * 3 + batch * G * N * L * es * 2
        rows.append((label, f"{H}x{W}", "scan", "fwd", str(dtype)[6:], shape_s, t, byts / t / bw))
    if "bwd" in dirs:
        s0 = sets[0]
        dy = torch.randn(batch, CH, L, device=dev).to(dtype)
        du, dd = torch.empty_like(dy), torch.empty_like(dy)
        dA = torch.empty(CH, N, device=dev)
        dBs = torch.empty(batch, G, N, L, device=dev)
        dCs = torch.empty_like(dBs)
        dDs = torch.empty(CH, device=dev)
        ddb = torch.empty(CH, device=dev)
        wsz = lib.ssm_selective_scan_bwd_cuda_workspace_size(ctypes.byref(sh))
        ws = torch.empty(wsz // 4 + 1, device=dev)

        def bwd():
            st = lib.ssm_selective_scan_bwd_cuda(ctypes.byref(sh), P(s0["u"]), P(s0["de"]), P(A), P(s0["Bs"]), P(s0["Cs"]),
                                                 P(Ds), P(db), P(dy), P(du), P(dd), P(dA), P(dBs), P(dCs), P(dDs),
                                                 P(ddb), P(ws), stream_ptr())
            assert st == 0, st

        t = time_call(bwd)
        # minimal traffic: read u, delta, dy, Bs, Cs; write du, d_delta, dBs, dCs (float32)
        byts = batch * CH * L * es * 5 + batch * G * N * L * (es * 2 + 8)
        rows.append((label, f"{H}x{W}", "scan", "bwd", str(dtype)[6:], shape_s, t, byts / t / bw))
    return rows


def bench_deform(lib, bw, batch, C, H, W, dtype, dirs, label):
    """DeformAggregate inside SS2D: value (B,H,W,2C), G = ceil(C/16), group_channels 32, 3x3/s1/p1/d1."""
    dev = "cuda"
    es = torch.finfo(dtype).bits // 8
    G, gc, K = -(-C // 16), 32, 9
    Pn = -(-(G * K * 3) // 8) * 8
    rows = []
    per_set = batch * H * W * (G * gc * 2 + Pn) * es
    nsets = max(1, min(8, math.ceil(L2_ROTATE_BYTES / per_set)))
    sets = [dict(v=torch.randn(batch, H, W, G * gc, device=dev).to(dtype),
                 om=torch.randn(batch, H, W, Pn, device=dev).to(dtype),
                 out=torch.empty(batch, H, W, G * gc, device=dev, dtype=dtype)) for _ in range(nsets)]
    shp = DeformShape(batch, H, W, H, W, G, gc, Pn, 3, 3, 1, 1, 1, 1, 1, 1, 0, 1.0, DTYPE_CODE[dtype])
    it = [0]
    shape_s = f"B{batch} G{G} C{gc} P{Pn}"

    def fwd():
        s = sets[it[0] % nsets]
        it[0] += 1
        st = lib.ssm_deform_aggregate_fwd_cuda(ctypes.byref(shp), P(s["v"]), P(s["om"]), None, P(s["out"]),
                                               stream_ptr())
        assert st == 0, st

    if "fwd" in dirs:
        t = time_call(fwd)
        byts = batch * H * W * (G * gc * 2 + Pn) * es
        rows.append((label, f"{H}x{W}", "deform", "fwd", str(dtype)[6:], shape_s, t, byts / t / bw))
    if "bwd" in dirs:
        s0 = sets[0]
        go = torch.randn(batch, H, W, G * gc, device=dev).to(dtype)
        gv = torch.empty(batch, H, W, G * gc, device=dev)
        gom = torch.empty(batch, H, W, Pn, device=dev)

        def bwd():
            st = lib.ssm_deform_aggregate_bwd_cuda(ctypes.byref(shp), P(s0["v"]), P(s0["om"]), P(go), P(gv), P(gom),
                                                   stream_ptr())
            assert st == 0, st

        t = time_call(bwd)
        # minimal traffic: read value, offset_mask, grad_out; write grad_value, grad_offset_mask (float32)
        byts = batch * H * W * ((G * gc * 2 + Pn) * es + (G * gc + Pn) * 4)
        rows.append((label, f"{H}x{W}", "deform", "bwd", str(dtype)[6:], shape_s, t, byts / t / bw))
    return rows


def bench_scan2d(lib, bw, batch, C, H, W, dtype, dirs, label):
    """SelectiveScan2D of one SS2D (D = 2C, N = 1, channel-last) beside the version-1 path it replaces:
    cross_scan of x (from channel-last), SelectiveScan, cross_merge and the layout back to channel-last. The
    v1 path takes delta/Bs/Cs already in sequence layout (the model's projections produce them so), the v2
    kernel in spatial layout. Backward: v2 vs cross_scan(dy) + SelectiveScan backward + cross_merge(du).
    'frac' of both rows = the v2 kernel's minimal bytes / time / copy bandwidth (comparable times)."""
    dev = "cuda"
    es = torch.finfo(dtype).bits // 8
    D, N, L = 2 * C, 1, H * W
    per_set = batch * L * (D * 6 + 8 * N) * es
    nsets = max(1, min(4, math.ceil(L2_ROTATE_BYTES / per_set)))
    sets = []
    for _ in range(nsets):
        x = torch.randn(batch, H, W, D, device=dev).to(dtype)
        de = (torch.randn(batch, H, W, 4 * D, device=dev) * 0.5 - 1).to(dtype)
        Bs = torch.randn(batch, H, W, 4, N, device=dev).to(dtype)
        Cs = torch.randn(batch, H, W, 4, N, device=dev).to(dtype)
        _, de1, bs1, cs1 = (t.contiguous() for t in scan2d_sequences(x, de, Bs, Cs))
        sets.append(dict(x=x, de=de, Bs=Bs, Cs=Cs, de1=de1, bs1=bs1, cs1=cs1,
                         y=torch.empty(batch, H, W, D, device=dev, dtype=dtype),
                         y1=torch.empty(batch, 4 * D, L, device=dev, dtype=dtype)))
    A = (-torch.exp(torch.randn(4 * D, N, device=dev) * 0.5)).to(dtype)
    Ds = torch.randn(4 * D, device=dev).to(dtype)
    db = torch.randn(4 * D, device=dev).to(dtype)
    sh = Scan2DShape(batch, H, W, D, 4, N, 1, DTYPE_CODE[dtype])
    sh1 = ScanShape(batch, 4, D, N, L, 1, DTYPE_CODE[dtype])
    shape_s = f"B{batch} D{D} {H}x{W}"
    it = [0]

    def nxt():
        st_ = sets[it[0] % nsets]
        it[0] += 1
        return st_

    def fwd2():
        t = nxt()
        st = scan2d_fwd(lib, sh, (t["x"], t["de"], A, t["Bs"], t["Cs"], Ds, db), t["y"])
        assert st == 0, st

    def fwd1():
        t = nxt()
        u = cross_scan(t["x"].permute(0, 3, 1, 2))
        st = lib.ssm_selective_scan_fwd_cuda(ctypes.byref(sh1), P(u), P(t["de1"]), P(A), P(t["bs1"]), P(t["cs1"]),
                                             P(Ds), P(db), P(t["y1"]), stream_ptr())
        assert st == 0, st
        return cross_merge(t["y1"], H, W).permute(0, 2, 3, 1).contiguous()

    rows = []
    min_fwd = batch * L * (D * 6 + 8 * N) * es  # x, delta, y, Bs, Cs
    if "fwd" in dirs:
        t2 = time_call(fwd2)
        t1 = time_call(fwd1)
        rows.append((label, f"{H}x{W}", "scan2d", "fwd", str(dtype)[6:], shape_s, t2, min_fwd / t2 / bw))
        rows.append((label, f"{H}x{W}", "v1path", "fwd", str(dtype)[6:], shape_s, t1, min_fwd / t1 / bw))
    if "bwd" in dirs:
        t0 = sets[0]
        ins = (t0["x"], t0["de"], A, t0["Bs"], t0["Cs"], Ds, db)
        dy = torch.randn(batch, H, W, D, device=dev).to(dtype)
        f32 = dict(device=dev, dtype=torch.float32)
        outs = (torch.empty_like(t0["x"]), torch.empty_like(t0["de"]), torch.empty(4 * D, N, **f32),
                torch.empty(batch, H, W, 4, N, **f32), torch.empty(batch, H, W, 4, N, **f32), torch.empty(4 * D, **f32),
                torch.empty(4 * D, **f32))
        wsz = lib.ssm_selective_scan_2d_bwd_cuda_workspace_size(ctypes.byref(sh))
        ws = torch.empty(wsz // 4 + 1, **f32)

        def bwd2():
            st = scan2d_bwd(lib, sh, ins, dy, outs, ws)
            assert st == 0, st

        u = cross_scan(t0["x"].permute(0, 3, 1, 2)).contiguous()
        du, dd = torch.empty_like(u), torch.empty_like(u)
        dA1, dB1, dC1 = torch.empty(4 * D, N, **f32), torch.empty(batch, 4, N, L, **f32), torch.empty(batch, 4, N, L, **f32)
        dD1, ddb1 = torch.empty(4 * D, **f32), torch.empty(4 * D, **f32)
        ws1 = torch.empty(lib.ssm_selective_scan_bwd_cuda_workspace_size(ctypes.byref(sh1)) // 4 + 1, **f32)

        def bwd1():
            dys = cross_scan(dy.permute(0, 3, 1, 2))
            st = lib.ssm_selective_scan_bwd_cuda(ctypes.byref(sh1), P(u), P(t0["de1"]), P(A), P(t0["bs1"]),
                                                 P(t0["cs1"]), P(Ds), P(db), P(dys), P(du), P(dd), P(dA1), P(dB1),
                                                 P(dC1), P(dD1), P(ddb1), P(ws1), stream_ptr())
            assert st == 0, st
            return cross_merge(du, H, W).permute(0, 2, 3, 1).contiguous()

        tb2 = time_call(bwd2)
        tb1 = time_call(bwd1)
        # minimal traffic: read x, delta, dy, Bs, Cs; write dx, d_delta, dBs, dCs (float32)
        min_bwd = batch * L * (D * 11 * es + 4 * N * (2 * es + 8))
        rows.append((label, f"{H}x{W}", "scan2d", "bwd", str(dtype)[6:], shape_s + f" ws {wsz >> 20}M", tb2,
                     min_bwd / tb2 / bw))
        rows.append((label, f"{H}x{W}", "v1path", "bwd", str(dtype)[6:], shape_s, tb1, min_bwd / tb1 / bw))
    return rows


def bench(lib, bw, batch=128, ops=("scan", "deform"), dirs=("fwd", "bwd"), models=("small", "base"),
          dtypes=(torch.float32, torch.float16), tag=""):
    rows = []
    for model in models:
        for C, (H, W) in zip(HRV[model], RES):
            for dtype in dtypes:
                if "scan" in ops:
                    rows += bench_scan(lib, bw, batch, C, H, W, dtype, dirs, model + tag)
                    torch.cuda.empty_cache()
                if "scan2d" in ops:
                    rows += bench_scan2d(lib, bw, batch, C, H, W, dtype, dirs, model + tag)
                    torch.cuda.empty_cache()
                if "deform" in ops:
                    rows += bench_deform(lib, bw, batch, C, H, W, dtype, dirs, model + tag)
                    torch.cuda.empty_cache()
    return rows


def bench_deform_fwd_compare(libs, bw, batch=128, models=("small", "base"), dtypes=(torch.float32, torch.float16)):
    """DeformAggregate forward of several library builds on the same data (HRVMamba shapes)."""
    dev = "cuda"
    rows = []
    for model in models:
        for C, (H, W) in zip(HRV[model], RES):
            for dtype in dtypes:
                es = torch.finfo(dtype).bits // 8
                G, gc, K = -(-C // 16), 32, 9
                Pn = -(-(G * K * 3) // 8) * 8
                per_set = batch * H * W * (G * gc * 2 + Pn) * es
                nsets = max(1, min(8, math.ceil(L2_ROTATE_BYTES / per_set)))
                sets = [dict(v=torch.randn(batch, H, W, G * gc, device=dev).to(dtype),
                             om=torch.randn(batch, H, W, Pn, device=dev).to(dtype),
                             out=torch.empty(batch, H, W, G * gc, device=dev, dtype=dtype)) for _ in range(nsets)]
                shp = DeformShape(batch, H, W, H, W, G, gc, Pn, 3, 3, 1, 1, 1, 1, 1, 1, 0, 1.0, DTYPE_CODE[dtype])
                byts = batch * H * W * (G * gc * 2 + Pn) * es
                for name, lib in libs:
                    it = [0]

                    def fwd():
                        s_ = sets[it[0] % nsets]
                        it[0] += 1
                        st = lib.ssm_deform_aggregate_fwd_cuda(ctypes.byref(shp), P(s_["v"]), P(s_["om"]), None,
                                                               P(s_["out"]), stream_ptr())
                        assert st == 0, st

                    t = time_call(fwd)
                    rows.append((f"{model}/{name}", f"{H}x{W}", "deform", "fwd", str(dtype)[6:],
                                 f"B{batch} G{G} C{gc} P{Pn}", t, byts / t / bw))
                del sets
                torch.cuda.empty_cache()
    return rows


def bench_scan_fwd_compare(libs, bw, batch=128, models=("small", "base"), dtypes=(torch.float32, torch.float16)):
    """SelectiveScan forward of several library builds (the short rows: 16x12 and 8x6)."""
    rows = []
    for model in models:
        for C, (H, W) in list(zip(HRV[model], RES))[2:]:
            for dtype in dtypes:
                for name, lib in libs:
                    rows += bench_scan(lib, bw, batch, C, H, W, dtype, ("fwd",), f"{model}/{name}")
                torch.cuda.empty_cache()
    return rows


def print_rows(rows, bw):
    print(f"{'model':14} {'res':6} {'op':7} {'dir':4} {'dtype':8} {'shape':22} {'ms':>9} {'TB/s':>6} {'frac':>6}")
    for (v, res, op, d, dt, shp, t, frac) in rows:
        print(f"{v:14} {res:6} {op:7} {d:4} {dt:8} {shp:22} {t * 1e3:9.3f} {frac * bw / 1e12:6.2f} {frac:6.2f}")


def run_quick_checks(lib, rep, ops=("scan", "scan2d", "deform")):
    """Small shapes only (for compute-sanitizer): every code path, few elements."""
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    if "scan" in ops or "deform" in ops:
        check_errors(lib, rep)
    if "scan" in ops:
        check_scan(lib, rep, 2, 4, 16, 1, 200, f32)
        check_scan(lib, rep, 2, 4, 16, 1, 512, f16)                # vector path, 2 chunks
        check_scan(lib, rep, 3, 2, 5, 4, 1, f16)
        check_scan(lib, rep, 1, 2, 4, 16, 600, f32)
        check_scan(lib, rep, 2, 3, 7, 3, 100, f32, softplus=0, useD=False, usebias=False)
        check_scan(lib, rep, 2, 3, 7, 2, 77, f16)
        check_scan(lib, rep, 2, 4, 40, 1, 48, bf16)                # 6 lanes per row, 5 rows per warp
    if "scan2d" in ops:
        run_scan2d_checks(lib, rep, quick=True)
    if "layernorm" in ops:
        run_layer_norm_checks(lib, rep, quick=True)
    if "addlayernorm" in ops:
        run_add_layer_norm_checks(lib, rep, quick=True)
    if "dwconv" in ops:
        run_dwconv_checks(lib, rep, quick=True)
    if "vsstail" in ops:
        run_vss_tail_checks(lib, rep, quick=True)
    if "deform" not in ops:
        return
    check_deform(lib, rep, 1, 9, 7, 2, 32, f32)
    check_deform(lib, rep, 1, 9, 7, 2, 32, f16)
    check_deform(lib, rep, 1, 8, 6, 5, 32, f32, rc=1)
    check_deform(lib, rep, 1, 17, 13, 3, 16, f32, sh=2, sw=2, ph=2, pw=2, dh=2, dw=2, scale=0.5)
    check_deform(lib, rep, 1, 11, 9, 3, 12, f32, kh=5, kw=3, ph=2, pw=1, rc=1, pad8=False)
    check_deform(lib, rep, 1, 9, 7, 2, 5, f16, rc=1)
    check_deform(lib, rep, 1, 6, 5, 1, 512, f32)
    check_deform(lib, rep, 1, 6, 5, 2, 264, bf16, kh=2, kw=2, ph=0, pw=0, rc=1)
    check_deform(lib, rep, 1, 8, 6, 5, 32, f16, rc=1)          # tensor-core path, K = 8
    check_deform(lib, rep, 1, 9, 7, 3, 64, f16)                # tensor-core path, 2 units per pg
    check_deform(lib, rep, 1, 5, 1, 1, 32, f16)                # odd unit count
    check_deform(lib, rep, 1, 9, 7, 2, 32, f16, bias=True, silu=True)      # the version-5 epilogues
    check_deform(lib, rep, 1, 11, 9, 3, 12, f32, kh=5, kw=3, ph=2, pw=1, rc=1, pad8=False, bias=True, silu=True)


# Tuning variants (compile-time options of the kernels), timed next to the default build.
VARIANTS = {
    "rounds1": ["SSM_DEFORM_TILE_ROUNDS=1"],    # half-size tiles
    "pixmajor": ["SSM_DEFORM_GROUP_MAJOR=0"],   # tiles of a few pixels x all groups
    "mma": ["SSM_DEFORM_MMA=1"],                # float16 forward on tensor cores
    "direct": ["SSM_DEFORM_FORCE_DIRECT=1"],    # the fallback kernel (per-thread setup, the old design)
    "scanreps1": ["SSM_SCAN_ROW_REPS=1"],       # one row per lane segment in the scan forward
    "scanreps8": ["SSM_SCAN_ROW_REPS=8"],
    "lnblocks": ["SSM_LN_MAX_BLOCKS=7"],       # LayerNorm: 7 blocks, each loops over many row groups
    "dwblocks": ["SSM_DW_MAX_BLOCKS=7"],       # MultiKernelDepthwiseConv: 7 blocks, each loops over many units
    "dwtile16": ["SSM_DW_MAX_TILE_W=16"],      # MultiKernelDepthwiseConv: tiles at most 16 wide
    "dwtile8": ["SSM_DW_MAX_TILE_W=16", "SSM_DW_MAX_TILE_H=8"],
    "dwsmall0": ["SSM_DW_SMALL_GRIDS=0"],      # MultiKernelDepthwiseConv: batch-1 grids keep the large tiles
    "dwrows4": ["SSM_DW_SMALL_GRID_ITEM_ROWS=4"],  # ... small-grid plans with 4 x 4 items
    "s2dgroups0": ["SSM_SCAN2D_DIRECTION_GROUPS=0"],  # SelectiveScan2D: the four directions one after another
    "s2dgw8": ["SSM_SCAN2D_GROUP_WARPS=8"],           # ... direction groups of 8 warps (1024 threads per block)
    # ... with the dt projection: ranks up to 8 prefetched (two blocks per SM, so that the pairs fit the registers)
    "dtpairs4": ["SSM_SCAN2D_MAX_DT_PAIRS=4", "SSM_SCAN2D_PAIRS_MIN_BLOCKS=2"],
}

# MultiKernelDepthwiseConv shapes whose plan the "dw" variants change: batch 1 and 2 of the HRVMamba LPUs (the
# small-grid plans), a shape with several tiles and chunks, float32 and a misaligned (element-path) tensor.
DWCONV_PLAN_SHAPES = tuple((B, H, W, C, torch.float16, 0) for B in (1, 2)
                           for C, (H, W) in zip(HRV["small"] + HRV["base"], RES + RES)) + (
    (3, 32, 24, 64, torch.float16, 0), (1, 19, 37, 36, torch.float32, 0), (1, 33, 70, 48, torch.float16, 1))


def check_dwconv_builds_agree(lib, vlib, rep, name):
    """Two builds' outputs bitwise equal on the same inputs: every output is summed in one fixed order, whatever
    the tiles and chunks of the plan."""
    for B, H, W, C, dtype, misalign in DWCONV_PLAN_SHAPES:
        groups = (C // 4,) * 4
        x, w, b, y = dwconv_inputs(B, H, W, C, 9, LPU_KERNELS, groups, dtype, seed=B + H + W + C, misalign=misalign)
        ys = []
        for build in (lib, vlib):
            y.fill_(float("nan"))
            st = dwconv_call(build, x, w, b, y, LPU_KERNELS, groups, 4, True)
            torch.cuda.synchronize()
            ys.append((st, y.clone()))
        (st0, y0), (st1, y1) = ys
        rep.add(f"dwconv [{name}] B{B} {H}x{W} C{C} {str(dtype)[6:]} {dwconv_path(C, 4, dtype, misalign)}: "
                "same bits as the default", st0 == SSM_OK and st1 == SSM_OK and torch.equal(y0, y1),
                f"status {st0}/{st1}")

# Small-batch SelectiveScan2D shapes: direction groups in the default build, one group in "s2dgroups0".
SCAN2D_GROUPED_SHAPES = ((1, 64, 48, 64), (1, 32, 24, 128), (2, 7, 5, 6), (1, 40, 70, 2), (3, 16, 12, 20))


def check_scan2d_builds_agree(lib, vlib, rep, name):
    """The forward of two builds bitwise equal on the same inputs (the grouping must not change a sum)."""
    for B, H, W, D in SCAN2D_GROUPED_SHAPES:
        for dtype in (torch.float32, torch.float16):
            ins, _ = scan2d_inputs(B, H, W, D, 1, dtype, seed=B + H + W + D)
            sh = Scan2DShape(B, H, W, D, 4, 1, 1, DTYPE_CODE[dtype])
            ys = []
            for build in (lib, vlib):
                y = torch.full((B, H, W, D), float("nan"), device="cuda", dtype=dtype)
                st = scan2d_fwd(build, sh, ins, y)
                torch.cuda.synchronize()
                ys.append((st, y))
            (st0, y0), (st1, y1) = ys
            plan = scan2d_plan(B, H, W, D, 1, dtype)
            rep.add(f"scan2d [{name}] B{B} {H}x{W} D{D} {str(dtype)[6:]} g{plan['groups']}: same bits as the default",
                    st0 == SSM_OK and st1 == SSM_OK and torch.equal(y0, y1), f"status {st0}/{st1}")


def run_variant_checks(lib, rep, name):
    """Variants differ in the forwards only: the forward checks that their options change."""
    if name.startswith("ln"):
        run_layer_norm_checks(lib, rep, quick=True)
        for C, dt in ((32, torch.float16), (64, torch.float32), (33, torch.float32), (4096, torch.float16)):
            check_layer_norm(lib, rep, 5000 + C, C, dt, tag=f"[{name}] ")
            check_add_layer_norm(lib, rep, 5000 + C, C, dt, tag=f"[{name}] ")
    elif name.startswith("dw"):
        # units of several chunks and tiles per block (the staged weights are reused or restaged)
        run_dwconv_checks(lib, rep, quick=True, tag=f"[{name}] ")
        check_dwconv(lib, rep, 3, 32, 24, 64, tag=f"[{name}] ")
        check_dwconv(lib, rep, 2, 8, 6, 256, tag=f"[{name}] ")
        check_dwconv(lib, rep, 2, 19, 37, 36, dtype=torch.float32, tag=f"[{name}] ")
    elif name.startswith("s2d"):
        for B, H, W, D in SCAN2D_GROUPED_SHAPES:
            check_scan2d(lib, rep, B, H, W, D, 1, torch.float16, bwd=False, v1=False, tag=f"[{name}] ")
    elif name.startswith("scan"):
        check_scan(lib, rep, 64, 4, 256, 1, 48, torch.float16, bwd=False, tag=f"[{name}] row-reps ")
        check_scan(lib, rep, 100, 4, 131, 2, 96, torch.float32, bwd=False, tag=f"[{name}] row-reps ")
    else:
        run_deform_checks(lib, rep, tag=f"[{name}] ", bwd=False)


class Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, data):
        for st in self.streams:
            st.write(data)
        return len(data)

    def flush(self):
        for st in self.streams:
            st.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", help="prebuilt libssmpose_kernels_cuda.so (default: build with nvcc)")
    ap.add_argument("--lib-dir", help="folder holding a prebuilt libssmpose_kernels_cuda (e.g. build/lib)")
    ap.add_argument("--build-dir", default=os.path.join(tempfile.gettempdir(), "ssmpose_cuda_build"))
    ap.add_argument("--arch", default=None, help="nvcc -arch (default: the GPU's, e.g. sm_90)")
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small checks only (e.g. under compute-sanitizer)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--check-ops", default="scan,scan2d,deform,layernorm,addlayernorm,dwconv,vsstail",
                    help="operators to check (comma list)")
    ap.add_argument("--bench-ops", default="scan,scan2d,deform,layernorm,addlayernorm,dwconv,vsstail",
                    help="operators to time (comma list)")
    ap.add_argument("--bench-dirs", default="fwd,bwd", help="directions to time (comma list)")
    ap.add_argument("--selftest-reference", action="store_true", help="check the references against naive loops")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=LIB",
                    help="extra library build (tuning variant) to check briefly and time alongside")
    ap.add_argument("--build-variants", action="store_true",
                    help="build the tuning variants (see VARIANTS) with nvcc and time them too")
    ap.add_argument("--variant-names", default=None, help="with --build-variants: only these (comma list)")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for the full log (default $OUT)")
    args = ap.parse_args()

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        sys.stdout = Tee(sys.stdout, open(os.path.join(args.out, "check_cuda_kernels.log"), "w"))

    if args.selftest_reference:
        ok = selftest_reference()
        print("reference selftest", "ok" if ok else "FAILED")
        return 0 if ok else 1

    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    cap = torch.cuda.get_device_capability()
    arch = args.arch or f"sm_{cap[0]}{cap[1]}"
    lib_path = args.lib
    if lib_path is None and args.lib_dir:
        names = ("libssmpose_kernels_cuda.so", "ssmpose_kernels_cuda.dll", "libssmpose_kernels_cuda.dylib")
        found = [os.path.join(args.lib_dir, n) for n in names if os.path.exists(os.path.join(args.lib_dir, n))]
        if not found:
            print(f"no libssmpose_kernels_cuda in {args.lib_dir}")
            return 2
        lib_path = found[0]
    lib_path = lib_path or build_library(args.build_dir, arch)
    lib = load_library(lib_path)
    print(f"device: {torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]}), torch {torch.__version__}, lib {lib_path}")

    variants = []
    for v in args.variant:
        name, path = v.split("=", 1)
        variants.append((name, load_library(path)))
    if args.build_variants:
        names = [n for n in VARIANTS if args.variant_names in (None, "") or n in args.variant_names.split(",")]
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:  # nvcc runs are independent
            paths = list(pool.map(lambda n: build_library(args.build_dir, arch, VARIANTS[n], f"lib_{n}.so"), names))
        variants += [(n, load_library(p)) for n, p in zip(names, paths)]

    rep = Report()
    if not args.no_check:
        t0 = time.time()
        (run_quick_checks if args.quick else run_checks)(lib, rep, tuple(o for o in args.check_ops.split(",") if o))
        for name, vlib in variants:
            run_variant_checks(vlib, rep, name)
            if name.startswith("s2d"):
                check_scan2d_builds_agree(lib, vlib, rep, name)
            if name.startswith("dw"):
                check_dwconv_builds_agree(lib, vlib, rep, name)
        print(f"checks took {time.time() - t0:.1f}s")
    rows, rows1, vrows = [], [], []
    bw = None
    if not args.no_bench:
        bw = copy_bandwidth()
        print(f"device-to-device copy bandwidth: {bw / 1e12:.3f} TB/s (read + write)")
        ops = tuple(o for o in args.bench_ops.split(",") if o)
        dirs = tuple(d for d in args.bench_dirs.split(",") if d)
        rows = bench(lib, bw, args.batch, ops=ops, dirs=dirs)
        rows1 = bench(lib, bw, 1, models=("small", "base"), ops=ops, dirs=("fwd",), tag="/b1")
        if "layernorm" in ops and hasattr(lib, "ssm_layer_norm_fwd_cuda"):
            rows += bench_layer_norm(lib, bw, args.batch)
        if "addlayernorm" in ops and hasattr(lib, "ssm_add_layer_norm_fwd_cuda"):
            rows += bench_add_layer_norm(lib, bw, args.batch)
        if "dwconv" in ops and hasattr(lib, "ssm_depthwise_conv_fwd_cuda"):
            rows += bench_dwconv(lib, bw, batches=sorted({32, args.batch}))
        if "vsstail" in ops and hasattr(lib, "ssm_vss_block_tail_fwd_cuda"):
            bench_vss_tail(lib, args.batch)   # prints its lines
        if variants:
            deform_v = [v for v in variants if not v[0].startswith(("scan", "s2d", "ln", "dw"))]
            scan_v = [v for v in variants if v[0].startswith("scan")]
            for name, vlib in variants:
                if name.startswith("dw") and name != "dwblocks":
                    vrows += bench_dwconv(vlib, bw, batches=(args.batch,), tag=f"/{name}")
            if deform_v:
                vrows += bench_deform_fwd_compare([("default", lib)] + deform_v, bw, args.batch)
            if scan_v:
                vrows += bench_scan_fwd_compare([("default", lib)] + scan_v, bw, args.batch)

    print("\n================ summary ================")
    print(f"device: {torch.cuda.get_device_name()}")
    if not args.no_check:
        print(f"checks: {len(rep.rows) - len(rep.failures)}/{len(rep.rows)} passed")
        for n, ok, d in rep.rows:
            print(f"  {'ok  ' if ok else 'FAIL'} {n}: {d}")
    if rows:
        print(f"copy bandwidth {bw / 1e12:.3f} TB/s; timings at batch {args.batch}, median of 20 (CUDA events);"
              " 'frac' = minimal bytes moved / time / copy bandwidth")
        print_rows(rows, bw)
    if rows1:
        print("batch 1 (latency; frac is not meaningful at this size):")
        print_rows(rows1, bw)
    if vrows:
        print("tuning variants (forward, same data for every build of a row group):")
        print_rows(vrows, bw)
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
