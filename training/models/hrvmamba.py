"""HRVMamba (PoseVMamba): the pose models hrvmamba_tiny/small/base and the ImageNet classifiers.

Built to reproduce the official state_dict key for key (see docs/models.md); operators go through
ssmpose.custom_ops.ops so that compiled kernels replace the reference implementations transparently.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .. import keypoints as kp
from .hrvmamba_blocks import HRVMambaBlock, HRVMambaModule, HRVMambaSEBlock
from .layers import Bottleneck, conv_bn
from .registry import ModelSpec, register_model

# Blocks per branch and modules per stage (stage2..4), and the drop-path schedule length (2 + 8 + 4).
STAGE_MODULES = (1, 4, 2)
BLOCKS_PER_BRANCH = 2
DROP_PATH_SLOTS = 14
INPUT_DIVISOR = 32


@dataclass(frozen=True)
class HRVMambaConfig:
    widths: Tuple[int, int, int, int]
    stage1_channels: int
    se_blocks: bool                  # tiny / nano use the HRVmamba_se_lpu block
    drop_path_rate: float = 0.0
    ssm_drop_rate: float = 0.0
    mlp_drop_rate: float = 0.0


class HRVMambaBackbone(nn.Module):
    """Stem + layer1 + three multi-resolution stages. Returns the list of branch outputs."""

    def __init__(self, cfg: HRVMambaConfig, multiscale_output: bool, lpu_drop_path: bool,
                 resize_fused: bool, dcn_variant: str = "as_run"):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        layer1_out = cfg.stage1_channels * Bottleneck.expansion
        self.layer1 = nn.Sequential(Bottleneck(64, layer1_out), Bottleneck(layer1_out, layer1_out))

        block_cls = HRVMambaSEBlock if cfg.se_blocks else HRVMambaBlock
        block_factory = partial(_make_block, block_cls, cfg, lpu_drop_path, dcn_variant)
        dpr = torch.linspace(0, cfg.drop_path_rate, DROP_PATH_SLOTS, device="cpu").tolist()
        stage_dpr = (dpr[0:2], dpr[2:10], dpr[10:14])

        prev = [layer1_out]
        for s, num_modules in enumerate(STAGE_MODULES):
            branches = list(w[: s + 2])
            setattr(self, f"transition{s + 1}", _make_transition(prev, branches))
            modules = []
            for m in range(num_modules):
                last = m == num_modules - 1
                modules.append(HRVMambaModule(
                    branches, BLOCKS_PER_BRANCH, block_factory, stage_dpr[s][2 * m: 2 * m + 2],
                    multiscale_output=multiscale_output or not (s == 2 and last),
                    resize_to_target=resize_fused))
            setattr(self, f"stage{s + 2}", nn.Sequential(*modules))
            prev = branches

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for s in range(len(STAGE_MODULES)):
            transition = getattr(self, f"transition{s + 1}")
            xs = [t(xs[-1]) if t is not None else xs[i] for i, t in enumerate(transition)]
            for module in getattr(self, f"stage{s + 2}"):
                xs = module(xs)
        return xs

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.forward_features(x)


def _make_block(block_cls, cfg: HRVMambaConfig, lpu_drop_path: bool, dcn_variant: str, width: int,
                drop_path: float) -> nn.Module:
    return block_cls(width, drop_path=drop_path, ssm_drop=cfg.ssm_drop_rate, mlp_drop=cfg.mlp_drop_rate,
                     lpu_drop_path=lpu_drop_path, dcn_variant=dcn_variant)


def _make_transition(prev: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
    """HRNet transition: 3x3 conv where a width changes, a strided 3x3 conv from the last branch for new ones."""
    layers = nn.ModuleList()
    for i, width in enumerate(cur):
        if i < len(prev):
            layers.append(conv_bn(prev[i], width, 3) if prev[i] != width else None)
        else:
            layers.append(nn.Sequential(conv_bn(prev[-1], width, 3, stride=2)))
    return layers


def check_images(images: torch.Tensor, model_name: str, divisor: int = INPUT_DIVISOR) -> None:
    """Clear errors for input the model cannot take (the official models need H, W divisible by 32)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{model_name}: expected a torch.Tensor of images, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{model_name}: expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{model_name}: expected floating-point images (normalised), got dtype {images.dtype}")
    h, w = images.shape[-2:]
    if h % divisor or w % divisor:
        raise ValueError(f"{model_name}: input height and width must be divisible by {divisor}, "
                         f"got {h}x{w}")


