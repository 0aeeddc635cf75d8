"""The operator layer the models call.

`selective_scan`, `selective_scan_2d` and `deform_aggregate` validate their arguments, bring the small parameters to the
dtype of the activations, and call the torch.library ops (`torch.ops.ssmpose.*`), which run the
compiled kernel for the device or, when it is unavailable, the reference (see torch_ops.py).
`force_reference()` makes every call use the reference directly (for parity checks).
"""
from __future__ import annotations

import contextlib

import torch

from . import reference, torch_ops  # noqa: F401  (torch_ops registers torch.ops.ssmpose.*)

_use_reference = False
_use_scan_2d = True
SCAN_2D_DIRECTIONS = reference.SCAN_2D_DIRECTIONS


@contextlib.contextmanager
def force_reference(enabled: bool = True):
    """Within this context every call uses the pure-PyTorch reference (e.g. to compare with the kernels)."""
    global _use_reference
    previous, _use_reference = _use_reference, enabled
    try:
        yield
    finally:
        _use_reference = previous


@contextlib.contextmanager
def scan_2d(enabled: bool = True):
    """SS2D-style layers (DirectionalSSM with four directions) run their scan as one SelectiveScan2D (domain
    version 2), in PyTorch and in what is exported: the default. Within `scan_2d(False)` they run the
    version-1 path instead (cross-scan -> SelectiveScan -> cross-merge), e.g. to export a graph for a runtime
    library that knows only version 1. Same parameters, same outputs up to float rounding."""
    global _use_scan_2d
    previous, _use_scan_2d = _use_scan_2d, enabled
    try:
        yield
    finally:
        _use_scan_2d = previous


def scan_2d_enabled() -> bool:
    return _use_scan_2d


def _check(cond: bool, op: str, message: str) -> None:
    if not cond:
        raise ValueError(f"{op}: {message}")


def check_selective_scan_args(u, delta, A, Bs, Cs, Ds=None, delta_bias=None) -> None:
    op = "SelectiveScan"
    _check(u.dim() == 3, op, f"u must be (B, G*D, L), got shape {tuple(u.shape)}")
    batch, channels, length = u.shape
    _check(delta.shape == u.shape, op, f"delta shape {tuple(delta.shape)} != u shape {tuple(u.shape)}")
    _check(Bs.dim() == 4, op, f"Bs must be (B, G, N, L), got shape {tuple(Bs.shape)}")
    groups, dstate = Bs.shape[1], Bs.shape[2]
    _check(Bs.shape[0] == batch and Bs.shape[3] == length, op,
           f"Bs shape {tuple(Bs.shape)} does not match u (B={batch}, L={length})")
    _check(Cs.shape == Bs.shape, op, f"Cs shape {tuple(Cs.shape)} != Bs shape {tuple(Bs.shape)}")
    _check(groups >= 1 and channels % groups == 0, op,
           f"channels {channels} of u are not divisible by the {groups} groups of Bs")
    _check(tuple(A.shape) == (channels, dstate), op,
           f"A must be ({channels}, {dstate}), got {tuple(A.shape)}")
    _check_scan_vectors_and_devices(op, channels, ("u", u), delta, A, Bs, Cs, Ds, delta_bias)


def _check_scan_vectors_and_devices(op, channels, first, delta, A, Bs, Cs, Ds, delta_bias) -> None:
    """The checks both scan ops share: Ds / delta_bias of (channels,), every input floating point and on the
    device of the first input (`first` = (name, tensor))."""
    for name, t in (("Ds", Ds), ("delta_bias", delta_bias)):
        if t is not None:
            _check(tuple(t.shape) == (channels,), op, f"{name} must be ({channels},), got {tuple(t.shape)}")
    first_name, first_tensor = first
    for name, t in (first, ("delta", delta), ("A", A), ("Bs", Bs), ("Cs", Cs), ("Ds", Ds),
                    ("delta_bias", delta_bias)):
        if t is not None:
            _check(t.is_floating_point(), op, f"{name} must be floating point, got {t.dtype}")
            _check(t.device == first_tensor.device, op,
                   f"{name} is on {t.device}, {first_name} on {first_tensor.device}")


def check_selective_scan_2d_args(x, delta, A, Bs, Cs, Ds=None, delta_bias=None) -> None:
    op = "SelectiveScan2D"
    _check(x.dim() == 4, op, f"x must be (B, H, W, D), got shape {tuple(x.shape)}")
    batch, height, width, dim = x.shape
    _check(Bs.dim() == 5, op, f"Bs must be (B, H, W, K, N), got shape {tuple(Bs.shape)}")
    directions, dstate = Bs.shape[3], Bs.shape[4]
    _check(tuple(Bs.shape[:3]) == (batch, height, width), op,
           f"Bs shape {tuple(Bs.shape)} does not match x (B, H, W) = {(batch, height, width)}")
    _check(directions == SCAN_2D_DIRECTIONS, op,
           f"Bs.shape[3] is the number of directions K, which must be {SCAN_2D_DIRECTIONS}, got {directions}")
    _check(Cs.shape == Bs.shape, op, f"Cs shape {tuple(Cs.shape)} != Bs shape {tuple(Bs.shape)}")
    channels = directions * dim
    _check(tuple(delta.shape) == (batch, height, width, channels), op,
           f"delta must be (B, H, W, K*D) = {(batch, height, width, channels)}, got {tuple(delta.shape)}")
    _check(tuple(A.shape) == (channels, dstate), op, f"A must be ({channels}, {dstate}), got {tuple(A.shape)}")
    _check_scan_vectors_and_devices(op, channels, ("x", x), delta, A, Bs, Cs, Ds, delta_bias)


