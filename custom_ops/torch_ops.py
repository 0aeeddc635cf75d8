"""The torch.library operators `ssmpose::selective_scan`, `ssmpose::selective_scan_2d` and
`ssmpose::deform_aggregate`.

Each operator is declared once. Its implementation runs the compiled kernel for the tensors' device
(CPU or CUDA, float32/float16/bfloat16) and falls back to the PyTorch reference, with a one-time
warning saying why, when the kernel library is not available; float64 always uses the reference.
Fake (meta) kernels let torch.export / torch.compile trace the ops. With compiled kernels, gradients
go through separate backward operators (traceable too); on the reference path they are taken by
autograd through the reference (which also makes double backward and gradcheck work in float64).
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import kernel_library as kl
from . import reference

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REFERENCE_SCAN_CHUNK = 16
_warned = set()


def compiled_kernels_for(t: Tensor) -> bool:
    """Whether calls on tensors like `t` run a compiled kernel (else the reference)."""
    if t.dtype not in KERNEL_DTYPES or t.device.type not in ("cpu", "cuda"):
        return False
    lib = kl.cpu_library() if t.device.type == "cpu" else kl.cuda_library()
    if lib is None and t.device.type not in _warned:
        _warned.add(t.device.type)
        warnings.warn(f"ssmpose: compiled {t.device.type.upper()} kernels are unavailable "
                      f"({kl.unavailable_reason(t.device)}); using the PyTorch reference operators, "
                      f"which are much slower", RuntimeWarning, stacklevel=3)
    return lib is not None


# ---------------------------------------------------------------------------------------------------------
# SelectiveScan

@torch.library.custom_op("ssmpose::selective_scan", mutates_args=())
def selective_scan(u: Tensor, delta: Tensor, A: Tensor, Bs: Tensor, Cs: Tensor, Ds: Optional[Tensor],
                   delta_bias: Optional[Tensor], delta_softplus: int) -> Tensor:
    if compiled_kernels_for(u):
        return kl.selective_scan_fwd(u, delta, A, Bs, Cs, Ds, delta_bias, bool(delta_softplus))
    return reference.selective_scan_chunked(u, delta, A, Bs, Cs, Ds, delta_bias, bool(delta_softplus),
                                            chunk_size=REFERENCE_SCAN_CHUNK)


@selective_scan.register_fake
def _(u, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus):
    return torch.empty_like(u)


@torch.library.custom_op("ssmpose::selective_scan_backward", mutates_args=())
def selective_scan_backward(u: Tensor, delta: Tensor, A: Tensor, Bs: Tensor, Cs: Tensor, Ds: Optional[Tensor],
                            delta_bias: Optional[Tensor], delta_softplus: int,
                            dy: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (du, d_delta, dA, dBs, dCs, dDs, d_delta_bias); dDs/d_delta_bias are zeros when absent."""
    if not compiled_kernels_for(u):
        raise RuntimeError("ssmpose::selective_scan_backward needs the compiled kernels; without them the "
                           "gradient is taken through the reference by autograd")
    grads = kl.selective_scan_bwd(u, delta, A, Bs, Cs, Ds, delta_bias, bool(delta_softplus), dy)
    channels = u.shape[1]
    return tuple(g if g is not None else u.new_zeros(channels) for g in grads)


@selective_scan_backward.register_fake
def _(u, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus, dy):
    channels = u.shape[1]
    return (torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A), torch.empty_like(Bs),
            torch.empty_like(Cs), u.new_empty(channels), u.new_empty(channels))


def _scan_setup(ctx, inputs, output):
    u, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus = inputs
    ctx.save_for_backward(u, delta, A, Bs, Cs, Ds, delta_bias)
    ctx.delta_softplus = delta_softplus


def _scan_backward_with(kernel_backward, reference_forward):
    """The autograd backward of a scan op: its backward op with the compiled kernels, else autograd through
    the reference. Both scan ops share it (same inputs, same gradients, different layouts)."""

    def backward(ctx, dy):
        first, delta, A, Bs, Cs, Ds, delta_bias = ctx.saved_tensors
        if compiled_kernels_for(first):
            grads = kernel_backward(first, delta, A, Bs, Cs, Ds, delta_bias, ctx.delta_softplus, dy.contiguous())
        else:
            grads = _reference_grads(
                lambda *t: reference_forward(*t, bool(ctx.delta_softplus), chunk_size=REFERENCE_SCAN_CHUNK),
                (first, delta, A, Bs, Cs, Ds, delta_bias), dy)
        d_first, d_delta, dA, dBs, dCs, dDs, d_bias = grads
        return (d_first, d_delta, dA, dBs, dCs, dDs if Ds is not None else None,
                d_bias if delta_bias is not None else None, None)
    return backward


selective_scan.register_autograd(
    _scan_backward_with(torch.ops.ssmpose.selective_scan_backward, reference.selective_scan_chunked),
    setup_context=_scan_setup)


# ---------------------------------------------------------------------------------------------------------
# SelectiveScan2D (channel-last, SS2D's four directions in one op)

