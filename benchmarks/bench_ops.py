"""Benchmark the two operators on the shapes HRVMamba produces (not a test: prints a table, writes JSON).

For every SS2D of hrvmamba_small/base at 256x192 (one shape per branch resolution), times the forward
(and backward) of the compiled kernels and of the PyTorch reference, and reports the achieved bandwidth
(bytes that must move / median time) as a fraction of the device's measured copy bandwidth.

    python benchmarks/bench_ops.py --device cuda --batch 1 32 128 --dtype float32 float16 --json out.json
    python benchmarks/bench_ops.py --device cpu --batch 1 --dtype float32

With --scan2d it times SelectiveScan2D (domain version 2: the whole four-direction scan of an SS2D, channel-last)
against the version-1 path it replaces: cross_scan of x, SelectiveScan, cross_merge and the layout back to
channel-last (training/models/ss2d.py's functions, the kernels through kernel_library). delta/Bs/Cs are given
to each in its own layout, as the model's projections produce them. Both results are compared (max rel).

    python benchmarks/bench_ops.py --scan2d --batch 1 32 128 --dtype float16 float32 --backward
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import torch

from ssmpose.custom_ops import kernel_library as kl
from ssmpose.custom_ops import reference

MODELS = {"hrvmamba_small": (32, 64, 128, 256), "hrvmamba_base": (80, 160, 320, 640)}
RESOLUTIONS = ((64, 48), (32, 24), (16, 12), (8, 6))
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def op_shapes(model: str):
    """(label, scan dims, deform dims) for each branch: d_inner = 2C, G = ceil(C/16), group_channels 32."""
    for width, (h, w) in zip(MODELS[model], RESOLUTIONS):
        d_inner, groups = 2 * width, math.ceil(width / 16)
        yield (f"{model} C={width} {h}x{w}", dict(groups=4, dim=d_inner, dstate=1, length=h * w),
               dict(h=h, w=w, group=groups, gc=d_inner // groups, p=math.ceil(groups * 27 / 8) * 8))


def scan_inputs(batch, groups, dim, dstate, length, dtype, device):
    c = groups * dim
    g = torch.Generator(device="cpu").manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    return (mk(batch, c, length), mk(batch, c, length) - 2, -torch.rand(c, dstate, generator=g).to(device, dtype),
            mk(batch, groups, dstate, length), mk(batch, groups, dstate, length), mk(c), mk(c))


def deform_inputs(batch, h, w, group, gc, p, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    value = torch.randn(batch, h, w, group * gc, generator=g).to(device, dtype)
    offset_mask = (torch.randn(batch, h, w, p, generator=g) * 2).to(device, dtype)
    return value, offset_mask, (3, 3, 1, 1, 1, 1, 1, 1, group, gc, 1.0, 0)


def scan2d_inputs(batch, dim, h, w, dtype, device):
    """x (B,H,W,D), delta (B,H,W,4D), A (4D,1), Bs/Cs (B,H,W,4,1), Ds, delta_bias (4D): one SS2D's scan, N = 1."""
    g = torch.Generator(device="cpu").manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    c = 4 * dim
    return (mk(batch, h, w, dim), mk(batch, h, w, c) - 2, -torch.rand(c, 1, generator=g).to(device, dtype),
            mk(batch, h, w, 4, 1), mk(batch, h, w, 4, 1), mk(c), mk(c))


def in_direction(t, k):
    """(B, H, W, C) -> (B, C, L) in the order direction k visits the positions (ss2d.cross_scan's block k)."""
    from ssmpose.training.models.ss2d import cross_scan
    c = t.shape[-1]
    return cross_scan(t.permute(0, 3, 1, 2))[:, k * c:(k + 1) * c].contiguous()