def check_deform_aggregate_args(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                dilation_h, dilation_w, group, group_channels, remove_center) -> None:
    op = "DeformAggregate"
    _check(value.dim() == 4, op, f"value must be (B, H, W, G*C), got shape {tuple(value.shape)}")
    _check(offset_mask.dim() == 4, op,
           f"offset_mask must be (B, Hout, Wout, P), got shape {tuple(offset_mask.shape)}")
    for name, v in (("kernel_h", kernel_h), ("kernel_w", kernel_w), ("stride_h", stride_h),
                    ("stride_w", stride_w), ("dilation_h", dilation_h), ("dilation_w", dilation_w),
                    ("group", group), ("group_channels", group_channels)):
        _check(v >= 1, op, f"attribute {name} must be >= 1, got {v}")
    _check(pad_h >= 0 and pad_w >= 0, op, f"pads must be >= 0, got ({pad_h}, {pad_w})")
    _check(remove_center in (0, 1), op, f"remove_center must be 0 or 1, got {remove_center}")
    batch, height, width, channels = value.shape
    _check(channels == group * group_channels, op,
           f"value has {channels} channels, expected group*group_channels = {group}*{group_channels}")
    out_h, out_w = reference.deform_output_size(height, width, kernel_h, kernel_w, stride_h, stride_w,
                                                pad_h, pad_w, dilation_h, dilation_w)
    expected = (batch, out_h, out_w)
    _check(tuple(offset_mask.shape[:3]) == expected, op,
           f"offset_mask leading dims {tuple(offset_mask.shape[:3])} != (B, Hout, Wout) = {expected}")
    points = kernel_h * kernel_w - remove_center
    _check(offset_mask.shape[3] >= group * points * 3, op,
           f"offset_mask has {offset_mask.shape[3]} columns, needs >= group*K*3 = {group * points * 3}")
    for name, t in (("value", value), ("offset_mask", offset_mask)):
        _check(t.is_floating_point(), op, f"{name} must be floating point, got {t.dtype}")
    _check(offset_mask.device == value.device, op,
           f"offset_mask is on {offset_mask.device}, value on {value.device}")


def selective_scan(u, delta, A, Bs, Cs, Ds=None, delta_bias=None, delta_softplus: bool = True):
    check_selective_scan_args(u, delta, A, Bs, Cs, Ds, delta_bias)
    dt = u.dtype
    delta, A, Bs, Cs = (t.to(dt) for t in (delta, A, Bs, Cs))
    Ds, delta_bias = (t.to(dt) if t is not None else None for t in (Ds, delta_bias))
    if _use_reference:
        return reference.selective_scan_chunked(u, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus,
                                                chunk_size=torch_ops.REFERENCE_SCAN_CHUNK)
    return torch.ops.ssmpose.selective_scan(u, delta, A, Bs, Cs, Ds, delta_bias, int(delta_softplus))


def selective_scan_2d(x, delta, A, Bs, Cs, Ds=None, delta_bias=None, delta_softplus: bool = True):
    """SS2D's four-direction scan, channel-last (docs/ops.md, SelectiveScan2D): x (B, H, W, D),
    delta (B, H, W, 4*D), A (4*D, N), Bs/Cs (B, H, W, 4, N), Ds/delta_bias (4*D) or None -> (B, H, W, D)."""
    check_selective_scan_2d_args(x, delta, A, Bs, Cs, Ds, delta_bias)
    dt = x.dtype
    delta, A, Bs, Cs = (t.to(dt) for t in (delta, A, Bs, Cs))
    Ds, delta_bias = (t.to(dt) if t is not None else None for t in (Ds, delta_bias))
    if _use_reference:
        return reference.selective_scan_2d_reference(x, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus,
                                                     chunk_size=torch_ops.REFERENCE_SCAN_CHUNK)
    return torch.ops.ssmpose.selective_scan_2d(x, delta, A, Bs, Cs, Ds, delta_bias, int(delta_softplus))


def deform_aggregate(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                     dilation_w, group, group_channels, offset_scale, remove_center):
    args = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
            group_channels, float(offset_scale), int(remove_center))
    check_deform_aggregate_args(value, offset_mask, *args[:10], remove_center)
    offset_mask = offset_mask.to(value.dtype)
    if _use_reference:
        return reference.deform_aggregate_reference(value, offset_mask, *args)
    return torch.ops.ssmpose.deform_aggregate(value, offset_mask, *args)