@torch.library.custom_op("ssmpose::selective_scan_2d", mutates_args=())
def selective_scan_2d(x: Tensor, delta: Tensor, A: Tensor, Bs: Tensor, Cs: Tensor, Ds: Optional[Tensor],
                      delta_bias: Optional[Tensor], delta_softplus: int) -> Tensor:
    if compiled_kernels_for(x):
        return kl.selective_scan_2d_fwd(x, delta, A, Bs, Cs, Ds, delta_bias, bool(delta_softplus))
    return reference.selective_scan_2d_reference(x, delta, A, Bs, Cs, Ds, delta_bias, bool(delta_softplus),
                                                 chunk_size=REFERENCE_SCAN_CHUNK)


@selective_scan_2d.register_fake
def _(x, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus):
    return torch.empty_like(x)


@torch.library.custom_op("ssmpose::selective_scan_2d_backward", mutates_args=())
def selective_scan_2d_backward(x: Tensor, delta: Tensor, A: Tensor, Bs: Tensor, Cs: Tensor, Ds: Optional[Tensor],
                               delta_bias: Optional[Tensor], delta_softplus: int,
                               dy: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dx, d_delta, dA, dBs, dCs, dDs, d_delta_bias); dDs/d_delta_bias are zeros when absent."""
    if not compiled_kernels_for(x):
        raise RuntimeError("ssmpose::selective_scan_2d_backward needs the compiled kernels; without them the "
                           "gradient is taken through the reference by autograd")
    grads = kl.selective_scan_2d_bwd(x, delta, A, Bs, Cs, Ds, delta_bias, bool(delta_softplus), dy)
    channels = A.shape[0]
    return tuple(g if g is not None else x.new_zeros(channels) for g in grads)


@selective_scan_2d_backward.register_fake
def _(x, delta, A, Bs, Cs, Ds, delta_bias, delta_softplus, dy):
    channels = A.shape[0]
    return (torch.empty_like(x), torch.empty_like(delta), torch.empty_like(A), torch.empty_like(Bs),
            torch.empty_like(Cs), x.new_empty(channels), x.new_empty(channels))


selective_scan_2d.register_autograd(
    _scan_backward_with(torch.ops.ssmpose.selective_scan_2d_backward, reference.selective_scan_2d_reference),
    setup_context=_scan_setup)


# ---------------------------------------------------------------------------------------------------------
# DeformAggregate

@torch.library.custom_op("ssmpose::deform_aggregate", mutates_args=())
def deform_aggregate(value: Tensor, offset_mask: Tensor, kernel_h: int, kernel_w: int, stride_h: int,
                     stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, group: int,
                     group_channels: int, offset_scale: float, remove_center: int) -> Tensor:
    args = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group, group_channels,
            offset_scale, remove_center)
    if compiled_kernels_for(value):
        return kl.deform_aggregate_fwd(value, offset_mask, *args)
    return reference.deform_aggregate_reference(value, offset_mask, *args)


@deform_aggregate.register_fake
def _(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
      group_channels, offset_scale, remove_center):
    b = value.shape[0]
    return value.new_empty((b, offset_mask.shape[1], offset_mask.shape[2], group * group_channels))


@torch.library.custom_op("ssmpose::deform_aggregate_backward", mutates_args=())
def deform_aggregate_backward(value: Tensor, offset_mask: Tensor, kernel_h: int, kernel_w: int, stride_h: int,
                              stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, group: int,
                              group_channels: int, offset_scale: float, remove_center: int,
                              grad_out: Tensor) -> Tuple[Tensor, Tensor]:
    args = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group, group_channels,
            offset_scale, remove_center)
    if not compiled_kernels_for(value):
        raise RuntimeError("ssmpose::deform_aggregate_backward needs the compiled kernels; without them the "
                           "gradient is taken through the reference by autograd")
    return kl.deform_aggregate_bwd(value, offset_mask, *args, grad_out)


@deform_aggregate_backward.register_fake
def _(value, offset_mask, *rest):
    return torch.empty_like(value), torch.empty_like(offset_mask)


def _deform_setup(ctx, inputs, output):
    value, offset_mask, *attrs = inputs
    ctx.save_for_backward(value, offset_mask)
    ctx.attrs = attrs


def _deform_backward(ctx, grad_out):
    value, offset_mask = ctx.saved_tensors
    if compiled_kernels_for(value):
        grad_value, grad_om = torch.ops.ssmpose.deform_aggregate_backward(value, offset_mask, *ctx.attrs,
                                                                          grad_out.contiguous())
    else:
        grad_value, grad_om = _reference_grads(
            lambda v, o: reference.deform_aggregate_reference(v, o, *ctx.attrs), (value, offset_mask), grad_out)
    return (grad_value, grad_om) + (None,) * len(ctx.attrs)


deform_aggregate.register_autograd(_deform_backward, setup_context=_deform_setup)


def _reference_grads(fn, inputs, grad_output):
    """Gradients of the reference implementation by autograd (the fallback backward)."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() if t is not None else None for t in inputs]
        out = fn(*leaves)
        present = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(out, present, grad_output, allow_unused=True))
    result = []
    for t in leaves:
        g = next(grads) if t is not None else None
        result.append(None if t is None else (g if g is not None else torch.zeros_like(t)))
    return tuple(result)
