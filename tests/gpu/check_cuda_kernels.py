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
  * checks that bad arguments return status codes;
  * times forward and backward of the HRVMamba-small/base shapes at batch 128 (float32 / float16) with
    CUDA events (median of 20 after warm-up) and prints the fraction of the measured device-to-device
    copy bandwidth (bytes read + written / time).
The reference is self-checked against naive loops with --selftest-reference (runs on the CPU too).
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
                ("dtype", ctypes.c_int32)]


# ----------------------------------------------------------------------------------------------
# Build and load

def build_library(out_dir: str, arch: str, defines=(), name="libssmpose_kernels_cuda.so") -> str:
    os.makedirs(out_dir, exist_ok=True)
    cdir = os.path.join(KDIR, "cuda")
    srcs = [os.path.join(cdir, "selective_scan.cu"), os.path.join(cdir, "deform_aggregate.cu")]
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
    lib.ssm_deform_aggregate_fwd_cuda.argtypes = [ctypes.POINTER(DeformShape)] + [vp] * 4
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


def out_size(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def check_deform(lib, rep, B, H, W, G, C, dtype, kh=3, kw=3, sh=1, sw=1, ph=1, pw=1, dh=1, dw=1, rc=0,
                 scale=1.0, bwd=True, pad8=True, tag="", mscale=1.0, ostd=1.5):
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
    shp = DeformShape(B, H, W, Ho, Wo, G, C, Pn, kh, kw, sh, sw, ph, pw, dh, dw, rc, scale, DTYPE_CODE[dtype])
    p = dict(G=G, C=C, kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw, dh=dh, dw=dw, rc=rc, scale=scale)
    name = (f"deform {tag}B{B} {H}x{W} G{G} C{C} k{kh}x{kw} s{sh}{sw} p{ph}{pw} d{dh}{dw} rc{rc} "
            f"sc{scale} {str(dtype)[6:]}" + ("" if mscale == 1.0 else f" mask*{mscale:g}"))
    outs = []
    for _ in range(3):
        out = torch.full((B, Ho, Wo, G * C), float("nan"), device=dev, dtype=dtype)
        st = lib.ssm_deform_aggregate_fwd_cuda(ctypes.byref(shp), P(value), P(om), P(out), stream_ptr())
        torch.cuda.synchronize()
        if st != SSM_OK:
            rep.add(name + " fwd", False, f"status {st}")
            return
        outs.append(out)
    same = all(torch.equal(outs[0], t) for t in outs[1:])
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
    df = lambda shp: lib.ssm_deform_aggregate_fwd_cuda(ctypes.byref(shp), P(x), P(x), P(x), None)
    codes.append((df(d(offset_stride=26)), SSM_ERR_BAD_SIZE))
    codes.append((df(d(kernel_h=1, kernel_w=1, remove_center=1, offset_stride=3)), SSM_ERR_BAD_SIZE))
    codes.append((df(d(groups=0)), SSM_ERR_BAD_SIZE))
    codes.append((df(d(stride_h=0)), SSM_ERR_BAD_SIZE))
    codes.append((df(d(dtype=3)), SSM_ERR_BAD_DTYPE))
    codes.append((lib.ssm_deform_aggregate_fwd_cuda(None, P(x), P(x), P(x), None), SSM_ERR_NULL_POINTER))
    codes.append((lib.ssm_deform_aggregate_bwd_cuda(ctypes.byref(d()), P(x), P(x), P(x), None, P(x), None),
                  SSM_ERR_NULL_POINTER))
    got = [c for c, _ in codes]
    want = [w for _, w in codes]
    ok = got == want
    torch.cuda.synchronize()
    rep.add("argument validation", ok, f"got {got} want {want}")


def run_checks(lib, rep, quick=False):
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    check_errors(lib, rep)
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
    run_deform_checks(lib, rep)


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
        st = lib.ssm_deform_aggregate_fwd_cuda(ctypes.byref(shp), P(s["v"]), P(s["om"]), P(s["out"]), stream_ptr())
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


def bench(lib, bw, batch=128, ops=("scan", "deform"), dirs=("fwd", "bwd"), models=("small", "base"),
          dtypes=(torch.float32, torch.float16), tag=""):
    rows = []
    for model in models:
        for C, (H, W) in zip(HRV[model], RES):
            for dtype in dtypes:
                if "scan" in ops:
                    rows += bench_scan(lib, bw, batch, C, H, W, dtype, dirs, model + tag)
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
                        st = lib.ssm_deform_aggregate_fwd_cuda(ctypes.byref(shp), P(s_["v"]), P(s_["om"]),
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


def run_quick_checks(lib, rep):
    """Small shapes only (for compute-sanitizer): every code path, few elements."""
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    check_errors(lib, rep)
    check_scan(lib, rep, 2, 4, 16, 1, 200, f32)
    check_scan(lib, rep, 2, 4, 16, 1, 512, f16)                # vector path, 2 chunks
    check_scan(lib, rep, 3, 2, 5, 4, 1, f16)
    check_scan(lib, rep, 1, 2, 4, 16, 600, f32)
    check_scan(lib, rep, 2, 3, 7, 3, 100, f32, softplus=0, useD=False, usebias=False)
    check_scan(lib, rep, 2, 3, 7, 2, 77, f16)
    check_scan(lib, rep, 2, 4, 40, 1, 48, bf16)                # 6 lanes per row, 5 rows per warp
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


# Tuning variants (compile-time options of the kernels), timed next to the default build.
VARIANTS = {
    "rounds1": ["SSM_DEFORM_TILE_ROUNDS=1"],    # half-size tiles
    "pixmajor": ["SSM_DEFORM_GROUP_MAJOR=0"],   # tiles of a few pixels x all groups
    "mma": ["SSM_DEFORM_MMA=1"],                # float16 forward on tensor cores
    "direct": ["SSM_DEFORM_FORCE_DIRECT=1"],    # the fallback kernel (per-thread setup, the old design)
    "scanreps1": ["SSM_SCAN_ROW_REPS=1"],       # one row per lane segment in the scan forward
    "scanreps8": ["SSM_SCAN_ROW_REPS=8"],
}


def run_variant_checks(lib, rep, name):
    """Variants differ in the forwards only: the forward checks that their options change."""
    if name.startswith("scan"):
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
    ap.add_argument("--bench-ops", default="scan,deform", help="operators to time (comma list)")
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
        (run_quick_checks if args.quick else run_checks)(lib, rep)
        for name, vlib in variants:
            run_variant_checks(vlib, rep, name)
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
        if variants:
            deform_v = [v for v in variants if not v[0].startswith("scan")]
            scan_v = [v for v in variants if v[0].startswith("scan")]
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
