"""SS2D of VMamba as HRVMamba runs it: forward_type "v05_noz", channel-first, DCNv4 instead of dwconv."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...custom_ops import ops
from .dcnv4 import DCNv4
from .layers import LayerNorm2d, Linear2d

NUM_DIRECTIONS = 4


class SEModule(nn.Module):
    """Squeeze-excitation over channels (keys fc.0, fc.2), used by the tiny SS2D."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = channels // reduction
        self.fc = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc(x.mean(dim=(2, 3)))
        return x * scale[:, :, None, None]

    def forward_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc(x.mean(dim=(1, 2)))
        return x * scale[:, None, None, :]


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4*C, L): row-major, column-major, and both reversed, stacked along channels
    (direction k holds channels k*C .. k*C+C-1, the grouping SelectiveScan expects)."""
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    return torch.cat([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 4*C, L) -> (B, C, H, W): the four directions mapped back to row-major and summed."""
    b, _, length = y.shape
    rows, cols, rows_reversed, cols_reversed = y.chunk(NUM_DIRECTIONS, dim=1)
    rows = rows + rows_reversed.flip(-1)
    cols = cols + cols_reversed.flip(-1)
    c = rows.shape[1]
    return rows.reshape(b, c, height, width) + cols.reshape(b, c, width, height).transpose(2, 3)


class DirectionalSSM(nn.Module):
    """The S6 parameters of K scan directions (VMamba's per-direction x_proj, dt_proj, A, D) and the scan,
    shared by every model family.

    `scan` maps the K directions' sequences (B', K*D, L) (direction k in channels k*D .. k*D+D-1) to the
    scan outputs of the same shape. `scan_core` is SS2D's use of it with K = 4: (B, D, H, W) -> cross-scan
    -> scan -> cross-merge -> (B, D, H, W). Subclasses add the projections around it (the parameters here
    come first in the state dict, as in the official SS2D)."""

    def __init__(self, d_inner: int, dt_rank: int, d_state: int, directions: int = NUM_DIRECTIONS):
        super().__init__()
        self.d_inner, self.dt_rank, self.d_state, self.directions = d_inner, dt_rank, d_state, directions
        k = directions
        self.x_proj_weight = nn.Parameter(torch.empty(k, dt_rank + 2 * d_state, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))

    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4):
        """VMamba's "v0" initialisation: A = -(1..N) (S4D-real; -1 for N = 1), D = 1, dt bias = softplus^-1 of
        a log-uniform dt."""
        bound = self.dt_rank ** -0.5
        with torch.no_grad():
            nn.init.uniform_(self.dt_projs_weight, -bound, bound)
            nn.init.uniform_(self.x_proj_weight, -self.d_inner ** -0.5, self.d_inner ** -0.5)
            dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min)).clamp(min=dt_floor)
            self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            states = torch.arange(1, self.d_state + 1, dtype=torch.float32)
            self.A_logs.copy_(torch.log(states).expand_as(self.A_logs))
            self.Ds.fill_(1.0)

    def scan(self, xs: torch.Tensor) -> torch.Tensor:
        k, d, r, n = self.directions, self.d_inner, self.dt_rank, self.d_state
        length = xs.shape[2]
        # Per-direction projections as grouped 1x1 convolutions (group k = direction k): the same sums as
        # einsum("bkdl,kcd->bkcl"), without the layout copies an einsum costs in ONNX Runtime and eager.
        x_dbl = F.conv1d(xs, self.x_proj_weight.reshape(k * (r + 2 * n), d, 1), groups=k)
        dts, Bs, Cs = torch.split(x_dbl.reshape(-1, k, r + 2 * n, length), [r, n, n], dim=2)
        dts = F.conv1d(dts.reshape(-1, k * r, length), self.dt_projs_weight.reshape(k * d, r, 1), groups=k)
        # The small parameters in float32 (float64 for a float64 model) whatever the activations' dtype.
        dtype = torch.float64 if self.A_logs.dtype == torch.float64 else torch.float32
        return ops.selective_scan(xs, dts, -torch.exp(self.A_logs.to(dtype)), Bs.contiguous(), Cs.contiguous(),
                                  self.Ds.to(dtype), self.dt_projs_bias.to(dtype).reshape(-1), True)

    def scan_core(self, x: torch.Tensor) -> torch.Tensor:
        if ops.scan_2d_enabled() and self.directions == NUM_DIRECTIONS:
            return self.scan_2d(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        _, _, h, w = x.shape
        return cross_merge(self.scan(cross_scan(x)), h, w).to(x.dtype)

    def scan_core_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """scan_core on (B, H, W, D): with SelectiveScan2D no layout change at all."""
        if ops.scan_2d_enabled() and self.directions == NUM_DIRECTIONS:
            return self.scan_2d(x)
        return self.scan_core(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def scan_2d(self, x: torch.Tensor) -> torch.Tensor:
        """The four-direction scan as one SelectiveScan2D: (B, H, W, D) -> (B, H, W, D). The per-direction
        projections act on one position at a time, so they are computed in spatial order."""
        b, h, w, d = x.shape
        k, r, n = self.directions, self.dt_rank, self.d_state
        x_dbl = F.linear(x, self.x_proj_weight.reshape(k * (r + 2 * n), d)).reshape(b, h, w, k, r + 2 * n)
        dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=-1)
        delta = torch.einsum("bhwkr,kdr->bhwkd", dts, self.dt_projs_weight).reshape(b, h, w, k * d)
        dtype = torch.float64 if self.A_logs.dtype == torch.float64 else torch.float32
        y = ops.selective_scan_2d(x, delta, -torch.exp(self.A_logs.to(dtype)), Bs.contiguous(), Cs.contiguous(),
                                  self.Ds.to(dtype), self.dt_projs_bias.to(dtype).reshape(-1), True)
        return y.to(x.dtype)


class SS2D(DirectionalSSM):
    def __init__(self, d_model: int, d_state: int = 1, ssm_ratio: float = 2.0, dropout: float = 0.0,
                 with_se: bool = False, dcn_variant: str = "as_run"):
        d_inner = int(ssm_ratio * d_model)
        dt_rank = math.ceil(d_model / 16)
        super().__init__(d_inner, dt_rank, d_state)   # own parameters first, as in the official state dict
        self.out_norm = LayerNorm2d(d_inner)
        self.in_proj = Linear2d(d_model, d_inner, bias=False)
        self.conv2d = DCNv4(d_inner, group=dt_rank, dw_kernel_size=3 if d_model % 80 == 0 else None,
                            variant=dcn_variant)
        self.act = nn.SiLU()
        self.se = SEModule(d_inner) if with_se else None
        self.out_proj = Linear2d(d_inner, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.reset_ssm_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_channels_last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C). Only the scan works channel-first, so this order needs two
        layout changes (into the cross-scan, out of the cross-merge) where an NCHW order needs six."""
        x = self.act(self.conv2d(self.in_proj.forward_channels_last(x)))
        y = self.scan_core_channels_last(x)
        y = self.out_norm.forward_channels_last(y)
        if self.se is not None:
            y = self.se.forward_channels_last(y)
        return self.dropout(self.out_proj.forward_channels_last(y))
