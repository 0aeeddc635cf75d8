#!/usr/bin/env python3
"""Run one call of each CUDA kernel at an HRVMamba-small batch-128 shape, for a profiler:

    ncu --kernel-name regex:"deform|scan" --section SpeedOfLight ... \\
        python3 tests/gpu/profile_kernels.py --lib path/to/libssmpose_kernels_cuda.so

Shapes: DeformAggregate forward at 64x48 (G=2, group_channels 32) in float16 and float32 and its
backward in float32; SelectiveScan forward at 8x6 (D=512, L=48) and 64x48 (D=64, L=3072) in float16.
"""
import argparse
import ctypes
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_cuda_kernels import DTYPE_CODE, DeformShape, P, ScanShape, load_library, stream_ptr  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    lib = load_library(args.lib)
    B, dev = args.batch, "cuda"

    for dtype in (torch.float16, torch.float32):
        H, W, G, gc, Pn = 64, 48, 2, 32, 56
        v = torch.randn(B, H, W, G * gc, device=dev).to(dtype)
        om = torch.randn(B, H, W, Pn, device=dev).to(dtype)
        out = torch.empty_like(v)
        shp = DeformShape(B, H, W, H, W, G, gc, Pn, 3, 3, 1, 1, 1, 1, 1, 1, 0, 1.0, DTYPE_CODE[dtype])
        assert lib.ssm_deform_aggregate_fwd_cuda(ctypes.byref(shp), P(v), P(om), P(out), stream_ptr()) == 0
        if dtype == torch.float32:
            gv = torch.empty(B, H, W, G * gc, device=dev)
            gom = torch.empty(B, H, W, Pn, device=dev)
            assert lib.ssm_deform_aggregate_bwd_cuda(ctypes.byref(shp), P(v), P(om), P(out), P(gv), P(gom),
                                                     stream_ptr()) == 0
    for (D, L) in ((512, 48), (64, 3072)):
        dtype, G, N = torch.float16, 4, 1
        CH = G * D
        u = torch.randn(B, CH, L, device=dev).to(dtype)
        de = (torch.randn(B, CH, L, device=dev) * 0.5 - 1).to(dtype)
        A = (-torch.exp(torch.randn(CH, N, device=dev))).to(dtype)
        Bs = torch.randn(B, G, N, L, device=dev).to(dtype)
        Cs = torch.randn(B, G, N, L, device=dev).to(dtype)
        Ds = torch.randn(CH, device=dev).to(dtype)
        db = torch.randn(CH, device=dev).to(dtype)
        y = torch.empty_like(u)
        sh = ScanShape(B, G, D, N, L, 1, DTYPE_CODE[dtype])
        assert lib.ssm_selective_scan_fwd_cuda(ctypes.byref(sh), P(u), P(de), P(A), P(Bs), P(Cs), P(Ds), P(db), P(y),
                                               stream_ptr()) == 0
    torch.cuda.synchronize()
    print("profile_kernels: done")


if __name__ == "__main__":
    main()
