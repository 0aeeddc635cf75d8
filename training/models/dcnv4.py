"""DCNv4 module in the two variants found in the official HRVMamba code.

`as_run` (default) is what the authors trained: value = input, no value_proj/output_proj.
`released` is the variant of the released python source: value_proj before, output_proj after.
Input and output are channel-last (B, H, W, C).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ...custom_ops import ops

DCN_VARIANTS = ("as_run", "released")


def offset_mask_width(group: int, kernel_points: int = 9) -> int:
    """Width P of the offset/mask projection: G*K*3 padded up to a multiple of 8."""
    return int(math.ceil(group * kernel_points * 3 / 8) * 8)


class DCNv4(nn.Module):
    def __init__(self, channels: int, group: int, kernel_size: int = 3, stride: int = 1, pad: int = 1,
                 dilation: int = 1, offset_scale: float = 1.0, dw_kernel_size=None,
                 output_bias: bool = False, variant: str = "as_run"):
        super().__init__()
        if variant not in DCN_VARIANTS:
            raise ValueError(f"DCNv4 variant must be one of {DCN_VARIANTS}, got {variant!r}")
        if channels % group:
            raise ValueError(f"DCNv4: channels {channels} not divisible by group {group}")
        self.channels = channels
        self.group = group
        self.group_channels = channels // group
        self.kernel_size = kernel_size
        self.stride = stride
        self.pad = pad
        self.dilation = dilation
        self.offset_scale = offset_scale
        self.variant = variant
        if dw_kernel_size is not None:
            self.offset_mask_dw = nn.Conv2d(channels, channels, dw_kernel_size, 1, (dw_kernel_size - 1) // 2,
                                            groups=channels)
        else:
            self.offset_mask_dw = None
        self.offset_mask = nn.Linear(channels, offset_mask_width(group, kernel_size * kernel_size))
        if variant == "released":
            self.value_proj = nn.Linear(channels, channels)
            self.output_proj = nn.Linear(channels, channels, bias=output_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        if self.variant == "released":
            nn.init.xavier_uniform_(self.value_proj.weight)
            nn.init.zeros_(self.value_proj.bias)
            nn.init.xavier_uniform_(self.output_proj.weight)
            if self.output_proj.bias is not None:
                nn.init.zeros_(self.output_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = self.value_proj(x) if self.variant == "released" else x
        if self.offset_mask_dw is not None:
            offset_input = self.offset_mask_dw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        else:
            offset_input = x
        offset_mask = self.offset_mask(offset_input)
        k = self.kernel_size
        out = ops.deform_aggregate(value, offset_mask, k, k, self.stride, self.stride, self.pad, self.pad,
                                   self.dilation, self.dilation, self.group, self.group_channels,
                                   self.offset_scale, 0)
        if self.variant == "released":
            out = self.output_proj(out)
        return out
