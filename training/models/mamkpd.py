"""MamKPD (Dang et al., "MamKPD: A Simple Mamba Baseline for Real-Time 2D Keypoint Detection"): the pose
models mamkpd_small/base/large.

No official code is public; the structure follows the paper's text and Table 1, and every choice the paper
leaves open is listed in docs/models.md ("MamKPD"). Layout: stem (base, large) -> three stages at strides
4/8/16, each a contextual modelling module (CMM) and SS2D blocks -> two 4x4 deconvolutions -> 1x1 conv to
heatmaps at stride 4. Tensors are NCHW between modules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Optional, Tuple

import torch
import torch.nn as nn

from .hrvmamba import check_images, pose_metadata
from .layers import DropPath, LayerNorm2d, Linear2d
from .registry import ModelSpec, register_model
from .ss2d import DirectionalSSM

INPUT_DIVISOR = 16
HEATMAP_STRIDE = 4


@dataclass(frozen=True)
class MamKPDConfig:
    stem: bool
    dims: Tuple[int, int, int]
    depths: Tuple[int, int, int] = (2, 4, 6)
    d_state: int = 4
    ssm_ratio: float = 2.0
    drop_path_rate: float = 0.1


class ScanMixer(nn.Module):
    """SS2D without the gate ("noz"): in_proj -> depthwise 3x3 -> SiLU -> four-direction scan -> LayerNorm
    -> out_proj. The gate of Mamba's block is the stage's intra-patch stream (see MamKPDStage)."""

    def __init__(self, dim: int, d_state: int, ssm_ratio: float):
        super().__init__()
        d_inner = int(ssm_ratio * dim)
        self.in_proj = Linear2d(dim, d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, 1, 1, groups=d_inner)
        self.act = nn.SiLU()
        self.ssm = DirectionalSSM(d_inner, math.ceil(dim / 16), d_state)
        self.out_norm = LayerNorm2d(d_inner)
        self.out_proj = Linear2d(d_inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2d(self.in_proj(x)))
        return self.out_proj(self.out_norm(self.ssm.scan_core(x)))


class SS2DBlock(nn.Module):
    """VMamba's VSS block without MLP: x + DropPath(SS2D(LayerNorm(x)))."""

    def __init__(self, dim: int, d_state: int, ssm_ratio: float, drop_path: float):
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.op = ScanMixer(dim, d_state, ssm_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.op(self.norm(x)))


class ContextModelling(nn.Module):
    """The CMM. Inter-patch: a depthwise 3x3 conv with stride 2 (downsampling), then the patch embedding (a
    second depthwise 3x3 conv and a 1x1 projection to the stage width), then LayerNorm. Without a stem the
    first stage's inter-patch part is a 4x4/stride-4 patch embedding of the image (a depthwise conv cannot
    widen 3 channels). Intra-patch: a linear layer and a depthwise 3x3 conv on the embedded patches."""

    def __init__(self, in_dim: int, dim: int, patchify_image: bool):
        super().__init__()
        if patchify_image:
            self.downsample = nn.Identity()
            self.embed = nn.Conv2d(in_dim, dim, 4, 4)
        else:
            self.downsample = nn.Conv2d(in_dim, in_dim, 3, 2, 1, groups=in_dim)
            self.embed = nn.Sequential(nn.Conv2d(in_dim, in_dim, 3, 1, 1, groups=in_dim),
                                       nn.Conv2d(in_dim, dim, 1))
        self.norm = LayerNorm2d(dim)
        self.intra_linear = Linear2d(dim, dim)
        self.intra_dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        context = self.norm(self.embed(self.downsample(x)))
        intra = self.intra_dwconv(self.intra_linear(context))
        return context, intra


class MamKPDStage(nn.Module):
    """CMM -> SS2D blocks on the context; their output, through a sigmoid, weights the intra-patch features
    ("used as attention weights ... to activate the most important image patches"); LayerNorm."""

    def __init__(self, in_dim: int, dim: int, depth: int, cfg: MamKPDConfig, drop_paths, patchify_image: bool):
        super().__init__()
        self.cmm = ContextModelling(in_dim, dim, patchify_image)
        self.blocks = nn.Sequential(*(SS2DBlock(dim, cfg.d_state, cfg.ssm_ratio, p) for p in drop_paths))
        self.norm = LayerNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context, intra = self.cmm(x)
        return self.norm(torch.sigmoid(self.blocks(context)) * intra)


