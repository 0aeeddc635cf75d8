"""FLOP counting in the convention of the papers' tables: one multiply-add = one FLOP (fvcore / mmcv).

`torch.utils.flop_counter.FlopCounterMode` counts convolutions, matmuls and attention at 2 FLOPs per
multiply-add; halving gives the papers' unit. It does not see inside the ssmpose operators, so they get
their own formulas here:
- SelectiveScan: 9 * B * G*D * L * N for the recurrence (VMamba's count for the selective scan: the
  discretisation exp(dt*A), dt*B*u, the state update and the C readout), plus B * G*D * L for the D term.
  SelectiveScan2D is the same count for its K*D channels over L = H*W positions (what the version-1 path's
  SelectiveScan on the cross-scanned sequences counts).
- DeformAggregate: per output pixel, group and sampling point, 4 bilinear corners and the mask over the
  group's C channels: 5 * B * Hout * Wout * G * K * C.
Element-wise operations, normalisation and activations are not counted (as in fvcore).
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from ...custom_ops import torch_ops  # noqa: F401  (registers torch.ops.ssmpose.*)

SCAN_MACS_PER_STATE = 9
DEFORM_MACS_PER_POINT_CHANNEL = 5


def selective_scan_macs(u_shape, num_states: int, with_d: bool) -> int:
    batch, channels, length = u_shape
    macs = SCAN_MACS_PER_STATE * batch * channels * length * num_states
    return macs + (batch * channels * length if with_d else 0)


def deform_aggregate_macs(out_shape, kernel_points: int, group: int, group_channels: int) -> int:
    batch, h_out, w_out, _ = out_shape
    return DEFORM_MACS_PER_POINT_CHANNEL * batch * h_out * w_out * group * kernel_points * group_channels


# FlopCounterMode reports 2 FLOPs per multiply-add; the formulas below return in that unit too.
@register_flop_formula(torch.ops.ssmpose.selective_scan)
def _scan_flops(u_shape, delta_shape, A_shape, Bs_shape, Cs_shape, Ds_shape, delta_bias_shape, delta_softplus,
                *args, out_shape=None, **kwargs) -> int:
    return 2 * selective_scan_macs(u_shape, A_shape[1], Ds_shape is not None)


@register_flop_formula(torch.ops.ssmpose.selective_scan_2d)
def _scan_2d_flops(x_shape, delta_shape, A_shape, Bs_shape, Cs_shape, Ds_shape, delta_bias_shape, delta_softplus,
                   *args, out_shape=None, **kwargs) -> int:
    batch, height, width, _ = x_shape
    return 2 * selective_scan_macs((batch, A_shape[0], height * width), A_shape[1], Ds_shape is not None)


@register_flop_formula(torch.ops.ssmpose.deform_aggregate)
def _deform_flops(value_shape, offset_mask_shape, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                  dilation_h, dilation_w, group, group_channels, offset_scale, remove_center,
                  *args, out_shape=None, **kwargs) -> int:
    points = kernel_h * kernel_w - int(remove_center)
    return 2 * deform_aggregate_macs(out_shape, points, group, group_channels)


def count_flops(model: nn.Module, *inputs: torch.Tensor) -> Dict[str, float]:
    """Forward FLOPs (multiply-adds) of `model(*inputs)` in eval mode, total and per operator kind.

    Returns {"total": ..., "by_op": {op name: flops}} with plain numbers (not giga)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(*inputs)
    finally:
        model.train(was_training)
    by_op = {str(op).split(".")[-2] if str(op).endswith(".default") else str(op): flops // 2
             for op, flops in counter.get_flop_counts()["Global"].items()}
    return {"total": counter.get_total_flops() // 2, "by_op": by_op}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