class HeatmapHead(nn.Module):
    """mmpose HeatmapHead with no deconv/conv layers: a 1x1 conv to one heatmap per keypoint."""

    def __init__(self, in_channels: int, num_keypoints: int):
        super().__init__()
        self.final_layer = nn.Conv2d(in_channels, num_keypoints, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.final_layer(feats[-1])


class HRVMambaPose(nn.Module):
    """Top-down heatmap pose model; eval-mode `model(images)` returns heatmaps (B, K, H/4, W/4)."""

    def __init__(self, name: str, cfg: HRVMambaConfig, input_size: Tuple[int, int], sigma: float,
                 num_keypoints: int = 17, dcn_variant: str = "as_run", dataset: str = "coco"):
        super().__init__()
        self.name = name
        self.input_size = tuple(input_size)
        self.dcn_variant = dcn_variant
        self.backbone = HRVMambaBackbone(cfg, multiscale_output=False, lpu_drop_path=cfg.se_blocks,
                                         resize_fused=False, dcn_variant=dcn_variant)
        self.head = HeatmapHead(cfg.widths[0], num_keypoints)
        self.meta = pose_metadata(name, self.input_size, sigma, num_keypoints, dcn_variant, dataset)
        init_weights(self)
        nn.init.normal_(self.head.final_layer.weight, std=0.001)
        nn.init.zeros_(self.head.final_layer.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.name)
        return self.head(self.backbone(images))


class HRFuseScales(nn.Module):
    """mmpretrain HRFuseScales neck: widen each branch, fuse top-down with strided convs, 1x1 to 2048."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 2048):
        super().__init__()
        widened = (128, 256, 512, 1024)
        self.increase_layers = nn.ModuleList(nn.Sequential(Bottleneck(c, o)) for c, o in zip(in_channels, widened))
        self.downsample_layers = nn.ModuleList(_conv_module(widened[i], widened[i + 1], 3, 2) for i in range(3))
        self.final_layer = _conv_module(widened[-1], out_channels, 1, 1)

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        feat = self.increase_layers[0](xs[0])
        for i, down in enumerate(self.downsample_layers):
            feat = down(feat) + self.increase_layers[i + 1](xs[i + 1])
        return self.final_layer(feat)


class _ConvModule(nn.Module):
    """mmcv ConvModule(conv, BN, ReLU) with its `.conv` / `.bn` key names."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


def _conv_module(in_ch: int, out_ch: int, kernel: int, stride: int) -> _ConvModule:
    return _ConvModule(in_ch, out_ch, kernel, stride)


class HRVMambaClassifier(HRVMambaBackbone):
    """ImageNet classifier (classification/models/hrvmamba.py): backbone keys at top level, neck, head."""

    def __init__(self, name: str, cfg: HRVMambaConfig, num_classes: int = 1000, input_size=(224, 224),
                 dcn_variant: str = "as_run"):
        super().__init__(cfg, multiscale_output=True, lpu_drop_path=True, resize_fused=True,
                         dcn_variant=dcn_variant)
        self.name = name
        self.input_size = tuple(input_size)
        self.neck = HRFuseScales(cfg.widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2048, num_classes)
        self.meta = {"model": name, "task": "classification", "input_size": list(self.input_size),
                     "num_classes": num_classes, "dcn_variant": dcn_variant,
                     "mean": list(kp.IMAGENET_MEAN_RGB), "std": list(kp.IMAGENET_STD_RGB), "color_order": "RGB"}
        init_weights(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.name)
        feat = self.neck(self.forward_features(images))
        return self.head(self.avgpool(feat).flatten(1))


def init_weights(model: nn.Module) -> None:
    """Seeded initialisation for training from scratch (official checkpoints overwrite all of it)."""
    from .dcnv4 import DCNv4
    from .ss2d import SS2D
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in model.modules():  # module-specific rules win over the generic ones above
        if isinstance(m, (DCNv4, SS2D)):
            m.reset_parameters() if isinstance(m, DCNv4) else m.reset_ssm_parameters()


def pose_metadata(name: str, input_size, sigma: float, num_keypoints: int, dcn_variant: Optional[str],
                  dataset: str = "coco") -> dict:
    """The conventions a pose model carries (and its exports): those of `dataset` in the registry.
    `dcn_variant` is None for models without DCNv4 (the key is then left out)."""
    from ..datasets import dataset_info
    info = dataset_info(dataset)
    if info.num_keypoints != num_keypoints:
        raise ValueError(f"{name}: dataset {dataset} has {info.num_keypoints} keypoints, the model was asked for "
                         f"{num_keypoints}")
    h, w = input_size
    meta = {
        "model": name, "task": "pose", "input_size": [h, w], "dcn_variant": dcn_variant, "dataset": info.name,
        "num_keypoints": num_keypoints, "keypoint_names": list(info.keypoint_names),
        "skeleton": [list(p) for p in info.skeleton], "flip_pairs": [list(p) for p in info.flip_pairs],
        "mean": list(kp.IMAGENET_MEAN_RGB), "std": list(kp.IMAGENET_STD_RGB), "color_order": "RGB",
        "codec": {"type": "MSRAHeatmap", "sigma": sigma, "heatmap_size": [h // 4, w // 4]},
    }
    if dcn_variant is None:
        del meta["dcn_variant"]
    return meta


# ---------------------------------------------------------------------------------------------------------
# Variants

POSE_CONFIGS = {
    # name: (widths, stage1 channels, se blocks, {input size: (drop_path, ssm_drop, mlp_drop)})
    "tiny": ((16, 32, 64, 128), 32, True, {(256, 192): (0.1, 0.0, 0.0)}),
    "small": ((32, 64, 128, 256), 64, False, {(256, 192): (0.1, 0.1, 0.1), (384, 288): (0.1, 0.1, 0.1)}),
    "base": ((80, 160, 320, 640), 64, False, {(256, 192): (0.2, 0.0, 0.0), (384, 288): (0.6, 0.2, 0.2)}),
}
CLS_CONFIGS = {
    "nano": ((8, 16, 32, 64), 16, True),
    "tiny": ((16, 32, 64, 128), 32, True),
    "small": ((32, 64, 128, 256), 64, False),
    "base": ((80, 160, 320, 640), 64, False),
}
POSE_INPUT_SIZES = ((256, 192), (384, 288))
HEATMAP_SIGMA = {(256, 192): 2.0, (384, 288): 3.0}


def _build_pose(variant: str, input_size=(256, 192), dcn_variant: str = "as_run",
                drop_path_rate: Optional[float] = None, num_keypoints: Optional[int] = None,
                dataset: str = "coco") -> HRVMambaPose:
    """`dataset` (a registry name) sets the keypoint conventions and, unless given, the keypoint count."""
    widths, stage1, se, rates = POSE_CONFIGS[variant]
    input_size = tuple(int(v) for v in input_size)
    if len(input_size) != 2 or input_size[0] % INPUT_DIVISOR or input_size[1] % INPUT_DIVISOR:
        raise ValueError(f"hrvmamba_{variant}: input_size must be (H, W) divisible by {INPUT_DIVISOR}, "
                         f"got {input_size}")
    drop, ssm_drop, mlp_drop = rates.get(input_size, rates[(256, 192)])
    cfg = HRVMambaConfig(widths, stage1, se, drop if drop_path_rate is None else drop_path_rate,
                         ssm_drop, mlp_drop)
    sigma = HEATMAP_SIGMA.get(input_size, 2.0 * input_size[0] / 256)
    if num_keypoints is None:
        from ..datasets import dataset_info
        num_keypoints = dataset_info(dataset).num_keypoints
    return HRVMambaPose(f"hrvmamba_{variant}", cfg, input_size, sigma, num_keypoints, dcn_variant, dataset)


def _build_classifier(variant: str, dcn_variant: str = "as_run", drop_path_rate: float = 0.1,
                      num_classes: int = 1000, input_size=(224, 224)) -> HRVMambaClassifier:
    widths, stage1, se = CLS_CONFIGS[variant]
    cfg = HRVMambaConfig(widths, stage1, se, drop_path_rate)
    return HRVMambaClassifier(f"hrvmamba_cls_{variant}", cfg, num_classes, input_size, dcn_variant)


for _variant in POSE_CONFIGS:
    register_model(ModelSpec(
        name=f"hrvmamba_{_variant}", task="pose", constructor=partial(_build_pose, _variant),
        default_input_size=(256, 192),
        input_sizes=POSE_INPUT_SIZES if _variant != "tiny" else ((256, 192),), num_outputs=17,
        description=f"HRVMamba-{_variant} top-down heatmap pose model (COCO, 17 keypoints)"))
for _variant in CLS_CONFIGS:
    register_model(ModelSpec(
        name=f"hrvmamba_cls_{_variant}", task="classification", constructor=partial(_build_classifier, _variant),
        default_input_size=(224, 224), input_sizes=((224, 224),), num_outputs=1000,
        description=f"HRVMamba-{_variant} ImageNet classifier"))
