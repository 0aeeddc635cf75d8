"""HRVMamba building blocks: the DVSS blocks and the multi-resolution module with its fuse layers."""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import DropPath, LayerNorm2d, Mlp, channel_shuffle_to_channels_last, conv_channels_last
from .ss2d import SS2D

LPU_KERNELS = (3, 5, 7, 9)


class MultiKernelDWConv(nn.ModuleList):
    """Depthwise convs with kernels 3/5/7/9 over four channel groups (remainder to the first).

    (Merging them into one depthwise 9x9 convolution, the smaller kernels zero-padded, saves four nodes but
    measured 7 % slower on ONNX Runtime CUDA fp16: cuDNN runs a 9x9 depthwise kernel slowly; docs/benchmarks.md.)"""

    def __init__(self, channels: int):
        quarter = channels // 4
        self.splits = [channels - 3 * quarter] + [quarter] * 3
        super().__init__(nn.Conv2d(c, c, k, 1, k // 2, groups=c) for c, k in zip(self.splits, LPU_KERNELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, dim=1)
        return torch.cat([conv(p) for conv, p in zip(self, parts)], dim=1)


class HRVMambaBlock(nn.Module):
    """DVSS block of hrvmamba small/base: LPU (multi-kernel dwconv), SS2D, MLP, each residual.

    `lpu_drop_path`: the classification copy applies drop-path to the LPU branch, the pose one does not.
    """

    def __init__(self, channels: int, drop_path: float = 0.0, ssm_drop: float = 0.0, mlp_drop: float = 0.0,
                 lpu_drop_path: bool = False, dcn_variant: str = "as_run"):
        super().__init__()
        self.conv2d = MultiKernelDWConv(channels)
        self.norm0 = LayerNorm2d(channels)
        self.norm = LayerNorm2d(channels)
        self.op = SS2D(channels, dropout=ssm_drop, dcn_variant=dcn_variant)
        self.norm2 = LayerNorm2d(channels)
        self.mlp = Mlp(channels, 2 * channels, drop=mlp_drop)
        self.drop_path = DropPath(drop_path)
        self.lpu_drop_path = DropPath(drop_path) if lpu_drop_path else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return self.forward_channels_last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def lpu(self, x: torch.Tensor) -> torch.Tensor:
        """Channel-last in and out; the depthwise convolutions see an NCHW view."""
        x = self.conv2d(self.norm0.forward_channels_last(x).permute(0, 3, 1, 2))
        return F.gelu(channel_shuffle_to_channels_last(x, 4))

    def ssm(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.forward_channels_last(self.norm.forward_channels_last(x))

    def channel_mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp.forward_channels_last(self.norm2.forward_channels_last(x))

    def forward_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C): LayerNorms, projections and DCNv4 need no layout copies."""
        x = x + self.lpu_drop_path(self.lpu(x))
        x = x + self.drop_path(self.ssm(x))
        return x + self.drop_path(self.channel_mlp(x))


class HRVMambaSEBlock(HRVMambaBlock):
    """Block of hrvmamba tiny (HRVmamba_se_lpu): adds cpe1/cpe2 position convs and SE in SS2D."""

    def __init__(self, channels: int, drop_path: float = 0.0, ssm_drop: float = 0.0, mlp_drop: float = 0.0,
                 lpu_drop_path: bool = True, dcn_variant: str = "as_run"):
        nn.Module.__init__(self)
        # Registration order follows the official state_dict: cpe1, conv2d, norm0, norm, op, cpe2, ...
        self.cpe1 = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels)
        self.conv2d = MultiKernelDWConv(channels)
        self.norm0 = LayerNorm2d(channels)
        self.norm = LayerNorm2d(channels)
        self.op = SS2D(channels, dropout=ssm_drop, with_se=True, dcn_variant=dcn_variant)
        self.cpe2 = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels)
        self.norm2 = LayerNorm2d(channels)
        self.mlp = Mlp(channels, 2 * channels, drop=mlp_drop)
        self.drop_path = DropPath(drop_path)
        self.lpu_drop_path = DropPath(drop_path) if lpu_drop_path else nn.Identity()

    def forward_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        # The LPU reads the cpe1-enhanced tensor, but its residual is the block input (as in the official code).
        x = x + self.lpu_drop_path(self.lpu(x + conv_channels_last(self.cpe1, x)))
        x = x + self.drop_path(self.ssm(x))
        x = x + conv_channels_last(self.cpe2, x)
        return x + self.drop_path(self.channel_mlp(x))


def _upsample_fuse(in_ch: int, out_ch: int, scale: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False))


def _downsample_step(in_ch: int, out_ch: int, last: bool) -> nn.Sequential:
    layers = [nn.Conv2d(in_ch, in_ch, 3, 2, 1, groups=in_ch, bias=False), nn.BatchNorm2d(in_ch),
              nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
    if not last:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ChannelsLastBlocks(nn.Sequential):
    """The blocks of one branch: NCHW in and out, channel-last (B, H, W, C) from the first block to the
    last, so consecutive blocks pass their activations on without layout copies."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1).contiguous()
        for block in self:
            x = block.forward_channels_last(x)
        return x.permute(0, 3, 1, 2)


class HRVMambaModule(nn.Module):
    """One multi-resolution module: per-branch blocks, then HRNet-style fusion (HRVMamba's fuse layers)."""

    def __init__(self, widths: Sequence[int], blocks_per_branch: int, block_factory, drop_paths: Sequence[float],
                 multiscale_output: bool, resize_to_target: bool = False):
        super().__init__()
        self.widths = list(widths)
        self.resize_to_target = resize_to_target
        self.branches = nn.ModuleList(
            ChannelsLastBlocks(*(block_factory(w, drop_paths[b]) for b in range(blocks_per_branch))) for w in widths)
        n = len(widths)
        outputs = n if multiscale_output else 1
        self.fuse_layers = nn.ModuleList()
        if n > 1:
            for i in range(outputs):
                row = nn.ModuleList()
                for j in range(n):
                    if j > i:
                        row.append(_upsample_fuse(widths[j], widths[i], 2 ** (j - i)))
                    elif j == i:
                        row.append(None)
                    else:
                        steps = i - j
                        row.append(nn.Sequential(*(
                            _downsample_step(widths[j], widths[i] if k == steps - 1 else widths[j], k == steps - 1)
                            for k in range(steps))))
                self.fuse_layers.append(row)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if len(xs) == 1:
            return xs
        fused = []
        for i, row in enumerate(self.fuse_layers):
            y = 0
            for j, x in enumerate(xs):
                if j == i:
                    y = y + x
                    continue
                z = row[j](x)
                if self.resize_to_target and j > i and z.shape[-2:] != xs[i].shape[-2:]:
                    z = F.interpolate(z, size=xs[i].shape[-2:], mode="bilinear", align_corners=False)
                y = y + z
            fused.append(self.relu(y))
        return fused