class Stem(nn.Module):
    """A 7x7 conv (stride 2) and two depthwise 3x3 convs, each with BN and GELU: stride 2, width dims[0]."""

    def __init__(self, dim: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, dim, 7, 2, 3, bias=False), nn.BatchNorm2d(dim), nn.GELU(),
            nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=False), nn.BatchNorm2d(dim), nn.GELU(),
            nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=False), nn.BatchNorm2d(dim), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DeconvDecoder(nn.Module):
    """SimpleBaseline's decoder: two 4x4 transposed convs (stride 2) with BN and ReLU, then a 1x1 conv."""

    def __init__(self, in_dim: int, channels: int, num_keypoints: int):
        super().__init__()
        layers = []
        for c_in in (in_dim, channels):
            layers += [nn.ConvTranspose2d(c_in, channels, 4, 2, 1, bias=False), nn.BatchNorm2d(channels),
                       nn.ReLU(inplace=True)]
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(channels, num_keypoints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(x))


class MamKPD(nn.Module):
    """Top-down heatmap pose model; eval-mode `model(images)` returns heatmaps (B, K, H/4, W/4)."""

    def __init__(self, name: str, cfg: MamKPDConfig, input_size: Tuple[int, int], sigma: float,
                 num_keypoints: int = 17, dataset: str = "coco"):
        super().__init__()
        self.name = name
        self.cfg = cfg
        self.input_size = tuple(input_size)
        self.stem = Stem(cfg.dims[0]) if cfg.stem else None
        dpr = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()
        stages, in_dim, start = [], cfg.dims[0] if cfg.stem else 3, 0
        for i, (dim, depth) in enumerate(zip(cfg.dims, cfg.depths)):
            stages.append(MamKPDStage(in_dim, dim, depth, cfg, dpr[start:start + depth],
                                      patchify_image=(i == 0 and not cfg.stem)))
            in_dim, start = dim, start + depth
        self.stages = nn.Sequential(*stages)
        self.decoder = DeconvDecoder(cfg.dims[-1], cfg.dims[0], num_keypoints)
        self.meta = pose_metadata(name, self.input_size, sigma, num_keypoints, None, dataset)
        init_weights(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.name, INPUT_DIVISOR)
        x = images if self.stem is None else self.stem(images)
        return self.decoder(self.stages(x))


def init_weights(model: nn.Module) -> None:
    """Seeded initialisation for training from scratch: truncated normal linears, Kaiming convs (fan out),
    normal(0, 0.001) for the heatmap conv as mmpose's heads, VMamba's SSM initialisation."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if isinstance(m, DirectionalSSM):
            m.reset_ssm_parameters()
    nn.init.normal_(model.decoder.final_layer.weight, std=0.001)
    nn.init.zeros_(model.decoder.final_layer.bias)


# ---------------------------------------------------------------------------------------------------------
# Variants (paper Table 1)

CONFIGS = {
    "small": MamKPDConfig(stem=False, dims=(96, 192, 384)),
    "base": MamKPDConfig(stem=True, dims=(96, 192, 384)),
    "large": MamKPDConfig(stem=True, dims=(128, 256, 512)),
}
INPUT_SIZES = ((256, 192), (384, 288))


def _build(variant: str, input_size=(256, 192), drop_path_rate: Optional[float] = None,
           num_keypoints: Optional[int] = None, dataset: str = "coco", d_state: Optional[int] = None) -> MamKPD:
    """`dataset` (a registry name: coco, mpii, ap10k, ...) sets the keypoint conventions and count."""
    cfg = CONFIGS[variant]
    input_size = tuple(int(v) for v in input_size)
    if len(input_size) != 2 or input_size[0] % INPUT_DIVISOR or input_size[1] % INPUT_DIVISOR:
        raise ValueError(f"mamkpd_{variant}: input_size must be (H, W) divisible by {INPUT_DIVISOR}, "
                         f"got {input_size}")
    overrides = {}
    if drop_path_rate is not None:
        overrides["drop_path_rate"] = float(drop_path_rate)
    if d_state is not None:
        overrides["d_state"] = int(d_state)
    if overrides:
        cfg = MamKPDConfig(**{**cfg.__dict__, **overrides})
    if num_keypoints is None:
        from ..datasets import dataset_info
        num_keypoints = dataset_info(dataset).num_keypoints
    sigma = 2.0 * input_size[0] / 256
    return MamKPD(f"mamkpd_{variant}", cfg, input_size, sigma, num_keypoints, dataset)


for _variant in CONFIGS:
    register_model(ModelSpec(
        name=f"mamkpd_{_variant}", task="pose", constructor=partial(_build, _variant),
        default_input_size=(256, 192), input_sizes=INPUT_SIZES, num_outputs=17,
        description=f"MamKPD-{_variant[0].upper()} real-time top-down heatmap pose model (COCO, MPII, AP-10K)"))