def max_rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def run_scan2d(args):
    """SelectiveScan2D against cross_scan -> SelectiveScan -> cross_merge, per SS2D shape of the models."""
    from ssmpose.training.models.ss2d import cross_merge, cross_scan
    device = args.device
    rows = []
    for model in args.models:
        for label, scan, deform in op_shapes(model):
            dim, h, w = scan["dim"], deform["h"], deform["w"]
            for batch in args.batch:
                for dtype_name in args.dtype:
                    dtype = DTYPES[dtype_name]
                    ins = scan2d_inputs(batch, dim, h, w, dtype, device)
                    x, delta, A, Bs, Cs, Ds, db = ins
                    de1 = torch.cat([in_direction(delta[..., k * dim:(k + 1) * dim], k) for k in range(4)], dim=1)
                    bs1 = torch.stack([in_direction(Bs[..., k, :], k) for k in range(4)], dim=1)
                    cs1 = torch.stack([in_direction(Cs[..., k, :], k) for k in range(4)], dim=1)

                    def v2():
                        return kl.selective_scan_2d_fwd(*ins, True)

                    def v1():
                        y = kl.selective_scan_fwd(cross_scan(x.permute(0, 3, 1, 2)), de1, A, bs1, cs1, Ds, db, True)
                        return cross_merge(y, h, w).permute(0, 2, 3, 1).contiguous()

                    row = {"shape": label, "batch": batch, "dtype": dtype_name, "fwd_max_rel_v2_vs_v1": max_rel(v2(), v1())}
                    row["scan2d_fwd_s"] = timed(v2, device, args.repeats)
                    row["v1path_fwd_s"] = timed(v1, device, args.repeats)
                    if args.backward:
                        dy = torch.randn(batch, h, w, dim, device=device).to(dtype)
                        u = cross_scan(x.permute(0, 3, 1, 2))

                        def v2b():
                            return kl.selective_scan_2d_bwd(*ins, True, dy)[0]

                        def v1b():
                            grads = kl.selective_scan_bwd(u, de1, A, bs1, cs1, Ds, db, True,
                                                          cross_scan(dy.permute(0, 3, 1, 2)))
                            return cross_merge(grads[0], h, w).permute(0, 2, 3, 1).contiguous()

                        row["bwd_dx_max_rel_v2_vs_v1"] = max_rel(v2b(), v1b())
                        row["scan2d_bwd_s"] = timed(v2b, device, args.repeats)
                        row["v1path_bwd_s"] = timed(v1b, device, args.repeats)
                    rows.append(row)
                    print(format_scan2d_row(row), flush=True)
    return rows


def format_scan2d_row(r):
    text = (f"{r['shape']:<30} b={r['batch']:<4} {r['dtype']:<8} fwd: scan2d {r['scan2d_fwd_s'] * 1e6:9.1f}us  "
            f"v1 path {r['v1path_fwd_s'] * 1e6:9.1f}us  ({r['v1path_fwd_s'] / r['scan2d_fwd_s']:4.2f}x)  "
            f"max rel {r['fwd_max_rel_v2_vs_v1']:.1e}")
    if "scan2d_bwd_s" in r:
        text += (f"  bwd: scan2d {r['scan2d_bwd_s'] * 1e6:9.1f}us  v1 path {r['v1path_bwd_s'] * 1e6:9.1f}us  "
                 f"({r['v1path_bwd_s'] / r['scan2d_bwd_s']:4.2f}x)  dx max rel {r['bwd_dx_max_rel_v2_vs_v1']:.1e}")
    return text


def timed(fn, device, repeats, warmup=3):
    """Median seconds per call. Short calls are repeated for at least ~0.2 s (up to 200 times): a median
    of a few sub-millisecond calls on a shared CPU is mostly noise."""
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    per_call = (time.perf_counter() - start) / warmup
    repeats = max(repeats, min(200, int(0.2 / max(per_call, 1e-6))))
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    n = (1 << 28) if device == "cuda" else (1 << 26)
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    t = timed(lambda: dst.copy_(src), device, repeats=20)
    return 2 * n / t


def nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def run(args):
    device = args.device
    bandwidth = copy_bandwidth(device)
    device_name = torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or 'CPU'} " \
                                                                          f"({torch.get_num_threads()} threads)"
    rows = []
    for model in args.models:
        for label, scan, deform in op_shapes(model):
            for batch in args.batch:
                for dtype_name in args.dtype:
                    dtype = DTYPES[dtype_name]
                    s_in = scan_inputs(batch, **scan, dtype=dtype, device=device)
                    y = kl.selective_scan_fwd(*s_in, True)
                    s_bytes = nbytes(*s_in, y)
                    d_in = deform_inputs(batch, **deform, dtype=dtype, device=device)
                    out = kl.deform_aggregate_fwd(d_in[0], d_in[1], *d_in[2])
                    d_bytes = nbytes(d_in[0], d_in[1], out)
                    row = {"shape": label, "batch": batch, "dtype": dtype_name}
                    row["scan_fwd_s"] = timed(lambda: kl.selective_scan_fwd(*s_in, True), device, args.repeats)
                    row["deform_fwd_s"] = timed(lambda: kl.deform_aggregate_fwd(d_in[0], d_in[1], *d_in[2]),
                                                device, args.repeats)
                    row["scan_fwd_bw_frac"] = s_bytes / row["scan_fwd_s"] / bandwidth
                    row["deform_fwd_bw_frac"] = d_bytes / row["deform_fwd_s"] / bandwidth
                    if args.backward:
                        row["scan_bwd_s"] = timed(lambda: kl.selective_scan_bwd(*s_in, True, y), device, args.repeats)
                        row["deform_bwd_s"] = timed(lambda: kl.deform_aggregate_bwd(d_in[0], d_in[1], *d_in[2], out),
                                                    device, args.repeats)
                    if batch <= args.reference_max_batch:
                        ref_repeats = max(3, args.repeats // 5)
                        row["scan_ref_s"] = timed(lambda: reference.selective_scan_chunked(*s_in, True, chunk_size=16),
                                                  device, ref_repeats, warmup=1)
                        row["deform_ref_s"] = timed(lambda: reference.deform_aggregate_reference(d_in[0], d_in[1],
                                                                                                 *d_in[2]),
                                                    device, ref_repeats, warmup=1)
                    rows.append(row)
                    print(format_row(row), flush=True)
    return {"device": device_name, "copy_bandwidth_GBps": bandwidth / 1e9, "torch": torch.__version__, "rows": rows}


def format_row(r):
    text = (f"{r['shape']:<30} b={r['batch']:<4} {r['dtype']:<8} "
            f"scan {r['scan_fwd_s'] * 1e6:9.1f}us {100 * r['scan_fwd_bw_frac']:5.1f}%  "
            f"deform {r['deform_fwd_s'] * 1e6:9.1f}us {100 * r['deform_fwd_bw_frac']:5.1f}%")
    if "scan_bwd_s" in r:
        text += f"  bwd/fwd scan {r['scan_bwd_s'] / r['scan_fwd_s']:4.1f}x deform {r['deform_bwd_s'] / r['deform_fwd_s']:4.1f}x"
    if "scan_ref_s" in r:
        text += f"  vs ref: scan {r['scan_ref_s'] / r['scan_fwd_s']:6.1f}x deform {r['deform_ref_s'] / r['deform_fwd_s']:6.1f}x"
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32, 128])
    parser.add_argument("--dtype", nargs="+", default=["float32", "float16"], choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--backward", action="store_true", help="also time the backward kernels")
    parser.add_argument("--reference-max-batch", type=int, default=1,
                        help="time the PyTorch reference only up to this batch (it is slow)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--scan2d", action="store_true",
                        help="time SelectiveScan2D against the version-1 path (cross_scan, SelectiveScan, cross_merge)")
    args = parser.parse_args()
    if args.scan2d:
        rows = run_scan2d(args)
        name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "CPU"
        print(f"device: {name}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": name, "torch": torch.__version__, "scan2d_rows": rows}, f, indent=2)
        return
    result = run(args)
    print(f"device: {result['device']}, copy bandwidth {result['copy_bandwidth_GBps']:.0f} GB/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
