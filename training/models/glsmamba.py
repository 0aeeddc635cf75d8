"""GLSMamba (ICCV 2025, arXiv 2510.11017): video pose estimation with global-local state space models.

A frozen ViTPose-B encoder turns each of the T = 5 frames of a clip into features; 4 Global
Spatiotemporal Mamba (GSM) blocks and 2 Local Refinement Mamba (LRM) blocks model the clip; a heatmap
head predicts the centre frame. No official code exists: docs/models.md (GLSMamba section) lists every
choice made here where the paper leaves one open.

Activations are channel-last clips (B, T, H, W, C). Scan layouts (the visiting order of each path):

- unified (GSM): the frames side by side form an H x (T*W) panorama. Path 1 traverses it row-major
  (for h, for t, for w), path 4 column-major (for t, for w, for h); one sequence of T*H*W per clip.
- spatial (GSM): per frame, path 2 row-major (for h, for w), path 5 its reverse; H*W per frame.
- temporal (GSM): per pixel, path 3 forward in time (t = 0..T-1), path 6 backward; T per pixel.
- windowed (LRM): per 8x6xT tube, forward (for t, for row, for column) and its reverse.

Every path runs through the SelectiveScan operator; the paths that share a sequence length are one call
with G = 2 groups, as SS2D does with its four directions.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...custom_ops import ops
from .dcnv4 import offset_mask_width
from .layers import DropPath, Mlp
from .registry import ModelSpec, register_model
from .ss2d import DirectionalSSM
from .vit import ViTEncoder

NUM_FRAMES = 5                 # 2 * delta + 1 with delta = 2
WINDOW = (8, 6)                # LRM tube windows (rows, columns) x T
PATCH = 16
VIT_DIM = 768
DIM = 256                      # model width C
SSM_RATIO = 2                  # D = 2C inside the mixers
MLP_RATIO = 4
D_STATE = 1
MERGE_GROUPS = 8               # DeformAggregate groups of the scan merging (64 channels each)
NUM_GSM, NUM_LRM = 4, 2
DEFAULT_DROP_PATH = 0.1


# ---------------------------------------------------------------------------------------------------------
# Scan layouts: (B, T, H, W, D) <-> (B', 2*D, L), direction k in channels k*D .. k*D+D-1

def unified_sequences(x: torch.Tensor) -> torch.Tensor:
    """Paths 1 and 4: (B, T, H, W, D) -> (B, 2D, T*H*W), panorama row-major and column-major."""
    b, t, h, w, d = x.shape
    horizontal = x.permute(0, 4, 2, 1, 3).reshape(-1, d, t * h * w)
    vertical = x.permute(0, 4, 1, 3, 2).reshape(-1, d, t * h * w)
    return torch.cat([horizontal, vertical], dim=1)


def unified_merge(y: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
    """(B, 2D, T*H*W) -> (B, T, H, W, D): both paths mapped back to their positions and summed."""
    d = y.shape[1] // 2
    horizontal, vertical = y[:, :d], y[:, d:]
    horizontal = horizontal.reshape(-1, d, h, t, w).permute(0, 3, 2, 4, 1)
    vertical = vertical.reshape(-1, d, t, w, h).permute(0, 2, 4, 3, 1)
    return horizontal + vertical


def frame_sequences(x: torch.Tensor) -> torch.Tensor:
    """Paths 2 and 5: (B, T, H, W, D) -> (B*T, 2D, H*W), row-major per frame and its reverse."""
    b, t, h, w, d = x.shape
    rows = x.reshape(-1, h * w, d).transpose(1, 2)
    return torch.cat([rows, rows.flip(-1)], dim=1)


def frame_merge(y: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
    d = y.shape[1] // 2
    rows = y[:, :d] + y[:, d:].flip(-1)
    return rows.transpose(1, 2).reshape(-1, t, h, w, d)


def pixel_sequences(x: torch.Tensor) -> torch.Tensor:
    """Paths 3 and 6: (B, T, H, W, D) -> (B*H*W, 2D, T), forward and backward in time per pixel."""
    b, t, h, w, d = x.shape
    frames = x.permute(0, 2, 3, 4, 1).reshape(-1, d, t)
    return torch.cat([frames, frames.flip(-1)], dim=1)


def pixel_merge(y: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
    d = y.shape[1] // 2
    frames = y[:, :d] + y[:, d:].flip(-1)
    return frames.reshape(-1, h, w, d, t).permute(0, 4, 1, 2, 3)


def window_sequences(x: torch.Tensor, window: Tuple[int, int]) -> torch.Tensor:
    """LRM: (B, T, H, W, D) -> (B*nH*nW, 2D, T*wh*ww), each tube frame by frame row-major, and reversed."""
    b, t, h, w, d = x.shape
    wh, ww = window
    tubes = x.reshape(-1, t, h // wh, wh, w // ww, ww, d).permute(0, 2, 4, 6, 1, 3, 5).reshape(-1, d, t * wh * ww)
    return torch.cat([tubes, tubes.flip(-1)], dim=1)


def window_merge(y: torch.Tensor, t: int, h: int, w: int, window: Tuple[int, int]) -> torch.Tensor:
    d = y.shape[1] // 2
    wh, ww = window
    tubes = y[:, :d] + y[:, d:].flip(-1)
    tubes = tubes.reshape(-1, h // wh, w // ww, d, t, wh, ww).permute(0, 4, 1, 5, 2, 6, 3)
    return tubes.reshape(-1, t, h, w, d)


# ---------------------------------------------------------------------------------------------------------
# Modules

class ScanPair(DirectionalSSM):
    """The S6 parameters and scan of two directions (a path and its partner):
    (B', 2D, L) -> (B', 2D, L), direction k in channels k*D .. k*D+D-1."""

    def __init__(self, d_inner: int, dt_rank: int, d_state: int):
        super().__init__(d_inner, dt_rank, d_state, directions=2)
        self.reset_ssm_parameters()

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        return self.scan(xs)


def temporal_shift(y: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, T, H, W, D): the first quarter of the channel groups takes frame t-1, the last quarter frame t+1
    (zeros past the clip ends), the middle half stays (TSM's shift, aligned to the deformable groups)."""
    fold = (y.shape[-1] // groups) * (groups // 4)
    past, present, future = y[..., :fold], y[..., fold:-fold], y[..., -fold:]
    past = torch.cat([torch.zeros_like(past[:, :1]), past[:, :-1]], dim=1)
    future = torch.cat([future[:, 1:], torch.zeros_like(future[:, :1])], dim=1)
    return torch.cat([past, present, future], dim=-1)


class ModulatedMerge(nn.Module):
    """STMM: y_u + spatial modulation of y_s + temporal modulation of y_t, both by DeformAggregate (3x3).

    Spatial: each frame of y_s is resampled at learned offsets within the frame. Temporal: y_t after
    `temporal_shift`, so the deformable groups sample the previous, the same or the next frame (motion
    compensation of the per-pixel temporal scan). Offsets and masks come from a Linear on the plain sum
    y_u + y_s + y_t; they start at offset 0, centre mask 1, other masks 0 (the merge starts as a sum)."""

    KERNEL = 3

    def __init__(self, d_inner: int, groups: int = MERGE_GROUPS):
        super().__init__()
        if d_inner % groups or groups % 4:
            raise ValueError(f"ModulatedMerge: {d_inner} channels need a multiple of 4 groups dividing them, "
                             f"got {groups}")
        self.groups = groups
        width = offset_mask_width(groups, self.KERNEL * self.KERNEL)
        self.spatial_offsets = nn.Linear(d_inner, width)
        self.temporal_offsets = nn.Linear(d_inner, width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        points = self.KERNEL * self.KERNEL
        centre = points // 2            # point k = i * kernel_h + j; the centre (1, 1) is point 4
        for linear in (self.spatial_offsets, self.temporal_offsets):
            nn.init.zeros_(linear.weight)
            with torch.no_grad():
                linear.bias.zero_()
                linear.bias[[g * 3 * points + 2 * points + centre for g in range(self.groups)]] = 1.0

    def _aggregate(self, value: torch.Tensor, offset_mask: torch.Tensor) -> torch.Tensor:
        k = self.KERNEL
        return ops.deform_aggregate(value, offset_mask, k, k, 1, 1, k // 2, k // 2, 1, 1, self.groups,
                                    value.shape[-1] // self.groups, 1.0, 0)

    def forward(self, y_u: torch.Tensor, y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
        b, t, h, w, d = y_u.shape
        guide = (y_u + y_s + y_t).reshape(-1, h, w, d)
        spatial = self._aggregate(y_s.reshape(-1, h, w, d), self.spatial_offsets(guide))
        temporal = self._aggregate(temporal_shift(y_t, self.groups).reshape(-1, h, w, d),
                                   self.temporal_offsets(guide))
        return y_u + (spatial + temporal).reshape(-1, t, h, w, d)


class GlobalScan(nn.Module):
    """STS6D (unified, spatial and temporal scans, each bidirectional) followed by STMM."""

    def __init__(self, d_inner: int, dt_rank: int, d_state: int, merge_groups: int = MERGE_GROUPS):
        super().__init__()
        self.unified = ScanPair(d_inner, dt_rank, d_state)
        self.spatial = ScanPair(d_inner, dt_rank, d_state)
        self.temporal = ScanPair(d_inner, dt_rank, d_state)
        self.merge = ModulatedMerge(d_inner, merge_groups)

    def streams(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, H, W, D) -> y_u, y_s, y_t, each (B, T, H, W, D) (each the sum of its two paths)."""
        _, t, h, w, _ = x.shape
        y_u = unified_merge(self.unified(unified_sequences(x)), t, h, w)
        y_s = frame_merge(self.spatial(frame_sequences(x)), t, h, w)
        y_t = pixel_merge(self.temporal(pixel_sequences(x)), t, h, w)
        return y_u, y_s, y_t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(*self.streams(x))


class WindowScan(nn.Module):
    """WSTS: forward and backward scans inside non-overlapping window x T tubes."""

    def __init__(self, d_inner: int, dt_rank: int, d_state: int, window: Tuple[int, int] = WINDOW):
        super().__init__()
        self.window = tuple(window)
        self.tubes = ScanPair(d_inner, dt_rank, d_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, t, h, w, _ = x.shape
        return window_merge(self.tubes(window_sequences(x, self.window)), t, h, w, self.window)


class SequentialChannelAttention(nn.Module):
    """GAP of every frame, concatenated (T*C) -> Linear -> ReLU -> Linear -> sigmoid: a weight per frame and
    channel. The hidden width is C (the T*C descriptor is squeezed by T)."""

    def __init__(self, channels: int, num_frames: int):
        super().__init__()
        self.fc1 = nn.Linear(num_frames * channels, channels)
        self.fc2 = nn.Linear(channels, num_frames * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, c = x.shape
        descriptor = x.mean(dim=(2, 3)).reshape(-1, t * c)
        weights = torch.sigmoid(self.fc2(F.relu(self.fc1(descriptor))))
        return x * weights.reshape(-1, t, 1, 1, c)


class GatingStream(nn.Module):
    """Depthwise 3x3 convolution (per frame) + LayerNorm + SiLU: the gate multiplied into the scan output."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels)
        self.norm = nn.LayerNorm(channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, t, h, w, d = z.shape
        z = self.conv(z.reshape(-1, h, w, d).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return F.silu(self.norm(z)).reshape(-1, t, h, w, d)


class MambaBlock(nn.Module):
    """One GSM or LRM block on (B, T, H, W, C):
    x += out_proj(out_norm(mixer(SiLU(x_in))) * gate(z)), with x_in, z = in_proj([channel attention of] norm(x));
    x += MLP(norm2(x)). The mixer is GlobalScan (GSM) or WindowScan (LRM)."""

    def __init__(self, channels: int, mixer: nn.Module, channel_attention: Optional[nn.Module],
                 d_inner: int, drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.channel_attention = channel_attention
        self.in_proj = nn.Linear(channels, 2 * d_inner, bias=False)
        self.mixer = mixer
        self.out_norm = nn.LayerNorm(d_inner)
        self.gate = GatingStream(d_inner)
        self.out_proj = nn.Linear(d_inner, channels, bias=False)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = Mlp(channels, MLP_RATIO * channels)
        self.drop_path = DropPath(drop_path)

    def ssm(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.channel_attention is not None:
            x = self.channel_attention(x)
        main, z = self.in_proj(x).chunk(2, dim=-1)
        y = self.out_norm(self.mixer(F.silu(main))) * self.gate(z)
        return self.out_proj(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ssm(x))
        return x + self.drop_path(self.mlp.forward_channels_last(self.norm2(x)))


def gsm_block(channels: int, num_frames: int, d_state: int, drop_path: float) -> MambaBlock:
    d_inner, dt_rank = SSM_RATIO * channels, math.ceil(channels / 16)
    return MambaBlock(channels, GlobalScan(d_inner, dt_rank, d_state),
                      SequentialChannelAttention(channels, num_frames), d_inner, drop_path)


def lrm_block(channels: int, d_state: int, drop_path: float, window: Tuple[int, int] = WINDOW) -> MambaBlock:
    d_inner, dt_rank = SSM_RATIO * channels, math.ceil(channels / 16)
    return MambaBlock(channels, WindowScan(d_inner, dt_rank, d_state, window), None, d_inner, drop_path)


# ---------------------------------------------------------------------------------------------------------
# The model

class GLSMambaPose(nn.Module):
    """Video top-down pose model: `model(clips)` with clips (B, T, 3, H, W) -> heatmaps (B, K, H/4, W/4) of
    frame T // 2. `feature_stride` 4 (glsmamba_b) or 16 (glsmamba_blr) is where the Mamba blocks run; the
    resampling between the ViT's stride 16, the blocks and the stride-4 heatmaps is bilinear (no parameters),
    so both variants have the same parameters."""

    def __init__(self, name: str, input_size: Tuple[int, int], feature_stride: int, num_keypoints: int,
                 dataset: str, sigma: float, d_state: int = D_STATE, drop_path_rate: float = DEFAULT_DROP_PATH,
                 num_frames: int = NUM_FRAMES, channels: int = DIM, window: Tuple[int, int] = WINDOW):
        super().__init__()
        self.name = name
        self.input_size = tuple(input_size)
        self.num_frames = num_frames
        self.feature_stride = feature_stride
        self.window = tuple(window)
        self.input_multiple = input_multiple(feature_stride, self.window)
        _check_input_size(name, self.input_size, self.input_multiple)
        self.backbone = ViTEncoder(self.input_size, dim=VIT_DIM, patch_size=PATCH)
        self.input_proj = nn.Linear(VIT_DIM, channels)
        rates = torch.linspace(0, drop_path_rate, NUM_GSM + NUM_LRM, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            [gsm_block(channels, num_frames, d_state, rates[i]) for i in range(NUM_GSM)]
            + [lrm_block(channels, d_state, rates[NUM_GSM + i], self.window) for i in range(NUM_LRM)])
        self.norm = nn.LayerNorm(channels)
        self.head = nn.Conv2d(channels, num_keypoints, 1)
        self.meta = video_pose_metadata(name, self.input_size, sigma, num_keypoints, dataset, num_frames)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Seeded initialisation of the trainable part (the encoder keeps ViTPose's until weights are loaded)."""
        for name, module in self.named_modules():
            if name.startswith("backbone"):
                continue
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():   # module-specific rules win over the generic ones above
            if isinstance(module, ScanPair):
                module.reset_ssm_parameters()
            elif isinstance(module, ModulatedMerge):
                module.reset_parameters()
        nn.init.normal_(self.head.weight, std=0.001)
        nn.init.zeros_(self.head.bias)

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> (B, T, H/s, W/s, C) at the feature stride s, before the Mamba blocks."""
        _, t, _, h, w = clips.shape
        tokens = self.input_proj(self.backbone.forward_tokens(clips.reshape(-1, 3, h, w)))
        fh, fw = h // self.feature_stride, w // self.feature_stride
        if self.feature_stride != PATCH:
            tokens = F.interpolate(tokens.permute(0, 3, 1, 2), size=(fh, fw), mode="bilinear",
                                   align_corners=False).permute(0, 2, 3, 1)
        return tokens.reshape(-1, t, fh, fw, tokens.shape[-1])

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        check_clips(clips, self.name, self.num_frames, self.input_multiple)
        x = self.features(clips)
        for block in self.blocks:
            x = block(x)
        centre = self.norm(x[:, self.num_frames // 2]).permute(0, 3, 1, 2)
        heatmaps = self.head(centre)
        h, w = clips.shape[-2:]
        if heatmaps.shape[-2:] != (h // 4, w // 4):
            heatmaps = F.interpolate(heatmaps, size=(h // 4, w // 4), mode="bilinear", align_corners=False)
        return heatmaps


def input_multiple(feature_stride: int, window: Tuple[int, int] = WINDOW) -> Tuple[int, int]:
    """(H, W) must be multiples of these: the patch size, and whole windows at the feature stride."""
    return tuple(math.lcm(PATCH, feature_stride * k) for k in window)


def _check_input_size(name: str, size: Tuple[int, int], multiple: Tuple[int, int]) -> None:
    if len(size) != 2 or any(s <= 0 or s % m for s, m in zip(size, multiple)):
        raise ValueError(f"{name}: input_size must be (H, W) with H a multiple of {multiple[0]} and W a multiple "
                         f"of {multiple[1]} (patch {PATCH}, {WINDOW[0]}x{WINDOW[1]} windows), got {size}")


def check_clips(clips: torch.Tensor, name: str, num_frames: int, multiple: Tuple[int, int]) -> None:
    """Clear errors for input the model cannot take."""
    if not isinstance(clips, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor clip, got {type(clips).__name__}")
    if clips.dim() != 5:
        raise ValueError(f"{name}: expected clips of shape (B, T={num_frames}, 3, H, W), got a {clips.dim()}-D "
                         f"tensor of shape {tuple(clips.shape)}")
    if clips.shape[1] != num_frames:
        raise ValueError(f"{name}: expected {num_frames} frames per clip (dimension 1), got {clips.shape[1]} "
                         f"(shape {tuple(clips.shape)})")
    if clips.shape[2] != 3:
        raise ValueError(f"{name}: expected 3 colour channels (dimension 2), got {clips.shape[2]} "
                         f"(shape {tuple(clips.shape)})")
    if not clips.is_floating_point():
        raise TypeError(f"{name}: expected floating-point clips (normalised), got dtype {clips.dtype}")
    h, w = clips.shape[-2:]
    if h % multiple[0] or w % multiple[1]:
        raise ValueError(f"{name}: frame height must be a multiple of {multiple[0]} and width a multiple of "
                         f"{multiple[1]}, got {h}x{w}")


def video_pose_metadata(name: str, input_size, sigma: float, num_keypoints: int, dataset: str,
                        num_frames: int) -> dict:
    """The single-image pose metadata (hrvmamba.pose_metadata, without a DCN variant) plus num_frames."""
    from .hrvmamba import pose_metadata
    meta = pose_metadata(name, input_size, sigma, num_keypoints, None, dataset)
    meta.pop("dcn_variant", None)
    meta["num_frames"] = num_frames
    return meta


# ---------------------------------------------------------------------------------------------------------
# Variants

VARIANTS = {"b": 4, "blr": 16}     # name suffix: feature stride


def _build(variant: str, input_size=(256, 192), num_keypoints: Optional[int] = None, dataset: str = "coco",
           drop_path_rate: float = DEFAULT_DROP_PATH, d_state: int = D_STATE) -> GLSMambaPose:
    name = f"glsmamba_{variant}"
    input_size = tuple(int(v) for v in input_size)
    if num_keypoints is None:
        from ..datasets import dataset_info
        num_keypoints = dataset_info(dataset).num_keypoints
    sigma = 2.0 * input_size[0] / 256      # MSRA heatmaps: sigma 2 at 256x192, scaled with the input
    return GLSMambaPose(name, input_size, VARIANTS[variant], num_keypoints, dataset, sigma, d_state,
                        drop_path_rate)


for _variant, _stride in VARIANTS.items():
    register_model(ModelSpec(
        name=f"glsmamba_{_variant}", task="pose", constructor=partial(_build, _variant),
        default_input_size=(256, 192), input_sizes=((256, 192),), num_outputs=17,
        description=f"GLSMamba-{_variant.upper()} video pose model: frozen ViTPose-B, 4 GSM + 2 LRM blocks at "
                    f"1/{_stride} resolution, 5-frame clips (B, 5, 3, H, W) -> centre-frame heatmaps"))
